//! What the store keeps, as versioned serde records.
//!
//! Every record is a CBOR map (field names included) with a format version `v`. CBOR keeps
//! the names, so a later version can add a field with `#[serde(default)]` and still read old
//! records, and an old binary ignores fields it does not know. A record whose `v` is newer
//! than [`FORMAT`] is refused with a precise error rather than half-read.
//!
//! Messages keep their PUBLISH as MQTT 5 packet bytes: the codec already round-trips every
//! field and property, so the store needs no second description of them.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::broker::codec::{
    Packet, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions, decode, encode,
};

/// The record format this binary writes (and the newest it reads).
pub const FORMAT: u16 = 1;

/// A record that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not CBOR, or not the expected shape.
    #[error("undecodable {kind} record: {detail}")]
    Undecodable {
        /// Which kind of record.
        kind: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// Written by a newer version of the bridge.
    #[error("{kind} record has format version {found}; this binary reads up to {FORMAT}")]
    TooNew {
        /// Which kind of record.
        kind: &'static str,
        /// The version found.
        found: u16,
    },
    /// The stored PUBLISH packet does not decode.
    #[error("stored PUBLISH does not decode: {0}")]
    Packet(String),
}

fn one() -> u16 {
    1
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRecord {
    /// The topic filter (with a `$share/group/` prefix for shared ones).
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
    /// MQTT 5 No Local.
    #[serde(default)]
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    #[serde(default)]
    pub retain_as_published: bool,
    /// MQTT 5 Retain Handling (0, 1, 2).
    #[serde(default)]
    pub retain_handling: u8,
    /// MQTT 5 Subscription Identifier.
    #[serde(default)]
    pub id: Option<u32>,
}

impl SubRecord {
    /// The record of a subscription.
    pub fn new(filter: &str, options: SubscriptionOptions, id: Option<u32>) -> Self {
        SubRecord {
            filter: filter.to_string(),
            qos: options.qos as u8,
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: options.retain_handling as u8,
            id,
        }
    }

    /// The subscription options back.
    pub fn options(&self) -> SubscriptionOptions {
        SubscriptionOptions {
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: match self.retain_handling {
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => RetainHandling::SendAlways,
            },
        }
    }
}

/// A persistent session (key: the client id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Format version.
    #[serde(default = "one")]
    pub v: u16,
    /// MQTT Client Identifier.
    pub client_id: String,
    /// Session Expiry Interval, seconds ([`crate::broker::session::NEVER_EXPIRES`] for never).
    pub expiry: u32,
    /// When the client went away (Unix milliseconds), `None` while it was connected.
    #[serde(default)]
    pub detached_at_ms: Option<u64>,
    /// Subscriptions.
    #[serde(default)]
    pub subscriptions: Vec<SubRecord>,
    /// An MQTT 5 will waiting for its Will Delay Interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will: Option<WillRecord>,
}

/// A will waiting for its delay (inside a [`SessionRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    /// The will as a PUBLISH (topic, payload, QoS, retain, will properties), MQTT 5 encoding.
    #[serde(with = "serde_bytes")]
    pub packet: Vec<u8>,
    /// When it is due, Unix milliseconds (wall clock: it must survive a restart).
    pub due_at_ms: u64,
}

/// Where a stored message stands toward its subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// Waiting for the client or for room in its window.
    Queued,
    /// PUBLISH sent with this packet id, waiting for PUBACK or PUBREC.
    Published(u16),
    /// QoS 2: PUBREC received, PUBREL sent with this packet id, waiting for PUBCOMP.
    Released(u16),
}

/// A message for one persistent session (key: a global sequence number, so the order of
/// arrival is the order of the keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Format version.
    #[serde(default = "one")]
    pub v: u16,
    /// The session's client id.
    pub client_id: String,
    /// State of the delivery.
    pub state: MessageState,
    /// The PUBLISH as the subscriber gets it, MQTT 5 encoding; empty once released.
    #[serde(with = "serde_bytes", default)]
    pub packet: Vec<u8>,
    /// MQTT 5 Message Expiry, Unix milliseconds.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Who published it (client id, user name), kept for in-process sessions only: the
    /// bridge takes the sender's identity from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<(String, Option<String>)>,
    /// The tracking token of an in-process publisher that wants to know how this copy ends
    /// (its [`TrackedRecord`] is under the same token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<u64>,
}

/// A retained message (key: the topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedRecord {
    /// Format version.
    #[serde(default = "one")]
    pub v: u16,
    /// The PUBLISH, MQTT 5 encoding.
    #[serde(with = "serde_bytes")]
    pub packet: Vec<u8>,
    /// MQTT 5 Message Expiry, Unix milliseconds.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// A tracked publish of an in-process client with at least one copy in the store (key: the
/// token, big-endian u64). Kept until every copy is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedRecord {
    /// Format version.
    #[serde(default = "one")]
    pub v: u16,
    /// What the publisher asked to keep with the token (for the bridge: an
    /// [`AwaitingRecord`]).
    #[serde(with = "serde_bytes")]
    pub note: Vec<u8>,
    /// A subscriber has acknowledged a copy already.
    #[serde(default)]
    pub acked: bool,
}

/// The bridge's note on a tracked publish: the XEP-0184 receipt it owes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwaitingRecord {
    /// Format version.
    #[serde(default = "one")]
    pub v: u16,
    /// The XMPP sender (full JID).
    pub sender: String,
    /// The bridged recipient.
    pub recipient: String,
    /// The message id.
    pub id: String,
    /// The mapping rule.
    pub rule: String,
    /// The MQTT topic.
    pub topic: String,
    /// The QoS it was published with.
    pub qos: u8,
    /// The XMPP message type.
    pub kind: String,
}

/// Where the XMPP receipt for an MQTT publisher's message goes (key: a sequence number, so
/// key order is the order they were made in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRecord {
    /// Format version.
    #[serde(default = "one")]
    pub v: u16,
    /// The bridged JID the message was sent from (the receipt comes to it).
    pub from: String,
    /// The message id.
    pub id: String,
    /// The publisher's Response Topic.
    pub topic: String,
    /// Its Correlation Data.
    #[serde(default, with = "serde_bytes")]
    pub correlation: Option<Vec<u8>>,
}

/// Records carry their format version.
pub trait Versioned: Serialize + DeserializeOwned {
    /// Name in error messages.
    const KIND: &'static str;
    /// The record's `v`.
    fn version(&self) -> u16;
}

macro_rules! versioned {
    ($t:ty, $kind:literal) => {
        impl Versioned for $t {
            const KIND: &'static str = $kind;
            fn version(&self) -> u16 {
                self.v
            }
        }
    };
}
versioned!(SessionRecord, "session");
versioned!(MessageRecord, "message");
versioned!(RetainedRecord, "retained");
versioned!(TrackedRecord, "tracked");
versioned!(AwaitingRecord, "awaiting");
versioned!(ReplyRecord, "reply");

/// Encodes a record.
pub fn to_bytes<T: Versioned>(record: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    // Writing into a Vec cannot fail, and every record type serializes.
    if let Err(error) = ciborium::into_writer(record, &mut out) {
        tracing::error!(%error, kind = T::KIND, "Record did not encode.");
    }
    out
}

/// Decodes a record, refusing one from a newer format.
pub fn from_bytes<T: Versioned>(bytes: &[u8]) -> Result<T, RecordError> {
    let record: T = ciborium::from_reader(bytes).map_err(|e| RecordError::Undecodable {
        kind: T::KIND,
        detail: e.to_string(),
    })?;
    if record.version() > FORMAT {
        return Err(RecordError::TooNew {
            kind: T::KIND,
            found: record.version(),
        });
    }
    Ok(record)
}

/// A PUBLISH as stored bytes (MQTT 5, so that properties are kept). A QoS 1/2 message
/// without a packet id yet (queued, or published by an in-process client) is stored with id 1
/// so that it decodes [MQTT-2.2.1-3]; the id it is sent with is given when it is sent.
pub fn publish_bytes(publish: &Publish) -> Vec<u8> {
    let mut publish = publish.clone();
    if publish.qos != QoS::AtMostOnce && publish.pkid == 0 {
        publish.pkid = 1;
    }
    let packet = Packet::Publish(publish);
    let mut out = BytesMut::new();
    encode(&packet, ProtocolVersion::V5, &mut out);
    out.to_vec()
}

/// The PUBLISH back from stored bytes.
pub fn publish_from(bytes: &[u8]) -> Result<Publish, RecordError> {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => Ok(p),
        Ok(Some(other)) => Err(RecordError::Packet(format!("a {} packet", other.name()))),
        Ok(None) => Err(RecordError::Packet("truncated".to_string())),
        Err(e) => Err(RecordError::Packet(e.to_string())),
    }
}

/// Now, as Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::{Properties, Property};
    use bytes::Bytes;
    use bytestring::ByteString;

    fn publish() -> Publish {
        let mut properties = Properties::new();
        properties.push(Property::MessageExpiryInterval(60));
        properties.push(Property::ContentType("text/plain".into()));
        Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: ByteString::from_static("a/b"),
            pkid: 7,
            payload: Bytes::from_static(b"\x00\xffhello"),
            properties,
        }
    }

    #[test]
    fn publish_round_trips_with_properties() {
        let p = publish();
        assert_eq!(publish_from(&publish_bytes(&p)).unwrap(), p);
    }

    /// A queued copy of an in-process client's message has no packet id yet; it must still
    /// read back (it was dropped as undecodable after a restart before this was fixed).
    #[test]
    fn publish_without_a_packet_id_yet_reads_back() {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let p = Publish {
                pkid: 0,
                qos,
                ..publish()
            };
            let back = publish_from(&publish_bytes(&p)).unwrap();
            assert_eq!((back.payload, back.qos, back.pkid), (p.payload, qos, 1));
        }
    }

    #[test]
    fn truncated_publish_is_an_error() {
        let bytes = publish_bytes(&publish());
        let err = publish_from(&bytes[..bytes.len() - 2]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn message_record_round_trips() {
        let r = MessageRecord {
            v: FORMAT,
            client_id: "c1".into(),
            state: MessageState::Published(9),
            packet: publish_bytes(&publish()),
            expires_at_ms: Some(42),
            origin: None,
            track: Some(77),
        };
        let back: MessageRecord = from_bytes(&to_bytes(&r)).unwrap();
        assert_eq!(back, r);
        // The publisher kept for an in-process session's message.
        let r = MessageRecord {
            origin: Some(("alice-phone".into(), Some("alice".into()))),
            ..r
        };
        let back: MessageRecord = from_bytes(&to_bytes(&r)).unwrap();
        assert_eq!(back, r);
    }

    /// A later version with one more field: old records still read (`#[serde(default)]`),
    /// and this binary reads records with the extra field.
    #[test]
    fn fields_can_be_added_later() {
        #[derive(Serialize, Deserialize)]
        struct SessionV2 {
            v: u16,
            client_id: String,
            expiry: u32,
            #[serde(default)]
            priority: u8,
        }
        let old = SessionRecord {
            v: 1,
            client_id: "c".into(),
            expiry: 10,
            detached_at_ms: None,
            subscriptions: vec![],
            will: None,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).unwrap();
        let newer: SessionV2 = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!((newer.priority, newer.expiry), (0, 10));
        let mut bytes = Vec::new();
        let v2 = SessionV2 {
            v: 1,
            client_id: "c".into(),
            expiry: 5,
            priority: 3,
        };
        ciborium::into_writer(&v2, &mut bytes).unwrap();
        let back: SessionRecord = from_bytes(&bytes).unwrap();
        assert_eq!(back.expiry, 5);
        assert!(back.subscriptions.is_empty());
    }

    #[test]
    fn newer_format_is_refused() {
        let r = TrackedRecord {
            v: FORMAT + 1,
            note: vec![1],
            acked: false,
        };
        let err = from_bytes::<TrackedRecord>(&to_bytes(&r)).unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::TooNew {
                    kind: "tracked",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_undecodable() {
        let err = from_bytes::<SessionRecord>(b"\xff\x00garbage").unwrap_err();
        assert!(
            matches!(
                err,
                RecordError::Undecodable {
                    kind: "session",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn subscription_options_round_trip() {
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        let r = SubRecord::new("$share/g/a/#", options, Some(3));
        assert_eq!(r.options(), options);
    }

    /// Every record added for receipts and delayed wills round-trips, and damaged bytes
    /// (truncated at every length, or flipped) give an error, never a panic.
    #[test]
    fn receipt_and_will_records_round_trip_and_damage_is_an_error() {
        fn check<T: Versioned + PartialEq + std::fmt::Debug>(r: &T) {
            let bytes = to_bytes(r);
            assert_eq!(&from_bytes::<T>(&bytes).unwrap(), r);
            for cut in 0..bytes.len() {
                assert!(from_bytes::<T>(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0xff;
                let _either = from_bytes::<T>(&bad); // no panic
            }
        }
        check(&TrackedRecord {
            v: FORMAT,
            note: vec![0, 1, 2, 0xff],
            acked: true,
        });
        check(&AwaitingRecord {
            v: FORMAT,
            sender: "alice@x/pc".into(),
            recipient: "bob@m".into(),
            id: "m1".into(),
            rule: "inbox".into(),
            topic: "users/bob/inbox".into(),
            qos: 2,
            kind: "chat".into(),
        });
        check(&ReplyRecord {
            v: FORMAT,
            from: "bob@m".into(),
            id: "m1".into(),
            topic: "me/replies".into(),
            correlation: Some(vec![9, 0, 9]),
        });
        check(&ReplyRecord {
            v: FORMAT,
            from: "bob@m".into(),
            id: "m2".into(),
            topic: "t".into(),
            correlation: None,
        });
        check(&SessionRecord {
            v: FORMAT,
            client_id: "c".into(),
            expiry: 60,
            detached_at_ms: Some(1),
            subscriptions: vec![],
            will: Some(WillRecord {
                packet: publish_bytes(&publish()),
                due_at_ms: 1_700_000_000_000,
            }),
        });
        let wrong = from_bytes::<AwaitingRecord>(&to_bytes(&TrackedRecord {
            v: FORMAT,
            note: vec![],
            acked: false,
        }));
        assert!(
            matches!(
                wrong,
                Err(RecordError::Undecodable {
                    kind: "awaiting",
                    ..
                })
            ),
            "{wrong:?}"
        );
    }

    /// A message record written before `track` existed still reads (no token).
    #[test]
    fn old_message_records_read_without_a_token() {
        #[derive(Serialize)]
        struct Old {
            v: u16,
            client_id: String,
            state: MessageState,
        }
        let mut bytes = Vec::new();
        let old = Old {
            v: 1,
            client_id: "c".into(),
            state: MessageState::Queued,
        };
        ciborium::into_writer(&old, &mut bytes).unwrap();
        let back: MessageRecord = from_bytes(&bytes).unwrap();
        assert_eq!(back.track, None);
    }
}
