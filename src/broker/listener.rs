//! Typed listeners: plain TCP, TLS, WebSocket and WebSocket over TLS. Each accepted socket
//! gets its task; the TLS and WebSocket handshakes run there, within `connect_timeout`, so a
//! slow or broken handshake holds up no other client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytestring::ByteString;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info};

use super::connection::{self, CertUser, ConnectionContext};
use super::link::ConnId;
use super::transport::tls::{self, TlsError, TlsSettings};
use super::transport::{StreamRead, StreamWrite, split_tcp, ws};

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// Whether the kind needs certificates.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether the kind is WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// One `[[broker.listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerConfig {
    /// What it speaks.
    pub kind: ListenerKind,
    /// Where it listens.
    pub address: SocketAddr,
    /// Certificates (`tls` and `wss` only).
    pub tls: Option<TlsSettings>,
    /// HTTP path of the WebSocket upgrade (`ws` and `wss` only; empty for the others).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// A listener's transport, ready to take connections.
#[derive(Clone)]
pub(super) enum Transport {
    Tcp,
    Tls {
        acceptor: TlsAcceptor,
        identity_as_username: bool,
    },
    Ws {
        path: Arc<str>,
    },
    Wss {
        acceptor: TlsAcceptor,
        identity_as_username: bool,
        path: Arc<str>,
    },
}

impl Transport {
    /// The transport of a plain `listen` address.
    pub(super) fn tcp() -> Transport {
        Transport::Tcp
    }

    /// Reads the listener's certificates; fails before anything is bound.
    pub(super) fn build(cfg: &ListenerConfig) -> Result<Transport, TlsError> {
        let path: Arc<str> = Arc::from(cfg.path.as_str());
        let tls = match &cfg.tls {
            Some(settings) if cfg.kind.is_tls() => Some((
                TlsAcceptor::from(tls::server_config(settings)?),
                settings.identity_as_username,
            )),
            _ => None,
        };
        Ok(match (cfg.kind, tls) {
            (ListenerKind::Tls, Some((acceptor, identity_as_username))) => Transport::Tls {
                acceptor,
                identity_as_username,
            },
            (ListenerKind::Wss, Some((acceptor, identity_as_username))) => Transport::Wss {
                acceptor,
                identity_as_username,
                path,
            },
            (ListenerKind::Ws, _) => Transport::Ws { path },
            // The configuration guarantees certificates for TLS kinds.
            _ => Transport::Tcp,
        })
    }

    /// Short name for logs.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls { .. } => "tls",
            Transport::Ws { .. } => "ws",
            Transport::Wss { .. } => "wss",
        }
    }
}

/// Serves one accepted socket: transport handshake, then the MQTT connection.
///
/// Plain TCP goes straight to the connection; the other transports are boxed, so that the
/// task of a TCP connection is not as large as a TLS handshake's state.
pub(super) async fn serve(
    transport: Transport,
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    ctx: Arc<ConnectionContext>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "Could not set TCP_NODELAY.");
    }
    match transport {
        Transport::Tcp => {
            let (rd, wr) = split_tcp(stream);
            connection::serve(rd, wr, peer, conn, ctx, CertUser::NotUsed).await;
        }
        other => Box::pin(serve_wrapped(other, stream, peer, conn, ctx)).await,
    }
}

/// TLS, WebSocket and WebSocket over TLS: the handshakes (each within `connect_timeout`),
/// then the MQTT connection.
async fn serve_wrapped(
    transport: Transport,
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    ctx: Arc<ConnectionContext>,
) {
    let max_message = ctx.cfg.max_packet_size.max(64 * 1024);
    let timeout = ctx.cfg.connect_timeout;
    let span = tracing::info_span!("handshake", %peer, transport = transport.name());
    match transport {
        Transport::Tcp => {
            let (rd, wr) = split_tcp(stream);
            connection::serve(rd, wr, peer, conn, ctx, CertUser::NotUsed).await;
        }
        Transport::Tls {
            acceptor,
            identity_as_username,
        } => {
            let handshake = tls_handshake(&acceptor, stream, identity_as_username, &ctx)
                .instrument(span)
                .await;
            let Some((tls, user)) = handshake else {
                return;
            };
            let (rd, wr) = tokio::io::split(tls);
            connection::serve(StreamRead(rd), StreamWrite(wr), peer, conn, ctx, user).await;
        }
        Transport::Ws { path } => {
            let upgraded = tokio::time::timeout(timeout, ws::accept(stream, &path, max_message))
                .instrument(span.clone())
                .await;
            match upgraded {
                Ok(Ok((rd, wr))) => {
                    connection::serve(rd, wr, peer, conn, ctx, CertUser::NotUsed).await;
                }
                Ok(Err(error)) => span.in_scope(|| info!(%error, "WebSocket handshake failed.")),
                Err(_) => span.in_scope(|| info!("WebSocket handshake timed out.")),
            }
        }
        Transport::Wss {
            acceptor,
            identity_as_username,
            path,
        } => {
            let handshake = async {
                let (tls, user) =
                    tls_handshake(&acceptor, stream, identity_as_username, &ctx).await?;
                match tokio::time::timeout(timeout, ws::accept(tls, &path, max_message)).await {
                    Ok(Ok(halves)) => Some((halves, user)),
                    Ok(Err(error)) => {
                        info!(%error, "WebSocket handshake failed.");
                        None
                    }
                    Err(_) => {
                        info!("WebSocket handshake timed out.");
                        None
                    }
                }
            };
            let Some(((rd, wr), user)) = handshake.instrument(span).await else {
                return;
            };
            connection::serve(rd, wr, peer, conn, ctx, user).await;
        }
    }
}

/// The TLS handshake, and the user name the client certificate gives when configured.
async fn tls_handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    identity_as_username: bool,
    ctx: &ConnectionContext,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, CertUser)> {
    let tls = match tokio::time::timeout(ctx.cfg.connect_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            info!(%error, "TLS handshake failed.");
            return None;
        }
        Err(_) => {
            info!("TLS handshake timed out.");
            return None;
        }
    };
    let user = if identity_as_username {
        match tls::client_common_name(tls.get_ref().1) {
            Some(name) => CertUser::Name(ByteString::from(name)),
            None => CertUser::Missing,
        }
    } else {
        CertUser::NotUsed
    };
    Some((tls, user))
}
