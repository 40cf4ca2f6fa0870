//! MQTT packet decoder: takes one control packet off the front of a read buffer, following the
//! MQTT 3.1.1 (OASIS Standard, 2014) and MQTT 5.0 (OASIS Standard, 2019) wire formats.
//!
//! The fixed header is checked as soon as it is readable, so an oversized or malformed packet is
//! refused before its body arrives. A complete packet is split off the buffer and frozen; topics,
//! strings and payloads are slices of that one allocation ([`reader`]). MQTT 5 properties are read
//! and checked by the [`properties`] submodule.

mod properties;
mod reader;
#[cfg(test)]
mod tests;

use bytes::{Buf, BytesMut};
use bytestring::ByteString;

use super::{
    Auth, ConnAck, Connect, DecodeError, Disconnect, LastWill, Packet, Properties, Property,
    ProtocolVersion, PubResponse, Publish, QoS, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, reason,
};
use properties::{Context, read_properties};
use reader::Reader;

/// Control packet types (3.1.1 §2.2.1, 5.0 §2.1.2).
mod kind {
    pub(super) const CONNECT: u8 = 1;
    pub(super) const CONNACK: u8 = 2;
    pub(super) const PUBLISH: u8 = 3;
    pub(super) const PUBACK: u8 = 4;
    pub(super) const PUBREC: u8 = 5;
    pub(super) const PUBREL: u8 = 6;
    pub(super) const PUBCOMP: u8 = 7;
    pub(super) const SUBSCRIBE: u8 = 8;
    pub(super) const SUBACK: u8 = 9;
    pub(super) const UNSUBSCRIBE: u8 = 10;
    pub(super) const UNSUBACK: u8 = 11;
    pub(super) const PINGREQ: u8 = 12;
    pub(super) const PINGRESP: u8 = 13;
    pub(super) const DISCONNECT: u8 = 14;
    pub(super) const AUTH: u8 = 15;
}

/// Decodes the packet at the front of `buf`.
///
/// - `Ok(Some(packet))`: exactly that packet's bytes were removed from `buf`.
/// - `Ok(None)`: the packet is not complete yet; nothing was consumed.
/// - `Err(_)`: the connection must be closed (after a DISCONNECT or CONNACK carrying
///   [`DecodeError::reason_code`] in MQTT 5). How much of `buf` was consumed is unspecified.
///
/// `version` is the connection's negotiated version; CONNECT ignores it and follows its own
/// protocol level. `max_packet_size` bounds the whole packet (fixed header included).
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FixedHeader::parse(buf, version, max_packet_size)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(header.header_len + header.remaining).freeze();
    frame.advance(header.header_len);
    let mut r = Reader::new(frame, packet_name(header.kind));
    let packet = body(&header, &mut r, version)?;
    r.finish()?;
    Ok(Some(packet))
}

/// The first byte and the remaining length (3.1.1 §2.2, 5.0 §2.1).
struct FixedHeader {
    kind: u8,
    flags: u8,
    header_len: usize,
    remaining: usize,
}

impl FixedHeader {
    /// `Ok(None)` until the whole packet is in `buf`; errors as soon as the header is readable.
    fn parse(
        buf: &[u8],
        version: ProtocolVersion,
        max: usize,
    ) -> Result<Option<FixedHeader>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let (kind, flags) = (first >> 4, first & 0x0F);
        check_type_and_flags(kind, flags, version)?;
        let mut remaining = 0usize;
        for i in 0..4 {
            let Some(&byte) = buf.get(1 + i) else {
                return Ok(None);
            };
            remaining |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                let header_len = 2 + i;
                let size = header_len + remaining;
                if size > max {
                    return Err(DecodeError::PacketTooLarge { size, max });
                }
                if buf.len() < size {
                    return Ok(None);
                }
                return Ok(Some(FixedHeader {
                    kind,
                    flags,
                    header_len,
                    remaining,
                }));
            }
        }
        Err(DecodeError::VarIntTooLong {
            field: "remaining length",
        })
    }
}

/// Packet type and flag rules of the first byte [MQTT-2.2.2-2], [MQTT-3.3.1-2], [MQTT-3.3.1-4].
fn check_type_and_flags(kind: u8, flags: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    match kind {
        0 => Err(DecodeError::ReservedPacketType(0)),
        kind::AUTH if version == ProtocolVersion::V311 => {
            Err(DecodeError::ReservedPacketType(kind::AUTH))
        }
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(DecodeError::PublishQoS3)
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DecodeError::DupWithQoS0)
            } else {
                Ok(())
            }
        }
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE if flags == 0b0010 => Ok(()),
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => Err(DecodeError::InvalidFlags {
            packet_type: kind,
            flags,
        }),
        _ if flags == 0 => Ok(()),
        _ => Err(DecodeError::InvalidFlags {
            packet_type: kind,
            flags,
        }),
    }
}

fn packet_name(kind: u8) -> &'static str {
    const NAMES: [&str; 16] = [
        "reserved",
        "CONNECT",
        "CONNACK",
        "PUBLISH",
        "PUBACK",
        "PUBREC",
        "PUBREL",
        "PUBCOMP",
        "SUBSCRIBE",
        "SUBACK",
        "UNSUBSCRIBE",
        "UNSUBACK",
        "PINGREQ",
        "PINGRESP",
        "DISCONNECT",
        "AUTH",
    ];
    NAMES.get(usize::from(kind)).copied().unwrap_or("reserved")
}

/// Decodes the variable header and payload for the packet type of `header`.
fn body(h: &FixedHeader, r: &mut Reader, v: ProtocolVersion) -> Result<Packet, DecodeError> {
    Ok(match h.kind {
        kind::CONNECT => Packet::Connect(Box::new(connect(r)?)),
        kind::CONNACK => Packet::ConnAck(connack(r, v)?),
        kind::PUBLISH => Packet::Publish(publish(r, h.flags, v)?),
        kind::PUBACK => Packet::PubAck(pub_response(r, v, Context::PubAck)?),
        kind::PUBREC => Packet::PubRec(pub_response(r, v, Context::PubRec)?),
        kind::PUBREL => Packet::PubRel(pub_response(r, v, Context::PubRel)?),
        kind::PUBCOMP => Packet::PubComp(pub_response(r, v, Context::PubComp)?),
        kind::SUBSCRIBE => Packet::Subscribe(subscribe(r, v)?),
        kind::SUBACK => Packet::SubAck(suback(r, v)?),
        kind::UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe(r, v)?),
        kind::UNSUBACK => Packet::UnsubAck(unsuback(r, v)?),
        kind::PINGREQ => {
            r.expect_len(0)?;
            Packet::PingReq
        }
        kind::PINGRESP => {
            r.expect_len(0)?;
            Packet::PingResp
        }
        kind::DISCONNECT => Packet::Disconnect(disconnect(r, v)?),
        kind::AUTH => {
            let (reason, properties) = reason_and_properties(r, Context::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
        other => return Err(DecodeError::ReservedPacketType(other)),
    })
}

/// CONNECT (§3.1). Parsed according to its own protocol level, not the connection's.
fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let protocol = protocol_version(r)?;
    let flags = ConnectFlags::parse(r.u8()?, protocol)?;
    let keep_alive = r.u16()?;
    let properties = properties_if_v5(r, protocol, Context::Connect)?;
    check_auth_properties(&properties)?;
    let client_id = r.string()?;
    let will = (flags.will)
        .map(|(qos, retain)| last_will(r, protocol, qos, retain))
        .transpose()?;
    let username = flags.username.then(|| r.string()).transpose()?;
    let password = flags.password.then(|| r.binary()).transpose()?;
    Ok(Connect {
        protocol,
        clean_start: flags.clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Protocol name and level. "MQIsdp" (MQTT 3.1) is a known protocol at an unsupported level, so
/// the caller can still answer with CONNACK [MQTT-3.1.2-1], [MQTT-3.1.2-2].
fn protocol_version(r: &mut Reader) -> Result<ProtocolVersion, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    match (name.as_ref(), level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V311),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        (b"MQTT" | b"MQIsdp", level) => Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => Err(DecodeError::InvalidProtocolName),
    }
}

/// The Connect Flags byte (§3.1.2.2 to §3.1.2.9).
struct ConnectFlags {
    clean_start: bool,
    /// Will QoS and Will Retain when the Will Flag is set.
    will: Option<(QoS, bool)>,
    username: bool,
    password: bool,
}

impl ConnectFlags {
    fn parse(byte: u8, protocol: ProtocolVersion) -> Result<ConnectFlags, DecodeError> {
        if byte & 0b0000_0001 != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_flag = byte & 0b0000_0100 != 0;
        let will_qos = (byte >> 3) & 0b11;
        let will_retain = byte & 0b0010_0000 != 0;
        let password = byte & 0b0100_0000 != 0;
        let username = byte & 0b1000_0000 != 0;
        let will = if will_flag {
            let qos = QoS::from_u8(will_qos).ok_or(DecodeError::WillQoS3)?;
            Some((qos, will_retain))
        } else if will_qos != 0 {
            return Err(DecodeError::WillQoSWithoutWill);
        } else if will_retain {
            return Err(DecodeError::WillRetainWithoutWill);
        } else {
            None
        };
        // 5.0 dropped this rule: a password may authenticate without a user name.
        if protocol == ProtocolVersion::V311 && password && !username {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        Ok(ConnectFlags {
            clean_start: byte & 0b0000_0010 != 0,
            will,
            username,
            password,
        })
    }
}

/// Authentication Data needs an Authentication Method (5.0 §3.1.2.11.10).
fn check_auth_properties(properties: &Properties) -> Result<(), DecodeError> {
    let (mut data, mut method) = (false, false);
    for property in &properties.0 {
        match property {
            Property::AuthenticationData(_) => data = true,
            Property::AuthenticationMethod(_) => method = true,
            _ => {}
        }
    }
    if data && !method {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(())
}

/// Will Properties, Will Topic and Will Payload of the CONNECT payload (§3.1.3.2 to §3.1.3.4).
fn last_will(
    r: &mut Reader,
    protocol: ProtocolVersion,
    qos: QoS,
    retain: bool,
) -> Result<LastWill, DecodeError> {
    let properties = properties_if_v5(r, protocol, Context::Will)?;
    let topic = r.string()?;
    check_topic_name(&topic)?;
    if topic.is_empty() {
        return Err(DecodeError::EmptyTopicName);
    }
    let payload = r.binary()?;
    Ok(LastWill {
        topic,
        payload,
        qos,
        retain,
        properties,
    })
}

/// CONNACK (§3.2).
fn connack(r: &mut Reader, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    if v == ProtocolVersion::V311 {
        r.expect_len(2)?;
    }
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let code = r.u8()?;
    let (code, properties) = match v {
        ProtocolVersion::V311 => (connack_reason(code)?, Properties::new()),
        ProtocolVersion::V5 => (code, read_properties(r, Context::ConnAck)?),
    };
    Ok(ConnAck {
        session_present: flags == 1,
        code,
        properties,
    })
}

/// The MQTT 5 reason code standing for a 3.1.1 CONNACK return code (3.1.1 §3.2.2.3).
fn connack_reason(return_code: u8) -> Result<u8, DecodeError> {
    Ok(match return_code {
        0 => reason::SUCCESS,
        1 => reason::UNSUPPORTED_PROTOCOL_VERSION,
        2 => reason::CLIENT_IDENTIFIER_NOT_VALID,
        3 => reason::SERVER_UNAVAILABLE,
        4 => reason::BAD_USER_NAME_OR_PASSWORD,
        5 => reason::NOT_AUTHORIZED,
        other => return Err(DecodeError::InvalidConnAckCode(other)),
    })
}

/// PUBLISH (§3.3). The flags were checked with the fixed header.
fn publish(r: &mut Reader, flags: u8, v: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::PublishQoS3)?;
    let topic = r.string()?;
    check_topic_name(&topic)?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = properties_if_v5(r, v, Context::Publish)?;
    if topic.is_empty() {
        match v {
            ProtocolVersion::V311 => return Err(DecodeError::EmptyTopicName),
            ProtocolVersion::V5 if properties.topic_alias().is_none() => {
                return Err(DecodeError::EmptyTopicWithoutAlias);
            }
            ProtocolVersion::V5 => {}
        }
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        pkid,
        payload: r.rest(),
        properties,
    })
}

/// A topic name never holds a wildcard [MQTT-3.3.2-2].
fn check_topic_name(topic: &str) -> Result<(), DecodeError> {
    // No early exit: the branch-free fold vectorizes, and topics are short.
    let wildcard = topic
        .bytes()
        .fold(false, |found, b| found | (b == b'+') | (b == b'#'));
    if wildcard {
        return Err(DecodeError::TopicNameWildcard);
    }
    Ok(())
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4 to §3.7). In 5.0 the reason code and the properties
/// may be left out from the end (§3.4.2.1).
fn pub_response(
    r: &mut Reader,
    v: ProtocolVersion,
    ctx: Context,
) -> Result<PubResponse, DecodeError> {
    if v == ProtocolVersion::V311 {
        r.expect_len(2)?;
        return Ok(PubResponse::new(r.u16()?));
    }
    let pkid = r.u16()?;
    let (reason, properties) = reason_and_properties(r, ctx)?;
    Ok(PubResponse {
        pkid,
        reason,
        properties,
    })
}

/// An optional reason code followed by optional properties (5.0 §3.4.2.1, §3.14.2.1, §3.15.2.1).
fn reason_and_properties(r: &mut Reader, ctx: Context) -> Result<(u8, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((reason::SUCCESS, Properties::new()));
    }
    let code = r.u8()?;
    if r.is_empty() {
        return Ok((code, Properties::new()));
    }
    Ok((code, read_properties(r, ctx)?))
}

/// SUBSCRIBE (§3.8). Wildcard placement is left to the router, which answers in SUBACK.
fn subscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let pkid = packet_id(r)?;
    let properties = properties_if_v5(r, v, Context::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r)?;
        let options = subscription_options(r.u8()?, v)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: "SUBSCRIBE",
        });
    }
    Ok(Subscribe {
        pkid,
        filters,
        properties,
    })
}

/// The Subscription Options byte (§3.8.3.1): 3.1.1 has only the QoS, 5.0 adds three options.
fn subscription_options(byte: u8, v: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = match v {
        ProtocolVersion::V311 => 0b1111_1100,
        ProtocolVersion::V5 => 0b1100_0000,
    };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::SubscriptionQoS3)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAlways,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0000_0100 != 0,
        retain_as_published: byte & 0b0000_1000 != 0,
        retain_handling,
    })
}

/// SUBACK (§3.9). 3.1.1 return codes are 0x00 to 0x02 and 0x80, as are the reason codes.
fn suback(r: &mut Reader, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let pkid = r.u16()?;
    let properties = properties_if_v5(r, v, Context::SubAck)?;
    let codes = r.rest().to_vec();
    if v == ProtocolVersion::V311 {
        if let Some(&bad) = codes.iter().find(|c| !matches!(c, 0x00..=0x02 | 0x80)) {
            return Err(DecodeError::InvalidSubAckCode(bad));
        }
    }
    Ok(SubAck {
        pkid,
        codes,
        properties,
    })
}

/// UNSUBSCRIBE (§3.10).
fn unsubscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let pkid = packet_id(r)?;
    let properties = properties_if_v5(r, v, Context::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters {
            packet: "UNSUBSCRIBE",
        });
    }
    Ok(Unsubscribe {
        pkid,
        filters,
        properties,
    })
}

/// UNSUBACK (§3.11). 3.1.1 has no payload.
fn unsuback(r: &mut Reader, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    if v == ProtocolVersion::V311 {
        r.expect_len(2)?;
        return Ok(UnsubAck {
            pkid: r.u16()?,
            codes: Vec::new(),
            properties: Properties::new(),
        });
    }
    let pkid = r.u16()?;
    let properties = read_properties(r, Context::UnsubAck)?;
    Ok(UnsubAck {
        pkid,
        codes: r.rest().to_vec(),
        properties,
    })
}

/// DISCONNECT (§3.14). Empty in 3.1.1.
fn disconnect(r: &mut Reader, v: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    if v == ProtocolVersion::V311 {
        r.expect_len(0)?;
        return Ok(Disconnect {
            reason: reason::SUCCESS,
            properties: Properties::new(),
        });
    }
    let (reason, properties) = reason_and_properties(r, Context::Disconnect)?;
    Ok(Disconnect { reason, properties })
}

/// A non-zero Packet Identifier [MQTT-2.3.1-1] (5.0 [MQTT-2.2.1-3]).
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ZeroPacketId { packet: r.packet }),
        id => Ok(id),
    }
}

/// A non-empty topic filter [MQTT-4.7.3-1].
fn topic_filter(r: &mut Reader) -> Result<ByteString, DecodeError> {
    let filter = r.string()?;
    if filter.is_empty() {
        return Err(DecodeError::EmptyTopicFilter);
    }
    Ok(filter)
}

fn properties_if_v5(
    r: &mut Reader,
    v: ProtocolVersion,
    ctx: Context,
) -> Result<Properties, DecodeError> {
    match v {
        ProtocolVersion::V311 => Ok(Properties::new()),
        ProtocolVersion::V5 => read_properties(r, ctx),
    }
}
