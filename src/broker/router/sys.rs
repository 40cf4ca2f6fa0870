//! `$SYS/broker/...` statistics.

use bytes::Bytes;
use bytestring::ByteString;

use super::Router;
use crate::broker::codec::{Properties, Publish, QoS};
use crate::broker::stats::{BrokerGauges, BrokerStats};

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
    pub(super) fn sample_gauges(&self) {
        let g = &self.stats.gauges;
        let (inflight, queued) = self
            .sessions
            .values()
            .fold((0, 0), |(i, q), s| (i + s.inflight(), q + s.queued()));
        BrokerGauges::set(&g.sessions, self.sessions.len());
        BrokerGauges::set(&g.subscriptions, self.subs.len() + self.shared.len());
        BrokerGauges::set(&g.retained, self.retained.len());
        BrokerGauges::set(&g.inflight, inflight);
        BrokerGauges::set(&g.queued, queued);
    }
}

fn dropped(stats: &BrokerStats) -> u64 {
    BrokerStats::get(&stats.dropped_queue_full)
        + BrokerStats::get(&stats.dropped_slow_client)
        + BrokerStats::get(&stats.dropped_too_large)
}
