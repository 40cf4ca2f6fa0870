//! Fuzz target for the XMPP → MQTT translation: `cargo +nightly fuzz run stanza_translate`.
//!
//! The input is parsed as XML into a `<message/>` stanza (as the XMPP adapter does with what the
//! server sends), turned into the bridge's `InboundChat` (`bridge::stanza::inbound_chat`), and
//! translated through mapping tables with each payload format. The translation must not panic;
//! a publish has a valid topic name, a JSON payload that carries the message's fields (the
//! envelope is written by hand, `bridge::envelope::envelope_json`), and its topic leads
//! back (MQTT → XMPP, as the recipient user) to the original sender.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use xmpp_mqtt_bridge::bridge::stanza::inbound_chat;
use xmpp_mqtt_bridge::bridge::translate::{Carried, FromXmpp, bare, mqtt_to_xmpp, xmpp_to_mqtt};
use xmpp_mqtt_bridge::broker::topic::validate_topic_name;
use xmpp_mqtt_bridge::mapping::MappingTable;
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;

const DOMAIN: &str = "mqtt.example.org";

fn table(format: &str) -> MappingTable {
    let text = format!(
        r#"
[[rule]]
name = "inbox"
direction = "xmpp-to-mqtt"
jid = "{{user}}@{{domain}}"
topic = "users/{{user}}/inbox/{{peer}}"
kinds = ["chat", "normal", "headline", "groupchat"]
format = "{format}"

[[rule]]
name = "outbox"
direction = "mqtt-to-xmpp"
jid = "{{user}}@{{domain}}"
topic = "users/{{user}}/inbox/{{peer}}"
kinds = ["chat", "normal", "headline", "groupchat"]
format = "text"
"#
    );
    MappingTable::parse(&text, Path::new("fuzz.toml"), DOMAIN).expect("fuzz mapping is valid")
}

static TABLES: LazyLock<[MappingTable; 3]> =
    LazyLock::new(|| [table("json"), table("text"), table("xml")]);

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(element) = text.parse::<Element>() else {
        return;
    };
    let Ok(message) = Message::try_from(element.clone()) else {
        return;
    };
    let Some(chat) = inbound_chat(&message) else {
        return;
    };
    for table in TABLES.iter() {
        let out = xmpp_to_mqtt(table, &chat, || String::from(&element));
        let FromXmpp::Publish(publish) = out else {
            continue;
        };
        assert!(
            validate_topic_name(&publish.topic).is_ok(),
            "invalid topic {:?}",
            publish.topic
        );
        let body = chat.body.as_deref().unwrap_or_default();
        // A receipt or a chat state alone travels on a sub-topic without a body.
        assert_eq!(body.is_empty(), publish.carried != Carried::Message);
        match publish.rule.as_str() {
            _ if publish.carried != Carried::Message => {}
            "inbox" if table.rules()[0].format.as_str() == "json" => {
                let v: serde_json::Value =
                    serde_json::from_slice(&publish.payload).expect("payload is JSON");
                assert_eq!(v["body"].as_str(), Some(body));
                assert_eq!(v["from"].as_str(), Some(&*chat.from));
                // Every member of the hand-written envelope, as the message has it.
                let x = &chat.extras;
                assert_eq!(v["v"].as_u64(), Some(1));
                assert_eq!(v["to"].as_str(), Some(&*chat.to));
                assert_eq!(v["id"].as_str(), chat.id.as_deref());
                assert_eq!(v["type"].as_str(), Some(chat.kind.as_str()));
                assert_eq!(v["subject"].as_str(), chat.subject.as_deref());
                assert_eq!(v["thread"].as_str(), chat.thread.as_deref());
                assert_eq!(v["origin_id"].as_str(), x.origin_id.as_deref());
                assert_eq!(v["stanza_id"].as_str(), x.stanza_id.as_deref());
                assert_eq!(v["replaces"].as_str(), x.replaces.as_deref());
                assert_eq!(v["delay"].as_str(), x.delay.as_deref());
                assert_eq!(v["state"].as_str(), x.state.map(|s| s.as_str()));
                assert_eq!(v.get("receipt").is_some(), x.receipt_request);
                let stamp = v["timestamp"].as_str().expect("a time stamp");
                assert!(stamp.len() == 24 && stamp.ends_with('Z'), "{stamp}");
            }
            "inbox" if table.rules()[0].format.as_str() == "text" => {
                assert_eq!(&publish.payload[..], body.as_bytes());
            }
            _ => {}
        }
        // The topic names the recipient's user and the sender: replying on it as that user
        // goes back to the sender.
        let to = bare(&chat.to);
        let user = to.split_once('@').map_or("", |(user, _)| user);
        if let Ok(reply) = mqtt_to_xmpp(table, &publish.topic, b"re", Some(user)) {
            // A domain's final dot (`example.`, the same domain by RFC 7622 section 3.2) is
            // dropped toward MQTT, from the sender's and the recipient's JID, so the reply goes
            // between both without it.
            let undot = |jid: &str| jid.strip_suffix('.').unwrap_or(jid).to_string();
            assert_eq!(
                reply.to,
                undot(bare(&chat.from)),
                "topic {:?}",
                publish.topic
            );
            assert_eq!(reply.from, undot(to), "topic {:?}", publish.topic);
        }
    }
});
