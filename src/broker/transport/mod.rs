//! The byte streams a client connection runs over: plain TCP, TLS, WebSocket and WebSocket
//! over TLS. The connection code is generic over [`ConnRead`] and [`ConnWrite`], so each
//! transport gets its own compiled copy and plain TCP keeps its direct socket calls.
//!
//! - `tls`: certificates, keys and the rustls server configuration of a TLS listener.
//! - `ws`: the WebSocket handshake (path, `mqtt` subprotocol) and binary-frame halves.

use std::future::Future;
use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use futures::FutureExt;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

pub mod tls;
pub mod ws;

/// The reading half of a client connection.
pub trait ConnRead: Send + 'static {
    /// Waits for bytes and appends them to `buf`, reserving about `chunk` bytes when it has
    /// less room; 0 means the peer closed the stream.
    fn read_some(
        &mut self,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Appends what can be read without waiting (used once, when the connection is being
    /// closed, to see a DISCONNECT the client already sent).
    fn read_ready(&mut self, buf: &mut BytesMut);
}

/// The writing half of a client connection.
pub trait ConnWrite: Send + 'static {
    /// Writes all of `data` (for WebSocket: as one binary message).
    fn send_all(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;

    /// Ends the stream (TCP FIN, TLS close_notify, WebSocket Close).
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;

    /// The socket itself, when bytes written to it need no framing or encryption (plain
    /// TCP): the router then writes a subscriber's messages straight to it (see
    /// [`crate::broker::link`]).
    fn direct(&self) -> Option<DirectSocket> {
        None
    }
}

/// A plain TCP connection's socket, shared by its reader, its writer task and the router.
pub type DirectSocket = Arc<TcpStream>;

/// The reading half of a plain TCP connection.
pub struct TcpRead(DirectSocket);

/// The writing half of a plain TCP connection. Shared, not owned: the router writes to the
/// socket too, and the link between them keeps the two from interleaving.
pub struct TcpWrite(DirectSocket);

/// The two halves of a plain TCP connection: one shared socket, as tokio's own split makes
/// (an idle connection's memory counts every allocation).
pub fn split_tcp(stream: TcpStream) -> (TcpRead, TcpWrite) {
    let socket = Arc::new(stream);
    (TcpRead(socket.clone()), TcpWrite(socket))
}

impl ConnRead for TcpRead {
    async fn read_some(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        loop {
            self.0.readable().await?;
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk);
            }
            match read_clearing(&self.0, buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Readiness was stale (left over from the read that emptied the socket):
                    // do not hold the reservation while waiting, or every idle connection
                    // keeps a read buffer (it was most of the memory of an idle connection).
                    if buf.is_empty() {
                        *buf = BytesMut::new();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn read_ready(&mut self, buf: &mut BytesMut) {
        buf.reserve(chunk_for_last_words());
        // Whatever the outcome, the connection ends.
        let _bytes = self.0.try_read_buf(buf);
    }
}

/// Reads what the socket has. A read that does not fill the buffer emptied the socket: the
/// socket's readiness is cleared with it, as a read that finds nothing would clear it, so the
/// reader waits again without that extra `recvfrom`. The read runs inside `try_io`, which
/// clears only the readiness event it was made under: data or a FIN that another turn of the
/// (edge-triggered) poller saw meanwhile has a newer event and still wakes the reader.
fn read_clearing(rd: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut short = None;
    let read = rd.try_io(Interest::READABLE, || {
        let n = rd.try_read_buf(buf)?;
        if n > 0 && n < room {
            short = Some(n);
            // Clears the readiness; the bytes read are returned below.
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(n)
    });
    match (read, short) {
        (_, Some(n)) => Ok(n),
        (read, None) => read,
    }
}

impl ConnWrite for TcpWrite {
    async fn send_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.0.try_write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                // Boxed: the wait for room is rare, and unboxed its state would make every
                // connection's writer task larger, idle ones included.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    Box::pin(self.0.writable()).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn close(&mut self) -> io::Result<()> {
        // The reader and the router hold the socket too: end the stream now, not when the
        // last holder lets go of it.
        socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write)
    }

    fn direct(&self) -> Option<DirectSocket> {
        Some(self.0.clone())
    }
}

/// The reading half of a stream that is not a bare socket (TLS): readiness is the stream's
/// own, so the buffer is reserved before waiting.
pub struct StreamRead<S>(pub ReadHalf<S>);

/// The writing half of such a stream.
pub struct StreamWrite<S>(pub WriteHalf<S>);

impl<S: AsyncRead + AsyncWrite + Send + 'static> ConnRead for StreamRead<S> {
    async fn read_some(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        if buf.capacity() - buf.len() < chunk / 4 {
            buf.reserve(chunk);
        }
        self.0.read_buf(buf).await
    }

    fn read_ready(&mut self, buf: &mut BytesMut) {
        buf.reserve(chunk_for_last_words());
        // Polled once: what the stream holds now, nothing more.
        let _bytes = self.0.read_buf(buf).now_or_never();
    }
}

impl<S: AsyncRead + AsyncWrite + Send + 'static> ConnWrite for StreamWrite<S> {
    async fn send_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.0.write_all(data).await?;
        // TLS keeps written records until flushed.
        self.0.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

/// Room reserved for the last read of a closing connection.
const fn chunk_for_last_words() -> usize {
    8 * 1024
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A short read clears the socket's readiness without a read that finds nothing; what
    /// arrives afterwards, and the peer's FIN, must still wake the reader.
    #[tokio::test]
    async fn short_reads_still_see_later_data_and_the_close() {
        short_reads_then_more().await;
    }

    /// The same with two workers, where another thread may poll the driver between the read
    /// and the clearing of the readiness (the broker's `worker_threads` may be above 1).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn short_reads_see_later_data_on_a_multi_worker_runtime() {
        for _ in 0..5 {
            short_reads_then_more().await;
        }
    }

    async fn short_reads_then_more() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut rd, _wr) = split_tcp(server);
        let mut buf = BytesMut::new();
        let within = Duration::from_secs(10);
        for round in 0..50u8 {
            client.write_all(&[round; 3]).await.unwrap();
            let n = tokio::time::timeout(within, rd.read_some(&mut buf, 1024)).await;
            assert_eq!(n.unwrap().unwrap(), 3, "round {round}");
            assert_eq!(&buf[..], &[round; 3]);
            buf.clear();
        }
        // A read that fills the buffer leaves the readiness set: the rest comes next.
        client.write_all(&[7; 300]).await.unwrap();
        let mut got = 0;
        while got < 300 {
            let mut small = BytesMut::with_capacity(64);
            let n = tokio::time::timeout(within, rd.read_some(&mut small, 64)).await;
            got += n.unwrap().unwrap();
        }
        assert_eq!(got, 300);
        // Data and FIN together: the data, then the end.
        client.write_all(b"last").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        loop {
            let n = tokio::time::timeout(within, rd.read_some(&mut buf, 1024)).await;
            if n.unwrap().unwrap() == 0 {
                break;
            }
            got.extend_from_slice(&buf);
            buf.clear();
        }
        assert_eq!(got, b"last");
    }
}
