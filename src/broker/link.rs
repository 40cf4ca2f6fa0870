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

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::sync::oneshot;

use super::codec::{self, Connect, Packet, ProtocolVersion, Publish};
use super::guard::GuardNote;
use super::transport::DirectSocket;

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
    /// Bytes already encoded for the socket (messages the router could not write straight
    /// through, see [`ClientLink::send_publish`]); not counted in the backlog.
    Encoded(Bytes),
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
    /// Items for the writer, and the router's direct writes.
    state: Mutex<LinkState>,
    /// Plain TCP clients whose packets need no per-connection state to encode: the router
    /// writes their messages to the socket itself.
    direct: Option<Direct>,
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

/// What the lock of a link guards.
#[derive(Debug, Default)]
struct LinkState {
    /// Items for the writer; boxed so that the queue stays small per slot.
    queue: VecDeque<Box<ToClient>>,
    /// Messages encoded during a routing pass, written to the socket when it ends
    /// ([`ClientLink::flush`]).
    encoded: BytesMut,
    /// The writer holds items it has not finished writing: nothing may be written past them.
    busy: bool,
    /// A DISCONNECT is queued: nothing may be written after it [MQTT-3.14.4-1].
    ending: bool,
}

impl LinkState {
    /// Hands what the router encoded to the writer, ahead of whatever is queued next.
    fn queue_encoded(&mut self) {
        if !self.encoded.is_empty() {
            let bytes = self.encoded.split().freeze();
            self.queue.push_back(Box::new(ToClient::Encoded(bytes)));
        }
    }
}

/// A socket the router may write to directly, and what it needs to encode for it.
#[derive(Debug)]
pub struct Direct {
    /// The connection's socket.
    pub socket: DirectSocket,
    /// The client's protocol version.
    pub version: ProtocolVersion,
}

impl LinkShared {
    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        // A panic while holding this short lock cannot leave the queue inconsistent.
        self.state
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
/// A direct-write buffer larger than this is freed once written.
const IDLE_ENCODED: usize = 1024;

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

    /// A link whose messages the router writes to `direct` itself whenever the writer has
    /// nothing pending (see [`ClientLink::send_publish`]).
    pub fn with_direct(direct: Option<Direct>) -> (ClientLink, LinkReceiver) {
        let shared = Arc::new(LinkShared {
            senders: AtomicUsize::new(1),
            farewell: AtomicU8::new(FAREWELL_NONE),
            direct,
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
        {
            let mut state = self.shared.state();
            // In order: what the router encoded this pass goes first.
            state.queue_encoded();
            state.ending |= matches!(item, ToClient::Disconnect { .. });
            state.queue.push_back(Box::new(item));
        }
        self.shared.waker.wake();
        true
    }

    /// Hands a PUBLISH to a network client. On a direct link whose writer has nothing
    /// pending it is encoded on the spot and written when the routing pass ends
    /// ([`ClientLink::flush`], called for every link listed in `touched`): the message
    /// reaches the socket without waking the writer task, and a pass that routes many
    /// messages to one client writes them with one system call. False when the connection
    /// is gone.
    pub fn send_publish(&self, publish: Publish, touched: &mut Vec<ClientLink>) -> bool {
        let Some(direct) = &self.shared.direct else {
            return self.send(Packet::Publish(publish));
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.shared.state();
        if state.busy || state.ending || !state.queue.is_empty() {
            drop(state);
            return self.send(Packet::Publish(publish));
        }
        if state.encoded.is_empty() {
            touched.push(self.clone());
        }
        codec::encode(
            &Packet::Publish(publish),
            direct.version,
            &mut state.encoded,
        );
        true
    }

    /// Writes what [`ClientLink::send_publish`] encoded; what the socket does not take now
    /// goes to the writer task, in order. Returns the bytes written.
    pub fn flush(&self) -> usize {
        let Some(direct) = &self.shared.direct else {
            return 0;
        };
        let mut state = self.shared.state();
        if state.encoded.is_empty() {
            return 0;
        }
        if self.shared.closed.load(Ordering::Acquire) {
            state.encoded = BytesMut::new();
            return 0;
        }
        let mut written = 0;
        // The lock is held across the write so that the writer cannot start in between.
        while written < state.encoded.len() {
            match direct.socket.try_write(&state.encoded[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The connection is broken: its reader and writer see it too and end it; a
                // QoS 1/2 message stays in the session's window for the next connection.
                Err(_) => {
                    state.encoded = BytesMut::new();
                    return written;
                }
            }
        }
        if written == state.encoded.len() {
            if state.encoded.capacity() > IDLE_ENCODED {
                state.encoded = BytesMut::new();
            } else {
                state.encoded.clear();
            }
            return written;
        }
        let _sent = state.encoded.split_to(written);
        state.queue_encoded();
        drop(state);
        self.shared.waker.wake();
        written
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
        std::mem::take(&mut *self.shared.state());
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
        let mut state = self.shared.state();
        if state.queue.is_empty() {
            let gone = self.shared.senders.load(Ordering::Acquire) == 0;
            return gone.then_some(0);
        }
        let n = state.queue.len().min(limit.max(1));
        into.extend(state.queue.drain(..n));
        if state.queue.is_empty() && state.queue.capacity() > IDLE_QUEUE_SLOTS {
            state.queue = VecDeque::new();
        }
        state.busy = true;
        Some(n)
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.shared.state().queue.is_empty()
    }

    /// Marks `n` packets as written, with everything the writer took: the router may write
    /// to the socket again.
    pub fn written(&self, n: usize) {
        self.shared.backlog.fetch_sub(n, Ordering::Relaxed);
        self.shared.state().busy = false;
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
    use crate::broker::codec::{Properties, QoS};
    use crate::broker::transport::{ConnWrite, split_tcp};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    fn publish(pkid: u16, len: usize) -> Publish {
        Publish {
            dup: false,
            qos: if pkid == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            retain: false,
            topic: ByteString::from_static("a/b"),
            pkid,
            payload: Bytes::from(vec![7u8; len]),
            properties: Properties::new(),
        }
    }

    /// A direct link on a real loopback connection: the server's link and the client socket.
    async fn direct_pair() -> (ClientLink, LinkReceiver, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_rd, wr) = split_tcp(server);
        let socket = wr.direct().unwrap();
        let direct = Direct {
            socket,
            version: ProtocolVersion::V311,
        };
        let (link, rx) = ClientLink::with_direct(Some(direct));
        (link, rx, client)
    }

    /// Reads `n` packets from `client` and returns their packet ids.
    async fn read_pkids(client: &mut TcpStream, n: usize) -> Vec<u16> {
        let mut buf = BytesMut::new();
        let mut ids = Vec::new();
        while ids.len() < n {
            loop {
                match codec::decode(&mut buf, ProtocolVersion::V311, usize::MAX).unwrap() {
                    Some(Packet::Publish(p)) => ids.push(p.pkid),
                    Some(other) => panic!("unexpected {}", other.name()),
                    None => break,
                }
            }
            if ids.len() < n {
                let read = tokio::time::timeout(Duration::from_secs(10), client.read_buf(&mut buf));
                assert!(read.await.unwrap().unwrap() > 0, "connection closed early");
            }
        }
        ids
    }

    #[allow(clippy::vec_box, reason = "what the writer takes")]
    fn queued(rx: &LinkReceiver) -> Vec<Box<ToClient>> {
        let mut items = Vec::new();
        let _n = rx.take(&mut items, usize::MAX);
        items
    }

    #[tokio::test]
    async fn a_pass_writes_its_messages_with_one_flush_and_queues_nothing() {
        let (link, rx, mut client) = direct_pair().await;
        let mut touched = Vec::new();
        for id in 1..=3 {
            assert!(link.send_publish(publish(id, 10), &mut touched));
        }
        assert_eq!(touched.len(), 1, "a link is listed once per pass");
        assert!(rx.is_empty(), "nothing for the writer task");
        let written = touched[0].flush();
        assert_eq!(written, 3 * (2 + 2 + 3 + 2 + 10));
        assert_eq!(read_pkids(&mut client, 3).await, vec![1, 2, 3]);
        assert_eq!(link.backlog(), 0);
    }

    #[tokio::test]
    async fn a_busy_writer_keeps_the_order_by_taking_later_messages_too() {
        let (link, rx, _client) = direct_pair().await;
        assert!(link.send(Packet::PingResp));
        assert_eq!(
            queued(&rx).len(),
            1,
            "the writer took the PINGRESP and is writing it"
        );
        let mut touched = Vec::new();
        assert!(link.send_publish(publish(5, 1), &mut touched));
        assert!(touched.is_empty(), "not written past the writer's packet");
        let items = queued(&rx);
        assert!(matches!(&*items[0], ToClient::Packet(Packet::Publish(p)) if p.pkid == 5));
        // Once the writer has written what it took, the router may write again.
        rx.written(2);
        assert!(link.send_publish(publish(6, 1), &mut touched));
        assert_eq!(touched.len(), 1);
    }

    #[tokio::test]
    async fn a_packet_queued_after_direct_messages_goes_behind_them() {
        let (link, rx, _client) = direct_pair().await;
        let mut touched = Vec::new();
        assert!(link.send_publish(publish(1, 1), &mut touched));
        assert!(link.send(Packet::PingResp));
        // The pass ends: nothing left to write directly, the writer has both in order.
        assert_eq!(touched[0].flush(), 0);
        let items = queued(&rx);
        assert_eq!(items.len(), 2);
        assert!(matches!(&*items[0], ToClient::Encoded(b) if b.len() == 2 + 2 + 3 + 2 + 1));
        assert!(matches!(&*items[1], ToClient::Packet(Packet::PingResp)));
    }

    #[tokio::test]
    async fn nothing_is_written_directly_after_a_disconnect() {
        let (link, rx, _client) = direct_pair().await;
        link.disconnect(0x8E);
        let _taken = queued(&rx);
        rx.written(0);
        let mut touched = Vec::new();
        assert!(link.send_publish(publish(1, 1), &mut touched));
        assert!(
            touched.is_empty(),
            "[MQTT-3.14.4-1]: nothing after DISCONNECT on the wire"
        );
    }

    #[tokio::test]
    async fn what_a_full_socket_does_not_take_goes_to_the_writer_in_order() {
        let (link, rx, mut client) = direct_pair().await;
        let mut touched = Vec::new();
        // Far more than the socket buffers hold while nobody reads.
        let count = 800u16;
        for id in 1..=count {
            assert!(link.send_publish(publish(id, 16 * 1024), &mut touched));
        }
        let written = touched[0].flush();
        let one = codec::encoded_len(
            &Packet::Publish(publish(1, 16 * 1024)),
            ProtocolVersion::V311,
        );
        let total = usize::from(count) * one;
        assert!(written < total, "the socket took everything: {written}");
        let items = queued(&rx);
        let rest: usize = items
            .iter()
            .map(|i| match &**i {
                ToClient::Encoded(b) => b.len(),
                _ => panic!("only encoded bytes expected"),
            })
            .sum();
        assert_eq!(written + rest, total);
        // Later messages wait behind the rest.
        assert!(link.send_publish(publish(999, 1), &mut touched));
        assert_eq!(queued(&rx).len(), 1);
        // The client reads what was written directly, in order, up to the cut.
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; written];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), written);
        assert_eq!(got[0], 0x32, "a QoS 1 PUBLISH comes first");
    }

    #[tokio::test]
    async fn a_link_without_a_socket_queues_every_message() {
        let (link, rx) = ClientLink::new();
        let mut touched = Vec::new();
        assert!(link.send_publish(publish(1, 1), &mut touched));
        assert!(touched.is_empty());
        assert_eq!(queued(&rx).len(), 1);
        assert_eq!(link.backlog(), 1);
    }
}
