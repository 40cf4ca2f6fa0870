//! One test per decoding rule: the exact error variant and its MQTT 5 reason code.

use bytes::BytesMut;

use super::{CONNECT_5, CONNECT_311, MAX, V5, V311, decode, decode_all};
use crate::broker::codec::{DecodeError, Packet, ProtocolVersion};
use DecodeError::*;

/// Fixed header with a one-byte remaining length, then `body`.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128, "test frames stay short");
    [&[first, body.len() as u8][..], body].concat()
}

/// A UTF-8 string or binary field: two-byte length, then the bytes.
fn s(bytes: &[u8]) -> Vec<u8> {
    [&(bytes.len() as u16).to_be_bytes()[..], bytes].concat()
}

/// A property block: one-byte property length, then the properties.
fn props(body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    [&[body.len() as u8][..], body].concat()
}

/// A CONNECT with this protocol level, flags and the rest of the packet after keep alive.
fn connect(level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &[&s(b"MQTT")[..], &[level, flags, 0x00, 0x3C], rest].concat(),
    )
}

/// A 5.0 PUBLISH QoS 0 on topic "t" with these properties and payload "x".
fn publish_5(properties: &[u8]) -> Vec<u8> {
    frame(0x30, &[&s(b"t")[..], &props(properties), b"x"].concat())
}

fn assert_err(bytes: &[u8], v: ProtocolVersion, expected: DecodeError, reason: u8) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(
        decode(&mut buf, v, MAX),
        Err(expected.clone()),
        "bytes {bytes:02X?}"
    );
    assert_eq!(expected.reason_code(), reason, "{expected}");
}

fn assert_both(bytes: &[u8], expected: DecodeError, reason: u8) {
    assert_err(bytes, V311, expected.clone(), reason);
    assert_err(bytes, V5, expected, reason);
}

// ---- Fixed header ----

#[test]
fn packet_type_0_is_malformed_from_the_first_byte() {
    assert_both(&[0x00], ReservedPacketType(0), 0x81);
}

#[test]
fn auth_is_malformed_in_311_only() {
    assert_err(&[0xF0, 0x00], V311, ReservedPacketType(15), 0x81);
    assert!(matches!(decode_all(&[0xF0, 0x00], V5), Ok(Packet::Auth(_))));
}

#[test]
fn reserved_flags_must_match_the_table() {
    for packet_type in [1u8, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        let required = if matches!(packet_type, 6 | 8 | 10) {
            0b0010
        } else {
            0
        };
        for flags in (0..16).filter(|&f| f != required) {
            let first = packet_type << 4 | flags;
            let expected = InvalidFlags { packet_type, flags };
            assert_err(&[first], V5, expected.clone(), 0x81);
            if packet_type != 15 {
                assert_err(&[first], V311, expected, 0x81);
            }
        }
    }
}

#[test]
fn publish_qos_3_is_malformed() {
    assert_both(&[0x36, 0x00], PublishQoS3, 0x81);
}

#[test]
fn publish_dup_with_qos_0_is_malformed() {
    assert_both(&[0x38, 0x00], DupWithQoS0, 0x81);
}

#[test]
fn remaining_length_over_4_bytes_is_malformed_without_waiting() {
    let expected = VarIntTooLong {
        field: "remaining length",
    };
    assert_both(&[0x30, 0xFF, 0xFF, 0xFF, 0x80], expected.clone(), 0x81);
    assert_both(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], expected, 0x81);
}

#[test]
fn oversized_packet_fails_as_soon_as_the_header_is_read() {
    // 0xC0 0x0C announces 0x0C * 128 + 0x40 = 1600 bytes; only the header is here.
    let mut buf = BytesMut::from(&[0x30, 0xC0, 0x0C][..]);
    let expected = PacketTooLarge {
        size: 1603,
        max: 1024,
    };
    assert_eq!(decode(&mut buf, V5, 1024), Err(expected.clone()));
    assert_eq!(expected.reason_code(), 0x95);
    let mut buf = BytesMut::from(CONNECT_311);
    let size = CONNECT_311.len();
    assert_eq!(
        decode(&mut buf, V311, size - 1),
        Err(PacketTooLarge {
            size,
            max: size - 1
        })
    );
}

#[test]
fn body_ending_early_is_malformed() {
    // CONNECT whose remaining length stops inside the client id.
    let mut bytes = CONNECT_311[..16].to_vec();
    bytes[1] = 14;
    assert_both(&bytes, Truncated { packet: "CONNECT" }, 0x81);
    // SUBSCRIBE whose filter has no options byte.
    let bytes = frame(0x82, &[&[0x00, 0x01][..], &s(b"a")].concat());
    assert_err(
        &bytes,
        V311,
        Truncated {
            packet: "SUBSCRIBE",
        },
        0x81,
    );
    // Property length past the end of the packet.
    let bytes = frame(0xE0, &[0x00, 0x05, 0x1F]);
    assert_err(
        &bytes,
        V5,
        Truncated {
            packet: "DISCONNECT",
        },
        0x81,
    );
    // A property running past its property length.
    let bytes = frame(
        0x30,
        &[&s(b"t")[..], &[0x02, 0x02, 0x00, 0x00, 0x00, 0x00]].concat(),
    );
    assert_err(&bytes, V5, Truncated { packet: "PUBLISH" }, 0x81);
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut bytes = CONNECT_311.to_vec();
    bytes.push(0xFF);
    bytes[1] += 1;
    assert_both(
        &bytes,
        TrailingBytes {
            packet: "CONNECT",
            extra: 1,
        },
        0x81,
    );
    let bytes = frame(0x20, &[0x00, 0x00, 0x00, 0xFF, 0xFF]);
    assert_err(
        &bytes,
        V5,
        TrailingBytes {
            packet: "CONNACK",
            extra: 2,
        },
        0x81,
    );
}

#[test]
fn fixed_size_packets_have_fixed_remaining_lengths() {
    let len = |packet, expected, actual| InvalidRemainingLength {
        packet,
        expected,
        actual,
    };
    assert_both(&frame(0xC0, &[0]), len("PINGREQ", 0, 1), 0x81);
    assert_both(&frame(0xD0, &[0]), len("PINGRESP", 0, 1), 0x81);
    assert_err(&frame(0xE0, &[0]), V311, len("DISCONNECT", 0, 1), 0x81);
    assert_err(&frame(0x40, &[0, 1, 0]), V311, len("PUBACK", 2, 3), 0x81);
    assert_err(&frame(0x62, &[0, 1, 0]), V311, len("PUBREL", 2, 3), 0x81);
    assert_err(&frame(0x20, &[0, 0, 0]), V311, len("CONNACK", 2, 3), 0x81);
    assert_err(&frame(0xB0, &[0, 1, 0]), V311, len("UNSUBACK", 2, 3), 0x81);
}

// ---- Strings ----

#[test]
fn ill_formed_utf8_is_malformed() {
    // A lone continuation byte, an encoded surrogate U+D800 and an overlong "/".
    for bad in [&[0x80][..], &[0xED, 0xA0, 0x80], &[0xC0, 0xAF]] {
        assert_both(
            &frame(0x30, &[&s(bad)[..], b"x"].concat()),
            InvalidUtf8,
            0x81,
        );
    }
    assert_both(&connect(4, 0x02, &s(&[b'a', 0xFF])), InvalidUtf8, 0x81);
}

#[test]
fn null_character_is_malformed() {
    assert_both(
        &frame(0x30, &[&s(b"a\0b")[..], b"x"].concat()),
        NullCharacter,
        0x81,
    );
    let user = [&[0x26][..], &s(b"k"), &s(b"\0")].concat();
    assert_err(&publish_5(&user), V5, NullCharacter, 0x81);
}

// ---- CONNECT ----

#[test]
fn protocol_name_must_be_mqtt() {
    let bytes = frame(0x10, &[&s(b"MQTX")[..], &[4, 2, 0, 60], &s(b"c")].concat());
    assert_both(&bytes, InvalidProtocolName, 0x81);
}

#[test]
fn other_protocol_levels_are_unsupported() {
    for level in [0u8, 3, 6, 0xFF] {
        assert_both(
            &connect(level, 0x02, &s(b"c")),
            UnsupportedProtocolVersion(level),
            0x84,
        );
    }
    // An MQTT 3.1 client: "MQIsdp", level 3.
    let bytes = frame(
        0x10,
        &[&s(b"MQIsdp")[..], &[3, 2, 0, 60], &s(b"c")].concat(),
    );
    assert_both(&bytes, UnsupportedProtocolVersion(3), 0x84);
}

#[test]
fn connect_reserved_flag_is_malformed() {
    assert_both(&connect(4, 0x03, &s(b"c")), ConnectReservedFlag, 0x81);
    assert_both(
        &connect(5, 0x03, &[&[0][..], &s(b"c")].concat()),
        ConnectReservedFlag,
        0x81,
    );
}

#[test]
fn will_qos_without_will_flag_is_malformed() {
    assert_both(&connect(4, 0x0A, &s(b"c")), WillQoSWithoutWill, 0x81);
}

#[test]
fn will_retain_without_will_flag_is_malformed() {
    assert_both(&connect(4, 0x22, &s(b"c")), WillRetainWithoutWill, 0x81);
}

#[test]
fn will_qos_3_is_malformed() {
    let rest = [&s(b"c")[..], &s(b"t"), &s(b"p")].concat();
    assert_both(&connect(4, 0x1E, &rest), WillQoS3, 0x81);
}

#[test]
fn password_without_user_name_is_malformed_in_311_only() {
    let rest = [&s(b"c")[..], &s(b"pw")].concat();
    assert_both(&connect(4, 0x42, &rest), PasswordWithoutUsername, 0x81);
    let bytes = connect(5, 0x42, &[&[0][..], &rest].concat());
    assert!(matches!(decode_all(&bytes, V5), Ok(Packet::Connect(c)) if c.username.is_none()));
}

#[test]
fn will_topic_must_be_a_topic_name() {
    let with_topic = |topic: &[u8]| connect(4, 0x06, &[&s(b"c")[..], &s(topic), &s(b"")].concat());
    assert_both(&with_topic(b"a/+"), TopicNameWildcard, 0x90);
    assert_both(&with_topic(b"#"), TopicNameWildcard, 0x90);
    assert_both(&with_topic(b""), EmptyTopicName, 0x90);
}

#[test]
fn connect_properties_are_checked() {
    let with = |p: &[u8]| connect(5, 0x02, &[&props(p)[..], &s(b"c")].concat());
    let not_allowed = |property| PropertyNotAllowed {
        property,
        packet: "CONNECT",
    };
    assert_both(&with(&[0x23, 0, 1]), not_allowed(0x23), 0x81);
    let invalid = |property, value| InvalidPropertyValue { property, value };
    assert_both(&with(&[0x21, 0, 0]), invalid(0x21, 0), 0x82);
    assert_both(&with(&[0x27, 0, 0, 0, 0]), invalid(0x27, 0), 0x82);
    assert_both(&with(&[0x17, 2]), invalid(0x17, 2), 0x82);
    assert_both(&with(&[0x19, 2]), invalid(0x19, 2), 0x82);
    assert_both(
        &with(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1]),
        DuplicateProperty(0x11),
        0x82,
    );
    assert_both(&with(&[0x16, 0, 1, 0xAA]), AuthDataWithoutMethod, 0x82);
}

#[test]
fn will_properties_use_their_own_table() {
    let with = |p: &[u8]| {
        let rest = [&[0][..], &s(b"c"), &props(p), &s(b"t"), &s(b"")].concat();
        connect(5, 0x06, &rest)
    };
    assert!(decode_all(&with(&[0x18, 0, 0, 0, 9, 0x01, 1]), V5).is_ok());
    let expected = PropertyNotAllowed {
        property: 0x11,
        packet: "will properties",
    };
    assert_err(&with(&[0x11, 0, 0, 0, 9]), V5, expected, 0x81);
    assert_err(
        &with(&[0x01, 3]),
        V5,
        InvalidPropertyValue {
            property: 0x01,
            value: 3,
        },
        0x82,
    );
}

// ---- PUBLISH ----

#[test]
fn publish_topic_with_wildcards_is_invalid() {
    for topic in [&b"a/+"[..], b"#", b"a/#"] {
        assert_both(
            &frame(0x30, &[&s(topic)[..], b"x"].concat()),
            TopicNameWildcard,
            0x90,
        );
    }
}

#[test]
fn publish_with_qos_needs_a_non_zero_packet_id() {
    let bytes = frame(0x32, &[&s(b"t")[..], &[0, 0]].concat());
    assert_both(&bytes, ZeroPacketId { packet: "PUBLISH" }, 0x82);
}

#[test]
fn empty_publish_topic_needs_a_topic_alias_in_5() {
    assert_err(&frame(0x30, &[0, 0, 0]), V5, EmptyTopicWithoutAlias, 0x82);
    assert_err(&frame(0x30, &[0, 0]), V311, EmptyTopicName, 0x90);
}

#[test]
fn publish_properties_are_checked() {
    assert_err(&publish_5(&[0x23, 0, 0]), V5, TopicAliasZero, 0x94);
    let invalid = |property, value| InvalidPropertyValue { property, value };
    assert_err(&publish_5(&[0x01, 2]), V5, invalid(0x01, 2), 0x82);
    assert_err(&publish_5(&[0x0B, 0]), V5, invalid(0x0B, 0), 0x82);
    assert_err(
        &publish_5(&[0x23, 0, 1, 0x23, 0, 2]),
        V5,
        DuplicateProperty(0x23),
        0x82,
    );
    let not_allowed = PropertyNotAllowed {
        property: 0x11,
        packet: "PUBLISH",
    };
    assert_err(&publish_5(&[0x11, 0, 0, 0, 1]), V5, not_allowed, 0x81);
    // User Property and Subscription Identifier may repeat in PUBLISH.
    let user = [&[0x26][..], &s(b"k"), &s(b"v")].concat();
    assert!(decode_all(&publish_5(&[&user[..], &user].concat()), V5).is_ok());
    assert!(decode_all(&publish_5(&[0x0B, 1, 0x0B, 2]), V5).is_ok());
}

#[test]
fn unknown_property_identifiers_are_malformed() {
    for id in [0x00u8, 0x04, 0x0A, 0x14, 0x2B, 0x80, 0xFF] {
        assert_err(&publish_5(&[id, 0]), V5, UnknownProperty(id), 0x81);
    }
}

#[test]
fn property_variable_byte_integers_are_limited_to_4_bytes() {
    let bytes = frame(
        0x30,
        &[&s(b"t")[..], &[0x80, 0x80, 0x80, 0x80, 0x01]].concat(),
    );
    assert_err(
        &bytes,
        V5,
        VarIntTooLong {
            field: "property length",
        },
        0x81,
    );
    let bytes = publish_5(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]);
    assert_err(
        &bytes,
        V5,
        VarIntTooLong {
            field: "subscription identifier",
        },
        0x81,
    );
}

// ---- PUBACK, PUBREC, PUBREL, PUBCOMP ----

#[test]
fn pub_response_properties_are_checked() {
    let bytes = frame(0x40, &[0, 1, 0x10, 0x02, 0x01, 0x01]);
    let expected = PropertyNotAllowed {
        property: 0x01,
        packet: "PUBACK",
    };
    assert_err(&bytes, V5, expected, 0x81);
    let bytes = frame(
        0x62,
        &[&[0, 1, 0x92][..], &props(&[0x1F, 0, 0, 0x1F, 0, 0])].concat(),
    );
    assert_err(&bytes, V5, DuplicateProperty(0x1F), 0x82);
}

// ---- SUBSCRIBE ----

#[test]
fn subscribe_needs_a_non_zero_packet_id() {
    let bytes = frame(0x82, &[&[0, 0][..], &s(b"a"), &[1]].concat());
    assert_err(
        &bytes,
        V311,
        ZeroPacketId {
            packet: "SUBSCRIBE",
        },
        0x82,
    );
}

#[test]
fn subscribe_needs_a_filter() {
    assert_err(
        &frame(0x82, &[0, 1]),
        V311,
        NoTopicFilters {
            packet: "SUBSCRIBE",
        },
        0x82,
    );
    assert_err(
        &frame(0x82, &[0, 1, 0]),
        V5,
        NoTopicFilters {
            packet: "SUBSCRIBE",
        },
        0x82,
    );
}

#[test]
fn subscribe_filters_must_not_be_empty() {
    let bytes = frame(0x82, &[&[0, 1][..], &s(b""), &[1]].concat());
    assert_err(&bytes, V311, EmptyTopicFilter, 0x82);
}

#[test]
fn subscription_options_reserved_bits_are_malformed() {
    let v3 = |options| frame(0x82, &[&[0, 1][..], &s(b"a"), &[options]].concat());
    assert_err(&v3(0x04), V311, InvalidSubscriptionOptions(0x04), 0x81);
    assert_err(&v3(0x81), V311, InvalidSubscriptionOptions(0x81), 0x81);
    let v5 = |options| frame(0x82, &[&[0, 1, 0][..], &s(b"a"), &[options]].concat());
    assert_err(&v5(0x40), V5, InvalidSubscriptionOptions(0x40), 0x81);
    assert_err(&v5(0x80), V5, InvalidSubscriptionOptions(0x80), 0x81);
}

#[test]
fn subscription_qos_3_is_an_error() {
    let bytes = frame(0x82, &[&[0, 1][..], &s(b"a"), &[3]].concat());
    assert_err(&bytes, V311, SubscriptionQoS3, 0x82);
    let bytes = frame(0x82, &[&[0, 1, 0][..], &s(b"a"), &[3]].concat());
    assert_err(&bytes, V5, SubscriptionQoS3, 0x82);
}

#[test]
fn retain_handling_3_is_a_protocol_error() {
    let bytes = frame(0x82, &[&[0, 1, 0][..], &s(b"a"), &[0x30]].concat());
    assert_err(&bytes, V5, InvalidRetainHandling, 0x82);
}

#[test]
fn subscribe_properties_are_checked() {
    let with = |p: &[u8]| frame(0x82, &[&[0, 1][..], &props(p), &s(b"a"), &[1]].concat());
    let invalid = InvalidPropertyValue {
        property: 0x0B,
        value: 0,
    };
    assert_err(&with(&[0x0B, 0]), V5, invalid, 0x82);
    assert_err(
        &with(&[0x0B, 1, 0x0B, 2]),
        V5,
        DuplicateProperty(0x0B),
        0x82,
    );
    let not_allowed = PropertyNotAllowed {
        property: 0x23,
        packet: "SUBSCRIBE",
    };
    assert_err(&with(&[0x23, 0, 1]), V5, not_allowed, 0x81);
}

#[test]
fn wildcard_placement_in_filters_is_left_to_the_router() {
    let bytes = frame(0x82, &[&[0, 1][..], &s(b"a/#/b+"), &[1]].concat());
    assert!(decode_all(&bytes, V311).is_ok());
}

// ---- UNSUBSCRIBE ----

#[test]
fn unsubscribe_needs_a_non_zero_packet_id() {
    let bytes = frame(0xA2, &[&[0, 0][..], &s(b"a")].concat());
    assert_err(
        &bytes,
        V311,
        ZeroPacketId {
            packet: "UNSUBSCRIBE",
        },
        0x82,
    );
}

#[test]
fn unsubscribe_needs_a_filter() {
    assert_err(
        &frame(0xA2, &[0, 1]),
        V311,
        NoTopicFilters {
            packet: "UNSUBSCRIBE",
        },
        0x82,
    );
    assert_err(
        &frame(0xA2, &[0, 1, 0]),
        V5,
        NoTopicFilters {
            packet: "UNSUBSCRIBE",
        },
        0x82,
    );
    let bytes = frame(0xA2, &[&[0, 1][..], &s(b"")].concat());
    assert_err(&bytes, V311, EmptyTopicFilter, 0x82);
}

#[test]
fn unsubscribe_carries_only_user_properties() {
    let bytes = frame(0xA2, &[&[0, 1][..], &props(&[0x0B, 1]), &s(b"a")].concat());
    let expected = PropertyNotAllowed {
        property: 0x0B,
        packet: "UNSUBSCRIBE",
    };
    assert_err(&bytes, V5, expected, 0x81);
}

// ---- DISCONNECT, AUTH ----

#[test]
fn disconnect_and_auth_properties_are_checked() {
    let bytes = frame(0xE0, &[&[0x00][..], &props(&[0x21, 0, 1])].concat());
    let expected = PropertyNotAllowed {
        property: 0x21,
        packet: "DISCONNECT",
    };
    assert_err(&bytes, V5, expected, 0x81);
    let bytes = frame(0xF0, &[&[0x18][..], &props(&[0x11, 0, 0, 0, 1])].concat());
    assert_err(
        &bytes,
        V5,
        PropertyNotAllowed {
            property: 0x11,
            packet: "AUTH",
        },
        0x81,
    );
}

// ---- Server-to-client packets ----

#[test]
fn connack_reserved_flags_are_malformed() {
    assert_err(
        &frame(0x20, &[0x02, 0x00]),
        V311,
        InvalidConnAckFlags(0x02),
        0x81,
    );
    assert_err(
        &frame(0x20, &[0x80, 0x00, 0x00]),
        V5,
        InvalidConnAckFlags(0x80),
        0x81,
    );
}

#[test]
fn connack_311_return_codes_above_5_are_malformed() {
    assert_err(
        &frame(0x20, &[0x00, 0x06]),
        V311,
        InvalidConnAckCode(6),
        0x81,
    );
}

#[test]
fn connack_properties_are_checked() {
    let with = |p: &[u8]| frame(0x20, &[&[0, 0][..], &props(p)].concat());
    for id in [0x24u8, 0x25, 0x28, 0x29, 0x2A] {
        let expected = InvalidPropertyValue {
            property: id,
            value: 2,
        };
        assert_err(&with(&[id, 2]), V5, expected, 0x82);
    }
    let not_allowed = PropertyNotAllowed {
        property: 0x17,
        packet: "CONNACK",
    };
    assert_err(&with(&[0x17, 1]), V5, not_allowed, 0x81);
}

#[test]
fn suback_311_return_codes_are_0_1_2_or_0x80() {
    assert_err(
        &frame(0x90, &[0, 1, 0, 3]),
        V311,
        InvalidSubAckCode(3),
        0x81,
    );
    assert_err(
        &frame(0x90, &[0, 1, 0x87]),
        V311,
        InvalidSubAckCode(0x87),
        0x81,
    );
}

#[test]
fn connect_5_decodes_whatever_the_connection_version() {
    assert!(decode_all(CONNECT_5, V311).is_ok());
}
