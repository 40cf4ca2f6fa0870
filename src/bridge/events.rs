//! The bridge's one observable event: a [`Translation`], emitted once per message the bridge
//! carries or refuses to carry, when its outcome is known. The audit writer and the metrics
//! both consume it, so a record and a counter can never disagree.
//!
//! The bridge knows nothing of files or Prometheus: it emits into an [`EventSink`], which
//! calls the synchronous [`Observe`]rs (metrics) and then queues the event for the audit
//! writer through a bounded channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::translate::NotCarried;

/// Which way a message crosses the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the XMPP link to the broker.
    XmppToMqtt,
    /// From the broker to the XMPP link.
    MqttToXmpp,
}

impl Direction {
    /// The label used in metrics and audit records.
    pub fn label(self) -> &'static str {
        match self {
            Direction::XmppToMqtt => "xmpp_to_mqtt",
            Direction::MqttToXmpp => "mqtt_to_xmpp",
        }
    }
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// XMPP → MQTT: handed to the broker for routing.
    Published,
    /// MQTT → XMPP: the XMPP server confirmed it has the stanza (a ping round trip after it).
    /// XMPP → MQTT (tracked messages, those with a receipt request): one more MQTT subscriber
    /// acknowledged it after the one that triggered the receipt.
    Delivered,
    /// XMPP → MQTT: the first MQTT subscriber acknowledged the message (PUBACK / PUBREC) and
    /// the XEP-0184 `<received/>` went to the XMPP sender; or an XMPP client's receipt was
    /// published back to the MQTT publisher.
    ReceiptSent,
    /// XMPP → MQTT: the XMPP server bounced a message the bridge had sent (an error stanza
    /// naming its id), and the bounce was published to the MQTT sender.
    Bounced {
        /// The error condition, and its text when the server gave one.
        detail: String,
    },
    /// XMPP → MQTT: a tracked copy's MQTT 5 Message Expiry ran out before it was sent.
    Expired {
        /// Human-readable detail.
        detail: String,
    },
    /// Refused by policy (no rule, identity, payload format, audit queue full).
    Denied {
        /// A short stable label (bounded set, used as a metric label).
        reason: &'static str,
        /// Human-readable detail.
        detail: String,
    },
    /// Accepted but not carried (nothing to carry, link refused, never confirmed).
    Dropped {
        /// A short stable label (bounded set, used as a metric label).
        reason: &'static str,
        /// Human-readable detail.
        detail: String,
    },
}

impl Outcome {
    /// A refusal.
    pub fn denied(reason: &'static str, detail: impl Into<String>) -> Self {
        Outcome::Denied {
            reason,
            detail: detail.into(),
        }
    }

    /// A message accepted but not carried.
    pub fn dropped(reason: &'static str, detail: impl Into<String>) -> Self {
        Outcome::Dropped {
            reason,
            detail: detail.into(),
        }
    }

    /// The refusal of a message because the audit queue is full (`when_full = "refuse"`).
    pub fn audit_full() -> Self {
        Outcome::denied(
            "audit_queue_full",
            "the audit queue is full and audit.when_full is \"refuse\"",
        )
    }

    /// The label used in metrics and audit records.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Delivered => "delivered",
            Outcome::ReceiptSent => "receipt_sent",
            Outcome::Bounced { .. } => "bounced",
            Outcome::Expired { .. } => "expired",
            Outcome::Denied { .. } => "denied",
            Outcome::Dropped { .. } => "dropped",
        }
    }

    /// The reason label of a refusal.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Denied { reason, .. } | Outcome::Dropped { reason, .. } => Some(reason),
            Outcome::Expired { .. } => Some("expired"),
            Outcome::Published
            | Outcome::Delivered
            | Outcome::ReceiptSent
            | Outcome::Bounced { .. } => None,
        }
    }

    /// The detail of a refusal.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Denied { detail, .. }
            | Outcome::Dropped { detail, .. }
            | Outcome::Expired { detail }
            | Outcome::Bounced { detail } => Some(detail),
            Outcome::Published | Outcome::Delivered | Outcome::ReceiptSent => None,
        }
    }
}

/// The XMPP side of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XmppSide {
    /// Sender JID.
    pub from: Option<String>,
    /// Recipient JID.
    pub to: Option<String>,
    /// Message type (`chat`, `groupchat`, ...).
    pub kind: Option<&'static str>,
    /// Stanza id.
    pub id: Option<String>,
}

/// The MQTT side of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttSide {
    /// Topic.
    pub topic: Option<String>,
    /// QoS level.
    pub qos: Option<u8>,
    /// Client id of the publisher (MQTT → XMPP) or of the bridge's session (XMPP → MQTT).
    pub client_id: Option<String>,
    /// Packet id of the delivery to the bridge's session (0 for QoS 0).
    pub packet_id: Option<u16>,
    /// The message id carried as MQTT 5 User Property `origin-id` (XEP-0359), when known.
    pub message_id: Option<String>,
}

/// When the bridge took a message: the wall clock (audit records, the JSON envelope's
/// `timestamp`) and its monotonic twin (hand-over latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Wall clock.
    pub time: SystemTime,
    /// Monotonic clock.
    pub started: Instant,
}

impl Taken {
    /// Now (reads both clocks).
    pub fn now() -> Self {
        Taken {
            time: SystemTime::now(),
            started: Instant::now(),
        }
    }
}

/// The clock of one turn of the bridge's run loop (a batch of up to 32 messages already
/// received): the wall clock is read once per batch, the monotonic clock once per message,
/// when it is handed over. Each message counts as taken when the one before it was handed
/// over (or at the start of the batch): the bridge handles them one after the other, so that
/// is when it turned to it. Reading both clocks twice per message was about 4 % of the
/// bridge's CPU per message (part 3 of `benches/bridge_compare.rs`).
#[derive(Debug, Clone, Copy)]
pub struct BatchClock {
    /// The wall clock at `base`.
    wall: SystemTime,
    base: Instant,
    /// The last reading: the next message is taken at this time.
    last: Instant,
    /// Whether `last` was read since the last [`take`](Self::take).
    fresh: bool,
}

impl BatchClock {
    /// A batch starting now.
    pub fn start() -> Self {
        let (wall, base) = (SystemTime::now(), Instant::now());
        BatchClock {
            wall,
            base,
            last: base,
            fresh: true,
        }
    }

    /// When the next message is taken: the wall clock derived from the monotonic reading
    /// (within a batch they are microseconds apart, far below the envelope's millisecond).
    pub fn take(&mut self) -> Taken {
        self.fresh = false;
        let since = self.last.saturating_duration_since(self.base);
        Taken {
            time: self.wall.checked_add(since).unwrap_or(self.wall),
            started: self.last,
        }
    }

    /// Reads the monotonic clock now (a hand-over); the next message is taken from here.
    pub fn tick(&mut self) -> Instant {
        self.last = Instant::now();
        self.fresh = true;
        self.last
    }

    /// After a message: reads the clock unless a hand-over did, so the next message does not
    /// count the time spent on this one.
    pub fn settle(&mut self) {
        if !self.fresh {
            self.tick();
        }
    }
}

/// One message through the bridge and how it ended.
#[derive(Debug, Clone)]
pub struct Translation {
    /// When the bridge took the message.
    pub time: SystemTime,
    /// Monotonic twin of `time`, for latencies.
    pub started: Instant,
    /// Which way.
    pub direction: Direction,
    /// The mapping rule that carried or refused it, when one applies.
    pub rule: Option<String>,
    /// XMPP side.
    pub xmpp: XmppSide,
    /// MQTT side.
    pub mqtt: MqttSide,
    /// The MQTT payload (as published, or as received), or the XMPP body when there is none.
    pub payload: Bytes,
    /// How it ended.
    pub outcome: Outcome,
    /// Time from taking the message to handing it to the other side (translation latency);
    /// `None` when it was not handed over.
    pub handoff: Option<Duration>,
    /// Whether it may become an audit record. When not (no trail), the setters below keep
    /// only what the observers read (see [`EventSink::keeps_records`]).
    recorded: bool,
}

impl Translation {
    /// A message taken now; outcome to be set.
    pub fn start(direction: Direction) -> Self {
        Self::start_at(direction, Taken::now())
    }

    /// A message taken at `taken`; outcome to be set.
    pub fn start_at(direction: Direction, taken: Taken) -> Self {
        Translation {
            time: taken.time,
            started: taken.started,
            direction,
            rule: None,
            xmpp: XmppSide::default(),
            mqtt: MqttSide::default(),
            payload: Bytes::new(),
            outcome: Outcome::Published,
            handoff: None,
            recorded: true,
        }
    }

    /// A message from XMPP, taken at `taken`.
    pub fn from_xmpp(
        from: &str,
        to: &str,
        kind: &'static str,
        id: Option<&str>,
        taken: Taken,
    ) -> Box<Self> {
        let mut t = Box::new(Translation::start_at(Direction::XmppToMqtt, taken));
        t.xmpp = XmppSide {
            from: Some(from.to_string()),
            to: Some(to.to_string()),
            kind: Some(kind),
            id: id.map(str::to_string),
        };
        t
    }

    /// A message from XMPP, taken at `taken`, for the observers only (no audit trail): the
    /// message's addresses and id are left out (see [`EventSink::keeps_records`]).
    pub fn from_xmpp_unrecorded(kind: &'static str, taken: Taken) -> Box<Self> {
        let mut t = Box::new(Translation::start_at(Direction::XmppToMqtt, taken));
        t.xmpp.kind = Some(kind);
        t.recorded = false;
        t
    }

    /// A message from MQTT, taken at `taken`.
    pub fn from_mqtt(
        topic: &str,
        qos: Option<u8>,
        client_id: Option<String>,
        packet_id: Option<u16>,
        payload: Bytes,
        taken: Taken,
    ) -> Box<Self> {
        let mut t = Box::new(Translation::start_at(Direction::MqttToXmpp, taken));
        t.mqtt = MqttSide {
            topic: Some(topic.to_string()),
            qos,
            client_id,
            packet_id,
            message_id: None,
        };
        t.payload = payload;
        t
    }

    /// A message from MQTT, taken at `taken`, for the observers only (no audit trail): its
    /// topic, publisher, packet id and payload are left out (see [`EventSink::keeps_records`]).
    pub fn from_mqtt_unrecorded(taken: Taken) -> Box<Self> {
        let mut t = Box::new(Translation::start_at(Direction::MqttToXmpp, taken));
        t.recorded = false;
        t
    }

    /// The MQTT side an XMPP message was translated to by `rule`; `message_id` is the
    /// message's own id (origin-id). An unrecorded event keeps only the rule.
    pub fn to_mqtt(
        &mut self,
        rule: &str,
        topic: &str,
        qos: u8,
        client_id: &str,
        payload: &Bytes,
        message_id: Option<&str>,
    ) {
        self.rule = Some(rule.to_string());
        if !self.recorded {
            return;
        }
        self.mqtt = MqttSide {
            topic: Some(topic.to_string()),
            qos: Some(qos),
            client_id: Some(client_id.to_string()),
            packet_id: None,
            message_id: message_id.map(str::to_string),
        };
        self.payload = payload.clone();
    }

    /// The XMPP side an MQTT message was translated to by `rule`; `message_id` is the
    /// message's own id (origin-id). An unrecorded event keeps only the rule.
    pub fn to_xmpp(
        &mut self,
        rule: &str,
        (from, to): (&str, &str),
        kind: &'static str,
        id: &str,
        message_id: Option<&str>,
    ) {
        self.rule = Some(rule.to_string());
        if !self.recorded {
            return;
        }
        self.xmpp = XmppSide {
            from: Some(from.to_string()),
            to: Some(to.to_string()),
            kind: Some(kind),
            id: Some(id.to_string()),
        };
        self.mqtt.message_id = message_id.map(str::to_string);
    }

    /// An MQTT message refused by the translation.
    pub fn refused(&mut self, refusal: &NotCarried, detail: String) {
        if let NotCarried::Payload { rule, .. } | NotCarried::Kind { rule, .. } = refusal {
            self.rule = Some(rule.clone());
        }
        self.outcome = Outcome::denied(refusal.label(), detail);
    }

    /// Marks the hand-over to the other side now.
    pub fn handed_over(&mut self) {
        self.handed_over_at(Instant::now());
    }

    /// Marks the hand-over to the other side at `now` (a [`BatchClock::tick`]).
    pub fn handed_over_at(&mut self, now: Instant) {
        self.handoff = Some(now.saturating_duration_since(self.started));
    }
}

/// A synchronous consumer of events (metrics). Must be cheap: it runs on the bridge task.
/// Without an audit trail, events may carry only what observers use: direction, rule,
/// outcome, time and hand-over latency (see [`EventSink::keeps_records`]).
pub trait Observe: Send + Sync {
    /// Sees one event.
    fn observe(&self, event: &Translation);
}

/// What the bridge does when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// Wait for room: the bridge stops taking messages (back-pressure on both sides).
    Block,
    /// Refuse new messages (XMPP: `<resource-constraint/>`; MQTT: not carried) until there is
    /// room; the refusals are counted.
    Refuse,
}

/// Where the bridge sends its events.
#[derive(Clone, Default)]
pub struct EventSink {
    audit: Option<(mpsc::Sender<Translation>, WhenFull)>,
    observers: Vec<Arc<dyn Observe>>,
    lost: Arc<AtomicU64>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("audit", &self.audit.as_ref().map(|(_, w)| w))
            .field("observers", &self.observers.len())
            .finish()
    }
}

impl EventSink {
    /// A sink feeding `audit` (the writer's queue, when audit is on) and `observers`.
    pub fn new(
        audit: Option<(mpsc::Sender<Translation>, WhenFull)>,
        observers: Vec<Arc<dyn Observe>>,
    ) -> Self {
        EventSink {
            audit,
            observers,
            lost: Arc::default(),
        }
    }

    /// Whether events become audit records. When not, only the observers see them, and the
    /// bridge may leave out what they do not read (addresses, ids, topic, payload): copying
    /// those per message was a measurable share of the bridge's CPU.
    pub fn keeps_records(&self) -> bool {
        self.audit.is_some()
    }

    /// Whether new traffic may be taken: false only under [`WhenFull::Refuse`] with a full
    /// audit queue. The bridge is the queue's only producer and emits at most one event per
    /// message it takes, so after a `true` the event of that message finds room.
    pub fn admits(&self) -> bool {
        match &self.audit {
            Some((tx, WhenFull::Refuse)) => tx.capacity() > 0,
            _ => true,
        }
    }

    /// Reports a message refused because the audit queue is full: to the observers only
    /// (there is no room to audit it; it was not carried).
    pub fn refused_for_audit(&self, event: &Translation) {
        for o in &self.observers {
            o.observe(event);
        }
    }

    /// Emits one event without waiting, for callers that cannot wait (the broker's publish
    /// guard). When the audit queue is full the record is not written: that is logged and
    /// counted (`lost`), never silent.
    pub fn try_emit(&self, event: Translation) {
        for o in &self.observers {
            o.observe(&event);
        }
        if let Some((tx, _)) = &self.audit {
            if let Err(e) = tx.try_send(event) {
                self.lost.fetch_add(1, Ordering::Relaxed);
                let full = matches!(e, mpsc::error::TrySendError::Full(_));
                warn!(
                    full,
                    "Audit queue full or closed; a broker-side refusal is not audited."
                );
            }
        }
    }

    /// Records not written because the queue was full when [`try_emit`](Self::try_emit) ran.
    pub fn lost(&self) -> Arc<AtomicU64> {
        self.lost.clone()
    }

    /// Emits one event: observers first, then the audit queue (waiting for room under
    /// [`WhenFull::Block`]; under `Refuse` room was checked with [`admits`](Self::admits)).
    pub async fn emit(&self, event: Translation) {
        for o in &self.observers {
            o.observe(&event);
        }
        if let Some((tx, _)) = &self.audit {
            if tx.send(event).await.is_err() {
                error!("Audit writer stopped; an audit record is lost.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuse_policy_admits_only_with_room() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = EventSink::new(Some((tx, WhenFull::Refuse)), Vec::new());
        assert!(sink.admits());
        sink.emit(Translation::start(Direction::XmppToMqtt)).await;
        assert!(!sink.admits(), "queue of one is full");
        assert!(rx.recv().await.is_some());
        assert!(sink.admits());
    }

    #[tokio::test]
    async fn block_policy_always_admits() {
        let (tx, _rx) = mpsc::channel(1);
        let sink = EventSink::new(Some((tx, WhenFull::Block)), Vec::new());
        sink.emit(Translation::start(Direction::MqttToXmpp)).await;
        assert!(sink.admits());
    }

    #[test]
    fn unrecorded_events_keep_only_the_rule() {
        let payload = Bytes::from_static(b"{}");
        let mut full = Translation::from_xmpp("a@x/r", "b@y", "chat", Some("m1"), Taken::now());
        full.to_mqtt("r1", "users/b/inbox/a@x", 1, "bridge", &payload, Some("o1"));
        assert_eq!(full.mqtt.topic.as_deref(), Some("users/b/inbox/a@x"));
        assert_eq!(full.mqtt.message_id.as_deref(), Some("o1"));
        assert_eq!(full.payload, payload);
        let mut lean = Translation::from_xmpp_unrecorded("chat", Taken::now());
        lean.to_mqtt("r1", "users/b/inbox/a@x", 1, "bridge", &payload, Some("o1"));
        assert_eq!(lean.rule.as_deref(), Some("r1"));
        assert_eq!((lean.mqtt.topic, lean.mqtt.message_id), (None, None));
        assert!(lean.payload.is_empty());

        let mut full =
            Translation::from_mqtt("t", Some(1), None, Some(3), payload.clone(), Taken::now());
        full.to_xmpp("r2", ("a@y", "b@x"), "chat", "id1", Some("o2"));
        assert_eq!(full.xmpp.to.as_deref(), Some("b@x"));
        assert_eq!(full.mqtt.message_id.as_deref(), Some("o2"));
        let mut lean = Translation::from_mqtt_unrecorded(Taken::now());
        lean.to_xmpp("r2", ("a@y", "b@x"), "chat", "id1", Some("o2"));
        assert_eq!(lean.rule.as_deref(), Some("r2"));
        assert_eq!((lean.xmpp.from, lean.xmpp.id), (None, None));
        assert_eq!(lean.mqtt.message_id, None);
    }

    #[test]
    fn batch_clock_takes_each_message_at_the_hand_over_before_it() {
        let mut clock = BatchClock::start();
        let first = clock.take();
        assert_eq!(first.started, clock.base);
        assert_eq!(first.time, clock.wall);
        std::thread::sleep(Duration::from_millis(2));
        let handed = clock.tick();
        let mut event = Translation::start_at(Direction::XmppToMqtt, first);
        event.handed_over_at(handed);
        assert!(event.handoff.unwrap() >= Duration::from_millis(2));
        // A hand-over read the clock: settling reads nothing more.
        clock.settle();
        let second = clock.take();
        assert_eq!(second.started, handed);
        // The wall clock follows the monotonic one from the batch's single reading.
        let since = handed - clock.base;
        assert_eq!(second.time, clock.wall + since);
        assert!(second.time.duration_since(first.time).unwrap() >= Duration::from_millis(2));
        // A message without hand-over: settling reads the clock, so the next one does not
        // count its time.
        std::thread::sleep(Duration::from_millis(1));
        clock.settle();
        let third = clock.take();
        assert!(third.started > second.started);
        assert!(third.started.duration_since(handed) >= Duration::from_millis(1));
        assert!(!clock.fresh);
        clock.settle();
        assert!(clock.fresh);
    }

    #[test]
    fn records_are_kept_only_with_an_audit_queue() {
        let (tx, _rx) = mpsc::channel(1);
        assert!(EventSink::new(Some((tx, WhenFull::Block)), Vec::new()).keeps_records());
        assert!(!EventSink::new(None, Vec::new()).keeps_records());
        assert!(!EventSink::default().keeps_records());
        let lean = Translation::from_xmpp_unrecorded("chat", Taken::now());
        assert_eq!(lean.direction, Direction::XmppToMqtt);
        assert_eq!(lean.xmpp.kind, Some("chat"));
        assert_eq!(
            (lean.xmpp.from.as_deref(), lean.mqtt.topic.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn try_emit_counts_what_does_not_fit() {
        let (tx, _rx) = mpsc::channel(1);
        let sink = EventSink::new(Some((tx, WhenFull::Block)), Vec::new());
        sink.try_emit(Translation::start(Direction::MqttToXmpp));
        sink.try_emit(Translation::start(Direction::MqttToXmpp));
        assert_eq!(sink.lost().load(Ordering::Relaxed), 1);
    }

    #[test]
    fn outcome_labels() {
        let d = Outcome::Denied {
            reason: "no_rule",
            detail: "x".into(),
        };
        assert_eq!(
            (d.label(), d.reason(), d.detail()),
            ("denied", Some("no_rule"), Some("x"))
        );
        assert_eq!(Outcome::Delivered.reason(), None);
    }
}
