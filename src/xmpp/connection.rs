//! Opening a component stream: TCP connect, stream headers, XEP-0114 handshake.
//!
//! 1. Connect TCP to `server` (host names resolved by the system), with `TCP_NODELAY`.
//! 2. Send the stream header in namespace `jabber:component:accept` with `to` = our domain and
//!    take the `id` of the server's header.
//! 3. Skip stream features (XEP-0114 has none) and continue with [`Incoming`] values: typed
//!    stanzas built straight from the parser's events, a stanza that xmpp-parsers rejects as
//!    a value (so it never ends the stream), anything else as an untyped `Element`.
//! 4. Send `<handshake>` = hex(SHA-1(stream id + secret)) and wait for an empty `<handshake/>`;
//!    a `<stream:error/>` instead tells a wrong secret, a conflict and an unknown domain apart.
//!
//! All four steps together are bounded by `connect_timeout`.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio_xmpp::xmlstream::{self, ReadError, StreamHeader, Timeouts, XmlStream};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stream_error::{DefinedCondition, StreamError};

use super::Stanza;
use super::config::XmppConfig;
use super::error::LinkError;
use super::message_xml::MessageXml;
use super::stanza_reader::Incoming;

/// An established component stream, read as [`Incoming`] values. It is a `Sink` of [`Wire`]
/// items so it can be split into a reader and a writer half.
pub(crate) struct Link(XmlStream<BufStream<TcpStream>, Incoming>);

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
    let mut pending =
        xmlstream::initiate_stream(BufStream::new(tcp), ns::COMPONENT, header, timeouts)
            .await
            .map_err(read_error)?;
    let stream_id = pending
        .take_header()
        .id
        .ok_or(LinkError::NoStreamId)?
        .into_owned();
    let mut stream = pending.skip_features::<Incoming>();
    let handshake = Handshake::from_stream_id_and_password(stream_id, &cfg.secret);
    stream.send(&handshake).await.map_err(LinkError::Io)?;
    loop {
        match stream.next().await {
            Some(Ok(Incoming::Other(el))) if el.is("handshake", ns::COMPONENT) => {
                return Ok(Link(stream));
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

impl Link {
    fn inner(self: Pin<&mut Self>) -> Pin<&mut XmlStream<BufStream<TcpStream>, Incoming>> {
        Pin::new(&mut self.get_mut().0)
    }
}

impl Stream for Link {
    type Item = Result<Incoming, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner().poll_next(cx)
    }
}

impl Sink<Wire> for Link {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<&Element>::poll_ready(self.inner(), cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Wire) -> io::Result<()> {
        // Serialises into the stream's buffer right away; `item` is not kept.
        match &item {
            Wire::Element(el) => self.inner().start_send(&**el),
            Wire::Stanza(s) => match &**s {
                Stanza::Message(m) => self.inner().start_send(&MessageXml(m)),
                Stanza::Chat(c) => self.inner().start_send(c),
                Stanza::Presence(p) => self.inner().start_send(p),
                Stanza::Iq(iq) => self.inner().start_send(iq),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<&Element>::poll_flush(self.inner(), cx)
    }

    /// Sends `</stream:stream>` and shuts down the sending side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<&Element>::poll_close(self.inner(), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
