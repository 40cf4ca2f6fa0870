//! Round trips for every packet type in both versions, `encoded_len` against `encode`, and the
//! 3.1.1 down-mapping of reason codes. Spec byte fixtures for both directions are in the decode
//! tests.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use super::put_var_int;
use crate::broker::codec::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Property, ProtocolVersion,
    PubResponse, Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, decode, encode, encoded_len,
};
use ProtocolVersion::{V5, V311};

fn bs(s: &'static str) -> ByteString {
    ByteString::from_static(s)
}

fn enc(packet: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, v, &mut out);
    out.to_vec()
}

/// Encodes, checks `encoded_len`, decodes and checks the buffer is used up.
fn round_trip(packet: &Packet, v: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf);
    assert_eq!(
        buf.len(),
        encoded_len(packet, v),
        "encoded_len of {packet:?}"
    );
    let decoded = decode(&mut buf, v, usize::MAX)
        .expect("valid")
        .expect("complete");
    assert!(buf.is_empty());
    decoded
}

/// A few properties of each data type, valid in `list`'s packet.
fn p(list: Vec<Property>) -> Properties {
    Properties(list)
}

fn user() -> Property {
    Property::UserProperty(bs("key"), bs("välue"))
}

fn connect(protocol: ProtocolVersion, properties: bool) -> Packet {
    let with = |list| {
        if properties {
            p(list)
        } else {
            Properties::new()
        }
    };
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: bs("client-1"),
        will: Some(LastWill {
            topic: bs("clients/1/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: with(vec![
                Property::WillDelayInterval(30),
                Property::PayloadFormatIndicator(1),
                Property::ContentType(bs("text/plain")),
                Property::CorrelationData(Bytes::from_static(b"\x00\x01")),
                user(),
            ]),
        }),
        username: Some(bs("user")),
        password: Some(Bytes::from_static(b"secret")),
        properties: with(vec![
            Property::SessionExpiryInterval(3600),
            Property::ReceiveMaximum(100),
            Property::MaximumPacketSize(65_536),
            Property::TopicAliasMaximum(10),
            Property::RequestResponseInformation(1),
            Property::RequestProblemInformation(0),
            Property::AuthenticationMethod(bs("SCRAM-SHA-1")),
            Property::AuthenticationData(Bytes::from_static(b"data")),
            user(),
        ]),
    }))
}

fn publish(qos: QoS, properties: Properties, payload_len: usize) -> Packet {
    Packet::Publish(Publish {
        dup: qos != QoS::AtMostOnce,
        qos,
        retain: true,
        topic: bs("sensors/kitchen/temp"),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 7 },
        payload: Bytes::from(vec![0x5A; payload_len]),
        properties,
    })
}

/// Packets that MQTT 3.1.1 can carry unchanged: no properties, 3.1.1-expressible codes.
fn samples_311() -> Vec<Packet> {
    let empty = Properties::new;
    vec![
        connect(V311, false),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: empty(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0x86,
            properties: empty(),
        }),
        publish(QoS::AtMostOnce, empty(), 64),
        publish(QoS::AtLeastOnce, empty(), 300),
        publish(QoS::ExactlyOnce, empty(), 20_000),
        Packet::PubAck(PubResponse::new(1)),
        Packet::PubRec(PubResponse::new(2)),
        Packet::PubRel(PubResponse::new(3)),
        Packet::PubComp(PubResponse::new(u16::MAX)),
        Packet::Subscribe(Subscribe {
            pkid: 9,
            filters: vec![
                (bs("a/+/c"), SubscriptionOptions::with_qos(QoS::AtMostOnce)),
                (bs("#"), SubscriptionOptions::with_qos(QoS::ExactlyOnce)),
            ],
            properties: empty(),
        }),
        Packet::SubAck(SubAck {
            pkid: 9,
            codes: vec![0, 1, 2, 0x80],
            properties: empty(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 10,
            filters: vec![bs("a/+/c"), bs("#")],
            properties: empty(),
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 10,
            codes: vec![],
            properties: empty(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            reason: 0,
            properties: empty(),
        }),
    ]
}

/// Every 5.0 packet type, with and without properties and reason codes.
fn samples_5() -> Vec<Packet> {
    let reason = || p(vec![Property::ReasonString(bs("because")), user()]);
    let response = |pkid, reason, properties| PubResponse {
        pkid,
        reason,
        properties,
    };
    let mut samples = vec![
        connect(V5, false),
        connect(V5, true),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties: Properties::new(),
        }),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: 0,
            properties: p(vec![
                Property::SessionExpiryInterval(0),
                Property::AssignedClientIdentifier(bs("auto-1")),
                Property::ServerKeepAlive(60),
                Property::ResponseInformation(bs("resp/")),
                Property::ServerReference(bs("other:1883")),
                Property::ReceiveMaximum(20),
                Property::TopicAliasMaximum(5),
                Property::MaximumQoS(1),
                Property::RetainAvailable(0),
                Property::MaximumPacketSize(1 << 20),
                Property::WildcardSubscriptionAvailable(1),
                Property::SubscriptionIdentifierAvailable(1),
                Property::SharedSubscriptionAvailable(0),
                Property::ReasonString(bs("welcome")),
                user(),
            ]),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0x8C,
            properties: reason(),
        }),
        publish(QoS::AtMostOnce, Properties::new(), 0),
        publish(QoS::ExactlyOnce, Properties::new(), 200),
        publish(
            QoS::AtLeastOnce,
            p(vec![
                Property::PayloadFormatIndicator(0),
                Property::MessageExpiryInterval(120),
                Property::TopicAlias(3),
                Property::ResponseTopic(bs("replies/1")),
                Property::CorrelationData(Bytes::from_static(b"corr")),
                Property::SubscriptionIdentifier(268_435_455),
                Property::SubscriptionIdentifier(1),
                Property::ContentType(bs("application/json")),
                user(),
                user(),
            ]),
            64,
        ),
        Packet::Subscribe(Subscribe {
            pkid: 9,
            filters: vec![(
                bs("$share/g/a/#"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
            properties: p(vec![Property::SubscriptionIdentifier(16_384), user()]),
        }),
        Packet::SubAck(SubAck {
            pkid: 9,
            codes: vec![0x02, 0x97],
            properties: reason(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 10,
            filters: vec![bs("x")],
            properties: p(vec![user()]),
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 10,
            codes: vec![0x00, 0x11],
            properties: reason(),
        }),
        Packet::Disconnect(Disconnect {
            reason: 0x8E,
            properties: Properties::new(),
        }),
        Packet::Disconnect(Disconnect {
            reason: 0x9C,
            properties: p(vec![
                Property::SessionExpiryInterval(10),
                Property::ServerReference(bs("b:1883")),
                Property::ReasonString(bs("moved")),
            ]),
        }),
        Packet::Auth(Auth {
            reason: 0,
            properties: Properties::new(),
        }),
        Packet::Auth(Auth {
            reason: 0x18,
            properties: p(vec![
                Property::AuthenticationMethod(bs("SCRAM-SHA-1")),
                Property::AuthenticationData(Bytes::from_static(b"challenge")),
                Property::ReasonString(bs("go on")),
            ]),
        }),
    ];
    for (pkid, code) in [(1u16, 0u8), (2, 0x10), (3, 0x92)] {
        samples.push(Packet::PubAck(response(pkid, code, Properties::new())));
        samples.push(Packet::PubRec(response(pkid, code, reason())));
        samples.push(Packet::PubRel(response(pkid, 0, reason())));
        samples.push(Packet::PubComp(response(pkid, code, Properties::new())));
    }
    // Every 3.1.1 packet is also a 5.0 packet.
    samples.extend(
        samples_311()
            .into_iter()
            .filter(|p| !matches!(p, Packet::Connect(_))),
    );
    samples
}

#[test]
fn round_trip_311() {
    for packet in samples_311() {
        assert_eq!(round_trip(&packet, V311), packet);
    }
}

#[test]
fn round_trip_5() {
    for packet in samples_5() {
        assert_eq!(round_trip(&packet, V5), packet);
    }
}

#[test]
fn encoded_len_matches_encode_for_every_packet_in_both_versions() {
    for packet in samples_311().iter().chain(&samples_5()) {
        for v in [V311, V5] {
            let mut out = BytesMut::from(&b"prefix"[..]);
            encode(packet, v, &mut out);
            assert_eq!(out.len() - 6, encoded_len(packet, v), "{v:?} {packet:?}");
        }
    }
}

#[test]
fn large_remaining_lengths_round_trip() {
    // 3 and 4-byte remaining lengths.
    for len in [16_384, 2_097_152] {
        let packet = publish(QoS::AtLeastOnce, Properties::new(), len);
        assert_eq!(round_trip(&packet, V5), packet);
    }
}

#[test]
fn variable_byte_integer_uses_the_shortest_form() {
    // The spec's table (5.0 §1.5.5).
    let cases: &[(usize, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for &(value, bytes) in cases {
        let mut out = BytesMut::new();
        put_var_int(&mut out, value);
        assert_eq!(&out[..], bytes, "{value}");
        assert_eq!(super::var_int_len(value), bytes.len());
    }
}

#[test]
fn connack_311_maps_reason_codes_to_return_codes() {
    let cases = [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x86, 4),
        (0x87, 5),
        (0x8C, 5),
        (0x80, 3),
        (0x88, 3),
        (0x89, 3),
        (0x95, 3),
    ];
    for (code, return_code) in cases {
        let ack = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: p(vec![]),
        });
        assert_eq!(
            enc(&ack, V311),
            [0x20, 0x02, 0x00, return_code],
            "{code:#04x}"
        );
    }
}

#[test]
fn suback_311_maps_failures_to_0x80() {
    let ack = SubAck {
        pkid: 1,
        codes: vec![0, 1, 2, 0x80, 0x87, 0x8F, 0xA2],
        properties: p(vec![]),
    };
    let bytes = enc(&Packet::SubAck(ack), V311);
    assert_eq!(
        bytes,
        [0x90, 0x09, 0x00, 0x01, 0, 1, 2, 0x80, 0x80, 0x80, 0x80]
    );
}

#[test]
fn unsuback_311_has_no_payload() {
    let ack = UnsubAck {
        pkid: 1,
        codes: vec![0x00, 0x11],
        properties: p(vec![user()]),
    };
    assert_eq!(enc(&Packet::UnsubAck(ack), V311), [0xB0, 0x02, 0x00, 0x01]);
}

#[test]
fn properties_and_reasons_are_dropped_for_311() {
    let packet = publish(QoS::AtMostOnce, p(vec![Property::TopicAlias(1), user()]), 1);
    let bytes = enc(&packet, V311);
    assert_eq!(
        bytes,
        [
            &[0x31, 0x17, 0x00, 0x14][..],
            b"sensors/kitchen/temp",
            &[0x5A]
        ]
        .concat()
    );
    let puback = Packet::PubAck(PubResponse {
        pkid: 5,
        reason: 0x10,
        properties: p(vec![user()]),
    });
    assert_eq!(enc(&puback, V311), [0x40, 0x02, 0x00, 0x05]);
    let disconnect = Packet::Disconnect(Disconnect {
        reason: 0x04,
        properties: p(vec![user()]),
    });
    assert_eq!(enc(&disconnect, V311), [0xE0, 0x00]);
}

#[test]
fn five_uses_the_shortest_forms() {
    let ack = |reason, properties| {
        Packet::PubAck(PubResponse {
            pkid: 5,
            reason,
            properties,
        })
    };
    assert_eq!(enc(&ack(0, p(vec![])), V5), [0x40, 0x02, 0x00, 0x05]);
    assert_eq!(
        enc(&ack(0x10, p(vec![])), V5),
        [0x40, 0x03, 0x00, 0x05, 0x10]
    );
    let with_props = enc(&ack(0, p(vec![Property::ReasonString(bs("r"))])), V5);
    assert_eq!(
        with_props,
        [0x40, 0x08, 0x00, 0x05, 0x00, 0x04, 0x1F, 0x00, 0x01, b'r']
    );
    let disconnect = Packet::Disconnect(Disconnect {
        reason: 0,
        properties: p(vec![]),
    });
    assert_eq!(enc(&disconnect, V5), [0xE0, 0x00]);
    let disconnect = Packet::Disconnect(Disconnect {
        reason: 0x8E,
        properties: p(vec![]),
    });
    assert_eq!(enc(&disconnect, V5), [0xE0, 0x01, 0x8E]);
    let auth = Packet::Auth(Auth {
        reason: 0,
        properties: p(vec![]),
    });
    assert_eq!(enc(&auth, V5), [0xF0, 0x00]);
}

#[test]
fn publish_qos_0_never_sets_dup() {
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: bs("t"),
        pkid: 0,
        payload: Bytes::new(),
        properties: p(vec![]),
    });
    assert_eq!(enc(&packet, V311), [0x30, 0x03, 0x00, 0x01, b't']);
}

#[test]
fn connect_is_written_at_its_own_protocol_level() {
    let packet = connect(V311, false);
    assert_eq!(enc(&packet, V5), enc(&packet, V311));
    assert_eq!(enc(&packet, V5)[8], 4);
    assert_eq!(round_trip(&packet, V5), packet);
}

#[test]
fn encode_appends_to_existing_content() {
    let mut out = BytesMut::from(&[0xC0, 0x00][..]);
    encode(&Packet::PingResp, V5, &mut out);
    assert_eq!(&out[..], [0xC0, 0x00, 0xD0, 0x00]);
}
