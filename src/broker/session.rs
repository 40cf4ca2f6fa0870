//! Per-client session state, sans-IO: QoS 1/2 packet ids, the in-flight window, the queue of
//! messages waiting for the window or for the client to come back, and incoming QoS 2 ids.
//!
//! Methods take packets and return what to send; the router does the sending. MQTT 3.1.1
//! section 4.3 (QoS flows), 4.4 (redelivery with DUP on reconnect) and 4.6 (ordering).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::codec::{LastWill, Packet, ProtocolVersion, PubResponse, Publish, QoS};
use super::codec::{Properties, Property, SubscriptionOptions};
use super::guard::GuardNote;
use super::link::{ClientLink, ConnId, Origin};
use super::tracking::{Settlement, Tracker};
use crate::store::Journal;
use std::sync::Arc;

mod inflight;
pub(crate) mod stored;

use inflight::{InflightMap, PkidSet};

/// Stable identity of a session, key of the subscription trie.
pub type SessionId = u64;

/// Session Expiry Interval meaning "never expires" (MQTT 5 section 3.1.2.11.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// One subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubEntry {
    /// Options from SUBSCRIBE.
    pub options: SubscriptionOptions,
    /// MQTT 5 Subscription Identifier.
    pub id: Option<u32>,
}

/// A connected client as the session sees it.
#[derive(Debug)]
pub struct Attached {
    /// The connection.
    pub conn: ConnId,
    /// Where packets go.
    pub link: ClientLink,
    /// Protocol version of this connection.
    pub version: ProtocolVersion,
    /// In-flight window toward this client: min(broker max_inflight, client Receive Maximum).
    pub window: usize,
    /// An in-process client: PUBLISHes go with their origin.
    pub internal: bool,
    /// The broker asked this connection to close (protocol error found by the router):
    /// packets still on their way from it are ignored.
    pub kicked: bool,
    /// MQTT 5 Request Problem Information: Reason Strings may go on acknowledgements.
    pub problem_info: bool,
}

impl Attached {
    /// Hands a message to the client; a link written straight through is listed in
    /// `touched`, to be flushed when the routing pass ends (see [`ClientLink::send_publish`]).
    pub fn send_message(&self, message: Outgoing, touched: &mut Vec<ClientLink>) {
        if self.internal {
            self.link
                .deliver(message.publish, message.origin, message.carried);
        } else {
            self.link.send_publish(message.publish, touched);
        }
    }

    /// Sends what a reconnecting session must get again.
    pub fn resend(&self, item: Resend, touched: &mut Vec<ClientLink>) {
        match item {
            Resend::Publish(message) => self.send_message(message, touched),
            Resend::Release(id) => {
                self.link.send(Packet::PubRel(PubResponse::new(id)));
            }
        }
    }
}

/// A message on its way to one client. `origin` is filled only for in-process clients
/// (the bridge), which need to know who published.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The PUBLISH as this client gets it.
    pub publish: Publish,
    /// The publisher, for in-process clients.
    pub origin: Option<Arc<Origin>>,
    /// MQTT 5 Message Expiry: when the message expires.
    pub expires: Option<Instant>,
    /// The shared subscription group it was given to, if any (to redeliver it to another
    /// member should this session end first).
    pub shared: Option<u64>,
    /// Set when the publisher (an in-process client) wants to know how this copy ends.
    pub track: Option<Arc<Tracker>>,
    /// Its key in the store's messages table; 0 when not stored.
    pub stored: u64,
    /// What the publish guard worked out about it (see [`GuardNote`]), for in-process clients
    /// only; `None` for everything else, and for copies read back from the store.
    pub carried: Option<GuardNote>,
}

impl Outgoing {
    /// A message without expiry, not from a shared subscription.
    pub fn new(publish: Publish) -> Self {
        Outgoing {
            publish,
            origin: None,
            expires: None,
            shared: None,
            track: None,
            stored: 0,
            carried: None,
        }
    }

    /// Tells the publisher how this copy ended, if it asked.
    pub fn settle(&self, client_id: &ByteString, how: Settlement) {
        if let Some(track) = &self.track {
            track.settle(client_id, how);
        }
    }

    /// Sets the Message Expiry Interval to what is left of it (rounded up); false when the
    /// message has expired [MQTT-3.3.2-5], [MQTT-3.3.2-6].
    pub fn refresh_expiry(&mut self, now: Instant) -> bool {
        let Some(at) = self.expires else {
            return true;
        };
        let left = at.saturating_duration_since(now);
        if left.is_zero() {
            return false;
        }
        let secs = u32::try_from(left.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        for p in &mut self.publish.properties.0 {
            if let Property::MessageExpiryInterval(v) = p {
                *v = secs;
            }
        }
        true
    }
}

/// When a message with this Message Expiry Interval (seconds) received `now` expires.
pub fn expiry_of(publish: &Publish, now: Instant) -> Option<Instant> {
    if publish.properties.is_empty() {
        return None;
    }
    let secs = publish.properties.message_expiry_interval()?;
    Some(now + Duration::from_secs(u64::from(secs)))
}

/// What to send again when a kept session reconnects.
#[derive(Debug)]
pub enum Resend {
    /// A PUBLISH with DUP set.
    Publish(Outgoing),
    /// A PUBREL.
    Release(u16),
}

/// A message waiting in or behind the in-flight window.
#[derive(Debug, Clone)]
enum Inflight {
    /// PUBLISH sent (QoS 1 or 2), waiting for PUBACK or PUBREC.
    Published(Outgoing),
    /// PUBREL sent, waiting for PUBCOMP (packet id, key in the store or 0).
    Released(u16, u64),
}

impl Inflight {
    #[cfg(test)]
    fn pkid(&self) -> u16 {
        match self {
            Inflight::Published(m) => m.publish.pkid,
            Inflight::Released(id, _) => *id,
        }
    }

    /// Its key in the store's messages table; 0 when not stored.
    fn stored(&self) -> u64 {
        match self {
            Inflight::Published(m) => m.stored,
            Inflight::Released(_, stored) => *stored,
        }
    }
}

/// What happened to a message offered to a session.
#[derive(Debug)]
pub enum Offer {
    /// Send this now (QoS 0 as is, QoS 1/2 with its packet id and in flight).
    Send(Outgoing),
    /// Kept in the queue.
    Queued,
    /// The queue is full: the message was dropped.
    Overflow,
    /// Not kept: QoS 0 for a client that is not connected.
    Discarded,
}

/// The state of one client session.
#[derive(Debug)]
pub struct Session {
    /// Stable id (trie key).
    pub id: SessionId,
    /// MQTT Client Identifier.
    pub client_id: ByteString,
    /// The connection, while the client is connected.
    pub attached: Option<Attached>,
    /// Seconds the session outlives its connection; 0 ends it with the connection.
    pub expiry: u32,
    /// When the client went away (for expiry).
    pub detached_at: Option<Instant>,
    /// The will of the current connection.
    pub will: Option<LastWill>,
    /// A will waiting for its Will Delay Interval, and when it is due.
    pub pending_will: Option<(LastWill, Instant)>,
    /// The client's MQTT 5 Maximum Packet Size (`usize::MAX` when unlimited): larger
    /// messages are dropped for this client.
    pub max_packet: usize,
    /// Who this client is as a publisher (client id and authenticated user name).
    pub identity: Arc<Origin>,
    /// Subscriptions by filter, mirrored in the router's trie.
    pub subscriptions: HashMap<ByteString, SubEntry>,
    /// Keyed by packet id (O(1) acknowledgements and id allocation even with tens of
    /// thousands in flight: the bridge's in-process session has the whole id space as its
    /// window), in sending order.
    inflight: InflightMap,
    queue: VecDeque<Outgoing>,
    next_pkid: u16,
    /// Incoming QoS 2 packet ids received and not yet released (duplicate suppression).
    incoming_qos2: PkidSet,
    /// True once this session dropped a message, until the queue has room again (log once).
    pub overflowing: bool,
    /// Where changes go when this session is persistent and the store is on.
    pub journal: Option<Arc<Journal>>,
}

impl Session {
    /// A new, empty session.
    pub fn new(id: SessionId, client_id: ByteString, expiry: u32) -> Self {
        let identity = Arc::new(Origin {
            client_id: client_id.clone(),
            username: None,
        });
        Session {
            id,
            client_id,
            attached: None,
            expiry,
            detached_at: None,
            will: None,
            pending_will: None,
            max_packet: usize::MAX,
            identity,
            subscriptions: HashMap::new(),
            inflight: InflightMap::default(),
            queue: VecDeque::new(),
            next_pkid: 0,
            incoming_qos2: PkidSet::default(),
            overflowing: false,
            journal: None,
        }
    }

    /// Messages waiting behind the window.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Messages in flight toward the client.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    fn window(&self) -> usize {
        self.attached.as_ref().map_or(0, |a| a.window)
    }

    /// Offers a message for delivery at `qos` (already the minimum of publish and
    /// subscription QoS). `max_queued` bounds the queue.
    pub fn offer(&mut self, mut message: Outgoing, max_queued: usize) -> Offer {
        if message.expires.is_some() && !message.refresh_expiry(Instant::now()) {
            message.settle(&self.client_id, Settlement::Expired);
            return Offer::Discarded;
        }
        if message.publish.qos == QoS::AtMostOnce {
            message.publish.pkid = 0;
            message.publish.dup = false;
            return if self.attached.is_some() {
                Offer::Send(message)
            } else {
                Offer::Discarded
            };
        }
        message.stored = self.journal.as_ref().map_or(0, |j| j.next_seq());
        if self.attached.is_some() && self.queue.is_empty() && self.inflight.len() < self.window() {
            return Offer::Send(self.start_flight(message));
        }

        if self.queue.len() >= max_queued {
            message.settle(&self.client_id, Settlement::Dropped("queue_full"));
            return Offer::Overflow;
        }
        self.store_queued(&message);
        self.queue.push_back(message);
        Offer::Queued
    }

    fn start_flight(&mut self, mut message: Outgoing) -> Outgoing {
        message.publish.pkid = self.allocate_pkid();
        message.publish.dup = false;
        self.store_published(&message);
        let pkid = message.publish.pkid;
        let pushed = self
            .inflight
            .push_back(pkid, Inflight::Published(message.clone()));
        debug_assert!(pushed, "allocate_pkid gives a free id");
        message
    }

    fn allocate_pkid(&mut self) -> u16 {
        // The window is far below 65,535, so a free id is always found.
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid == 0 {
                self.next_pkid = 1;
            }
            let id = self.next_pkid;
            if !self.inflight.contains(id) {
                return id;
            }
        }
    }

    /// Moves queued messages into the window while it has room; expired ones are dropped
    /// on the way, the others get their remaining Message Expiry Interval.
    pub fn fill_window(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.fill_window_into(&mut out);
        out
    }

    /// As [`Session::fill_window`], appending to `out` (a buffer the caller reuses).
    pub fn fill_window_into(&mut self, out: &mut Vec<Outgoing>) {
        if self.attached.is_none() {
            return;
        }
        let mut now = None;
        while self.inflight.len() < self.window() {
            let Some(mut next) = self.queue.pop_front() else {
                break;
            };
            if next.expires.is_some() && !next.refresh_expiry(*now.get_or_insert_with(Instant::now))
            {
                next.settle(&self.client_id, Settlement::Expired);
                self.unstore(next.stored);
                continue;
            }
            out.push(self.start_flight(next));
        }
        if self.queue.is_empty() {
            self.overflowing = false;
        }
    }

    /// PUBACK from the client (`accepted`: its reason code is below 0x80). False when
    /// nothing matched (a stray ack, or one for a QoS 2 message).
    pub fn on_puback(&mut self, pkid: u16, accepted: bool) -> bool {
        if !matches!(self.inflight.get(pkid),
            Some(Inflight::Published(m)) if m.publish.qos == QoS::AtLeastOnce)
        {
            return false;
        }
        if let Some(Inflight::Published(m)) = self.inflight.remove(pkid) {
            m.settle(&self.client_id, acknowledged(accepted));
            self.unstore(m.stored);
        }
        true
    }

    /// PUBREC from the client: the message is now the client's (unless `accepted` is false:
    /// an MQTT 5 reason code of 0x80 or more); answer PUBREL.
    pub fn on_pubrec(&mut self, pkid: u16, accepted: bool) -> Packet {
        // A PUBREC for an id already released is a retransmission: answer PUBREL again.
        if let Some(Inflight::Published(m)) = self.inflight.get(pkid) {
            let stored = m.stored;
            self.store_released(stored, pkid);
            if let Some(Inflight::Published(m)) = self
                .inflight
                .replace(pkid, Inflight::Released(pkid, stored))
            {
                m.settle(&self.client_id, acknowledged(accepted));
            }
        }
        Packet::PubRel(PubResponse::new(pkid))
    }

    /// PUBCOMP from the client. False when nothing matched.
    pub fn on_pubcomp(&mut self, pkid: u16) -> bool {
        if !matches!(self.inflight.get(pkid), Some(Inflight::Released(..))) {
            return false;
        }
        if let Some(entry) = self.inflight.remove(pkid) {
            self.unstore(entry.stored());
        }
        true
    }

    /// Incoming QoS 2 messages not yet released.
    pub fn incoming_qos2(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// Incoming QoS 2 PUBLISH: true when it is new and must be routed, false for a
    /// retransmission of an id not yet released (method B of MQTT 3.1.1 figure 4.3).
    pub fn receive_qos2(&mut self, pkid: u16) -> bool {
        let fresh = self.incoming_qos2.insert(pkid);
        if fresh {
            self.store_qos2(pkid, true);
        }
        fresh
    }

    /// Incoming PUBREL: forgets the id. False when the id was unknown.
    pub fn release_qos2(&mut self, pkid: u16) -> bool {
        let known = self.incoming_qos2.remove(&pkid);
        if known {
            self.store_qos2(pkid, false);
        }
        known
    }

    /// On reconnect of a kept session: every unacknowledged PUBLISH again with DUP set, every
    /// PUBREL again, in the original order (MQTT 3.1.1 section 4.4).
    pub fn resend_inflight(&mut self) -> Vec<Resend> {
        self.inflight
            .iter()
            .map(|m| match m {
                Inflight::Published(m) => {
                    let mut m = m.clone();
                    m.publish.dup = true;
                    // Onward delivery started: an expired message is still completed.
                    let _still_valid = m.refresh_expiry(Instant::now());
                    Resend::Publish(m)
                }
                Inflight::Released(id, _) => Resend::Release(*id),
            })
            .collect()
    }

    /// Takes every message given to this session by a shared subscription and not yet
    /// acknowledged (in flight or queued), for redelivery to another member of its group.
    /// Only for a session that is ending: its in-flight state is emptied.
    pub fn take_shared(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let ended = |m: &Outgoing| m.settle(&self.client_id, Settlement::Dropped("session_ended"));
        for m in self.inflight.drain() {
            if let Inflight::Published(m) = m {
                if m.shared.is_some() {
                    out.push(m);
                } else {
                    ended(&m);
                }
            }
        }
        for m in self.queue.drain(..) {
            if m.shared.is_some() {
                out.push(m);
            } else {
                ended(&m);
            }
        }
        // Stored again under the member that takes them.
        for m in &mut out {
            m.stored = 0;
        }
        out
    }

    /// Drops the connection-bound state that does not survive a reconnect.
    pub fn detach(&mut self, now: Instant) -> Option<Attached> {
        self.detached_at = Some(now);
        self.attached.take()
    }
}

fn acknowledged(accepted: bool) -> Settlement {
    if accepted {
        Settlement::Acknowledged
    } else {
        Settlement::Dropped("refused_by_subscriber")
    }
}

impl Drop for Session {
    /// A session that ends with tracked messages still unacknowledged tells their publisher
    /// (what `take_shared` moved to another member is no longer here).
    fn drop(&mut self) {
        for m in self.inflight.iter() {
            if let Inflight::Published(m) = m {
                m.settle(&self.client_id, Settlement::Dropped("session_ended"));
            }
        }
        for m in &self.queue {
            m.settle(&self.client_id, Settlement::Dropped("session_ended"));
        }
    }
}

/// Builds the PUBLISH that delivers a will.
pub fn will_publish(will: LastWill) -> Publish {
    Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        pkid: 0,
        payload: will.payload,
        properties: will_properties(will.properties),
    }
}

/// Will properties that travel with the message (Will Delay Interval stays behind).
fn will_properties(mut props: Properties) -> Properties {
    props.remove_where(|p| matches!(p, super::codec::Property::WillDelayInterval(_)));
    props
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(qos: QoS) -> Outgoing {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: ByteString::from_static("a/b"),
            pkid: 0,
            payload: Bytes::from_static(b"x"),
            properties: Properties::new(),
        };
        Outgoing::new(publish)
    }

    fn attached(window: usize) -> Attached {
        let (link, _rx) = ClientLink::new();
        Attached {
            conn: 1,
            link,
            version: ProtocolVersion::V311,
            window,
            internal: false,
            kicked: false,
            problem_info: true,
        }
    }

    #[test]
    fn qos0_is_sent_when_connected_and_discarded_when_not() {
        let mut s = Session::new(1, "c".into(), 0);
        assert!(matches!(
            s.offer(publish(QoS::AtMostOnce), 10),
            Offer::Discarded
        ));
        s.attached = Some(attached(1));
        assert!(
            matches!(s.offer(publish(QoS::AtMostOnce), 10), Offer::Send(m) if m.publish.pkid == 0)
        );
    }

    #[test]
    fn window_then_queue_then_overflow() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        s.attached = Some(attached(2));
        let a = s.offer(publish(QoS::AtLeastOnce), 1);
        let b = s.offer(publish(QoS::ExactlyOnce), 1);
        assert!(matches!(a, Offer::Send(ref m) if m.publish.pkid == 1));
        assert!(matches!(b, Offer::Send(ref m) if m.publish.pkid == 2));
        assert!(matches!(
            s.offer(publish(QoS::AtLeastOnce), 1),
            Offer::Queued
        ));
        assert!(matches!(
            s.offer(publish(QoS::AtLeastOnce), 1),
            Offer::Overflow
        ));
        assert!(s.on_puback(1, true));
        assert!(
            !s.on_puback(1, true),
            "a second PUBACK for the same id is stray"
        );
        let next = s.fill_window();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].publish.pkid, 3);
    }

    #[test]
    fn qos2_outbound_flow() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        s.attached = Some(attached(10));
        let Offer::Send(Outgoing { publish: p, .. }) = s.offer(publish(QoS::ExactlyOnce), 10)
        else {
            panic!()
        };
        assert!(
            !s.on_puback(p.pkid, true),
            "PUBACK does not complete a QoS 2 flow"
        );
        assert_eq!(
            s.on_pubrec(p.pkid, true),
            Packet::PubRel(PubResponse::new(p.pkid))
        );
        assert_eq!(s.inflight(), 1);
        assert!(s.on_pubcomp(p.pkid));
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn resend_sets_dup_and_keeps_order() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        s.attached = Some(attached(10));
        for _ in 0..3 {
            s.offer(publish(QoS::ExactlyOnce), 10);
        }
        s.on_pubrec(2, true);
        s.detach(Instant::now());
        let again = s.resend_inflight();
        assert!(matches!(&again[0], Resend::Publish(m) if m.publish.dup && m.publish.pkid == 1));
        assert!(matches!(again[1], Resend::Release(2)));
        assert!(matches!(&again[2], Resend::Publish(m) if m.publish.dup && m.publish.pkid == 3));
    }

    #[test]
    fn acks_out_of_order_free_their_ids_and_keep_the_rest_in_order() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        s.attached = Some(attached(10));
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce].repeat(3) {
            assert!(matches!(s.offer(publish(qos), 10), Offer::Send(_)));
        }
        // Ids 1, 3, 5 are QoS 1; 2, 4, 6 QoS 2.
        assert!(s.on_puback(3, true), "from the middle");
        assert!(!s.on_puback(4, true), "QoS 2 is not PUBACKed");
        assert!(!s.on_pubcomp(4), "PUBCOMP before PUBREC is stray");
        assert_eq!(s.on_pubrec(4, true), Packet::PubRel(PubResponse::new(4)));
        assert!(!s.on_puback(4, true), "released: PUBACK still stray");
        assert_eq!(
            s.on_pubrec(4, true),
            Packet::PubRel(PubResponse::new(4)),
            "a retransmitted PUBREC gets PUBREL again"
        );
        assert!(s.on_puback(5, true), "the newest");
        assert_eq!(s.inflight(), 4);
        s.detach(Instant::now());
        let again: Vec<(u16, bool)> = s
            .resend_inflight()
            .iter()
            .map(|r| match r {
                Resend::Publish(m) => (m.publish.pkid, false),
                Resend::Release(id) => (*id, true),
            })
            .collect();
        assert_eq!(again, [(1, false), (2, false), (4, true), (6, false)]);
        s.attached = Some(attached(10));
        // Freed ids are taken again once the counter comes round; ids in flight are skipped.
        s.next_pkid = 0;
        let Offer::Send(m) = s.offer(publish(QoS::AtLeastOnce), 10) else {
            panic!()
        };
        assert_eq!(m.publish.pkid, 3);
        assert!(s.on_pubcomp(4));
        assert!(!s.on_pubcomp(4), "a second PUBCOMP is stray");
    }

    #[test]
    fn a_full_id_space_is_acknowledged_in_any_order() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        s.attached = Some(attached(usize::from(u16::MAX)));
        for _ in 0..u16::MAX {
            assert!(matches!(
                s.offer(publish(QoS::AtLeastOnce), 1),
                Offer::Send(_)
            ));
        }
        assert!(matches!(
            s.offer(publish(QoS::AtLeastOnce), 1),
            Offer::Queued
        ));
        for id in (1..=u16::MAX).rev() {
            assert!(s.on_puback(id, true), "{id}");
        }
        assert_eq!(s.inflight(), 0);
        assert_eq!(s.fill_window().len(), 1);
    }

    #[test]
    fn restored_in_flight_state_keeps_store_order_and_refuses_reused_ids() {
        use crate::store::record::MessageState;
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        assert!(s.restore_message(
            10,
            MessageState::Published(7),
            Some(publish(QoS::ExactlyOnce))
        ));
        assert!(s.restore_message(11, MessageState::Released(3), None));
        assert!(s.restore_message(12, MessageState::Queued, Some(publish(QoS::AtLeastOnce))));
        assert!(
            !s.restore_message(13, MessageState::Released(7), None),
            "id 7 is already in flight"
        );
        assert!(!s.restore_message(
            14,
            MessageState::Published(0),
            Some(publish(QoS::AtLeastOnce))
        ));
        assert_eq!((s.inflight(), s.queued()), (2, 1));
        s.attached = Some(attached(10));
        let again = s.resend_inflight();
        assert!(matches!(&again[0], Resend::Publish(m) if m.publish.pkid == 7 && m.publish.dup));
        assert!(matches!(again[1], Resend::Release(3)));
        // New ids continue above the highest restored one and skip those in flight.
        let sent = s.fill_window();
        assert_eq!(sent[0].publish.pkid, 8);
        assert_eq!(s.on_pubrec(7, true), Packet::PubRel(PubResponse::new(7)));
        assert!(s.on_pubcomp(7) && s.on_pubcomp(3));
        assert!(s.on_puback(8, true));
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn offline_persistent_session_queues_qos1() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        assert!(matches!(
            s.offer(publish(QoS::AtLeastOnce), 10),
            Offer::Queued
        ));
        s.attached = Some(attached(10));
        assert_eq!(s.fill_window().len(), 1);
    }

    #[test]
    fn queued_messages_expire_and_carry_the_remaining_interval() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        let now = Instant::now();
        let mut gone = publish(QoS::AtLeastOnce);
        gone.expires = Some(now + Duration::from_millis(20));
        gone.publish
            .properties
            .push(Property::MessageExpiryInterval(1));
        let mut kept = publish(QoS::AtLeastOnce);
        kept.expires = Some(now + Duration::from_secs(100));
        kept.publish
            .properties
            .push(Property::MessageExpiryInterval(120));
        assert!(matches!(s.offer(gone, 10), Offer::Queued));
        assert!(matches!(s.offer(kept, 10), Offer::Queued));
        std::thread::sleep(Duration::from_millis(30));
        s.attached = Some(attached(10));
        let out = s.fill_window();
        assert_eq!(out.len(), 1, "the expired message is dropped");
        let left = out[0].publish.properties.message_expiry_interval().unwrap();
        assert!((99..=100).contains(&left), "{left}");
    }

    #[test]
    fn incoming_qos2_duplicates_are_suppressed() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        assert!(s.receive_qos2(7));
        assert!(!s.receive_qos2(7));
        assert!(s.release_qos2(7));
        assert!(!s.release_qos2(7));
        assert!(s.receive_qos2(7));
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_flight() {
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        s.attached = Some(attached(10));
        s.next_pkid = u16::MAX - 1;
        let Offer::Send(a) = s.offer(publish(QoS::AtLeastOnce), 10) else {
            panic!()
        };
        let Offer::Send(b) = s.offer(publish(QoS::AtLeastOnce), 10) else {
            panic!()
        };
        assert_eq!((a.publish.pkid, b.publish.pkid), (u16::MAX, 1));
    }

    fn tracked(
        qos: QoS,
        rx_to: &tokio::sync::mpsc::UnboundedSender<crate::broker::tracking::Tracked>,
        token: u64,
    ) -> Outgoing {
        let mut m = publish(qos);
        m.track = Some(Arc::new(Tracker::new(token, rx_to.clone())));
        m
    }

    fn settled(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::broker::tracking::Tracked>,
    ) -> Vec<(u64, Settlement)> {
        let mut out = Vec::new();
        while let Ok(crate::broker::tracking::Tracked::Settled { token, how, .. }) = rx.try_recv() {
            out.push((token, how));
        }
        out
    }

    #[test]
    fn tracked_copies_settle_on_ack_never_on_send() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        s.attached = Some(attached(10));
        let Offer::Send(a) = s.offer(tracked(QoS::AtLeastOnce, &tx, 1), 10) else {
            panic!()
        };
        let Offer::Send(b) = s.offer(tracked(QoS::ExactlyOnce, &tx, 2), 10) else {
            panic!()
        };
        assert!(settled(&mut rx).is_empty(), "sending is not acknowledging");
        s.on_puback(a.publish.pkid, true);
        s.on_pubrec(b.publish.pkid, true);
        assert_eq!(
            settled(&mut rx),
            vec![(1, Settlement::Acknowledged), (2, Settlement::Acknowledged)]
        );
        s.on_pubcomp(b.publish.pkid);
        assert!(settled(&mut rx).is_empty(), "PUBCOMP settles nothing more");
        let Offer::Send(c) = s.offer(tracked(QoS::AtLeastOnce, &tx, 3), 10) else {
            panic!()
        };
        s.on_puback(c.publish.pkid, false);
        assert_eq!(
            settled(&mut rx),
            vec![(3, Settlement::Dropped("refused_by_subscriber"))]
        );
    }

    #[test]
    fn tracked_copies_of_an_offline_session_settle_after_reconnect_or_when_it_ends() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut s = Session::new(1, "c".into(), NEVER_EXPIRES);
        assert!(matches!(
            s.offer(tracked(QoS::AtLeastOnce, &tx, 1), 1),
            Offer::Queued
        ));
        assert!(matches!(
            s.offer(tracked(QoS::AtLeastOnce, &tx, 2), 1),
            Offer::Overflow
        ));
        assert_eq!(
            settled(&mut rx),
            vec![(2, Settlement::Dropped("queue_full"))]
        );
        s.attached = Some(attached(10));
        let sent = s.fill_window();
        assert!(settled(&mut rx).is_empty());
        s.on_puback(sent[0].publish.pkid, true);
        assert_eq!(settled(&mut rx), vec![(1, Settlement::Acknowledged)]);
        let mut gone = tracked(QoS::AtLeastOnce, &tx, 4);
        gone.expires = Some(Instant::now());
        s.detach(Instant::now());
        assert!(matches!(s.offer(gone, 10), Offer::Discarded));
        assert_eq!(settled(&mut rx), vec![(4, Settlement::Expired)]);
        assert!(matches!(
            s.offer(tracked(QoS::AtLeastOnce, &tx, 5), 10),
            Offer::Queued
        ));
        drop(s);
        assert_eq!(
            settled(&mut rx),
            vec![(5, Settlement::Dropped("session_ended"))]
        );
    }
}
