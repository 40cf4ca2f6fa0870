//! Why a byte sequence is not a valid MQTT 3.1.1 (OASIS, 2014) or MQTT 5.0 (OASIS, 2019)
//! control packet.
//!
//! Every variant names the rule it enforces. Clause labels such as `[MQTT-3.3.1-4]` are quoted
//! from the 3.1.1 document unless marked `5.0`; the two documents number many rules differently.
//! [`DecodeError::reason_code`] gives the MQTT 5 reason code to send before closing (DISCONNECT,
//! or CONNACK for errors in CONNECT). An MQTT 3.1.1 server has no such packet and just closes.

use super::reason;

/// A packet that cannot be accepted. Any of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Packet type 0, or 15 (AUTH) on an MQTT 3.1.1 connection.
    #[error("reserved packet type {0} [3.1.1 §2.2.1, 5.0 §2.1.2]")]
    ReservedPacketType(u8),

    /// Fixed header flags other than those the packet type requires.
    #[error("invalid flags {flags:#06b} for packet type {packet_type} [MQTT-2.2.2-2]")]
    InvalidFlags {
        /// Packet type, 1 to 15.
        packet_type: u8,
        /// The low nibble of the first byte.
        flags: u8,
    },

    /// PUBLISH with both QoS bits set.
    #[error("PUBLISH with QoS 3 [MQTT-3.3.1-4]")]
    PublishQoS3,

    /// PUBLISH with DUP set and QoS 0.
    #[error("PUBLISH with DUP set and QoS 0 [MQTT-3.3.1-2]")]
    DupWithQoS0,

    /// A variable byte integer whose fourth byte has the continuation bit set.
    #[error("malformed {field}: more than 4 bytes [MQTT-1.5.5]")]
    VarIntTooLong {
        /// Which field: "remaining length", "property length" or a property name.
        field: &'static str,
    },

    /// The announced packet size is over the limit.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} [5.0 §3.1.2.11.4]")]
    PacketTooLarge {
        /// Fixed header plus remaining length.
        size: usize,
        /// The limit in force.
        max: usize,
    },

    /// A field runs past the end of the packet (or of its property block).
    #[error("{packet}: a field runs past the remaining length [3.1.1 §2.2.3, 5.0 §2.1.4]")]
    Truncated {
        /// Packet name.
        packet: &'static str,
    },

    /// Bytes left over after the last field.
    #[error("{packet}: {extra} bytes past the last field [3.1.1 §2.2.3, 5.0 §2.1.4]")]
    TrailingBytes {
        /// Packet name.
        packet: &'static str,
        /// How many bytes were left.
        extra: usize,
    },

    /// A packet whose remaining length is fixed by the spec has another.
    #[error("{packet}: remaining length must be {expected}, got {actual}")]
    InvalidRemainingLength {
        /// Packet name.
        packet: &'static str,
        /// What the spec requires.
        expected: usize,
        /// What the fixed header says.
        actual: usize,
    },

    /// A UTF-8 string that is not well-formed (including encoded surrogates).
    #[error("ill-formed UTF-8 string [MQTT-1.5.3-1] [5.0 MQTT-1.5.4-1]")]
    InvalidUtf8,

    /// A UTF-8 string containing U+0000.
    #[error("UTF-8 string contains U+0000 [MQTT-1.5.3-2] [5.0 MQTT-1.5.4-2]")]
    NullCharacter,

    /// CONNECT whose protocol name is not "MQTT" (nor "MQIsdp" with level 3). The server closes
    /// without CONNACK.
    #[error("CONNECT protocol name is not \"MQTT\" [MQTT-3.1.2-1]")]
    InvalidProtocolName,

    /// CONNECT with a protocol level other than 4 or 5. The server answers CONNACK 0x01 (3.1.1)
    /// or 0x84 (5.0), then closes.
    #[error("unsupported protocol level {0} [MQTT-3.1.2-2]")]
    UnsupportedProtocolVersion(u8),

    /// CONNECT flags bit 0 set.
    #[error("CONNECT reserved flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,

    /// Will QoS other than 0 without the Will Flag.
    #[error("will QoS is set without the will flag [MQTT-3.1.2-13] [5.0 MQTT-3.1.2-11]")]
    WillQoSWithoutWill,

    /// Will Retain set without the Will Flag.
    #[error("will retain is set without the will flag [MQTT-3.1.2-15] [5.0 MQTT-3.1.2-13]")]
    WillRetainWithoutWill,

    /// Will QoS 3.
    #[error("will QoS 3 [MQTT-3.1.2-14] [5.0 MQTT-3.1.2-12]")]
    WillQoS3,

    /// MQTT 3.1.1 CONNECT with the Password Flag but not the User Name Flag.
    #[error("password flag set without user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,

    /// A topic name (PUBLISH or Will Topic) containing `+` or `#`.
    #[error("topic name contains a wildcard character [MQTT-3.3.2-2]")]
    TopicNameWildcard,

    /// An empty topic name where none may be empty (Will Topic, 3.1.1 PUBLISH).
    #[error("topic name is empty [MQTT-4.7.3-1]")]
    EmptyTopicName,

    /// MQTT 5 PUBLISH with an empty topic name and no Topic Alias.
    #[error("PUBLISH with an empty topic name and no topic alias [5.0 §3.3.2.1]")]
    EmptyTopicWithoutAlias,

    /// Topic Alias property with the value 0.
    #[error("topic alias 0 [5.0 MQTT-3.3.2-8, §3.3.4]")]
    TopicAliasZero,

    /// Packet identifier 0 in SUBSCRIBE, UNSUBSCRIBE or PUBLISH with QoS > 0.
    #[error("{packet} with packet identifier 0 [MQTT-2.3.1-1] [5.0 MQTT-2.2.1-3]")]
    ZeroPacketId {
        /// Packet name.
        packet: &'static str,
    },

    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    #[error("{packet} without topic filters [MQTT-3.8.3-3] [MQTT-3.10.3-2] [5.0 MQTT-3.8.3-2]")]
    NoTopicFilters {
        /// Packet name.
        packet: &'static str,
    },

    /// An empty topic filter.
    #[error("topic filter is empty [MQTT-4.7.3-1]")]
    EmptyTopicFilter,

    /// Subscription options with reserved bits set (bits 2-7 in 3.1.1, 6-7 in 5.0).
    #[error(
        "subscription options {0:#010b} have reserved bits set [MQTT-3-8.3-4] [5.0 MQTT-3.8.3-5]"
    )]
    InvalidSubscriptionOptions(u8),

    /// Subscription options with Maximum QoS 3 (malformed in 3.1.1, protocol error in 5.0).
    #[error("subscription options request QoS 3 [MQTT-3-8.3-4] [5.0 §3.8.3.1]")]
    SubscriptionQoS3,

    /// Subscription options with Retain Handling 3.
    #[error("subscription options with retain handling 3 [5.0 §3.8.3.1]")]
    InvalidRetainHandling,

    /// A property identifier this version does not define.
    #[error("unknown property identifier {0:#04x} [5.0 §2.2.2.2]")]
    UnknownProperty(u8),

    /// A property that this packet (or the will properties) cannot carry.
    #[error("property {property:#04x} is not allowed in {packet} [5.0 §2.2.2.2]")]
    PropertyNotAllowed {
        /// Property identifier.
        property: u8,
        /// Packet name, or "will properties".
        packet: &'static str,
    },

    /// A property that may appear once appears again.
    #[error("property {0:#04x} appears more than once [5.0 §2.2.2.2]")]
    DuplicateProperty(u8),

    /// A property value outside its allowed range.
    #[error("property {property:#04x} has the invalid value {value} [5.0 §2.2.2.2]")]
    InvalidPropertyValue {
        /// Property identifier.
        property: u8,
        /// The value received.
        value: u32,
    },

    /// Authentication Data without Authentication Method.
    #[error("authentication data without authentication method [5.0 §3.1.2.11.10]")]
    AuthDataWithoutMethod,

    /// CONNACK acknowledge flags with reserved bits set.
    #[error("CONNACK flags {0:#010b} have reserved bits set [MQTT-3.2.2-1]")]
    InvalidConnAckFlags(u8),

    /// MQTT 3.1.1 CONNACK return code above 5.
    #[error("reserved CONNACK return code {0} [3.1.1 §3.2.2.3]")]
    InvalidConnAckCode(u8),

    /// MQTT 3.1.1 SUBACK return code other than 0, 1, 2 or 0x80.
    #[error("reserved SUBACK return code {0:#04x} [MQTT-3.9.3-2]")]
    InvalidSubAckCode(u8),
}

impl DecodeError {
    /// The MQTT 5 reason code for the DISCONNECT (or CONNACK) the server sends before closing.
    pub fn reason_code(&self) -> u8 {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            UnsupportedProtocolVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            TopicNameWildcard | EmptyTopicName => reason::TOPIC_NAME_INVALID,
            TopicAliasZero => reason::TOPIC_ALIAS_INVALID,
            EmptyTopicWithoutAlias
            | ZeroPacketId { .. }
            | NoTopicFilters { .. }
            | EmptyTopicFilter
            | SubscriptionQoS3
            | InvalidRetainHandling
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | AuthDataWithoutMethod => reason::PROTOCOL_ERROR,
            ReservedPacketType(_)
            | InvalidFlags { .. }
            | PublishQoS3
            | DupWithQoS0
            | VarIntTooLong { .. }
            | Truncated { .. }
            | TrailingBytes { .. }
            | InvalidRemainingLength { .. }
            | InvalidUtf8
            | NullCharacter
            | InvalidProtocolName
            | ConnectReservedFlag
            | WillQoSWithoutWill
            | WillRetainWithoutWill
            | WillQoS3
            | PasswordWithoutUsername
            | InvalidSubscriptionOptions(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidConnAckFlags(_)
            | InvalidConnAckCode(_)
            | InvalidSubAckCode(_) => reason::MALFORMED_PACKET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_clause() {
        let e = DecodeError::VarIntTooLong {
            field: "remaining length",
        };
        assert_eq!(
            e.to_string(),
            "malformed remaining length: more than 4 bytes [MQTT-1.5.5]"
        );
        let e = DecodeError::InvalidFlags {
            packet_type: 8,
            flags: 0,
        };
        assert_eq!(
            e.to_string(),
            "invalid flags 0b0000 for packet type 8 [MQTT-2.2.2-2]"
        );
        let e = DecodeError::PacketTooLarge {
            size: 300,
            max: 256,
        };
        assert!(e.to_string().contains("300"));
        let e = DecodeError::PropertyNotAllowed {
            property: 0x23,
            packet: "CONNECT",
        };
        assert_eq!(
            e.to_string(),
            "property 0x23 is not allowed in CONNECT [5.0 §2.2.2.2]"
        );
    }

    #[test]
    fn reason_code_classes() {
        assert_eq!(DecodeError::PublishQoS3.reason_code(), 0x81);
        assert_eq!(DecodeError::DuplicateProperty(0x01).reason_code(), 0x82);
        assert_eq!(
            DecodeError::PacketTooLarge { size: 2, max: 1 }.reason_code(),
            0x95
        );
        assert_eq!(DecodeError::TopicNameWildcard.reason_code(), 0x90);
        assert_eq!(
            DecodeError::UnsupportedProtocolVersion(3).reason_code(),
            0x84
        );
        assert_eq!(DecodeError::TopicAliasZero.reason_code(), 0x94);
    }
}
