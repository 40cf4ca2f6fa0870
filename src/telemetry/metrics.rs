//! Prometheus metrics: one registry, metrics grouped per component under their own prefix
//! (`bridge_`, `mqtt_`, `xmpp_`, `audit_`).
//!
//! Two kinds of source:
//! - [`BridgeMetrics`] observes the bridge's [`Translation`] events (the same events the
//!   audit trail records), so counts per rule, direction and outcome match the trail.
//! - The components' own atomic counters (broker, XMPP link, audit writer) are mirrored into
//!   Prometheus counters and gauges when scraped ([`Mirror`]); the hot paths keep their
//!   relaxed atomics and pay nothing for Prometheus.
//!
//! Labels are bounded: rule names come from the mapping files, directions, outcomes and
//! reasons are fixed sets. Nothing is labelled by client id, JID or topic.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::mpsc::WeakSender;
use tracing::warn;

use crate::audit::AuditStats;
use crate::bridge::events::{Direction, Observe, Outcome, Translation};
use crate::broker::BrokerStats;
use crate::xmpp::{LinkState, XmppHandle};

/// Bucket bounds of the translation latency histogram, in seconds (10 µs to 1 s).
const LATENCY_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0,
];

/// Metric names, declared once.
pub mod names {
    /// Messages through the bridge by direction, rule and outcome.
    pub const BRIDGE_MESSAGES: &str = "bridge_messages_total";
    /// Messages refused or dropped, by direction, outcome and reason.
    pub const BRIDGE_NOT_CARRIED: &str = "bridge_messages_not_carried_total";
    /// From taking a message to handing it to the other side.
    pub const BRIDGE_LATENCY: &str = "bridge_translation_duration_seconds";
}

/// Counts the bridge's events.
///
/// The series a message lands in are looked up once and kept: `with_label_values` per
/// message (building the label list, hashing it, a read lock and a handle clone) was a
/// measurable share of the bridge's CPU per message. Rule names come from the mapping
/// files, directions and outcomes are fixed sets, so the kept handles stay few.
#[derive(Debug)]
pub struct BridgeMetrics {
    messages: IntCounterVec,
    not_carried: IntCounterVec,
    latency: HistogramVec,
    /// `messages` series by (direction, outcome, rule), searched in order (a handful).
    by_rule: Mutex<Vec<RuleSeries>>,
    /// `latency` series per direction: [xmpp_to_mqtt, mqtt_to_xmpp].
    latency_by_direction: [Histogram; 2],
}

/// One kept series of `bridge_messages_total`.
#[derive(Debug)]
struct RuleSeries {
    direction: &'static str,
    outcome: &'static str,
    rule: Box<str>,
    counter: IntCounter,
}

impl BridgeMetrics {
    fn new() -> prometheus::Result<Self> {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                names::BRIDGE_LATENCY,
                "Time from the bridge taking a message to handing it to the other side.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["direction"],
        )?;
        let latency_by_direction = [
            latency.get_metric_with_label_values(&[Direction::XmppToMqtt.label()])?,
            latency.get_metric_with_label_values(&[Direction::MqttToXmpp.label()])?,
        ];
        Ok(BridgeMetrics {
            messages: IntCounterVec::new(
                Opts::new(
                    names::BRIDGE_MESSAGES,
                    "Messages the bridge carried or refused, by direction, rule and outcome.",
                ),
                &["direction", "rule", "outcome"],
            )?,
            not_carried: IntCounterVec::new(
                Opts::new(
                    names::BRIDGE_NOT_CARRIED,
                    "Messages denied or dropped, by direction, outcome and reason.",
                ),
                &["direction", "outcome", "reason"],
            )?,
            latency,
            by_rule: Mutex::new(Vec::new()),
            latency_by_direction,
        })
    }

    /// Adds one to the `messages` series of (direction, rule, outcome).
    fn count(&self, direction: &'static str, rule: &str, outcome: &'static str) {
        // A poisoned lock only means another thread panicked while pushing: the list is
        // still valid.
        let mut kept = self.by_rule.lock().unwrap_or_else(PoisonError::into_inner);
        // Labels are `'static` constants: equal labels are usually the same pointer, and a
        // string comparison (`memcmp`) per label per message was most of this function.
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        let found = kept
            .iter()
            .find(|s| same(s.direction, direction) && same(s.outcome, outcome) && *s.rule == *rule);
        if let Some(series) = found {
            series.counter.inc();
            return;
        }
        let counter = self.messages.with_label_values(&[direction, rule, outcome]);
        counter.inc();
        kept.push(RuleSeries {
            direction,
            outcome,
            rule: rule.into(),
            counter,
        });
    }
}

impl Observe for BridgeMetrics {
    fn observe(&self, e: &Translation) {
        let direction = e.direction.label();
        let rule = e.rule.as_deref().unwrap_or("");
        self.count(direction, rule, e.outcome.label());
        if let Some(reason) = e.outcome.reason() {
            self.not_carried
                .with_label_values(&[direction, e.outcome.label(), reason])
                .inc();
        }
        // One event per message, so each hand-over is observed once.
        if let (Some(d), Outcome::Published | Outcome::Delivered) = (e.handoff, &e.outcome) {
            let i = match e.direction {
                Direction::XmppToMqtt => 0,
                Direction::MqttToXmpp => 1,
            };
            self.latency_by_direction[i].observe(d.as_secs_f64());
        }
    }
}

type ReadU64 = Box<dyn Fn() -> u64 + Send + Sync>;
type ReadF64 = Box<dyn Fn() -> f64 + Send + Sync>;

enum Mirrored {
    Counter(IntCounter, ReadU64),
    Gauge(Gauge, ReadF64),
}

/// Prometheus counters and gauges whose values are read from elsewhere when scraped.
#[derive(Default)]
pub struct Mirror {
    items: Vec<Mirrored>,
}

impl Mirror {
    /// A `_total` counter read from `read` (which must never go down).
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> prometheus::Result<()> {
        let c = IntCounter::new(name, help)?;
        self.items.push(Mirrored::Counter(c, Box::new(read)));
        Ok(())
    }

    /// A counter with constant labels (one series of a labelled family).
    pub fn counter_with(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> prometheus::Result<()> {
        let mut opts = Opts::new(name, help);
        for (k, v) in labels {
            opts = opts.const_label(*k, *v);
        }
        let c = IntCounter::with_opts(opts)?;
        self.items.push(Mirrored::Counter(c, Box::new(read)));
        Ok(())
    }

    /// A gauge read from `read`.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> prometheus::Result<()> {
        let g = Gauge::new(name, help)?;
        self.items.push(Mirrored::Gauge(g, Box::new(read)));
        Ok(())
    }
}

impl Collector for Mirror {
    fn desc(&self) -> Vec<&Desc> {
        self.items
            .iter()
            .flat_map(|m| match m {
                Mirrored::Counter(c, _) => c.desc(),
                Mirrored::Gauge(g, _) => g.desc(),
            })
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(self.items.len());
        for m in &self.items {
            match m {
                Mirrored::Counter(c, read) => {
                    let now = read();
                    let was = c.get();
                    if now > was {
                        c.inc_by(now - was);
                    }
                    out.extend(c.collect());
                }
                Mirrored::Gauge(g, read) => {
                    g.set(read());
                    out.extend(g.collect());
                }
            }
        }
        out
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// The bridge's event counters (an [`Observe`]r for the bridge's event sink).
    pub bridge: Arc<BridgeMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn register(registry: &Registry, c: Box<dyn Collector>) {
    if let Err(e) = registry.register(c) {
        warn!(error = %e, "Metric not registered.");
    }
}

impl Metrics {
    /// An empty registry with the bridge's event metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let bridge = match BridgeMetrics::new() {
            Ok(b) => Arc::new(b),
            // The names and labels are constants checked by the tests; this cannot happen.
            Err(e) => panic!("bridge metric definitions are invalid: {e}"),
        };
        register(&registry, Box::new(bridge.messages.clone()));
        register(&registry, Box::new(bridge.not_carried.clone()));
        register(&registry, Box::new(bridge.latency.clone()));
        Metrics { registry, bridge }
    }

    /// Adds the broker's counters.
    pub fn broker(&self, stats: &Arc<BrokerStats>) {
        let mut m = Mirror::default();
        let g = |f: fn(&BrokerStats) -> &std::sync::atomic::AtomicU64| {
            let s = stats.clone();
            move || BrokerStats::get(f(&s))
        };
        // A gauge's value as Prometheus wants it.
        let gv = |f| {
            let read = g(f);
            move || read() as f64
        };
        let results = [
            m.gauge(
                "mqtt_connections",
                "MQTT clients connected now.",
                gv(|s| &s.clients_connected),
            ),
            m.counter(
                "mqtt_connections_accepted_total",
                "TCP connections accepted.",
                g(|s| &s.connections_accepted),
            ),
            m.counter(
                "mqtt_connections_refused_total",
                "TCP connections refused at max_connections.",
                g(|s| &s.connections_refused),
            ),
            m.counter(
                "mqtt_messages_received_total",
                "PUBLISH packets received from clients.",
                g(|s| &s.messages_received),
            ),
            m.counter(
                "mqtt_messages_sent_total",
                "PUBLISH packets sent to clients.",
                g(|s| &s.messages_sent),
            ),
            m.counter_with(
                "mqtt_messages_dropped_total",
                "Messages the broker dropped, by reason.",
                &[("reason", "queue_full")],
                g(|s| &s.dropped_queue_full),
            ),
            m.counter_with(
                "mqtt_messages_dropped_total",
                "Messages the broker dropped, by reason.",
                &[("reason", "slow_client")],
                g(|s| &s.dropped_slow_client),
            ),
            m.counter_with(
                "mqtt_messages_dropped_total",
                "Messages the broker dropped, by reason.",
                &[("reason", "too_large")],
                g(|s| &s.dropped_too_large),
            ),
            m.counter(
                "mqtt_received_bytes_total",
                "Bytes read from client sockets.",
                g(|s| &s.bytes_received),
            ),
            m.counter(
                "mqtt_sent_bytes_total",
                "Bytes written to client sockets.",
                g(|s| &s.bytes_sent),
            ),
            m.counter(
                "mqtt_publishes_refused_total",
                "Client publishes refused on bridged topics.",
                g(|s| &s.publishes_refused),
            ),
            m.counter(
                "mqtt_protocol_errors_total",
                "Connections closed for a protocol violation.",
                g(|s| &s.protocol_errors),
            ),
            m.gauge(
                "mqtt_sessions",
                "Sessions, connected or kept offline (sampled each second).",
                gv(|s| &s.gauges.sessions),
            ),
            m.gauge(
                "mqtt_subscriptions",
                "Subscriptions, a share group counted once (sampled each second).",
                gv(|s| &s.gauges.subscriptions),
            ),
            m.gauge(
                "mqtt_retained_messages",
                "Retained messages (sampled each second).",
                gv(|s| &s.gauges.retained),
            ),
            m.gauge(
                "mqtt_inflight_messages",
                "QoS 1/2 messages sent to clients, not yet acknowledged (sampled each second).",
                gv(|s| &s.gauges.inflight),
            ),
            m.gauge(
                "mqtt_queued_messages",
                "Messages waiting in session queues (sampled each second).",
                gv(|s| &s.gauges.queued),
            ),
        ];
        self.add(m, results);
    }

    /// Adds the XMPP link's state and counters.
    pub fn xmpp(&self, link: &XmppHandle) {
        use crate::xmpp::stats::XmppStats;
        let stats = link.stats();
        let mut m = Mirror::default();
        let g = |f: fn(&XmppStats) -> &std::sync::atomic::AtomicU64| {
            let s = stats.clone();
            move || XmppStats::get(f(&s))
        };
        let state = link.clone();
        let results = [
            m.gauge(
                "xmpp_link_up",
                "1 while the component link is connected.",
                move || f64::from(u8::from(matches!(state.state(), LinkState::Connected))),
            ),
            m.gauge(
                "xmpp_outbound_queue_stanzas",
                "Stanzas toward XMPP waiting to be written or confirmed by the server.",
                {
                    let link = link.clone();
                    move || link.queued() as f64
                },
            ),
            m.counter(
                "xmpp_link_connects_total",
                "Successful component handshakes.",
                g(|s| &s.connects),
            ),
            m.counter(
                "xmpp_link_disconnects_total",
                "Established links that ended (each is followed by a reconnect).",
                g(|s| &s.disconnects),
            ),
            m.counter(
                "xmpp_link_connect_failures_total",
                "Connection attempts that failed before the handshake.",
                g(|s| &s.connect_failures),
            ),
            m.counter(
                "xmpp_stanzas_received_total",
                "Stanzas read from the server.",
                g(|s| &s.stanzas_in),
            ),
            m.counter(
                "xmpp_stanzas_sent_total",
                "Stanzas written to the server (re-sends included).",
                g(|s| &s.stanzas_out),
            ),
            m.counter(
                "xmpp_stanzas_confirmed_total",
                "Outbound stanzas confirmed by a ping round trip.",
                g(|s| &s.confirmed),
            ),
            m.counter(
                "xmpp_stanzas_resent_total",
                "Outbound stanzas written again after a reconnect.",
                g(|s| &s.resent),
            ),
            m.counter(
                "xmpp_queue_overflow_total",
                "Outbound stanzas refused because the queue was full.",
                g(|s| &s.queue_overflow),
            ),
            m.counter(
                "xmpp_bad_stanzas_total",
                "Inbound stanzas that failed to parse.",
                g(|s| &s.bad_stanzas),
            ),
        ];
        self.add(m, results);
    }

    /// Adds the audit writer's counters and its queue.
    pub fn audit(&self, stats: &Arc<AuditStats>, queue: WeakSender<Translation>, depth: usize) {
        let mut m = Mirror::default();
        let g = |f: fn(&AuditStats) -> &std::sync::atomic::AtomicU64| {
            let s = stats.clone();
            move || AuditStats::get(f(&s))
        };
        let writable = stats.clone();
        let lag = stats.clone();
        let results = [
            m.counter(
                "audit_records_written_total",
                "Audit records written.",
                g(|s| &s.records_written),
            ),
            m.counter(
                "audit_write_errors_total",
                "Failed audit writes (each is retried).",
                g(|s| &s.write_errors),
            ),
            m.counter(
                "audit_files_deleted_total",
                "Audit files deleted by retention.",
                g(|s| &s.files_deleted),
            ),
            m.gauge(
                "audit_writable",
                "1 while the audit trail can be written.",
                move || f64::from(u8::from(writable.is_writable())),
            ),
            m.gauge(
                "audit_lag_seconds",
                "Age of the last written record's message when it was written.",
                move || AuditStats::get(&lag.lag_micros) as f64 / 1e6,
            ),
            m.gauge(
                "audit_queue_depth",
                "Events waiting for the audit writer.",
                move || {
                    queue
                        .upgrade()
                        .map_or(0.0, |tx| depth.saturating_sub(tx.capacity()) as f64)
                },
            ),
            m.gauge(
                "audit_queue_capacity",
                "Size of the audit queue.",
                move || depth as f64,
            ),
        ];
        self.add(m, results);
    }

    /// Adds the count of refusals that found the audit queue full (see
    /// [`EventSink::try_emit`](crate::bridge::events::EventSink::try_emit)).
    pub fn audit_lost(&self, lost: Arc<std::sync::atomic::AtomicU64>) {
        let mut m = Mirror::default();
        let r = m.counter(
            "audit_records_unwritten_total",
            "Broker-side refusals not audited because the audit queue was full.",
            move || lost.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.add(m, [r]);
    }

    fn add<const N: usize>(&self, m: Mirror, results: [prometheus::Result<()>; N]) {
        for r in results {
            if let Err(e) = r {
                warn!(error = %e, "Metric not defined.");
            }
        }
        register(&self.registry, Box::new(m));
    }

    /// Everything in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!(error = %e, "Cannot encode metrics.");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::bridge::events::Taken;

    #[test]
    fn events_become_counters_and_latency() {
        let m = Metrics::new();
        let mut e = Translation::start(Direction::XmppToMqtt);
        e.rule = Some("chat".into());
        e.handoff = Some(std::time::Duration::from_micros(40));
        m.bridge.observe(&e);
        // The kept series: the same one again, another rule, another direction.
        m.bridge.observe(&e);
        e.rule = Some("news".into());
        m.bridge.observe(&e);
        e.direction = Direction::MqttToXmpp;
        e.outcome = Outcome::Delivered;
        m.bridge.observe(&e);
        e.direction = Direction::XmppToMqtt;
        e.outcome = Outcome::Denied {
            reason: "no_rule",
            detail: String::new(),
        };
        e.rule = None;
        m.bridge.observe(&e);
        let text = m.render();
        assert!(
            text.contains(
                "bridge_messages_total{direction=\"xmpp_to_mqtt\",outcome=\"published\",rule=\"chat\"} 2"
            ),
            "{text}"
        );
        for line in [
            "bridge_messages_total{direction=\"xmpp_to_mqtt\",outcome=\"published\",rule=\"news\"} 1",
            "bridge_messages_total{direction=\"mqtt_to_xmpp\",outcome=\"delivered\",rule=\"news\"} 1",
            "bridge_messages_total{direction=\"xmpp_to_mqtt\",outcome=\"denied\",rule=\"\"} 1",
            "bridge_translation_duration_seconds_count{direction=\"mqtt_to_xmpp\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
        assert!(text.contains(
            "bridge_messages_not_carried_total{direction=\"xmpp_to_mqtt\",outcome=\"denied\",reason=\"no_rule\"} 1"
        ));
        assert!(
            text.contains(
                "bridge_translation_duration_seconds_count{direction=\"xmpp_to_mqtt\"} 3"
            )
        );
    }

    #[test]
    fn an_unrecorded_event_is_counted_as_a_recorded_one() {
        // Without an audit trail the bridge emits XMPP -> MQTT events without addresses,
        // ids, topic or payload: the metrics read nothing of those.
        let (full, lean) = (Metrics::new(), Metrics::new());
        for (m, mut e) in [
            (
                &full,
                Translation::from_xmpp("a@x/r", "b@y", "chat", Some("m1"), Taken::now()),
            ),
            (
                &lean,
                Translation::from_xmpp_unrecorded("chat", Taken::now()),
            ),
        ] {
            e.rule = Some("chat-inbox".into());
            e.handed_over();
            m.bridge.observe(&e);
            e.outcome = Outcome::dropped("not_carried", "x");
            m.bridge.observe(&e);
        }
        let series = |text: &str| -> Vec<String> {
            (text.lines())
                .filter(|l| l.starts_with("bridge_") && !l.contains("_sum") && !l.contains("le="))
                .map(str::to_owned)
                .collect()
        };
        let (full, lean) = (full.render(), lean.render());
        assert_eq!(series(&full), series(&lean));
        // The same both ways: MQTT -> XMPP events are lean too without a trail.
        let (full_mx, lean_mx) = (Metrics::new(), Metrics::new());
        for (m, mut e) in [
            (
                &full_mx,
                Translation::from_mqtt(
                    "users/b/outbox/a@x",
                    Some(1),
                    None,
                    Some(7),
                    "hi".into(),
                    Taken::now(),
                ),
            ),
            (&lean_mx, Translation::from_mqtt_unrecorded(Taken::now())),
        ] {
            e.rule = Some("chat-outbox".into());
            e.handed_over();
            m.bridge.observe(&e);
            e.outcome = Outcome::Delivered;
            m.bridge.observe(&e);
        }
        let lean_mx = lean_mx.render();
        assert_eq!(series(&full_mx.render()), series(&lean_mx));
        assert!(
            lean_mx.contains(
                "bridge_messages_total{direction=\"mqtt_to_xmpp\",outcome=\"delivered\",rule=\"chat-outbox\"} 1"
            ),
            "{lean_mx}"
        );
        for line in [
            "bridge_messages_total{direction=\"xmpp_to_mqtt\",outcome=\"published\",rule=\"chat-inbox\"} 1",
            "bridge_translation_duration_seconds_count{direction=\"xmpp_to_mqtt\"} 1",
            "bridge_messages_not_carried_total{direction=\"xmpp_to_mqtt\",outcome=\"dropped\",reason=\"not_carried\"} 1",
        ] {
            assert!(lean.contains(line), "{line} missing in {lean}");
        }
    }

    #[test]
    fn mirrored_atomics_are_read_when_scraped() {
        let m = Metrics::new();
        let stats = Arc::new(BrokerStats::default());
        m.broker(&stats);
        BrokerStats::add(&stats.messages_received, 5);
        BrokerStats::add(&stats.dropped_slow_client, 2);
        let text = m.render();
        assert!(text.contains("mqtt_messages_received_total 5"), "{text}");
        assert!(text.contains("mqtt_messages_dropped_total{reason=\"slow_client\"} 2"));
        assert!(text.contains("mqtt_messages_dropped_total{reason=\"queue_full\"} 0"));
        BrokerStats::add(&stats.messages_received, 1);
        assert!(m.render().contains("mqtt_messages_received_total 6"));
    }
}
