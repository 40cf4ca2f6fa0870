//! The two protocol versions of rumqttc behind one small surface: MQTT 5 (`rumqttc::v5`) and
//! the 3.1.1 fallback (`rumqttc`), each as a request handle (cheap to clone) and an event
//! loop, with their events reduced to what the worker needs.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode as ConnectReturnCode5, Filter, Packet as Packet5, PublishProperties,
    RetainForwardRule,
};

use super::config::ORIGIN_PROPERTY;
use crate::broker::codec::{Properties, Property, QoS};

/// Which protocol the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5, falling back to 3.1.1 when the broker does not speak 5.
    Auto,
    /// MQTT 5 only.
    V5,
    /// MQTT 3.1.1 only (no No Local, no User Properties: see the README).
    V311,
}

fn q5(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn q4(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn from5(qos: v5::mqttbytes::QoS) -> QoS {
    match qos {
        v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn from4(qos: rumqttc::QoS) -> QoS {
    match qos {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The request side of a connection.
#[derive(Clone)]
pub(super) enum Handle {
    V5(v5::AsyncClient),
    V4(rumqttc::AsyncClient),
}

/// The request channel is closed (the worker stopped).
#[derive(Debug)]
pub(super) struct Closed;

impl Handle {
    pub(super) async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        origin: &str,
        extra: &Properties,
    ) -> Result<(), Closed> {
        match self {
            Handle::V5(c) => {
                let mut properties = PublishProperties {
                    user_properties: vec![(ORIGIN_PROPERTY.to_string(), origin.to_string())],
                    ..PublishProperties::default()
                };
                // What the bridge adds (ids, correlation data of a receipt) goes along.
                for p in &extra.0 {
                    match p {
                        Property::UserProperty(k, v) => {
                            properties
                                .user_properties
                                .push((k.to_string(), v.to_string()));
                        }
                        Property::CorrelationData(c) => {
                            properties.correlation_data = Some(c.clone())
                        }
                        _ => {}
                    }
                }
                c.publish_with_properties(topic, q5(qos), retain, payload, properties)
                    .await
                    .map_err(|_| Closed)
            }
            Handle::V4(c) => c
                .publish_bytes(topic, q4(qos), retain, payload)
                .await
                .map_err(|_| Closed),
        }
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) for `pkid`.
    pub(super) async fn ack(&self, qos: QoS, pkid: u16) -> Result<(), Closed> {
        match self {
            Handle::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new("", q5(qos), Vec::new(), None);
                p.pkid = pkid;
                c.ack(&p).await.map_err(|_| Closed)
            }
            Handle::V4(c) => {
                let mut p = rumqttc::Publish::new("", q4(qos), Vec::new());
                p.pkid = pkid;
                c.ack(&p).await.map_err(|_| Closed)
            }
        }
    }

    /// Like [`Self::ack`] without waiting (from the worker, which must not block its loop).
    pub(super) fn try_ack(&self, qos: QoS, pkid: u16) -> Result<(), Closed> {
        match self {
            Handle::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new("", q5(qos), Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|_| Closed)
            }
            Handle::V4(c) => {
                let mut p = rumqttc::Publish::new("", q4(qos), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|_| Closed)
            }
        }
    }

    /// Subscribes without waiting: No Local and no retained messages on MQTT 5 (3.1.1 has
    /// neither option).
    pub(super) fn try_subscribe(&self, filters: &[(String, QoS)]) -> Result<(), Closed> {
        match self {
            Handle::V5(c) => {
                let list: Vec<Filter> = filters
                    .iter()
                    .map(|(path, qos)| Filter {
                        path: path.clone(),
                        qos: q5(*qos),
                        nolocal: true,
                        preserve_retain: false,
                        retain_forward_rule: RetainForwardRule::Never,
                    })
                    .collect();
                c.try_subscribe_many(list).map_err(|_| Closed)
            }
            Handle::V4(c) => {
                let list: Vec<rumqttc::SubscribeFilter> = filters
                    .iter()
                    .map(|(path, qos)| rumqttc::SubscribeFilter::new(path.clone(), q4(*qos)))
                    .collect();
                c.try_subscribe_many(list).map_err(|_| Closed)
            }
        }
    }

    pub(super) fn try_disconnect(&self) -> Result<(), Closed> {
        match self {
            Handle::V5(c) => c.try_disconnect().map_err(|_| Closed),
            Handle::V4(c) => c.try_disconnect().map_err(|_| Closed),
        }
    }
}

/// A message from the broker.
pub(super) struct Message {
    pub(super) topic: Bytes,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) dup: bool,
    pub(super) pkid: u16,
    pub(super) payload: Bytes,
    /// The value of the origin User Property, if any (MQTT 5 only).
    pub(super) origin: Option<String>,
    /// MQTT 5 Response Topic, Correlation Data and the other User Properties (for receipts
    /// and message ids).
    pub(super) properties: Properties,
}

/// What the worker reacts to.
pub(super) enum Incoming {
    ConnAck {
        session_present: bool,
    },
    Publish(Message),
    /// Reason codes of refused filters (empty when all were granted).
    SubAck {
        refused: Vec<String>,
    },
    Disconnect(String),
    /// Our DISCONNECT went out.
    DisconnectSent,
    Other,
}

/// A failed connection attempt or a lost connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error(transparent)]
    V5(v5::ConnectionError),
    #[error(transparent)]
    V4(rumqttc::ConnectionError),
}

impl ConnError {
    /// The broker answered CONNECT with a refusal (bad credentials, not authorized, ...).
    pub(super) fn refused(&self) -> bool {
        matches!(
            self,
            ConnError::V5(v5::ConnectionError::ConnectionRefused(_))
                | ConnError::V4(rumqttc::ConnectionError::ConnectionRefused(_))
        )
    }

    /// Whether a first MQTT 5 attempt failed in a way a 3.1.1-only broker fails it: CONNACK
    /// "unsupported protocol version", a CONNACK that does not decode as MQTT 5, or the
    /// connection closed before any CONNACK.
    pub(super) fn suggests_v311(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            ConnError::V5(v5::ConnectionError::ConnectionRefused(code)) => {
                *code == ConnectReturnCode5::UnsupportedProtocolVersion
            }
            ConnError::V5(v5::ConnectionError::MqttState(_))
            | ConnError::V5(v5::ConnectionError::NotConnAck(_)) => true,
            ConnError::V5(v5::ConnectionError::Io(e)) => matches!(
                e.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// The event side of a connection.
pub(super) enum Loop {
    V5(Box<v5::EventLoop>),
    V4(Box<rumqttc::EventLoop>),
}

impl Loop {
    pub(super) async fn poll(&mut self) -> Result<Incoming, ConnError> {
        match self {
            Loop::V5(l) => match l.poll().await.map_err(ConnError::V5)? {
                v5::Event::Incoming(p) => Ok(incoming5(p)),
                v5::Event::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Incoming::DisconnectSent),
                v5::Event::Outgoing(_) => Ok(Incoming::Other),
            },
            Loop::V4(l) => match l.poll().await.map_err(ConnError::V4)? {
                rumqttc::Event::Incoming(p) => Ok(incoming4(p)),
                rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect) => {
                    Ok(Incoming::DisconnectSent)
                }
                rumqttc::Event::Outgoing(_) => Ok(Incoming::Other),
            },
        }
    }

    /// Drops the network connection (if any); the next poll connects again. Unacknowledged
    /// publishes and queued requests stay and are sent on the next connection.
    pub(super) fn reset(&mut self) {
        match self {
            Loop::V5(l) => l.clean(),
            Loop::V4(l) => l.clean(),
        }
    }

    /// The publishes still waiting in this loop (its channel and its unacknowledged state):
    /// moved to the 3.1.1 client when falling back, so nothing the bridge published is lost.
    pub(super) fn take_publishes(&mut self) -> Vec<(String, QoS, bool, Bytes)> {
        let Loop::V5(l) = self else {
            return Vec::new();
        };
        l.clean();
        l.pending
            .drain(..)
            .filter_map(|r| match r {
                v5::Request::Publish(p) => Some((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    from5(p.qos),
                    p.retain,
                    p.payload,
                )),
                _ => None,
            })
            .collect()
    }
}

/// The properties of an upstream delivery the bridge uses: Response Topic, Correlation Data,
/// User Properties other than the origin.
fn kept_properties(props: rumqttc::v5::mqttbytes::v5::PublishProperties) -> Properties {
    let mut out = Properties::new();
    if let Some(t) = props.response_topic {
        out.push(Property::ResponseTopic(t.into()));
    }
    if let Some(c) = props.correlation_data {
        out.push(Property::CorrelationData(c));
    }
    for (k, v) in props.user_properties {
        if k != ORIGIN_PROPERTY {
            out.push(Property::UserProperty(k.into(), v.into()));
        }
    }
    out
}

fn incoming5(p: Packet5) -> Incoming {
    match p {
        Packet5::ConnAck(ack) if ack.code == ConnectReturnCode5::Success => Incoming::ConnAck {
            session_present: ack.session_present,
        },
        Packet5::Publish(p) => {
            let origin = p.properties.as_ref().and_then(|props| {
                props
                    .user_properties
                    .iter()
                    .find(|(k, _)| k == ORIGIN_PROPERTY)
                    .map(|(_, v)| v.clone())
            });
            let properties = p.properties.map(kept_properties).unwrap_or_default();
            Incoming::Publish(Message {
                topic: p.topic,
                qos: from5(p.qos),
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                payload: p.payload,
                origin,
                properties,
            })
        }
        Packet5::SubAck(ack) => Incoming::SubAck {
            refused: ack
                .return_codes
                .iter()
                .map(|c| format!("{c:?}"))
                .filter(|c| !c.starts_with("Success"))
                .collect(),
        },
        Packet5::Disconnect(d) => Incoming::Disconnect(format!("{:?}", d.reason_code)),
        _ => Incoming::Other,
    }
}

fn incoming4(p: rumqttc::Packet) -> Incoming {
    match p {
        rumqttc::Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => {
            Incoming::ConnAck {
                session_present: ack.session_present,
            }
        }
        rumqttc::Packet::Publish(p) => Incoming::Publish(Message {
            topic: Bytes::from(p.topic.into_bytes()),
            qos: from4(p.qos),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            payload: p.payload,
            origin: None,
            properties: Properties::new(),
        }),
        rumqttc::Packet::SubAck(ack) => Incoming::SubAck {
            refused: ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                .map(|c| format!("{c:?}"))
                .collect(),
        },
        _ => Incoming::Other,
    }
}

/// MQTT 3.1.1 has no No Local: what the bridge published comes back to it when its
/// subscriptions cover the topic. This remembers a hash of each (topic, payload) it published
/// for a while, and a delivery with a remembered hash is the bridge's own echo.
#[derive(Debug, Default)]
pub(super) struct Echoes {
    recent: HashMap<u64, u32>,
    order: VecDeque<(Instant, u64)>,
}

/// How long a publish is remembered.
const ECHO_TTL: Duration = Duration::from_secs(60);
/// How many publishes are remembered at most.
const ECHO_MAX: usize = 100_000;

fn echo_key(topic: &[u8], payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl Echoes {
    pub(super) fn published(&mut self, topic: &[u8], payload: &[u8], now: Instant) {
        self.expire(now);
        let key = echo_key(topic, payload);
        *self.recent.entry(key).or_insert(0) += 1;
        self.order.push_back((now, key));
    }

    /// True (and forgotten) when this delivery is one of our publishes.
    pub(super) fn is_echo(&mut self, topic: &[u8], payload: &[u8], now: Instant) -> bool {
        self.expire(now);
        let key = echo_key(topic, payload);
        match self.recent.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.recent.remove(&key);
                true
            }
            None => false,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if now.duration_since(at) < ECHO_TTL && self.order.len() <= ECHO_MAX {
                break;
            }
            self.order.pop_front();
            if let Some(n) = self.recent.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.recent.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_recognised_once_each_and_expire() {
        let t0 = Instant::now();
        let mut e = Echoes::default();
        e.published(b"a", b"x", t0);
        e.published(b"a", b"x", t0);
        assert!(!e.is_echo(b"a", b"y", t0));
        assert!(!e.is_echo(b"b", b"x", t0));
        assert!(e.is_echo(b"a", b"x", t0));
        assert!(e.is_echo(b"a", b"x", t0));
        assert!(!e.is_echo(b"a", b"x", t0));
        e.published(b"a", b"x", t0);
        assert!(!e.is_echo(b"a", b"x", t0 + ECHO_TTL + Duration::from_secs(1)));
        assert!(e.recent.is_empty());
    }

    #[test]
    fn what_suggests_a_311_broker() {
        let io = |kind| ConnError::V5(v5::ConnectionError::Io(std::io::Error::from(kind)));
        assert!(io(std::io::ErrorKind::UnexpectedEof).suggests_v311());
        assert!(io(std::io::ErrorKind::ConnectionReset).suggests_v311());
        assert!(!io(std::io::ErrorKind::ConnectionRefused).suggests_v311());
        let refused = |c| ConnError::V5(v5::ConnectionError::ConnectionRefused(c));
        assert!(refused(ConnectReturnCode5::UnsupportedProtocolVersion).suggests_v311());
        assert!(!refused(ConnectReturnCode5::BadUserNamePassword).suggests_v311());
        assert!(refused(ConnectReturnCode5::NotAuthorized).refused());
        let v4 = ConnError::V4(rumqttc::ConnectionError::Io(std::io::Error::from(
            std::io::ErrorKind::UnexpectedEof,
        )));
        assert!(!v4.suggests_v311());
    }
}
