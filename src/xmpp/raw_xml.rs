//! Outbound stanzas as bytes, without an XML encoder.
//!
//! After the handshake the link writes the stanzas of the MQTT → XMPP path (a [`ChatXml`]) and
//! its keepalive pings straight to bytes here, instead of through tokio-xmpp's `XmlStream`
//! and rxml's encoder (which took about a fifth of the bridge's CPU on that path: an `Item`
//! per name, attribute and text, a namespace tracker, an escaper per item). The bytes are the
//! ones rxml's encoder wrote for the same stanza in the component stream: single-quoted
//! attributes, the same escapes (XML 1.0: `& < >` everywhere, `" '` and tab, line feed and
//! carriage return in attribute values, carriage return in text too, so that a parser's
//! line-end and attribute-value normalisation gives back the same string), children in the
//! stream's default namespace without a declaration, other namespaces declared on their
//! element. Tests compare them byte for byte with rxml's output and parse them back.
//!
//! A character XML cannot carry (control characters other than tab, line feed and carriage
//! return, U+FFFE, U+FFFF) is refused, never written: [`ChatXml::check`] refuses such a
//! message at translation, and the writer checks again as it escapes.
//!
//! Everything else (replies, errors, presences, typed `Message`s) is written by [`Fallback`],
//! rxml's encoder set up as `XmlStream` set up its own, into the same buffer, so the order of
//! stanzas on the wire is the order they were handed over.

use rxml::writer::{Encoder, SimpleNamespaces, TrackNamespace};
use rxml::{Namespace, NcName};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xso::AsXml;

use super::message_xml::{ChatXml, NotXmlText, State};

/// What each byte needs when escaping: 0 nothing, 1 something (see [`escape`]).
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'"' as usize] = true;
    t[b'\'' as usize] = true;
    // Lead byte of U+FFFE and U+FFFF (EF BF BE, EF BF BF), which XML cannot carry.
    t[0xEF] = true;
    t
};

/// `b` in every byte of a word.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// Whether some byte of `w` is zero (exact as a yes/no; which byte is not told).
const fn has_zero(w: u64) -> bool {
    w.wrapping_sub(splat(1)) & !w & splat(0x80) != 0
}

/// Whether some byte of `w` is in [`SPECIAL`] (the same set: below 0x20, `& < > " '` and 0xEF).
const fn has_special(w: u64) -> bool {
    // A byte below 0x20: subtracting 0x20 borrows into its high bit, which was clear.
    w.wrapping_sub(splat(0x20)) & !w & splat(0x80) != 0
        || has_zero(w ^ splat(b'&'))
        || has_zero(w ^ splat(b'<'))
        || has_zero(w ^ splat(b'>'))
        || has_zero(w ^ splat(b'"'))
        || has_zero(w ^ splat(b'\''))
        || has_zero(w ^ splat(0xEF))
}

/// The index of the first byte of `bytes[from..]` in [`SPECIAL`], or `bytes.len()`. Text is
/// mostly clean: eight bytes are tested at once, and a clean run is then copied in one go.
fn next_special(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        if has_special(u64::from_ne_bytes(word)) {
            break;
        }
        i += 8;
    }
    while i < bytes.len() && !SPECIAL[bytes[i] as usize] {
        i += 1;
    }
    i
}

/// Appends `s` escaped as text (or, with `attr`, as a single-quoted attribute value). Fails
/// on a character XML cannot carry; `out` may then hold part of `s` (callers truncate).
fn escape(out: &mut Vec<u8>, s: &str, attr: bool) -> Result<(), ()> {
    let bytes = s.as_bytes();
    let mut done = 0;
    let mut i = 0;
    loop {
        i = next_special(bytes, i);
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\r' => b"&#xd;",
            b'"' if attr => b"&#34;",
            b'\'' if attr => b"&#39;",
            b'\n' if attr => b"&#xa;",
            b'\t' if attr => b"&#x9;",
            b'"' | b'\'' | b'\n' | b'\t' => {
                i += 1;
                continue;
            }
            0xEF => {
                if bytes.get(i + 1) == Some(&0xBF) && matches!(bytes.get(i + 2), Some(0xBE | 0xBF))
                {
                    return Err(());
                }
                i += 1;
                continue;
            }
            _ => return Err(()),
        };
        out.extend_from_slice(&bytes[done..i]);
        out.extend_from_slice(rep);
        i += 1;
        done = i;
    }
    out.extend_from_slice(&bytes[done..]);
    Ok(())
}

/// ` name='value'`.
fn attr(out: &mut Vec<u8>, name: &str, value: &str) -> Result<(), ()> {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    escape(out, value, true)?;
    out.push(b'\'');
    Ok(())
}

/// `<name>text</name>` in the stream's namespace.
fn text_element(out: &mut Vec<u8>, name: &str, text: &str) -> Result<(), ()> {
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    escape(out, text, false)?;
    out.extend_from_slice(b"</");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    Ok(())
}

/// `<name xmlns='ns' id='id'></name>` (rxml writes an element without children so).
fn empty_element(out: &mut Vec<u8>, name: &str, ns: &str, id: Option<&str>) -> Result<(), ()> {
    out.push(b'<');
    out.extend_from_slice(name.as_bytes());
    attr(out, "xmlns", ns)?;
    if let Some(id) = id {
        attr(out, "id", id)?;
    }
    out.extend_from_slice(b"></");
    out.extend_from_slice(name.as_bytes());
    out.push(b'>');
    Ok(())
}

/// Appends `c` as a `<message/>` of the component stream. On error nothing is appended.
pub(crate) fn write_chat(out: &mut Vec<u8>, c: &ChatXml) -> Result<(), NotXmlText> {
    let start = out.len();
    let result = chat_bytes(out, c);
    if result.is_err() {
        out.truncate(start);
        // Name the field as the translation's check does.
        return Err(c.check().err().unwrap_or(NotXmlText("message")));
    }
    Ok(())
}

fn chat_bytes(out: &mut Vec<u8>, c: &ChatXml) -> Result<(), ()> {
    out.extend_from_slice(b"<message");
    attr(out, "from", &c.from)?;
    attr(out, "to", &c.to)?;
    attr(out, "id", &c.id)?;
    if let Some(kind) = super::message_xml::type_text(&c.kind) {
        attr(out, "type", kind)?;
    }
    out.push(b'>');
    if !c.body.is_empty() {
        text_element(out, "body", &c.body)?;
    }
    if let Some(subject) = &c.subject {
        text_element(out, "subject", subject)?;
    }
    if let Some(thread) = &c.thread {
        text_element(out, "thread", thread)?;
    }
    if let Some(state) = c.state {
        let name = match state {
            State::Active => "active",
            State::Composing => "composing",
            State::Paused => "paused",
            State::Inactive => "inactive",
            State::Gone => "gone",
        };
        empty_element(out, name, ns::CHATSTATES, None)?;
    }
    if c.request_receipt {
        empty_element(out, "request", ns::RECEIPTS, None)?;
    }
    if let Some(origin) = &c.origin_id {
        empty_element(out, "origin-id", ns::SID, Some(origin))?;
    }
    if let Some(replaces) = &c.replaces {
        empty_element(out, "replace", ns::MESSAGE_CORRECT, Some(replaces))?;
    }
    out.extend_from_slice(b"</message>");
    Ok(())
}

/// Whether `iq` is a plain XEP-0199 ping (`<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>`
/// with nothing else in the payload), which [`write_ping`] writes.
pub(crate) fn is_ping(iq: &Iq) -> bool {
    match iq {
        Iq::Get { payload, .. } => {
            payload.is("ping", ns::PING)
                && payload.attrs().is_empty()
                && payload.nodes().next().is_none()
        }
        _ => false,
    }
}

/// Appends a ping `iq` (see [`is_ping`]; anything else is written as a ping too, so check
/// first). On error nothing is appended.
pub(crate) fn write_ping(out: &mut Vec<u8>, iq: &Iq) -> Result<(), NotXmlText> {
    let Iq::Get { from, to, id, .. } = iq else {
        return Err(NotXmlText("iq"));
    };
    let start = out.len();
    let result = (|| {
        out.extend_from_slice(b"<iq type='get'");
        if let Some(from) = from {
            attr(out, "from", from.as_str())?;
        }
        if let Some(to) = to {
            attr(out, "to", to.as_str())?;
        }
        attr(out, "id", id)?;
        out.push(b'>');
        empty_element(out, "ping", ns::PING, None)?;
        out.extend_from_slice(b"</iq>");
        Ok(())
    })();
    result.map_err(|()| {
        out.truncate(start);
        NotXmlText("iq id")
    })
}

/// rxml's encoder for everything [`write_chat`] and [`write_ping`] do not cover, in the state
/// `XmlStream`'s encoder was in after the stream header: inside `<stream:stream>`, whose
/// default namespace is the component namespace, so stanzas are written without declaring it.
pub(crate) struct Fallback {
    encoder: Encoder<SimpleNamespaces>,
}

impl Default for Fallback {
    fn default() -> Self {
        Self {
            encoder: stream_encoder(),
        }
    }
}

/// An encoder as `XmlStream` sets one up, with the stream header already encoded (the bytes
/// are thrown away: the header went out during the handshake).
fn stream_encoder() -> Encoder<SimpleNamespaces> {
    let mut encoder = Encoder::new();
    let stream = NcName::try_from("stream").unwrap_or_else(|_| unreachable!("a valid name"));
    encoder
        .ns_tracker_mut()
        .declare_fixed(Some(stream.as_ref()), Namespace::from_str(ns::STREAM));
    encoder
        .ns_tracker_mut()
        .declare_fixed(None, Namespace::from_str(ns::COMPONENT));
    let mut header = Vec::new();
    let head = rxml::Item::ElementHeadStart(Namespace::from_str(ns::STREAM), stream.as_ref());
    // Encoding a start tag in the right state does not fail.
    encoder.encode(head, &mut header).ok();
    encoder.encode(rxml::Item::ElementHeadEnd, &mut header).ok();
    encoder
}

impl Fallback {
    /// Appends `xso` as a child of the stream. On error nothing is appended and the encoder
    /// starts over (its state may have been left inside the refused stanza).
    pub(crate) fn write<T: AsXml>(&mut self, out: &mut Vec<u8>, xso: &T) -> Result<(), String> {
        let start = out.len();
        let result = (|| {
            for item in xso.as_xml_iter().map_err(|e| e.to_string())? {
                let item = item.map_err(|e| e.to_string())?;
                self.encoder
                    .encode(item.as_rxml_item(), out)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })();
        if result.is_err() {
            out.truncate(start);
            self.encoder = stream_encoder();
        }
        result
    }

    /// Appends an untyped element.
    pub(crate) fn write_element(&mut self, out: &mut Vec<u8>, el: &Element) -> Result<(), String> {
        self.write(out, el)
    }
}

/// `</stream:stream>`.
pub(crate) const STREAM_FOOTER: &[u8] = b"</stream:stream>";

/// For the fuzz target `payload_json` (through `xmpp::check_chat_writer`): a chat message
/// with these texts in every text field and attribute written by [`write_chat`] and by rxml's
/// encoder; panics unless both give the same bytes or both refuse it, refusing exactly when
/// [`ChatXml::check`] does, and unless the bytes parse back to the message's element.
pub(crate) fn check_against_rxml(
    body: &str,
    subject: Option<&str>,
    thread: Option<&str>,
    id: &str,
) {
    let c = ChatXml {
        from: "bob@mqtt.localhost".into(),
        to: "alice@localhost".into(),
        id: id.into(),
        kind: xmpp_parsers::message::MessageType::Chat,
        body: body.into(),
        subject: subject.map(Into::into),
        thread: thread.map(Into::into),
        state: Some(State::Active),
        request_receipt: true,
        origin_id: Some(id.into()),
        replaces: Some(body.into()),
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let a = write_chat(&mut ours, &c);
    let b = Fallback::default().write(&mut theirs, &c);
    assert_eq!(a.is_ok(), b.is_ok(), "{a:?} against {b:?}");
    assert_eq!(a.is_ok(), c.check().is_ok(), "{a:?}");
    assert_eq!(ours, theirs);
    if a.is_err() {
        assert!(ours.is_empty(), "nothing written for a refused message");
        return;
    }
    let mut doc = format!(
        "<stream:stream xmlns='{}' xmlns:stream='{}'>",
        ns::COMPONENT,
        ns::STREAM
    )
    .into_bytes();
    doc.extend_from_slice(&ours);
    doc.extend_from_slice(STREAM_FOOTER);
    let parsed = std::str::from_utf8(&doc)
        .ok()
        .and_then(|doc| doc.parse::<Element>().ok())
        .and_then(|root| root.children().next().cloned());
    assert_eq!(parsed, Some(c.to_element()));
}

#[cfg(test)]
#[path = "raw_xml_tests.rs"]
pub(crate) mod tests;
