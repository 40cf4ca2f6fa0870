//! The router: the one owner of every session, the subscription trie and the retained
//! messages, addressed by [`RouterMsg`]s that each connection hands it in its own task
//! ([`SharedRouter`]).
//!
//! A single owner behind one lock keeps session takeover, QoS state and fan-out free of
//! races. It never awaits a connection (see `link`), so a slow client cannot stall it, and
//! the lock is held only for the routing work itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::acl::Acl;
use crate::broker::codec::{
    ConnAck, LastWill, Packet, Properties, Property, ProtocolVersion, PubResponse, Publish, QoS,
    publish_len, reason,
};
use crate::broker::config::BrokerConfig;
use crate::broker::connack::connack_properties;
use crate::broker::guard::{GuardNote, PublishGuard, Refused};
use crate::broker::internal::BrokerGone;
use crate::broker::link::{ClientLink, ConnId, ConnectOutcome, ConnectRequest, Origin, RouterMsg};
use crate::broker::session::{
    Attached, NEVER_EXPIRES, Offer, Outgoing, Session, SessionId, SubEntry, expiry_of,
};
use crate::broker::shared::{GroupId, SharedGroups};
use crate::broker::stats::BrokerStats;
use crate::broker::tracking::{Settlement, Tracker};
use crate::broker::trie::{RetainedTree, SubscriptionTree};
use ids::IdMap;

mod housekeeping;
mod ids;
mod lifecycle;
mod notify;
mod stored;
mod subscriptions;
mod sys;

/// How often detached sessions are checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// Inbox messages handled per wake-up.
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
    sessions: IdMap<SessionId, Box<Session>>,
    by_client: HashMap<ByteString, SessionId>,
    by_conn: IdMap<ConnId, SessionId>,
    subs: SubscriptionTree<SessionId, SubEntry>,
    retained: RetainedTree<Retained>,
    /// Retained messages with a Message Expiry Interval, by when they expire: the tick
    /// removes what is due without walking the others (see [`Router::set_retained`]).
    retained_expiry: std::collections::BTreeSet<(Instant, ByteString)>,
    /// `$share/{group}/{filter}` subscriptions.
    shared: SharedGroups,
    next_session: SessionId,
    /// Connections taken over whose close has not been reported yet, with the will to
    /// publish unless that close turns out to be a plain DISCONNECT.
    taken_over: HashMap<ConnId, (SessionId, LastWill)>,
    /// Checks client publishes before routing (installed by the bridge).
    guard: Option<Arc<dyn PublishGuard>>,
    /// What the guard worked out about the client publish being routed right now: set by
    /// `inbound_publish` around its fan-out only, given to in-process subscribers' copies.
    carried: Option<GuardNote>,
    /// Who hears of sessions connecting, leaving, subscribing (installed by the bridge).
    session_events: Option<crate::broker::session_events::SessionEventSender>,
    /// `[broker] acl_file`: what network clients may publish and subscribe to.
    acl: Option<Arc<Acl>>,
    /// Scratch space reused by every fan-out.
    targets: Vec<Target>,
    /// Links written straight through during this routing pass, flushed when it ends
    /// ([`SharedRouter::with`]).
    touched: Vec<ClientLink>,
    /// Scratch space for the messages a freed window slot lets out (one per acknowledgement,
    /// so no allocation each time).
    released: Vec<Outgoing>,
    started: Instant,
    /// Persistence: where changes go, when the store is on (see `stored`).
    journal: Option<Arc<crate::store::Journal>>,
    /// When detached sessions expire and delayed wills fall due (see `housekeeping`).
    deadlines: housekeeping::Deadlines,
    /// The sessions for the gauges' sweep (see `housekeeping`).
    sweep: housekeeping::GaugeSweep,
}

impl Router {
    /// An empty router.
    pub fn new(cfg: Arc<BrokerConfig>, stats: Arc<BrokerStats>) -> Self {
        Router {
            cfg,
            stats,
            sessions: IdMap::default(),
            by_client: HashMap::new(),
            by_conn: IdMap::default(),
            subs: SubscriptionTree::new(),
            retained: RetainedTree::new(),
            retained_expiry: std::collections::BTreeSet::new(),
            shared: SharedGroups::new(),
            next_session: 1,
            taken_over: HashMap::new(),
            guard: None,
            carried: None,
            session_events: None,
            acl: None,
            targets: Vec::new(),
            touched: Vec::new(),
            released: Vec::new(),
            started: Instant::now(),
            journal: None,
            deadlines: housekeeping::Deadlines::default(),
            sweep: housekeeping::GaugeSweep::default(),
        }
    }

    /// With an access control list for network clients (the in-process session is exempt).
    #[must_use]
    pub fn with_acl(mut self, acl: Option<Arc<Acl>>) -> Self {
        self.acl = acl;
        self
    }

    /// Runs until `shutdown` fires or every sender is gone: the in-process clients' inbox and
    /// the timers (session expiry, gauges, `$SYS`); then publishes the wills of the connected
    /// clients and disconnects them. Network connections call [`SharedRouter::send`] in
    /// their own tasks instead.
    ///
    /// Why the in-process client (the bridge, on its own runtime) keeps an inbox: routing in
    /// its task measured slower (XMPP → MQTT bridge CPU 7.9–8.4 against 8.6–9.0 µs per
    /// message, lower rate): each publish then woke the subscriber's writer on the broker's
    /// thread by itself, where this task routes a whole batch and the writers run after it.
    pub async fn run(
        shared: Arc<SharedRouter>,
        mut rx: mpsc::Receiver<RouterMsg>,
        shutdown: CancellationToken,
    ) {
        let sys_interval = shared.with(|r| r.cfg.sys_interval).flatten();
        let mut expiry = tokio::time::interval(EXPIRY_CHECK);
        let mut sys = tokio::time::interval(sys_interval.unwrap_or(Duration::from_secs(3600)));
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let handled = shared.with(|r| {
                        for msg in batch.drain(..) {
                            r.handle(msg);
                        }
                        r.flush_journal();
                    });
                    if handled.is_none() {
                        return;
                    }
                }
                _ = expiry.tick() => {
                    shared.with(|r| {
                        r.expire_sessions(Instant::now());
                        r.sample_gauges();
                        r.flush_journal();
                    });
                }
                _ = sys.tick(), if sys_interval.is_some() => {
                    shared.with(Router::publish_sys);
                }
            }
        }
        // From here on connections find the router gone.
        let Some(mut router) = shared.take() else {
            return;
        };
        // What was already read is still handled, so acknowledged work is not lost.
        while let Ok(msg) = rx.try_recv() {
            router.handle(msg);
        }
        let _wrote = router.flush_direct();
        router.shutdown();
        router.close_journal();
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
            RouterMsg::Publish {
                conn,
                publish,
                track,
            } => {
                let Some(&sid) = self.by_conn.get(&conn) else {
                    return;
                };
                BrokerStats::add(&self.stats.messages_received, 1);
                match track {
                    None => self.route(publish, Some(sid)),
                    Some(track) => self.route_tracked(publish, Some(sid), Some(track)),
                }
            }
            RouterMsg::Closed { conn, cause } => self.closed(conn, cause),
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
        let problem_info = connect.properties.find(|p| match p {
            Property::RequestProblemInformation(v) => Some(*v),
            _ => None,
        }) != Some(0);
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
            problem_info,
        });
        self.by_conn.insert(conn, sid);
        // Attached: no expiry, and a delayed will was cancelled above.
        self.reschedule(sid);
        BrokerStats::add(&self.stats.clients_connected, 1);
        info!(%client_id, %peer, ?version, clean_start = connect.clean_start, session_present,
            keep_alive = connect.keep_alive, "Client connected.");
        let _receiver_gone = accepted.send(ConnectOutcome::Accepted);
        self.notify(sid, |client_id, username| {
            crate::broker::session_events::SessionEvent::Connected {
                client_id,
                username,
                protocol: version,
            }
        });
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session_present {
            let again = session.resend_inflight();
            let fresh = session.fill_window();
            if let Some(att) = &session.attached {
                for item in again {
                    att.resend(item, &mut self.touched);
                }
                for message in fresh {
                    att.send_message(message, &mut self.touched);
                }
            }
        }
        self.persist_session(sid);
    }

    fn packet(&mut self, sid: SessionId, packet: Packet) {
        match packet {
            Packet::Publish(publish) => self.inbound_publish(sid, publish),
            Packet::PubAck(ack) => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if !s.on_puback(ack.pkid, ack.reason < reason::UNSPECIFIED_ERROR) {
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
                    s.on_pubrec(rec.pkid, false);
                    s.on_pubcomp(rec.pkid);
                    self.fill_window(sid);
                } else {
                    let rel = s.on_pubrec(rec.pkid, true);
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
                // After the release is on disk, or the id could come back after a crash and
                // a new message reusing it would be taken for a duplicate.
                self.ack(sid, Packet::PubComp(comp));
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

    /// Whether Reason Strings may go on acknowledgements to this client (MQTT 5 Request
    /// Problem Information, default 1) [MQTT-3.1.2-29].
    fn problem_info(&self, sid: SessionId) -> bool {
        self.sessions
            .get(&sid)
            .and_then(|s| s.attached.as_ref())
            .is_some_and(|a| a.problem_info && a.version == ProtocolVersion::V5)
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
        let mut next = std::mem::take(&mut self.released);
        s.fill_window_into(&mut next);
        if let Some(att) = &s.attached {
            BrokerStats::add(&self.stats.messages_sent, next.len() as u64);
            for message in next.drain(..) {
                att.send_message(message, &mut self.touched);
            }
        }
        next.clear();
        self.released = next;
    }

    fn inbound_publish(&mut self, sid: SessionId, publish: Publish) {
        BrokerStats::add(&self.stats.messages_received, 1);
        if let Err(refused) = self.acl_publish(sid, &publish.topic) {
            self.refuse_publish(sid, &publish, refused);
            return;
        }
        let carried = match self.guard_check(sid, &publish) {
            Ok(carried) => carried,
            Err(refused) => {
                self.refuse_publish(sid, &publish, refused);
                return;
            }
        };
        // Only this publish's copies may carry it: set for its fan-out, cleared right after.
        self.carried = carried;
        self.accept_publish(sid, publish);
        self.carried = None;
    }

    /// Acknowledges and routes a client publish that passed the checks.
    fn accept_publish(&mut self, sid: SessionId, mut publish: Publish) {
        let pkid = publish.pkid;
        if !self.cfg.retain_available {
            // 3.1.1 clients cannot be told; their retain flag is ignored.
            publish.retain = false;
        }
        match publish.qos {
            QoS::AtMostOnce => self.route(publish, Some(sid)),
            // The acknowledgement is queued before the fan-out so that subscribers' writers
            // are the last tasks woken: tokio runs the last-woken task next on this worker.
            QoS::AtLeastOnce => {
                self.ack(sid, Packet::PubAck(PubResponse::new(pkid)));
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
                    // Never acknowledged: a kept session must take it again when resent.
                    s.release_qos2(pkid);
                    self.kick(
                        sid,
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "more unreleased QoS 2 messages than the Receive Maximum [MQTT-3.3.4-9]",
                    );
                    return;
                }
                self.ack(sid, Packet::PubRec(PubResponse::new(pkid)));
                if fresh {
                    self.route(publish, Some(sid));
                }
            }
        }
    }

    /// The ACL's verdict on a network client's publish (MQTT 5 0x87 Not authorized).
    fn acl_publish(&self, sid: SessionId, topic: &str) -> Result<(), Refused> {
        let Some((acl, s)) = self.acl_subject(sid) else {
            return Ok(());
        };
        let user = s.identity.username.as_deref();
        if acl.may_publish(user, &s.client_id, topic) {
            return Ok(());
        }
        Err(Refused {
            reason: reason::NOT_AUTHORIZED,
            why: format!("the ACL does not allow publishing to {topic}"),
        })
    }

    /// Whether the ACL allows a subscription to `filter`.
    fn acl_subscribe(&self, sid: SessionId, filter: &str) -> bool {
        let Some((acl, s)) = self.acl_subject(sid) else {
            return true;
        };
        acl.may_subscribe(s.identity.username.as_deref(), &s.client_id, filter)
    }

    /// The ACL and the session it applies to; `None` when there is no ACL or the session is
    /// the in-process one.
    fn acl_subject(&self, sid: SessionId) -> Option<(&Acl, &Session)> {
        let acl = self.acl.as_deref()?;
        let s = self.sessions.get(&sid)?;
        let internal = s.attached.as_ref().is_some_and(|a| a.internal);
        (!internal).then_some((acl, s))
    }

    fn guard_check(&self, sid: SessionId, publish: &Publish) -> Result<Option<GuardNote>, Refused> {
        let Some(guard) = &self.guard else {
            return Ok(None);
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
            // Unless the client asked for no problem information [MQTT-3.1.2-29].
            if self.problem_info(sid) {
                let why = ByteString::from(refused.why);
                response.properties.push(Property::ReasonString(why));
            }
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
        self.route_tracked(publish, origin, None);
    }

    /// Stores (`Some`) or deletes (`None`) the retained message of `topic`, keeping the
    /// expiry index in step: the entry of a message replaced or deleted goes with it, so that
    /// a topic re-published every second with a long expiry files one entry, not thousands.
    fn set_retained(&mut self, topic: &ByteString, new: Option<Retained>) {
        let new_at = new.as_ref().and_then(|r| r.expires);
        let old = match new {
            Some(r) => self.retained.insert(topic, r),
            None => self.retained.remove(topic),
        };
        if let Some(at) = old.and_then(|r| r.expires) {
            self.retained_expiry.remove(&(at, topic.clone()));
        }
        if let Some(at) = new_at {
            self.retained_expiry.insert((at, topic.clone()));
        }
    }

    /// As [`Router::route`]; with `track`, every QoS 1/2 copy carries the tracker, and the
    /// publisher is told how many copies were made before any of them can be settled.
    pub fn route_tracked(
        &mut self,
        publish: Publish,
        origin: Option<SessionId>,
        track: Option<Arc<Tracker>>,
    ) {
        let expires = if publish.properties.is_empty() {
            None
        } else {
            expiry_of(&publish, Instant::now())
        };
        if publish.retain {
            self.persist_retained(&publish, expires);
            if publish.payload.is_empty() {
                self.set_retained(&publish.topic, None);
            } else {
                // Retained copies live long: they must not pin the publisher's read buffer.
                let publish = publish.detached();
                let topic = publish.topic.clone();
                self.set_retained(&topic, Some(Retained { publish, expires }));
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
        if let Some(track) = &track {
            let at_least_once = |t: &Target| publish.qos.min(t.qos) != QoS::AtMostOnce;
            track.routed(targets.iter().filter(|t| at_least_once(t)).count());
        }
        let retain = publish.retain;
        // The last target takes the publish itself (and the tracker): with one subscriber,
        // the common case, nothing is cloned.
        let (mut publish, mut track) = (Some(publish), track);
        let last = targets.len().saturating_sub(1);
        for (i, target) in targets.drain(..).enumerate() {
            let (copy, track) = if i == last {
                (publish.take(), track.take())
            } else {
                (publish.clone(), track.clone())
            };
            let Some(mut copy) = copy else { break };
            copy.qos = copy.qos.min(target.qos);
            // [MQTT-3.3.1-9]: retain is cleared for established subscriptions unless the
            // MQTT 5 subscription asked for Retain As Published.
            copy.retain = retain && target.retain_as_published;
            for id in target.subscription_ids {
                copy.properties.push(Property::SubscriptionIdentifier(id));
            }
            let track = match copy.qos {
                QoS::AtMostOnce => None,
                _ => track,
            };
            let message = Outgoing {
                publish: copy,
                origin: None,
                expires,
                shared: target.shared,
                track,
                stored: 0,
                carried: None,
            };
            self.deliver(target.session, message, origin);
        }
        self.targets = targets;
    }

    /// Writes what this routing pass encoded for direct links, each link once.
    fn flush_direct(&mut self) -> bool {
        let mut written = 0;
        for link in self.touched.drain(..) {
            written += link.flush();
        }
        if written > 0 {
            BrokerStats::add(&self.stats.bytes_sent, written as u64);
        }
        written > 0
    }

    /// Offers `message` to session `sid`; an in-process subscriber's copy gets the identity of
    /// the publishing session `origin` (looked up only then: network subscribers never need it).
    fn deliver(&mut self, sid: SessionId, mut message: Outgoing, origin: Option<SessionId>) {
        let internal = self
            .sessions
            .get(&sid)
            .and_then(|s| s.attached.as_ref())
            .is_some_and(|a| a.internal);
        if internal {
            message.origin = origin
                .and_then(|o| self.sessions.get(&o))
                .map(|o| o.identity.clone());
            message.carried.clone_from(&self.carried);
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let qos = message.publish.qos;
        if s.max_packet != usize::MAX
            && publish_len(&message.publish, ProtocolVersion::V5) > s.max_packet
        {
            // [MQTT-3.1.2-25]: never sent; as if delivered, for this subscriber only.
            BrokerStats::add(&self.stats.dropped_too_large, 1);
            message.settle(&s.client_id, Settlement::Dropped("too_large"));
            debug!(client_id = %s.client_id, topic = %message.publish.topic,
                max_packet_size = s.max_packet, "Message larger than the client accepts; dropped.");
            return;
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
                att.send_message(message, &mut self.touched);
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
}

/// The router behind a lock: a network connection routes what it read in its own task, so
/// no message waits for a router task to be woken (see Design notes); the in-process clients'
/// inbox and the timers are handled in [`Router::run`]'s task. The router never awaits, so
/// the lock is held only for the work itself, and every user of it runs on the broker's
/// worker threads (one by default): it is not contended.
pub struct SharedRouter(std::sync::Mutex<Option<Router>>);

impl SharedRouter {
    /// The router, shared.
    pub fn new(router: Router) -> Arc<Self> {
        Arc::new(SharedRouter(std::sync::Mutex::new(Some(router))))
    }

    /// Handles `msg` now, in the caller's task, and hands the changes to the store. Fails
    /// once the router has stopped (shutdown).
    pub fn send(&self, msg: RouterMsg) -> Result<(), BrokerGone> {
        self.with(|r| {
            r.handle(msg);
            r.flush_journal();
        })
        .ok_or(BrokerGone)
    }

    /// Runs `f` on the router; `None` once it has stopped. A panic while routing stops it for
    /// everyone (as the router task's end did), rather than going on with half-done state.
    pub fn with<T>(&self, f: impl FnOnce(&mut Router) -> T) -> Option<T> {
        let mut guard = self.0.lock().ok()?;
        let router = guard.as_mut()?;
        let result = f(router);
        let wrote = router.flush_direct();
        drop(guard);
        if wrote {
            // The subscriber the write woke often waits on this core until this thread
            // sleeps (traced: 16 % of messages here, 3 % with Mosquitto, whose loop is shorter
            // after its write): let it run now rather than after tokio's turn and park.
            std::thread::yield_now();
        }
        Some(result)
    }

    fn take(&self) -> Option<Router> {
        self.0.lock().ok()?.take()
    }
}

impl std::fmt::Debug for SharedRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedRouter")
    }
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
