//! Fuzz target for the mapping file parser: `cargo +nightly fuzz run mapping_parse`.
//!
//! Arbitrary text is parsed as a mapping file. Parsing must not panic; a rejected file has at
//! least one error, each with a message and a line within the file; an accepted table can be
//! described and queried with the topics its own filters stand for.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xmpp_mqtt_bridge::mapping::{MappingTable, MessageKind};

const DOMAIN: &str = "mqtt.example.org";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    match MappingTable::parse(text, Path::new("fuzz.toml"), DOMAIN) {
        Err(errors) => {
            assert!(!errors.is_empty(), "rejected without a reason");
            for e in &errors {
                let shown = e.to_string();
                assert!(!shown.is_empty());
                if let Some(line) = e.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "line {line} of {lines}: {shown}"
                    );
                }
            }
        }
        Ok(table) => {
            assert!(!table.rules().is_empty());
            let _ = table.describe();
            for filter in table.mqtt_filters() {
                let topic = filter.replace('+', "x").replace('#', "y");
                let _ = table.to_xmpp(&topic, Some("x"));
                let _ = table.to_xmpp(&topic, None);
            }
            for kind in [
                MessageKind::Chat,
                MessageKind::Headline,
                MessageKind::Groupchat,
            ] {
                let _ = table.to_mqtt("peer@example.org", &format!("x@{DOMAIN}"), kind);
            }
        }
    }
});
