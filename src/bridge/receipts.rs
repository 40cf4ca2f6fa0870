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

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use bytestring::ByteString;

use crate::broker::tracking::{Settlement, Tracked};

/// How many message ids are remembered for corrections and for MQTT 5 replies.
pub const REMEMBERED: usize = 65_536;

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
    awaiting: HashMap<u64, Awaiting>,
    next_token: u64,
    replies: Recent<(String, String), Reply>,
}

impl Receipts {
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
        self.awaiting.insert(self.next_token, entry);
        self.next_token
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

    /// Remembers where the receipt for message `id` from the bridged JID `from` goes.
    pub fn expect_reply(&mut self, from: &str, id: &str, reply: Reply) {
        self.replies
            .insert((from.to_string(), id.to_string()), reply);
    }

    /// Takes the reply route for a receipt naming message `id`, sent to the bridged JID `to`.
    pub fn reply_for(&mut self, to: &str, id: &str) -> Option<Reply> {
        self.replies.remove(&(to.to_string(), id.to_string()))
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
    fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
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
        self.recent.insert(hash(id), hash(sender));
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
}
