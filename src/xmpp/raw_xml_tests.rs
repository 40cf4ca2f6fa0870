#![allow(clippy::unwrap_used, reason = "tests")]

use std::borrow::Cow;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio_xmpp::xmlstream::{self, StreamHeader, Timeouts};
use xmpp_parsers::message::MessageType;
use xmpp_parsers::ping::Ping;

use super::*;

const SERVER_HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' from='mqtt.localhost' id='s1'>";

/// The bytes tokio-xmpp's `XmlStream` (the writer before this module) writes for `items`
/// after the stream header, in a component stream set up as `connection::connect` did.
pub(crate) async fn via_xml_stream<T: AsXml>(items: &[T]) -> Vec<u8> {
    let (mut stream, server) = old_stream().await;
    for item in items {
        futures::SinkExt::send(&mut stream, item).await.unwrap();
    }
    old_bytes(stream, server).await
}

/// The old writer: an `XmlStream` after the header, and the server's end of its pipe.
pub(crate) type OldStream = xmlstream::XmlStream<BufReader<DuplexStream>, Element>;

pub(crate) async fn old_stream() -> (OldStream, DuplexStream) {
    let (ours, mut server) = tokio::io::duplex(1 << 22);
    server.write_all(SERVER_HEADER.as_bytes()).await.unwrap();
    let header = StreamHeader {
        to: Some(Cow::Borrowed("mqtt.localhost")),
        from: None,
        id: None,
    };
    let timeouts = Timeouts {
        read_timeout: Duration::from_secs(30),
        response_timeout: Duration::from_secs(30),
    };
    let pending = xmlstream::initiate_stream(BufReader::new(ours), ns::COMPONENT, header, timeouts)
        .await
        .unwrap();
    (pending.skip_features::<Element>(), server)
}

/// What `stream` wrote after its header (it is dropped first, so the pipe ends).
pub(crate) async fn old_bytes(stream: OldStream, mut server: DuplexStream) -> Vec<u8> {
    drop(stream);
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    // Skip our stream header: up to the end of `<stream:stream ...>`.
    let at = find(&all, b"<stream:stream").unwrap();
    let end = at + find(&all[at..], b">").unwrap() + 1;
    all[end..].to_vec()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn chat_bytes(c: &ChatXml) -> Vec<u8> {
    let mut out = Vec::new();
    write_chat(&mut out, c).unwrap();
    out
}

/// `bytes` (stanzas of the stream) parsed back as the children of a stream element.
pub(crate) fn parse_stanzas(bytes: &[u8]) -> Vec<Element> {
    let doc = format!(
        "<stream:stream xmlns='{}' xmlns:stream='{}'>{}</stream:stream>",
        ns::COMPONENT,
        ns::STREAM,
        std::str::from_utf8(bytes).unwrap()
    );
    let root: Element = doc.parse().unwrap();
    root.children().cloned().collect()
}

pub(crate) fn chat() -> ChatXml {
    ChatXml {
        from: "alice@mqtt.localhost".into(),
        to: "bob@localhost".into(),
        id: "xmb-1".into(),
        kind: MessageType::Chat,
        body: "hello".into(),
        subject: None,
        thread: None,
        state: None,
        request_receipt: false,
        origin_id: None,
        replaces: None,
    }
}

/// Every special character, tab, line feed and carriage return, unicode in several planes.
pub(crate) const TRICKY: &str =
    "a&b<c>d\"e'f\tg\nh\ri\r\nj]]>k &amp; &#39; 😀 ünï 中文 \u{7f}\u{85}\u{2028}\u{FFFD}\u{10FFFD}";

/// Messages covering every field and its absence.
pub(crate) fn cases() -> Vec<ChatXml> {
    let mut cases = vec![chat()];
    let mut full = chat();
    full.body = TRICKY.into();
    full.subject = Some(format!("subject {TRICKY}"));
    full.thread = Some(format!("thread {TRICKY}"));
    full.id = format!("id {TRICKY}");
    full.state = Some(State::Composing);
    full.request_receipt = true;
    full.origin_id = Some(format!("origin {TRICKY}"));
    full.replaces = Some(format!("replaced {TRICKY}"));
    cases.push(full.clone());
    let mut empty = chat();
    empty.body = String::new();
    empty.subject = Some(String::new());
    empty.thread = Some(String::new());
    empty.origin_id = Some(String::new());
    cases.push(empty);
    for (i, (kind, state)) in [
        (MessageType::Normal, State::Active),
        (MessageType::Headline, State::Paused),
        (MessageType::Groupchat, State::Inactive),
        (MessageType::Error, State::Gone),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = chat();
        c.kind = kind;
        c.state = Some(state);
        c.request_receipt = i % 2 == 0;
        c.body = "x".repeat(70_000 * (i % 2));
        c.from = "o'hara\\26@mqtt.localhost".into();
        c.to = "ünï@localhost/res&ource".into();
        cases.push(c);
    }
    cases
}

#[tokio::test]
async fn chat_bytes_are_the_bytes_xml_stream_wrote() {
    let cases = cases();
    let old = via_xml_stream(&cases).await;
    let new: Vec<u8> = cases.iter().flat_map(chat_bytes).collect();
    assert_eq!(
        String::from_utf8(new.clone()).unwrap(),
        String::from_utf8(old.clone()).unwrap()
    );
    // Parsed back, element by element: the same elements, and each the message's own.
    let (old, new) = (parse_stanzas(&old), parse_stanzas(&new));
    assert_eq!(new.len(), cases.len());
    assert_eq!(new, old);
    for (el, c) in new.iter().zip(&cases) {
        assert_eq!(el, &c.to_element());
    }
}

#[test]
fn text_survives_the_round_trip() {
    let mut c = chat();
    c.body = TRICKY.into();
    c.thread = Some(TRICKY.into());
    c.subject = Some(TRICKY.into());
    c.id = TRICKY.into();
    c.origin_id = Some(TRICKY.into());
    let el = parse_stanzas(&chat_bytes(&c)).pop().unwrap();
    for child in ["body", "subject", "thread"] {
        let got = el.get_child(child, ns::COMPONENT).unwrap().text();
        assert_eq!(got, TRICKY, "{child}");
    }
    assert_eq!(el.attr("id"), Some(TRICKY));
    let origin = el.get_child("origin-id", ns::SID).unwrap();
    assert_eq!(origin.attr("id"), Some(TRICKY));
}

#[test]
fn escapes() {
    let text = |s: &str| {
        let mut out = Vec::new();
        escape(&mut out, s, false).unwrap();
        String::from_utf8(out).unwrap()
    };
    let attr = |s: &str| {
        let mut out = Vec::new();
        escape(&mut out, s, true).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        text("a&b<c>d\"e'f\tg\nh\ri"),
        "a&amp;b&lt;c&gt;d\"e'f\tg\nh&#xd;i"
    );
    assert_eq!(
        attr("a&b<c>d\"e'f\tg\nh\ri"),
        "a&amp;b&lt;c&gt;d&#34;e&#39;f&#x9;g&#xa;h&#xd;i"
    );
    assert_eq!(text(""), "");
    assert_eq!(text("😀ü\u{FFFD}\u{EFFF}"), "😀ü\u{FFFD}\u{EFFF}");
}

/// The escaper byte by byte through [`SPECIAL`], as it was before the word-at-a-time scan.
fn escape_bytewise(s: &str, attr: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'\r' => b"&#xd;",
            b'"' if attr => b"&#34;",
            b'\'' if attr => b"&#39;",
            b'\n' if attr => b"&#xa;",
            b'\t' if attr => b"&#x9;",
            0xEF if bytes.get(i + 1) == Some(&0xBF)
                && matches!(bytes.get(i + 2), Some(0xBE | 0xBF)) =>
            {
                return None;
            }
            b if b < 0x20 && !matches!(b, b'\t' | b'\n') => return None,
            _ => std::slice::from_ref(&bytes[i]),
        };
        out.extend_from_slice(rep);
    }
    Some(out)
}

/// The word-at-a-time scan finds every special byte wherever it falls in a word (each
/// position of strings longer than two words, every byte value there), and its set is
/// exactly [`SPECIAL`].
#[test]
fn the_word_scan_misses_no_special_byte() {
    for b in 0..=255u8 {
        let word = u64::from_ne_bytes([b'a', b'b', b'c', b, b'd', b'e', b'f', b'g']);
        assert_eq!(has_special(word), SPECIAL[b as usize], "byte {b:#x}");
    }
    let specials = [
        "&", "<", ">", "\"", "'", "\r", "\n", "\t", "\u{1}", "\u{1f}", "\u{FFFE}", "\u{FFFF}",
        "\u{EFFF}", "\u{FFFD}", "é", "😀",
    ];
    for special in specials {
        for len in 0..24 {
            for at in 0..=len {
                let mut text: String = "x".repeat(len);
                text.insert_str(at, special);
                for attr in [false, true] {
                    let mut out = Vec::new();
                    let got = escape(&mut out, &text, attr).ok().map(|()| out);
                    assert_eq!(got, escape_bytewise(&text, attr), "{text:?} attr {attr}");
                }
            }
        }
    }
    assert_eq!(next_special(b"0123456789abcdef<", 0), 16);
    assert_eq!(next_special(b"0123456789abcdef<", 17), 17);
    assert_eq!(next_special(b"&123456789", 1), 10);
}

/// Every code point, alone and between others, as text and as an attribute value: the same
/// bytes as rxml's encoder, or refused by both; refused exactly when `xml_text` says so.
#[test]
fn every_character_as_rxml_writes_it() {
    let mut fallback = Fallback::default();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut c = chat();
    for cp in 0..=0x10_FFFF_u32 {
        let Some(ch) = char::from_u32(cp) else {
            continue;
        };
        // Most of the planes are alike: every character up to U+FFFF, then a sample.
        if cp > 0xFFFF && cp % 251 != 0 {
            continue;
        }
        c.body.clear();
        c.body.push('a');
        c.body.push(ch);
        c.body.push('b');
        c.id.clear();
        c.id.push(ch);
        ours.clear();
        theirs.clear();
        let a = write_chat(&mut ours, &c);
        let b = fallback.write(&mut theirs, &c);
        assert_eq!(a.is_ok(), b.is_ok(), "U+{cp:04X}");
        assert_eq!(
            a.is_ok(),
            super::super::message_xml::xml_text(&c.body),
            "U+{cp:04X}"
        );
        assert_eq!(ours, theirs, "U+{cp:04X}");
        if a.is_err() {
            assert!(ours.is_empty(), "U+{cp:04X}: nothing written");
        }
    }
}

/// The fuzz target's check, on the cases above and on refused text.
#[test]
fn the_fuzz_check_passes_on_known_cases() {
    for text in [TRICKY, "", "plain", "\r\n", "a\u{1}b", "\u{FFFE}", "]]>"] {
        check_against_rxml(text, Some(text), Some(text), "id");
        check_against_rxml("body", None, None, text);
    }
}

type Setter = fn(&mut ChatXml, String);

#[test]
fn a_character_xml_cannot_carry_is_refused_and_nothing_written() {
    for bad in [
        "\u{0}", "\u{1}", "\u{8}", "\u{b}", "\u{c}", "\u{1f}", "\u{FFFE}", "\u{FFFF}",
    ] {
        let fields: [(&str, Setter); 6] = [
            ("body", |c, s| c.body = s),
            ("subject", |c, s| c.subject = Some(s)),
            ("thread", |c, s| c.thread = Some(s)),
            ("id", |c, s| c.id = s),
            ("origin id", |c, s| c.origin_id = Some(s)),
            ("correction id", |c, s| c.replaces = Some(s)),
        ];
        for (what, set) in fields {
            let mut c = chat();
            set(&mut c, format!("ok {bad} ok"));
            let mut out = b"before".to_vec();
            assert_eq!(write_chat(&mut out, &c), Err(NotXmlText(what)), "{bad:?}");
            assert_eq!(out, b"before");
        }
    }
}

pub(crate) fn ping(id: &str) -> Iq {
    Iq::Get {
        from: Some("mqtt.localhost".parse().unwrap()),
        to: Some("localhost".parse().unwrap()),
        id: id.into(),
        payload: Ping.into(),
    }
}

#[tokio::test]
async fn ping_bytes_are_the_bytes_xml_stream_wrote() {
    let pings = [
        ping("xmb-ping-a5bc9afb-12"),
        ping("i'd <&>\""),
        Iq::Get {
            from: None,
            to: None,
            id: "p".into(),
            payload: Ping.into(),
        },
    ];
    let old = via_xml_stream(&pings).await;
    let mut new = Vec::new();
    for p in &pings {
        assert!(is_ping(p));
        write_ping(&mut new, p).unwrap();
    }
    assert_eq!(
        String::from_utf8(new.clone()).unwrap(),
        String::from_utf8(old.clone()).unwrap()
    );
    assert_eq!(parse_stanzas(&new), parse_stanzas(&old));
    let mut out = Vec::new();
    assert!(write_ping(&mut out, &ping("a\u{1}")).is_err());
    assert!(out.is_empty());
}

#[test]
fn only_a_plain_ping_is_a_ping() {
    let with_attr: Element = "<ping xmlns='urn:xmpp:ping' a='1'/>".parse().unwrap();
    let with_child: Element = "<ping xmlns='urn:xmpp:ping'><x/></ping>".parse().unwrap();
    let other: Element = "<query xmlns='http://jabber.org/protocol/disco#info'/>"
        .parse()
        .unwrap();
    for payload in [with_attr, with_child, other] {
        let iq = Iq::Get {
            from: None,
            to: None,
            id: "1".into(),
            payload,
        };
        assert!(!is_ping(&iq));
    }
    let result = Iq::Result {
        from: None,
        to: None,
        id: "1".into(),
        payload: None,
    };
    assert!(!is_ping(&result));
}
