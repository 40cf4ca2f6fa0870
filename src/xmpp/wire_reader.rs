//! The link's reading side after the stream header, sans-IO: [`Splitter`] finds each
//! complete stanza in the read buffer, and [`StreamContext::read`] turns its bytes into an
//! [`Incoming`]: a `<message/>` in the common shape through `fast_stanza` (no XML events),
//! anything else the general way, as tokio-xmpp's `XmlStream` read it before: rxml's events
//! (with the stream header in front, for its namespace declarations and `xml:lang`) fed to
//! `Incoming`'s builder (`stanza_reader`).
//!
//! Results match `XmlStream`'s: a stanza the builder refuses is a soft `ParseError` (the
//! stream goes on); XML that is not well-formed, comments, processing instructions, a DTD
//! and text between stanzas end the stream (hard error, the link reconnects).

use std::io;

use rxml::Parse;
use xmpp_parsers::ns;
use xso::{FromEventsBuilder, FromXml};

use super::Inbound;
use super::fast_stanza::{self, JidCache};
use super::splitter::{self, SplitError, Splitter, Step};
use super::stanza_reader::Incoming;

/// Why a stanza could not be read.
#[derive(Debug)]
pub(crate) enum ReadFail {
    /// The stream is unusable (XML not well-formed, forbidden markup).
    Hard(io::Error),
    /// The stanza is well-formed XML but its builder refused it; the stream goes on.
    Parse(xso::error::Error),
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl From<SplitError> for ReadFail {
    fn from(e: SplitError) -> Self {
        ReadFail::Hard(invalid(e))
    }
}

/// What the stream header tells about reading its stanzas.
#[derive(Debug, Clone)]
pub(crate) struct StreamContext {
    /// The header's start tag as received.
    header: Vec<u8>,
    /// Its qualified name, which the stream's end tag must repeat.
    footer: String,
    /// Whether the fast path applies: default namespace `jabber:component:accept` and no
    /// `xml:lang` on the stream.
    fast: bool,
    /// The JIDs the fast path read last, validated once.
    jids: JidCache,
}

impl StreamContext {
    /// Reads the stream header's start tag (`<stream:stream ...>`).
    pub(crate) fn new(header: &[u8]) -> io::Result<Self> {
        // What a stanza without `xmlns` is in: ask the parser with a probe element.
        let mut probe = header.to_vec();
        probe.extend_from_slice(b"<message/>");
        let mut parser = rxml::Parser::default();
        let mut buf = &probe[..];
        let mut lang = None;
        let mut default_ns = None;
        while default_ns.is_none() {
            match parser.parse(&mut buf, false) {
                Ok(Some(rxml::Event::StartElement(_, _, attrs))) if lang.is_none() => {
                    lang = Some(
                        attrs
                            .get(rxml::Namespace::xml(), "lang")
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                Ok(Some(rxml::Event::StartElement(_, (ns_, _), _))) => {
                    default_ns = Some(ns_.to_string());
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(invalid("the stream header ended the document")),
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    return Err(invalid("the stream header is incomplete"));
                }
                Err(rxml::error::EndOrError::Error(e)) => return Err(invalid(e)),
            }
        }
        let footer = String::from_utf8_lossy(splitter::tag_name(header)).into_owned();
        let lang = lang.filter(|l| !l.is_empty());
        Ok(Self {
            header: header.to_vec(),
            footer,
            fast: default_ns.as_deref() == Some(ns::COMPONENT) && lang.is_none(),
            jids: JidCache::default(),
        })
    }

    /// The qualified name of the stream element (`stream:stream`).
    pub(crate) fn footer(&self) -> &str {
        &self.footer
    }

    /// Reads one complete stanza.
    pub(crate) fn read(&mut self, stanza: &[u8]) -> Result<Incoming, ReadFail> {
        if self.fast
            && let Some(m) = fast_stanza::message(stanza, &mut self.jids)
        {
            return Ok(Incoming::Stanza(Inbound::Message(Box::new(m))));
        }
        self.general(stanza)
    }

    /// Reads one complete stanza with rxml and `Incoming`'s builder, with the language
    /// context `XmlStream` gives each event.
    pub(crate) fn general(&self, stanza: &[u8]) -> Result<Incoming, ReadFail> {
        let mut doc = Vec::with_capacity(self.header.len() + stanza.len());
        doc.extend_from_slice(&self.header);
        doc.extend_from_slice(stanza);
        let mut events = Events::new(&doc);
        // The stream's own start tag, and an XML declaration if the header had one.
        loop {
            if let rxml::Event::StartElement(..) = events.next()? {
                break;
            }
        }
        let ev = events.next()?;
        let ctx = events.ctx();
        let mut builder = match ev {
            rxml::Event::StartElement(_, name, attrs) => {
                match Incoming::from_events(name, attrs, &ctx) {
                    Ok(b) => b,
                    Err(xso::error::FromEventsError::Invalid(e)) => {
                        events.skip_rest(0)?;
                        return Err(ReadFail::Parse(e));
                    }
                    Err(xso::error::FromEventsError::Mismatch { .. }) => {
                        return Err(ReadFail::Hard(invalid("element not accepted")));
                    }
                }
            }
            _ => return Err(ReadFail::Hard(invalid("no element in the stanza's bytes"))),
        };
        let mut depth = 0usize;
        loop {
            let ev = events.next()?;
            let after = match &ev {
                rxml::Event::StartElement(..) => Some(depth + 1),
                rxml::Event::EndElement(..) => depth.checked_sub(1),
                _ => Some(depth),
            };
            let ctx = events.ctx();
            match (builder.feed(ev, &ctx), after) {
                (Ok(Some(v)), None) => return Ok(v),
                (Ok(Some(_)), Some(_)) => {
                    return Err(ReadFail::Hard(invalid("the builder finished early")));
                }
                (Ok(None), Some(d)) => depth = d,
                (Ok(None), None) => {
                    return Err(ReadFail::Hard(invalid("stanza ended without a value")));
                }
                (Err(e), None) => return Err(ReadFail::Parse(e)),
                (Err(e), Some(d)) => {
                    events.skip_rest(d)?;
                    return Err(ReadFail::Parse(e));
                }
            }
        }
    }
}

/// rxml's events over a buffer, with the `xml:lang` in scope tracked as `XmlStream` does.
struct Events<'a> {
    parser: rxml::Parser,
    buf: &'a [u8],
    langs: rxml::xml_lang::XmlLangStack,
    at_eof: bool,
}

impl<'a> Events<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            parser: rxml::Parser::default(),
            buf,
            langs: rxml::xml_lang::XmlLangStack::new(),
            at_eof: false,
        }
    }

    fn next(&mut self) -> Result<rxml::Event, ReadFail> {
        match self.parser.parse(&mut self.buf, self.at_eof) {
            Ok(Some(ev)) => {
                self.langs.handle_event(&ev);
                Ok(ev)
            }
            Ok(None) => Err(ReadFail::Hard(invalid("the stanza ended the document"))),
            Err(rxml::error::EndOrError::NeedMoreData) => {
                Err(ReadFail::Hard(invalid("the stanza is incomplete")))
            }
            Err(rxml::error::EndOrError::Error(e)) => Err(ReadFail::Hard(invalid(e))),
        }
    }

    /// The context for the event just read.
    fn ctx(&self) -> xso::Context<'_> {
        xso::Context::empty().with_language(self.langs.current())
    }

    /// Consumes the events of the rest of an element (`depth` elements open inside it), so
    /// that XML errors in it still count as such.
    fn skip_rest(&mut self, mut depth: usize) -> Result<(), ReadFail> {
        loop {
            match self.next()? {
                rxml::Event::StartElement(..) => depth += 1,
                rxml::Event::EndElement(..) => match depth.checked_sub(1) {
                    Some(d) => depth = d,
                    None => return Ok(()),
                },
                _ => {}
            }
        }
    }
}

/// One step of reading a stream buffer.
#[derive(Debug)]
pub(crate) enum Read {
    /// More bytes needed; drop the first `skip` bytes of the buffer.
    Need { skip: usize },
    /// An element read; drop the first `consumed` bytes of the buffer.
    Item {
        consumed: usize,
        item: Result<Incoming, ReadFail>,
    },
    /// The stream's end tag.
    Footer,
}

/// Reads the next stanza from `buf` (the unread bytes) with `splitter`'s state.
pub(crate) fn read_next(
    splitter: &mut Splitter,
    ctx: &mut StreamContext,
    buf: &[u8],
) -> Result<Read, ReadFail> {
    Ok(match splitter.next(buf, ctx.footer())? {
        Step::Need { skip } => Read::Need { skip },
        Step::Stanza(range) => Read::Item {
            consumed: range.end,
            item: ctx.read(&buf[range]),
        },
        Step::Footer { .. } => Read::Footer,
    })
}

/// The stream header the differential check reads its input under.
const CHECK_HEADER: &[u8] = b"<stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' from='mqtt.localhost' id='s1'>";

/// What reading a stream gave, element by element, in a form both ways can be compared in.
#[derive(Debug)]
enum Outcome {
    Item(Incoming),
    Parse,
    Hard,
    Footer,
}

/// The stream read as tokio-xmpp's `XmlStream` reads it: one rxml parser over everything,
/// each child of the stream element fed to `Incoming`'s builder.
fn read_as_xml_stream(doc: &[u8]) -> Vec<Outcome> {
    let mut events = Events::new(doc);
    events.at_eof = true;
    let mut out = Vec::new();
    // The stream's start tag.
    match events.next() {
        Ok(rxml::Event::StartElement(..)) => {}
        _ => return vec![Outcome::Hard],
    }
    loop {
        let Ok(ev) = events.next() else {
            out.push(Outcome::Hard);
            return out;
        };
        let (name, attrs) = match ev {
            rxml::Event::XmlDeclaration(..) => continue,
            rxml::Event::Text(_, t) if xso::is_xml_whitespace(t.as_bytes()) => continue,
            rxml::Event::Text(..) => {
                out.push(Outcome::Hard);
                return out;
            }
            rxml::Event::EndElement(..) => {
                out.push(Outcome::Footer);
                return out;
            }
            rxml::Event::StartElement(_, name, attrs) => (name, attrs),
        };
        let mut builder = Incoming::from_events(name, attrs, &events.ctx()).ok();
        let mut result = builder.is_none().then_some(Outcome::Parse);
        let mut depth = 0usize;
        loop {
            let Ok(ev) = events.next() else {
                out.push(Outcome::Hard);
                return out;
            };
            let closing = matches!(ev, rxml::Event::EndElement(..)) && depth == 0;
            match &ev {
                rxml::Event::StartElement(..) => depth += 1,
                rxml::Event::EndElement(..) => depth = depth.saturating_sub(1),
                _ => {}
            }
            if let Some(b) = builder.as_mut() {
                match b.feed(ev, &events.ctx()) {
                    Ok(Some(v)) => {
                        result = Some(Outcome::Item(v));
                        builder = None;
                    }
                    Ok(None) => {}
                    Err(_) => {
                        result = Some(Outcome::Parse);
                        builder = None;
                    }
                }
            }
            if closing {
                break;
            }
        }
        out.push(result.unwrap_or(Outcome::Hard));
    }
}

/// The stream read the link's way, fed `chunk` bytes at a time.
fn read_as_link(doc: &[u8], chunk: usize) -> Vec<Outcome> {
    let Ok(mut ctx) = StreamContext::new(CHECK_HEADER) else {
        return vec![Outcome::Hard];
    };
    let mut rest = &doc[CHECK_HEADER.len()..];
    let mut buf: Vec<u8> = Vec::new();
    let mut splitter = Splitter::default();
    let mut out = Vec::new();
    loop {
        match read_next(&mut splitter, &mut ctx, &buf) {
            Ok(Read::Need { skip }) => {
                buf.drain(..skip);
                if rest.is_empty() {
                    out.push(Outcome::Hard);
                    return out;
                }
                let n = chunk.min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            Ok(Read::Item { consumed, item }) => {
                buf.drain(..consumed);
                match item {
                    Ok(v) => out.push(Outcome::Item(v)),
                    Err(ReadFail::Parse(_)) => out.push(Outcome::Parse),
                    Err(ReadFail::Hard(_)) => {
                        out.push(Outcome::Hard);
                        return out;
                    }
                }
            }
            Ok(Read::Footer) => {
                out.push(Outcome::Footer);
                return out;
            }
            Err(_) => {
                out.push(Outcome::Hard);
                return out;
            }
        }
    }
}

/// Reads `bytes` as the content of a component stream (after a fixed header, before
/// `</stream:stream>`) both as tokio-xmpp's `XmlStream` did and as the link does now (in
/// pieces of several sizes), and panics where they disagree: the same typed stanzas, the same
/// heads of refused stanzas, the same untyped elements, and the stream ending at the same
/// element for XML that is not well-formed or not allowed in a stream. For the fuzz target
/// `stanza_reader` and the unit tests.
pub(crate) fn check_against_xml_stream(bytes: &[u8]) {
    let mut doc = CHECK_HEADER.to_vec();
    doc.extend_from_slice(bytes);
    doc.extend_from_slice(b"</stream:stream>");
    let want = read_as_xml_stream(&doc);
    let chunks = [doc.len(), 1, 7 + bytes.len() % 64];
    for chunk in chunks {
        let got = read_as_link(&doc, chunk);
        assert_eq!(
            got.len(),
            want.len(),
            "chunk {chunk}: {got:?} against {want:?}"
        );
        for (g, w) in got.iter().zip(&want) {
            match (g, w) {
                (Outcome::Item(Incoming::Stanza(a)), Outcome::Item(Incoming::Stanza(b))) => {
                    assert_eq!(a, b, "chunk {chunk}");
                }
                (
                    Outcome::Item(Incoming::Bad { head: a, .. }),
                    Outcome::Item(Incoming::Bad { head: b, .. }),
                ) => assert_eq!(a, b, "chunk {chunk}"),
                (Outcome::Item(Incoming::Other(a)), Outcome::Item(Incoming::Other(b))) => {
                    assert_eq!(a, b, "chunk {chunk}");
                }
                (Outcome::Parse, Outcome::Parse)
                | (Outcome::Hard, Outcome::Hard)
                | (Outcome::Footer, Outcome::Footer) => {}
                (g, w) => panic!("chunk {chunk}: the link read {g:?}, XmlStream {w:?}"),
            }
        }
    }
}

/// Reads `content` (what follows a component stream header) with the link's reader and
/// returns how many stanzas it read as values; for `benches/xmpp_stanza.rs`.
pub(crate) fn count_stanzas(content: &[u8]) -> usize {
    let Ok(mut ctx) = StreamContext::new(CHECK_HEADER) else {
        return 0;
    };
    let mut splitter = Splitter::default();
    let mut buf = content;
    let mut n = 0;
    loop {
        match read_next(&mut splitter, &mut ctx, buf) {
            Ok(Read::Item { consumed, item }) => {
                n += usize::from(item.is_ok());
                buf = &buf[consumed..];
            }
            Ok(Read::Need { .. } | Read::Footer) | Err(_) => return n,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::super::stanza_reader::tests::{C, bad, good};
    use super::*;

    /// A chat message as a modern client sends it, routed by Prosody to the component.
    pub(crate) const CHAT: &str = "<message from='alice@localhost/laptop' \
        to='bob@mqtt.localhost' type='chat' id='b7c1e2f0-5a1d-4c0e-9f1a-3c2d1e0f9a8b'>\
        <body>Hello Bob, this is a chat message of a typical length ~t123456;</body>\
        <request xmlns='urn:xmpp:receipts'/>\
        <origin-id xmlns='urn:xmpp:sid:0' id='b7c1e2f0-5a1d-4c0e-9f1a-3c2d1e0f9a8b'/>\
        <active xmlns='http://jabber.org/protocol/chatstates'/></message>";

    fn ctx() -> StreamContext {
        StreamContext::new(CHECK_HEADER).unwrap()
    }

    #[test]
    fn a_chat_message_takes_the_fast_path_with_the_same_result() {
        let fast =
            fast_stanza::message(CHAT.as_bytes(), &mut JidCache::default()).expect("fast path");
        match ctx().general(CHAT.as_bytes()).unwrap() {
            Incoming::Stanza(Inbound::Message(m)) => assert_eq!(fast, *m),
            other => panic!("{other:?}"),
        }
        assert_eq!(fast.payloads.len(), 3);
        // With xml:lang on the stream the general way reads it (bodies keyed by language).
        let header = b"<stream:stream xmlns='jabber:component:accept' \
            xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' id='s'>";
        let mut with_lang = StreamContext::new(header).unwrap();
        match with_lang.read(CHAT.as_bytes()).unwrap() {
            Incoming::Stanza(Inbound::Message(m)) => {
                assert_eq!(m.bodies.keys().next().map(|l| l.0.as_str()), Some("en"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Stanzas and byte sequences that each path must read the same way.
    fn cases() -> Vec<String> {
        let strip = |xml: &str| xml.replacen(&format!(" {C}"), "", 1);
        let mut cases: Vec<String> = good().iter().map(|x| strip(x)).collect();
        cases.extend(good());
        cases.extend(bad().iter().map(|(x, _)| strip(x)));
        cases.extend(bad().into_iter().map(|(x, _)| x));
        cases.push(CHAT.to_owned());
        let big = format!(
            "<message to='b@mqtt.localhost' type='chat'><body>{}</body></message>",
            "0123456789&amp;&#x1F600;\u{e9}".repeat(3000)
        );
        cases.push(big);
        for extra in [
            // References, quoting, unicode.
            "<message to='b@x' id=\"a'b&quot;&lt;&#62;\"><body>&#x3C;&#60;&gt;&apos;\u{e9}</body></message>",
            // Prefixed namespaces, in the stanza and from the stream header.
            "<message to='b@x'><p:x xmlns:p='urn:p' p:a='1'><p:y/></p:x></message>",
            "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
            "<handshake/>",
            // Whitespace and text inside, xml:lang, CDATA, a thread.
            "<message to='b@x'>\n  <body>x</body>\n</message>",
            "<message to='b@x' xml:lang='de'><body>x</body><body xml:lang='en'>y</body></message>",
            "<message to='b@x'><body><![CDATA[<b>&amp;]]> tail</body></message>",
            "<message to='b@x'><thread>t</thread><x xmlns='u'>a<![CDATA[b]]>c</x></message>",
            "<message to='b@x'><body>a\r\nb\rc</body><x xmlns='u' a='1\t2\n3'/></message>",
            // Not for the fast path: bad JIDs, duplicates, unknown children.
            "<message to='b@x' from='a@@b'/>",
            "<message to='b@x'><body>1</body><body>2</body></message>",
            "<message to='b@x'><subject>s</subject><nick xmlns='http://jabber.org/protocol/nick'>N</nick></message>",
            "<message to='b@x'><foo/></message>",
            "<message to='b@x' type=''/>",
            // Not well-formed or not allowed in a stream: the stream ends.
            "<message to='b@x'><body>a</bod></message>",
            "<message to='b@x'><body>a &foo; b</body></message>",
            "<message to='b@x' a='1' a='2'/>",
            "<message to='b@x'a='1'/>",
            "<message to='b@x'><body>\u{1}</body></message>",
            "<message><!-- c --></message>",
            "<?xml version='1.0'?><message/>",
            "<!DOCTYPE x><message/>",
            "text<message/>",
            "<message><x:y/></message>",
            "<message to='b@x'><body>a]]>b</body></message>",
            "<message><body>&#0;</body></message>",
            "<message/></x>",
            "<message",
        ] {
            cases.push(extra.to_owned());
        }
        cases
    }

    #[test]
    fn each_case_reads_as_xml_stream_read_it() {
        for case in cases() {
            check_against_xml_stream(case.as_bytes());
        }
    }

    #[test]
    fn a_stream_of_all_cases_reads_as_xml_stream_read_it() {
        // Everything well-formed, one after the other with keepalives between.
        let mut all = String::new();
        for case in cases().iter().take(30) {
            all.push_str(case);
            all.push_str(" \n ");
        }
        check_against_xml_stream(all.as_bytes());
    }
}
