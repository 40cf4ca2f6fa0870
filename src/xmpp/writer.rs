//! The sending half of an established component stream.
//!
//! After the handshake, `XmlStream` is done with: [`LinkWriter`] owns the socket's writing
//! half and one buffer. A [`ChatXml`] and a ping are appended as bytes (`raw_xml`); anything
//! else through rxml's encoder in the stream's state (`raw_xml::Fallback`), into the same
//! buffer, so stanzas leave in the order they were handed over. The buffer goes to the socket
//! on `poll_flush` (one write per batch: the link feeds a batch, then flushes), or earlier
//! when it grows past [`HIGH_WATER`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Sink;
use tokio::io::AsyncWrite;

use super::Stanza;
use super::connection::Wire;
use super::message_xml::MessageXml;
use super::raw_xml::{self, Fallback, STREAM_FOOTER};

/// Buffered bytes above which `poll_ready` writes before taking more.
const HIGH_WATER: usize = 64 * 1024;

/// Writes [`Wire`] items to `io` (see the module docs).
pub(crate) struct LinkWriter<W> {
    io: W,
    /// Bytes not yet handed to `io`, from `written` on.
    buf: Vec<u8>,
    written: usize,
    fallback: Fallback,
    /// `</stream:stream>` is in `buf` (or sent): nothing more may be written.
    closed: bool,
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

impl<W: AsyncWrite + Unpin> LinkWriter<W> {
    pub(crate) fn new(io: W) -> Self {
        Self {
            io,
            buf: Vec::with_capacity(16 * 1024),
            written: 0,
            fallback: Fallback::default(),
            closed: false,
        }
    }

    /// Appends `item` to the buffer; on error nothing is appended.
    fn append(&mut self, item: &Wire) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream was closed",
            ));
        }
        let out = &mut self.buf;
        match item {
            Wire::Element(el) => self.fallback.write_element(out, el).map_err(invalid),
            Wire::Stanza(s) => match &**s {
                Stanza::Chat(c) => raw_xml::write_chat(out, c).map_err(invalid),
                Stanza::Iq(iq) if raw_xml::is_ping(iq) => {
                    raw_xml::write_ping(out, iq).map_err(invalid)
                }
                Stanza::Iq(iq) => self.fallback.write(out, iq).map_err(invalid),
                Stanza::Message(m) => self.fallback.write(out, &MessageXml(m)).map_err(invalid),
                Stanza::Presence(p) => self.fallback.write(out, p).map_err(invalid),
            },
        }
    }

    /// Hands the buffer to `io` until it is empty.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// The bytes waiting to be written (tests).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.written..]
    }
}

impl<W: AsyncWrite + Unpin> Sink<Wire> for LinkWriter<W> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.len() - this.written < HIGH_WATER {
            return Poll::Ready(Ok(()));
        }
        this.poll_write_out(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Wire) -> io::Result<()> {
        self.get_mut().append(&item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends `</stream:stream>` and shuts down the sending side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.closed = true;
            this.buf.extend_from_slice(STREAM_FOOTER);
        }
        std::task::ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
