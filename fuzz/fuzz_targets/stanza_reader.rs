//! Differential fuzz target for the link's typed stanza reader: `cargo +nightly fuzz run
//! stanza_reader`.
//!
//! The input is read as one XML element both as the XMPP link reads it (typed values straight
//! from the parser's events, `src/xmpp/stanza_reader.rs`) and the way it was read before (an
//! untyped `Element` converted with `TryFrom`). The two must agree: the same typed stanza, a
//! refused stanza reported as bad with the head as written, the same untyped element, or both
//! refusing malformed XML. Nothing may panic otherwise.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xmpp_mqtt_bridge::xmpp::check_stanza_reader(data);
});
