//! What upstream mode needs from the rules: on an external broker the bridge does not learn
//! who published a message, so the sender must be bound to a topic level (which the broker's
//! ACL guards), and each subscription's QoS comes from its rules.

use super::escape::unescape;
use super::pattern::{Slot, USER, level_of};
use super::rule::Rule;
use super::{Direction, MappingTable};

impl Rule {
    /// The topic level the sender's localpart comes from, for a rule read from MQTT.
    fn sender_level(&self) -> Option<usize> {
        match &self.jid.node {
            Slot::Literal(_) => None,
            Slot::Capture(c) if *c.name == *USER => self.topic.user_level(),
            Slot::Capture(c) => c.level,
        }
    }
}

impl MappingTable {
    /// Rules from MQTT whose sender is not taken from a topic level (a literal `jid`, or
    /// `{user}` without a `{user}` level in `topic`): in upstream mode nothing would stop any
    /// client allowed on the topic from speaking as that sender, so they are refused.
    pub fn unbound_senders(&self) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.direction != Direction::XmppToMqtt && r.sender_level().is_none())
            .collect()
    }

    /// The publisher's user name as the topic binds it (the value of the level the matching
    /// rule takes the sender from, unescaped); `None` when no rule matches or the level does
    /// not unescape. Upstream mode passes it where the embedded broker passes the
    /// authenticated user name.
    pub fn sender_from_topic(&self, topic: &str) -> Option<String> {
        let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
        let rule = self
            .from_mqtt
            .iter()
            .map(|&i| &self.rules[i])
            .find(|r| r.topic.level_count() == levels && r.topic.matches(topic))?;
        let level = rule.sender_level()?;
        unescape(level_of(topic, level)).map(|v| v.into_owned())
    }

    /// Each filter of [`Self::mqtt_filters`] with the highest `qos` of the rules it stands for.
    pub fn filter_qos(&self) -> Vec<(String, u8)> {
        let covers = |wide: &str, narrow: &str| {
            wide.split('/').count() == narrow.split('/').count()
                && wide
                    .split('/')
                    .zip(narrow.split('/'))
                    .all(|(w, n)| w == "+" || w == n)
        };
        self.mqtt_filters()
            .into_iter()
            .map(|f| {
                let qos = self
                    .from_mqtt
                    .iter()
                    .map(|&i| &self.rules[i])
                    .filter(|r| covers(&f, &r.topic.filter()))
                    .map(|r| r.qos)
                    .max()
                    .unwrap_or(1);
                (f, qos)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::path::Path;

    use super::*;

    fn table(text: &str) -> MappingTable {
        MappingTable::parse(text, Path::new("m.toml"), "mqtt.example.org").unwrap()
    }

    const RULES: &str = r#"
[[rule]]
name = "outbox"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
topic = "users/{user}/outbox/{peer}"
qos = 2

[[rule]]
name = "device"
direction = "mqtt-to-xmpp"
jid = "{dev}@{domain}"
peer = "ops@example.org"
topic = "devices/{dev}/alert"
qos = 0

[[rule]]
name = "inbox"
direction = "xmpp-to-mqtt"
jid = "{user}@{domain}"
topic = "users/{user}/inbox/{peer}"
"#;

    #[test]
    fn sender_comes_from_the_bound_level() {
        let t = table(RULES);
        assert_eq!(
            t.sender_from_topic("users/bob/outbox/alice@example.org")
                .as_deref(),
            Some("bob")
        );
        assert_eq!(
            t.sender_from_topic("devices/pump%2F7/alert").as_deref(),
            Some("pump/7")
        );
        assert_eq!(t.sender_from_topic("users/bob/inbox/x@y"), None);
        assert_eq!(t.sender_from_topic("nothing"), None);
        assert!(t.unbound_senders().is_empty());
    }

    #[test]
    fn literal_and_unbound_user_senders_are_listed() {
        let t = table(
            r#"
[[rule]]
name = "alerts"
direction = "mqtt-to-xmpp"
jid = "alerts@{domain}"
peer = "ops@example.org"
topic = "alerts/{peer}"

[[rule]]
name = "mine"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
peer = "ops@example.org"
topic = "mine/out"
"#,
        );
        let names: Vec<&str> = t.unbound_senders().iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["alerts", "mine"]);
    }

    #[test]
    fn filters_carry_their_rules_qos() {
        let t = table(RULES);
        assert_eq!(
            t.filter_qos(),
            [
                ("devices/+/alert".to_string(), 0),
                ("users/+/outbox/+".to_string(), 2)
            ]
        );
    }
}
