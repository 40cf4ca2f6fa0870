//! Settings of the embedded broker, valid by construction (built by `crate::config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

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

/// The embedded broker's settings.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerConfig {
    /// TCP listeners for MQTT (3.1.1 and 5.0 on each).
    pub listen: Vec<SocketAddr>,
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
    /// Period of `$SYS/broker/...` statistics; `None` turns them off.
    #[serde(with = "humantime_serde")]
    pub sys_interval: Option<Duration>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_queued: DEFAULT_MAX_QUEUED,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            allow_anonymous: true,
            password_file: None,
            sys_interval: Some(DEFAULT_SYS_INTERVAL),
        }
    }
}
