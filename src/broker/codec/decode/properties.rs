//! MQTT 5.0 properties (OASIS MQTT 5.0 §2.2.2): reading a property block and enforcing which
//! packet may carry which property (the table of §2.2.2.2), that most appear at most once, and
//! the value ranges the spec sets for each.

use super::{DecodeError, Reader};
use crate::broker::codec::{Properties, Property};

/// Where a property block sits: a packet's variable header, or the will properties of CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// One bit per property identifier (all are below 64).
const fn ids(list: &[u8]) -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < list.len() {
        mask |= 1 << list[i];
        i += 1;
    }
    mask
}

const USER_PROPERTY: u8 = 0x26;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;

/// Every identifier MQTT 5.0 defines.
const KNOWN: u64 = ids(&[
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C,
    0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
]);
const CONNECT: u64 = ids(&[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]);
const WILL: u64 = ids(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]);
const CONNACK: u64 = ids(&[
    0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29,
    0x2A,
]);
const PUBLISH: u64 = ids(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26]);
/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
const ACK: u64 = ids(&[0x1F, 0x26]);
const SUBSCRIBE: u64 = ids(&[0x0B, 0x26]);
const UNSUBSCRIBE: u64 = ids(&[0x26]);
const DISCONNECT: u64 = ids(&[0x11, 0x1C, 0x1F, 0x26]);
const AUTH: u64 = ids(&[0x15, 0x16, 0x1F, 0x26]);

impl Context {
    fn name(self) -> &'static str {
        match self {
            Context::Connect => "CONNECT",
            Context::Will => "will properties",
            Context::ConnAck => "CONNACK",
            Context::Publish => "PUBLISH",
            Context::PubAck => "PUBACK",
            Context::PubRec => "PUBREC",
            Context::PubRel => "PUBREL",
            Context::PubComp => "PUBCOMP",
            Context::Subscribe => "SUBSCRIBE",
            Context::SubAck => "SUBACK",
            Context::Unsubscribe => "UNSUBSCRIBE",
            Context::UnsubAck => "UNSUBACK",
            Context::Disconnect => "DISCONNECT",
            Context::Auth => "AUTH",
        }
    }

    fn allowed(self) -> u64 {
        match self {
            Context::Connect => CONNECT,
            Context::Will => WILL,
            Context::ConnAck => CONNACK,
            Context::Publish => PUBLISH,
            Context::PubAck
            | Context::PubRec
            | Context::PubRel
            | Context::PubComp
            | Context::SubAck
            | Context::UnsubAck => ACK,
            Context::Subscribe => SUBSCRIBE,
            Context::Unsubscribe => UNSUBSCRIBE,
            Context::Disconnect => DISCONNECT,
            Context::Auth => AUTH,
        }
    }

    /// User Property may always repeat; Subscription Identifier only in PUBLISH, one per
    /// matching subscription (5.0 §3.3.2.3.8).
    fn repeatable(self, id: u8) -> bool {
        id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && self == Context::Publish)
    }
}

/// Reads a property length and the properties it covers, checking each against `ctx`.
pub(super) fn read_properties(r: &mut Reader, ctx: Context) -> Result<Properties, DecodeError> {
    let len = r.var_int("property length")?;
    let mut block = r.sub(len as usize)?;
    let mut properties = Properties::new();
    let mut seen = 0u64;
    while !block.is_empty() {
        let id = block.u8()?;
        let bit = if id < 64 && KNOWN & (1 << id) != 0 {
            1u64 << id
        } else {
            return Err(DecodeError::UnknownProperty(id));
        };
        if ctx.allowed() & bit == 0 {
            return Err(DecodeError::PropertyNotAllowed {
                property: id,
                packet: ctx.name(),
            });
        }
        if seen & bit != 0 && !ctx.repeatable(id) {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= bit;
        let property = read_value(&mut block, id)?;
        check_value(&property)?;
        properties.push(property);
    }
    Ok(properties)
}

/// The value of property `id`, in the data type the spec gives it (5.0 §2.2.2.2).
fn read_value(r: &mut Reader, id: u8) -> Result<Property, DecodeError> {
    use Property::*;
    Ok(match id {
        0x01 => PayloadFormatIndicator(r.u8()?),
        0x02 => MessageExpiryInterval(r.u32()?),
        0x03 => ContentType(r.string()?),
        0x08 => ResponseTopic(r.string()?),
        0x09 => CorrelationData(r.binary()?),
        0x0B => SubscriptionIdentifier(r.var_int("subscription identifier")?),
        0x11 => SessionExpiryInterval(r.u32()?),
        0x12 => AssignedClientIdentifier(r.string()?),
        0x13 => ServerKeepAlive(r.u16()?),
        0x15 => AuthenticationMethod(r.string()?),
        0x16 => AuthenticationData(r.binary()?),
        0x17 => RequestProblemInformation(r.u8()?),
        0x18 => WillDelayInterval(r.u32()?),
        0x19 => RequestResponseInformation(r.u8()?),
        0x1A => ResponseInformation(r.string()?),
        0x1C => ServerReference(r.string()?),
        0x1F => ReasonString(r.string()?),
        0x21 => ReceiveMaximum(r.u16()?),
        0x22 => TopicAliasMaximum(r.u16()?),
        0x23 => TopicAlias(r.u16()?),
        0x24 => MaximumQoS(r.u8()?),
        0x25 => RetainAvailable(r.u8()?),
        0x26 => UserProperty(r.string()?, r.string()?),
        0x27 => MaximumPacketSize(r.u32()?),
        0x28 => WildcardSubscriptionAvailable(r.u8()?),
        0x29 => SubscriptionIdentifierAvailable(r.u8()?),
        0x2A => SharedSubscriptionAvailable(r.u8()?),
        other => return Err(DecodeError::UnknownProperty(other)),
    })
}

/// Range rules; each violation is a Protocol Error (Topic Alias 0 has its own reason code).
fn check_value(property: &Property) -> Result<(), DecodeError> {
    use Property::*;
    let invalid = |value: u32| DecodeError::InvalidPropertyValue {
        property: property.id(),
        value,
    };
    match *property {
        PayloadFormatIndicator(v)
        | RequestProblemInformation(v)
        | RequestResponseInformation(v)
        | MaximumQoS(v)
        | RetainAvailable(v)
        | WildcardSubscriptionAvailable(v)
        | SubscriptionIdentifierAvailable(v)
        | SharedSubscriptionAvailable(v)
            if v > 1 =>
        {
            Err(invalid(v.into()))
        }
        ReceiveMaximum(0) => Err(invalid(0)),
        MaximumPacketSize(0) | SubscriptionIdentifier(0) => Err(invalid(0)),
        TopicAlias(0) => Err(DecodeError::TopicAliasZero),
        _ => Ok(()),
    }
}
