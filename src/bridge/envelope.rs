//! The protocol-neutral message the bridge translates, and its JSON form on MQTT.
//!
//! JSON envelope, version 1 (payload format `json`):
//! ```json
//! {"v":1,"from":"alice@example.org/phone","to":"bob@mqtt.example.org","id":"m1",
//!  "type":"chat","body":"Hello","subject":null,"thread":null,
//!  "timestamp":"2026-11-25T10:00:00.000Z"}
//! ```
//! From MQTT, only `body` is required; `type`, `subject`, `thread` and `id` are optional. `from`
//! and `to` are never taken from an MQTT payload: the sender is the publisher's authenticated
//! identity and the recipient comes from the topic.

use serde::{Deserialize, Serialize};

use crate::mapping::MessageKind;

/// Version of the JSON envelope.
pub const ENVELOPE_VERSION: u32 = 1;

/// A chat message between the two worlds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender, a full or bare JID.
    pub from: String,
    /// Recipient, a full or bare JID.
    pub to: String,
    /// Stanza id (XMPP) / message id, when known.
    pub id: Option<String>,
    /// Message type.
    pub kind: MessageKind,
    /// Text.
    pub body: String,
    /// Subject, when set.
    pub subject: Option<String>,
    /// Conversation thread, when set.
    pub thread: Option<String>,
}

/// The JSON form published to MQTT.
#[derive(Debug, Serialize)]
struct JsonOut<'a> {
    v: u32,
    from: &'a str,
    to: &'a str,
    id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
    body: &'a str,
    subject: Option<&'a str>,
    thread: Option<&'a str>,
    timestamp: String,
}

/// The JSON form accepted from MQTT.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonIn {
    #[serde(default)]
    v: Option<u32>,
    body: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    thread: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

/// What an MQTT payload said, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPayload {
    /// Text.
    pub body: String,
    /// Requested message type, if any.
    pub kind: Option<MessageKind>,
    /// Subject.
    pub subject: Option<String>,
    /// Thread.
    pub thread: Option<String>,
    /// Client-chosen message id.
    pub id: Option<String>,
}

/// Why an MQTT payload cannot become a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not UTF-8.
    #[error("payload is not UTF-8 text")]
    NotUtf8,
    /// Empty text.
    #[error("payload is empty")]
    Empty,
    /// Not a valid JSON envelope.
    #[error("payload is not a valid JSON envelope: {0}")]
    Json(String),
    /// Unknown `type`.
    #[error("unknown message type `{0}`")]
    Kind(String),
    /// Unsupported envelope version.
    #[error("unsupported envelope version {0} (this bridge speaks {ENVELOPE_VERSION})")]
    Version(u32),
}

impl Envelope {
    /// The JSON envelope.
    pub fn to_json(&self) -> String {
        let out = JsonOut {
            v: ENVELOPE_VERSION,
            from: &self.from,
            to: &self.to,
            id: self.id.as_deref(),
            kind: self.kind.as_str(),
            body: &self.body,
            subject: self.subject.as_deref(),
            thread: self.thread.as_deref(),
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        // Serializing plain strings into JSON cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }
}

/// Parses a `text` payload.
pub fn parse_text(payload: &[u8]) -> Result<ParsedPayload, PayloadError> {
    let body = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    if body.is_empty() {
        return Err(PayloadError::Empty);
    }
    Ok(ParsedPayload {
        body: body.to_string(),
        kind: None,
        subject: None,
        thread: None,
        id: None,
    })
}

/// Parses a `json` payload.
pub fn parse_json(payload: &[u8]) -> Result<ParsedPayload, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    let json: JsonIn = serde_json::from_str(text).map_err(|e| PayloadError::Json(e.to_string()))?;
    if let Some(v) = json.v.filter(|v| *v != ENVELOPE_VERSION) {
        return Err(PayloadError::Version(v));
    }
    if json.body.is_empty() {
        return Err(PayloadError::Empty);
    }
    let kind = match json.kind {
        Some(k) => Some(
            k.parse::<MessageKind>()
                .map_err(|_| PayloadError::Kind(k))?,
        ),
        None => None,
    };
    Ok(ParsedPayload {
        body: json.body,
        kind,
        subject: json.subject,
        thread: json.thread,
        id: json.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_envelope_has_the_documented_fields() {
        let e = Envelope {
            from: "alice@example.org/phone".into(),
            to: "bob@mqtt.example.org".into(),
            id: Some("m1".into()),
            kind: MessageKind::Chat,
            body: "Grüße \"quoted\"".into(),
            subject: None,
            thread: Some("t1".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["from"], "alice@example.org/phone");
        assert_eq!(v["to"], "bob@mqtt.example.org");
        assert_eq!(v["id"], "m1");
        assert_eq!(v["type"], "chat");
        assert_eq!(v["body"], "Grüße \"quoted\"");
        assert_eq!(v["thread"], "t1");
        assert!(v["subject"].is_null());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn payload_parsing_cases() {
        assert_eq!(parse_text(b"hi").unwrap().body, "hi");
        assert_eq!(parse_text(b"").unwrap_err(), PayloadError::Empty);
        assert_eq!(
            parse_text(&[0xff, 0xfe]).unwrap_err(),
            PayloadError::NotUtf8
        );
        let p = parse_json(br#"{"body":"yo","type":"headline","id":"x"}"#).unwrap();
        assert_eq!(
            (p.body.as_str(), p.kind, p.id.as_deref()),
            ("yo", Some(MessageKind::Headline), Some("x"))
        );
        assert!(matches!(parse_json(b"yo"), Err(PayloadError::Json(_))));
        assert!(matches!(
            parse_json(br#"{"text":"yo"}"#),
            Err(PayloadError::Json(_))
        ));
        assert!(matches!(
            parse_json(br#"{"body":"yo","from":"x@y"}"#),
            Err(PayloadError::Json(_))
        ));
        assert_eq!(
            parse_json(br#"{"body":"yo","type":"shout"}"#).unwrap_err(),
            PayloadError::Kind("shout".into())
        );
        assert_eq!(
            parse_json(br#"{"v":2,"body":"yo"}"#).unwrap_err(),
            PayloadError::Version(2)
        );
        assert_eq!(
            parse_json(br#"{"body":""}"#).unwrap_err(),
            PayloadError::Empty
        );
    }
}
