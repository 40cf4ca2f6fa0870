//! Delivery tracking for messages published by an in-process client: the bridge learns when
//! each MQTT subscriber has a message (its PUBACK for QoS 1, its PUBREC for QoS 2), which is
//! what an XEP-0184 receipt toward XMPP must wait for, and when a copy was dropped or expired
//! instead (which must never produce a receipt).
//!
//! 1. The in-process client publishes with a [`Tracker`] (a token of its choosing and the
//!    channel back to it).
//! 2. The router counts the QoS 1/2 copies it makes and reports [`Tracked::Routed`] before
//!    handing any out; QoS 0 copies are never acknowledged and are not counted.
//! 3. Each copy carries the tracker in the subscriber's in-flight or queue entry, across
//!    disconnects of a persistent session; the session reports [`Tracked::Settled`] once per
//!    copy: acknowledged, expired, or dropped with a reason (queue full, too large, refused by
//!    the subscriber, session ended).
//!
//! The channel is unbounded because the router must never wait; it holds at most one event
//! per copy made plus one per publish, all bounded by the sessions' own limits.
//!
//! With persistence on, a tracker with a note (what the publisher wants back after a
//! restart, [`Tracker::with_note`]) survives kill -9 along with its copies:
//! - the first copy written to the store writes the tracker's [`TrackedRecord`] too, in the
//!   same journal batch (no extra fsync), and every stored copy carries the token;
//! - the first acknowledgement rewrites it with `acked` (so no second receipt after a
//!   restart), and the last settlement deletes it, each in the batch of the change that
//!   caused it;
//! - on start the router rebuilds one tracker per token from its stored copies (their count is
//!   what remains to settle) and reports them, with their notes, as [`Recovered`] to the
//!   persistent in-process client, whose tracking channel they report on.

use std::sync::{Arc, Mutex};

use bytestring::ByteString;
use tokio::sync::mpsc;

use crate::store::record::{FORMAT, TrackedRecord, to_bytes};
use crate::store::{Journal, TRACKED, seq_key};

/// How one copy of a tracked message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The subscriber acknowledged it (PUBACK, or PUBREC for QoS 2).
    Acknowledged,
    /// Its MQTT 5 Message Expiry Interval ran out before it was sent.
    Expired,
    /// Dropped before the subscriber had it.
    Dropped(&'static str),
}

/// What the router tells the publisher of a tracked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracked {
    /// The message was routed: `copies` QoS 1/2 copies were made (0: nobody will ever ack it).
    Routed {
        /// The publisher's token.
        token: u64,
        /// Copies that will each be settled once.
        copies: usize,
    },
    /// One copy ended.
    Settled {
        /// The publisher's token.
        token: u64,
        /// The subscriber's client id.
        client_id: ByteString,
        /// How.
        how: Settlement,
    },
}

/// A tracked publish read back from the store, for its publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The publisher's token.
    pub token: u64,
    /// What the publisher kept with it.
    pub note: Vec<u8>,
    /// Copies still to be settled (each will be reported once).
    pub copies: usize,
    /// A copy was acknowledged before the restart.
    pub acked: bool,
}

/// Where a tracker stands: copies not settled, whether one was acknowledged, and the
/// journal once a copy is in the store.
#[derive(Debug, Default)]
struct Progress {
    remaining: usize,
    acked: bool,
    journal: Option<Arc<Journal>>,
}

/// A tracking token with the way back to its publisher. Shared (`Arc`) by every copy.
#[derive(Debug)]
pub struct Tracker {
    token: u64,
    to: mpsc::UnboundedSender<Tracked>,
    note: Option<Vec<u8>>,
    progress: Mutex<Progress>,
}

impl Tracker {
    /// A tracker reporting to `to`.
    pub fn new(token: u64, to: mpsc::UnboundedSender<Tracked>) -> Self {
        Tracker {
            token,
            to,
            note: None,
            progress: Mutex::default(),
        }
    }

    /// Keeps `note` with the token in the store while a copy is there (see the module
    /// documentation); without a note a tracker is never stored.
    #[must_use]
    pub fn with_note(mut self, note: Vec<u8>) -> Self {
        self.note = Some(note);
        self
    }

    /// A tracker read back from the store with `copies` stored copies left to settle.
    pub(crate) fn recovered(
        token: u64,
        to: mpsc::UnboundedSender<Tracked>,
        record: TrackedRecord,
        copies: usize,
        journal: Arc<Journal>,
    ) -> Self {
        Tracker {
            token,
            to,
            note: Some(record.note),
            progress: Mutex::new(Progress {
                remaining: copies,
                acked: record.acked,
                journal: Some(journal),
            }),
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        // Counters only: a panic elsewhere cannot leave them half-written.
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The publisher's token.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The token to keep in a stored copy's record: only trackers with a note are stored.
    pub fn stored_token(&self) -> Option<u64> {
        self.note.as_ref().map(|_| self.token)
    }

    /// What the publisher kept with the token.
    pub fn note(&self) -> Option<&[u8]> {
        self.note.as_deref()
    }

    fn record(&self, acked: bool) -> Vec<u8> {
        to_bytes(&TrackedRecord {
            v: FORMAT,
            note: self.note.clone().unwrap_or_default(),
            acked,
        })
    }

    /// A copy is being written to the store through `journal`: the first one writes the
    /// tracker's record too, just before it (same batch).
    pub fn stored_in(&self, journal: &Arc<Journal>) {
        if self.note.is_none() {
            return;
        }
        let mut p = self.progress();
        if p.journal.is_none() && p.remaining > 0 {
            journal.put(TRACKED, seq_key(self.token), self.record(p.acked));
            p.journal = Some(journal.clone());
        }
    }

    /// Reports how many copies were made.
    pub fn routed(&self, copies: usize) {
        self.progress().remaining = copies;
        // The publisher may be gone; then nobody waits for the answer.
        let _gone = self.to.send(Tracked::Routed {
            token: self.token,
            copies,
        });
    }

    /// Reports how one copy ended.
    pub fn settle(&self, client_id: &ByteString, how: Settlement) {
        {
            let mut p = self.progress();
            p.remaining = p.remaining.saturating_sub(1);
            let first_ack = how == Settlement::Acknowledged && !p.acked;
            p.acked |= first_ack;
            if let Some(j) = &p.journal {
                if p.remaining == 0 {
                    j.delete(TRACKED, seq_key(self.token));
                } else if first_ack {
                    j.put(TRACKED, seq_key(self.token), self.record(true));
                }
            }
        }
        let _gone = self.to.send(Tracked::Settled {
            token: self.token,
            client_id: client_id.clone(),
            how,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_reach_the_publisher_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t = Tracker::new(7, tx);
        t.routed(2);
        t.settle(&ByteString::from("a"), Settlement::Acknowledged);
        t.settle(&ByteString::from("b"), Settlement::Dropped("queue_full"));
        assert_eq!(
            rx.try_recv().unwrap(),
            Tracked::Routed {
                token: 7,
                copies: 2
            }
        );
        assert!(matches!(rx.try_recv().unwrap(),
            Tracked::Settled { token: 7, ref client_id, how: Settlement::Acknowledged } if client_id == "a"));
        assert!(matches!(
            rx.try_recv().unwrap(),
            Tracked::Settled {
                how: Settlement::Dropped("queue_full"),
                ..
            }
        ));
        drop(rx);
        t.routed(1); // the publisher is gone: nothing happens
    }

    type Rows = Vec<(Vec<u8>, TrackedRecord)>;

    fn read(store: &crate::store::Store) -> Rows {
        let mut out = Vec::new();
        let recovered = store.recover_broker().unwrap();
        for (token, r) in recovered.tracked {
            out.push((seq_key(token), r));
        }
        out
    }

    /// The record is written with the first stored copy, rewritten at the first
    /// acknowledgement, and deleted with the last settlement; a tracker without a note is
    /// never stored.
    #[test]
    fn a_noted_tracker_is_kept_while_copies_are_open() {
        use crate::store::{DurabilityPolicy, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let journal = Journal::start(store.clone(), DurabilityPolicy::Sync, 1).unwrap();
        // The commit thread writes each flushed batch soon; wait (bounded) until it has.
        let settled = |j: &Arc<Journal>, done: &dyn Fn(&Rows) -> bool| {
            j.flush();
            for _ in 0..250 {
                if done(&read(&store)) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            panic!("not written: {:?}", read(&store));
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let plain = Tracker::new(1, tx.clone());
        plain.routed(1);
        plain.stored_in(&journal);
        assert_eq!(plain.stored_token(), None);
        let t = Tracker::new(2, tx).with_note(vec![7, 7]);
        t.routed(3);
        assert_eq!(t.stored_token(), Some(2));
        t.stored_in(&journal);
        t.stored_in(&journal); // a second stored copy writes nothing more
        settled(&journal, &|got| got.len() == 1);
        let got = read(&store);
        assert_eq!(
            (got[0].1.note.as_slice(), got[0].1.acked),
            (&[7u8, 7][..], false)
        );
        t.settle(&"a".into(), Settlement::Dropped("queue_full"));
        t.settle(&"b".into(), Settlement::Acknowledged);
        // The first acknowledgement is kept.
        settled(&journal, &|got| got.len() == 1 && got[0].1.acked);
        t.settle(&"c".into(), Settlement::Acknowledged);
        // Every copy settled: the record is deleted.
        settled(&journal, &|got| got.is_empty());
        journal.close(std::time::Duration::from_secs(5));
    }
}
