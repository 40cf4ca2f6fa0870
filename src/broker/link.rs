//! Messages between connection tasks and the router.
//!
//! A connection hands the router each [`RouterMsg`] in its own task (the router behind a
//! lock: a publisher cannot outrun routing, it does it); the router answers each connection
//! over its own unbounded queue whose depth it bounds itself ([`ClientLink::backlog`] and the
//! session's in-flight window), so the router never awaits a connection: the classic broker
//! self-deadlock cannot happen.
//!
//! **Write-through** (plain TCP): a link can hold its client's socket ([`DirectOut`]). While
//! a connection routes what it read ([`corked`]), a packet for such a link is encoded at once
//! behind what is already pending for that client, and when the pass ends each client that
//! got something is written with one `try_write`, in the routing task: a message goes out in
//! the turn that read it, as in Mosquitto's event loop, without waking the subscriber's
//! writer task. Whatever the socket cannot take at once, and what is sent outside a routing
//! pass, the writer task writes ([`LinkReceiver::drive_direct`]). One buffer per client under
//! the link's lock keeps the order of everything written.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures::task::AtomicWaker;

use bytestring::ByteString;
use tokio::sync::oneshot;

use super::codec::{Connect, Packet, ProtocolVersion, Publish};
use super::guard::GuardNote;
use super::outbound::DirectOut;

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

/// What the link's lock guards.
#[derive(Debug, Default)]
struct Inner {
    /// Items for the writer; boxed so that the queue stays small per slot.
    items: VecDeque<Box<ToClient>>,
    /// Plain TCP: the socket and what is encoded for it (see the module notes). Boxed: most
    /// of a link's life it is only looked at.
    direct: Option<Box<DirectOut>>,
}

/// The state both ends of a link share.
#[derive(Debug, Default)]
struct LinkShared {
    /// The queue, and the socket when written through.
    queue: Mutex<Inner>,
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
    fn queue(&self) -> std::sync::MutexGuard<'_, Inner> {
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
        Self::with_direct(None)
    }

    /// A link that holds its client's socket: packets are written through while routing
    /// (see the module notes); the writer task runs [`LinkReceiver::drive_direct`].
    pub(crate) fn with_direct(direct: Option<DirectOut>) -> (ClientLink, LinkReceiver) {
        let shared = Arc::new(LinkShared {
            queue: Mutex::new(Inner {
                items: VecDeque::new(),
                direct: direct.map(Box::new),
            }),
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
        let mut inner = self.shared.queue();
        if CORKED.get() && inner.items.is_empty() && matches!(item, ToClient::Packet(_)) {
            if let Some(direct) = inner.direct.as_mut().filter(|d| !d.closing()) {
                // Behind what is pending, so in order; written when the routing pass ends,
                // or by the writer task if it is already waiting for room in the socket.
                let first = !direct.has_pending();
                direct.encode(item);
                if first {
                    DIRTY.with_borrow_mut(|dirty| dirty.push(self.shared.clone()));
                }
                return true;
            }
        }
        inner.items.push_back(Box::new(item));
        drop(inner);
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
        // Free what will never be written, and the socket.
        let mut inner = self.shared.queue();
        std::mem::take(&mut inner.items);
        inner.direct = None;
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
        let mut inner = self.shared.queue();
        let queue = &mut inner.items;
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
        self.shared.queue().items.is_empty()
    }

    /// The writer task of a written-through link: encodes what was queued, writes what is
    /// pending whenever the socket has room, until a DISCONNECT is written, every sender is
    /// gone, or a write fails. Each wake-up does what there is under the lock, without
    /// waiting inside it.
    pub async fn drive_direct(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut guard = self.shared.queue();
            let inner = &mut *guard;
            let Some(direct) = inner.direct.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            loop {
                let mut encoded = 0;
                while !direct.closing() && encoded < DIRECT_BATCH {
                    let Some(item) = inner.items.pop_front() else {
                        break;
                    };
                    direct.encode(*item);
                    encoded += 1;
                }
                if direct.has_pending() {
                    match direct.write_pending() {
                        Ok(Some(packets)) => self.written(packets),
                        Ok(None) => match direct.poll_writable(cx) {
                            Poll::Ready(Ok(())) => continue,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        },
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if direct.closing() {
                    return Poll::Ready(Ok(()));
                }
                if !inner.items.is_empty() {
                    continue;
                }
                if inner.items.capacity() > IDLE_QUEUE_SLOTS {
                    inner.items = VecDeque::new();
                }
                if self.shared.senders.load(Ordering::Acquire) == 0 {
                    return Poll::Ready(Ok(()));
                }
                // Registered under the lock: a sender pushes under it and wakes after it, so
                // nothing pushed from here on is missed.
                self.shared.waker.register(cx.waker());
                return Poll::Pending;
            }
        })
        .await
    }

    /// The socket of a written-through link, taken to close it; nothing is written through
    /// any more.
    pub(crate) fn take_direct(&mut self) -> Option<DirectOut> {
        self.shared.queue().direct.take().map(|d| *d)
    }

    /// Marks `n` packets as written.
    pub fn written(&self, n: usize) {
        self.shared.backlog.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Items a written-through link's writer encodes between two writes, at most.
const DIRECT_BATCH: usize = 256;

thread_local! {
    /// A routing pass is running on this thread (see [`corked`]).
    static CORKED: Cell<bool> = const { Cell::new(false) };
    /// Links that got bytes to write during this thread's routing pass.
    static DIRTY: RefCell<Vec<Arc<LinkShared>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` (a routing pass) with write-through on: packets for written-through links are
/// encoded as they are routed, and each such client is written to once when `f` returns
/// (see the module notes). Nested calls write at the end of the outermost one.
pub fn corked<T>(f: impl FnOnce() -> T) -> T {
    if CORKED.get() {
        return f();
    }
    let _cork = Cork::start();
    f()
}

/// Ends a routing pass when dropped, also when it panics, so that nothing stays unwritten.
struct Cork;

impl Cork {
    fn start() -> Self {
        CORKED.set(true);
        Cork
    }
}

impl Drop for Cork {
    fn drop(&mut self) {
        CORKED.set(false);
        let mut dirty = DIRTY.take();
        // Last touched first: a pass acknowledges a publisher before it routes the message,
        // so the subscribers are written before the publisher gets its PUBACK or PUBREC (as
        // Mosquitto does), and the message is not behind that write.
        for shared in dirty.drain(..).rev() {
            let mut inner = shared.queue();
            let Some(direct) = inner.direct.as_mut() else {
                continue;
            };
            let wake = match direct.write_pending() {
                Ok(Some(packets)) => {
                    shared.backlog.fetch_sub(packets, Ordering::Relaxed);
                    false
                }
                // The writer task waits for room and writes the rest.
                Ok(None) => true,
                Err(error) => {
                    direct.keep_error(error);
                    true
                }
            };
            drop(inner);
            if wake {
                shared.waker.wake();
            }
        }
        // The list's allocation is kept for the next pass.
        DIRTY.set(dirty);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::broker::alias::OutboundAliases;
    use crate::broker::codec::{self, Packet, Properties, PubResponse, QoS};
    use crate::broker::outbound::OutLimits;
    use crate::broker::stats::BrokerStats;
    use bytes::{Bytes, BytesMut};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A written-through link to a real loopback socket, its writer task, and the client end.
    async fn direct_link() -> (
        ClientLink,
        tokio::task::JoinHandle<io::Result<()>>,
        TcpStream,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_rd, wr) = server.into_split();
        // The read half is dropped: only the write side matters here.
        let limits = OutLimits {
            max_packet: usize::MAX,
            aliases: OutboundAliases::new(0),
        };
        let stats = Arc::new(BrokerStats::default());
        let direct = DirectOut::new(wr, ProtocolVersion::V311, limits, stats);
        let (link, mut rx) = ClientLink::with_direct(Some(direct));
        let writer = tokio::spawn(async move {
            let result = rx.drive_direct().await;
            drop(rx.take_direct());
            result
        });
        (link, writer, client)
    }

    /// Reads packets until `n` are decoded (or the peer closes); each within a deadline.
    async fn read_packets(client: &mut TcpStream, n: usize) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        while out.len() < n {
            while let Some(p) = codec::decode(&mut buf, ProtocolVersion::V311, usize::MAX).unwrap()
            {
                out.push(p);
            }
            if out.len() >= n {
                break;
            }
            let read = tokio::time::timeout(Duration::from_secs(10), client.read_buf(&mut buf));
            if read.await.unwrap().unwrap() == 0 {
                break;
            }
        }
        out
    }

    fn puback_ids(packets: &[Packet]) -> Vec<u16> {
        packets
            .iter()
            .map(|p| match p {
                Packet::PubAck(a) => a.pkid,
                other => panic!("unexpected {}", other.name()),
            })
            .collect()
    }

    #[tokio::test]
    async fn routing_pass_writes_through_in_its_own_task_and_keeps_order() {
        let (link, writer, mut client) = direct_link().await;
        // Let the writer park first.
        tokio::task::yield_now().await;
        corked(|| {
            assert!(link.send(Packet::PubAck(PubResponse::new(1))));
            assert!(link.send(Packet::PubAck(PubResponse::new(2))));
            // Encoded, not written yet: the pass is not over.
            assert_eq!(link.backlog(), 2);
        });
        // Written when the pass ended, without this task yielding to the writer.
        assert_eq!(link.backlog(), 0);
        // Outside a pass the writer task writes; a pass meanwhile queues behind it.
        assert!(link.send(Packet::PubAck(PubResponse::new(3))));
        corked(|| assert!(link.send(Packet::PubAck(PubResponse::new(4)))));
        assert_eq!(link.backlog(), 2);
        let got = read_packets(&mut client, 4).await;
        assert_eq!(puback_ids(&got), vec![1, 2, 3, 4]);
        assert_eq!(link.backlog(), 0);
        // A DISCONNECT (3.1.1: none on the wire) closes; nothing after it is written.
        link.disconnect(0x8e);
        corked(|| link.send(Packet::PubAck(PubResponse::new(5))));
        writer.await.unwrap().unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest));
        assert_eq!(
            n.await.unwrap().unwrap(),
            0,
            "bytes after the close: {rest:?}"
        );
    }

    #[tokio::test]
    async fn what_the_socket_cannot_take_the_writer_writes_later_in_order() {
        let (link, writer, mut client) = direct_link().await;
        let payload = Bytes::from(vec![7u8; 64 * 1024]);
        let count: u16 = 200; // 13 MB: more than loopback socket buffers take unread
        for pkid in 1..=count {
            corked(|| {
                let publish = codec::Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "t".into(),
                    pkid,
                    payload: payload.clone(),
                    properties: Properties::new(),
                };
                assert!(link.send(Packet::Publish(publish)));
            });
        }
        // The client has read nothing: part of it waits in the link.
        assert!(link.backlog() > 0);
        let got = read_packets(&mut client, usize::from(count)).await;
        let ids: Vec<u16> = got
            .iter()
            .map(|p| match p {
                Packet::Publish(p) if p.payload.len() == payload.len() => p.pkid,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, (1..=count).collect::<Vec<_>>());
        assert_eq!(link.backlog(), 0);
        drop(link);
        // The last sender gone: the writer ends.
        writer.await.unwrap().unwrap();
    }
}
