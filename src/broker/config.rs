//! Settings of the embedded broker, valid by construction (built by `crate::config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::listener::ListenerConfig;

/// Default listener address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1883";
/// Default limit on simultaneous client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default limit on one MQTT packet, in bytes (fixed header included).
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;
/// Default outgoing QoS 1/2 window per client (MQTT 5 clients may lower it by Receive Maximum).
pub const DEFAULT_MAX_INFLIGHT: u16 = 100;
/// Default number of messages kept per session while the client is offline or its window is full.
pub const DEFAULT_MAX_QUEUED: usize = 1000;
/// Default time a new TCP connection has to send CONNECT.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval of `$SYS/broker/...` statistics.
pub const DEFAULT_SYS_INTERVAL: Duration = Duration::from_secs(10);
/// Default MQTT 5 Receive Maximum announced in CONNACK: QoS 2 messages a client may have
/// unreleased toward the broker (QoS 1 is acknowledged on arrival).
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 1024;
/// Default MQTT 5 Topic Alias Maximum announced in CONNACK (as Mosquitto's `max_topic_alias`).
pub const DEFAULT_TOPIC_ALIAS_MAXIMUM: u16 = 10;
/// Default MQTT 5 Response Information template; `{client_id}` is replaced.
pub const DEFAULT_RESPONSE_INFORMATION: &str = "reply/{client_id}";

/// The embedded broker's settings.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerConfig {
    /// TCP listeners for MQTT (3.1.1 and 5.0 on each).
    pub listen: Vec<SocketAddr>,
    /// Further listeners with a transport each (`[[broker.listeners]]`: tcp, tls, ws, wss).
    pub listeners: Vec<ListenerConfig>,
    /// Threads of the broker's own runtime (router and connections); 1 keeps every wake-up
    /// on one thread, as Mosquitto does.
    pub worker_threads: usize,
    /// Connections beyond this are closed right after accept.
    pub max_connections: usize,
    /// Largest packet accepted from a client; larger ones close the connection.
    pub max_packet_size: usize,
    /// Unacknowledged QoS 1/2 messages in flight toward one client.
    pub max_inflight: u16,
    /// Messages queued per session beyond the in-flight window (offline persistent sessions
    /// included). What overflows is dropped, counted and logged.
    pub max_queued: usize,
    /// Time allowed between TCP accept and a complete CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whether clients without a user name may connect.
    pub allow_anonymous: bool,
    /// Password file (`user:argon2-hash` lines); `None` means user names are not checked.
    pub password_file: Option<PathBuf>,
    /// Access control list (Mosquitto-like syntax, see `broker::acl`); `None` allows every
    /// client every topic.
    pub acl_file: Option<PathBuf>,
    /// Period of `$SYS/broker/...` statistics; `None` turns them off.
    #[serde(with = "humantime_serde")]
    pub sys_interval: Option<Duration>,
    /// MQTT 5 Receive Maximum: QoS 2 messages one client may have unreleased toward the broker;
    /// one more is a DISCONNECT 0x93.
    pub receive_maximum: u16,
    /// MQTT 5 Topic Alias Maximum accepted from clients; 0 turns client aliases off.
    pub topic_alias_maximum: u16,
    /// Highest QoS accepted from clients and granted to subscriptions (0, 1 or 2).
    pub maximum_qos: u8,
    /// Whether retained messages are kept.
    pub retain_available: bool,
    /// Whether subscriptions may use `+` and `#`.
    pub wildcard_subscriptions: bool,
    /// Whether `$share/{group}/{filter}` subscriptions are accepted.
    pub shared_subscriptions: bool,
    /// Whether MQTT 5 Subscription Identifiers are accepted.
    pub subscription_identifiers: bool,
    /// MQTT 5 Server Keep Alive: when set, MQTT 5 clients must use this keep alive (seconds)
    /// instead of their own.
    pub server_keep_alive: Option<u16>,
    /// MQTT 5 Response Information sent when a client requests it (`{client_id}` replaced);
    /// `None` sends none.
    pub response_information: Option<String>,
    /// `[persistence]`: the store and the acknowledgement promise; `None` keeps everything in
    /// memory only.
    #[serde(skip)]
    pub persistence: Option<crate::store::PersistenceConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            listeners: Vec::new(),
            worker_threads: 1,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queued: DEFAULT_MAX_QUEUED,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            sys_interval: Some(DEFAULT_SYS_INTERVAL),
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            topic_alias_maximum: DEFAULT_TOPIC_ALIAS_MAXIMUM,
            maximum_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            server_keep_alive: None,
            response_information: Some(DEFAULT_RESPONSE_INFORMATION.to_string()),
            persistence: None,
        }
    }
}
