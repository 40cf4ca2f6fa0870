//! The bridge core: moves chat messages between the XMPP link and the broker through the
//! mapping table. No sockets here: it holds the MQTT side ([`mqtt_side::MqttSide`]) and the
//! XMPP adapter's handle.
//!
//! - XMPP → MQTT: a message from the link is translated ([`translate::xmpp_to_mqtt`]) and
//!   published as the bridge's in-process session; a message to an address no rule covers
//!   gets `<item-not-found/>` back.
//! - MQTT → XMPP: the bridge subscribes (No Local, so nothing it published comes back) to the
//!   filters of the mqtt-to-xmpp rules; each delivery is translated with the publisher's
//!   authenticated user name and queued on the link. A QoS 1/2 delivery is acknowledged to
//!   the broker only when the link confirms the XMPP server has the stanza (a ping round trip
//!   after it), so the broker keeps what the server has not confirmed.
//! - When the link's queue is full, the bridge stops taking deliveries; the broker then keeps
//!   them in the bridge's session queue, and what overflows there is counted and logged.
//! - Receipts ([`receipts`], `receipt_flow`): a message from XMPP with a receipt request is
//!   published with a tracking token and `<received/>` goes back when the first MQTT
//!   subscriber acknowledged it; an XMPP client's receipt for a message from MQTT goes to the
//!   publisher's Response Topic or the `receipt` sub-topic. Chat states travel on the
//!   `chatstate` sub-topic; corrections are accepted only from the original sender.

pub mod envelope;
pub mod events;
pub mod mqtt_side;
pub mod muc;
pub mod presence;
pub mod presence_store;
mod pretranslated;
mod receipt_flow;
pub mod receipts;
mod settle;
mod social;
pub mod stanza;
pub mod translate;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use xmpp_parsers::message::{Message, MessageType};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use self::events::{BatchClock, EventSink, Outcome, Taken, Translation};
use self::mqtt_side::MqttSide;
use self::muc::{Rooms, Verdict};
use self::presence::PresenceConfig;
use self::receipts::{Receipts, Senders};
use self::settle::{InFlight, Settled};
pub use self::social::PresenceStartError;
use self::social::{PresenceSide, next_session_event};
use self::stanza::inbound_chat;
use self::translate::{Carried, FromXmpp, InboundChat, NotCarried, mqtt_to_xmpp, xmpp_to_mqtt_at};
use crate::broker::Delivery;
use crate::broker::codec::reason;
use crate::broker::codec::{Properties, Property, Publish, QoS};
use crate::broker::guard::{GuardNote, PublishGuard, Refused};
use crate::broker::session_events::SessionEvent;
use crate::broker::tracking::Tracked;
use crate::mapping::MappingTable;
use crate::mapping::Refusal;
use crate::xmpp::{Inbound, Outgoing, SendError, Settlement, Settlements, XmppHandle};

/// How often a delivery refused by a full XMPP queue is offered again.
const RETRY_FULL_QUEUE: Duration = Duration::from_millis(50);
/// Deliveries already received from the broker handled in one turn of the run loop, before
/// its other inputs (confirmations, XMPP, shutdown) are looked at again.
const DELIVERY_BATCH: usize = 32;

/// Bridge counters.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Messages published to MQTT.
    pub to_mqtt: AtomicU64,
    /// Messages queued to XMPP.
    pub to_xmpp: AtomicU64,
    /// MQTT messages confirmed by the XMPP server.
    pub to_xmpp_confirmed: AtomicU64,
    /// MQTT publishes not carried (no rule, identity, payload).
    pub refused_from_mqtt: AtomicU64,
    /// MQTT publishes whose translation came with the delivery from the broker's publish
    /// guard (not translated a second time here).
    pub pretranslated: AtomicU64,
    /// XMPP messages answered with an error (no rule covers the address).
    pub refused_from_xmpp: AtomicU64,
    /// XMPP messages with nothing to carry (no body, loops).
    pub ignored_from_xmpp: AtomicU64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The broker-side check for bridged topics: a publish the bridge would refuse is refused by
/// the broker already, so it reaches no MQTT subscriber either, and an MQTT 5 publisher gets
/// the reason code (0x87 Not authorized for identity, 0x99 Payload format invalid).
pub struct MappingGuard {
    table: Arc<MappingTable>,
    /// Status and legacy presence topics, when presence is on.
    presence: Option<PresenceConfig>,
    /// Group chat error topics: written by the bridge only.
    error_topic: presence::LevelPattern,
    /// Refusals are translation outcomes too: audited and counted.
    events: EventSink,
}

impl MappingGuard {
    /// A guard for the rules of `table`.
    pub fn new(table: Arc<MappingTable>) -> Self {
        MappingGuard {
            table,
            presence: None,
            error_topic: presence::LevelPattern::parse(muc::ERROR_TOPIC, "user")
                .unwrap_or_else(|_| unreachable!("the constant is a valid pattern")),
            events: EventSink::default(),
        }
    }

    /// Also guards the presence topics (a user's own status topic only; no legacy topic).
    pub fn with_presence(mut self, presence: Option<PresenceConfig>) -> Self {
        self.presence = presence;
        self
    }

    /// Reports every refusal to `events` (without waiting: the guard runs in the router).
    pub fn with_events(mut self, events: EventSink) -> Self {
        self.events = events;
        self
    }
}

impl PublishGuard for MappingGuard {
    fn check(
        &self,
        topic: &str,
        payload: &[u8],
        user: Option<&str>,
    ) -> Result<Option<GuardNote>, Refused> {
        if self.error_topic.capture(topic).is_some() {
            return Err(Refused {
                reason: reason::NOT_AUTHORIZED,
                why: "error topics are written by the bridge only".into(),
            });
        }
        if let Some(Err(why)) = self.presence.as_ref().map(|p| p.check_publish(topic, user)) {
            return Err(Refused {
                reason: reason::NOT_AUTHORIZED,
                why,
            });
        }
        match mqtt_to_xmpp(&self.table, topic, payload, user) {
            // Handed to the bridge with the delivery, so it is not translated again there.
            Ok(out) => Ok(Some(pretranslated::carry(&self.table, topic, payload, out))),
            Err(NotCarried::Mapping(Refusal::NoRule)) => Ok(None),
            Err(e) => {
                let reason = match &e {
                    NotCarried::Mapping(
                        Refusal::NotYourTopic { .. } | Refusal::Anonymous { .. },
                    ) => reason::NOT_AUTHORIZED,
                    NotCarried::Mapping(_) => reason::TOPIC_NAME_INVALID,
                    NotCarried::Payload { .. } | NotCarried::Kind { .. } => {
                        reason::PAYLOAD_FORMAT_INVALID
                    }
                };
                let why = e.to_string();
                let payload = Bytes::copy_from_slice(payload);
                let mut event =
                    Translation::from_mqtt(topic, None, None, None, payload, Taken::now());
                let who = user.map_or("anonymous publisher".into(), |u| format!("publisher `{u}`"));
                event.refused(&e, format!("{who}: {why}"));
                self.events.try_emit(*event);
                Err(Refused { reason, why })
            }
        }
    }
}

/// A delivery queued on the link, waiting for the server's confirmation.
struct Delivering {
    publish: Publish,
    /// Its event, outcome still to be set.
    event: Box<Translation>,
}

/// A delivery waiting for room in the XMPP queue.
struct Blocked {
    outgoing: Outgoing,
    publish: Publish,
    event: Box<Translation>,
}

/// The bridge task.
pub struct Bridge {
    table: Arc<MappingTable>,
    mqtt: MqttSide,
    xmpp: XmppHandle,
    inbound: mpsc::Receiver<Inbound>,
    stats: Arc<BridgeStats>,
    /// Deliveries waiting for the XMPP server's confirmation, by ticket in send order; the
    /// link's reports (`settlements`) settle them in batches.
    in_flight: InFlight<Delivering>,
    settlements: Arc<Settlements>,
    blocked: Option<Blocked>,
    next_id: u64,
    /// `mqtt-{process id}-`: made once (`std::process::id` is a system call each time).
    id_prefix: String,
    /// Where translation outcomes go (audit, metrics).
    events: EventSink,
    /// Presence both ways, when configured.
    presence: Option<PresenceSide>,
    /// The broker's session events (presence, rooms), in embedded mode.
    session_events: Option<mpsc::Receiver<SessionEvent>>,
    /// Bridged occupants of group chat rooms, in embedded mode.
    rooms: Option<Rooms>,
    /// The broker's reports on tracked publishes (embedded mode only).
    tracked: Option<mpsc::UnboundedReceiver<Tracked>>,
    /// Receipts waiting in both directions.
    receipts: Receipts,
    /// Who sent recent message ids (corrections).
    senders: Senders,
    /// The clock of the batch being handled (one wall clock reading per batch).
    clock: BatchClock,
}

impl Bridge {
    /// Subscribes the MQTT side to what the mapping table sends to XMPP.
    pub async fn new(
        table: Arc<MappingTable>,
        mqtt: impl Into<MqttSide>,
        xmpp: XmppHandle,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Result<Bridge, crate::broker::BrokerGone> {
        let mut mqtt = mqtt.into();
        let mut filters = table.mqtt_filters();
        // Chat states come on `{topic}/chatstate`; a filter ending in `#` covers them already.
        let states: Vec<String> = (filters.iter())
            .filter(|f| !f.ends_with('#'))
            .map(|f| format!("{f}/{}", translate::STATE_LEVEL))
            .collect();
        filters.extend(states);
        if !filters.is_empty() {
            let codes = mqtt.subscribe(&filters, QoS::ExactlyOnce).await?;
            for (filter, code) in filters.iter().zip(codes) {
                if code >= 0x80 {
                    warn!(%filter, code, "Bridge subscription refused by the broker.");
                }
            }
        }
        mqtt.enable_pong_relay(&xmpp);
        let settlements = xmpp.settlements();
        info!(
            rules = table.rules().len(),
            subscriptions = filters.len(),
            "Bridge ready."
        );
        Ok(Bridge {
            table,
            xmpp,
            inbound,
            stats: Arc::new(BridgeStats::default()),
            in_flight: InFlight::default(),
            settlements,
            blocked: None,
            next_id: rand::random::<u32>().into(),
            id_prefix: format!("mqtt-{:x}-", std::process::id()),
            events: EventSink::default(),
            presence: None,
            session_events: None,
            rooms: None,
            tracked: mqtt.take_tracked(),
            receipts: Receipts::resumed(mqtt.take_resumed()),
            senders: Senders::default(),
            clock: BatchClock::start(),
            mqtt,
        })
    }

    /// Sends every translation outcome to `events`.
    pub fn with_events(mut self, events: EventSink) -> Self {
        self.events = events;
        self
    }

    /// Counters.
    pub fn stats(&self) -> Arc<BridgeStats> {
        self.stats.clone()
    }

    /// Runs until shutdown or until either side stops.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                report = self.settlements.next(), if !self.in_flight.is_empty() => {
                    if self.on_settlement(&report).await.is_err() {
                        break;
                    }
                }
                event = next_session_event(&mut self.session_events) => match event {
                    Some(event) => {
                        if self.on_session_event(&event).await.is_err() {
                            break;
                        }
                    }
                    None => self.session_events = None,
                },
                Some(tracked) = next_tracked(&mut self.tracked), if self.tracked.is_some() => {
                    self.on_tracked(tracked).await;
                }
                inbound = self.inbound.recv() => match inbound {
                    Some(inbound) => {
                        if self.on_xmpp_batch(inbound).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                () = tokio::time::sleep(RETRY_FULL_QUEUE), if self.blocked.is_some() => {
                    if let Some(blocked) = self.blocked.take() {
                        if self.offer(blocked).await.is_err() {
                            break;
                        }
                    }
                }
                delivery = self.mqtt.recv(), if self.blocked.is_none() => match delivery {
                    Some(delivery) => {
                        if self.on_mqtt_batch(delivery).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        info!("Bridge stopped.");
    }

    /// The link's report on deliveries it confirmed or gave up since the last one: their
    /// audit records, and the confirmed ones acknowledged to the broker in one hand-over (the
    /// broker's session finds each by packet id).
    async fn on_settlement(
        &mut self,
        report: &Settlement,
    ) -> Result<(), crate::broker::BrokerGone> {
        let Settled {
            confirmed,
            unconfirmed,
        } = self.in_flight.settle(report);
        // Not confirmed: left unacknowledged (the broker keeps QoS 1/2).
        for Delivering { mut event, .. } in unconfirmed {
            let why = "the link stopped or gave up before the server confirmed it";
            event.outcome = Outcome::dropped("not_confirmed", why);
            self.events.emit(*event).await;
        }
        if confirmed.is_empty() {
            return self.retry_blocked().await;
        }
        (self.stats.to_xmpp_confirmed).fetch_add(confirmed.len() as u64, Ordering::Relaxed);
        let mut acks = Vec::with_capacity(confirmed.len());
        for Delivering { publish, mut event } in confirmed {
            event.outcome = Outcome::Delivered;
            self.events.emit(*event).await;
            if publish.qos != QoS::AtMostOnce {
                acks.push(publish);
            }
        }
        self.mqtt.ack_all(&acks).await?;
        self.retry_blocked().await
    }

    /// Offers the delivery a full queue refused again. The link frees the queue slots of what
    /// it settled before it reports, so right after a report is when there is room; waiting
    /// for the [`RETRY_FULL_QUEUE`] timer instead left the link idle for up to 50 ms while
    /// the broker's backlog grew.
    async fn retry_blocked(&mut self) -> Result<(), crate::broker::BrokerGone> {
        match self.blocked.take() {
            Some(blocked) => self.offer(blocked).await,
            None => Ok(()),
        }
    }

    /// A stanza from the link, and up to [`DELIVERY_BATCH`] more that are there already, as
    /// for deliveries from MQTT: the link's reader hands over each stanza of a read on its
    /// own, and polling every input of the run loop between them was a share of its own.
    /// The clock is read once per batch (see [`BatchClock`]).
    async fn on_xmpp_batch(&mut self, inbound: Inbound) -> Result<(), crate::broker::BrokerGone> {
        self.clock = BatchClock::start();
        self.on_xmpp(inbound).await?;
        for _ in 1..DELIVERY_BATCH {
            let Ok(inbound) = self.inbound.try_recv() else {
                break;
            };
            self.on_xmpp(inbound).await?;
        }
        Ok(())
    }

    async fn on_xmpp(&mut self, inbound: Inbound) -> Result<(), crate::broker::BrokerGone> {
        match inbound {
            Inbound::Message(message) => {
                let taken = self.clock.take();
                let done = self.message_from_xmpp(message, taken).await;
                self.clock.settle();
                done
            }
            Inbound::Presence(presence) => self.on_presence(&presence).await,
            Inbound::ForeignPong(id) => {
                if self.mqtt.relay_pong(&id).await.is_err() {
                    debug!(%id, "Pong for another instance not relayed: MQTT side stopped.");
                }
                Ok(())
            }
            iq @ Inbound::Iq(_) => {
                debug!(?iq, "Iq from XMPP.");
                // Requests get <service-unavailable/>; results and errors get nothing.
                self.reply_error(
                    &iq,
                    DefinedCondition::ServiceUnavailable,
                    "Not supported here.",
                );
                Ok(())
            }
        }
    }

    async fn message_from_xmpp(
        &mut self,
        m: Box<Message>,
        taken: Taken,
    ) -> Result<(), crate::broker::BrokerGone> {
        if let Some(rooms) = &self.rooms {
            if m.type_ == MessageType::Error {
                if let Some(action) = rooms.on_error_message(&m) {
                    return self.room_actions(vec![action]).await;
                }
            } else if m.type_ == MessageType::Groupchat {
                if let Verdict::Skip(why) = rooms.verdict(&m) {
                    debug!(from = ?m.from, to = ?m.to, why, "Groupchat copy not carried.");
                    return Ok(());
                }
            }
        }
        let Some(chat) = inbound_chat(&m).or_else(|| self.bounce_of(&m)) else {
            // Errors and messages without addresses are never answered (no error loops).
            add(&self.stats.ignored_from_xmpp);
            return Ok(());
        };
        let id = chat.id.as_deref();
        let kind = match chat.extras.bounced {
            Some(_) => "error",
            None => chat.kind.as_str(),
        };
        let mut event = if self.events.keeps_records() {
            Translation::from_xmpp(&chat.from, &chat.to, kind, id, taken)
        } else {
            Translation::from_xmpp_unrecorded(kind, taken)
        };
        // What a record of a message not carried keeps: its body.
        let body = |chat: &InboundChat<'_>| {
            (chat.body.as_ref())
                .map(|b| Bytes::copy_from_slice(b.as_bytes()))
                .unwrap_or_default()
        };
        if !self.events.admits() {
            event.payload = body(&chat);
            event.outcome = Outcome::audit_full();
            self.events.refused_for_audit(&event);
            let text = "The audit trail is behind; try again later.";
            // A copy: `chat` borrows from `m` (a rare path).
            self.reply_error(
                &Inbound::Message(m.clone()),
                DefinedCondition::ResourceConstraint,
                text,
            );
            return Ok(());
        }
        if chat.extras != Default::default() {
            match self.xmpp_extras(&chat, event, &m).await? {
                Some(kept) => event = kept,
                None => return Ok(()),
            }
        }
        match xmpp_to_mqtt_at(&self.table, &chat, taken.time, || {
            String::from(&Element::from(Message::clone(&m)))
        }) {
            FromXmpp::Publish(out) => {
                debug!(rule = %out.rule, topic = %out.topic, from = %chat.from,
                    "XMPP message published to MQTT.");
                let (origin_id, qos) = (chat.extras.origin_id.as_deref(), out.qos as u8);
                let (rule, topic) = (&out.rule, &out.topic);
                event.to_mqtt(rule, topic, qos, BRIDGE_CLIENT_ID, &out.payload, origin_id);
                let mut properties = Properties::new();
                for (name, value) in &out.user_properties {
                    properties.push(Property::UserProperty(
                        (*name).into(),
                        value.as_str().into(),
                    ));
                }
                let track = match (&out.carried, &chat.id) {
                    (Carried::Message, Some(id))
                        if chat.extras.receipt_request
                            && self.tracked.is_some()
                            && out.qos != QoS::AtMostOnce =>
                    {
                        let to = translate::bare(&chat.to);
                        let (kind, qos) = (chat.kind.as_str(), out.qos as u8);
                        let receipts = &mut self.receipts;
                        Some(receipts.track(&chat.from, to, id, kind, &out.rule, &out.topic, qos))
                    }
                    _ => None,
                };
                if out.carried == Carried::Message {
                    self.remember_sender(&chat);
                }
                match (&out.carried, &chat.extras.bounced) {
                    (Carried::Receipt(_), _) => event.outcome = Outcome::ReceiptSent,
                    (Carried::Bounce(_), Some(bounce)) => {
                        event.outcome = Outcome::Bounced {
                            detail: bounce.detail(),
                        };
                    }
                    _ => {}
                }
                let publish = Publish {
                    dup: false,
                    qos: out.qos,
                    retain: out.retain,
                    topic: out.topic.into(),
                    pkid: 0,
                    payload: out.payload,
                    properties,
                };
                match track {
                    Some(token) => {
                        let note = self.receipts.note(token);
                        self.mqtt.publish_tracked(publish, token, note).await?;
                    }
                    None => self.mqtt.publish(publish).await?,
                }
                add(&self.stats.to_mqtt);
                event.handed_over_at(self.clock.tick());
                self.events.emit(*event).await;
            }
            FromXmpp::Ignore(why) => {
                debug!(from = %chat.from, to = %chat.to, why, "XMPP message not carried.");
                add(&self.stats.ignored_from_xmpp);
                event.payload = body(&chat);
                event.outcome = Outcome::dropped("not_carried", why);
                self.events.emit(*event).await;
            }
            FromXmpp::NoRoute => {
                info!(from = %chat.from, to = %chat.to, "No mapping rule for this address.");
                add(&self.stats.refused_from_xmpp);
                event.payload = body(&chat);
                event.outcome = Outcome::denied("no_rule", "no mapping rule covers this address");
                self.events.emit(*event).await;
                let text = "No mapping rule covers this address.";
                // A copy: `chat` borrows from `m` (a rare path).
                let inbound = Inbound::Message(m.clone());
                self.reply_error(&inbound, DefinedCondition::ItemNotFound, text);
            }
        }
        Ok(())
    }

    /// Answers a stanza with an error (never an error to an error: the adapter refuses).
    fn reply_error(&self, inbound: &Inbound, condition: DefinedCondition, text: &str) {
        let Some(reply) = inbound.error_reply(ErrorType::Cancel, condition, text) else {
            return;
        };
        if let Err(e) = self.xmpp.send(Outgoing::new(reply)) {
            debug!(error = %e, "Error reply not sent.");
        }
    }

    /// A delivery, and up to [`DELIVERY_BATCH`] more that are there already (the run loop
    /// polls all its inputs once per turn; per delivery that was a measurable share).
    /// The clock is read once per batch (see [`BatchClock`]).
    async fn on_mqtt_batch(&mut self, delivery: Delivery) -> Result<(), crate::broker::BrokerGone> {
        self.clock = BatchClock::start();
        self.on_mqtt(delivery).await?;
        for _ in 1..DELIVERY_BATCH {
            if self.blocked.is_some() {
                break;
            }
            let Some(delivery) = self.mqtt.try_recv() else {
                break;
            };
            self.on_mqtt(delivery).await?;
        }
        Ok(())
    }

    async fn on_mqtt(&mut self, delivery: Delivery) -> Result<(), crate::broker::BrokerGone> {
        let Some(delivery) = self.on_status(delivery).await? else {
            return Ok(());
        };
        let taken = self.clock.take();
        let done = self.chat_from_mqtt(delivery, taken).await;
        self.clock.settle();
        done
    }

    /// A delivery on a chat topic (not a status topic).
    async fn chat_from_mqtt(
        &mut self,
        delivery: Delivery,
        taken: Taken,
    ) -> Result<(), crate::broker::BrokerGone> {
        let Delivery {
            publish,
            origin,
            carried,
        } = delivery;
        let user = origin.as_ref().and_then(|o| o.username.as_deref());
        // Without an audit trail only the metrics see the event: nothing is copied for it.
        let mut event = if self.events.keeps_records() {
            let client_id = origin.as_ref().map(|o| o.client_id.to_string());
            let (qos, pkid, payload) = (publish.qos as u8, publish.pkid, publish.payload.clone());
            Translation::from_mqtt(
                &publish.topic,
                Some(qos),
                client_id,
                Some(pkid),
                payload,
                taken,
            )
        } else {
            Translation::from_mqtt_unrecorded(taken)
        };
        if !self.events.admits() {
            event.outcome = Outcome::audit_full();
            self.events.refused_for_audit(&event);
            self.mqtt.ack(&publish).await?;
            return Ok(());
        }
        // The broker's guard translated a client publish already (with the same table, topic,
        // payload and publisher); only other copies are translated here.
        let note = carried.as_ref();
        let translated =
            match pretranslated::take(note, &self.table, &publish.topic, &publish.payload) {
                Some(out) => {
                    add(&self.stats.pretranslated);
                    Ok(out)
                }
                None => mqtt_to_xmpp(&self.table, &publish.topic, &publish.payload, user),
            };
        match translated {
            Ok(mut out) => {
                if !publish.properties.is_empty() {
                    translate::apply_user_properties(&mut out, &publish.properties);
                }
                let id = out.id.clone().unwrap_or_else(|| self.new_id());
                let (addresses, kind) = ((out.from.as_str(), out.to.as_str()), out.kind.as_str());
                let origin_id = out.extras.origin_id.as_deref();
                event.to_xmpp(&out.rule, addresses, kind, &id, origin_id);
                if !self.mqtt_extras(&out, &id, &publish, &mut event).await? {
                    return Ok(());
                }
                match stanza::outgoing(out, id) {
                    Ok(stanza) => {
                        let outgoing = Outgoing::new(stanza);
                        self.offer(Blocked {
                            outgoing,
                            publish,
                            event,
                        })
                        .await?;
                    }
                    Err(e) => {
                        warn!(rule = ?event.rule, from = ?event.xmpp.from, to = ?event.xmpp.to,
                            topic = %publish.topic, reason = e.reason, error = %e.detail,
                            "MQTT message cannot be written as a stanza; dropped.");
                        add(&self.stats.refused_from_mqtt);
                        event.outcome = Outcome::dropped(e.reason, e.detail);
                        self.events.emit(*event).await;
                        self.mqtt.ack(&publish).await?;
                    }
                }
            }
            Err(refusal) => {
                let client_id = origin.as_ref().map(|o| o.client_id.to_string());
                warn!(topic = %publish.topic, ?client_id, reason = refusal.label(),
                    error = %refusal, "MQTT message not carried to XMPP.");
                add(&self.stats.refused_from_mqtt);
                event.refused(&refusal, refusal.to_string());
                self.events.emit(*event).await;
                self.mqtt.ack(&publish).await?;
            }
        }
        Ok(())
    }

    /// Queues a stanza on the link; keeps it (and stops taking deliveries) while the queue is
    /// full. Its delivery is acknowledged once the server confirmed it.
    async fn offer(&mut self, item: Blocked) -> Result<(), crate::broker::BrokerGone> {
        let Blocked {
            mut outgoing,
            publish,
            mut event,
        } = item;
        outgoing.ticket = Some(self.in_flight.next_ticket());
        match self.xmpp.send(outgoing) {
            Ok(()) => {
                add(&self.stats.to_xmpp);
                event.handed_over_at(self.clock.tick());
                // QoS 0 too, for its audit record (acknowledging it is a no-op).
                self.in_flight.push(Delivering { publish, event });
                Ok(())
            }
            Err(SendError::Full(outgoing)) => {
                self.blocked = Some(Blocked {
                    outgoing,
                    publish,
                    event,
                });
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "Stanza refused by the XMPP link; message dropped.");
                add(&self.stats.refused_from_mqtt);
                event.outcome = Outcome::dropped("link_refused", e.to_string());
                self.events.emit(*event).await;
                // Acknowledged all the same, or the broker would keep it in flight for ever.
                self.mqtt.ack(&publish).await
            }
        }
    }

    fn new_id(&mut self) -> String {
        self.next_id = self.next_id.wrapping_add(1);
        let mut id = String::with_capacity(self.id_prefix.len() + 16);
        id.push_str(&self.id_prefix);
        let _infallible = write!(id, "{:x}", self.next_id);
        id
    }
}

/// The next report on tracked publishes; never resolves without a receiver.
async fn next_tracked(rx: &mut Option<mpsc::UnboundedReceiver<Tracked>>) -> Option<Tracked> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The client id the bridge's in-process session has (see `app.rs`).
pub const BRIDGE_CLIENT_ID: &str = "bridge";
