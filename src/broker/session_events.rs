//! Session events: who connects, leaves, subscribes and whose will fires, for in-process
//! listeners (the bridge turns them into XMPP presence and group-chat membership).
//!
//! The router emits them at the moment it decides each one, so their order is the order of
//! the broker's own decisions. The router never waits for a listener: events go through a
//! bounded channel with `try_send`; when it is full, the event is dropped, counted in
//! [`SessionEventSender::dropped`] and logged once per episode. With no listener installed
//! the router builds no event at all (one `Option` check per decision point).
//!
//! In-process clients (the bridge itself) produce no events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytestring::ByteString;
use tokio::sync::mpsc;
use tracing::warn;

use super::codec::ProtocolVersion;

/// Why a connection ended, as a listener sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The client sent DISCONNECT.
    Normal,
    /// The socket closed or failed without DISCONNECT, or a protocol error closed it.
    ConnectionLost,
    /// Nothing arrived for 1.5 times the Keep Alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// A new connection with the same client id took the session over [MQTT-3.1.4-2].
    TakenOver,
    /// The broker is shutting down.
    ServerShutdown,
}

impl Departure {
    /// A stable lower-case name (logs, audit, MQTT payloads).
    pub fn as_str(self) -> &'static str {
        match self {
            Departure::Normal => "disconnect",
            Departure::ConnectionLost => "connection_lost",
            Departure::KeepAliveTimeout => "keep_alive_timeout",
            Departure::TakenOver => "taken_over",
            Departure::ServerShutdown => "server_shutdown",
        }
    }
}

/// One thing that happened to a network client's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// CONNACK (success) was sent.
    Connected {
        /// The client identifier in effect.
        client_id: ByteString,
        /// The authenticated user name, if any.
        username: Option<ByteString>,
        /// MQTT 3.1.1 or 5.0.
        protocol: ProtocolVersion,
    },
    /// The connection ended.
    Disconnected {
        /// The client identifier.
        client_id: ByteString,
        /// The authenticated user name, if any.
        username: Option<ByteString>,
        /// Why.
        why: Departure,
        /// A will is waiting for its MQTT 5 Will Delay Interval: a
        /// [`SessionEvent::WillPublished`] follows unless the client comes back in time.
        will_delayed: bool,
    },
    /// The client's will was published (at the close, or after its Will Delay Interval).
    WillPublished {
        /// The client identifier.
        client_id: ByteString,
        /// The authenticated user name, if any.
        username: Option<ByteString>,
        /// The will's topic.
        topic: ByteString,
    },
    /// Filters the client subscribed to (those the broker granted).
    Subscribed {
        /// The client identifier.
        client_id: ByteString,
        /// The authenticated user name, if any.
        username: Option<ByteString>,
        /// The filters, as sent (a `$share/...` filter included).
        filters: Vec<ByteString>,
    },
    /// Filters the client unsubscribed from (those it had).
    Unsubscribed {
        /// The client identifier.
        client_id: ByteString,
        /// The authenticated user name, if any.
        username: Option<ByteString>,
        /// The filters.
        filters: Vec<ByteString>,
    },
}

impl SessionEvent {
    /// The client the event is about.
    pub fn client_id(&self) -> &str {
        match self {
            SessionEvent::Connected { client_id, .. }
            | SessionEvent::Disconnected { client_id, .. }
            | SessionEvent::WillPublished { client_id, .. }
            | SessionEvent::Subscribed { client_id, .. }
            | SessionEvent::Unsubscribed { client_id, .. } => client_id,
        }
    }

    /// The client's authenticated user name.
    pub fn username(&self) -> Option<&str> {
        match self {
            SessionEvent::Connected { username, .. }
            | SessionEvent::Disconnected { username, .. }
            | SessionEvent::WillPublished { username, .. }
            | SessionEvent::Subscribed { username, .. }
            | SessionEvent::Unsubscribed { username, .. } => username.as_deref(),
        }
    }
}

/// The router's end: never blocks.
#[derive(Debug, Clone)]
pub struct SessionEventSender {
    tx: mpsc::Sender<SessionEvent>,
    dropped: Arc<AtomicU64>,
    overflowing: Arc<AtomicBool>,
}

impl SessionEventSender {
    /// A sender and the listener's receiver, `depth` events deep.
    pub fn channel(depth: usize) -> (SessionEventSender, mpsc::Receiver<SessionEvent>) {
        let (tx, rx) = mpsc::channel(depth.max(1));
        let sender = SessionEventSender {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            overflowing: Arc::new(AtomicBool::new(false)),
        };
        (sender, rx)
    }

    /// Hands an event over, or drops and counts it when the listener is behind.
    pub fn emit(&self, event: SessionEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.overflowing.store(false, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    warn!(
                        client_id = event.client_id(),
                        "Session-event listener is behind; dropping session events."
                    );
                }
            }
            // The listener stopped: nobody to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Events dropped because the listener was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(id: &str) -> SessionEvent {
        SessionEvent::Connected {
            client_id: id.into(),
            username: Some("bob".into()),
            protocol: ProtocolVersion::V5,
        }
    }

    #[test]
    fn a_full_listener_loses_events_counted_never_blocks() {
        let (tx, mut rx) = SessionEventSender::channel(2);
        for i in 0..5 {
            tx.emit(connected(&format!("c{i}")));
        }
        assert_eq!(tx.dropped(), 3);
        assert_eq!(rx.try_recv().unwrap().client_id(), "c0");
        assert_eq!(rx.try_recv().unwrap().client_id(), "c1");
        assert!(rx.try_recv().is_err());
        // Room again: events flow.
        tx.emit(connected("c5"));
        assert_eq!(rx.try_recv().unwrap().username(), Some("bob"));
    }

    #[test]
    fn a_gone_listener_is_not_an_error() {
        let (tx, rx) = SessionEventSender::channel(2);
        drop(rx);
        tx.emit(connected("c"));
        assert_eq!(tx.dropped(), 0);
    }
}
