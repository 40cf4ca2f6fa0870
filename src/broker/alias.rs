//! MQTT 5 Topic Aliases (section 3.3.2.3.4), one map per direction of one connection, sans-IO.
//!
//! - [`InboundAliases`]: what the client set up, within the broker's Topic Alias Maximum. A
//!   PUBLISH with an alias and a topic sets the alias; one with an alias and an empty topic
//!   uses it. The alias never leaves the connection: the router sees the full topic.
//! - [`OutboundAliases`]: what the broker sets up toward the client, within the client's Topic
//!   Alias Maximum. The first PUBLISH on a topic carries topic and a new alias; later ones
//!   carry only the alias. When every alias is taken, new topics go without one (no
//!   replacement: a stable set keeps the state small and the outcome predictable).

use std::collections::HashMap;

use bytestring::ByteString;

use super::codec::{Property, Publish, reason};

/// Why an inbound alias was refused; the connection ends with DISCONNECT and this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AliasError {
    /// MQTT 5 reason code.
    pub reason: u8,
    /// For the log and the DISCONNECT reason string.
    pub why: &'static str,
}

/// Client-to-broker aliases of one connection.
#[derive(Debug, Default)]
pub struct InboundAliases {
    /// Index `alias - 1`; grows on demand up to the maximum.
    topics: Vec<Option<ByteString>>,
    max: u16,
}

impl InboundAliases {
    /// Aliases 1 to `max` are accepted.
    pub fn new(max: u16) -> Self {
        InboundAliases {
            topics: Vec::new(),
            max,
        }
    }

    /// Applies the Topic Alias of `publish`, if any: records it, or fills in the topic it
    /// stands for, and removes the property.
    pub fn resolve(&mut self, publish: &mut Publish) -> Result<(), AliasError> {
        let Some(alias) = publish.properties.topic_alias() else {
            return Ok(());
        };
        if alias == 0 || alias > self.max {
            return Err(AliasError {
                reason: reason::TOPIC_ALIAS_INVALID,
                why: "Topic Alias above the Topic Alias Maximum [MQTT-3.3.2-9]",
            });
        }
        let slot = usize::from(alias - 1);
        if publish.topic.is_empty() {
            match self.topics.get(slot) {
                Some(Some(topic)) => publish.topic = topic.clone(),
                _ => {
                    return Err(AliasError {
                        reason: reason::PROTOCOL_ERROR,
                        why: "Topic Alias that was never set [5.0 §3.3.2.3.4]",
                    });
                }
            }
        } else {
            if self.topics.len() <= slot {
                self.topics.resize(slot + 1, None);
            }
            // Own copy: the topic is a slice of a read buffer the alias would otherwise pin.
            self.topics[slot] = Some(ByteString::from(&*publish.topic));
        }
        publish
            .properties
            .remove_where(|p| matches!(p, Property::TopicAlias(_)));
        Ok(())
    }
}

/// Broker-to-client aliases of one connection.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    by_topic: HashMap<ByteString, u16>,
    max: u16,
}

impl OutboundAliases {
    /// Aliases 1 to `max` may be used (the client's Topic Alias Maximum; 0: none).
    pub fn new(max: u16) -> Self {
        OutboundAliases {
            by_topic: HashMap::new(),
            max,
        }
    }

    /// Rewrites `publish` to use an alias when one exists or can be made. `room` is how many
    /// bytes the packet may still grow by (the client's Maximum Packet Size): a new alias adds
    /// three bytes and is not made without room.
    pub fn apply(&mut self, publish: &mut Publish, room: usize) {
        if self.max == 0 || publish.topic.is_empty() {
            return;
        }
        if let Some(&alias) = self.by_topic.get(&publish.topic) {
            // Two-byte topic length stays; the topic goes, three bytes of alias come.
            if publish.topic.len() + room >= 3 {
                publish.topic = ByteString::new();
                publish.properties.push(Property::TopicAlias(alias));
            }
            return;
        }
        let next = self.by_topic.len();
        if next >= usize::from(self.max) || room < 3 {
            return;
        }
        let alias = u16::try_from(next + 1).unwrap_or(u16::MAX);
        self.by_topic
            .insert(ByteString::from(&*publish.topic), alias);
        publish.properties.push(Property::TopicAlias(alias));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::{Properties, QoS};
    use bytes::Bytes;

    fn publish(topic: &'static str, alias: Option<u16>) -> Publish {
        let mut properties = Properties::new();
        if let Some(a) = alias {
            properties.push(Property::TopicAlias(a));
        }
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: ByteString::from_static(topic),
            pkid: 0,
            payload: Bytes::new(),
            properties,
        }
    }

    #[test]
    fn inbound_alias_set_then_used_then_replaced() {
        let mut a = InboundAliases::new(2);
        let mut p = publish("a/b", Some(1));
        a.resolve(&mut p).unwrap();
        assert!(p.properties.is_empty(), "alias removed");
        let mut p = publish("", Some(1));
        a.resolve(&mut p).unwrap();
        assert_eq!(&*p.topic, "a/b");
        let mut p = publish("c", Some(1));
        a.resolve(&mut p).unwrap();
        let mut p = publish("", Some(1));
        a.resolve(&mut p).unwrap();
        assert_eq!(&*p.topic, "c");
        let mut p = publish("plain", None);
        a.resolve(&mut p).unwrap();
        assert_eq!(&*p.topic, "plain");
    }

    #[test]
    fn inbound_alias_errors() {
        let mut a = InboundAliases::new(2);
        let err = a.resolve(&mut publish("x", Some(3))).unwrap_err();
        assert_eq!(err.reason, reason::TOPIC_ALIAS_INVALID);
        let err = a.resolve(&mut publish("", Some(2))).unwrap_err();
        assert_eq!(err.reason, reason::PROTOCOL_ERROR);
        let mut none = InboundAliases::new(0);
        let err = none.resolve(&mut publish("x", Some(1))).unwrap_err();
        assert_eq!(err.reason, reason::TOPIC_ALIAS_INVALID);
    }

    #[test]
    fn outbound_aliases_within_the_clients_maximum() {
        let mut a = OutboundAliases::new(1);
        let mut p = publish("t/1", None);
        a.apply(&mut p, 100);
        assert_eq!((&*p.topic, p.properties.topic_alias()), ("t/1", Some(1)));
        let mut p = publish("t/1", None);
        a.apply(&mut p, 100);
        assert_eq!((&*p.topic, p.properties.topic_alias()), ("", Some(1)));
        let mut p = publish("t/2", None);
        a.apply(&mut p, 100);
        assert_eq!((&*p.topic, p.properties.topic_alias()), ("t/2", None));
        let mut off = OutboundAliases::new(0);
        let mut p = publish("t/1", None);
        off.apply(&mut p, 100);
        assert_eq!(p.properties.topic_alias(), None);
    }

    #[test]
    fn no_new_alias_without_room() {
        let mut a = OutboundAliases::new(5);
        let mut p = publish("t", None);
        a.apply(&mut p, 2);
        assert_eq!(p.properties.topic_alias(), None);
    }
}
