//! Differential fuzz target for the link's typed stanza reader: `cargo +nightly fuzz run
//! stanza_reader`.
//!
//! The input is read as one XML element both as the XMPP link reads it (typed values straight
//! from the parser's events, `src/xmpp/stanza_reader.rs`) and the way it was read before (an
//! untyped `Element` converted with `TryFrom`). The two must agree: the same typed stanza, a
//! refused stanza reported as bad with the head as written, the same untyped element, or both
//! refusing malformed XML. Then the input is read as the content of a component stream
//! (after a fixed stream header, before `</stream:stream>`) both the way tokio-xmpp's
//! `XmlStream` read it and with the link's own reader (`src/xmpp/{splitter,fast_stanza,
//! wire_reader}.rs`), fed whole, a byte at a time and in pieces of n bytes: the same stanzas,
//! heads and elements, and the stream ending at the same element. Nothing may panic otherwise.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xmpp_mqtt_bridge::xmpp::check_stanza_reader(data);
});
