//! MQTT packet encoder: writes a [`Packet`] in the MQTT 3.1.1 (OASIS Standard, 2014) or MQTT 5.0
//! (OASIS Standard, 2019) wire format, exactly as [`decode`](super::decode) reads it.
//!
//! - Properties are written for 5.0 only; 3.1.1 drops them.
//! - 5.0 uses the shortest forms: PUBACK-family, DISCONNECT and AUTH leave out the reason code
//!   and property length when the reason is Success and there are no properties.
//! - 3.1.1 has fewer codes: CONNACK and SUBACK reason codes are mapped to 3.1.1 return codes,
//!   UNSUBACK loses its payload.
//! - CONNECT is written at its own `protocol` level; AUTH (5.0 only) is always written as 5.0.
//!
//! The caller keeps values within the wire limits (strings and binary data up to 65,535 bytes,
//! a remaining length up to 268,435,455); decoded packets always are.

#[cfg(test)]
mod tests;

use bytes::{BufMut, BytesMut};

use super::{
    ConnAck, Connect, Packet, Properties, Property, ProtocolVersion, PubResponse, Publish, QoS,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, reason,
};

/// Appends `packet` to `out`, in `version`'s wire format.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    let remaining = remaining_len(packet, version);
    out.reserve(1 + var_int_len(remaining) + remaining);
    out.put_u8(first_byte(packet));
    put_var_int(out, remaining);
    let v5 = version == ProtocolVersion::V5;
    match packet {
        Packet::Connect(c) => put_connect(out, c),
        Packet::ConnAck(c) => put_connack(out, c, v5),
        Packet::Publish(p) => put_publish(out, p, v5),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            put_pub_response(out, p, v5)
        }
        Packet::Subscribe(s) => put_subscribe(out, s, v5),
        Packet::SubAck(s) => put_suback(out, s, v5),
        Packet::Unsubscribe(u) => put_unsubscribe(out, u, v5),
        Packet::UnsubAck(u) => put_unsuback(out, u, v5),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) if v5 => put_reason_and_properties(out, d.reason, &d.properties),
        Packet::Disconnect(_) => {}
        Packet::Auth(a) => put_reason_and_properties(out, a.reason, &a.properties),
    }
}

/// The number of bytes [`encode`] appends for `packet`, computed without writing.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let remaining = remaining_len(packet, version);
    1 + var_int_len(remaining) + remaining
}

/// The number of bytes [`encode`] appends for a PUBLISH, without building a [`Packet`].
pub fn publish_len(p: &Publish, version: ProtocolVersion) -> usize {
    let props = if version == ProtocolVersion::V5 {
        properties_block_len(&p.properties)
    } else {
        0
    };
    let pkid = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = string_len(&p.topic) + pkid + props + p.payload.len();
    1 + var_int_len(remaining) + remaining
}

/// Packet type and flags (3.1.1 §2.2, 5.0 §2.1).
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            // DUP must be 0 for QoS 0 [MQTT-3.3.1-2].
            let dup = p.dup && p.qos != QoS::AtMostOnce;
            0x30 | u8::from(dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// The remaining length: variable header plus payload.
fn remaining_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let v5 = version == ProtocolVersion::V5;
    let props = |p: &Properties| if v5 { properties_block_len(p) } else { 0 };
    match packet {
        Packet::Connect(c) => connect_len(c),
        Packet::ConnAck(c) => 2 + props(&c.properties),
        Packet::Publish(p) => {
            let pkid = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            string_len(&p.topic) + pkid + props(&p.properties) + p.payload.len()
        }
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            2 + if v5 {
                reason_and_properties_len(p.reason, &p.properties)
            } else {
                0
            }
        }
        Packet::Subscribe(s) => {
            let filters: usize = s.filters.iter().map(|(f, _)| string_len(f) + 1).sum();
            2 + props(&s.properties) + filters
        }
        Packet::SubAck(s) => 2 + props(&s.properties) + s.codes.len(),
        Packet::Unsubscribe(u) => {
            let filters: usize = u.filters.iter().map(|f| string_len(f)).sum();
            2 + props(&u.properties) + filters
        }
        Packet::UnsubAck(u) if v5 => 2 + props(&u.properties) + u.codes.len(),
        Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) if v5 => reason_and_properties_len(d.reason, &d.properties),
        Packet::Disconnect(_) => 0,
        Packet::Auth(a) => reason_and_properties_len(a.reason, &a.properties),
    }
}

fn connect_len(c: &Connect) -> usize {
    let v5 = c.protocol == ProtocolVersion::V5;
    let props = |p: &Properties| if v5 { properties_block_len(p) } else { 0 };
    // Protocol name, level, flags, keep alive.
    let mut len = 6 + 1 + 1 + 2 + props(&c.properties) + string_len(&c.client_id);
    if let Some(will) = &c.will {
        len += props(&will.properties) + string_len(&will.topic) + 2 + will.payload.len();
    }
    if let Some(username) = &c.username {
        len += string_len(username);
    }
    if let Some(password) = &c.password {
        len += 2 + password.len();
    }
    len
}

/// Shortest form of an optional reason code and optional properties (5.0 §3.4.2.1).
fn reason_and_properties_len(code: u8, properties: &Properties) -> usize {
    if !properties.is_empty() {
        1 + properties_block_len(properties)
    } else if code != reason::SUCCESS {
        1
    } else {
        0
    }
}

fn put_connect(out: &mut BytesMut, c: &Connect) {
    let v5 = c.protocol == ProtocolVersion::V5;
    put_string(out, "MQTT");
    out.put_u8(c.protocol.level());
    out.put_u8(connect_flags(c));
    out.put_u16(c.keep_alive);
    if v5 {
        put_properties(out, &c.properties);
    }
    put_string(out, &c.client_id);
    if let Some(will) = &c.will {
        if v5 {
            put_properties(out, &will.properties);
        }
        put_string(out, &will.topic);
        put_binary(out, &will.payload);
    }
    if let Some(username) = &c.username {
        put_string(out, username);
    }
    if let Some(password) = &c.password {
        put_binary(out, password);
    }
}

/// The Connect Flags byte (§3.1.2.3).
fn connect_flags(c: &Connect) -> u8 {
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0b100 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6;
    flags | u8::from(c.username.is_some()) << 7
}

fn put_connack(out: &mut BytesMut, c: &ConnAck, v5: bool) {
    out.put_u8(u8::from(c.session_present));
    if v5 {
        out.put_u8(c.code);
        put_properties(out, &c.properties);
    } else {
        out.put_u8(connack_return_code(c.code));
    }
}

/// The 3.1.1 return code for a reason code (3.1.1 §3.2.2.3).
fn connack_return_code(code: u8) -> u8 {
    match code {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::BAD_USER_NAME_OR_PASSWORD => 4,
        reason::NOT_AUTHORIZED | reason::BAD_AUTHENTICATION_METHOD => 5,
        _ => 3,
    }
}

fn put_publish(out: &mut BytesMut, p: &Publish, v5: bool) {
    put_string(out, &p.topic);
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.pkid);
    }
    if v5 {
        put_properties(out, &p.properties);
    }
    out.put_slice(&p.payload);
}

fn put_pub_response(out: &mut BytesMut, p: &PubResponse, v5: bool) {
    out.put_u16(p.pkid);
    if v5 {
        put_reason_and_properties(out, p.reason, &p.properties);
    }
}

fn put_reason_and_properties(out: &mut BytesMut, code: u8, properties: &Properties) {
    if code != reason::SUCCESS || !properties.is_empty() {
        out.put_u8(code);
    }
    if !properties.is_empty() {
        put_properties(out, properties);
    }
}

fn put_subscribe(out: &mut BytesMut, s: &Subscribe, v5: bool) {
    out.put_u16(s.pkid);
    if v5 {
        put_properties(out, &s.properties);
    }
    for (filter, options) in &s.filters {
        put_string(out, filter);
        out.put_u8(subscription_options(options, v5));
    }
}

/// The Subscription Options byte (§3.8.3.1); 3.1.1 has only the QoS.
fn subscription_options(o: &SubscriptionOptions, v5: bool) -> u8 {
    let qos = o.qos as u8;
    if !v5 {
        return qos;
    }
    qos | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn put_suback(out: &mut BytesMut, s: &SubAck, v5: bool) {
    out.put_u16(s.pkid);
    if v5 {
        put_properties(out, &s.properties);
        out.put_slice(&s.codes);
    } else {
        // 3.1.1 knows only the granted QoS and 0x80 Failure (§3.9.3).
        for &code in &s.codes {
            out.put_u8(if code <= reason::GRANTED_QOS_2 {
                code
            } else {
                0x80
            });
        }
    }
}

fn put_unsubscribe(out: &mut BytesMut, u: &Unsubscribe, v5: bool) {
    out.put_u16(u.pkid);
    if v5 {
        put_properties(out, &u.properties);
    }
    for filter in &u.filters {
        put_string(out, filter);
    }
}

fn put_unsuback(out: &mut BytesMut, u: &UnsubAck, v5: bool) {
    out.put_u16(u.pkid);
    if v5 {
        put_properties(out, &u.properties);
        out.put_slice(&u.codes);
    }
}

/// Property length then the properties (5.0 §2.2.2).
fn put_properties(out: &mut BytesMut, properties: &Properties) {
    put_var_int(out, properties_len(properties));
    for property in &properties.0 {
        put_property(out, property);
    }
}

fn put_property(out: &mut BytesMut, property: &Property) {
    use Property::*;
    out.put_u8(property.id());
    match property {
        PayloadFormatIndicator(v)
        | RequestProblemInformation(v)
        | RequestResponseInformation(v)
        | MaximumQoS(v)
        | RetainAvailable(v)
        | WildcardSubscriptionAvailable(v)
        | SubscriptionIdentifierAvailable(v)
        | SharedSubscriptionAvailable(v) => out.put_u8(*v),
        ServerKeepAlive(v) | ReceiveMaximum(v) | TopicAliasMaximum(v) | TopicAlias(v) => {
            out.put_u16(*v)
        }
        MessageExpiryInterval(v)
        | SessionExpiryInterval(v)
        | WillDelayInterval(v)
        | MaximumPacketSize(v) => out.put_u32(*v),
        SubscriptionIdentifier(v) => put_var_int(out, *v as usize),
        ContentType(s)
        | ResponseTopic(s)
        | AssignedClientIdentifier(s)
        | AuthenticationMethod(s)
        | ResponseInformation(s)
        | ServerReference(s)
        | ReasonString(s) => put_string(out, s),
        CorrelationData(b) | AuthenticationData(b) => put_binary(out, b),
        UserProperty(key, value) => {
            put_string(out, key);
            put_string(out, value);
        }
    }
}

/// Property length field plus the properties.
fn properties_block_len(properties: &Properties) -> usize {
    let len = properties_len(properties);
    var_int_len(len) + len
}

/// The value of the property length field.
fn properties_len(properties: &Properties) -> usize {
    properties.0.iter().map(property_len).sum()
}

/// Identifier plus value.
fn property_len(property: &Property) -> usize {
    use Property::*;
    1 + match property {
        PayloadFormatIndicator(_)
        | RequestProblemInformation(_)
        | RequestResponseInformation(_)
        | MaximumQoS(_)
        | RetainAvailable(_)
        | WildcardSubscriptionAvailable(_)
        | SubscriptionIdentifierAvailable(_)
        | SharedSubscriptionAvailable(_) => 1,
        ServerKeepAlive(_) | ReceiveMaximum(_) | TopicAliasMaximum(_) | TopicAlias(_) => 2,
        MessageExpiryInterval(_)
        | SessionExpiryInterval(_)
        | WillDelayInterval(_)
        | MaximumPacketSize(_) => 4,
        SubscriptionIdentifier(v) => var_int_len(*v as usize),
        ContentType(s)
        | ResponseTopic(s)
        | AssignedClientIdentifier(s)
        | AuthenticationMethod(s)
        | ResponseInformation(s)
        | ServerReference(s)
        | ReasonString(s) => string_len(s),
        CorrelationData(b) | AuthenticationData(b) => 2 + b.len(),
        UserProperty(key, value) => string_len(key) + string_len(value),
    }
}

fn string_len(s: &str) -> usize {
    2 + s.len()
}

/// Two-byte length then UTF-8 (5.0 §1.5.4). Over-long strings are a caller bug.
fn put_string(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

/// Two-byte length then the bytes (5.0 §1.5.6).
fn put_binary(out: &mut BytesMut, bytes: &[u8]) {
    debug_assert!(
        bytes.len() <= usize::from(u16::MAX),
        "string or binary over 65,535 bytes"
    );
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

/// Bytes taken by a Variable Byte Integer (5.0 §1.5.5).
fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Variable Byte Integer, shortest form [5.0 MQTT-1.5.5-1].
fn put_var_int(out: &mut BytesMut, mut value: usize) {
    debug_assert!(
        value <= 268_435_455,
        "variable byte integer over 268,435,455"
    );
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}
