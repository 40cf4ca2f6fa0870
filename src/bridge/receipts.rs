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

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
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
    pub fn note(&self, token: u64) -> Option<Vec<u8>> {
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
struct Recent<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K, V> Default for Recent<K, V> {
    fn default() -> Self {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
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

    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Who sent each of the last [`REMEMBERED`] message ids (hashes only: no allocation per
/// message), so that a correction is accepted only from the original sender.
#[derive(Debug, Default)]
pub struct Senders {
    recent: Recent<u64, u64>,
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
        let _forgotten = self.recent.insert(hash(id), hash(sender));
    }

    /// May `sender` correct the message `id`?
    pub fn check(&self, id: &str, sender: &str) -> Correction {
        match self.recent.get(&hash(id)) {
            Some(s) if *s == hash(sender) => Correction::Allowed,
            Some(_) => Correction::NotTheSender,
            None => Correction::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(token: u64, who: &str, how: Settlement) -> Tracked {
        Tracked::Settled {
            token,
            client_id: who.into(),
            how,
        }
    }

    #[test]
    fn first_acknowledgement_sends_the_receipt_later_ones_are_audited() {
        let mut r = Receipts::default();
        let t = r.track(
            "alice@x/pc",
            "bob@m",
            "m1",
            "chat",
            "inbox",
            "users/bob/inbox/alice@x",
            1,
        );
        assert_eq!(
            r.on_tracked(Tracked::Routed {
                token: t,
                copies: 3
            }),
            None
        );
        let a = r.on_tracked(settled(t, "phone", Settlement::Dropped("queue_full")));
        assert!(matches!(a, Some(Action::Dropped(_, Some(_), "queue_full"))));
        let a = r.on_tracked(settled(t, "laptop", Settlement::Acknowledged));
        assert!(
            matches!(a, Some(Action::SendReceipt(ref e, ref c)) if e.id == "m1" && c == "laptop")
        );
        let a = r.on_tracked(settled(t, "tablet", Settlement::Acknowledged));
        assert!(matches!(a, Some(Action::Delivered(..))));
        assert_eq!(r.awaiting(), 0, "all copies settled");
        assert_eq!(
            r.on_tracked(settled(t, "x", Settlement::Acknowledged)),
            None
        );
    }

    #[test]
    fn no_receipt_without_an_acknowledgement() {
        let mut r = Receipts::default();
        let t = r.track("a@x", "b@m", "m1", "chat", "r", "t", 1);
        let a = r.on_tracked(Tracked::Routed {
            token: t,
            copies: 0,
        });
        assert!(matches!(a, Some(Action::Dropped(_, None, "no_subscriber"))));
        let t = r.track("a@x", "b@m", "m2", "chat", "r", "t", 2);
        r.on_tracked(Tracked::Routed {
            token: t,
            copies: 1,
        });
        let a = r.on_tracked(settled(t, "c", Settlement::Expired));
        assert!(matches!(a, Some(Action::Expired(..))));
        assert_eq!(r.awaiting(), 0);
    }

    #[test]
    fn replies_are_kept_per_bridged_jid_and_taken_once() {
        let mut r = Receipts::default();
        let reply = Reply {
            topic: "me/replies".into(),
            correlation: Some(Bytes::from_static(b"c1")),
        };
        r.expect_reply("bob@m", "m1", reply.clone());
        assert_eq!(r.reply_for("eve@m", "m1"), None);
        assert_eq!(r.reply_for("bob@m", "m1"), Some(reply));
        assert_eq!(r.reply_for("bob@m", "m1"), None);
    }

    #[test]
    fn only_the_original_sender_may_correct() {
        let mut s = Senders::default();
        s.record("m1", "alice@x");
        assert_eq!(s.check("m1", "alice@x"), Correction::Allowed);
        assert_eq!(s.check("m1", "eve@x"), Correction::NotTheSender);
        assert_eq!(s.check("m2", "alice@x"), Correction::Unknown);
        for i in 0..=REMEMBERED {
            s.record(&format!("k{i}"), "z");
        }
        assert_eq!(s.check("m1", "alice@x"), Correction::Unknown, "forgotten");
    }

    fn journal() -> (tempfile::TempDir, Arc<crate::store::Store>, Arc<Journal>) {
        use crate::store::{DurabilityPolicy, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let j = Journal::start(store.clone(), DurabilityPolicy::Sync, 100).unwrap();
        (dir, store, j)
    }

    /// What a restart gives back: the owed receipt (sent at the first acknowledgement of a
    /// recovered copy), a receipt already sent (only audited now), and the reply routes.
    #[test]
    fn resumed_bookkeeping_answers_as_before_the_restart() {
        use crate::broker::tracking::Recovered;
        let mut before = Receipts::default();
        let owed = before.track("a@x/pc", "b@m", "m1", "chat", "inbox", "t/b", 1);
        let sent = before.track("a@x/pc", "c@m", "m2", "headline", "inbox", "t/c", 2);
        let (_dir, store, j) = journal();
        let reply = ReplyRecord {
            v: FORMAT,
            from: "b@m".into(),
            id: "r1".into(),
            topic: "me/replies".into(),
            correlation: Some(vec![1, 2]),
        };
        let stored = crate::store::Op::Put {
            table: REPLIES.into(),
            key: seq_key(7),
            value: to_bytes(&reply),
        };
        store.apply(&[stored], true).unwrap();
        let resumed = Resumed {
            tracked: vec![
                Recovered {
                    token: owed,
                    note: before.note(owed).unwrap(),
                    copies: 2,
                    acked: false,
                },
                Recovered {
                    token: sent,
                    note: before.note(sent).unwrap(),
                    copies: 1,
                    acked: true,
                },
                Recovered {
                    token: 99,
                    note: b"damaged".to_vec(),
                    copies: 1,
                    acked: false,
                },
            ],
            replies: vec![(7, reply)],
            journal: j.clone(),
        };
        let mut r = Receipts::resumed(Some(resumed));
        assert_eq!(r.awaiting(), 2, "the damaged note is skipped");
        let a = r.on_tracked(settled(owed, "phone", Settlement::Acknowledged));
        assert!(
            matches!(a, Some(Action::SendReceipt(ref e, _)) if e.id == "m1" && e.sender == "a@x/pc" && e.kind == "chat"),
            "{a:?}"
        );
        let a = r.on_tracked(settled(owed, "tablet", Settlement::Acknowledged));
        assert!(matches!(a, Some(Action::Delivered(..))), "{a:?}");
        let a = r.on_tracked(settled(sent, "phone", Settlement::Acknowledged));
        assert!(
            matches!(a, Some(Action::Delivered(ref e, _)) if e.kind == "headline"),
            "no second receipt: {a:?}"
        );
        assert_eq!(r.awaiting(), 0);
        assert!(
            r.track("a@x", "b@m", "m3", "chat", "r", "t", 1) > 99,
            "new tokens never reuse recovered ones"
        );
        let back = r.reply_for("b@m", "r1").unwrap();
        assert_eq!(r.reply_for("b@m", "r1"), None, "taken once");
        assert_eq!(back.topic, "me/replies");
        assert_eq!(back.correlation.as_deref(), Some(&[1u8, 2][..]));
        // A new route is written; the used one is deleted with it.
        r.expect_reply(
            "d@m",
            "r2",
            Reply {
                topic: "d/r".into(),
                correlation: None,
            },
        );
        j.close(std::time::Duration::from_secs(5));
        let kept = store.recover_broker().unwrap().replies;
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(
            (kept[0].1.from.as_str(), kept[0].1.id.as_str()),
            ("d@m", "r2")
        );
        assert!(kept[0].0 >= 100, "keys come from the journal's sequence");
    }

    #[test]
    fn waiting_receipts_are_bounded_and_the_oldest_forgotten_is_counted() {
        let mut r = Receipts::default();
        let first = r.track("a@x", "b@m", "first", "chat", "r", "t", 1);
        for i in 0..REMEMBERED {
            r.track("a@x", "b@m", &i.to_string(), "chat", "r", "t", 1);
        }
        assert_eq!(r.awaiting(), REMEMBERED);
        assert_eq!(r.forgotten(), 1);
        assert_eq!(r.note(first), None, "the oldest went");
        assert_eq!(
            r.on_tracked(settled(first, "c", Settlement::Acknowledged)),
            None
        );
    }
}
