//! A TCP proxy for fault tests, on a free 127.0.0.1 port in front of one upstream address.
//!
//! - [`Proxy::cut`] resets every connection it carries, both sides at once (linger 0, so
//!   each peer gets a TCP RST, as when a middlebox drops its state or a cable is pulled and
//!   the far end notices).
//! - [`Proxy::blackhole`] stops carrying bytes without closing anything: what either side
//!   sends is read and thrown away (lost packets never arrive later), connections accepted
//!   meanwhile are held open and never connected upstream. Only a peer's own timeout notices.
//! - [`Proxy::forward`] lifts the blackhole. Connections that lived through it are reset
//!   then: their lost bytes would have made TCP give up on them in the real world.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Blackhole,
}

/// A running proxy; stops accepting when dropped (the connections it carries are reset).
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped by every cut: each connection ends when it changes.
    cuts: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    cut_connections: Arc<AtomicU64>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and carries every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Forward);
        let (cuts, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let cut_connections = Arc::new(AtomicU64::new(0));
        let accept_task = {
            let (mode, cuts) = (mode.clone(), cuts.clone());
            let (accepted, cut_connections) = (accepted.clone(), cut_connections.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(carry(
                        client,
                        upstream,
                        mode.subscribe(),
                        cuts.subscribe(),
                        cut_connections.clone(),
                    ));
                }
            })
        };
        Proxy {
            addr,
            mode,
            cuts,
            accepted,
            cut_connections,
            accept_task,
        }
    }

    /// Resets every connection carried now (both sides get an RST).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Stops carrying bytes, closing nothing.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Carries bytes again; connections that lived through the blackhole are reset.
    pub fn forward(&self) {
        if self.mode.send_replace(Mode::Forward) == Mode::Blackhole {
            self.cut();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections ended by a cut so far.
    pub fn cut_connections(&self) -> u64 {
        self.cut_connections.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.cut();
    }
}

/// One connection: held while blackholed, then connected upstream and carried both ways until
/// either side closes or a cut.
async fn carry(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut cuts: watch::Receiver<u64>,
    cut_connections: Arc<AtomicU64>,
) {
    cuts.mark_unchanged();
    let _ = client.set_nodelay(true);
    let mut server = None;
    {
        let (mut from_client, _) = client.split();
        let held = async {
            // Held while blackholed: the client's bytes are swallowed.
            discard_while_blackholed(&mut from_client, &mut mode).await;
            TcpStream::connect(upstream).await.ok()
        };
        tokio::select! {
            s = held => server = s,
            _ = cuts.changed() => {}
        }
    }
    let Some(mut server) = server else {
        reset(client);
        cut_connections.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = server.set_nodelay(true);
    let cut = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let (m1, m2) = (mode.clone(), mode.clone());
        let both = async {
            tokio::join!(pump(&mut cr, &mut sw, m1), pump(&mut sr, &mut cw, m2));
        };
        tokio::select! {
            () = both => false,
            _ = cuts.changed() => true,
        }
    };
    if cut {
        cut_connections.fetch_add(1, Ordering::Relaxed);
    }
    reset(client);
    reset(server);
}

/// Copies `from` to `to` while forwarding; reads and drops while blackholed. Ends at EOF or
/// an error (passing the EOF on).
async fn pump(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if *mode.borrow_and_update() == Mode::Blackhole {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Returns once the proxy forwards; until then whatever `from` sends is read and dropped.
async fn discard_while_blackholed(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    mode: &mut watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *mode.borrow_and_update() == Mode::Forward {
            return;
        }
        tokio::select! {
            r = from.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) {
                // The client gave up; wait to be cut or forwarded, the upstream connect
                // then finds a closed client and ends.
                let _ = mode.changed().await;
                return;
            },
            _ = mode.changed() => {}
        }
    }
}

/// Closes with an RST (linger 0), not a FIN.
fn reset(stream: TcpStream) {
    // Deprecated because a positive linger blocks the thread on drop; zero never blocks.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
