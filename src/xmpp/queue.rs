//! Sans-IO outbound bookkeeping: the ordered queue of stanzas with their confirmation state,
//! and the XEP-0199 pings that confirm them.
//!
//! XEP-0114 has no acknowledgements, so delivery to the server is proven like this:
//! 1. Stanzas are written in queue order; each keeps its place until confirmed.
//! 2. After writing, the link sends a ping that *covers* the last written sequence number.
//! 3. The server handles a stream in order, so its answer to that ping (result or error) proves
//!    it read every stanza written before the ping: they are confirmed and leave the queue.
//! 4. After a reconnect the queue is rewound: unconfirmed stanzas are written again, in order,
//!    before newer ones (with their original ids, so duplicates can be recognised).
//! 5. A stanza written on [`MAX_WRITES`] connections that all ended before confirming it is
//!    given up (the caller logs and counts it): a stanza the server rejects by closing the
//!    stream (too large, say) must not cut the link forever.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Connections a stanza may be written on before it is given up.
pub(crate) const MAX_WRITES: u32 = 5;

/// Stanzas in order: `entries[..written]` were written on the current connection and wait for
/// confirmation, the rest wait to be written.
#[derive(Debug)]
pub(crate) struct OutQueue<T> {
    entries: VecDeque<Entry<T>>,
    written: usize,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry<T> {
    seq: u64,
    item: T,
    /// Connections it was written on.
    writes: u32,
}

/// One entry handed out for writing.
#[derive(Debug)]
pub(crate) struct ToWrite<'a, T> {
    /// The item.
    pub(crate) item: &'a T,
    /// Whether it was written before, on a connection that ended before confirming it.
    pub(crate) resend: bool,
}

impl<T> Default for OutQueue<T> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            written: 0,
            next_seq: 1,
        }
    }
}

impl<T> OutQueue<T> {
    /// Appends an item; returns its sequence number.
    pub(crate) fn push(&mut self, item: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            item,
            writes: 0,
        });
        seq
    }

    /// Items held (unwritten plus unconfirmed).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether some item waits to be written.
    pub(crate) fn has_unwritten(&self) -> bool {
        self.written < self.entries.len()
    }

    /// Whether some written item waits for confirmation.
    pub(crate) fn has_unconfirmed(&self) -> bool {
        self.written > 0
    }

    /// Marks the next unwritten item as written and hands it out.
    pub(crate) fn write_next(&mut self) -> Option<ToWrite<'_, T>> {
        let entry = self.entries.get_mut(self.written)?;
        self.written += 1;
        entry.writes += 1;
        Some(ToWrite {
            item: &entry.item,
            resend: entry.writes > 1,
        })
    }

    /// The sequence number of the last written item, which a ping sent now would cover.
    pub(crate) fn last_written(&self) -> Option<u64> {
        self.written
            .checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map(|e| e.seq)
    }

    /// Removes and returns every written item up to and including `seq`, in order.
    pub(crate) fn confirm_upto(&mut self, seq: u64) -> impl Iterator<Item = T> + '_ {
        let n = self
            .entries
            .iter()
            .take(self.written)
            .take_while(|e| e.seq <= seq)
            .count();
        self.written -= n;
        self.entries.drain(..n).map(|e| e.item)
    }

    /// Starts over on a new connection: written but unconfirmed items will be written again.
    /// Returns how many, and removes (returning them) those already written [`MAX_WRITES`]
    /// times.
    pub(crate) fn rewind(&mut self) -> (usize, Vec<T>) {
        let written = std::mem::take(&mut self.written);
        let mut given_up = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for (i, e) in self.entries.drain(..).enumerate() {
            if i < written && e.writes >= MAX_WRITES {
                given_up.push(e.item);
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        (written - given_up.len(), given_up)
    }

    /// Empties the queue (at shutdown), returning what was never confirmed.
    pub(crate) fn drain_all(&mut self) -> Vec<T> {
        self.written = 0;
        self.entries.drain(..).map(|e| e.item).collect()
    }
}

/// Pings sent while another one waits (see [`Pings::due`]).
pub(crate) const MAX_EARLY_PINGS: usize = 3;

/// Pings in flight on the current connection.
#[derive(Debug)]
pub(crate) struct Pings {
    /// Ids start with this, so the reader can tell answers from other iqs.
    prefix: String,
    counter: u64,
    in_flight: VecDeque<Ping>,
}

#[derive(Debug)]
struct Ping {
    id: String,
    covers: Option<u64>,
    sent_at: Instant,
}

impl Pings {
    /// `prefix` should be unique per process (ids of pings are `{prefix}{n}`).
    pub(crate) fn new(prefix: String) -> Self {
        Self {
            prefix,
            counter: 0,
            in_flight: VecDeque::new(),
        }
    }

    /// Records a ping sent at `now` that covers written items up to `covers`; returns its id.
    pub(crate) fn start(&mut self, now: Instant, covers: Option<u64>) -> String {
        self.counter += 1;
        let id = format!("{}{}", self.prefix, self.counter);
        self.in_flight.push_back(Ping {
            id: id.clone(),
            covers,
            sent_at: now,
        });
        id
    }

    /// An answer to ping `id` arrived. The server answers in order, so it also settles every
    /// older ping. Returns the highest sequence number now confirmed, if any; `None` also for
    /// unknown ids (e.g. from an earlier connection).
    pub(crate) fn answered(&mut self, id: &str) -> Option<u64> {
        let pos = self.in_flight.iter().position(|p| p.id == id)?;
        self.in_flight.drain(..=pos).filter_map(|p| p.covers).max()
    }

    /// Whether a ping waits for its answer.
    pub(crate) fn in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Whether to send a ping now, with `last_written` the sequence number a ping sent now
    /// would cover. Always when none is in flight and something written is unconfirmed (the
    /// scheme's rule). Also, at most [`MAX_EARLY_PINGS`] more, when `early` or more items were
    /// written since the newest ping in flight: a server slow to read (a backlog of thousands
    /// of stanzas) then confirms them in steps instead of all at the one answer, so the queue
    /// does not fill while that answer is on its way. A server that keeps up answers the
    /// single ping before `early` more are written, so the common case sends no more pings.
    pub(crate) fn due(&self, last_written: Option<u64>, early: u64) -> bool {
        let Some(last) = last_written else {
            return false;
        };
        match self.in_flight.back() {
            None => true,
            Some(newest) => {
                self.in_flight.len() <= MAX_EARLY_PINGS
                    && last.saturating_sub(newest.covers.unwrap_or(0)) >= early.max(1)
            }
        }
    }

    /// When the oldest unanswered ping is overdue.
    pub(crate) fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.in_flight.front().map(|p| p.sent_at + timeout)
    }

    /// Gives every unanswered ping a full timeout again from `now`.
    pub(crate) fn restart_clock(&mut self, now: Instant) {
        for p in &mut self.in_flight {
            p.sent_at = now;
        }
    }

    /// Forgets pings of the previous connection.
    pub(crate) fn reset(&mut self) {
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_all(q: &mut OutQueue<&'static str>) -> Vec<(&'static str, bool)> {
        let mut out = Vec::new();
        while let Some(w) = q.write_next() {
            out.push((*w.item, w.resend));
        }
        out
    }

    #[test]
    fn confirmed_items_leave_in_order() {
        let mut q = OutQueue::default();
        q.push("a");
        q.push("b");
        assert_eq!(write_all(&mut q), [("a", false), ("b", false)]);
        let covers = q.last_written().unwrap();
        q.push("c");
        assert_eq!(q.confirm_upto(covers).collect::<Vec<_>>(), ["a", "b"]);
        assert!(!q.has_unconfirmed());
        assert!(q.has_unwritten());
        assert_eq!(write_all(&mut q), [("c", false)]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn unwritten_items_are_never_confirmed() {
        let mut q = OutQueue::default();
        let a = q.push("a");
        q.push("b");
        q.write_next();
        assert_eq!(q.confirm_upto(a + 10).collect::<Vec<_>>(), ["a"]);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn rewind_resends_unconfirmed_first_and_marks_them() {
        let mut q = OutQueue::default();
        q.push("a");
        q.push("b");
        let first = q.write_next().map(|w| *w.item);
        assert_eq!(first, Some("a"));
        q.push("c");
        assert_eq!(q.rewind(), (1, vec![]));
        assert_eq!(write_all(&mut q), [("a", true), ("b", false), ("c", false)]);
    }

    #[test]
    fn a_stanza_that_never_gets_confirmed_is_given_up() {
        let mut q = OutQueue::default();
        q.push("poison");
        q.push("fine");
        for _ in 1..MAX_WRITES {
            assert_eq!(q.write_next().map(|w| *w.item), Some("poison"));
            assert_eq!(q.rewind(), (1, vec![]));
        }
        assert_eq!(q.rewind(), (0, vec![]), "not written since: kept");
        q.write_next();
        q.write_next();
        assert_eq!(q.rewind(), (1, vec!["poison"]));
        assert_eq!(write_all(&mut q), [("fine", true)]);
    }

    /// The bridge settles tickets as "everything up to N", given-up ones first: that holds
    /// only if what is given up always comes before what is confirmed later, in queue order.
    #[test]
    fn given_up_items_are_the_oldest_and_later_ones_confirm_in_order() {
        let mut q = OutQueue::default();
        for item in ["a", "b", "c"] {
            q.push(item);
        }
        // "a" and "b" are written on every connection; "c" joins on the last ones only.
        for round in 1..MAX_WRITES {
            q.write_next();
            q.write_next();
            if round >= 3 {
                q.write_next();
            }
            assert!(q.rewind().1.is_empty());
        }
        q.push("d");
        let written: Vec<_> = write_all(&mut q).into_iter().map(|(i, _)| i).collect();
        assert_eq!(written, ["a", "b", "c", "d"]);
        let (resend, given_up) = q.rewind();
        assert_eq!((resend, given_up), (2, vec!["a", "b"]));
        write_all(&mut q);
        let upto = q.last_written().unwrap();
        assert_eq!(q.confirm_upto(upto).collect::<Vec<_>>(), ["c", "d"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn pongs_settle_older_pings_and_ignore_strangers() {
        let now = Instant::now();
        let mut p = Pings::new("x-".into());
        let a = p.start(now, Some(3));
        let _b = p.start(now, None);
        let c = p.start(now + Duration::from_secs(1), Some(7));
        assert_eq!(p.answered("x-99"), None);
        assert_eq!(
            p.deadline(Duration::from_secs(5)),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(p.answered(&c), Some(7));
        assert!(!p.in_flight());
        assert_eq!(p.answered(&a), None, "already settled");
    }

    #[test]
    fn early_pings_only_behind_a_backlog_and_bounded() {
        let now = Instant::now();
        let mut p = Pings::new("x-".into());
        assert!(!p.due(None, 10), "nothing written: no ping");
        assert!(
            p.due(Some(1), 10),
            "something unconfirmed, no ping in flight"
        );
        let first = p.start(now, Some(1));
        // The common case: fewer than `early` written since: wait for the answer.
        assert!(!p.due(Some(10), 10));
        assert!(p.due(Some(11), 10), "10 written since the newest ping");
        let mut ids = vec![first];
        let mut last = 11;
        while p.due(Some(last), 10) {
            ids.push(p.start(now, Some(last)));
            last += 10;
        }
        assert_eq!(
            ids.len(),
            1 + MAX_EARLY_PINGS,
            "bounded however far it falls behind"
        );
        assert!(!p.due(Some(last + 1000), 10));
        // Answers come in order; each confirms what its ping covered.
        assert_eq!(p.answered(&ids[0]), Some(1));
        assert_eq!(p.answered(&ids[1]), Some(11));
        assert!(p.due(Some(last), 10), "room for an early ping again");
        assert_eq!(
            p.answered(&ids[3]),
            Some(31),
            "a later answer settles older pings"
        );
        assert!(!p.in_flight());
        // A keepalive ping (covering nothing) does not hold a covering one back for long.
        let _keepalive = p.start(now, None);
        assert!(!p.due(Some(5), 10));
        assert!(p.due(Some(10), 10));
        assert!(p.due(Some(1), 0), "`early` of 0 counts as 1");
    }

    #[test]
    fn a_keepalive_ping_confirms_nothing() {
        let mut p = Pings::new("x-".into());
        let id = p.start(Instant::now(), None);
        assert_eq!(p.answered(&id), None);
    }
}
