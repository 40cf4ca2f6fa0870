//! Broker counters, shared by the router, the connections and whoever reports them
//! (`$SYS/broker/...` today, Prometheus later). Relaxed atomics: each has one main writer.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since start.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// TCP connections accepted.
    pub connections_accepted: AtomicU64,
    /// TCP connections refused at the `max_connections` limit.
    pub connections_refused: AtomicU64,
    /// Clients connected right now (CONNACK sent, not yet closed).
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets handed to clients' writers.
    pub messages_sent: AtomicU64,
    /// Messages dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages dropped because a client did not read fast enough.
    pub dropped_slow_client: AtomicU64,
    /// Messages not sent to a client because they exceed its MQTT 5 Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Bytes read from client sockets.
    pub bytes_received: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_sent: AtomicU64,
    /// Client publishes refused by the publish guard (bridged topics).
    pub publishes_refused: AtomicU64,
    /// Connections closed for a protocol violation.
    pub protocol_errors: AtomicU64,
    /// Gauges the router samples once a second (see [`BrokerGauges`]).
    pub gauges: BrokerGauges,
}

/// The router's state in numbers, sampled once a second (exact counts would cost the hot
/// path a write per change).
#[derive(Debug, Default)]
pub struct BrokerGauges {
    /// Sessions, connected or kept for an offline client.
    pub sessions: AtomicU64,
    /// Subscriptions (a share group counts once).
    pub subscriptions: AtomicU64,
    /// Retained messages.
    pub retained: AtomicU64,
    /// QoS 1/2 messages sent and not yet acknowledged, over all sessions.
    pub inflight: AtomicU64,
    /// Messages waiting in session queues (offline clients, full windows).
    pub queued: AtomicU64,
}

impl BrokerGauges {
    /// Stores a sampled value.
    pub fn set(gauge: &AtomicU64, value: usize) {
        gauge.store(value as u64, Ordering::Relaxed);
    }
}

impl BrokerStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge.
    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
