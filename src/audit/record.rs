//! The audit line format (schema version [`SCHEMA_VERSION`]) and its hash chain.
//!
//! Every line is one JSON object that ends with `"hash"`: the SHA-256 (hex) of the line's
//! text without that member, i.e. of `{...,"prev":"<hex>"}`. `prev` is the `hash` of the line
//! before it (across files: the first line of a file points at the last line of the file
//! before). Three kinds of line: `open` (first line of a file), `record` (one message) and
//! `checkpoint` (last line of a closed file). The verifier works on the raw text, so nothing
//! depends on how a JSON library orders or escapes members.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bridge::events::Translation;

/// Version of the line schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The hash `prev` holds on the very first line of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How much of a payload a record keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadPolicy {
    /// The payload itself (UTF-8 as `payload`, anything else as `payload_hex`) and its hash.
    Full,
    /// Only the SHA-256 of the payload.
    HashOnly,
    /// Neither payload nor hash (size only).
    None,
}

impl std::str::FromStr for PayloadPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(PayloadPolicy::Full),
            "hash-only" => Ok(PayloadPolicy::HashOnly),
            "none" => Ok(PayloadPolicy::None),
            other => Err(format!(
                "`{other}` is not a payload policy; use \"full\", \"hash-only\" or \"none\""
            )),
        }
    }
}

/// The XMPP side as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct XmppPart {
    /// Sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Message type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Stanza id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The MQTT side as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MqttPart {
    /// Topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// QoS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    /// Client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Packet id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_id: Option<u16>,
    /// The message id of the MQTT 5 User Property `origin-id` (XEP-0359).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// One line of the trail, any kind, as read back (unknown members are ignored).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// Schema version.
    pub v: u32,
    /// `open`, `record` or `checkpoint`.
    pub kind: String,
    /// Time written (RFC 3339, UTC, microseconds); for records, when the bridge took the
    /// message.
    pub ts: String,
    /// Record: sequence number, from 1, never reused. Checkpoint: last record's. Open: the
    /// next record's.
    #[serde(default)]
    pub seq: u64,
    /// Open/checkpoint: the file's number (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<u64>,
    /// Checkpoint: records in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Record: `xmpp_to_mqtt` or `mqtt_to_xmpp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Record: the mapping rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Record: `published`, `delivered`, `receipt_sent`, `expired`, `denied`, `dropped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Record: reason label of `denied`/`dropped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Record: human-readable detail of `denied`/`dropped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Record: XMPP side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xmpp: Option<XmppPart>,
    /// Record: MQTT side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttPart>,
    /// Record: payload size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Record: SHA-256 of the payload (policy `full` and `hash-only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Record: the payload as text (policy `full`, UTF-8 payloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Record: the payload in hex (policy `full`, other payloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// Open/checkpoint: set on a checkpoint written at start-up for a file left open by a
    /// crash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// Hash of the previous line.
    pub prev: String,
    /// Hash of this line (absent while hashing).
    #[serde(default, skip_serializing)]
    pub hash: String,
}

impl Line {
    /// The record for `event` under `policy`; `seq` and `prev` to be set by the writer.
    pub fn record(event: &Translation, policy: PayloadPolicy) -> Line {
        let payload = &event.payload[..];
        let (sha256, text, hex) = match policy {
            PayloadPolicy::None => (None, None, None),
            PayloadPolicy::HashOnly => (Some(sha256_hex(payload)), None, None),
            PayloadPolicy::Full => match std::str::from_utf8(payload) {
                Ok(t) => (Some(sha256_hex(payload)), Some(t.to_string()), None),
                Err(_) => (Some(sha256_hex(payload)), None, Some(to_hex(payload))),
            },
        };
        Line {
            v: SCHEMA_VERSION,
            kind: "record".into(),
            ts: timestamp(event.time),
            dir: Some(event.direction.label().into()),
            rule: event.rule.clone(),
            outcome: Some(event.outcome.label().into()),
            reason: event.outcome.reason().map(str::to_string),
            detail: event.outcome.detail().map(str::to_string),
            xmpp: Some(XmppPart {
                from: event.xmpp.from.clone(),
                to: event.xmpp.to.clone(),
                kind: event.xmpp.kind.map(str::to_string),
                id: event.xmpp.id.clone(),
            }),
            mqtt: Some(MqttPart {
                topic: event.mqtt.topic.clone(),
                qos: event.mqtt.qos,
                client_id: event.mqtt.client_id.clone(),
                packet_id: event.mqtt.packet_id,
                message_id: event.mqtt.message_id.clone(),
            }),
            size: Some(payload.len()),
            sha256,
            payload: text,
            payload_hex: hex,
            ..Line::default()
        }
    }

    /// An `open` or `checkpoint` line.
    pub fn marker(kind: &str, file: u64, seq: u64, records: Option<u64>) -> Line {
        Line {
            v: SCHEMA_VERSION,
            kind: kind.into(),
            ts: timestamp(SystemTime::now()),
            seq,
            file: Some(file),
            records,
            ..Line::default()
        }
    }

    /// The line's text (with `\n`) chained to `prev`; returns it and its hash.
    pub fn seal(mut self, prev: &str) -> (String, String) {
        self.prev = prev.to_string();
        // Serializing a struct of strings and numbers cannot fail.
        let body = serde_json::to_string(&self).unwrap_or_default();
        let hash = sha256_hex(body.as_bytes());
        let mut text = body;
        text.pop(); // the closing brace
        text.push_str(",\"hash\":\"");
        text.push_str(&hash);
        text.push_str("\"}\n");
        (text, hash)
    }
}

/// Appends the `record` line of `event` (sequence number `seq`, chained to `prev`, a hash in
/// hex) to `out`, `\n` included, and returns the line's hash.
///
/// The same text as `Line::record(event, policy)` with `seq` set, sealed with
/// [`Line::seal`] (a test holds them equal), written straight into the batch's buffer: the
/// members in the same order, strings escaped as `serde_json` escapes them, the hash taken
/// over the buffer in place. Building a `Line` (a dozen owned strings), serializing it and
/// copying the result cost the audit writer about as much CPU as the bridge spends on the
/// message itself, and the writer shares the machine's cores with the bridge.
pub fn write_record(
    out: &mut String,
    event: &Translation,
    policy: PayloadPolicy,
    seq: u64,
    prev: &str,
) -> String {
    use std::fmt::Write as _;
    let start = out.len();
    let payload = &event.payload[..];
    // Writing to a String cannot fail.
    let _ok = write!(
        out,
        "{{\"v\":{SCHEMA_VERSION},\"kind\":\"record\",\"ts\":\"{}\",\"seq\":{seq}",
        humantime::format_rfc3339_micros(event.time)
    );
    member_str(out, "dir", event.direction.label());
    if let Some(rule) = &event.rule {
        member_str(out, "rule", rule);
    }
    member_str(out, "outcome", event.outcome.label());
    if let Some(reason) = event.outcome.reason() {
        member_str(out, "reason", reason);
    }
    if let Some(detail) = event.outcome.detail() {
        member_str(out, "detail", detail);
    }
    out.push_str(",\"xmpp\":{");
    let mark = out.len();
    let x = &event.xmpp;
    for (key, value) in [
        ("from", x.from.as_deref()),
        ("to", x.to.as_deref()),
        ("type", x.kind),
        ("id", x.id.as_deref()),
    ] {
        if let Some(value) = value {
            member_str(out, key, value);
        }
    }
    first_member(out, mark);
    out.push_str("},\"mqtt\":{");
    let mark = out.len();
    let m = &event.mqtt;
    if let Some(topic) = &m.topic {
        member_str(out, "topic", topic);
    }
    if let Some(qos) = m.qos {
        let _ok = write!(out, ",\"qos\":{qos}");
    }
    if let Some(client_id) = &m.client_id {
        member_str(out, "client_id", client_id);
    }
    if let Some(packet_id) = m.packet_id {
        let _ok = write!(out, ",\"packet_id\":{packet_id}");
    }
    if let Some(message_id) = &m.message_id {
        member_str(out, "message_id", message_id);
    }
    first_member(out, mark);
    let _ok = write!(out, "}},\"size\":{}", payload.len());
    if policy != PayloadPolicy::None {
        out.push_str(",\"sha256\":\"");
        push_hex(out, &Sha256::digest(payload));
        out.push('"');
    }
    if policy == PayloadPolicy::Full {
        match std::str::from_utf8(payload) {
            Ok(text) => member_str(out, "payload", text),
            Err(_) => {
                out.push_str(",\"payload_hex\":\"");
                push_hex(out, payload);
                out.push('"');
            }
        }
    }
    member_str(out, "prev", prev);
    // The hash covers the line with `prev` as its last member: `{...,"prev":"..."}`.
    let mut hasher = Sha256::new();
    hasher.update(&out.as_bytes()[start..]);
    hasher.update(b"}");
    let hash = to_hex(&hasher.finalize());
    out.push_str(",\"hash\":\"");
    out.push_str(&hash);
    out.push_str("\"}\n");
    hash
}

/// `,"key":"value"` with `value` escaped as `serde_json` does.
fn member_str(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":\"");
    push_escaped(out, value);
    out.push('"');
}

/// The members of an object opened at `mark` were each written with a leading comma: drops
/// the first one's.
fn first_member(out: &mut String, mark: usize) {
    if out.len() > mark {
        out.remove(mark);
    }
}

/// `serde_json`'s string escaping: `"` and `\\`, the short forms of backspace, tab, newline,
/// form feed and carriage return, `\u00xx` for the other control characters; nothing else.
fn push_escaped(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    // Most values need no escape; a fold without an early exit is one vectorised pass.
    let special = |b: u8| u8::from(b < 0x20) | u8::from(b == b'"') | u8::from(b == b'\\');
    if bytes.iter().fold(0, |any, &b| any | special(b)) == 0 {
        out.push_str(s);
        return;
    }
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x09 => "\\t",
            0x0a => "\\n",
            0x0c => "\\f",
            0x0d => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Escaped bytes are ASCII, so `plain..i` ends on a character boundary.
        out.push_str(&s[plain..i]);
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        } else {
            out.push_str(short);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
}

/// Lowercase hex of `data`, appended.
fn push_hex(out: &mut String, data: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(data.len() * 2);
    for b in data {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Splits a line (without `\n`) into the hashed text and the stated hash, and recomputes.
/// `Err` when the line does not end with a hash member at all.
pub fn check_hash(line: &str) -> Result<(String, bool), &'static str> {
    const SUFFIX_LEN: usize = 9 + 64 + 2; // ,"hash":" + hex + "}
    if line.len() < SUFFIX_LEN + 2 || !line.is_char_boundary(line.len() - SUFFIX_LEN) {
        return Err("line too short to carry a hash");
    }
    let (body, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let Some(stated) = suffix
        .strip_prefix(",\"hash\":\"")
        .and_then(|s| s.strip_suffix("\"}"))
    else {
        return Err("line does not end with its hash");
    };
    let mut hashed = String::with_capacity(body.len() + 1);
    hashed.push_str(body);
    hashed.push('}');
    let ok = sha256_hex(hashed.as_bytes()) == stated;
    Ok((stated.to_string(), ok))
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// Lowercase hex.
pub fn to_hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    push_hex(&mut s, data);
    s
}

/// RFC 3339 UTC with microseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::bridge::events::{Direction, Outcome};

    fn event(payload: &'static [u8]) -> Translation {
        let mut e = Translation::start(Direction::XmppToMqtt);
        e.payload = bytes::Bytes::from_static(payload);
        e.rule = Some("chat".into());
        e.outcome = Outcome::Denied {
            reason: "no_rule",
            detail: "quote \" and newline \n".into(),
        };
        e
    }

    #[test]
    fn sealed_lines_verify_and_edits_do_not() {
        let (text, hash) = Line::record(&event(b"hi"), PayloadPolicy::Full).seal(GENESIS);
        assert!(text.ends_with("\"}\n") && text.matches('\n').count() == 1);
        let line = text.trim_end_matches('\n');
        assert_eq!(check_hash(line).unwrap(), (hash.clone(), true));
        let parsed: Line = serde_json::from_str(line).unwrap();
        assert_eq!(parsed.hash, hash);
        assert_eq!(parsed.payload.as_deref(), Some("hi"));
        assert_eq!(parsed.sha256.as_deref(), Some(&*sha256_hex(b"hi")));
        let edited = line.replace("\"hi\"", "\"ho\"");
        assert!(!check_hash(&edited).unwrap().1);
        assert!(check_hash("{\"v\":1}").is_err());
    }

    /// `write_record` writes exactly what `Line::record` + `seal` (serde_json) write.
    #[test]
    fn written_records_equal_the_serialized_line() {
        let odd = "q\" b\\ nl\n cr\r tab\t bs\u{8} ff\u{c} nul\u{0} us\u{1f} del\u{7f} é 😀 /";
        let mut events = Vec::new();
        let mut e = Translation::start(Direction::MqttToXmpp);
        events.push(e.clone()); // nothing set: empty xmpp and mqtt objects
        e.rule = Some(format!("rule {odd}"));
        e.xmpp.from = Some(format!("a@x/{odd}"));
        e.xmpp.kind = Some("chat");
        e.mqtt.topic = Some("users/b/outbox/a@x".into());
        e.mqtt.qos = Some(1);
        e.mqtt.packet_id = Some(65_535);
        e.payload = bytes::Bytes::from(odd.as_bytes().to_vec());
        e.outcome = Outcome::Delivered;
        events.push(e.clone());
        e.xmpp.to = Some("b@y".into());
        e.xmpp.id = Some("id-1".into());
        e.mqtt.client_id = Some("bob-pub".into());
        e.mqtt.message_id = Some(odd.into());
        e.payload = bytes::Bytes::from_static(&[0xff, 0x00, 0x7f]);
        e.outcome = Outcome::Denied {
            reason: "acl",
            detail: odd.into(),
        };
        events.push(e.clone());
        events.push(event(b"hi"));
        for (n, event) in events.iter().enumerate() {
            for policy in [
                PayloadPolicy::Full,
                PayloadPolicy::HashOnly,
                PayloadPolicy::None,
            ] {
                let seq = 7 + n as u64;
                let mut line = Line::record(event, policy);
                line.seq = seq;
                let (expected, expected_hash) = line.seal(GENESIS);
                let mut out = String::from("earlier line\n");
                let hash = write_record(&mut out, event, policy, seq, GENESIS);
                assert_eq!(&out["earlier line\n".len()..], expected, "{n} {policy:?}");
                assert_eq!(hash, expected_hash);
            }
        }
    }

    #[test]
    fn payload_policies() {
        let full = Line::record(&event(&[0xff, 0]), PayloadPolicy::Full);
        assert_eq!(
            (full.payload, full.payload_hex.as_deref()),
            (None, Some("ff00"))
        );
        let hash = Line::record(&event(b"x"), PayloadPolicy::HashOnly);
        assert!(hash.sha256.is_some() && hash.payload.is_none());
        let none = Line::record(&event(b"x"), PayloadPolicy::None);
        assert_eq!(
            (none.sha256, none.payload, none.size),
            (None, None, Some(1))
        );
        assert_eq!("hash-only".parse(), Ok(PayloadPolicy::HashOnly));
        assert!("half".parse::<PayloadPolicy>().is_err());
    }
}
