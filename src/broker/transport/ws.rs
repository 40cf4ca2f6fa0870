//! MQTT over WebSocket (MQTT 5.0 §6 and 3.1.1 §6): the HTTP upgrade on a fixed path with the
//! `mqtt` subprotocol, then binary messages that carry the MQTT byte stream. One message may
//! hold several packets and a packet may span messages: the halves below only move bytes,
//! the MQTT decoder frames them as it does for TCP.
//!
//! 1. The upgrade request must be for the listener's path and offer the `mqtt` subprotocol;
//!    otherwise it is answered with an HTTP error and the connection closes. The answer
//!    names `mqtt` in `Sec-WebSocket-Protocol` [MQTT-6.0.0-3].
//! 2. A text message is a protocol error: the connection closes [MQTT-6.0.0-1].
//! 3. What the broker writes is sent as binary messages, one per batch of packets.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{ConnRead, ConnWrite};

/// The WebSocket subprotocol MQTT uses [MQTT-6.0.0-3].
pub const SUBPROTOCOL: &str = "mqtt";
/// The default path of WebSocket listeners.
pub const DEFAULT_PATH: &str = "/mqtt";
/// Read buffer of a WebSocket connection (tungstenite's default is 128 KiB per connection).
const READ_BUFFER: usize = 8 * 1024;

/// Why an upgrade request is refused, from its path and `Sec-WebSocket-Protocol` headers.
pub fn check_request(
    path: &str,
    requested_path: &str,
    protocols: &[&str],
) -> Result<(), (StatusCode, String)> {
    if requested_path != path {
        return Err((
            StatusCode::NOT_FOUND,
            format!("MQTT over WebSocket is served on {path}, not {requested_path}"),
        ));
    }
    if !protocols
        .iter()
        .any(|p| p.eq_ignore_ascii_case(SUBPROTOCOL))
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "the Sec-WebSocket-Protocol header must offer `mqtt` [MQTT-6.0.0-3]".to_string(),
        ));
    }
    Ok(())
}

/// The subprotocols a request offers (comma-separated, possibly over several headers).
fn offered_protocols(request: &Request) -> Vec<&str> {
    request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Completes the WebSocket upgrade on `stream`, or refuses it.
pub async fn accept<S>(
    stream: S,
    path: &str,
    max_message: usize,
) -> Result<(WsRead<S>, WsWrite<S>), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[expect(
        clippy::result_large_err,
        reason = "the error type is tungstenite's HTTP response"
    )]
    let callback = |request: &Request, mut response: Response| {
        let protocols = offered_protocols(request);
        match check_request(path, request.uri().path(), &protocols) {
            Ok(()) => {
                response.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    HeaderValue::from_static(SUBPROTOCOL),
                );
                Ok(response)
            }
            Err((status, why)) => {
                tracing::info!(path = request.uri().path(), protocols = ?protocols, %why,
                    "WebSocket upgrade refused.");
                let mut refusal = ErrorResponse::new(Some(why));
                *refusal.status_mut() = status;
                Err(refusal)
            }
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    let (sink, stream) = ws.split();
    Ok((WsRead(stream), WsWrite(sink)))
}

/// The reading half: binary messages appended to the MQTT read buffer.
pub struct WsRead<S>(SplitStream<WebSocketStream<S>>);

/// The writing half: each write is one binary message.
pub struct WsWrite<S>(SplitSink<WebSocketStream<S>, Message>);

fn ws_error(error: WsError) -> io::Error {
    match error {
        WsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// What one WebSocket message means for the MQTT stream: bytes, nothing, or the end.
fn absorb(message: Message, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    match message {
        Message::Binary(data) => {
            buf.extend_from_slice(&data);
            Ok((!data.is_empty()).then_some(data.len()))
        }
        Message::Text(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "text WebSocket message; MQTT uses binary messages only [MQTT-6.0.0-1]",
        )),
        Message::Close(_) => Ok(Some(0)),
        // Pings are answered by tungstenite itself.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(None),
    }
}

impl<S> ConnRead for WsRead<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn read_some(&mut self, buf: &mut BytesMut, _chunk: usize) -> io::Result<usize> {
        loop {
            let Some(message) = self.0.next().await else {
                return Ok(0);
            };
            if let Some(n) = absorb(message.map_err(ws_error)?, buf)? {
                return Ok(n);
            }
        }
    }

    fn read_ready(&mut self, buf: &mut BytesMut) {
        while let Some(Some(Ok(message))) = self.0.next().now_or_never() {
            match absorb(message, buf) {
                Ok(Some(0)) | Err(_) => return,
                _ => {}
            }
        }
    }
}

impl<S> ConnWrite for WsWrite<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn send_all(&mut self, data: &[u8]) -> io::Result<()> {
        let message = Message::Binary(Bytes::copy_from_slice(data));
        self.0.send(message).await.map_err(ws_error)
    }

    async fn close(&mut self) -> io::Result<()> {
        self.0.close().await.map_err(ws_error)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upgrade_needs_path_and_mqtt_subprotocol() {
        assert!(check_request("/mqtt", "/mqtt", &["mqtt"]).is_ok());
        assert!(check_request("/mqtt", "/mqtt", &["MQTT"]).is_ok());
        assert!(check_request("/mqtt", "/mqtt", &["mqttv3.1", "mqtt"]).is_ok());
        let (status, _) = check_request("/mqtt", "/other", &["mqtt"]).unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, why) = check_request("/mqtt", "/mqtt", &["chat"]).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(why.contains("MQTT-6.0.0-3"));
        assert!(check_request("/mqtt", "/mqtt", &[]).is_err());
    }

    #[test]
    fn messages_feed_the_mqtt_stream() {
        let mut buf = BytesMut::new();
        let packet = Message::Binary(Bytes::from_static(&[0xC0, 0x00]));
        assert_eq!(absorb(packet, &mut buf).unwrap(), Some(2));
        assert_eq!(&buf[..], &[0xC0, 0x00]);
        assert_eq!(absorb(Message::Ping(Bytes::new()), &mut buf).unwrap(), None);
        assert_eq!(absorb(Message::Close(None), &mut buf).unwrap(), Some(0));
        let err = absorb(Message::text("hi"), &mut buf).unwrap_err();
        assert!(err.to_string().contains("MQTT-6.0.0-1"));
    }
}
