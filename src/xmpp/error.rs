//! Why a component connection failed or ended, one variant per cause an operator would act on
//! differently.

use std::io;
use std::time::Duration;

/// The end of one connection attempt or of an established link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Nothing listens at the address (TCP connection refused).
    #[error("connection to {server} refused")]
    Refused {
        /// `host:port` from the config.
        server: String,
    },
    /// TCP connect failed for another reason (unreachable, name not resolved, ...).
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// `host:port` from the config.
        server: String,
        /// The cause.
        source: io::Error,
    },
    /// TCP connect, stream header or handshake took longer than the connect timeout.
    #[error("no handshake with {server} within {after:?}")]
    HandshakeTimeout {
        /// `host:port` from the config.
        server: String,
        /// The limit.
        after: Duration,
    },
    /// The server rejected the secret (XEP-0114 §3: `<not-authorized/>` stream error).
    #[error("the server rejected the component secret for {domain} (not-authorized)")]
    NotAuthorized {
        /// The component domain.
        domain: String,
    },
    /// Another component is connected for the same domain (`<conflict/>` stream error).
    #[error("another component is already connected as {domain} (conflict)")]
    Conflict {
        /// The component domain.
        domain: String,
    },
    /// The server does not serve this component domain (`<host-unknown/>` stream error).
    #[error("the server has no component {domain} configured (host-unknown)")]
    HostUnknown {
        /// The component domain.
        domain: String,
    },
    /// Any other stream error from the server.
    #[error("the server ended the stream with <{condition}/>{}", text_suffix(.text))]
    StreamError {
        /// The defined condition, e.g. `system-shutdown`.
        condition: String,
        /// The server's explanation, if any.
        text: Option<String>,
    },
    /// The server's stream header had no `id`, so no handshake can be computed.
    #[error("the server's stream header has no id")]
    NoStreamId,
    /// The server answered the handshake with something else than `<handshake/>`.
    #[error("unexpected <{name}/> in reply to the handshake")]
    UnexpectedReply {
        /// The element's name.
        name: String,
    },
    /// The server closed the stream or the TCP connection.
    #[error("the server closed the connection")]
    Closed,
    /// Nothing was read for the read timeout.
    #[error("nothing received for {0:?}")]
    ReadTimeout(Duration),
    /// A ping was not answered within the read timeout.
    #[error("no pong within {0:?}")]
    PongTimeout(Duration),
    /// Writing did not complete within the read timeout.
    #[error("write blocked for {0:?}")]
    WriteTimeout(Duration),
    /// The component or server domain is not a valid domain (the link cannot start).
    #[error("`{domain}` is not a valid XMPP domain")]
    InvalidDomain {
        /// The configured value.
        domain: String,
    },
    /// Reading or writing failed.
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
}

fn text_suffix(text: &Option<String>) -> String {
    text.as_deref()
        .map(|t| format!(": {t}"))
        .unwrap_or_default()
}

impl LinkError {
    /// A short stable name of the cause, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::Connect { .. } => "connect",
            Self::HandshakeTimeout { .. } => "handshake_timeout",
            Self::NotAuthorized { .. } => "not_authorized",
            Self::Conflict { .. } => "conflict",
            Self::HostUnknown { .. } => "host_unknown",
            Self::StreamError { .. } => "stream_error",
            Self::NoStreamId => "no_stream_id",
            Self::UnexpectedReply { .. } => "unexpected_reply",
            Self::Closed => "closed",
            Self::ReadTimeout(_) => "read_timeout",
            Self::PongTimeout(_) => "pong_timeout",
            Self::WriteTimeout(_) => "write_timeout",
            Self::InvalidDomain { .. } => "invalid_domain",
            Self::Io(_) => "io",
        }
    }

    /// Whether an operator has to change something (secret, domain, another instance):
    /// such causes are logged as errors, the rest as warnings.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Self::NotAuthorized { .. } | Self::Conflict { .. } | Self::HostUnknown { .. }
        )
    }
}
