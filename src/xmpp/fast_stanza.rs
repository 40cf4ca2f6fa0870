//! A hand-written reader for the common `<message/>`: from the stanza's bytes straight to
//! xmpp-parsers' `Message`, with no XML event objects and no attribute maps in between.
//!
//! It understands a deliberately small, strict subset of XML and gives up (`None`) on
//! anything outside it, so that the caller reads that stanza the general way (rxml and
//! xmpp-parsers' builder), which then also reports what is wrong with it. The subset: UTF-8
//! without characters XML forbids and without carriage returns; element and attribute names
//! of ASCII letters, digits, `-`, `_`, `.` without prefixes; namespaces only as `xmlns='...'`
//! (no `xmlns:p`, no `xml:lang`, no other prefixed attribute); the five predefined entities
//! and character references; no CDATA (the splitter has already refused comments,
//! processing instructions and DTDs). Attribute values without raw tabs or newlines (XML
//! normalises those to spaces). On the `<message/>` itself: `from`/`to` that are valid JIDs,
//! a known `type`, no text of its own, `<body/>`/`<subject/>` without attributes or child
//! elements and at most one of each, no `<thread/>` or other child in the stanza namespace;
//! children in other namespaces become payload `Element`s exactly as xmpp-parsers would
//! build them. Everything else falls back. `check_against_rxml` (unit tests, fuzz target
//! `stanza_reader`) holds it to the general way's result.

use std::borrow::Cow;
use std::collections::BTreeMap;

use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Lang, Message, MessageType};
use xmpp_parsers::minidom::{Element, Node};
use xmpp_parsers::ns;

/// A cursor over the stanza's text.
struct Cur<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

/// Attributes read per tag at most (more: not in the subset).
const MAX_ATTRS: usize = 8;

/// A start tag as read: name, `xmlns` if declared, other attributes (decoded), empty or not.
struct Tag<'a> {
    name: &'a str,
    xmlns: Option<Cow<'a, str>>,
    attrs: [(&'a str, Cow<'a, str>); MAX_ATTRS],
    n_attrs: usize,
    empty: bool,
}

impl<'a> Tag<'a> {
    fn attrs(&self) -> &[(&'a str, Cow<'a, str>)] {
        &self.attrs[..self.n_attrs]
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// Whether `c` is a character XML 1.0 allows.
fn is_xml_char(c: u32) -> bool {
    matches!(c, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Decodes the entity and character references of `raw` (text or an attribute value);
/// `None` for anything not plainly valid.
fn unescape(raw: &str) -> Option<Cow<'_, str>> {
    let Some(first) = memchr::memchr(b'&', raw.as_bytes()) else {
        return Some(Cow::Borrowed(raw));
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut rest = &raw[first..];
    while let Some(amp) = memchr::memchr(b'&', rest.as_bytes()) {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = memchr::memchr(b';', after.as_bytes())?;
        let name = &after[..semi];
        match name {
            "amp" => out.push('&'),
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            _ => {
                let digits = name.strip_prefix('#')?;
                let code = match digits.strip_prefix('x') {
                    Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        u32::from_str_radix(hex, 16).ok()?
                    }
                    None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                        digits.parse().ok()?
                    }
                    _ => return None,
                };
                if !is_xml_char(code) {
                    return None;
                }
                out.push(char::from_u32(code)?);
            }
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

impl<'a> Cur<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_space(&mut self) -> bool {
        let from = self.i;
        while self.peek().is_some_and(is_space) {
            self.i += 1;
        }
        self.i > from
    }

    fn name(&mut self) -> Option<&'a str> {
        let from = self.i;
        if !self.peek().is_some_and(is_name_start) {
            return None;
        }
        self.i += 1;
        while self.peek().is_some_and(is_name_byte) {
            self.i += 1;
        }
        // A prefix (`:`) or anything else not ending a name: not in the subset.
        Some(&self.s[from..self.i])
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// A start tag; the cursor is on its `<`.
    fn start_tag(&mut self) -> Option<Tag<'a>> {
        self.expect(b'<')?;
        let name = self.name()?;
        let mut tag = Tag {
            name,
            xmlns: None,
            attrs: Default::default(),
            n_attrs: 0,
            empty: false,
        };
        loop {
            let spaced = self.skip_space();
            match self.peek()? {
                b'>' => {
                    self.i += 1;
                    return Some(tag);
                }
                b'/' => {
                    self.i += 1;
                    self.expect(b'>')?;
                    tag.empty = true;
                    return Some(tag);
                }
                _ if !spaced => return None,
                _ => {}
            }
            let attr = self.name()?;
            self.skip_space();
            self.expect(b'=')?;
            self.skip_space();
            let quote = self.peek()?;
            if quote != b'\'' && quote != b'"' {
                return None;
            }
            self.i += 1;
            let len = memchr::memchr(quote, &self.b[self.i..])?;
            let raw = &self.s[self.i..self.i + len];
            self.i += len + 1;
            // `<` is not allowed in values; tabs and newlines would be normalised to spaces.
            if memchr::memchr3(b'<', b'\t', b'\n', raw.as_bytes()).is_some() {
                return None;
            }
            let value = unescape(raw)?;
            if attr == "xmlns" {
                if tag.xmlns.is_some() || value.is_empty() {
                    return None;
                }
                tag.xmlns = Some(value);
            } else {
                if tag.n_attrs == MAX_ATTRS || tag.attrs().iter().any(|(n, _)| *n == attr) {
                    return None;
                }
                tag.attrs[tag.n_attrs] = (attr, value);
                tag.n_attrs += 1;
            }
        }
    }

    /// Character data up to the next `<` (decoded), or `None` when it is not plain text.
    fn text(&mut self) -> Option<Cow<'a, str>> {
        let len = memchr::memchr(b'<', &self.b[self.i..])?;
        let raw = &self.s[self.i..self.i + len];
        self.i += len;
        if memchr::memchr(b'>', raw.as_bytes()).is_some()
            && memchr::memmem::find(raw.as_bytes(), b"]]>").is_some()
        {
            return None;
        }
        unescape(raw)
    }

    /// The end tag of `name`; the cursor is on its `<`.
    fn end_tag(&mut self, name: &str) -> Option<()> {
        self.expect(b'<')?;
        self.expect(b'/')?;
        let got = self.name()?;
        self.skip_space();
        self.expect(b'>')?;
        (got == name).then_some(())
    }

    fn at_end_tag(&self) -> bool {
        self.b.get(self.i..self.i + 2) == Some(b"</")
    }

    /// The content of an element whose start tag was read, as a payload `Element` (in the
    /// namespace it declares, or else `parent_ns`).
    fn element(&mut self, tag: Tag<'a>, parent_ns: &str) -> Option<Element> {
        let Tag {
            name,
            xmlns,
            attrs,
            n_attrs,
            empty,
        } = tag;
        let ns_ = xmlns.as_deref().unwrap_or(parent_ns);
        let mut builder = Element::builder(name, ns_);
        for (attr, value) in attrs.into_iter().take(n_attrs) {
            builder = builder.attr(
                xmpp_parsers::minidom::rxml::NcName::try_from(attr).ok()?,
                value.into_owned(),
            );
        }
        let mut el = builder.build();
        if empty {
            return Some(el);
        }
        loop {
            if self.peek()? != b'<' {
                let text = self.text()?;
                if !text.is_empty() {
                    el.append_node(Node::Text(text.into_owned()));
                }
                continue;
            }
            if self.at_end_tag() {
                self.end_tag(name)?;
                return Some(el);
            }
            let child = self.start_tag()?;
            let child = self.element(child, ns_)?;
            el.append_child(child);
        }
    }

    /// The text of a `<body/>` or `<subject/>` whose start tag was read.
    fn text_only(&mut self, tag: &Tag<'a>) -> Option<String> {
        if tag.n_attrs > 0 {
            return None;
        }
        if tag.empty {
            return Some(String::new());
        }
        let text = if self.peek()? == b'<' {
            Cow::Borrowed("")
        } else {
            self.text()?
        };
        self.end_tag(tag.name)?;
        Some(text.into_owned())
    }
}

/// Checks the characters of the whole stanza: valid UTF-8, no character XML forbids, no
/// carriage return (line ends would need normalising).
fn plain_chars(bytes: &[u8]) -> Option<&str> {
    // Without a short cut, so that the compiler checks many bytes per instruction: almost
    // every stanza is clean, and the whole of it is looked at either way.
    let control = (bytes.iter()).fold(false, |seen, &b| {
        seen | ((b < 0x20) & (b != b'\t') & (b != b'\n'))
    });
    if control {
        return None;
    }
    let s = std::str::from_utf8(bytes).ok()?;
    if !s.is_ascii() && s.chars().any(|c| matches!(c, '\u{FFFE}' | '\u{FFFF}')) {
        return None;
    }
    Some(s)
}

fn message_type(value: &str) -> Option<MessageType> {
    Some(match value {
        "chat" => MessageType::Chat,
        "normal" => MessageType::Normal,
        "headline" => MessageType::Headline,
        "groupchat" => MessageType::Groupchat,
        "error" => MessageType::Error,
        _ => return None,
    })
}

/// How many JIDs [`JidCache`] keeps.
const CACHED_JIDS: usize = 8;

/// The last few valid JIDs read, by their text as written (after entity decoding): the same
/// senders and recipients come again and again on a link, and validating a JID (nodeprep,
/// IDNA, resourceprep) costs several times more than copying the result. The cache changes
/// no result: a JID is a function of its text, and only valid ones are kept.
#[derive(Debug, Clone, Default)]
pub(crate) struct JidCache {
    slots: [Option<(Box<str>, Jid)>; CACHED_JIDS],
    /// The slot to replace next (oldest first).
    next: usize,
}

impl JidCache {
    /// The JID `text` stands for, or `None` when it is not valid.
    pub(crate) fn jid(&mut self, text: &str) -> Option<Jid> {
        for (known, jid) in self.slots.iter().flatten() {
            if **known == *text {
                return Some(jid.clone());
            }
        }
        let jid = Jid::new(text).ok()?;
        self.slots[self.next] = Some((text.into(), jid.clone()));
        self.next = (self.next + 1) % CACHED_JIDS;
        Some(jid)
    }
}

/// Reads `bytes`, one complete element of a component stream whose default namespace is
/// `jabber:component:accept` (no `xml:lang` in scope), as a `Message`; `None` when it is not
/// a `<message/>` or not in the subset this reader understands. JIDs are validated through
/// `jids`.
pub(crate) fn message(bytes: &[u8], jids: &mut JidCache) -> Option<Message> {
    let s = plain_chars(bytes)?;
    let mut cur = Cur { s, b: bytes, i: 0 };
    let tag = cur.start_tag()?;
    if tag.name != "message" || tag.xmlns.as_deref().is_some_and(|x| x != ns::COMPONENT) {
        return None;
    }
    let mut m = Message {
        from: None,
        to: None,
        id: None,
        type_: MessageType::Normal,
        bodies: BTreeMap::new(),
        subjects: BTreeMap::new(),
        thread: None,
        payloads: Vec::new(),
    };
    for (name, value) in tag.attrs() {
        match *name {
            "from" => m.from = Some(jids.jid(value)?),
            "to" => m.to = Some(jids.jid(value)?),
            "id" => m.id = Some(Id(value.clone().into_owned())),
            "type" => m.type_ = message_type(value)?,
            // Unknown attributes are tolerated (xmpp-parsers without `pedantic`).
            _ => {}
        }
    }
    if !tag.empty {
        loop {
            if cur.peek()? != b'<' {
                return None;
            }
            if cur.at_end_tag() {
                cur.end_tag("message")?;
                break;
            }
            let child = cur.start_tag()?;
            match child.xmlns.as_deref() {
                None | Some(ns::COMPONENT) => {
                    let map = match child.name {
                        "body" => &mut m.bodies,
                        "subject" => &mut m.subjects,
                        _ => return None,
                    };
                    let text = cur.text_only(&child)?;
                    if map.insert(Lang(String::new()), text).is_some() {
                        return None;
                    }
                }
                Some(_) => {
                    let el = cur.element(child, ns::COMPONENT)?;
                    m.payloads.push(el);
                }
            }
        }
    }
    (cur.i == bytes.len()).then_some(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn references_are_decoded_and_bad_ones_refused() {
        assert_eq!(unescape("a &amp; b").unwrap(), "a & b");
        assert_eq!(
            unescape("&lt;&gt;&quot;&apos;&#65;&#x1F600;").unwrap(),
            "<>\"'A\u{1F600}"
        );
        for bad in [
            "&",
            "&amp",
            "&foo;",
            "&#;",
            "&#x;",
            "&#0;",
            "&#xD800;",
            "&#x110000;",
            "&#1a;",
        ] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_subset_is_read() {
        let c = "xmlns='jabber:component:accept'";
        let fall_back = [
            format!("<message {c} xml:lang='en'/>"),
            format!("<message {c}><thread>t</thread></message>"),
            format!("<message {c}><body xml:lang='de'>x</body></message>"),
            format!("<message {c}><body>a</body><body>b</body></message>"),
            format!("<message {c}><body><b/></body></message>"),
            format!("<message {c}><foo/></message>"),
            format!("<message {c}>text</message>"),
            format!("<message {c}><x:y xmlns:x='urn:x'/></message>"),
            format!("<message {c}><body><![CDATA[x]]></body></message>"),
            format!("<message {c}><body>a\r\nb</body></message>"),
            format!("<message {c} to='a@b' id='x\ty'/>"),
            format!("<message {c} type='bogus'/>"),
            format!("<message {c} to='@b'/>"),
            format!("<message {c} to='a'to='b'/>"),
            format!("<message {c} id='1' id='2'/>"),
            format!("<message {c}><body>a</bodyx></message>"),
            format!("<message {c}><body>a]]>b</body></message>"),
            format!("<presence {c}/>"),
            "<message xmlns='jabber:client'/>".to_owned(),
        ];
        for xml in fall_back {
            assert_eq!(
                message(xml.as_bytes(), &mut JidCache::default()),
                None,
                "{xml}"
            );
        }
        let m = message(
            format!(
                "<message {c} to='b@x' type='chat'><body>hi &amp; bye</body>\
                 <x xmlns='urn:x' a='1'>t<y>u</y></x></message>"
            )
            .as_bytes(),
            &mut JidCache::default(),
        )
        .unwrap();
        assert_eq!(m.bodies[&Lang(String::new())], "hi & bye");
        assert_eq!(m.payloads.len(), 1);
        assert_eq!(m.payloads[0].attr("a"), Some("1"));
        assert_eq!(m.payloads[0].text(), "t");
    }

    #[test]
    fn cached_jids_are_the_jids_of_their_text() {
        let mut cache = JidCache::default();
        // More distinct JIDs than slots, each read several times in a row and again after
        // the cache has moved on; invalid ones are refused every time and never cached.
        let texts: Vec<String> = (0..CACHED_JIDS * 2 + 3)
            .map(|i| format!("User{i}@Example.ORG/r{i}"))
            .chain(["bücher.example".to_owned(), "a@b".to_owned()])
            .collect();
        for round in 0..3 {
            for text in &texts {
                for _ in 0..2 {
                    let got = cache.jid(text).unwrap();
                    let want = Jid::new(text).unwrap();
                    assert_eq!(got, want, "round {round}: {text}");
                    assert_eq!(got.as_str(), want.as_str());
                }
            }
            for bad in ["@b", "a@", "a@b/", "a b@c", ""] {
                assert_eq!(cache.jid(bad), None, "{bad}");
            }
        }
        // A stanza read twice with the same cache gives the same message as with a fresh one.
        let xml = "<message xmlns='jabber:component:accept' from='A@x.org/r' to='b@y' \
                   type='chat'><body>hi</body></message>";
        let fresh = message(xml.as_bytes(), &mut JidCache::default()).unwrap();
        for _ in 0..2 {
            let again = message(xml.as_bytes(), &mut cache).unwrap();
            assert_eq!(again.from, fresh.from);
            assert_eq!(again.to, fresh.to);
            assert_eq!(again.from.as_ref().map(Jid::as_str), Some("a@x.org/r"));
        }
    }
}
