//! The router: one task that owns every session, the subscription trie and the retained
//! messages, addressed by [`RouterMsg`]s from the connections.
//!
//! A single owner keeps session takeover, QoS state and fan-out free of locks and races. It
//! never awaits a connection (see `link`), so a slow client cannot stall it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{
    ConnAck, LastWill, Packet, Properties, Property, ProtocolVersion, PubResponse, Publish, QoS,
    RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, publish_len, reason,
};
use super::config::BrokerConfig;
use super::connack::connack_properties;
use super::guard::{PublishGuard, Refused};
use super::link::{CloseCause, ConnId, ConnectOutcome, ConnectRequest, Origin, RouterMsg};
use super::session::{
    Attached, NEVER_EXPIRES, Offer, Outgoing, Session, SessionId, SubEntry, expiry_of, will_publish,
};
use super::shared::{GroupId, SharedGroups};
use super::stats::BrokerStats;
use super::topic::{is_wildcard, parse_shared, validate_topic_filter};
use super::trie::{RetainedTree, SubscriptionTree};

/// How often detached sessions are checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// Router messages handled per wake-up.
const BATCH: usize = 128;

/// One subscriber of a message being routed, after merging overlapping subscriptions.
#[derive(Debug)]
struct Target {
    session: SessionId,
    qos: QoS,
    retain_as_published: bool,
    subscription_ids: Vec<u32>,
    /// The share group the message was given to this session by.
    shared: Option<GroupId>,
}

/// A retained message and when it expires (MQTT 5 Message Expiry Interval).
#[derive(Debug)]
struct Retained {
    publish: Publish,
    expires: Option<Instant>,
}

/// The router's state.
pub struct Router {
    cfg: Arc<BrokerConfig>,
    stats: Arc<BrokerStats>,
    /// Boxed: a session is ~380 bytes and the map keeps up to twice as many slots as entries.
    sessions: HashMap<SessionId, Box<Session>>,
    by_client: HashMap<ByteString, SessionId>,
    by_conn: HashMap<ConnId, SessionId>,
    subs: SubscriptionTree<SessionId, SubEntry>,
    retained: RetainedTree<Retained>,
    /// `$share/{group}/{filter}` subscriptions.
    shared: SharedGroups,
    next_session: SessionId,
    /// Connections taken over whose close has not been reported yet, with the will to
    /// publish unless that close turns out to be a plain DISCONNECT.
    taken_over: HashMap<ConnId, (SessionId, LastWill)>,
    /// Checks client publishes before routing (installed by the bridge).
    guard: Option<Arc<dyn PublishGuard>>,
    /// Scratch space reused by every fan-out.
    targets: Vec<Target>,
    started: Instant,
}

impl Router {
    /// An empty router.
    pub fn new(cfg: Arc<BrokerConfig>, stats: Arc<BrokerStats>) -> Self {
        Router {
            cfg,
            stats,
            sessions: HashMap::new(),
            by_client: HashMap::new(),
            by_conn: HashMap::new(),
            subs: SubscriptionTree::new(),
            retained: RetainedTree::new(),
            shared: SharedGroups::new(),
            next_session: 1,
            taken_over: HashMap::new(),
            guard: None,
            targets: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Runs until `shutdown` fires or every sender is gone; then publishes the wills of the
    /// connected clients and disconnects them.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RouterMsg>, shutdown: CancellationToken) {
        let mut expiry = tokio::time::interval(EXPIRY_CHECK);
        let sys_period = self.cfg.sys_interval.unwrap_or(Duration::from_secs(3600));
        let mut sys = tokio::time::interval(sys_period);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for msg in batch.drain(..) {
                        self.handle(msg);
                    }
                }
                _ = expiry.tick() => self.expire_sessions(Instant::now()),
                _ = sys.tick(), if self.cfg.sys_interval.is_some() => self.publish_sys(),
            }
        }
        // What was already read is still handled, so acknowledged work is not lost.
        while let Ok(msg) = rx.try_recv() {
            self.handle(msg);
        }
        self.shutdown();
    }

    /// Handles one message from a connection.
    pub fn handle(&mut self, msg: RouterMsg) {
        match msg {
            RouterMsg::Connect(req) => self.connect(req),
            RouterMsg::Packets { conn, packets } => {
                let Some(&sid) = self.by_conn.get(&conn) else {
                    return;
                };
                for packet in packets {
                    if self.kicked(sid) {
                        break;
                    }
                    self.packet(sid, packet);
                }
            }
            RouterMsg::Publish { conn, publish } => {
                let Some(&sid) = self.by_conn.get(&conn) else {
                    return;
                };
                BrokerStats::add(&self.stats.messages_received, 1);
                self.route(publish, Some(sid));
            }
            RouterMsg::Closed { conn, cause } => self.closed(conn, cause),
            RouterMsg::SetGuard(guard) => self.set_guard(guard),
        }
    }

    fn connect(&mut self, req: ConnectRequest) {
        let version = req.version();
        let ConnectRequest {
            conn,
            peer,
            connect,
            client_id,
            assigned_id,
            username,
            link,
            accepted,
            internal,
        } = req;
        let expiry = match version {
            ProtocolVersion::V311 if connect.clean_start => 0,
            ProtocolVersion::V311 => NEVER_EXPIRES,
            ProtocolVersion::V5 => connect.properties.session_expiry_interval().unwrap_or(0),
        };
        let now = Instant::now();
        let mut resumed = None;
        if let Some(&sid) = self.by_client.get(&client_id) {
            // A new connection within the Will Delay Interval cancels the will [MQTT-3.1.3-9].
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.pending_will = None;
            }
            self.take_over(sid, now);
            // A session that ends with its connection (CleanSession=1, Session Expiry 0) is
            // never resumed, whatever the new CONNECT asks [MQTT-3.1.2-6].
            let ends = self.sessions.get(&sid).is_none_or(|s| s.expiry == 0);
            if connect.clean_start || ends {
                self.end_session(sid);
            } else {
                resumed = Some(sid);
            }
        }
        let session_present = resumed.is_some();
        let sid = resumed.unwrap_or_else(|| self.new_session(client_id.clone(), expiry));
        let receive_maximum = connect.properties.receive_maximum().unwrap_or(u16::MAX);
        let window = if internal {
            usize::from(u16::MAX)
        } else {
            usize::from(self.cfg.max_inflight.min(receive_maximum).max(1))
        };
        let properties = if version == ProtocolVersion::V5 && !internal {
            connack_properties(&self.cfg, &connect, &client_id, assigned_id)
        } else {
            Properties::new()
        };
        let connack = ConnAck {
            session_present,
            code: reason::SUCCESS,
            properties,
        };
        if !link.send(Packet::ConnAck(connack)) {
            // The connection died while CONNECT was on its way; keep the session as CONNECT
            // asked, the reader reports the close.
            debug!(%client_id, "Connection gone before CONNACK.");
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        session.expiry = expiry;
        session.detached_at = None;
        session.max_packet =
            (connect.properties.maximum_packet_size()).map_or(usize::MAX, |m| m as usize);
        session.will = connect.will;
        session.identity = Arc::new(Origin {
            client_id: client_id.clone(),
            username,
        });
        session.attached = Some(Attached {
            conn,
            link,
            version,
            window,
            internal,
            kicked: false,
        });
        self.by_conn.insert(conn, sid);
        BrokerStats::add(&self.stats.clients_connected, 1);
        info!(%client_id, %peer, ?version, clean_start = connect.clean_start, session_present,
            keep_alive = connect.keep_alive, "Client connected.");
        let _receiver_gone = accepted.send(ConnectOutcome::Accepted);
        if session_present {
            let again = session.resend_inflight();
            let fresh = session.fill_window();
            if let Some(att) = &session.attached {
                for item in again {
                    att.resend(item);
                }
                for message in fresh {
                    att.send_message(message);
                }
            }
        }
    }

    /// Closes the current connection of a session whose client id connects again
    /// [MQTT-3.1.4-2]; its will is published as for any server-side close.
    fn take_over(&mut self, sid: SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(old) = session.detach(now) else {
            return;
        };
        self.by_conn.remove(&old.conn);
        BrokerStats::dec(&self.stats.clients_connected);
        old.link.disconnect(reason::SESSION_TAKEN_OVER);
        info!(client_id = %session.client_id, "Session taken over by a new connection.");
        // The client may have said goodbye just before reconnecting: its DISCONNECT can still
        // be in flight, so the will waits for the old connection's close to be reported.
        if let Some(will) = session.will.take() {
            // With a Will Delay, this new connection comes in time: no will [MQTT-3.1.3-9].
            let delayed = will.properties.will_delay_interval().unwrap_or(0) > 0;
            if old.link.will_due() && !delayed {
                self.taken_over.insert(old.conn, (sid, will));
            }
        }
    }

    fn new_session(&mut self, client_id: ByteString, expiry: u32) -> SessionId {
        let sid = self.next_session;
        self.next_session += 1;
        self.sessions
            .insert(sid, Box::new(Session::new(sid, client_id.clone(), expiry)));
        self.by_client.insert(client_id, sid);
        sid
    }

    fn end_session(&mut self, sid: SessionId) {
        let Some(mut session) = self.sessions.remove(&sid) else {
            return;
        };
        for filter in session.subscriptions.keys() {
            if parse_shared(filter).is_some() {
                self.shared.leave(filter, sid);
            } else {
                self.subs.remove(filter, sid);
            }
        }
        self.by_client.remove(&session.client_id);
        // 5.0 §4.8.2: what a share group gave this session and it did not
        // acknowledge goes to another member.
        for message in session.take_shared() {
            self.redeliver_shared(message, sid);
        }
        if session.queued() + session.inflight() > 0 {
            debug!(client_id = %session.client_id, queued = session.queued(),
                inflight = session.inflight(), "Session ended with undelivered messages.");
        }
    }

    fn closed(&mut self, conn: ConnId, cause: CloseCause) {
        if let Some((sid, will)) = self.taken_over.remove(&conn) {
            if cause.publishes_will() {
                self.route(will_publish(will), Some(sid));
            }
            return;
        }
        let Some(sid) = self.by_conn.remove(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        session.detach(Instant::now());
        BrokerStats::dec(&self.stats.clients_connected);
        let will = session.will.take();
        let publish_will = match cause {
            CloseCause::Disconnect {
                publish_will,
                session_expiry,
            } => {
                if let Some(expiry) = session_expiry {
                    session.expiry = expiry;
                }
                publish_will
            }
            CloseCause::Abnormal => true,
        };
        info!(client_id = %session.client_id, ?cause, will = will.is_some() && publish_will,
            "Client disconnected.");
        let ends = session.expiry == 0;
        let will = will.filter(|_| publish_will);
        // MQTT 5 Will Delay Interval: the will waits, unless the session ends first
        // [MQTT-3.1.3-9], 5.0 §3.1.3.2.2.
        let delay = will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval())
            .unwrap_or(0);
        let will = match will {
            Some(will) if delay > 0 && !ends => {
                let due = Instant::now() + Duration::from_secs(u64::from(delay));
                session.pending_will = Some((will, due));
                None
            }
            other => other,
        };
        if ends {
            self.end_session(sid);
        }
        if let Some(will) = will {
            self.route(will_publish(will), Some(sid));
        }
    }

    /// Publishes the delayed wills that are due.
    fn publish_due_wills(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.pending_will.as_ref().is_some_and(|(_, at)| *at <= now))
            .map(|s| s.id)
            .collect();
        for sid in due {
            if let Some((will, _)) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.pending_will.take())
            {
                self.route(will_publish(will), Some(sid));
            }
        }
    }

    fn expire_sessions(&mut self, now: Instant) {
        let expired: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.attached.is_none() && s.expiry != NEVER_EXPIRES)
            .filter(|s| {
                s.detached_at.is_some_and(|at| {
                    now.duration_since(at) >= Duration::from_secs(u64::from(s.expiry))
                })
            })
            .map(|s| s.id)
            .collect();
        for sid in expired {
            debug!(session = sid, "Session expired.");
            // A will still waiting for its delay goes when the session ends.
            let will = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.pending_will.take());
            self.end_session(sid);
            if let Some((will, _)) = will {
                self.route(will_publish(will), None);
            }
        }
        self.publish_due_wills(now);
        self.retained
            .retain(|_topic, r| r.expires.is_none_or(|at| at > now));
    }

    /// Whether the broker is closing this session's connection for a protocol error.
    fn kicked(&self, sid: SessionId) -> bool {
        self.sessions
            .get(&sid)
            .and_then(|s| s.attached.as_ref())
            .is_some_and(|a| a.kicked)
    }

    /// Closes a session's connection for a protocol error found by the router (MQTT 5
    /// DISCONNECT with `code`); what it still sends is ignored.
    fn kick(&mut self, sid: SessionId, code: u8, why: &str) {
        BrokerStats::add(&self.stats.protocol_errors, 1);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        warn!(client_id = %s.client_id, error = why, reason_code = code,
            "Protocol violation; connection closed.");
        if let Some(att) = &mut s.attached {
            att.kicked = true;
            att.link.disconnect_because(code, why);
        }
    }

    fn packet(&mut self, sid: SessionId, packet: Packet) {
        match packet {
            Packet::Publish(publish) => self.inbound_publish(sid, publish),
            Packet::PubAck(ack) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if !s.on_puback(ack.pkid) {
                        debug!(client_id = %s.client_id, pkid = ack.pkid, "Stray PUBACK.");
                    }
                }
                self.fill_window(sid);
            }
            Packet::PubRec(rec) => {
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                if rec.reason >= reason::UNSPECIFIED_ERROR {
                    // MQTT 5: a failing PUBREC ends the exchange [MQTT-4.3.3-4 analogue].
                    s.on_pubrec(rec.pkid);
                    s.on_pubcomp(rec.pkid);
                    self.fill_window(sid);
                } else {
                    let rel = s.on_pubrec(rec.pkid);
                    self.send(sid, rel);
                }
            }
            Packet::PubRel(rel) => {
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                let known = s.release_qos2(rel.pkid);
                let mut comp = PubResponse::new(rel.pkid);
                if !known && self.version(sid) == Some(ProtocolVersion::V5) {
                    comp.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(sid, Packet::PubComp(comp));
            }
            Packet::PubComp(comp) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.on_pubcomp(comp.pkid);
                }
                self.fill_window(sid);
            }
            Packet::Subscribe(sub) => self.subscribe(sid, sub),
            Packet::Unsubscribe(unsub) => self.unsubscribe(sid, unsub),
            // The connection handles CONNECT, PINGREQ, DISCONNECT and AUTH and never forwards
            // server-to-client packets.
            other => debug!(packet = other.name(), "Packet not for the router; ignored."),
        }
    }

    fn version(&self, sid: SessionId) -> Option<ProtocolVersion> {
        self.sessions
            .get(&sid)?
            .attached
            .as_ref()
            .map(|a| a.version)
    }

    fn send(&self, sid: SessionId, packet: Packet) {
        if let Some(att) = self.sessions.get(&sid).and_then(|s| s.attached.as_ref()) {
            att.link.send(packet);
        }
    }

    fn fill_window(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let next = s.fill_window();
        if let Some(att) = &s.attached {
            BrokerStats::add(&self.stats.messages_sent, next.len() as u64);
            for message in next {
                att.send_message(message);
            }
        }
    }

    fn inbound_publish(&mut self, sid: SessionId, mut publish: Publish) {
        BrokerStats::add(&self.stats.messages_received, 1);
        let pkid = publish.pkid;
        if let Err(refused) = self.guard_check(sid, &publish) {
            self.refuse_publish(sid, &publish, refused);
            return;
        }
        if !self.cfg.retain_available {
            // 3.1.1 clients cannot be told; their retain flag is ignored.
            publish.retain = false;
        }
        match publish.qos {
            QoS::AtMostOnce => self.route(publish, Some(sid)),
            // The acknowledgement is queued before the fan-out so that subscribers' writers
            // are the last tasks woken: tokio runs the last-woken task next on this worker.
            QoS::AtLeastOnce => {
                self.send(sid, Packet::PubAck(PubResponse::new(pkid)));
                self.route(publish, Some(sid));
            }
            QoS::ExactlyOnce => {
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                let fresh = s.receive_qos2(pkid);
                let v5 = s
                    .attached
                    .as_ref()
                    .is_some_and(|a| !a.internal && a.version == ProtocolVersion::V5);
                if fresh && v5 && s.incoming_qos2() > usize::from(self.cfg.receive_maximum) {
                    self.kick(
                        sid,
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "more unreleased QoS 2 messages than the Receive Maximum [MQTT-3.3.4-9]",
                    );
                    return;
                }
                self.send(sid, Packet::PubRec(PubResponse::new(pkid)));
                if fresh {
                    self.route(publish, Some(sid));
                }
            }
        }
    }

    fn guard_check(&self, sid: SessionId, publish: &Publish) -> Result<(), Refused> {
        let Some(guard) = &self.guard else {
            return Ok(());
        };
        let user = self
            .sessions
            .get(&sid)
            .and_then(|s| s.identity.username.clone());
        guard.check(&publish.topic, &publish.payload, user.as_deref())
    }

    /// Drops a refused publish: the publisher learns why (MQTT 5 reason code) or, in 3.1.1,
    /// gets the usual acknowledgement.
    fn refuse_publish(&mut self, sid: SessionId, publish: &Publish, refused: Refused) {
        BrokerStats::add(&self.stats.publishes_refused, 1);
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
        warn!(client_id = %s.client_id, topic = %publish.topic, reason_code = refused.reason,
            why = %refused.why, "PUBLISH refused.");
        let v5 = self.version(sid) == Some(ProtocolVersion::V5);
        let mut response = PubResponse::new(publish.pkid);
        if v5 {
            response.reason = refused.reason;
        }
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(sid, Packet::PubAck(response)),
            // 3.1.1: the exchange goes on (PUBREL, PUBCOMP) for a message that is not kept.
            QoS::ExactlyOnce => self.send(sid, Packet::PubRec(response)),
        }
    }

    /// Installs the check every client PUBLISH passes before routing.
    pub fn set_guard(&mut self, guard: Arc<dyn PublishGuard>) {
        self.guard = Some(guard);
    }

    /// Stores or clears the retained copy and delivers to every matching subscription.
    pub fn route(&mut self, publish: Publish, origin: Option<SessionId>) {
        let expires = if publish.properties.is_empty() {
            None
        } else {
            expiry_of(&publish, Instant::now())
        };
        if publish.retain {
            if publish.payload.is_empty() {
                self.retained.remove(&publish.topic);
            } else {
                // Retained copies live long: they must not pin the publisher's read buffer.
                let publish = publish.detached();
                self.retained
                    .insert(&publish.topic.clone(), Retained { publish, expires });
            }
        }
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        self.subs
            .for_each_match(&publish.topic, |_filter, sid, entry| {
                if entry.options.no_local && Some(sid) == origin {
                    return;
                }
                targets.push(Target {
                    session: sid,
                    qos: entry.options.qos,
                    retain_as_published: entry.options.retain_as_published,
                    subscription_ids: entry.id.into_iter().collect(),
                    shared: None,
                });
            });
        let sessions = &self.sessions;
        let online = |sid: SessionId| sessions.get(&sid).is_some_and(|s| s.attached.is_some());
        self.shared
            .for_each_match(&publish.topic, online, |gid, sid, entry| {
                targets.push(Target {
                    session: sid,
                    qos: entry.options.qos,
                    retain_as_published: entry.options.retain_as_published,
                    subscription_ids: entry.id.into_iter().collect(),
                    shared: Some(gid),
                });
            });
        merge_overlapping(&mut targets);
        let identity = origin
            .and_then(|sid| self.sessions.get(&sid))
            .map(|s| s.identity.clone());
        for target in targets.drain(..) {
            let mut copy = publish.clone();
            copy.qos = copy.qos.min(target.qos);
            // [MQTT-3.3.1-9]: retain is cleared for established subscriptions unless the
            // MQTT 5 subscription asked for Retain As Published.
            copy.retain = publish.retain && target.retain_as_published;
            for id in target.subscription_ids {
                copy.properties.push(Property::SubscriptionIdentifier(id));
            }
            let message = Outgoing {
                publish: copy,
                origin: None,
                expires,
                shared: target.shared,
            };
            self.deliver(target.session, message, identity.as_ref());
        }
        self.targets = targets;
    }

    /// Gives a message a member of a share group did not acknowledge to another member.
    fn redeliver_shared(&mut self, mut message: Outgoing, leaving: SessionId) {
        let Some(gid) = message.shared else {
            return;
        };
        let sessions = &self.sessions;
        let online = |sid: SessionId| sessions.get(&sid).is_some_and(|s| s.attached.is_some());
        let Some((sid, entry)) = self.shared.pick(gid, online, Some(leaving)) else {
            return;
        };
        let p = &mut message.publish;
        p.properties
            .remove_where(|q| matches!(q, Property::SubscriptionIdentifier(_)));
        if let Some(id) = entry.id {
            p.properties.push(Property::SubscriptionIdentifier(id));
        }
        p.qos = p.qos.min(entry.options.qos);
        p.dup = false;
        message.origin = None;
        debug!(session = sid, topic = %p.topic, "Shared message redelivered to another member.");
        self.deliver(sid, message, None);
    }

    fn deliver(&mut self, sid: SessionId, mut message: Outgoing, identity: Option<&Arc<Origin>>) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let qos = message.publish.qos;
        if s.max_packet != usize::MAX
            && publish_len(&message.publish, ProtocolVersion::V5) > s.max_packet
        {
            // [MQTT-3.1.2-25]: never sent; as if delivered, for this subscriber only.
            BrokerStats::add(&self.stats.dropped_too_large, 1);
            debug!(client_id = %s.client_id, topic = %message.publish.topic,
                max_packet_size = s.max_packet, "Message larger than the client accepts; dropped.");
            return;
        }
        let internal = s.attached.as_ref().is_some_and(|a| a.internal);
        if internal {
            message.origin = identity.cloned();
        }
        match s.offer(message, self.cfg.max_queued) {
            Offer::Send(message) => {
                let Some(att) = &s.attached else { return };
                if qos == QoS::AtMostOnce && att.link.backlog() > self.cfg.max_queued {
                    BrokerStats::add(&self.stats.dropped_slow_client, 1);
                    if !s.overflowing {
                        s.overflowing = true;
                        warn!(client_id = %s.client_id, backlog = att.link.backlog(),
                            "Client reads too slowly; dropping QoS 0 messages to it.");
                    }
                    return;
                }
                if qos == QoS::AtMostOnce && att.link.backlog() == 0 {
                    s.overflowing = false;
                }
                BrokerStats::add(&self.stats.messages_sent, 1);
                att.send_message(message);
            }
            Offer::Queued | Offer::Discarded => {}
            Offer::Overflow => {
                BrokerStats::add(&self.stats.dropped_queue_full, 1);
                if !s.overflowing {
                    s.overflowing = true;
                    warn!(client_id = %s.client_id, max_queued = self.cfg.max_queued,
                        "Session queue full; dropping new messages for it until it drains.");
                }
            }
        }
    }

    fn subscribe(&mut self, sid: SessionId, sub: Subscribe) {
        let Some(version) = self.version(sid) else {
            return;
        };
        let sub_id = sub.properties.subscription_identifier();
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in sub.filters {
            if let Err(error) = validate_topic_filter(&filter) {
                debug!(%filter, %error, "Invalid topic filter refused.");
                codes.push(match version {
                    ProtocolVersion::V5 => reason::TOPIC_FILTER_INVALID,
                    ProtocolVersion::V311 => reason::UNSPECIFIED_ERROR,
                });
                continue;
            }
            let shared = parse_shared(&filter);
            let refusal = if shared.is_some() && !self.cfg.shared_subscriptions {
                Some(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else if !self.cfg.wildcard_subscriptions && is_wildcard(&filter) {
                Some(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else {
                None
            };
            if let Some(code) = refusal {
                codes.push(match version {
                    ProtocolVersion::V5 => code,
                    ProtocolVersion::V311 => reason::UNSPECIFIED_ERROR,
                });
                continue;
            }
            if shared.is_some() && options.no_local {
                self.kick(
                    sid,
                    reason::PROTOCOL_ERROR,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                );
                return;
            }
            let mut options = options;
            options.qos =
                QoS::from_u8(self.cfg.maximum_qos).map_or(options.qos, |max| options.qos.min(max));
            let entry = SubEntry {
                options,
                id: sub_id,
            };
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let existed = s.subscriptions.insert(filter.clone(), entry).is_some();
            codes.push(options.qos as u8);
            if let Some(sh) = shared {
                // Retained messages are not sent for shared subscriptions (5.0 §4.8.2).
                self.shared.join(&filter, sh.filter, sid, entry);
                continue;
            }
            self.subs.insert(&filter, sid, entry);
            let send_retained = match options.retain_handling {
                RetainHandling::SendAlways => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                self.retained.for_each_match(&filter, |_topic, r| {
                    retained.push((r.publish.clone(), r.expires, entry));
                });
            }
        }
        let ack = SubAck {
            pkid: sub.pkid,
            codes,
            properties: Properties::new(),
        };
        self.send(sid, Packet::SubAck(ack));
        for (mut msg, expires, entry) in retained {
            // [MQTT-3.3.1-8]: retained messages sent on subscribe carry RETAIN=1.
            msg.retain = true;
            msg.qos = msg.qos.min(entry.options.qos);
            if let Some(id) = entry.id {
                msg.properties.push(Property::SubscriptionIdentifier(id));
            }
            let message = Outgoing {
                expires,
                ..Outgoing::new(msg)
            };
            self.deliver(sid, message, None);
        }
    }

    fn unsubscribe(&mut self, sid: SessionId, unsub: Unsubscribe) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut codes = Vec::with_capacity(unsub.filters.len());
        for filter in &unsub.filters {
            let existed = s.subscriptions.remove(filter).is_some();
            if parse_shared(filter).is_some() {
                self.shared.leave(filter, sid);
            } else {
                self.subs.remove(filter, sid);
            }
            codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        let ack = UnsubAck {
            pkid: unsub.pkid,
            codes,
            properties: Properties::new(),
        };
        self.send(sid, Packet::UnsubAck(ack));
    }

    /// Publishes `$SYS/broker/...` statistics as retained messages (as Mosquitto does).
    pub fn publish_sys(&mut self) {
        let stats = &self.stats;
        let values: [(&str, String); 13] = [
            (
                "version",
                format!("xmpp-mqtt-bridge {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime",
                format!("{} seconds", self.started.elapsed().as_secs()),
            ),
            (
                "clients/connected",
                BrokerStats::get(&stats.clients_connected).to_string(),
            ),
            ("clients/total", self.sessions.len().to_string()),
            (
                "messages/received",
                BrokerStats::get(&stats.messages_received).to_string(),
            ),
            (
                "messages/sent",
                BrokerStats::get(&stats.messages_sent).to_string(),
            ),
            ("messages/dropped", dropped(stats).to_string()),
            (
                "bytes/received",
                BrokerStats::get(&stats.bytes_received).to_string(),
            ),
            (
                "bytes/sent",
                BrokerStats::get(&stats.bytes_sent).to_string(),
            ),
            ("subscriptions/count", self.subs.len().to_string()),
            ("retained messages/count", self.retained.len().to_string()),
            (
                "connections/accepted",
                BrokerStats::get(&stats.connections_accepted).to_string(),
            ),
            (
                "connections/refused",
                BrokerStats::get(&stats.connections_refused).to_string(),
            ),
        ];
        for (name, value) in values {
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: ByteString::from(format!("$SYS/broker/{name}")),
                pkid: 0,
                payload: Bytes::from(value),
                properties: Properties::new(),
            };
            self.route(publish, None);
        }
    }

    /// Server shutdown: every connected client's will is published (the server closes the
    /// connection without a DISCONNECT from the client), then every client is disconnected.
    fn shutdown(&mut self) {
        let connected: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.attached.is_some())
            .map(|s| s.id)
            .collect();
        info!(
            clients = connected.len(),
            "Broker shutting down; publishing wills."
        );
        for (_, (sid, will)) in std::mem::take(&mut self.taken_over) {
            self.route(will_publish(will), Some(sid));
        }
        for &sid in &connected {
            if let Some(will) = self.sessions.get_mut(&sid).and_then(|s| s.will.take()) {
                self.route(will_publish(will), Some(sid));
            }
        }
        let delayed: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.pending_will.is_some())
            .map(|s| s.id)
            .collect();
        for sid in delayed {
            if let Some((will, _)) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.pending_will.take())
            {
                self.route(will_publish(will), None);
            }
        }
        for sid in connected {
            if let Some(att) = self.sessions.get_mut(&sid).and_then(|s| s.attached.take()) {
                att.link.disconnect(reason::SERVER_SHUTTING_DOWN);
            }
        }
        self.by_conn.clear();
    }
}

fn dropped(stats: &BrokerStats) -> u64 {
    BrokerStats::get(&stats.dropped_queue_full)
        + BrokerStats::get(&stats.dropped_slow_client)
        + BrokerStats::get(&stats.dropped_too_large)
}

/// One delivery per session when several of its subscriptions match: the highest QoS, all
/// subscription identifiers [MQTT-3.3.4-2], [MQTT-3.3.4-3].
fn merge_overlapping(targets: &mut Vec<Target>) {
    if targets.len() < 2 {
        return;
    }
    targets.sort_unstable_by_key(|t| t.session);
    targets.dedup_by(|later, kept| {
        if later.session != kept.session {
            return false;
        }
        kept.qos = kept.qos.max(later.qos);
        kept.retain_as_published |= later.retain_as_published;
        kept.subscription_ids.append(&mut later.subscription_ids);
        kept.shared = kept.shared.or(later.shared);
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(session: SessionId, qos: QoS, id: Option<u32>) -> Target {
        Target {
            session,
            qos,
            retain_as_published: false,
            subscription_ids: id.into_iter().collect(),
            shared: None,
        }
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_the_highest_qos_with_all_ids() {
        let mut targets = vec![
            target(2, QoS::AtMostOnce, Some(7)),
            target(1, QoS::AtLeastOnce, None),
            target(2, QoS::ExactlyOnce, Some(9)),
            target(3, QoS::AtMostOnce, None),
        ];
        merge_overlapping(&mut targets);
        assert_eq!(targets.len(), 3);
        let two = targets.iter().find(|t| t.session == 2).unwrap();
        assert_eq!(two.qos, QoS::ExactlyOnce);
        let mut ids = two.subscription_ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, vec![7, 9]);
    }
}
