//! `[mqtt.upstream]`: how the bridge reaches an existing MQTT broker.

use std::path::PathBuf;
use std::time::Duration;

pub use super::proto::Protocol;

/// Default client identifier (the session the broker keeps for the bridge).
pub const DEFAULT_CLIENT_ID: &str = "xmpp-mqtt-bridge";
/// Default session expiry: how long the broker keeps the bridge's session (and queues its
/// messages) while the bridge is away.
pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(3600);
/// Default keep alive.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Default first reconnect delay.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Default reconnect delay cap.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default in-flight window, both ways (MQTT 5 Receive Maximum toward the bridge).
pub const DEFAULT_MAX_INFLIGHT: u16 = 100;
/// Default CA bundle when `tls = true` and no `ca_file` is given (Debian's).
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The MQTT 5 User Property the bridge puts on everything it publishes; its value is the
/// component domain. A delivery carrying it with that value came from a bridge instance of
/// this deployment and is never carried to XMPP again.
pub const ORIGIN_PROPERTY: &str = "xmpp-bridge-origin";

/// TLS toward the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM bundle of the certificate authorities trusted for the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate and key, for brokers that authenticate clients by certificate.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// Default `pong_relay` prefix (the shipped Mosquitto ACL lets the bridge account use it).
pub const DEFAULT_PONG_RELAY: &str = "bridge/keepalive";

/// The upstream broker connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client identifier; stable, so the broker keeps the session across restarts. An
    /// active/standby pair uses the same one (the standby resumes the session).
    pub client_id: String,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// TLS, when set.
    pub tls: Option<TlsConfig>,
    /// Session Expiry Interval sent with CONNECT (Clean Start is always 0).
    pub session_expiry: Duration,
    /// Keep alive.
    pub keep_alive: Duration,
    /// First reconnect delay; doubled per failure up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Reconnect delay cap.
    pub reconnect_max: Duration,
    /// In-flight window, both ways.
    pub max_inflight: u16,
    /// MQTT 5, 3.1.1, or 5 with fallback to 3.1.1.
    pub protocol: Protocol,
    /// `$share/{group}/` prefix for the bridge's subscriptions, so that several instances
    /// split the MQTT → XMPP traffic; `None` subscribes plainly.
    pub share_group: Option<String>,
    /// Topic prefix on which instances relay keepalive pongs to each other
    /// (`{prefix}/{link token}`): where the XMPP server balances one component domain between
    /// several instances (ejabberd), the answer to one instance's ping may reach another.
    /// `None` turns the relay off.
    pub pong_relay: Option<String>,
}

impl UpstreamConfig {
    /// A plain-TCP, anonymous configuration with the defaults.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        UpstreamConfig {
            host: host.into(),
            port,
            client_id: DEFAULT_CLIENT_ID.to_string(),
            credentials: None,
            tls: None,
            session_expiry: DEFAULT_SESSION_EXPIRY,
            keep_alive: DEFAULT_KEEP_ALIVE,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            share_group: None,
            pong_relay: Some(DEFAULT_PONG_RELAY.to_string()),
            protocol: Protocol::Auto,
        }
    }

    /// The filter actually subscribed for a bridge filter.
    pub fn subscription(&self, filter: &str) -> String {
        match &self.share_group {
            Some(group) => format!("$share/{group}/{filter}"),
            None => filter.to_string(),
        }
    }
}

/// Problems in a `pong_relay` prefix: a topic name without wildcards, not starting with `$`
/// (the broker's namespace), no trailing `/`. Empty turns the relay off.
pub fn check_pong_relay(prefix: &str) -> Result<(), String> {
    if prefix.contains(['+', '#', '\0']) {
        return Err("must not contain wildcards (`+`, `#`) or NUL".into());
    }
    if prefix.starts_with('$') {
        return Err("must not start with `$` (topics the broker reserves)".into());
    }
    if prefix.ends_with('/') {
        return Err("must not end with `/` (the link token is appended as a level)".into());
    }
    Ok(())
}

/// Problems in a share group name: it is one topic level without wildcards.
pub fn check_share_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("must not be empty (omit the key for plain subscriptions)".into());
    }
    if group.contains(['/', '+', '#', '\0']) {
        return Err(format!(
            "`{group}` is not a share name: no `/`, `+`, `#` or NUL allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscription_filters() {
        let mut c = UpstreamConfig::new("h", 1);
        assert_eq!(c.subscription("a/+/b"), "a/+/b");
        c.share_group = Some("bridges".into());
        assert_eq!(c.subscription("a/+/b"), "$share/bridges/a/+/b");
    }

    #[test]
    fn pong_relay_prefixes() {
        assert!(check_pong_relay("bridge/keepalive").is_ok());
        assert!(check_pong_relay("").is_ok(), "empty turns the relay off");
        for bad in ["a/+", "a/#", "$bridge", "bridge/", "a\0b"] {
            assert!(check_pong_relay(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn share_group_names() {
        assert!(check_share_group("bridges").is_ok());
        for bad in ["", "a/b", "a+", "#", "a\0"] {
            assert!(check_share_group(bad).is_err(), "{bad:?}");
        }
    }
}
