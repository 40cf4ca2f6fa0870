//! Reading the broker's state back on start, before any listener opens.

use super::record::{
    MessageRecord, ReplyRecord, RetainedRecord, SessionRecord, TrackedRecord, from_bytes,
};
use super::{MESSAGES, QOS2_IN, REPLIES, RETAINED, SESSIONS, Store, StoreError, TRACKED};

/// Everything the broker kept.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Persistent sessions.
    pub sessions: Vec<SessionRecord>,
    /// Their messages, in arrival order, with their sequence numbers.
    pub messages: Vec<(u64, MessageRecord)>,
    /// Incoming QoS 2 ids not yet released: client id, packet id.
    pub qos2_in: Vec<(String, u16)>,
    /// Retained messages by topic.
    pub retained: Vec<(String, RetainedRecord)>,
    /// Tracked publishes with copies in the store, by token.
    pub tracked: Vec<(u64, TrackedRecord)>,
    /// Reply routes for XMPP receipts, in the order they were made, with their keys.
    pub replies: Vec<(u64, ReplyRecord)>,
    /// The next free sequence number (messages and reply routes).
    pub next_seq: u64,
}

impl Recovered {
    /// Counts for the log line.
    pub fn summary(&self) -> (usize, usize, usize, usize) {
        (
            self.sessions.len(),
            self.messages.len(),
            self.qos2_in.len(),
            self.retained.len(),
        )
    }
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

impl Store {
    fn bad_key(&self, table: &'static str) -> StoreError {
        StoreError::Record {
            path: self.path().to_path_buf(),
            table,
            source: super::record::RecordError::Undecodable {
                kind: "key",
                detail: "wrong length or encoding".to_string(),
            },
        }
    }

    fn bad_record(&self, table: &'static str, source: super::record::RecordError) -> StoreError {
        StoreError::Record {
            path: self.path().to_path_buf(),
            table,
            source,
        }
    }

    /// Reads the broker's tables. A record that does not decode is an error naming the file
    /// and the table: the broker refuses to start rather than drop it silently.
    pub fn recover_broker(&self) -> Result<Recovered, StoreError> {
        let mut out = Recovered::default();
        self.for_each(SESSIONS, |_k, v| {
            let r = from_bytes(v).map_err(|e| self.bad_record(SESSIONS, e))?;
            out.sessions.push(r);
            Ok(())
        })?;
        let mut last = 0;
        self.for_each(MESSAGES, |k, v| {
            let seq = seq_of(k).ok_or_else(|| self.bad_key(MESSAGES))?;
            let r = from_bytes(v).map_err(|e| self.bad_record(MESSAGES, e))?;
            last = seq;
            out.messages.push((seq, r));
            Ok(())
        })?;
        self.for_each(TRACKED, |k, v| {
            let token = seq_of(k).ok_or_else(|| self.bad_key(TRACKED))?;
            let r = from_bytes(v).map_err(|e| self.bad_record(TRACKED, e))?;
            out.tracked.push((token, r));
            Ok(())
        })?;
        self.for_each(REPLIES, |k, v| {
            let seq = seq_of(k).ok_or_else(|| self.bad_key(REPLIES))?;
            let r = from_bytes(v).map_err(|e| self.bad_record(REPLIES, e))?;
            last = last.max(seq);
            out.replies.push((seq, r));
            Ok(())
        })?;
        out.next_seq = last + 1;
        self.for_each(QOS2_IN, |k, _v| {
            let (client, pkid) = super::split_qos2_key(k).ok_or_else(|| self.bad_key(QOS2_IN))?;
            out.qos2_in.push((client.to_string(), pkid));
            Ok(())
        })?;
        self.for_each(RETAINED, |k, v| {
            let topic = std::str::from_utf8(k).map_err(|_| self.bad_key(RETAINED))?;
            let r = from_bytes(v).map_err(|e| self.bad_record(RETAINED, e))?;
            out.retained.push((topic.to_string(), r));
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{FORMAT, MessageState, to_bytes};
    use crate::store::{Op, qos2_key, seq_key};
    use std::borrow::Cow;

    fn put(table: &'static str, key: Vec<u8>, value: Vec<u8>) -> Op {
        Op::Put {
            table: Cow::Borrowed(table),
            key,
            value,
        }
    }

    #[test]
    fn recovers_what_was_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let session = SessionRecord {
            v: FORMAT,
            client_id: "sub".into(),
            expiry: 100,
            detached_at_ms: Some(5),
            subscriptions: vec![],
            will: None,
        };
        let msg = |state| MessageRecord {
            v: FORMAT,
            client_id: "sub".into(),
            state,
            packet: vec![],
            expires_at_ms: None,
            origin: None,
            track: None,
        };
        let ops = vec![
            put(SESSIONS, b"sub".to_vec(), to_bytes(&session)),
            put(MESSAGES, seq_key(300), to_bytes(&msg(MessageState::Queued))),
            put(
                MESSAGES,
                seq_key(2),
                to_bytes(&msg(MessageState::Released(4))),
            ),
            put(QOS2_IN, qos2_key("pub", 9), vec![]),
        ];
        store.apply(&ops, true).unwrap();
        let r = store.recover_broker().unwrap();
        assert_eq!(r.sessions, vec![session]);
        let seqs: Vec<u64> = r.messages.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 300]);
        assert_eq!(r.next_seq, 301);
        assert_eq!(r.qos2_in, vec![("pub".to_string(), 9)]);
    }

    /// Reply routes share the message sequence: a restart continues after both.
    #[test]
    fn tracked_and_replies_come_back_and_move_the_sequence_on() {
        use crate::store::record::{ReplyRecord, TrackedRecord};
        use crate::store::{REPLIES, TRACKED};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let reply = ReplyRecord {
            v: FORMAT,
            from: "bob@m".into(),
            id: "m1".into(),
            topic: "me/r".into(),
            correlation: Some(vec![1]),
        };
        let tracked = TrackedRecord {
            v: FORMAT,
            note: vec![5],
            acked: true,
        };
        let ops = vec![
            put(REPLIES, seq_key(40), to_bytes(&reply)),
            put(TRACKED, seq_key(3), to_bytes(&tracked)),
        ];
        store.apply(&ops, true).unwrap();
        let r = store.recover_broker().unwrap();
        assert_eq!(r.replies, vec![(40, reply)]);
        assert_eq!(r.tracked, vec![(3, tracked)]);
        assert_eq!(r.next_seq, 41);
        store
            .apply(&[put(TRACKED, b"short".to_vec(), vec![])], true)
            .unwrap();
        let err = store.recover_broker().unwrap_err();
        assert!(err.to_string().contains("`tracked`"), "{err}");
    }

    #[test]
    fn a_bad_record_names_file_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .apply(
                &[put(SESSIONS, b"x".to_vec(), b"\xffnot cbor".to_vec())],
                true,
            )
            .unwrap();
        let err = store.recover_broker().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("state.redb") && text.contains("`sessions`"),
            "{text}"
        );
        assert!(err.is_corruption());
    }
}
