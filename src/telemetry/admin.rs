//! The admin listener: `GET /metrics` (Prometheus text format), `GET /healthz` (the process
//! answers) and `GET /readyz` (broker listening, XMPP link up, audit trail writable).
//!
//! A small HTTP/1.1 responder on tokio rather than hyper: three fixed GET routes, one
//! response per connection (`Connection: close`), request heads capped at 8 KiB and 5 s.
//! That is all a Prometheus scraper or a load-balancer probe needs, and it keeps a second
//! HTTP stack out of the build.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::metrics::Metrics;
use crate::audit::AuditStats;
use crate::xmpp::{LinkState, XmppHandle};

/// Default admin address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// `[admin]`.
#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// What `/readyz` checks.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// The application's token: the broker listens until it is cancelled.
    pub running: CancellationToken,
    /// The XMPP link, when the bridge is configured.
    pub xmpp: Option<XmppHandle>,
    /// The audit writer, when audit is on.
    pub audit: Option<Arc<AuditStats>>,
}

impl Readiness {
    /// Whether everything is ready, and a line per check.
    pub fn check(&self) -> (bool, String) {
        let mut ok = true;
        let mut body = String::new();
        let mut line = |name: &str, good: bool, detail: &str| {
            ok &= good;
            body.push_str(&format!(
                "{name}: {} ({detail})\n",
                if good { "ok" } else { "FAIL" }
            ));
        };
        let running = !self.running.is_cancelled();
        line(
            "broker",
            running,
            if running {
                "listening"
            } else {
                "shutting down"
            },
        );
        if let Some(xmpp) = &self.xmpp {
            match xmpp.state() {
                LinkState::Connected => line("xmpp", true, "link up"),
                LinkState::Connecting => line("xmpp", false, "connecting"),
                LinkState::Disconnected { cause, .. } => {
                    line("xmpp", false, &format!("link down: {cause}"));
                }
                LinkState::Stopped { .. } => line("xmpp", false, "link stopped"),
            }
        }
        if let Some(audit) = &self.audit {
            let w = audit.is_writable();
            line(
                "audit",
                w,
                if w {
                    "writable"
                } else {
                    "cannot write the trail"
                },
            );
        }
        (ok, body)
    }
}

/// Binds the admin listener (before anything else serves, so a clash fails start-up).
pub async fn bind(cfg: &AdminConfig) -> std::io::Result<TcpListener> {
    TcpListener::bind(cfg.listen).await
}

/// Serves until `shutdown`.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let ready = Arc::new(ready);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Admin listener ready (/metrics, /healthz, /readyz).");
    }
    let inner = tracker.clone();
    tracker.spawn(async move {
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "Admin accept failed.");
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            let ready = ready.clone();
            inner.spawn(async move {
                if let Err(e) = respond(stream, &metrics, &ready).await {
                    debug!(%peer, error = %e, "Admin request failed.");
                }
                drop(permit);
            });
        }
    });
}

/// Reads one request head and answers it.
async fn respond(
    mut stream: TcpStream,
    metrics: &Metrics,
    ready: &Readiness,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, content_type, body) = match complete {
        Ok(Ok(true)) => route(&head, metrics, ready),
        Ok(Ok(false)) if head.len() > MAX_HEAD => (431, TEXT, "request head too large\n".into()),
        Ok(Ok(false)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => (408, TEXT, "request timeout\n".into()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    if !head.starts_with(b"HEAD ") {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

const TEXT: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

fn route(head: &[u8], metrics: &Metrics, ready: &Readiness) -> (u16, &'static str, String) {
    let first = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let text = String::from_utf8_lossy(first);
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, TEXT, "malformed request line\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return (400, TEXT, "HTTP/1.x only\n".into());
    }
    let path = target.split('?').next().unwrap_or_default();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return (
            404,
            TEXT,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        );
    }
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/metrics" => (200, PROMETHEUS, metrics.render()),
        "/healthz" => (200, TEXT, "alive\n".into()),
        _ => {
            let (ok, body) = ready.check();
            (if ok { 200 } else { 503 }, TEXT, body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = Metrics::new();
        let r = Readiness::default();
        let get = |head: &str| route(head.as_bytes(), &m, &r).0;
        assert_eq!(get("GET /healthz HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(get("GET /readyz?x=1 HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(get("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(get("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(get("GET /metrics SPDY/3\r\n\r\n"), 400);
        assert_eq!(get("garbage\r\n\r\n"), 400);
        r.running.cancel();
        let (status, _, body) = route(b"GET /readyz HTTP/1.1\r\n\r\n", &m, &r);
        assert_eq!(
            (status, body.as_str()),
            (503, "broker: FAIL (shutting down)\n")
        );
    }
}
