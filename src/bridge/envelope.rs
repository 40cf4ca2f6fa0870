//! The protocol-neutral message the bridge translates, and its JSON form on MQTT.
//!
//! JSON envelope, version 1 (payload format `json`):
//! ```json
//! {"v":1,"from":"alice@example.org/phone","to":"bob@mqtt.example.org","id":"m1",
//!  "type":"chat","body":"Hello","subject":null,"thread":null,
//!  "timestamp":"2026-11-25T10:00:00.000Z"}
//! ```
//! Members present only when the message has them: `origin_id` and `stanza_id` (XEP-0359),
//! `replaces` (XEP-0308 correction of the message with that id), `delay` (XEP-0203 original
//! time stamp), `state` (XEP-0085 chat state), `receipt` (true: the sender asked for an
//! XEP-0184 receipt).
//!
//! From MQTT, only `body` is required; `type`, `subject`, `thread`, `id`, `origin_id`,
//! `replaces`, `delay` and `state` are optional. `from` and `to` are never taken from an MQTT
//! payload: the sender is the publisher's authenticated identity and the recipient comes from
//! the topic.
//!
//! Two more shapes travel on sub-topics of a rule's topic: chat states
//! (`{"v":1,"from":..,"to":..,"state":"composing","thread":null}`, see [`state_json`]) and
//! receipts (`{"v":1,"type":"receipt","from":..,"to":..,"id":"m1"}`, see [`receipt_json`]).

use serde::{Deserialize, Serialize};

use crate::mapping::MessageKind;

/// Version of the JSON envelope.
pub const ENVELOPE_VERSION: u32 = 1;

/// An XEP-0085 chat state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatState {
    /// Paying attention.
    Active,
    /// Typing.
    Composing,
    /// Stopped typing.
    Paused,
    /// Not paying attention.
    Inactive,
    /// Left the conversation.
    Gone,
}

impl ChatState {
    /// The XEP-0085 element name, also the MQTT text form.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatState::Active => "active",
            ChatState::Composing => "composing",
            ChatState::Paused => "paused",
            ChatState::Inactive => "inactive",
            ChatState::Gone => "gone",
        }
    }
}

impl std::str::FromStr for ChatState {
    type Err = PayloadError;

    fn from_str(s: &str) -> Result<Self, PayloadError> {
        Ok(match s {
            "active" => ChatState::Active,
            "composing" => ChatState::Composing,
            "paused" => ChatState::Paused,
            "inactive" => ChatState::Inactive,
            "gone" => ChatState::Gone,
            other => return Err(PayloadError::State(other.to_string())),
        })
    }
}

/// What a message carries besides its text: ids, correction, delay, chat state, receipts.
/// Empty (and free) for a plain message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    /// XEP-0359 origin id (chosen by the sender).
    pub origin_id: Option<String>,
    /// XEP-0359 stanza id (given by the sender's server or archive).
    pub stanza_id: Option<String>,
    /// XEP-0308: this message corrects the one with this id.
    pub replaces: Option<String>,
    /// XEP-0203: when the message was originally sent (XEP-0082 date-time).
    pub delay: Option<String>,
    /// XEP-0085 chat state.
    pub state: Option<ChatState>,
    /// XEP-0184: the sender asks for a receipt.
    pub receipt_request: bool,
    /// XEP-0184: this message is a receipt for the message with this id.
    pub received: Option<String>,
    /// The XMPP server bounced the message with this stanza's id (an error stanza).
    pub bounced: Option<Bounce>,
}

/// Why the XMPP side bounced a message the bridge sent: the error stanza's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// RFC 6120 defined condition (`service-unavailable`, `item-not-found`, ...).
    pub condition: String,
    /// The error's human-readable text, when the server gave one.
    pub text: Option<String>,
}

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
    /// Ids, correction, delay, chat state, receipt request.
    pub extras: Extras,
}

/// The JSON form of a chat state on MQTT.
#[derive(Debug, Serialize)]
struct StateOut<'a> {
    v: u32,
    from: &'a str,
    to: &'a str,
    state: &'a str,
    thread: Option<&'a str>,
}

/// The JSON form of a notice about a message on MQTT: a receipt, or a bounce (which adds the
/// condition and the text, `null` when the server gave none).
#[derive(Debug, Serialize)]
struct NoticeOut<'a> {
    v: u32,
    #[serde(rename = "type")]
    kind: &'a str,
    from: &'a str,
    to: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Option<&'a str>>,
}

impl Bounce {
    /// The condition, with the text when there is one (for logs and audit records).
    pub fn detail(&self) -> String {
        match &self.text {
            Some(text) => format!("{}: {text}", self.condition),
            None => self.condition.clone(),
        }
    }
}

/// A chat state from MQTT (JSON form).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateIn {
    #[serde(default)]
    v: Option<u32>,
    state: String,
    #[serde(default)]
    thread: Option<String>,
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
    #[serde(default)]
    origin_id: Option<String>,
    #[serde(default)]
    replaces: Option<String>,
    #[serde(default)]
    delay: Option<String>,
    #[serde(default)]
    state: Option<String>,
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
    /// Origin id, correction, delay, chat state.
    pub extras: Extras,
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
    /// Unknown chat state.
    #[error("unknown chat state `{0}` (active, composing, paused, inactive, gone)")]
    State(String),
    /// A `delay` that is not an XEP-0082 date-time.
    #[error("`delay` is not a date-time like 2026-11-25T10:00:00Z: `{0}`")]
    Delay(String),
    /// An id that is empty or too long.
    #[error("`{0}` must be 1 to 256 characters")]
    Id(&'static str),
    /// A text field with a character XML cannot carry (control characters, U+FFFE, U+FFFF).
    #[error("`{0}` has a character XML cannot carry (a control character, U+FFFE or U+FFFF)")]
    NotXmlText(&'static str),
    /// Unsupported envelope version.
    #[error("unsupported envelope version {0} (this bridge speaks {ENVELOPE_VERSION})")]
    Version(u32),
}

impl Envelope {
    /// The JSON envelope.
    pub fn to_json(&self) -> String {
        envelope_json(&EnvelopeRef {
            from: &self.from,
            to: &self.to,
            id: self.id.as_deref(),
            kind: self.kind,
            body: &self.body,
            subject: self.subject.as_deref(),
            thread: self.thread.as_deref(),
            extras: &self.extras,
        })
    }
}

/// The fields of an [`Envelope`], borrowed: what [`envelope_json`] writes, so that a message
/// is written without copying its strings into an `Envelope` first.
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeRef<'a> {
    /// Sender, a full or bare JID.
    pub from: &'a str,
    /// Recipient, a full or bare JID.
    pub to: &'a str,
    /// Stanza id.
    pub id: Option<&'a str>,
    /// Message type.
    pub kind: MessageKind,
    /// Text.
    pub body: &'a str,
    /// Subject.
    pub subject: Option<&'a str>,
    /// Thread.
    pub thread: Option<&'a str>,
    /// Ids, correction, delay, chat state, receipt request.
    pub extras: &'a Extras,
}

/// The JSON envelope (version 1) of a message, timestamped now.
///
/// Written by hand, not through serde: the same members in the same order and the same bytes
/// as `serde_json` writes for them (tests compare both), at a fraction of the cost. The
/// timestamp's text up to the second is kept per thread and made again only when the second
/// changes; the milliseconds are read from the clock every time.
pub fn envelope_json(e: &EnvelopeRef<'_>) -> String {
    envelope_json_at(e, std::time::SystemTime::now())
}

/// [`envelope_json`] with `now` as its `timestamp` (the time the bridge took the message,
/// read once per batch of messages).
pub fn envelope_json_at(e: &EnvelopeRef<'_>, now: std::time::SystemTime) -> String {
    let x = e.extras;
    let optional = |v: Option<&str>| v.map_or(0, str::len);
    let len = e.from.len()
        + e.to.len()
        + optional(e.id)
        + e.body.len()
        + optional(e.subject)
        + optional(e.thread)
        + optional(x.origin_id.as_deref())
        + optional(x.stanza_id.as_deref())
        + optional(x.replaces.as_deref())
        + optional(x.delay.as_deref());
    // Members, quotes and the time stamp take about 130 bytes; escapes a few more.
    let mut out = String::with_capacity(len + len / 8 + 192);
    out.push_str("{\"v\":");
    push_u32(&mut out, ENVELOPE_VERSION);
    member(&mut out, "from", e.from);
    member(&mut out, "to", e.to);
    member_or_null(&mut out, "id", e.id);
    member(&mut out, "type", e.kind.as_str());
    member(&mut out, "body", e.body);
    member_or_null(&mut out, "subject", e.subject);
    member_or_null(&mut out, "thread", e.thread);
    out.push_str(",\"timestamp\":\"");
    push_timestamp(&mut out, now);
    out.push('"');
    let present = [
        ("origin_id", x.origin_id.as_deref()),
        ("stanza_id", x.stanza_id.as_deref()),
        ("replaces", x.replaces.as_deref()),
        ("delay", x.delay.as_deref()),
        ("state", x.state.map(ChatState::as_str)),
    ];
    for (name, value) in present {
        if let Some(value) = value {
            member(&mut out, name, value);
        }
    }
    if x.receipt_request {
        out.push_str(",\"receipt\":true");
    }
    out.push('}');
    out
}

fn push_u32(out: &mut String, n: u32) {
    use std::fmt::Write;
    let _infallible = write!(out, "{n}");
}

/// `,"name":"value"` (`name` needs no escaping).
fn member(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    push_json_str(out, value);
}

/// `,"name":"value"`, or `,"name":null` without a value.
fn member_or_null(out: &mut String, name: &str, value: Option<&str>) {
    match value {
        Some(value) => member(out, name, value),
        None => {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":null");
        }
    }
}

/// Which bytes a JSON string cannot carry as they are: `"`, `\` and the control characters
/// U+0000 to U+001F (RFC 8259 section 7). Everything else, multi-byte UTF-8 included, is
/// copied.
const fn escape_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}

static NEEDS_ESCAPE: [bool; 256] = escape_table();

/// Appends `s` as a JSON string, quotes included, escaped as `serde_json` escapes: the short
/// forms for quote, backslash, backspace, form feed, newline, carriage return and tab, other
/// control characters as `\u00XX` (lower-case hex).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    // Almost every text needs no escape: one pass without a short cut (the compiler checks
    // many bytes per instruction), then one copy.
    let clean = (bytes.iter()).fold(true, |clean, &b| {
        clean & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if clean {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        // `b` is ASCII, so `run..i` and `i + 1..` are on character boundaries.
        out.push_str(&s[run..i]);
        run = i + 1;
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// The length of `2026-11-25T10:00:00.` (the time stamp up to its milliseconds).
const STAMP_PREFIX: usize = 20;

thread_local! {
    /// The second last written, and its text up to the milliseconds.
    static STAMP: std::cell::Cell<(u64, [u8; STAMP_PREFIX])> =
        const { std::cell::Cell::new((u64::MAX, [0; STAMP_PREFIX])) };
}

/// Appends `now` as RFC 3339 UTC with milliseconds (`2026-11-25T10:00:00.123Z`), as
/// `humantime::format_rfc3339_millis` writes it (truncated, not rounded, to the millisecond).
/// A clock outside the years 1970 to 9999, which humantime cannot write (it panics), is
/// written as the nearest end of that range.
pub(crate) fn push_timestamp(out: &mut String, now: std::time::SystemTime) {
    const LAST: &str = "9999-12-31T23:59:59.999Z";
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    let (cached, mut prefix) = STAMP.get();
    if cached != secs {
        use std::fmt::Write;
        let second = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let mut text = String::with_capacity(STAMP_PREFIX + 4);
        let written = write!(text, "{}", humantime::format_rfc3339_millis(second));
        match text.as_bytes().get(..STAMP_PREFIX) {
            Some(p) if written.is_ok() && text.len() == LAST.len() => {
                prefix.copy_from_slice(p);
                STAMP.set((secs, prefix));
            }
            _ => {
                out.push_str(LAST);
                return;
            }
        }
    }
    // The prefix is ASCII written by humantime; written in one piece with the milliseconds.
    let mut stamp = [0u8; STAMP_PREFIX + 4];
    stamp[..STAMP_PREFIX].copy_from_slice(&prefix);
    let digits = [millis / 100, millis / 10 % 10, millis % 10];
    for (at, digit) in stamp[STAMP_PREFIX..].iter_mut().zip(digits) {
        // `digit` is under 10.
        *at = b'0' + u8::try_from(digit).unwrap_or(0);
    }
    stamp[STAMP_PREFIX + 3] = b'Z';
    out.push_str(std::str::from_utf8(&stamp).unwrap_or(LAST));
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
        extras: Extras::default(),
    })
}

/// The JSON form of a chat state.
pub fn state_json(from: &str, to: &str, state: ChatState, thread: Option<&str>) -> String {
    let out = StateOut {
        v: ENVELOPE_VERSION,
        from,
        to,
        state: state.as_str(),
        thread,
    };
    serde_json::to_string(&out).unwrap_or_default()
}

/// The JSON form of a receipt: `from` received the message `id` that `to` sent.
pub fn receipt_json(from: &str, to: &str, id: &str) -> String {
    let out = NoticeOut {
        v: ENVELOPE_VERSION,
        kind: "receipt",
        from,
        to,
        id,
        condition: None,
        text: None,
    };
    serde_json::to_string(&out).unwrap_or_default()
}

/// The JSON form of a bounce: the message `id` that `to` sent could not be delivered to
/// `from` (the error stanza's sender), for the reason in `bounce`.
pub fn bounce_json(from: &str, to: &str, id: &str, bounce: &Bounce) -> String {
    let out = NoticeOut {
        v: ENVELOPE_VERSION,
        kind: "error",
        from,
        to,
        id,
        condition: Some(&bounce.condition),
        text: Some(bounce.text.as_deref()),
    };
    serde_json::to_string(&out).unwrap_or_default()
}

/// Parses a chat state from MQTT: the bare name (`text` rules) or `{"state":..}` (`json`).
pub fn parse_state(
    payload: &[u8],
    json: bool,
) -> Result<(ChatState, Option<String>), PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    if !json {
        return Ok((text.trim().parse()?, None));
    }
    let s: StateIn = serde_json::from_str(text).map_err(|e| PayloadError::Json(e.to_string()))?;
    if let Some(v) = s.v.filter(|v| *v != ENVELOPE_VERSION) {
        return Err(PayloadError::Version(v));
    }
    Ok((s.state.parse()?, s.thread))
}

/// Longest id accepted from MQTT (ids go into XML attributes and audit records).
const MAX_ID: usize = 256;

fn check_id(id: Option<String>, what: &'static str) -> Result<Option<String>, PayloadError> {
    match id {
        Some(v) if v.is_empty() || v.len() > MAX_ID => Err(PayloadError::Id(what)),
        other => Ok(other),
    }
}

/// Checks an XEP-0082 date-time (`2026-11-25T10:00:00Z`, fractions and offsets allowed).
pub fn check_delay(stamp: &str) -> Result<(), PayloadError> {
    stamp
        .parse::<xmpp_parsers::date::DateTime>()
        .map(|_| ())
        .map_err(|_| PayloadError::Delay(stamp.to_string()))
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
    let state = json.state.as_deref().map(str::parse).transpose()?;
    if let Some(d) = &json.delay {
        check_delay(d)?;
    }
    Ok(ParsedPayload {
        body: json.body,
        kind,
        subject: json.subject,
        thread: json.thread,
        id: check_id(json.id, "id")?,
        extras: Extras {
            origin_id: check_id(json.origin_id, "origin_id")?,
            replaces: check_id(json.replaces, "replaces")?,
            delay: json.delay,
            state,
            ..Extras::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope as it was written through serde before the hand-written writer: the
    /// reference the writer is held to, byte for byte.
    #[derive(Serialize)]
    struct SerdeOut<'a> {
        v: u32,
        from: &'a str,
        to: &'a str,
        id: Option<&'a str>,
        #[serde(rename = "type")]
        kind: &'a str,
        body: &'a str,
        subject: Option<&'a str>,
        thread: Option<&'a str>,
        timestamp: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        origin_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stanza_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaces: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        delay: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<&'a str>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        receipt: bool,
    }

    /// Writes `e` both ways (serde with the time stamp the writer used) and compares the bytes;
    /// the result must also parse back to the same strings.
    fn same_as_serde(e: &Envelope) {
        let ours = e.to_json();
        let v: serde_json::Value =
            serde_json::from_str(&ours).unwrap_or_else(|err| panic!("not JSON ({err}): {ours:?}"));
        let stamp = v["timestamp"].as_str().unwrap();
        let reference = serde_json::to_string(&SerdeOut {
            v: ENVELOPE_VERSION,
            from: &e.from,
            to: &e.to,
            id: e.id.as_deref(),
            kind: e.kind.as_str(),
            body: &e.body,
            subject: e.subject.as_deref(),
            thread: e.thread.as_deref(),
            timestamp: stamp,
            origin_id: e.extras.origin_id.as_deref(),
            stanza_id: e.extras.stanza_id.as_deref(),
            replaces: e.extras.replaces.as_deref(),
            delay: e.extras.delay.as_deref(),
            state: e.extras.state.map(ChatState::as_str),
            receipt: e.extras.receipt_request,
        })
        .unwrap();
        assert_eq!(ours, reference);
        assert_eq!(v["body"].as_str(), Some(e.body.as_str()));
        assert_eq!(v["from"].as_str(), Some(e.from.as_str()));
        assert_eq!(v["subject"].as_str(), e.subject.as_deref());
    }

    fn envelope(text: &str) -> Envelope {
        Envelope {
            from: format!("{text}@x/{text}"),
            to: "b@y".into(),
            id: Some(text.into()),
            kind: MessageKind::Chat,
            body: text.into(),
            subject: Some(text.into()),
            thread: None,
            extras: Extras::default(),
        }
    }

    #[test]
    fn json_writer_escapes_as_serde_does() {
        let mut every_control: String = (0u8..0x20).map(char::from).collect();
        every_control.push_str("\u{7f}\u{80}\u{ff}");
        for text in [
            "",
            "plain",
            "\"quoted\" and \\back\\slash\\",
            "\u{8}\u{c}\n\r\t",
            "\u{0}\u{1}\u{1f}",
            &every_control,
            "Grüße, 日本語, \u{1F600}, \u{FFFF}, \u{FEFF}, \u{2028}\u{2029}",
            "</script>&<>'",
            "\\u0041 is not decoded",
            "ends with a backslash \\",
            "\"",
        ] {
            same_as_serde(&envelope(text));
        }
        let mut full = envelope("a\"b");
        full.thread = Some("t\n".into());
        full.id = None;
        full.subject = None;
        full.kind = MessageKind::Groupchat;
        full.extras = Extras {
            origin_id: Some("o\u{1}".into()),
            stanza_id: Some("s\\".into()),
            replaces: Some("m1".into()),
            delay: Some("2026-01-01T00:00:00Z".into()),
            state: Some(ChatState::Composing),
            receipt_request: true,
            received: Some("not written".into()),
            bounced: None,
        };
        same_as_serde(&full);
    }

    proptest::proptest! {
        #[test]
        fn json_writer_matches_serde_on_any_text(
            text in "(?s).{0,40}",
            other in proptest::collection::vec(proptest::char::any(), 0..20),
        ) {
            let mut e = envelope(&text);
            e.thread = Some(other.iter().collect());
            e.extras.state = Some(ChatState::Gone);
            same_as_serde(&e);
        }

        #[test]
        fn timestamp_matches_humantime(secs in 0u64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
            let mut out = String::new();
            push_timestamp(&mut out, t);
            proptest::prop_assert_eq!(out, humantime::format_rfc3339_millis(t).to_string());
        }
    }

    #[test]
    fn timestamp_cache_follows_the_second() {
        let base = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        // Within a second, across a second, back to an earlier second, and the end of a day
        // and of a year: each written as humantime writes it, truncated to the millisecond.
        for (secs, millis) in [
            (0_i64, 0_u64),
            (0, 999),
            (1, 0),
            (1, 1),
            (0, 500),
            (86_399, 999),
            (86_400, 0),
            (-1_795_000_000, 7),
            (31_535_999, 999),
        ] {
            let at = if secs < 0 {
                base - std::time::Duration::from_secs(secs.unsigned_abs())
            } else {
                base + std::time::Duration::from_secs(secs.unsigned_abs())
            } + std::time::Duration::from_micros(millis * 1000 + 999);
            let mut out = String::new();
            push_timestamp(&mut out, at);
            assert_eq!(out, humantime::format_rfc3339_millis(at).to_string());
            assert_eq!(out.len(), 24, "{out}");
        }
        // Outside what humantime can write: the nearest end of its range, no panic.
        for (at, written) in [
            (
                std::time::UNIX_EPOCH - std::time::Duration::from_secs(1),
                "1970-01-01T00:00:00.000Z",
            ),
            (
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_800),
                "9999-12-31T23:59:59.999Z",
            ),
        ] {
            let mut out = String::new();
            push_timestamp(&mut out, at);
            assert_eq!(out, written);
        }
    }

    #[test]
    fn envelope_timestamp_is_the_time_given() {
        let e = envelope("hi");
        let e = EnvelopeRef {
            from: &e.from,
            to: &e.to,
            id: e.id.as_deref(),
            kind: e.kind,
            body: &e.body,
            subject: None,
            thread: None,
            extras: &e.extras,
        };
        // 2026-11-25T10:00:00.123Z, and the same second with other milliseconds.
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_064_800_123);
        let v: serde_json::Value = serde_json::from_str(&envelope_json_at(&e, at)).unwrap();
        assert_eq!(v["timestamp"], "2025-11-25T10:00:00.123Z");
        let later = at + std::time::Duration::from_micros(876_999);
        let v: serde_json::Value = serde_json::from_str(&envelope_json_at(&e, later)).unwrap();
        assert_eq!(v["timestamp"], "2025-11-25T10:00:00.999Z");
    }

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
            extras: Extras::default(),
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
        assert!(v.get("origin_id").is_none() && v.get("receipt").is_none());
    }

    #[test]
    fn json_envelope_carries_ids_correction_delay_state_and_receipt_request() {
        let e = Envelope {
            from: "a@x".into(),
            to: "b@y".into(),
            id: Some("m2".into()),
            kind: MessageKind::Chat,
            body: "fixed".into(),
            subject: None,
            thread: None,
            extras: Extras {
                origin_id: Some("o2".into()),
                stanza_id: Some("s2".into()),
                replaces: Some("m1".into()),
                delay: Some("2026-01-01T00:00:00Z".into()),
                state: Some(ChatState::Active),
                receipt_request: true,
                received: None,
                bounced: None,
            },
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            (
                &v["origin_id"],
                &v["stanza_id"],
                &v["replaces"],
                &v["delay"],
                &v["state"],
                &v["receipt"]
            ),
            (
                &serde_json::json!("o2"),
                &serde_json::json!("s2"),
                &serde_json::json!("m1"),
                &serde_json::json!("2026-01-01T00:00:00Z"),
                &serde_json::json!("active"),
                &serde_json::json!(true)
            )
        );
    }

    #[test]
    fn states_and_receipts() {
        let v: serde_json::Value =
            serde_json::from_str(&state_json("a@x", "b@y", ChatState::Composing, None)).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["from"].as_str()),
            (Some("composing"), Some("a@x"))
        );
        let v: serde_json::Value = serde_json::from_str(&receipt_json("a@x", "b@y", "m1")).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["id"].as_str()),
            (Some("receipt"), Some("m1"))
        );
        assert_eq!(parse_state(b"paused", false).unwrap().0, ChatState::Paused);
        assert_eq!(
            parse_state(br#"{"state":"gone","thread":"t"}"#, true).unwrap(),
            (ChatState::Gone, Some("t".into()))
        );
        assert_eq!(
            parse_state(b"typing", false).unwrap_err(),
            PayloadError::State("typing".into())
        );
        assert!(matches!(
            parse_state(br#"{"state":"active","x":1}"#, true),
            Err(PayloadError::Json(_))
        ));
    }

    #[test]
    fn envelope_extras_from_mqtt() {
        let p = parse_json(
            br#"{"body":"b","origin_id":"o","replaces":"m1","delay":"2026-01-01T10:00:00.5+01:00","state":"active"}"#,
        )
        .unwrap();
        assert_eq!(p.extras.origin_id.as_deref(), Some("o"));
        assert_eq!(p.extras.replaces.as_deref(), Some("m1"));
        assert_eq!(p.extras.state, Some(ChatState::Active));
        assert_eq!(
            parse_json(br#"{"body":"b","delay":"yesterday"}"#).unwrap_err(),
            PayloadError::Delay("yesterday".into())
        );
        assert_eq!(
            parse_json(br#"{"body":"b","replaces":""}"#).unwrap_err(),
            PayloadError::Id("replaces")
        );
        assert_eq!(
            parse_json(br#"{"body":"b","state":"typing"}"#).unwrap_err(),
            PayloadError::State("typing".into())
        );
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
