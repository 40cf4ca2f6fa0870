//! The router's side of persistence: which sessions are stored, acknowledgements that wait
//! for the disk, retained messages, and the state put back on start (see `crate::store`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tracing::warn;

use super::{Retained, Router};
use crate::broker::codec::{Packet, Publish};
use crate::broker::link::Origin;
use crate::broker::session::stored::{instant_to_unix_ms, unix_ms_to_instant, will_from};
use crate::broker::session::{Outgoing, SessionId, SubEntry};
use crate::broker::topic::parse_shared;
use crate::broker::tracking::{self, Tracked, Tracker};
use crate::store::record::{FORMAT, RetainedRecord, publish_bytes, publish_from, to_bytes};
use crate::store::recover::Recovered;
use crate::store::{Journal, MESSAGES, QOS2_IN, RETAINED, TRACKED, qos2_key, seq_key};
use tokio::sync::mpsc::UnboundedSender;

/// How long shutdown waits for the last commit.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);

impl Router {
    /// Turns persistence on: from now on persistent sessions and retained messages are
    /// written through `journal`.
    pub fn set_journal(&mut self, journal: Arc<Journal>) {
        self.journal = Some(journal);
    }

    /// Sends an acknowledgement (PUBACK, PUBREC, PUBCOMP) once what it acknowledges is on
    /// disk, as the durability policy says.
    pub(super) fn ack(&self, sid: SessionId, packet: Packet) {
        let Some(att) = self.sessions.get(&sid).and_then(|s| s.attached.as_ref()) else {
            return;
        };
        match &self.journal {
            Some(j) if !att.internal => j.ack(&att.link, packet),
            _ => {
                att.link.send(packet);
            }
        }
    }

    /// After a change to a session's expiry or subscriptions: a session that outlives its
    /// connection is written; one that does not leaves the store.
    pub(super) fn persist_session(&mut self, sid: SessionId) {
        let Some(journal) = &self.journal else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        // In-process sessions too: the bridge's session holds what it has not handed to XMPP.
        if s.expiry > 0 {
            if s.journal.is_none() {
                s.journal = Some(journal.clone());
            }
            s.save();
        } else {
            s.forget_stored();
        }
    }

    /// Writes or removes a retained message.
    pub(super) fn persist_retained(&self, publish: &Publish, expires: Option<Instant>) {
        let Some(j) = &self.journal else {
            return;
        };
        let key = publish.topic.as_bytes().to_vec();
        if publish.payload.is_empty() {
            j.delete(RETAINED, key);
        } else {
            let record = RetainedRecord {
                v: FORMAT,
                packet: publish_bytes(publish),
                expires_at_ms: expires.map(instant_to_unix_ms),
            };
            j.put(RETAINED, key, to_bytes(&record));
        }
    }

    /// Hands the changes of the batch just handled to the commit thread.
    pub(super) fn flush_journal(&self) {
        if let Some(j) = &self.journal {
            j.flush();
        }
    }

    /// Shutdown: waits for the last changes to reach the disk.
    pub(super) fn close_journal(&self) {
        if let Some(j) = &self.journal {
            j.close(CLOSE_LIMIT);
        }
    }

    /// Puts back what the store kept: sessions (detached, with their subscriptions and
    /// delayed wills), their queued and in-flight messages (with their trackers, which report
    /// to `tracked_to`), incoming QoS 2 ids and retained messages. Entries that belong to no
    /// stored session are removed, and so are trackers without a stored copy. Returns the
    /// trackers put back, for their publisher.
    pub fn restore(
        &mut self,
        r: Recovered,
        tracked_to: &UnboundedSender<Tracked>,
    ) -> Vec<tracking::Recovered> {
        let Some(journal) = self.journal.clone() else {
            return Vec::new();
        };
        let now = Instant::now();
        // Copies left per token (in a stored session, readable) decide what each tracker
        // still waits for.
        let stored: std::collections::HashSet<&str> =
            r.sessions.iter().map(|s| s.client_id.as_str()).collect();
        let mut copies: HashMap<u64, usize> = HashMap::new();
        for (_, m) in &r.messages {
            let Some(token) = m.track else { continue };
            if stored.contains(m.client_id.as_str()) && publish_from(&m.packet).is_ok() {
                *copies.entry(token).or_default() += 1;
            }
        }
        let mut trackers = HashMap::new();
        let mut recovered = Vec::new();
        for (token, rec) in r.tracked {
            let Some(&n) = copies.get(&token) else {
                journal.delete(TRACKED, seq_key(token));
                continue;
            };
            recovered.push(tracking::Recovered {
                token,
                note: rec.note.clone(),
                copies: n,
                acked: rec.acked,
            });
            let t = Tracker::recovered(token, tracked_to.clone(), rec, n, journal.clone());
            trackers.insert(token, Arc::new(t));
        }
        for rec in r.sessions {
            let sid = self.new_session(ByteString::from(rec.client_id), rec.expiry);
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            s.journal = Some(journal.clone());
            s.detached_at = Some(rec.detached_at_ms.map_or(now, unix_ms_to_instant));
            // A will waiting for its delay when the process died fires at its due time (at
            // the first tick if overdue) unless the client comes back first.
            s.pending_will = match rec.will.as_ref().map(will_from) {
                Some(Ok(will)) => Some(will),
                Some(Err(error)) => {
                    warn!(client_id = %s.client_id, %error, "Stored delayed will unreadable; dropped.");
                    None
                }
                None => None,
            };
            for sub in rec.subscriptions {
                let filter = ByteString::from(sub.filter.as_str());
                let entry = SubEntry {
                    options: sub.options(),
                    id: sub.id,
                };
                s.subscriptions.insert(filter.clone(), entry);
                match parse_shared(&filter) {
                    Some(sh) => {
                        self.shared.join(&filter, sh.filter, sid, entry);
                    }
                    None => {
                        self.subs.insert(&filter, sid, entry);
                    }
                }
            }
            self.reschedule(sid);
        }
        for (seq, m) in r.messages {
            let Some(s) = self
                .by_client
                .get(m.client_id.as_str())
                .and_then(|sid| self.sessions.get_mut(sid))
            else {
                journal.delete(MESSAGES, seq_key(seq));
                continue;
            };
            let message = if m.packet.is_empty() {
                None
            } else {
                match publish_from(&m.packet) {
                    Ok(p) => Some(Outgoing {
                        expires: m.expires_at_ms.map(unix_ms_to_instant),
                        origin: m.origin.map(|(client_id, username)| {
                            Arc::new(Origin {
                                client_id: ByteString::from(client_id),
                                username: username.map(ByteString::from),
                            })
                        }),
                        // A stored copy whose tracker record is gone (the tracker was dropped
                        // when its token was settled elsewhere) is delivered untracked.
                        track: m.track.and_then(|t| trackers.get(&t).cloned()),
                        ..Outgoing::new(p)
                    }),
                    Err(error) => {
                        warn!(seq, client_id = %m.client_id, %error,
                            "Stored message unreadable; dropped.");
                        journal.delete(MESSAGES, seq_key(seq));
                        continue;
                    }
                }
            };
            if !s.restore_message(seq, m.state, message) {
                warn!(seq, client_id = %m.client_id, state = ?m.state,
                    "Stored in-flight message reuses a packet id already in flight; dropped.");
                journal.delete(MESSAGES, seq_key(seq));
            }
        }
        for (client, pkid) in r.qos2_in {
            match self
                .by_client
                .get(client.as_str())
                .and_then(|sid| self.sessions.get_mut(sid))
            {
                Some(s) => s.restore_qos2(pkid),
                None => journal.delete(QOS2_IN, qos2_key(&client, pkid)),
            }
        }
        for (topic, rec) in r.retained {
            match publish_from(&rec.packet) {
                Ok(publish) => {
                    let expires = rec.expires_at_ms.map(unix_ms_to_instant);
                    let topic = ByteString::from(topic);
                    self.set_retained(&topic, Some(Retained { publish, expires }));
                }
                Err(error) => {
                    warn!(%topic, %error, "Stored retained message unreadable; dropped.");
                    journal.delete(RETAINED, topic.into_bytes());
                }
            }
        }
        journal.flush();
        recovered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerConfig;
    use crate::broker::codec::QoS;
    use crate::broker::stats::BrokerStats;
    use crate::broker::tracking::Settlement;
    use crate::store::record::{MessageRecord, MessageState, SessionRecord, TrackedRecord};
    use crate::store::{DurabilityPolicy, Store};

    fn message(track: Option<u64>) -> MessageRecord {
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "users/bob/inbox".into(),
            pkid: 0,
            payload: bytes::Bytes::from_static(b"hi"),
            properties: crate::broker::codec::Properties::new(),
        };
        MessageRecord {
            v: FORMAT,
            client_id: "bob".into(),
            state: MessageState::Queued,
            packet: publish_bytes(&publish),
            expires_at_ms: None,
            origin: None,
            track,
        }
    }

    /// Trackers come back with the copies still stored (which settle through them, and the
    /// last one removes the record); a tracker without a stored copy is removed at start.
    #[test]
    fn trackers_are_rebuilt_from_their_stored_copies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let journal = Journal::start(store.clone(), DurabilityPolicy::Sync, 100).unwrap();
        let mut router = Router::new(
            Arc::new(BrokerConfig::default()),
            Arc::new(BrokerStats::default()),
        );
        router.set_journal(journal.clone());
        let tracked = |note: u8| TrackedRecord {
            v: FORMAT,
            note: vec![note],
            acked: false,
        };
        let state = Recovered {
            sessions: vec![SessionRecord {
                v: FORMAT,
                client_id: "bob".into(),
                expiry: 600,
                detached_at_ms: None,
                subscriptions: vec![],
                will: None,
            }],
            messages: vec![
                (1, message(Some(5))),
                (2, message(None)),
                (3, message(Some(5))),
                // A copy of a session that is not stored, and an unreadable one: not counted.
                (
                    4,
                    MessageRecord {
                        client_id: "gone".into(),
                        ..message(Some(5))
                    },
                ),
                (
                    5,
                    MessageRecord {
                        packet: vec![0x30, 0x7f],
                        ..message(Some(5))
                    },
                ),
            ],
            tracked: vec![(5, tracked(1)), (6, tracked(2))],
            next_seq: 6,
            ..Recovered::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let back = router.restore(state, &tx);
        assert_eq!(
            back,
            vec![tracking::Recovered {
                token: 5,
                note: vec![1],
                copies: 2,
                acked: false
            }]
        );
        let sid = router.by_client["bob"];
        assert_eq!(router.sessions[&sid].queued(), 3);
        // The session ends: each tracked copy settles once, then the record goes.
        router.end_session(sid);
        let mut settled = Vec::new();
        while let Ok(Tracked::Settled { token, how, .. }) = rx.try_recv() {
            settled.push((token, how));
        }
        let ended = Settlement::Dropped("session_ended");
        assert_eq!(settled, vec![(5, ended), (5, ended)]);
        journal.close(CLOSE_LIMIT);
        assert!(store.recover_broker().unwrap().tracked.is_empty());
    }
}
