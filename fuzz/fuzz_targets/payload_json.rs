//! Fuzz target for the MQTT payload parsers of the bridge: `cargo +nightly fuzz run payload_json`.
//!
//! Arbitrary bytes go through `parse_json` and `parse_text`. Neither may panic; an accepted JSON
//! envelope has a non-empty body, and writing what was parsed back as JSON parses to the same
//! value (nothing is lost or invented).
//!
//! What was parsed is also written as the XMPP link writes an MQTT → XMPP chat message
//! (`xmpp::check_chat_writer`): the link's own bytes must be rxml's bytes for the same message
//! (or both refuse it, exactly when it has a character XML cannot carry), and parse back to
//! the same element.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpp_mqtt_bridge::bridge::envelope::{PayloadError, parse_json, parse_text};
use xmpp_mqtt_bridge::xmpp::check_chat_writer;

fuzz_target!(|data: &[u8]| {
    match parse_text(data) {
        Ok(p) => {
            check_chat_writer(&p.body, None, None, "id");
            assert_eq!(p.body.as_bytes(), data);
            assert!(p.kind.is_none() && p.subject.is_none() && p.id.is_none());
        }
        Err(e) => assert!(matches!(e, PayloadError::Empty | PayloadError::NotUtf8)),
    }
    match parse_json(data) {
        Ok(p) => {
            assert!(!p.body.is_empty());
            let id = p.id.as_deref().unwrap_or("id");
            check_chat_writer(&p.body, p.subject.as_deref(), p.thread.as_deref(), id);
            let mut again = serde_json::json!({ "v": 1, "body": p.body });
            if let Some(kind) = p.kind {
                again["type"] = kind.as_str().into();
            }
            for (key, value) in [
                ("subject", &p.subject),
                ("thread", &p.thread),
                ("id", &p.id),
            ] {
                if let Some(value) = value {
                    again[key] = value.as_str().into();
                }
            }
            let bytes = serde_json::to_vec(&again).expect("JSON values serialize");
            assert_eq!(parse_json(&bytes), Ok(p));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
