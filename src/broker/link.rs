//! Messages between connection tasks and the router.
//!
//! A connection hands the router each [`RouterMsg`] in its own task (the router behind a
//! lock: a publisher cannot outrun routing, it does it); the router answers each connection
//! over its own unbounded queue whose depth it bounds itself ([`ClientLink::backlog`] and the
//! session's in-flight window), so the router never awaits a connection: the classic broker
//! self-deadlock cannot happen.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures::task::AtomicWaker;

use bytestring::ByteString;
use tokio::sync::oneshot;

use super::codec::{Connect, Packet, ProtocolVersion, Publish};
use super::guard::GuardNote;

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
        /// What the publish guard worked out about it (see [`GuardNote`]).
        carried: Option<GuardNote>,
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
///
/// A hand-made queue rather than a tokio channel: a tokio channel costs about 850 bytes per
/// connection before anything is sent (a cache-padded channel plus a first block of 32
/// slots), a sixth of an idle connection; this one is a single small allocation, and its
/// queue only grows while packets wait.
#[derive(Debug)]
pub struct ClientLink {
    shared: Arc<LinkShared>,
}

/// The state both ends of a link share.
#[derive(Debug, Default)]
struct LinkShared {
    /// Items for the writer; boxed so that the queue stays small per slot.
    queue: Mutex<VecDeque<Box<ToClient>>>,
    /// The writer waiting for items.
    waker: AtomicWaker,
    /// Live [`ClientLink`] clones; the writer ends when none is left.
    senders: AtomicUsize,
    /// The writer is gone: sending fails.
    closed: AtomicBool,
    /// Packets handed to the writer and not yet written to the socket. The router drops QoS 0
    /// messages for a client whose backlog is over the limit instead of letting memory grow.
    backlog: AtomicUsize,
    /// Set by the reader the moment it decodes DISCONNECT, before the router hears of the
    /// close: a client that disconnects and reconnects at once may have its new CONNECT
    /// reach the router first, and the takeover must still know the old one left cleanly.
    farewell: AtomicU8,
}

impl LinkShared {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Box<ToClient>>> {
        // A panic while holding this short lock cannot leave the queue inconsistent.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// [`ClientLink::mark_disconnect`] values.
const FAREWELL_NONE: u8 = 0;
const FAREWELL_CLEAN: u8 = 1;
const FAREWELL_WITH_WILL: u8 = 2;

/// A drained queue keeps at most this many slots, so that a burst does not pin memory.
const IDLE_QUEUE_SLOTS: usize = 8;

impl Clone for ClientLink {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        ClientLink {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for ClientLink {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: let the writer see the end.
            self.shared.waker.wake();
        }
    }
}

impl ClientLink {
    /// A link and the receiving end for the connection's writer.
    pub fn new() -> (ClientLink, LinkReceiver) {
        let shared = Arc::new(LinkShared {
            senders: AtomicUsize::new(1),
            farewell: AtomicU8::new(FAREWELL_NONE),
            ..LinkShared::default()
        });
        (
            ClientLink {
                shared: shared.clone(),
            },
            LinkReceiver { shared },
        )
    }

    fn push(&self, item: ToClient) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        self.shared.queue().push_back(Box::new(item));
        self.shared.waker.wake();
        true
    }

    /// Hands a packet to the writer. False when the connection is gone.
    pub fn send(&self, packet: Packet) -> bool {
        self.shared.backlog.fetch_add(1, Ordering::Relaxed);
        self.push(ToClient::Packet(packet))
    }

    /// Hands a PUBLISH with its publisher's identity to an in-process client.
    pub fn deliver(
        &self,
        publish: Publish,
        origin: Option<Arc<Origin>>,
        carried: Option<GuardNote>,
    ) -> bool {
        self.shared.backlog.fetch_add(1, Ordering::Relaxed);
        self.push(ToClient::Deliver {
            publish,
            origin,
            carried,
        })
    }

    /// Asks the writer to close (with a DISCONNECT for MQTT 5 clients).
    pub fn disconnect(&self, reason: u8) {
        // A closed link means the connection is already gone, which is what we want.
        let _gone = self.push(ToClient::Disconnect { reason, text: None });
    }

    /// As [`ClientLink::disconnect`], with a Reason String saying why.
    pub fn disconnect_because(&self, reason: u8, text: &str) {
        let text = Some(Box::from(text));
        let _gone = self.push(ToClient::Disconnect { reason, text });
    }

    /// Records that the client sent DISCONNECT (with MQTT 5 reason 0x04 when `publish_will`).
    pub fn mark_disconnect(&self, publish_will: bool) {
        let v = if publish_will {
            FAREWELL_WITH_WILL
        } else {
            FAREWELL_CLEAN
        };
        self.shared.farewell.store(v, Ordering::Release);
    }

    /// Whether the will must be published when this connection goes away now: false only
    /// when the client said goodbye with a plain DISCONNECT.
    pub fn will_due(&self) -> bool {
        self.shared.farewell.load(Ordering::Acquire) != FAREWELL_CLEAN
    }

    /// Packets not yet written.
    pub fn backlog(&self) -> usize {
        self.shared.backlog.load(Ordering::Relaxed)
    }
}

/// The writer's end of a [`ClientLink`].
#[derive(Debug)]
pub struct LinkReceiver {
    shared: Arc<LinkShared>,
}

impl Drop for LinkReceiver {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        // Free what will never be written.
        std::mem::take(&mut *self.shared.queue());
    }
}

impl LinkReceiver {
    /// Waits for at least one item and takes up to `limit`; 0 when every sender is gone.
    /// Cancel safe: items are taken only when it returns.
    pub async fn recv_many(&mut self, into: &mut Vec<Box<ToClient>>, limit: usize) -> usize {
        std::future::poll_fn(|cx| {
            if let Some(n) = self.take(into, limit) {
                return Poll::Ready(n);
            }
            self.shared.waker.register(cx.waker());
            // Checked again after registering, or a push in between would be missed.
            match self.take(into, limit) {
                Some(n) => Poll::Ready(n),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Takes up to `limit` items: `Some(0)` when every sender is gone and nothing is left,
    /// `None` when there is nothing yet.
    #[allow(
        clippy::vec_box,
        reason = "items move between queues as pointers; see ClientLink"
    )]
    fn take(&self, into: &mut Vec<Box<ToClient>>, limit: usize) -> Option<usize> {
        let mut queue = self.shared.queue();
        if queue.is_empty() {
            let gone = self.shared.senders.load(Ordering::Acquire) == 0;
            return gone.then_some(0);
        }
        let n = queue.len().min(limit.max(1));
        into.extend(queue.drain(..n));
        if queue.is_empty() && queue.capacity() > IDLE_QUEUE_SLOTS {
            *queue = VecDeque::new();
        }
        Some(n)
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.shared.queue().is_empty()
    }

    /// Marks `n` packets as written.
    pub fn written(&self, n: usize) {
        self.shared.backlog.fetch_sub(n, Ordering::Relaxed);
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
    /// Network error, EOF without DISCONNECT, protocol error: the will is published.
    Abnormal,
    /// Nothing arrived within 1.5 times the Keep Alive: the will is published.
    KeepAliveTimeout,
}

impl CloseCause {
    /// Whether the will is published for this close.
    pub fn publishes_will(self) -> bool {
        match self {
            CloseCause::Disconnect { publish_will, .. } => publish_will,
            CloseCause::Abnormal | CloseCause::KeepAliveTimeout => true,
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
        /// Set when the client wants to know when each subscriber acknowledged it.
        track: Option<Arc<super::tracking::Tracker>>,
    },
    /// The connection ended.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        cause: CloseCause,
    },
}
