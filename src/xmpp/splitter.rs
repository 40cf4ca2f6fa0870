//! Finds complete top-level elements (stanzas) of a component stream in a read buffer,
//! without parsing them (sans-IO).
//!
//! The splitter lexes just enough to count nesting depth correctly on well-formed XML: start
//! tags with quoted attribute values (a `>` or `/` inside quotes does not end the tag), empty
//! elements (`/>`), end tags, character data and CDATA sections (whose `<` and `>` are text).
//! What RFC 6120 §11.1 forbids in a stream (comments, processing instructions, a DTD), text
//! other than whitespace between stanzas, and an end tag other than the stream's own at the
//! top level are errors: the stream is not usable any more. A stanza's bytes are checked by
//! the parser that reads them (`fast_stanza` or rxml), so malformed XML inside a stanza is
//! found there; the splitter only has to hand over whole elements.
//!
//! It keeps its position inside a partial stanza, so bytes that arrive one at a time are
//! scanned once.

use std::ops::Range;

/// Longest stanza accepted, in bytes. Prosody's own limit for component stanzas is 10 MiB
/// (`component_stanza_size_limit`); a longer one ends the stream rather than the memory.
pub(crate) const MAX_STANZA: usize = 16 * 1024 * 1024;

/// The result of one scan.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// More bytes are needed; the first `skip` bytes of the buffer (whitespace between
    /// stanzas) are read and can be dropped.
    Need { skip: usize },
    /// A complete stanza at this range of the buffer; everything before its end is read.
    Stanza(Range<usize>),
    /// The stream's end tag; everything up to `end` is read.
    Footer { end: usize },
}

/// Why the stream cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SplitError {
    #[error("text other than whitespace between stanzas")]
    TextBetweenStanzas,
    #[error("an XML comment in the stream (forbidden by RFC 6120 §11.1)")]
    Comment,
    #[error("a processing instruction or XML declaration inside the stream (RFC 6120 §11.1)")]
    ProcessingInstruction,
    #[error("a document type declaration in the stream (RFC 6120 §11.1)")]
    Doctype,
    #[error("an end tag </{0}> where the stream's own end tag was expected")]
    WrongEndTag(String),
    #[error("a stanza longer than {MAX_STANZA} bytes")]
    TooLong,
    #[error("the stream header is not a start tag")]
    BadHeader,
}

/// Scanning state between calls. Positions are offsets into the caller's buffer, whose first
/// byte is the first unread one; the caller drops bytes only as [`Step`] says.
#[derive(Debug, Default)]
pub(crate) struct Splitter {
    /// Where scanning resumes (a token boundary) inside a partial stanza; 0 between stanzas.
    pos: usize,
    /// Start of the partial stanza (after skipped whitespace).
    start: usize,
    /// Elements open inside the partial stanza (0: no stanza started).
    depth: usize,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index just after the `>` that ends the tag starting at `from` (the byte after `<`),
/// skipping quoted attribute values; `None` when the buffer ends first.
fn tag_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        i += memchr::memchr3(b'\'', b'"', b'>', buf.get(i..)?)?;
        match buf[i] {
            b'>' => return Some(i + 1),
            q => i += memchr::memchr(q, buf.get(i + 1..)?)? + 2,
        }
    }
}

impl Splitter {
    /// Scans `buf` (all unread bytes; bytes appended since the last call are new, the rest is
    /// as before) for the next complete stanza or the stream's end tag. `footer` is the
    /// stream's qualified name (`stream:stream`).
    pub(crate) fn next(&mut self, buf: &[u8], footer: &str) -> Result<Step, SplitError> {
        if self.depth == 0 {
            let Some(lt) = buf.iter().position(|&b| !is_space(b)) else {
                return Ok(Step::Need { skip: buf.len() });
            };
            if buf[lt] != b'<' {
                return Err(SplitError::TextBetweenStanzas);
            }
            let Some(&next) = buf.get(lt + 1) else {
                return Ok(Step::Need { skip: lt });
            };
            match next {
                b'/' => {
                    let Some(end) = tag_end(buf, lt + 2) else {
                        return Ok(Step::Need { skip: lt });
                    };
                    let name = &buf[lt + 2..end - 1];
                    let name = name
                        .iter()
                        .rposition(|&b| !is_space(b))
                        .map_or(&name[..0], |last| &name[..=last]);
                    if name != footer.as_bytes() {
                        return Err(SplitError::WrongEndTag(
                            String::from_utf8_lossy(name).into_owned(),
                        ));
                    }
                    return Ok(Step::Footer { end });
                }
                b'?' => return Err(SplitError::ProcessingInstruction),
                b'!' => {
                    return match buf.get(lt + 2) {
                        None => Ok(Step::Need { skip: lt }),
                        Some(b'-') => Err(SplitError::Comment),
                        Some(b'[') => Err(SplitError::TextBetweenStanzas),
                        Some(_) => Err(SplitError::Doctype),
                    };
                }
                _ => {}
            }
            self.start = lt;
            self.pos = lt;
        }
        let step = self.scan(buf)?;
        if let Step::Need { .. } = step
            && buf.len() - self.start > MAX_STANZA
        {
            return Err(SplitError::TooLong);
        }
        Ok(step)
    }

    /// Continues inside a stanza from `self.pos` (at a token boundary).
    fn scan(&mut self, buf: &[u8]) -> Result<Step, SplitError> {
        // The caller drops what is before the stanza: positions move with it.
        let need = |s: &mut Self| {
            let skip = s.start;
            s.pos -= skip;
            s.start = 0;
            Ok(Step::Need { skip })
        };
        loop {
            // Character data up to the next markup.
            let Some(off) = memchr::memchr(b'<', &buf[self.pos..]) else {
                self.pos = buf.len();
                return need(self);
            };
            let lt = self.pos + off;
            let Some(&next) = buf.get(lt + 1) else {
                self.pos = lt;
                return need(self);
            };
            match next {
                b'/' => {
                    let Some(end) = tag_end(buf, lt + 2) else {
                        self.pos = lt;
                        return need(self);
                    };
                    self.pos = end;
                    self.depth = self.depth.saturating_sub(1);
                }
                b'?' => return Err(SplitError::ProcessingInstruction),
                b'!' => {
                    let rest = &buf[lt..];
                    if rest.len() < 9 {
                        if !b"<![CDATA[".starts_with(rest) {
                            return Err(if rest.starts_with(b"<!-") {
                                SplitError::Comment
                            } else {
                                SplitError::Doctype
                            });
                        }
                        self.pos = lt;
                        return need(self);
                    }
                    if !rest.starts_with(b"<![CDATA[") {
                        return Err(if rest.starts_with(b"<!-") {
                            SplitError::Comment
                        } else {
                            SplitError::Doctype
                        });
                    }
                    let Some(close) = memchr::memmem::find(&rest[9..], b"]]>") else {
                        self.pos = lt;
                        return need(self);
                    };
                    self.pos = lt + 9 + close + 3;
                }
                _ => {
                    let Some(end) = tag_end(buf, lt + 1) else {
                        self.pos = lt;
                        return need(self);
                    };
                    self.pos = end;
                    if buf[end - 2] != b'/' {
                        self.depth += 1;
                    }
                }
            }
            if self.depth == 0 {
                let range = self.start..self.pos;
                *self = Self::default();
                return Ok(Step::Stanza(range));
            }
        }
    }
}

/// Finds the stream header: optional whitespace and XML declaration, then the stream's start
/// tag. Returns the range of the start tag (`<stream:stream ...>`), `None` when more bytes
/// are needed.
pub(crate) fn stream_header(buf: &[u8]) -> Result<Option<Range<usize>>, SplitError> {
    let mut i = buf.iter().position(|&b| !is_space(b)).unwrap_or(buf.len());
    if buf.len() < i + 2 {
        return Ok(None);
    }
    if buf[i..].starts_with(b"<?") {
        let Some(close) = memchr::memmem::find(&buf[i..], b"?>") else {
            return Ok(None);
        };
        i += close + 2;
        i += buf[i..]
            .iter()
            .position(|&b| !is_space(b))
            .unwrap_or(buf.len() - i);
        if buf.len() < i + 2 {
            return Ok(None);
        }
    }
    if buf[i] != b'<' || matches!(buf[i + 1], b'/' | b'?' | b'!') {
        return Err(SplitError::BadHeader);
    }
    let Some(end) = tag_end(buf, i + 1) else {
        return Ok(None);
    };
    if buf[end - 2] == b'/' {
        return Err(SplitError::BadHeader);
    }
    Ok(Some(i..end))
}

/// The qualified name of a start tag (`<stream:stream ...>` gives `stream:stream`).
pub(crate) fn tag_name(tag: &[u8]) -> &[u8] {
    let body = tag.get(1..).unwrap_or_default();
    let end = body
        .iter()
        .position(|&b| is_space(b) || b == b'>' || b == b'/')
        .unwrap_or(body.len());
    &body[..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    const FOOT: &str = "stream:stream";

    /// Splits `input` fed in pieces of `chunk` bytes, as a reader would; returns the stanzas
    /// and whether the footer was seen.
    fn split(input: &[u8], chunk: usize) -> Result<(Vec<String>, bool), SplitError> {
        let mut s = Splitter::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match s.next(&buf, FOOT)? {
                Step::Need { skip } => {
                    buf.drain(..skip);
                    if fed == input.len() {
                        return Ok((out, false));
                    }
                    let to = (fed + chunk).min(input.len());
                    buf.extend_from_slice(&input[fed..to]);
                    fed = to;
                }
                Step::Stanza(r) => {
                    out.push(String::from_utf8(buf[r.clone()].to_vec()).unwrap());
                    buf.drain(..r.end);
                }
                Step::Footer { .. } => return Ok((out, true)),
            }
        }
    }

    #[test]
    fn stanzas_are_found_at_every_split_point() {
        let stanzas = [
            "<message to='a' id=\"x>y/\"><body>a &amp; b &#x1F600; > c</body>\
             <x xmlns='urn:x'><y a='/>'/></x></message>",
            "<presence/>",
            "<iq type='get' id='1'><query xmlns='q'><![CDATA[<not a tag> ]] ]>]]></query></iq>",
            "<message><body>\n</body ></message >",
        ];
        let mut input = String::from(" \n");
        for s in &stanzas {
            input.push_str(s);
            input.push_str("\n \t");
        }
        input.push_str("</stream:stream >");
        for chunk in 1..=input.len() {
            let (got, footer) = split(input.as_bytes(), chunk).unwrap();
            assert_eq!(got, stanzas, "chunk {chunk}");
            assert!(footer, "chunk {chunk}");
        }
    }

    #[test]
    fn a_split_stanza_is_scanned_once_from_where_it_stopped() {
        let mut s = Splitter::default();
        let input = b"<message><body>abc</body></message>";
        for n in 1..input.len() {
            assert_eq!(s.next(&input[..n], FOOT), Ok(Step::Need { skip: 0 }), "{n}");
        }
        assert_eq!(s.next(input, FOOT), Ok(Step::Stanza(0..input.len())));
        assert_eq!(s.next(b" ", FOOT), Ok(Step::Need { skip: 1 }));
    }

    #[test]
    fn whitespace_keepalives_are_skipped() {
        let mut s = Splitter::default();
        assert_eq!(s.next(b" \n \n", FOOT), Ok(Step::Need { skip: 4 }));
        assert_eq!(s.next(b"", FOOT), Ok(Step::Need { skip: 0 }));
        assert_eq!(s.next(b"  <", FOOT), Ok(Step::Need { skip: 2 }));
    }

    #[test]
    fn forbidden_markup_ends_the_stream() {
        let cases: [(&str, SplitError); 8] = [
            ("x<message/>", SplitError::TextBetweenStanzas),
            ("<!-- c --><message/>", SplitError::Comment),
            ("<message><!-- c --></message>", SplitError::Comment),
            ("<?pi x?><message/>", SplitError::ProcessingInstruction),
            (
                "<message><?pi x?></message>",
                SplitError::ProcessingInstruction,
            ),
            ("<!DOCTYPE x><message/>", SplitError::Doctype),
            ("<message><!ENTITY x 'y'></message>", SplitError::Doctype),
            ("</message>", SplitError::WrongEndTag("message".into())),
        ];
        for (input, want) in cases {
            for chunk in 1..=input.len() {
                assert_eq!(split(input.as_bytes(), chunk), Err(want.clone()), "{input}");
            }
        }
    }

    #[test]
    fn a_stanza_over_the_limit_ends_the_stream() {
        let mut s = Splitter::default();
        let mut big = b"<message><body>".to_vec();
        big.resize(MAX_STANZA + 10, b'a');
        assert_eq!(s.next(&big, FOOT), Err(SplitError::TooLong));
    }

    #[test]
    fn the_stream_header_is_found() {
        let h = "<?xml version='1.0'?>\n<stream:stream xmlns='jabber:component:accept' \
                 xmlns:stream='http://etherx.jabber.org/streams' id='a>b' from='c'>";
        let full = format!("{h}<handshake/>");
        for n in 0..h.len() {
            assert_eq!(stream_header(&full.as_bytes()[..n]), Ok(None), "{n}");
        }
        let range = stream_header(full.as_bytes()).unwrap().unwrap();
        assert_eq!(range.end, h.len());
        assert_eq!(tag_name(&full.as_bytes()[range]), b"stream:stream");
        assert_eq!(stream_header(b"<stream/>"), Err(SplitError::BadHeader));
        assert_eq!(stream_header(b"hello"), Err(SplitError::BadHeader));
    }
}
