//! MQTT control packets as typed values, shared by MQTT 3.1.1 (OASIS, protocol level 4) and
//! MQTT 5.0 (OASIS, protocol level 5).
//!
//! One set of types serves both versions: a 3.1.1 packet is a 5.0 packet with no properties and
//! reason codes restricted to what 3.1.1 can express. The encoder maps reason codes down to 3.1.1
//! return codes where the wire format differs (CONNACK, SUBACK).

use bytes::Bytes;
use bytestring::ByteString;

/// Protocol level negotiated by CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }
}

/// Quality of service of a PUBLISH or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a two-bit value, `None` for 3 (reserved, a malformed packet).
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5 reason codes used by the broker (section 2.4). 3.1.1 return codes are derived from
/// these by the encoder.
pub mod reason {
    /// Success / Normal disconnection / Granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// Granted QoS 1.
    pub const GRANTED_QOS_1: u8 = 0x01;
    /// Granted QoS 2.
    pub const GRANTED_QOS_2: u8 = 0x02;
    /// Disconnect with Will Message.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// No matching subscribers.
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// No subscription existed.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Continue authentication.
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// Malformed Packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol Error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    /// Unsupported Protocol Version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// Client Identifier not valid.
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    /// Bad User Name or Password.
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Server busy.
    pub const SERVER_BUSY: u8 = 0x89;
    /// Server shutting down.
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// Keep Alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic Name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet Identifier in use.
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    /// Packet Identifier not found.
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    /// Receive Maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic Alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// Retain not supported.
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Shared Subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// Subscription Identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    /// Wildcard Subscriptions not supported.
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
}

/// One MQTT 5 property (section 2.2.2.2). The numeric identifier is [`Property::id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    /// 0x01, byte.
    PayloadFormatIndicator(u8),
    /// 0x02, four-byte integer.
    MessageExpiryInterval(u32),
    /// 0x03, UTF-8 string.
    ContentType(ByteString),
    /// 0x08, UTF-8 string.
    ResponseTopic(ByteString),
    /// 0x09, binary data.
    CorrelationData(Bytes),
    /// 0x0B, variable byte integer (1 to 268,435,455).
    SubscriptionIdentifier(u32),
    /// 0x11, four-byte integer.
    SessionExpiryInterval(u32),
    /// 0x12, UTF-8 string.
    AssignedClientIdentifier(ByteString),
    /// 0x13, two-byte integer.
    ServerKeepAlive(u16),
    /// 0x15, UTF-8 string.
    AuthenticationMethod(ByteString),
    /// 0x16, binary data.
    AuthenticationData(Bytes),
    /// 0x17, byte (0 or 1).
    RequestProblemInformation(u8),
    /// 0x18, four-byte integer.
    WillDelayInterval(u32),
    /// 0x19, byte (0 or 1).
    RequestResponseInformation(u8),
    /// 0x1A, UTF-8 string.
    ResponseInformation(ByteString),
    /// 0x1C, UTF-8 string.
    ServerReference(ByteString),
    /// 0x1F, UTF-8 string.
    ReasonString(ByteString),
    /// 0x21, two-byte integer (not 0).
    ReceiveMaximum(u16),
    /// 0x22, two-byte integer.
    TopicAliasMaximum(u16),
    /// 0x23, two-byte integer (not 0).
    TopicAlias(u16),
    /// 0x24, byte (0 or 1).
    MaximumQoS(u8),
    /// 0x25, byte (0 or 1).
    RetainAvailable(u8),
    /// 0x26, UTF-8 string pair; may appear more than once, order preserved.
    UserProperty(ByteString, ByteString),
    /// 0x27, four-byte integer (not 0).
    MaximumPacketSize(u32),
    /// 0x28, byte (0 or 1).
    WildcardSubscriptionAvailable(u8),
    /// 0x29, byte (0 or 1).
    SubscriptionIdentifierAvailable(u8),
    /// 0x2A, byte (0 or 1).
    SharedSubscriptionAvailable(u8),
}

impl Property {
    /// The property identifier on the wire.
    pub fn id(&self) -> u8 {
        match self {
            Property::PayloadFormatIndicator(_) => 0x01,
            Property::MessageExpiryInterval(_) => 0x02,
            Property::ContentType(_) => 0x03,
            Property::ResponseTopic(_) => 0x08,
            Property::CorrelationData(_) => 0x09,
            Property::SubscriptionIdentifier(_) => 0x0B,
            Property::SessionExpiryInterval(_) => 0x11,
            Property::AssignedClientIdentifier(_) => 0x12,
            Property::ServerKeepAlive(_) => 0x13,
            Property::AuthenticationMethod(_) => 0x15,
            Property::AuthenticationData(_) => 0x16,
            Property::RequestProblemInformation(_) => 0x17,
            Property::WillDelayInterval(_) => 0x18,
            Property::RequestResponseInformation(_) => 0x19,
            Property::ResponseInformation(_) => 0x1A,
            Property::ServerReference(_) => 0x1C,
            Property::ReasonString(_) => 0x1F,
            Property::ReceiveMaximum(_) => 0x21,
            Property::TopicAliasMaximum(_) => 0x22,
            Property::TopicAlias(_) => 0x23,
            Property::MaximumQoS(_) => 0x24,
            Property::RetainAvailable(_) => 0x25,
            Property::UserProperty(_, _) => 0x26,
            Property::MaximumPacketSize(_) => 0x27,
            Property::WildcardSubscriptionAvailable(_) => 0x28,
            Property::SubscriptionIdentifierAvailable(_) => 0x29,
            Property::SharedSubscriptionAvailable(_) => 0x2A,
        }
    }
}

/// The properties of one packet, in wire order. Empty (and allocation-free) for MQTT 3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<Property>);

fn own_str(s: &ByteString) -> ByteString {
    ByteString::from(&**s)
}

fn own_bytes(b: &Bytes) -> Bytes {
    Bytes::copy_from_slice(b)
}

impl Property {
    /// The same property with its strings and binary data in allocations of their own.
    pub fn detached(&self) -> Property {
        match self {
            Property::ContentType(s) => Property::ContentType(own_str(s)),
            Property::ResponseTopic(s) => Property::ResponseTopic(own_str(s)),
            Property::CorrelationData(b) => Property::CorrelationData(own_bytes(b)),
            Property::AssignedClientIdentifier(s) => Property::AssignedClientIdentifier(own_str(s)),
            Property::AuthenticationMethod(s) => Property::AuthenticationMethod(own_str(s)),
            Property::AuthenticationData(b) => Property::AuthenticationData(own_bytes(b)),
            Property::ResponseInformation(s) => Property::ResponseInformation(own_str(s)),
            Property::ServerReference(s) => Property::ServerReference(own_str(s)),
            Property::ReasonString(s) => Property::ReasonString(own_str(s)),
            Property::UserProperty(k, v) => Property::UserProperty(own_str(k), own_str(v)),
            other => other.clone(),
        }
    }
}

impl Properties {
    /// Copies every string and binary value out of the buffer it was decoded from, for
    /// values kept long (sessions, retained messages): a small slice would otherwise keep a
    /// whole read buffer alive.
    pub fn detached(&self) -> Properties {
        Properties(self.0.iter().map(Property::detached).collect())
    }

    /// No properties.
    pub const fn new() -> Self {
        Properties(Vec::new())
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends one property.
    pub fn push(&mut self, property: Property) {
        self.0.push(property);
    }

    /// The first property that `pick` selects.
    pub fn find<T>(&self, pick: impl FnMut(&Property) -> Option<T>) -> Option<T> {
        self.0.iter().find_map(pick)
    }

    /// Removes every property that `drop` selects.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&Property) -> bool) {
        self.0.retain(|p| !drop(p));
    }

    /// Session Expiry Interval, seconds.
    pub fn session_expiry_interval(&self) -> Option<u32> {
        self.find(|p| match p {
            Property::SessionExpiryInterval(v) => Some(*v),
            _ => None,
        })
    }

    /// Receive Maximum.
    pub fn receive_maximum(&self) -> Option<u16> {
        self.find(|p| match p {
            Property::ReceiveMaximum(v) => Some(*v),
            _ => None,
        })
    }

    /// Maximum Packet Size.
    pub fn maximum_packet_size(&self) -> Option<u32> {
        self.find(|p| match p {
            Property::MaximumPacketSize(v) => Some(*v),
            _ => None,
        })
    }

    /// Topic Alias Maximum.
    pub fn topic_alias_maximum(&self) -> Option<u16> {
        self.find(|p| match p {
            Property::TopicAliasMaximum(v) => Some(*v),
            _ => None,
        })
    }

    /// Topic Alias.
    pub fn topic_alias(&self) -> Option<u16> {
        self.find(|p| match p {
            Property::TopicAlias(v) => Some(*v),
            _ => None,
        })
    }

    /// Message Expiry Interval, seconds.
    pub fn message_expiry_interval(&self) -> Option<u32> {
        self.find(|p| match p {
            Property::MessageExpiryInterval(v) => Some(*v),
            _ => None,
        })
    }

    /// Will Delay Interval, seconds.
    pub fn will_delay_interval(&self) -> Option<u32> {
        self.find(|p| match p {
            Property::WillDelayInterval(v) => Some(*v),
            _ => None,
        })
    }

    /// Subscription Identifier of a SUBSCRIBE.
    pub fn subscription_identifier(&self) -> Option<u32> {
        self.find(|p| match p {
            Property::SubscriptionIdentifier(v) => Some(*v),
            _ => None,
        })
    }
}

/// CONNECT (section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level from the variable header.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// Client Identifier; may be empty.
    pub client_id: ByteString,
    /// The Will Message, when the Will Flag is set.
    pub will: Option<LastWill>,
    /// User Name, when its flag is set.
    pub username: Option<ByteString>,
    /// Password, when its flag is set.
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: Properties,
}

/// A Will Message carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Will Topic (a valid topic name).
    pub topic: ByteString,
    /// Will Payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will Retain.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: Properties,
}

impl Connect {
    /// This CONNECT with every string and binary value in allocations of its own.
    pub fn detached(&self) -> Connect {
        Connect {
            protocol: self.protocol,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            client_id: own_str(&self.client_id),
            will: self.will.as_ref().map(|w| LastWill {
                topic: own_str(&w.topic),
                payload: own_bytes(&w.payload),
                qos: w.qos,
                retain: w.retain,
                properties: w.properties.detached(),
            }),
            username: self.username.as_ref().map(own_str),
            password: self.password.as_ref().map(own_bytes),
            properties: self.properties.detached(),
        }
    }
}

/// CONNACK (section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// A reason code from [`reason`]; the encoder maps it to a 3.1.1 return code for level 4.
    pub code: u8,
    /// CONNACK properties (5.0).
    pub properties: Properties,
}

/// PUBLISH (section 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic Name. May be empty in 5.0 when a Topic Alias stands for it.
    pub topic: ByteString,
    /// Packet Identifier; 0 for QoS 0 (not on the wire).
    pub pkid: u16,
    /// Application payload.
    pub payload: Bytes,
    /// PUBLISH properties (5.0).
    pub properties: Properties,
}

impl Publish {
    /// This PUBLISH with topic, payload and properties in allocations of their own (for
    /// retained messages, which live long).
    pub fn detached(&self) -> Publish {
        Publish {
            topic: own_str(&self.topic),
            payload: own_bytes(&self.payload),
            properties: self.properties.detached(),
            ..*self
        }
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4 to 3.7) share this shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    /// Packet Identifier.
    pub pkid: u16,
    /// Reason code (5.0); always [`reason::SUCCESS`] in 3.1.1.
    pub reason: u8,
    /// Properties (5.0).
    pub properties: Properties,
}

impl PubResponse {
    /// A successful response without properties.
    pub fn new(pkid: u16) -> Self {
        PubResponse {
            pkid,
            reason: reason::SUCCESS,
            properties: Properties::new(),
        }
    }
}

/// Retain Handling subscription option (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAlways = 0,
    /// Send retained messages only if the subscription did not exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// Options of one subscription (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// No Local (5.0).
    pub no_local: bool,
    /// Retain As Published (5.0).
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options as 3.1.1 knows them: a QoS and defaults for the rest.
    pub fn with_qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAlways,
        }
    }
}

/// SUBSCRIBE (section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet Identifier.
    pub pkid: u16,
    /// Topic filters with their options, at least one.
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
    /// Properties (5.0).
    pub properties: Properties,
}

/// SUBACK (section 3.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet Identifier.
    pub pkid: u16,
    /// One reason code per filter, from [`reason`] (0x00 to 0x02 grant a QoS). The encoder
    /// writes any failure as 0x80 for 3.1.1.
    pub codes: Vec<u8>,
    /// Properties (5.0).
    pub properties: Properties,
}

/// UNSUBSCRIBE (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet Identifier.
    pub pkid: u16,
    /// Topic filters, at least one.
    pub filters: Vec<ByteString>,
    /// Properties (5.0).
    pub properties: Properties,
}

/// UNSUBACK (section 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet Identifier.
    pub pkid: u16,
    /// One reason code per filter (5.0 only; not on the wire for 3.1.1).
    pub codes: Vec<u8>,
    /// Properties (5.0).
    pub properties: Properties,
}

/// DISCONNECT (section 3.14). Sent by clients in both versions, by the server only in 5.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (5.0).
    pub reason: u8,
    /// Properties (5.0).
    pub properties: Properties,
}

/// AUTH (section 3.15, 5.0 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Reason code.
    pub reason: u8,
    /// Properties.
    pub properties: Properties,
}

/// Any MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubResponse),
    /// PUBREC.
    PubRec(PubResponse),
    /// PUBREL.
    PubRel(PubResponse),
    /// PUBCOMP.
    PubComp(PubResponse),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH.
    Auth(Auth),
}

impl Packet {
    /// The packet's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}
