//! A persistent session's changes as store records, and its state back after a restart.
//!
//! Only sessions with a [`Journal`](crate::store::Journal) record anything: sessions that end
//! with their connection have nothing to recover.

use std::time::{Duration, Instant};

use super::{Inflight, Outgoing, Session};
use crate::broker::codec::{LastWill, Publish, QoS};
use crate::store::record::{
    FORMAT, MessageRecord, MessageState, RecordError, SessionRecord, SubRecord, WillRecord,
    publish_bytes, publish_from, to_bytes, unix_ms,
};
use crate::store::{MESSAGES, QOS2_IN, SESSIONS, qos2_key, seq_key};

/// An `Instant` as Unix milliseconds (for expiry times that must survive a restart).
pub(crate) fn instant_to_unix_ms(at: Instant) -> u64 {
    let now = Instant::now();
    let unix = unix_ms();
    match at.checked_duration_since(now) {
        Some(ahead) => unix.saturating_add(u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX)),
        None => unix
            .saturating_sub(u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX)),
    }
}

/// A delayed will as a record: the will as a PUBLISH, and its due time on the wall clock.
/// The Will Delay Interval is not a PUBLISH property; it has done its work (the due time).
pub(crate) fn will_record(will: &LastWill, due: Instant) -> WillRecord {
    let mut properties = will.properties.clone();
    properties.remove_where(|p| matches!(p, crate::broker::codec::Property::WillDelayInterval(_)));
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic.clone(),
        pkid: u16::from(will.qos != QoS::AtMostOnce),
        payload: will.payload.clone(),
        properties,
    };
    WillRecord {
        packet: publish_bytes(&publish),
        due_at_ms: instant_to_unix_ms(due),
    }
}

/// The delayed will back from its record (an overdue one is due now).
pub(crate) fn will_from(record: &WillRecord) -> Result<(LastWill, Instant), RecordError> {
    let p = publish_from(&record.packet)?;
    let will = LastWill {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties,
    };
    Ok((will, unix_ms_to_instant(record.due_at_ms)))
}

/// Unix milliseconds as an `Instant` of this process.
pub(crate) fn unix_ms_to_instant(ms: u64) -> Instant {
    let now = Instant::now();
    let unix = unix_ms();
    if ms >= unix {
        now + Duration::from_millis(ms - unix)
    } else {
        now.checked_sub(Duration::from_millis(unix - ms))
            .unwrap_or(now)
    }
}

impl Session {
    fn message_record(&self, message: &Outgoing, state: MessageState) -> Vec<u8> {
        to_bytes(&MessageRecord {
            v: FORMAT,
            client_id: self.client_id.to_string(),
            state,
            packet: match state {
                MessageState::Released(_) => Vec::new(),
                _ => publish_bytes(&message.publish),
            },
            expires_at_ms: message.expires.map(instant_to_unix_ms),
            origin: message.origin.as_ref().map(|o| {
                (
                    o.client_id.to_string(),
                    o.username.as_ref().map(|u| u.to_string()),
                )
            }),
            track: match state {
                MessageState::Released(_) => None,
                _ => message.track.as_ref().and_then(|t| t.stored_token()),
            },
        })
    }

    pub(super) fn store_queued(&self, message: &Outgoing) {
        if let (Some(j), true) = (&self.journal, message.stored != 0) {
            if let Some(t) = &message.track {
                t.stored_in(j);
            }
            let value = self.message_record(message, MessageState::Queued);
            j.put(MESSAGES, seq_key(message.stored), value);
        }
    }

    pub(super) fn store_published(&self, message: &Outgoing) {
        if let (Some(j), true) = (&self.journal, message.stored != 0) {
            if let Some(t) = &message.track {
                t.stored_in(j);
            }
            let state = MessageState::Published(message.publish.pkid);
            let value = self.message_record(message, state);
            j.put(MESSAGES, seq_key(message.stored), value);
        }
    }

    pub(super) fn store_released(&self, stored: u64, pkid: u16) {
        if let (Some(j), true) = (&self.journal, stored != 0) {
            let value = to_bytes(&MessageRecord {
                v: FORMAT,
                client_id: self.client_id.to_string(),
                state: MessageState::Released(pkid),
                packet: Vec::new(),
                expires_at_ms: None,
                origin: None,
                track: None,
            });
            j.put(MESSAGES, seq_key(stored), value);
        }
    }

    pub(super) fn unstore(&self, stored: u64) {
        if let (Some(j), true) = (&self.journal, stored != 0) {
            j.delete(MESSAGES, seq_key(stored));
        }
    }

    pub(super) fn store_qos2(&self, pkid: u16, received: bool) {
        if let Some(j) = &self.journal {
            let key = qos2_key(&self.client_id, pkid);
            if received {
                j.put(QOS2_IN, key, Vec::new());
            } else {
                j.delete(QOS2_IN, key);
            }
        }
    }

    /// Writes the session record (client id, expiry, subscriptions, when it went away).
    pub fn save(&self) {
        let Some(j) = &self.journal else {
            return;
        };
        let mut subscriptions: Vec<SubRecord> = self
            .subscriptions
            .iter()
            .map(|(filter, e)| SubRecord::new(filter, e.options, e.id))
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        let record = SessionRecord {
            v: FORMAT,
            client_id: self.client_id.to_string(),
            expiry: self.expiry,
            detached_at_ms: self.detached_at.map(instant_to_unix_ms),
            subscriptions,
            will: (self.pending_will.as_ref()).map(|(will, due)| will_record(will, *due)),
        };
        j.put(
            SESSIONS,
            self.client_id.as_bytes().to_vec(),
            to_bytes(&record),
        );
    }

    /// The session ends: its record, messages and QoS 2 ids leave the store, and it records
    /// nothing more.
    pub fn forget_stored(&mut self) {
        let Some(j) = self.journal.take() else {
            return;
        };
        j.delete(SESSIONS, self.client_id.as_bytes().to_vec());
        for m in self.inflight.iter() {
            let stored = m.stored();
            if stored != 0 {
                j.delete(MESSAGES, seq_key(stored));
            }
        }
        for m in self.queue.iter().filter(|m| m.stored != 0) {
            j.delete(MESSAGES, seq_key(m.stored));
        }
        for &pkid in &self.incoming_qos2 {
            j.delete(QOS2_IN, qos2_key(&self.client_id, pkid));
        }
    }

    /// Puts back a message read from the store (`message` is `None` only for a released one,
    /// whose PUBLISH is no longer kept). Call in sequence order. False when it cannot be
    /// put back: its packet id is already in flight (a damaged store; the caller drops it).
    pub fn restore_message(
        &mut self,
        stored: u64,
        state: MessageState,
        message: Option<Outgoing>,
    ) -> bool {
        let (pkid, entry) = match (state, message) {
            (MessageState::Queued, Some(mut m)) => {
                m.stored = stored;
                self.queue.push_back(m);
                return true;
            }
            (MessageState::Published(pkid), Some(mut m)) => {
                m.stored = stored;
                m.publish.pkid = pkid;
                (pkid, Inflight::Published(m))
            }
            (MessageState::Released(pkid), _) => (pkid, Inflight::Released(pkid, stored)),
            (_, None) => return true,
        };
        if !self.inflight.push_back(pkid, entry) {
            return false;
        }
        self.next_pkid = self.next_pkid.max(pkid);
        true
    }

    /// Puts back an incoming QoS 2 id read from the store.
    pub fn restore_qos2(&mut self, pkid: u16) {
        self.incoming_qos2.insert(pkid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_survive_the_trip_through_unix_time() {
        let at = Instant::now() + Duration::from_secs(30);
        let back = unix_ms_to_instant(instant_to_unix_ms(at));
        let diff = if back > at { back - at } else { at - back };
        assert!(diff < Duration::from_millis(50), "{diff:?}");
    }

    #[test]
    fn delayed_wills_round_trip_and_damage_is_an_error() {
        use crate::broker::codec::{Properties, Property};
        let mut properties = Properties::new();
        properties.push(Property::WillDelayInterval(3));
        properties.push(Property::ContentType("text/plain".into()));
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let will = LastWill {
                topic: "status/x".into(),
                payload: bytes::Bytes::from_static(b"gone"),
                qos,
                retain: true,
                properties: properties.clone(),
            };
            let due = Instant::now() + Duration::from_secs(3);
            let record = will_record(&will, due);
            let (back, at) = will_from(&record).unwrap();
            let mut expected = will.clone();
            expected
                .properties
                .remove_where(|p| matches!(p, Property::WillDelayInterval(_)));
            assert_eq!(
                back, expected,
                "all but the delay, which is now the due time"
            );
            let diff = if at > due { at - due } else { due - at };
            assert!(diff < Duration::from_millis(50), "{diff:?}");
            let cut = WillRecord {
                packet: record.packet[..record.packet.len() - 1].to_vec(),
                ..record
            };
            assert!(will_from(&cut).is_err());
        }
    }
}
