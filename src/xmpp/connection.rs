//! Opening a component stream: TCP connect, stream headers, XEP-0114 handshake.
//!
//! 1. Connect TCP to `server` (host names resolved by the system), with `TCP_NODELAY`.
//! 2. Send the stream header in namespace `jabber:component:accept` with `to` = our domain and
//!    take the `id` of the server's header.
//! 3. Skip stream features (XEP-0114 has none) and continue with [`Incoming`] values: typed
//!    stanzas, a stanza that xmpp-parsers rejects as a value (so it never ends the stream),
//!    anything else as an untyped `Element`.
//! 4. Send `<handshake>` = hex(SHA-1(stream id + secret)) and wait for an empty `<handshake/>`;
//!    a `<stream:error/>` instead tells a wrong secret, a conflict and an unknown domain apart.
//!
//! All four steps together are bounded by `connect_timeout`.
//!
//! tokio-xmpp's `XmlStream` writes the stream header and the handshake, then hands the
//! socket's writing half to [`LinkWriter`] (`writer.rs`), which writes every stanza after it
//! (the common ones as bytes of its own). `XmlStream` reads nothing from the socket: the TCP
//! stream is split, and [`LinkReader`] reads the server's bytes itself (`splitter` finds each stanza, `wire_reader` parses it, a chat
//! message without rxml). The server's stream header, once [`LinkReader`] has found it, is
//! handed to the `XmlStream` through an in-memory pipe, so that it reads the same header as
//! before (stream id, namespaces) and its writer is set up as before.
use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWriteExt, BufReader, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, Sleep};
use tokio_xmpp::xmlstream::{self, ReadError, StreamHeader, Timeouts};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stream_error::{DefinedCondition, StreamError};

use super::Stanza;
use super::config::XmppConfig;
use super::error::LinkError;
use super::splitter::{self, Splitter};
use super::stanza_reader::Incoming;
use super::wire_reader::{self, Read, ReadFail, StreamContext};
use super::writer::LinkWriter;

/// An established component stream, read as [`Incoming`] values. It is a `Sink` of [`Wire`]
/// items so it can be split into a reader and a writer half.
pub(crate) struct Link {
    writer: LinkWriter<OwnedWriteHalf>,
    reader: LinkReader<OwnedReadHalf>,
}

/// What the writing half sends: an element (replies, pings) or a typed stanza. A stanza is
/// serialised straight from its type: converting a `Message` to an `Element` first cost more
/// CPU than everything else on the MQTT → XMPP path (a detour through XML events and
/// namespace-keyed attribute maps).
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    /// An untyped element.
    Element(Arc<Element>),
    /// A typed stanza, shared with the queue that keeps it until the server confirmed it.
    Stanza(Arc<Stanza>),
}

/// Connects and authenticates, within `cfg.connect_timeout`.
pub(crate) async fn connect(cfg: &XmppConfig) -> Result<Link, LinkError> {
    match tokio::time::timeout(cfg.connect_timeout, connect_inner(cfg)).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::HandshakeTimeout {
            server: cfg.server.clone(),
            after: cfg.connect_timeout,
        }),
    }
}

async fn connect_inner(cfg: &XmppConfig) -> Result<Link, LinkError> {
    let tcp = TcpStream::connect(&cfg.server).await.map_err(|source| {
        if source.kind() == io::ErrorKind::ConnectionRefused {
            LinkError::Refused {
                server: cfg.server.clone(),
            }
        } else {
            LinkError::Connect {
                server: cfg.server.clone(),
                source,
            }
        }
    })?;
    // Small stanzas and pings must not wait for Nagle's algorithm.
    tcp.set_nodelay(true).map_err(LinkError::Io)?;
    let timeouts = Timeouts {
        read_timeout: cfg.read_timeout,
        response_timeout: cfg.read_timeout,
    };
    let header = StreamHeader {
        to: Some(Cow::Borrowed(&cfg.domain)),
        from: None,
        id: None,
    };
    let (rd, wr) = tcp.into_split();
    let mut reader = LinkReader::new(rd, timeouts);
    let (pipe_rx, mut pipe_tx) = tokio::io::duplex(4096);
    let io = tokio::io::join(BufReader::new(pipe_rx), BufWriter::new(wr));
    let (mut pending, ()) = tokio::try_join!(
        async {
            xmlstream::initiate_stream(io, ns::COMPONENT, header, timeouts)
                .await
                .map_err(read_error)
        },
        async {
            let bytes = reader.read_header().await?;
            pipe_tx.write_all(&bytes).await.map_err(LinkError::Io)
        },
    )?;
    let stream_id = pending
        .take_header()
        .id
        .ok_or(LinkError::NoStreamId)?
        .into_owned();
    let mut writer = pending.skip_features::<Incoming>();
    let handshake = Handshake::from_stream_id_and_password(stream_id, &cfg.secret);
    writer.send(&handshake).await.map_err(LinkError::Io)?;
    loop {
        match reader.next().await {
            Some(Ok(Incoming::Other(el))) if el.is("handshake", ns::COMPONENT) => {
                // `send` flushed the handshake: nothing of the `XmlStream` is left to write.
                let (_, wr) = writer.into_inner().into_inner();
                let writer = LinkWriter::new(wr.into_inner());
                return Ok(Link { writer, reader });
            }
            Some(Ok(Incoming::Other(el))) => return Err(unexpected(el, &cfg.domain)),
            Some(Ok(stanza)) => {
                return Err(LinkError::UnexpectedReply {
                    name: stanza.name().to_owned(),
                });
            }
            // Silence is bounded by the overall connect timeout.
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(ReadError::ParseError(_))) => continue,
            Some(Err(ReadError::HardError(e))) => return Err(read_error(e)),
            Some(Err(ReadError::StreamFooterReceived)) | None => return Err(LinkError::Closed),
        }
    }
}

/// The error for an element other than `<handshake/>`: usually a stream error.
fn unexpected(el: Element, domain: &str) -> LinkError {
    if el.is("error", ns::STREAM) {
        return stream_error(el, domain);
    }
    LinkError::UnexpectedReply {
        name: el.name().to_owned(),
    }
}

/// Maps a `<stream:error/>` element to the matching [`LinkError`].
pub(crate) fn stream_error(el: Element, domain: &str) -> LinkError {
    let condition_name = el
        .children()
        .find(|c| c.ns() == ns::XMPP_STREAMS && c.name() != "text")
        .map(|c| c.name().to_owned());
    let parsed = StreamError::try_from(el).ok();
    let text = parsed
        .as_ref()
        .and_then(|e| e.texts.values().next().cloned());
    match parsed.map(|e| e.condition) {
        Some(DefinedCondition::NotAuthorized) => LinkError::NotAuthorized {
            domain: domain.to_owned(),
        },
        Some(DefinedCondition::Conflict) => LinkError::Conflict {
            domain: domain.to_owned(),
        },
        Some(DefinedCondition::HostUnknown) => LinkError::HostUnknown {
            domain: domain.to_owned(),
        },
        _ => LinkError::StreamError {
            condition: condition_name.unwrap_or_else(|| "undefined-condition".into()),
            text,
        },
    }
}

/// Classifies an I/O error of the stream: the peer going away (also in the middle of the XML
/// stream, which the parser reports as an invalid end of file) is [`LinkError::Closed`].
pub(crate) fn read_error(e: io::Error) -> LinkError {
    let eof_in_xml = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rxml::Error>())
        .is_some_and(|x| matches!(x, rxml::Error::InvalidEof(_)));
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => LinkError::Closed,
        _ if eof_in_xml => LinkError::Closed,
        _ => LinkError::Io(e),
    }
}

impl Stream for Link {
    type Item = Result<Incoming, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().reader).poll_next(cx)
    }
}

/// Bytes asked of the socket per read (more when a stanza does not fit).
const READ_CHUNK: usize = 16 * 1024;

/// What the link reads from. Prosody writes with Nagle's algorithm on (its default
/// `tcp_nodelay = false`): a small stanza written while an earlier one is still unacknowledged
/// waits in Prosody's kernel for our ACK, and Linux delays an ACK by up to 40 ms when it has
/// nothing to send back. So after each read of the TCP socket the reader asks for the ACK now
/// (`TCP_QUICKACK`, which the kernel turns off again by itself, hence once per read): the
/// next stanza then waits for our wake-up, not for the delayed-ACK timer.
pub(crate) trait LinkRead: AsyncRead + Unpin {
    /// Called after a read that returned bytes.
    fn ack_now(&self) {}
}

impl LinkRead for OwnedReadHalf {
    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        {
            // A failure only means the ACK goes out on the kernel's own schedule.
            let _best_effort = self.as_ref().set_quickack(true);
        }
    }
}

impl LinkRead for tokio::io::DuplexStream {}

/// The receiving side of a component stream: reads the socket into its own buffer and yields
/// each stanza as soon as it is complete, with `XmlStream`'s results (a soft timeout after
/// `read_timeout` of silence, a hard `TimedOut` error after `response_timeout` more, a
/// parse error per refused stanza, the stream footer, hard errors for bad XML).
pub(crate) struct LinkReader<R> {
    io: R,
    /// `buf[start..end]` is read but not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    splitter: Splitter,
    /// Known once the stream header was read.
    ctx: Option<StreamContext>,
    timeouts: Timeouts,
    /// When a byte last arrived.
    last_read: Instant,
    /// Wakes the reader to check for silence; moved lazily, not on every read.
    timer: Pin<Box<Sleep>>,
    soft_timeout_sent: bool,
    ended: bool,
}

impl<R: LinkRead> LinkReader<R> {
    pub(crate) fn new(io: R, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            io,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            splitter: Splitter::default(),
            ctx: None,
            timeouts,
            last_read: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.read_timeout)),
            soft_timeout_sent: false,
            ended: false,
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.start > 0 && (self.start == self.end || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK / 4 {
            let len = (self.buf.len() * 2).max(self.end + READ_CHUNK);
            self.buf.resize(len, 0);
        }
        let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.end += n;
        if n > 0 {
            self.io.ack_now();
            self.last_read = Instant::now();
            self.soft_timeout_sent = false;
        }
        Poll::Ready(Ok(n))
    }

    /// Reads up to the end of the server's stream header and returns those bytes (with the
    /// XML declaration before it, if any).
    pub(crate) async fn read_header(&mut self) -> Result<Vec<u8>, LinkError> {
        loop {
            match splitter::stream_header(&self.buf[self.start..self.end]) {
                Ok(Some(range)) => {
                    let tag = &self.buf[self.start + range.start..self.start + range.end];
                    self.ctx = Some(StreamContext::new(tag).map_err(LinkError::Io)?);
                    let bytes = self.buf[self.start..self.start + range.end].to_vec();
                    self.start += range.end;
                    return Ok(bytes);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(LinkError::Io(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(read_error)?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
        }
    }

    /// After a read that found nothing: whether silence has lasted long enough for a soft
    /// or hard timeout.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<ReadError> {
        loop {
            std::task::ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let soft_at = self.last_read + self.timeouts.read_timeout;
            let hard_at = soft_at + self.timeouts.response_timeout;
            if now < soft_at {
                self.timer.as_mut().reset(soft_at);
            } else if !self.soft_timeout_sent {
                self.soft_timeout_sent = true;
                self.timer.as_mut().reset(hard_at);
                return Poll::Ready(ReadError::SoftTimeout);
            } else if now < hard_at {
                self.timer.as_mut().reset(hard_at);
            } else {
                self.ended = true;
                return Poll::Ready(ReadError::HardError(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no data from the server",
                )));
            }
        }
    }
}

impl<R: LinkRead> Stream for LinkReader<R> {
    type Item = Result<Incoming, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            let Some(ctx) = this.ctx.as_mut() else {
                this.ended = true;
                let e = io::Error::new(io::ErrorKind::InvalidData, "no stream header read");
                return Poll::Ready(Some(Err(ReadError::HardError(e))));
            };
            let unread = &this.buf[this.start..this.end];
            match wire_reader::read_next(&mut this.splitter, ctx, unread) {
                Ok(Read::Item { consumed, item }) => {
                    this.start += consumed;
                    return Poll::Ready(Some(match item {
                        Ok(incoming) => Ok(incoming),
                        Err(ReadFail::Parse(e)) => Err(ReadError::ParseError(e)),
                        Err(ReadFail::Hard(e)) => {
                            this.ended = true;
                            Err(ReadError::HardError(e))
                        }
                    }));
                }
                Ok(Read::Footer) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ReadError::StreamFooterReceived)));
                }
                Ok(Read::Need { skip }) => this.start += skip,
                Err(ReadFail::Hard(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ReadError::HardError(e))));
                }
                Err(ReadFail::Parse(e)) => return Poll::Ready(Some(Err(ReadError::ParseError(e)))),
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    this.ended = true;
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection without ending the stream",
                    );
                    return Poll::Ready(Some(Err(ReadError::HardError(e))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ReadError::HardError(e))));
                }
                Poll::Pending => {
                    return this.poll_silence(cx).map(|e| Some(Err(e)));
                }
            }
        }
    }
}

impl Sink<Wire> for Link {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Wire) -> io::Result<()> {
        // Serialises into the writer's buffer right away; `item` is not kept.
        Pin::new(&mut self.get_mut().writer).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    /// Sends `</stream:stream>` and shuts down the sending side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::time::Duration;

    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::super::Inbound;
    use super::super::stanza_reader::tests::{C, bad, good, via_element};
    use super::*;

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' from='mqtt.localhost' id='s1'>";

    fn timeouts() -> Timeouts {
        Timeouts {
            read_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(30),
        }
    }

    /// A reader of `script`, written `piece` bytes per write into a pipe of `piece` bytes
    /// (so each read gets at most `piece` bytes), then closed.
    async fn reader_of(script: String, piece: usize) -> (LinkReader<DuplexStream>, Vec<u8>) {
        let (rx, mut tx) = tokio::io::duplex(piece);
        tokio::spawn(async move {
            for chunk in script.as_bytes().chunks(piece) {
                tx.write_all(chunk).await.unwrap();
            }
            tx.shutdown().await.unwrap();
        });
        let mut reader = LinkReader::new(rx, timeouts());
        let header = reader.read_header().await.unwrap();
        (reader, header)
    }

    async fn read_all(reader: &mut LinkReader<DuplexStream>) -> Vec<Result<Incoming, ReadError>> {
        let mut got = Vec::new();
        while let Some(item) = reader.next().await {
            got.push(item);
        }
        got
    }

    /// The whole stream a byte per read: good stanzas with bad ones and keepalives between,
    /// a message larger than the read buffer, a stream error and the footer.
    #[tokio::test]
    async fn a_stream_arriving_a_byte_at_a_time_reads_stanza_by_stanza() {
        let strip = |xml: &str| xml.replacen(&format!(" {C}"), "", 1);
        let (good, bad) = (good(), bad());
        let mut script = String::from(HEADER);
        for (i, xml) in good.iter().enumerate() {
            script.push_str(&strip(xml));
            script.push_str(" \n");
            if let Some((bad, _)) = bad.get(i) {
                script.push_str(&strip(bad));
            }
        }
        let body = "0123456789 &amp; \u{1F600}".repeat(4 * READ_CHUNK / 20);
        script.push_str(&format!(
            "<message from='a@localhost/r' to='b@mqtt.localhost' type='chat'><body>{body}</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ));
        script.push_str(
            "<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>\
             </stream:error></stream:stream>",
        );
        for piece in [1, 7, READ_CHUNK] {
            let (mut reader, header) = reader_of(script.clone(), piece).await;
            assert_eq!(header, HEADER.as_bytes());
            let mut got = read_all(&mut reader).await.into_iter();
            let mut want_bad = bad.iter();
            for xml in &good {
                match got.next() {
                    Some(Ok(Incoming::Stanza(s))) => assert_eq!(Ok(s), via_element(xml), "{xml}"),
                    other => panic!("{piece}: {xml}: {other:?}"),
                }
                if let Some((_, want)) = want_bad.next() {
                    match got.next() {
                        Some(Ok(Incoming::Bad { head, .. })) => assert_eq!(&head, want),
                        other => panic!("{piece}: bad stanza: {other:?}"),
                    }
                }
            }
            match got.next() {
                Some(Ok(Incoming::Stanza(Inbound::Message(m)))) => {
                    let text = m.bodies.values().next().unwrap();
                    assert_eq!(text, &body.replace("&amp;", "&"));
                    assert!(text.len() > READ_CHUNK * 3);
                }
                other => panic!("{piece}: big message: {other:?}"),
            }
            match got.next() {
                Some(Ok(Incoming::Other(el))) => assert!(matches!(
                    stream_error(el, "mqtt.localhost"),
                    LinkError::StreamError { condition, .. } if condition == "system-shutdown"
                )),
                other => panic!("{piece}: stream error: {other:?}"),
            }
            assert!(matches!(
                got.next(),
                Some(Err(ReadError::StreamFooterReceived))
            ));
            assert!(got.next().is_none(), "{piece}: nothing after the footer");
        }
    }

    /// Bad XML, forbidden markup and a connection closed mid-stanza end the stream with a
    /// hard error (the link reconnects); a good stanza before them is still read.
    #[tokio::test]
    async fn bad_xml_from_the_server_ends_the_stream() {
        let good = "<message to='b@mqtt.localhost'><body>ok</body></message>";
        for (tail, kind) in [
            (
                "<message><body>a</bod></message>",
                io::ErrorKind::InvalidData,
            ),
            ("<message><!-- c --></message>", io::ErrorKind::InvalidData),
            ("<?pi?>", io::ErrorKind::InvalidData),
            ("garbage", io::ErrorKind::InvalidData),
            ("</stream:streams>", io::ErrorKind::InvalidData),
            ("<message><body>cut", io::ErrorKind::UnexpectedEof),
        ] {
            let (mut reader, _) = reader_of(format!("{HEADER}{good}{tail}"), 5).await;
            let got = read_all(&mut reader).await;
            assert_eq!(got.len(), 2, "{tail}: {got:?}");
            assert!(matches!(got[0], Ok(Incoming::Stanza(Inbound::Message(_)))));
            match &got[1] {
                Err(ReadError::HardError(e)) => assert_eq!(e.kind(), kind, "{tail}: {e}"),
                other => panic!("{tail}: {other:?}"),
            }
        }
        // A connection closed mid-stanza is a closed link.
        let (mut reader, _) = reader_of(format!("{HEADER}<message>"), 5).await;
        match reader.next().await {
            Some(Err(ReadError::HardError(e))) => {
                assert!(matches!(read_error(e), LinkError::Closed));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_bad_stream_header_is_refused() {
        for script in ["<stream:stream/>", "hello", "</stream:stream>"] {
            let (rx, mut tx) = tokio::io::duplex(64);
            tx.write_all(script.as_bytes()).await.unwrap();
            drop(tx);
            let mut reader = LinkReader::new(rx, timeouts());
            match reader.read_header().await {
                Err(LinkError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
                other => panic!("{script}: {other:?}"),
            }
        }
        let (rx, tx) = tokio::io::duplex(64);
        drop(tx);
        let mut reader = LinkReader::new(rx, timeouts());
        assert!(matches!(reader.read_header().await, Err(LinkError::Closed)));
    }

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    #[test]
    fn stream_errors_are_told_apart() {
        let err = |cond: &str| {
            let xml = format!(
                "<error xmlns='{}'><{cond} xmlns='{}'/><text xmlns='{}'>why</text></error>",
                ns::STREAM,
                ns::XMPP_STREAMS,
                ns::XMPP_STREAMS
            );
            stream_error(parse(&xml), "mqtt.localhost")
        };
        assert!(matches!(
            err("not-authorized"),
            LinkError::NotAuthorized { .. }
        ));
        assert!(matches!(err("conflict"), LinkError::Conflict { .. }));
        assert!(matches!(err("host-unknown"), LinkError::HostUnknown { .. }));
        match err("system-shutdown") {
            LinkError::StreamError { condition, text } => {
                assert_eq!(condition, "system-shutdown");
                assert_eq!(text.as_deref(), Some("why"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Prosody's Nagle waits for our ACK: every read of the link's TCP socket asks the kernel
    /// to send it now instead of after the delayed-ACK timer.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_read_of_the_link_socket_acknowledges_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut server, _) = accepted.unwrap();
        let (rd, _wr) = client.unwrap().into_split();
        // Delayed-ACK ("interactive") mode, which a connection that also sends gets into.
        rd.as_ref().set_quickack(false).unwrap();
        server.write_all(HEADER.as_bytes()).await.unwrap();
        rd.as_ref().readable().await.unwrap();
        assert!(
            !rd.as_ref().quickack().unwrap(),
            "bytes arriving alone change nothing"
        );
        let mut reader = LinkReader::new(rd, timeouts());
        reader.read_header().await.unwrap();
        assert!(
            reader.io.as_ref().quickack().unwrap(),
            "the read asked for an immediate ACK"
        );
    }
}
