//! Settings of the XEP-0114 component link. Defaults are declared once, here.

use std::fmt;
use std::time::Duration;

/// Default interval between XEP-0199 keepalive pings to the server.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Default silence (or missing pong) after which the link is considered dead.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for TCP connect plus stream header plus handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first reconnect delay.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Default cap of the reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Default number of outbound stanzas held (waiting plus written but unconfirmed).
pub const DEFAULT_QUEUE_DEPTH: usize = 10_000;
/// Default depth of the inbound channel to the bridge.
pub const DEFAULT_INBOUND_DEPTH: usize = 1_024;
/// Default time allowed at shutdown to confirm what was written and close the stream.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Settings of the component link. Plain values; [`XmppConfig::problems`] lists what is
/// inconsistent so the config layer can report it with file and key.
#[derive(Clone)]
pub struct XmppConfig {
    /// `host:port` of the server's component port (host names are resolved on each connect).
    pub server: String,
    /// The component's domain, e.g. `mqtt.example.org`; stanzas from the bridge use it.
    pub domain: String,
    /// The shared secret of the handshake. Never logged (see the `Debug` impl).
    pub secret: String,
    /// The server's own domain: keepalive and confirmation pings go there. [`XmppConfig::new`]
    /// takes `domain` without its first label (`mqtt.example.org` → `example.org`).
    pub server_domain: String,
    /// Interval of keepalive pings.
    pub ping_interval: Duration,
    /// Silence, or a missing pong, for this long ends the connection; well above
    /// `ping_interval`.
    pub read_timeout: Duration,
    /// Limit for TCP connect, stream header exchange and handshake together.
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt, with jitter.
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Outbound stanzas held at most (queued plus written-but-unconfirmed); more are refused.
    pub queue_depth: usize,
    /// Depth of the channel that carries inbound stanzas to the bridge.
    pub inbound_depth: usize,
    /// At shutdown, time to confirm written stanzas and close the stream.
    pub shutdown_grace: Duration,
}

impl XmppConfig {
    /// Settings with every default, for `server` (`host:port`), `domain` and `secret`.
    pub fn new(
        server: impl Into<String>,
        domain: impl Into<String>,
        secret: impl Into<String>,
    ) -> Self {
        let domain = domain.into();
        let server_domain = parent_domain(&domain).to_owned();
        Self {
            server: server.into(),
            domain,
            secret: secret.into(),
            server_domain,
            ping_interval: DEFAULT_PING_INTERVAL,
            read_timeout: DEFAULT_READ_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            inbound_depth: DEFAULT_INBOUND_DEPTH,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    /// Every inconsistency, as `(field, reason)`; empty when the settings are usable.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self
            .server
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            out.push(("server", format!("`{}` is not host:port", self.server)));
        }
        for (field, value) in [
            ("domain", &self.domain),
            ("server_domain", &self.server_domain),
        ] {
            if xmpp_parsers::jid::BareJid::new(value).map_or(true, |j| j.node().is_some()) {
                out.push((field, format!("`{value}` is not a domain")));
            }
        }
        if self.secret.is_empty() {
            out.push(("secret", "is empty".into()));
        }
        if self.ping_interval.is_zero() {
            out.push(("ping_interval", "must be above zero".into()));
        }
        if self.read_timeout < self.ping_interval * 2 {
            out.push((
                "read_timeout",
                "must be at least twice ping_interval".into(),
            ));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            out.push((
                "reconnect_min",
                "must be above zero and at most reconnect_max".into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            out.push(("connect_timeout", "must be above zero".into()));
        }
        if self.queue_depth == 0 {
            out.push(("queue_depth", "must be at least 1".into()));
        }
        if self.inbound_depth == 0 {
            out.push(("inbound_depth", "must be at least 1".into()));
        }
        out
    }
}

/// `mqtt.example.org` → `example.org`; a single label stays as it is.
fn parent_domain(domain: &str) -> &str {
    match domain.split_once('.') {
        Some((_, rest)) if !rest.is_empty() => rest,
        _ => domain,
    }
}

impl fmt::Debug for XmppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XmppConfig")
            .field("server", &self.server)
            .field("domain", &self.domain)
            .field("secret", &"<redacted>")
            .field("server_domain", &self.server_domain)
            .field("ping_interval", &self.ping_interval)
            .field("read_timeout", &self.read_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("queue_depth", &self.queue_depth)
            .field("inbound_depth", &self.inbound_depth)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let cfg = XmppConfig::new("127.0.0.1:5347", "mqtt.localhost", "hunter2");
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn defaults_are_consistent() {
        let cfg = XmppConfig::new("127.0.0.1:5347", "mqtt.localhost", "s");
        assert_eq!(cfg.server_domain, "localhost");
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    }

    #[test]
    fn problems_are_all_reported() {
        let mut cfg = XmppConfig::new("nohost", "a@b.c", "");
        cfg.read_timeout = cfg.ping_interval;
        cfg.queue_depth = 0;
        let fields: Vec<_> = cfg.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["server", "domain", "secret", "read_timeout", "queue_depth"]
        );
    }

    #[test]
    fn parent_domain_strips_one_label() {
        assert_eq!(parent_domain("mqtt.example.org"), "example.org");
        assert_eq!(parent_domain("localhost"), "localhost");
    }
}
