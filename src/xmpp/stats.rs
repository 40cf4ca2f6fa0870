//! Counters of the component link, shared with whoever reports them. Relaxed atomics: each
//! counter has one writer task.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters since start.
#[derive(Debug, Default)]
pub struct XmppStats {
    /// Successful handshakes.
    pub connects: AtomicU64,
    /// Established links that ended (not counting failed attempts or shutdown).
    pub disconnects: AtomicU64,
    /// Connection attempts that failed before the handshake completed.
    pub connect_failures: AtomicU64,
    /// Stanzas read from the server (parsed or not).
    pub stanzas_in: AtomicU64,
    /// Queued stanzas written to the server (re-sends included).
    pub stanzas_out: AtomicU64,
    /// Inbound stanzas that failed to parse.
    pub bad_stanzas: AtomicU64,
    /// Outbound stanzas refused because the queue was full.
    pub queue_overflow: AtomicU64,
    /// Outbound stanzas confirmed by a later ping round trip.
    pub confirmed: AtomicU64,
    /// Outbound stanzas written again after a reconnect because they were not confirmed.
    pub resent: AtomicU64,
    /// Outbound stanzas given up after being written on `MAX_WRITES` connections that all
    /// ended before confirming them (a stanza the server answers by closing the stream).
    pub given_up: AtomicU64,
    /// Disco and ping requests answered by the adapter itself.
    pub answered: AtomicU64,
    /// Replies (errors, answers) dropped because the writer was far behind.
    pub replies_dropped: AtomicU64,
}

impl XmppStats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
