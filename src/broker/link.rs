//! Messages between connection tasks and the router task.
//!
//! Connections send [`RouterMsg`] over one bounded channel (back-pressure on publishers); the
//! router answers each connection over its own unbounded channel whose depth it bounds itself
//! ([`ClientLink::backlog`] and the session's in-flight window), so the router never awaits a
//! connection: the classic broker self-deadlock cannot happen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};

use super::codec::{Connect, Packet, ProtocolVersion, Publish};

/// Identifies one network connection for its whole life (never reused).
pub type ConnId = u64;

/// What the router asks a connection's writer to do.
#[derive(Debug)]
pub enum ToClient {
    /// Encode and send one packet.
    Packet(Packet),
    /// A PUBLISH for an in-process client, with who published it.
    Deliver {
        /// The message as this client gets it (packet id set for QoS 1/2).
        publish: Publish,
        /// The publisher.
        origin: Option<Arc<Origin>>,
    },
    /// Send DISCONNECT with this reason (MQTT 5 only; 3.1.1 has no server DISCONNECT), flush,
    /// and close the connection.
    Disconnect {
        /// MQTT 5 reason code.
        reason: u8,
        /// MQTT 5 Reason String, for the client's logs.
        text: Option<Box<str>>,
    },
}

/// The router's way to reach one connected client.
#[derive(Debug, Clone)]
pub struct ClientLink {
    /// Items are boxed: tokio allocates a channel's first block of 32 slots up front, and 32
    /// boxes (256 bytes) instead of 32 packets (3.3 KB) keeps idle connections small.
    tx: mpsc::UnboundedSender<Box<ToClient>>,
    /// Packets handed to the writer and not yet written to the socket. The router drops QoS 0
    /// messages for a client whose backlog is over the limit instead of letting memory grow.
    backlog: Arc<AtomicUsize>,
    /// Set by the reader the moment it decodes DISCONNECT, before the router hears of the
    /// close: a client that disconnects and reconnects at once may have its new CONNECT
    /// reach the router first, and the takeover must still know the old one left cleanly.
    farewell: Arc<AtomicU8>,
}

/// [`ClientLink::mark_disconnect`] values.
const FAREWELL_NONE: u8 = 0;
const FAREWELL_CLEAN: u8 = 1;
const FAREWELL_WITH_WILL: u8 = 2;

impl ClientLink {
    /// A link and the receiving end for the connection's writer.
    pub fn new() -> (ClientLink, LinkReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        (
            ClientLink {
                tx,
                backlog: backlog.clone(),
                farewell: Arc::new(AtomicU8::new(FAREWELL_NONE)),
            },
            LinkReceiver { rx, backlog },
        )
    }

    /// Hands a packet to the writer. False when the connection is gone.
    pub fn send(&self, packet: Packet) -> bool {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Box::new(ToClient::Packet(packet))).is_ok()
    }

    /// Hands a PUBLISH with its publisher's identity to an in-process client.
    pub fn deliver(&self, publish: Publish, origin: Option<Arc<Origin>>) -> bool {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Box::new(ToClient::Deliver { publish, origin }))
            .is_ok()
    }

    /// Asks the writer to close (with a DISCONNECT for MQTT 5 clients).
    pub fn disconnect(&self, reason: u8) {
        // A closed channel means the connection is already gone, which is what we want.
        let _ignored = self
            .tx
            .send(Box::new(ToClient::Disconnect { reason, text: None }));
    }

    /// As [`ClientLink::disconnect`], with a Reason String saying why.
    pub fn disconnect_because(&self, reason: u8, text: &str) {
        let text = Some(Box::from(text));
        let _ignored = self
            .tx
            .send(Box::new(ToClient::Disconnect { reason, text }));
    }

    /// Records that the client sent DISCONNECT (with MQTT 5 reason 0x04 when `publish_will`).
    pub fn mark_disconnect(&self, publish_will: bool) {
        let v = if publish_will {
            FAREWELL_WITH_WILL
        } else {
            FAREWELL_CLEAN
        };
        self.farewell.store(v, Ordering::Release);
    }

    /// Whether the will must be published when this connection goes away now: false only
    /// when the client said goodbye with a plain DISCONNECT.
    pub fn will_due(&self) -> bool {
        self.farewell.load(Ordering::Acquire) != FAREWELL_CLEAN
    }

    /// Packets not yet written.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// The writer's end of a [`ClientLink`].
#[derive(Debug)]
pub struct LinkReceiver {
    rx: mpsc::UnboundedReceiver<Box<ToClient>>,
    backlog: Arc<AtomicUsize>,
}

impl LinkReceiver {
    /// Waits for at least one item and takes up to `limit`; 0 when every sender is gone.
    pub async fn recv_many(&mut self, into: &mut Vec<Box<ToClient>>, limit: usize) -> usize {
        self.rx.recv_many(into, limit).await
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Marks `n` packets as written.
    pub fn written(&self, n: usize) {
        self.backlog.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Who published a message: what an in-process client (the bridge) needs to know to speak
/// for the publisher on the other side, and never more than the broker authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The publisher's MQTT client identifier.
    pub client_id: ByteString,
    /// The user name it authenticated with, if any.
    pub username: Option<ByteString>,
}

/// Why a connection ended, as the router needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The client sent DISCONNECT. `publish_will` is true for MQTT 5 reason 0x04.
    Disconnect {
        /// Publish the will anyway (MQTT 5 "Disconnect with Will Message").
        publish_will: bool,
        /// MQTT 5: a new Session Expiry Interval sent with DISCONNECT.
        session_expiry: Option<u32>,
    },
    /// Network error, EOF without DISCONNECT, keep-alive timeout, protocol error: the will is
    /// published.
    Abnormal,
}

impl CloseCause {
    /// Whether the will is published for this close.
    pub fn publishes_will(self) -> bool {
        match self {
            CloseCause::Disconnect { publish_will, .. } => publish_will,
            CloseCause::Abnormal => true,
        }
    }
}

/// A CONNECT that passed decoding and authentication, on its way to the router.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The connection.
    pub conn: ConnId,
    /// Peer address, for logs.
    pub peer: SocketAddr,
    /// The decoded CONNECT.
    pub connect: Box<Connect>,
    /// Client identifier in effect (assigned by the broker when the client sent none).
    pub client_id: ByteString,
    /// True when the broker assigned `client_id`.
    pub assigned_id: bool,
    /// Authenticated user name, if any.
    pub username: Option<ByteString>,
    /// Where the router sends packets for this client; CONNACK is the first.
    pub link: ClientLink,
    /// Told once CONNACK is queued, so the reader starts reading only then.
    pub accepted: oneshot::Sender<ConnectOutcome>,
    /// An in-process client (the bridge): gets publisher identities, a full window.
    pub internal: bool,
}

impl ConnectRequest {
    /// The protocol version of this connection.
    pub fn version(&self) -> ProtocolVersion {
        self.connect.protocol
    }
}

/// The router's answer to a [`ConnectRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// CONNACK (success) is queued on the link.
    Accepted,
    /// A refusing CONNACK is queued; close after sending it.
    Refused,
}

/// Everything a connection tells the router.
pub enum RouterMsg {
    /// A client completed CONNECT.
    Connect(ConnectRequest),
    /// Packets read from a connected client, in order.
    Packets {
        /// The connection.
        conn: ConnId,
        /// The packets.
        packets: Vec<Packet>,
    },
    /// A message published by an in-process client; no acknowledgement flow, the hand-off
    /// in memory is reliable.
    Publish {
        /// The in-process client's connection.
        conn: ConnId,
        /// The message.
        publish: Publish,
    },
    /// Installs the check every client PUBLISH passes (see `guard`).
    SetGuard(Arc<dyn super::guard::PublishGuard>),
    /// The connection ended.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        cause: CloseCause,
    },
}
