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
use super::fast_stanza;
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
    /// `xml:lang` of the stream, the default language of its stanzas.
    lang: Option<String>,
    /// Whether the fast path applies: default namespace `jabber:component:accept` and no
    /// `xml:lang` on the stream.
    fast: bool,
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
            lang,
        })
    }

    /// The qualified name of the stream element (`stream:stream`).
    pub(crate) fn footer(&self) -> &str {
        &self.footer
    }

    /// Reads one complete stanza.
    pub(crate) fn read(&self, stanza: &[u8]) -> Result<Incoming, ReadFail> {
        if self.fast
            && let Some(m) = fast_stanza::message(stanza)
        {
            return Ok(Incoming::Stanza(Inbound::Message(m)));
        }
        self.general(stanza)
    }

    /// Reads one complete stanza with rxml and `Incoming`'s builder.
    pub(crate) fn general(&self, stanza: &[u8]) -> Result<Incoming, ReadFail> {
        let mut doc = Vec::with_capacity(self.header.len() + stanza.len());
        doc.extend_from_slice(&self.header);
        doc.extend_from_slice(stanza);
        let mut parser = rxml::Parser::default();
        let mut buf = &doc[..];
        let ctx = xso::Context::empty().with_language(self.lang.as_deref());
        let mut next = || match parser.parse(&mut buf, false) {
            Ok(Some(ev)) => Ok(ev),
            Ok(None) => Err(ReadFail::Hard(invalid("the stanza ended the document"))),
            Err(rxml::error::EndOrError::NeedMoreData) => {
                Err(ReadFail::Hard(invalid("the stanza is incomplete")))
            }
            Err(rxml::error::EndOrError::Error(e)) => Err(ReadFail::Hard(invalid(e))),
        };
        // The stream's own start tag, and an XML declaration if the header had one.
        loop {
            if let rxml::Event::StartElement(..) = next()? {
                break;
            }
        }
        let mut builder = match next()? {
            rxml::Event::StartElement(_, name, attrs) => {
                match Incoming::from_events(name, attrs, &ctx) {
                    Ok(b) => b,
                    Err(xso::error::FromEventsError::Invalid(e)) => {
                        skip_rest(&mut next, 0)?;
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
            let ev = next()?;
            let after = match &ev {
                rxml::Event::StartElement(..) => Some(depth + 1),
                rxml::Event::EndElement(..) => depth.checked_sub(1),
                _ => Some(depth),
            };
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
                    skip_rest(&mut next, d)?;
                    return Err(ReadFail::Parse(e));
                }
            }
        }
    }
}

/// Consumes the events of the rest of an element (`depth` elements open inside it), so that
/// XML errors in it still count as such.
fn skip_rest(
    next: &mut impl FnMut() -> Result<rxml::Event, ReadFail>,
    mut depth: usize,
) -> Result<(), ReadFail> {
    loop {
        match next()? {
            rxml::Event::StartElement(..) => depth += 1,
            rxml::Event::EndElement(..) => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return Ok(()),
            },
            _ => {}
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
    ctx: &StreamContext,
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
