//! Byte-literal fixtures written from the spec's packet layouts, checked in both directions.
//! The error rules are in `tests/errors.rs`; incomplete input, several packets in one buffer and
//! the deterministic no-panic run in `tests/stream.rs`.

mod errors;
mod stream;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::{Reader, decode};
use crate::broker::codec::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet, Properties, Property,
    ProtocolVersion, PubResponse, Publish, QoS, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, encode, encoded_len,
};
use ProtocolVersion::{V5, V311};

const MAX: usize = 1 << 20;

fn bs(s: &'static str) -> ByteString {
    ByteString::from_static(s)
}

fn props(list: Vec<Property>) -> Properties {
    Properties(list)
}

fn user(k: &'static str, v: &'static str) -> Property {
    Property::UserProperty(bs(k), bs(v))
}

/// Decodes one complete packet and checks that it used every byte.
fn decode_all(bytes: &[u8], v: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, v, MAX)?.expect("complete packet");
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    Ok(packet)
}

/// The fixture both ways: these bytes decode to this packet, which encodes to these bytes.
fn check(bytes: &[u8], v: ProtocolVersion, packet: Packet) {
    assert_eq!(
        decode_all(bytes, v),
        Ok(packet.clone()),
        "decoding {bytes:02X?}"
    );
    let mut out = BytesMut::new();
    encode(&packet, v, &mut out);
    assert_eq!(&out[..], bytes, "encoding {packet:?}");
    assert_eq!(encoded_len(&packet, v), bytes.len());
}

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 10,
        client_id: bs("cid"),
        will: None,
        username: Some(bs("u")),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties::new(),
    }
}

fn publish(qos: QoS, topic: &'static str, pkid: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: bs(topic),
        pkid,
        payload: Bytes::from_static(payload),
        properties: Properties::new(),
    }
}

fn pub_response(pkid: u16, reason: u8, properties: Vec<Property>) -> PubResponse {
    PubResponse {
        pkid,
        reason,
        properties: props(properties),
    }
}

/// Every valid packet of this file, with its version: the corpus for prefix and no-panic tests.
fn fixtures() -> Vec<(ProtocolVersion, Vec<u8>)> {
    let list: &[(ProtocolVersion, &[u8])] = &[
        (V311, CONNECT_311),
        (V311, CONNECT_311_WILL),
        (V5, CONNECT_5),
        (V5, CONNECT_5_WILL),
        (V311, &[0x20, 0x02, 0x01, 0x00]),
        (V5, CONNACK_5),
        (
            V311,
            &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'],
        ),
        (
            V311,
            &[
                0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
            ],
        ),
        (V5, PUBLISH_5),
        (V5, &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07]),
        (V311, &[0x62, 0x02, 0x00, 0x0A]),
        (
            V5,
            &[
                0x50, 0x0A, 0x00, 0x0A, 0x80, 0x06, 0x1F, 0x00, 0x03, b'b', b'a', b'd',
            ],
        ),
        (V311, SUBSCRIBE_311),
        (V5, SUBSCRIBE_5),
        (
            V5,
            &[
                0x90, 0x09, 0x00, 0x0A, 0x04, 0x1F, 0x00, 0x01, b'x', 0x00, 0x80,
            ],
        ),
        (
            V311,
            &[
                0xA2, 0x0C, 0x00, 0x0B, 0, 3, b'a', b'/', b'b', 0, 3, b'c', b'/', b'd',
            ],
        ),
        (V5, &[0xB0, 0x05, 0x00, 0x0B, 0x00, 0x00, 0x11]),
        (V311, &[0xC0, 0x00]),
        (V5, &[0xE0, 0x06, 0x8B, 0x04, 0x1F, 0x00, 0x01, b'x']),
        (V5, AUTH_5),
    ];
    list.iter().map(|(v, b)| (*v, b.to_vec())).collect()
}

/// 3.1.1 CONNECT: user name, password, Clean Session, keep alive 10, client id "cid".
const CONNECT_311: &[u8] = &[
    0x10, 0x15, // CONNECT, remaining length 21
    0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol name, level 4
    0xC2, 0x00, 0x0A, // flags: user name, password, clean session; keep alive 10
    0x00, 0x03, b'c', b'i', b'd', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
];

#[test]
fn connect_311() {
    check(CONNECT_311, V311, Packet::Connect(Box::new(connect(V311))));
}

/// 3.1.1 CONNECT with a QoS 1 retained will, empty client id, keep alive 60.
const CONNECT_311_WILL: &[u8] = &[
    0x10, 0x16, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, //
    0x2E, 0x00, 0x3C, // flags: will retain, will QoS 1, will, clean session
    0x00, 0x00, // client id ""
    0x00, 0x03, b'w', b'/', b't', 0x00, 0x03, b'b', b'y', b'e',
];

#[test]
fn connect_311_with_will() {
    let c = Connect {
        keep_alive: 60,
        client_id: bs(""),
        will: Some(LastWill {
            topic: bs("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::new(),
        }),
        username: None,
        password: None,
        ..connect(V311)
    };
    check(CONNECT_311_WILL, V311, Packet::Connect(Box::new(c)));
}

/// 5.0 CONNECT: as `CONNECT_311` at level 5 with Session Expiry Interval 10.
const CONNECT_5: &[u8] = &[
    0x10, 0x1B, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xC2, 0x00, 0x0A, //
    0x05, 0x11, 0x00, 0x00, 0x00, 0x0A, // properties: session expiry 10
    0x00, 0x03, b'c', b'i', b'd', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
];

#[test]
fn connect_5() {
    let c = Connect {
        properties: props(vec![Property::SessionExpiryInterval(10)]),
        ..connect(V5)
    };
    check(CONNECT_5, V5, Packet::Connect(Box::new(c)));
    // CONNECT follows its own level, whatever the connection's version says.
    assert!(matches!(decode_all(CONNECT_5, V311), Ok(Packet::Connect(c)) if c.protocol == V5));
}

/// 5.0 CONNECT: QoS 2 retained will with properties, password without user name.
const CONNECT_5_WILL: &[u8] = &[
    0x10, 0x24, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, //
    0x74, 0x00, 0x00, // flags: password, will retain, will QoS 2, will; keep alive 0
    0x00, // no properties
    0x00, 0x01, b'a', // client id
    0x0C, 0x18, 0x00, 0x00, 0x00, 0x05, // will properties: will delay 5,
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
    0x00, 0x01, b't', 0x00, 0x00, // will topic "t", empty will payload
    0x00, 0x02, b'p', b'w', // password
];

#[test]
fn connect_5_with_will_and_password_only() {
    let c = Connect {
        protocol: V5,
        clean_start: false,
        keep_alive: 0,
        client_id: bs("a"),
        will: Some(LastWill {
            topic: bs("t"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: props(vec![Property::WillDelayInterval(5), user("k", "v")]),
        }),
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties::new(),
    };
    check(CONNECT_5_WILL, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connack_311() {
    let ack = |session_present, code| {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
            properties: Properties::new(),
        })
    };
    check(&[0x20, 0x02, 0x01, 0x00], V311, ack(true, 0x00));
    check(&[0x20, 0x02, 0x00, 0x01], V311, ack(false, 0x84));
    check(&[0x20, 0x02, 0x00, 0x02], V311, ack(false, 0x85));
    check(&[0x20, 0x02, 0x00, 0x03], V311, ack(false, 0x88));
    check(&[0x20, 0x02, 0x00, 0x04], V311, ack(false, 0x86));
    check(&[0x20, 0x02, 0x00, 0x05], V311, ack(false, 0x87));
}

/// 5.0 CONNACK: Receive Maximum 10, Maximum QoS 1, Assigned Client Identifier "id".
const CONNACK_5: &[u8] = &[
    0x20, 0x0D, 0x00, 0x00, 0x0A, 0x21, 0x00, 0x0A, 0x24, 0x01, 0x12, 0x00, 0x02, b'i', b'd',
];

#[test]
fn connack_5() {
    let properties = props(vec![
        Property::ReceiveMaximum(10),
        Property::MaximumQoS(1),
        Property::AssignedClientIdentifier(bs("id")),
    ]);
    check(
        CONNACK_5,
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties,
        }),
    );
    let refused = ConnAck {
        session_present: false,
        code: 0x87,
        properties: Properties::new(),
    };
    check(
        &[0x20, 0x03, 0x00, 0x87, 0x00],
        V5,
        Packet::ConnAck(refused),
    );
}

#[test]
fn publish_311() {
    let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    check(
        &bytes,
        V311,
        Packet::Publish(publish(QoS::AtMostOnce, "a/b", 0, b"hi")),
    );
    let bytes = [
        0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
    ];
    let p = Publish {
        dup: true,
        retain: true,
        ..publish(QoS::AtLeastOnce, "a/b", 10, b"hi")
    };
    check(&bytes, V311, Packet::Publish(p));
    let bytes = [0x34, 0x05, 0x00, 0x01, b't', 0x12, 0x34];
    check(
        &bytes,
        V311,
        Packet::Publish(publish(QoS::ExactlyOnce, "t", 0x1234, b"")),
    );
}

#[test]
fn publish_two_byte_remaining_length() {
    // 203 = 0x4B + 1 * 128: remaining length bytes 0xCB 0x01.
    let mut bytes = vec![0x30, 0xCB, 0x01, 0x00, 0x01, b't'];
    bytes.extend_from_slice(&[0xAB; 200]);
    let p = Publish {
        payload: Bytes::from(vec![0xAB; 200]),
        ..publish(QoS::AtMostOnce, "t", 0, b"")
    };
    check(&bytes, V311, Packet::Publish(p));
}

/// 5.0 PUBLISH QoS 1 with one of each PUBLISH property, two subscription identifiers.
const PUBLISH_5: &[u8] = &[
    0x32, 0x30, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, // topic, packet id 1
    0x26, // property length 38
    0x01, 0x01, // payload format indicator 1
    0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry 60
    0x23, 0x00, 0x05, // topic alias 5
    0x03, 0x00, 0x04, b't', b'e', b'x', b't', // content type
    0x09, 0x00, 0x02, 0xAB, 0xCD, // correlation data
    0x08, 0x00, 0x01, b'r', // response topic
    0x0B, 0x81, 0x01, // subscription identifier 129
    0x0B, 0x02, // subscription identifier 2
    0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property
    b'h', b'i',
];

#[test]
fn publish_5() {
    let bytes = [0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i'];
    check(
        &bytes,
        V5,
        Packet::Publish(publish(QoS::AtMostOnce, "a/b", 0, b"hi")),
    );
    let p = Publish {
        properties: props(vec![
            Property::PayloadFormatIndicator(1),
            Property::MessageExpiryInterval(60),
            Property::TopicAlias(5),
            Property::ContentType(bs("text")),
            Property::CorrelationData(Bytes::from_static(&[0xAB, 0xCD])),
            Property::ResponseTopic(bs("r")),
            Property::SubscriptionIdentifier(129),
            Property::SubscriptionIdentifier(2),
            user("k", "v"),
        ]),
        ..publish(QoS::AtLeastOnce, "a/b", 1, b"hi")
    };
    check(PUBLISH_5, V5, Packet::Publish(p));
}

#[test]
fn publish_5_empty_topic_with_alias() {
    let p = Publish {
        properties: props(vec![Property::TopicAlias(7)]),
        ..publish(QoS::AtMostOnce, "", 0, b"")
    };
    check(
        &[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07],
        V5,
        Packet::Publish(p),
    );
}

#[test]
fn pub_responses_311() {
    let r = || PubResponse::new(10);
    check(&[0x40, 0x02, 0x00, 0x0A], V311, Packet::PubAck(r()));
    check(&[0x50, 0x02, 0x00, 0x0A], V311, Packet::PubRec(r()));
    check(&[0x62, 0x02, 0x00, 0x0A], V311, Packet::PubRel(r()));
    check(&[0x70, 0x02, 0x00, 0x0A], V311, Packet::PubComp(r()));
}

#[test]
fn pub_responses_5() {
    check(
        &[0x40, 0x02, 0x00, 0x0A],
        V5,
        Packet::PubAck(PubResponse::new(10)),
    );
    check(
        &[0x40, 0x03, 0x00, 0x0A, 0x10],
        V5,
        Packet::PubAck(pub_response(10, 0x10, vec![])),
    );
    let bytes = [
        0x50, 0x0A, 0x00, 0x0A, 0x80, 0x06, 0x1F, 0x00, 0x03, b'b', b'a', b'd',
    ];
    let rec = pub_response(10, 0x80, vec![Property::ReasonString(bs("bad"))]);
    check(&bytes, V5, Packet::PubRec(rec));
    check(
        &[0x62, 0x03, 0x00, 0x0A, 0x92],
        V5,
        Packet::PubRel(pub_response(10, 0x92, vec![])),
    );
    let bytes = [
        0x70, 0x0B, 0x00, 0x0A, 0x00, 0x07, 0x26, 0, 1, b'k', 0, 1, b'v',
    ];
    check(
        &bytes,
        V5,
        Packet::PubComp(pub_response(10, 0, vec![user("k", "v")])),
    );
}

#[test]
fn pub_response_5_longer_forms_decode() {
    // Reason code and an empty property block spelt out: same packet as the 2-byte form.
    let bytes = [0x40, 0x04, 0x00, 0x0A, 0x00, 0x00];
    assert_eq!(
        decode_all(&bytes, V5),
        Ok(Packet::PubAck(PubResponse::new(10)))
    );
}

const SUBSCRIBE_311: &[u8] = &[
    0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'#', 0x02,
];

#[test]
fn subscribe_311() {
    let s = Subscribe {
        pkid: 10,
        filters: vec![
            (bs("a/b"), SubscriptionOptions::with_qos(QoS::AtLeastOnce)),
            (bs("c/#"), SubscriptionOptions::with_qos(QoS::ExactlyOnce)),
        ],
        properties: Properties::new(),
    };
    check(SUBSCRIBE_311, V311, Packet::Subscribe(s));
}

/// 5.0 SUBSCRIBE: subscription identifier 5, a user property, two filters with all options.
const SUBSCRIBE_5: &[u8] = &[
    0x82, 0x16, 0x00, 0x0A, //
    0x09, 0x0B, 0x05, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', //
    0x00, 0x03, b'a', b'/', b'+', 0x2D, // QoS 1, no local, retain as published, handling 2
    0x00, 0x01, b'#', 0x10, // QoS 0, retain handling 1
];

#[test]
fn subscribe_5() {
    let s = Subscribe {
        pkid: 10,
        filters: vec![
            (
                bs("a/+"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            ),
            (
                bs("#"),
                SubscriptionOptions {
                    retain_handling: RetainHandling::SendIfNew,
                    ..SubscriptionOptions::with_qos(QoS::AtMostOnce)
                },
            ),
        ],
        properties: props(vec![Property::SubscriptionIdentifier(5), user("k", "v")]),
    };
    check(SUBSCRIBE_5, V5, Packet::Subscribe(s));
}

#[test]
fn suback() {
    let ack = |codes: &[u8], properties| {
        Packet::SubAck(SubAck {
            pkid: 10,
            codes: codes.to_vec(),
            properties,
        })
    };
    check(
        &[0x90, 0x05, 0x00, 0x0A, 0x00, 0x02, 0x80],
        V311,
        ack(&[0, 2, 0x80], props(vec![])),
    );
    let bytes = [0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x87, 0x8F];
    check(&bytes, V5, ack(&[0x01, 0x87, 0x8F], props(vec![])));
    let bytes = [
        0x90, 0x09, 0x00, 0x0A, 0x04, 0x1F, 0x00, 0x01, b'x', 0x00, 0x80,
    ];
    check(
        &bytes,
        V5,
        ack(&[0x00, 0x80], props(vec![Property::ReasonString(bs("x"))])),
    );
}

#[test]
fn unsubscribe() {
    let bytes = [
        0xA2, 0x0C, 0x00, 0x0B, 0, 3, b'a', b'/', b'b', 0, 3, b'c', b'/', b'd',
    ];
    let u = Unsubscribe {
        pkid: 11,
        filters: vec![bs("a/b"), bs("c/d")],
        properties: props(vec![]),
    };
    check(&bytes, V311, Packet::Unsubscribe(u));
    let bytes = [0xA2, 0x08, 0x00, 0x0B, 0x00, 0x00, 0x03, b'a', b'/', b'b'];
    let u = Unsubscribe {
        pkid: 11,
        filters: vec![bs("a/b")],
        properties: props(vec![]),
    };
    check(&bytes, V5, Packet::Unsubscribe(u));
}

#[test]
fn unsuback() {
    let ack = |codes: Vec<u8>| UnsubAck {
        pkid: 11,
        codes,
        properties: Properties::new(),
    };
    check(
        &[0xB0, 0x02, 0x00, 0x0B],
        V311,
        Packet::UnsubAck(ack(vec![])),
    );
    check(
        &[0xB0, 0x05, 0x00, 0x0B, 0x00, 0x00, 0x11],
        V5,
        Packet::UnsubAck(ack(vec![0, 0x11])),
    );
}

#[test]
fn ping() {
    for v in [V311, V5] {
        check(&[0xC0, 0x00], v, Packet::PingReq);
        check(&[0xD0, 0x00], v, Packet::PingResp);
    }
}

#[test]
fn disconnect() {
    let d = |reason, properties| Packet::Disconnect(Disconnect { reason, properties });
    check(&[0xE0, 0x00], V311, d(0, props(vec![])));
    check(&[0xE0, 0x00], V5, d(0, props(vec![])));
    check(&[0xE0, 0x01, 0x04], V5, d(0x04, props(vec![])));
    let bytes = [0xE0, 0x06, 0x8B, 0x04, 0x1F, 0x00, 0x01, b'x'];
    check(
        &bytes,
        V5,
        d(0x8B, props(vec![Property::ReasonString(bs("x"))])),
    );
    assert_eq!(
        decode_all(&[0xE0, 0x02, 0x00, 0x00], V5),
        Ok(d(0, props(vec![])))
    );
}

/// 5.0 AUTH: Continue authentication, method "SCRM", data 01 02.
const AUTH_5: &[u8] = &[
    0xF0, 0x0E, 0x18, 0x0C, 0x15, 0x00, 0x04, b'S', b'C', b'R', b'M', 0x16, 0x00, 0x02, 0x01, 0x02,
];

#[test]
fn auth() {
    check(
        &[0xF0, 0x00],
        V5,
        Packet::Auth(Auth {
            reason: 0,
            properties: props(vec![]),
        }),
    );
    let properties = props(vec![
        Property::AuthenticationMethod(bs("SCRM")),
        Property::AuthenticationData(Bytes::from_static(&[1, 2])),
    ]);
    check(
        AUTH_5,
        V5,
        Packet::Auth(Auth {
            reason: 0x18,
            properties,
        }),
    );
}

#[test]
fn strings_and_payload_are_slices_of_the_read_buffer() {
    let mut buf = BytesMut::from(PUBLISH_5);
    let start = buf.as_ptr() as usize;
    let range = start..start + PUBLISH_5.len();
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V5, MAX) else {
        panic!("not a PUBLISH")
    };
    assert!(range.contains(&(p.topic.as_ptr() as usize)));
    assert!(range.contains(&(p.payload.as_ptr() as usize)));
}

#[test]
fn variable_byte_integer_boundaries() {
    // The spec's table (5.0 §1.5.5): smallest and largest value of each length.
    let cases: &[(&[u8], u32)] = &[
        (&[0x00], 0),
        (&[0x7F], 127),
        (&[0x80, 0x01], 128),
        (&[0xFF, 0x7F], 16_383),
        (&[0x80, 0x80, 0x01], 16_384),
        (&[0xFF, 0xFF, 0x7F], 2_097_151),
        (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
        (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
    ];
    for &(bytes, value) in cases {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes), "test");
        assert_eq!(r.var_int("test"), Ok(value));
        assert!(r.is_empty());
    }
}
