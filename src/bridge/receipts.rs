//! Delivery receipts and correction rights, sans-IO: the bridge feeds events in and gets
//! back what to send and what to audit.
//!
//! - XMPP → MQTT ([`Receipts::track`], [`Receipts::on_tracked`]): a message whose sender asked
//!   for an XEP-0184 receipt is published with a tracking token; the broker reports how many
//!   QoS 1/2 copies it made and how each ended. The first copy an MQTT subscriber acknowledges
//!   sends `<received/>` (see README, design notes: the first acknowledgement, like the first
//!   XMPP resource that receives a message); later acknowledgements are audited as
//!   `delivered`, expired and dropped copies as `expired` / `dropped`, and a message that
//!   reached no subscriber at QoS 1/2 never gets a receipt.
//! - MQTT → XMPP ([`Receipts::expect_reply`], [`Receipts::reply_for`]): an MQTT 5 publisher's
//!   Response Topic and Correlation Data, kept by message id until the XMPP client's receipt.
//! - Corrections ([`Senders`]): who sent each recent message id, so only the original sender
//!   may correct it.
//!
//! With persistence on (embedded broker), both directions survive kill -9:
//! - each tracked publish carries a [`Receipts::note`] (an [`AwaitingRecord`]), which the
//!   broker keeps with the token while a copy is in the store (`broker::tracking`); after a
//!   restart [`Receipts::resumed`] puts the entries back with the copies still open;
//! - reply routes are written to the store's replies table through the broker's journal (they
//!   go to disk with the batch that acknowledges the MQTT message to the bridge's session: no
//!   fsync of their own) and deleted when used or forgotten.
//!
//! The correction window ([`Senders`]) is not persisted: see the README design notes.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use tracing::warn;

use crate::broker::Resumed;
use crate::broker::tracking::{Settlement, Tracked};
use crate::store::record::{AwaitingRecord, FORMAT, ReplyRecord, from_bytes, to_bytes};
use crate::store::{Journal, REPLIES, seq_key};

/// How many message ids are remembered for corrections and for MQTT 5 replies, and how many
/// messages may wait for their receipt at once.
pub const REMEMBERED: usize = 65_536;

/// The XMPP message type of a stored note, as the static name the audit record takes.
fn kind_name(kind: &str) -> &'static str {
    match kind {
        "chat" => "chat",
        "groupchat" => "groupchat",
        "headline" => "headline",
        "error" => "error",
        _ => "normal",
    }
}

/// A message from XMPP waiting for its MQTT subscribers' acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    /// The XMPP sender (full JID): the receipt goes there.
    pub sender: String,
    /// The bridged recipient: the receipt comes from there.
    pub recipient: String,
    /// The message's id attribute (what `<received id>` names).
    pub id: String,
    /// The rule and topic it was published with (for the audit record).
    pub rule: String,
    /// The topic.
    pub topic: String,
    /// The QoS it was published with (1 or 2).
    pub qos: u8,
    /// Its XMPP message type.
    pub kind: &'static str,
    /// Copies not settled yet; `None` until the broker said how many it made.
    remaining: Option<usize>,
    receipt_sent: bool,
}

/// What the bridge must do after a tracking event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `<received id>` from `recipient` to `sender`; audit `receipt_sent` for the
    /// subscriber `client_id`.
    SendReceipt(Awaiting, ByteString),
    /// Audit one more acknowledgement (`delivered`) by `client_id`.
    Delivered(Awaiting, ByteString),
    /// Audit a copy that expired before it was sent.
    Expired(Awaiting, ByteString),
    /// Audit a copy dropped (reason) or a message that reached no subscriber at QoS 1/2
    /// (`no_subscriber`, no client id).
    Dropped(Awaiting, Option<ByteString>, &'static str),
}

/// Where an XMPP receipt for an MQTT 5 publisher's message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The publisher's Response Topic.
    pub topic: ByteString,
    /// Its Correlation Data, if any.
    pub correlation: Option<Bytes>,
}

/// The receipt bookkeeping of one bridge.
#[derive(Debug, Default)]
pub struct Receipts {
    /// By token; tokens grow, so the first entry is the oldest.
    awaiting: BTreeMap<u64, Awaiting>,
    next_token: u64,
    /// Reply routes with their key in the store's replies table (0: not stored).
    replies: Recent<(String, String), (u64, Reply)>,
    /// Where reply routes are kept (persistence on, embedded broker).
    journal: Option<Arc<Journal>>,
    /// Keys of used or forgotten reply routes not yet deleted from the store: they go with
    /// the next route written (that batch is committed anyway), so a receipt costs no commit
    /// of its own.
    unstored: Vec<u64>,
    forgotten: u64,
}

/// Deletes of used reply routes waiting for a batch beyond this many are written on their own.
const UNSTORED_MAX: usize = 256;

impl Receipts {
    /// The bookkeeping, with what the store kept across a restart when there is a store.
    pub fn resumed(resumed: Option<Resumed>) -> Self {
        let mut r = Receipts::default();
        let Some(resumed) = resumed else {
            return r;
        };
        for t in resumed.tracked {
            r.next_token = r.next_token.max(t.token);
            let note: AwaitingRecord = match from_bytes(&t.note) {
                Ok(note) => note,
                Err(error) => {
                    warn!(token = t.token, %error, "Stored receipt note unreadable; no receipt for it.");
                    continue;
                }
            };
            let entry = Awaiting {
                kind: kind_name(&note.kind),
                sender: note.sender,
                recipient: note.recipient,
                id: note.id,
                rule: note.rule,
                topic: note.topic,
                qos: note.qos,
                remaining: Some(t.copies),
                receipt_sent: t.acked,
            };
            r.insert(t.token, entry);
        }
        for (seq, rec) in resumed.replies {
            let reply = Reply {
                topic: ByteString::from(rec.topic),
                correlation: rec.correlation.map(Bytes::from),
            };
            if let Some((old, _)) = r.replies.insert((rec.from, rec.id), (seq, reply)) {
                resumed.journal.delete(REPLIES, seq_key(old));
            }
        }
        r.journal = Some(resumed.journal);
        r
    }

    /// Keeps `entry`, forgetting the oldest beyond [`REMEMBERED`] (counted).
    fn insert(&mut self, token: u64, entry: Awaiting) {
        self.awaiting.insert(token, entry);
        while self.awaiting.len() > REMEMBERED {
            if let Some((token, old)) = self.awaiting.pop_first() {
                self.forgotten += 1;
                warn!(token, id = %old.id, "Too many messages waiting for receipts; the oldest is forgotten.");
            }
        }
    }

    /// Messages forgotten because more than [`REMEMBERED`] waited for receipts at once.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// What to keep with `token` in the store for a restart (an [`AwaitingRecord`]).
    /// `None` without a store: nothing would keep it, and encoding it costs every message.
    pub fn note(&self, token: u64) -> Option<Vec<u8>> {
        self.journal.as_ref()?;
        let a = self.awaiting.get(&token)?;
        Some(to_bytes(&AwaitingRecord {
            v: FORMAT,
            sender: a.sender.clone(),
            recipient: a.recipient.clone(),
            id: a.id.clone(),
            rule: a.rule.clone(),
            topic: a.topic.clone(),
            qos: a.qos,
            kind: a.kind.to_string(),
        }))
    }

    /// Starts tracking a message published on `topic` at `qos` by `rule`; returns the token
    /// to publish it with.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flat record of what was published"
    )]
    pub fn track(
        &mut self,
        sender: &str,
        recipient: &str,
        id: &str,
        kind: &'static str,
        rule: &str,
        topic: &str,
        qos: u8,
    ) -> u64 {
        self.next_token = self.next_token.wrapping_add(1);
        let entry = Awaiting {
            sender: sender.to_string(),
            recipient: recipient.to_string(),
            id: id.to_string(),
            rule: rule.to_string(),
            topic: topic.to_string(),
            qos,
            kind,
            remaining: None,
            receipt_sent: false,
        };
        let token = self.next_token;
        self.insert(token, entry);
        token
    }

    /// Messages still waiting for acknowledgements.
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
    }

    /// Handles one report from the broker.
    pub fn on_tracked(&mut self, event: Tracked) -> Option<Action> {
        match event {
            Tracked::Routed { token, copies } => {
                if copies == 0 {
                    let entry = self.awaiting.remove(&token)?;
                    return Some(Action::Dropped(entry, None, "no_subscriber"));
                }
                self.awaiting.get_mut(&token)?.remaining = Some(copies);
                None
            }
            Tracked::Settled {
                token,
                client_id,
                how,
            } => {
                let entry = self.awaiting.get_mut(&token)?;
                let left = entry.remaining.map_or(0, |n| n.saturating_sub(1));
                entry.remaining = Some(left);
                let first_ack = how == Settlement::Acknowledged && !entry.receipt_sent;
                if first_ack {
                    entry.receipt_sent = true;
                }
                let snapshot = if left == 0 {
                    self.awaiting.remove(&token)?
                } else {
                    entry.clone()
                };
                Some(match how {
                    Settlement::Acknowledged if first_ack => {
                        Action::SendReceipt(snapshot, client_id)
                    }
                    Settlement::Acknowledged => Action::Delivered(snapshot, client_id),
                    Settlement::Expired => Action::Expired(snapshot, client_id),
                    Settlement::Dropped(why) => Action::Dropped(snapshot, Some(client_id), why),
                })
            }
        }
    }

    /// Remembers where the receipt for message `id` from the bridged JID `from` goes (in the
    /// store too, when there is one).
    pub fn expect_reply(&mut self, from: &str, id: &str, reply: Reply) {
        let seq = match &self.journal {
            Some(j) => {
                for seq in self.unstored.drain(..) {
                    j.delete(REPLIES, seq_key(seq));
                }
                let seq = j.next_seq();
                let record = ReplyRecord {
                    v: FORMAT,
                    from: from.to_string(),
                    id: id.to_string(),
                    topic: reply.topic.to_string(),
                    correlation: reply.correlation.as_ref().map(|c| c.to_vec()),
                };
                j.put(REPLIES, seq_key(seq), to_bytes(&record));
                seq
            }
            None => 0,
        };
        let old = self
            .replies
            .insert((from.to_string(), id.to_string()), (seq, reply));
        self.unstore_reply(old.map(|(seq, _)| seq));
    }

    /// Takes the reply route for a receipt naming message `id`, sent to the bridged JID `to`.
    pub fn reply_for(&mut self, to: &str, id: &str) -> Option<Reply> {
        let (seq, reply) = self.replies.remove(&(to.to_string(), id.to_string()))?;
        self.unstore_reply(Some(seq));
        Some(reply)
    }

    /// A used or forgotten route leaves the store with the next route written (or once
    /// [`UNSTORED_MAX`] wait). A crash before that keeps it: a second receipt for the same
    /// message would then be published again, which a receipt's id makes harmless.
    fn unstore_reply(&mut self, seq: Option<u64>) {
        let (Some(j), Some(seq)) = (&self.journal, seq.filter(|s| *s != 0)) else {
            return;
        };
        self.unstored.push(seq);
        if self.unstored.len() >= UNSTORED_MAX {
            for seq in self.unstored.drain(..) {
                j.delete(REPLIES, seq_key(seq));
            }
        }
    }
}

/// A map that forgets its oldest entries beyond [`REMEMBERED`].
#[derive(Debug)]
struct Recent<K, V, S = RandomState> {
    map: HashMap<K, V, S>,
    order: VecDeque<K>,
}

impl<K, V, S: Default> Default for Recent<K, V, S> {
    fn default() -> Self {
        Recent {
            map: HashMap::with_hasher(S::default()),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher> Recent<K, V, S> {
    /// Inserts; returns the value replaced or forgotten (the oldest, beyond [`REMEMBERED`]).
    fn insert(&mut self, k: K, v: V) -> Option<V> {
        let mut out = self.map.insert(k.clone(), v);
        if out.is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                if let Some(v) = self.map.remove(&old) {
                    out = Some(v);
                }
            }
        }
        out
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        // The key stays in `order` until it ages out; removing it there would cost a scan.
        self.map.remove(k)
    }
}

/// Buckets of the correction window: a record goes to the bucket its id's hash names.
const SENDER_BUCKETS: usize = 256;
/// Records one bucket holds: twice its average share of a full window. A bucket gets each
/// record with probability 1/256 (ids are hashed with a key chosen at random per bridge, so
/// nobody can aim at one), so among the last [`REMEMBERED`] records it holds 256 ± 16 on
/// average; overflowing 512 (and forgetting an id early) would take 16 standard deviations.
const BUCKET_SLOTS: usize = 2 * REMEMBERED / SENDER_BUCKETS;

/// One record of the correction window: hashes of the id and of its sender, and the record's
/// number (0: an empty slot).
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    id: u64,
    sender: u64,
    seq: u64,
}

/// Who sent each message id among the last [`REMEMBERED`] records (hashes only: no
/// allocation per message), so that a correction is accepted only from the original sender.
/// Each string is hashed once per call, with keys chosen at random per bridge.
///
/// Recording is on every message's path and checking only on corrections, so records are
/// appended to small rings (one per bucket of id hashes) instead of a hash map: the map's
/// insert and removal of the oldest were two cache misses per message in a window of
/// 65,536 entries. A check scans one bucket (at most 512 records) for the newest record of
/// the id that is still among the last [`REMEMBERED`].
///
/// The last sender's hash is kept with its text: a link's messages come in runs from the same
/// sender, and a string comparison costs less than a keyed hash (SipHash was 2 to 3 % of the
/// bridge's CPU per message, two runs per record).
#[derive(Debug, Default)]
pub struct Senders {
    keys: RandomState,
    /// The last sender hashed, and its hash (`None` until the first).
    last_sender: Option<(String, u64)>,
    /// [`SENDER_BUCKETS`] rings of [`BUCKET_SLOTS`] records, allocated with the first record.
    slots: Vec<Sent>,
    /// Where each bucket writes next.
    next: Vec<usize>,
    /// The number of the last record (records are numbered from 1).
    seq: u64,
}

/// Whether a correction may go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// The corrected message came from the same sender.
    Allowed,
    /// It came from someone else.
    NotTheSender,
    /// The id is unknown (never carried, or forgotten): refused, since the sender cannot be
    /// checked.
    Unknown,
}

impl Senders {
    /// Records that `sender` (a bare JID) sent the message `id`.
    pub fn record(&mut self, id: &str, sender: &str) {
        let (id, sender) = (self.keys.hash_one(id), self.sender_hash(sender));
        if self.slots.is_empty() {
            self.slots = vec![Sent::default(); SENDER_BUCKETS * BUCKET_SLOTS];
            self.next = vec![0; SENDER_BUCKETS];
        }
        self.seq += 1;
        let bucket = Self::bucket(id);
        let Some(at) = self.next.get_mut(bucket) else {
            return;
        };
        let slot = bucket * BUCKET_SLOTS + *at;
        *at = (*at + 1) % BUCKET_SLOTS;
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Sent {
                id,
                sender,
                seq: self.seq,
            };
        }
    }

    /// May `sender` correct the message `id`?
    pub fn check(&self, id: &str, sender: &str) -> Correction {
        let id = self.keys.hash_one(id);
        let from = Self::bucket(id) * BUCKET_SLOTS;
        let newest = (self
            .slots
            .get(from..from + BUCKET_SLOTS)
            .unwrap_or_default())
        .iter()
        .filter(|s| s.id == id && s.seq != 0 && self.seq - s.seq < REMEMBERED as u64)
        .max_by_key(|s| s.seq);
        match newest {
            Some(s) if s.sender == self.keys.hash_one(sender) => Correction::Allowed,
            Some(_) => Correction::NotTheSender,
            None => Correction::Unknown,
        }
    }

    /// The keyed hash of `sender`, from the last one when it is the same text.
    fn sender_hash(&mut self, sender: &str) -> u64 {
        if let Some((text, hash)) = &self.last_sender {
            if text == sender {
                return *hash;
            }
        }
        let hash = self.keys.hash_one(sender);
        match &mut self.last_sender {
            // The text's buffer is reused: no allocation per change of sender.
            Some((text, kept)) => {
                text.clear();
                text.push_str(sender);
                *kept = hash;
            }
            None => self.last_sender = Some((sender.to_owned(), hash)),
        }
        hash
    }

    fn bucket(id_hash: u64) -> usize {
        // The low bits of a keyed hash; `as` keeps exactly those.
        (id_hash % SENDER_BUCKETS as u64) as usize
    }
}

#[cfg(test)]
#[path = "receipts_tests.rs"]
mod tests;
