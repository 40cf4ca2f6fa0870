//! `$SYS/broker/...` statistics.

use bytes::Bytes;
use bytestring::ByteString;

use super::Router;
use crate::broker::codec::{Properties, Publish, QoS};
use crate::broker::stats::{BrokerGauges, BrokerStats};

/// Sessions whose messages in flight and queued the gauges add up per tick: a tick holds the
/// router's lock for about a quarter of a millisecond at most, however many sessions there
/// are (see `housekeeping`).
const GAUGE_SLICE: usize = 2048;

impl Router {
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
}

impl Router {
    /// Updates the gauges in [`BrokerStats`] (metrics read them at scrape time).
    /// Counts are set at every tick; the messages in flight and queued are added up over
    /// [`GAUGE_SLICE`] sessions per tick and set once every session was counted (up to
    /// 2,048 sessions: every tick; 100,000 sessions: a figure every 49 s).
    pub(super) fn sample_gauges(&mut self) {
        let g = &self.stats.gauges;
        BrokerGauges::set(&g.sessions, self.sessions.len());
        BrokerGauges::set(&g.subscriptions, self.subs.len() + self.shared.len());
        BrokerGauges::set(&g.retained, self.retained.len());
        let (slice, done) = self.sweep.next(GAUGE_SLICE);
        let (mut inflight, mut queued) = (0, 0);
        for sid in slice {
            if let Some(s) = self.sessions.get(sid) {
                inflight += s.inflight();
                queued += s.queued();
            }
        }
        self.sweep.count(inflight, queued);
        if done {
            let (inflight, queued) = self.sweep.finish();
            BrokerGauges::set(&g.inflight, inflight);
            BrokerGauges::set(&g.queued, queued);
        }
    }
}

fn dropped(stats: &BrokerStats) -> u64 {
    BrokerStats::get(&stats.dropped_queue_full)
        + BrokerStats::get(&stats.dropped_slow_client)
        + BrokerStats::get(&stats.dropped_too_large)
}
