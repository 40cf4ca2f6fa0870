//! The embedded MQTT broker (MQTT 3.1.1 and 5.0 packet formats).
//!
//! ```text
//!  TCP listeners ──accept──▶ connection task (reader) ──RouterMsg──▶ router task
//!                             │ writer task ◀──ClientLink (packets)──┘  sessions, trie,
//!                                                                       retained, $SYS
//! ```
//! - `codec`: bytes ↔ packets, no I/O.
//! - `connection`: handshake, keep-alive, reading and writing one client.
//! - `router`: the single owner of sessions, subscriptions and retained messages.
//! - `session`: sans-IO per-client QoS state.
//! - `topic`, `trie`: topic rules and matching.
//! - `auth`: the password file.

pub mod alias;
pub mod auth;
pub mod codec;
pub mod config;
pub mod connack;
pub mod connection;
pub mod guard;
pub mod internal;
pub mod link;
pub mod router;
pub mod session;
pub mod shared;
pub mod stats;
pub mod topic;
pub mod trie;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::auth::PasswordFile;
pub use self::config::BrokerConfig;
use self::connection::ConnectionContext;
pub use self::internal::{BrokerGone, Delivery, InternalClient};
use self::link::RouterMsg;
use self::router::Router;
pub use self::stats::BrokerStats;

/// Depth of the router's inbox (each entry may carry a batch of packets).
const ROUTER_INBOX: usize = 1024;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The password file is unreadable or invalid.
    #[error(transparent)]
    PasswordFile(#[from] auth::AuthFileError),
    /// The broker stopped while starting an in-process client.
    #[error(transparent)]
    Broker(#[from] BrokerGone),
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// Addresses the listeners are bound to (port 0 in config becomes the real port here).
    pub local_addrs: Vec<SocketAddr>,
    /// Counters.
    pub stats: Arc<BrokerStats>,
    router: mpsc::Sender<RouterMsg>,
    ids: Arc<AtomicU64>,
}

impl Broker {
    /// Loads the password file, binds every listener, and spawns the router and the accept
    /// loops on `tracker`. Everything stops when `shutdown` is cancelled: listeners stop
    /// accepting, wills are published, clients are disconnected.
    pub async fn start(
        cfg: BrokerConfig,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Broker, StartError> {
        let users = match &cfg.password_file {
            Some(path) => Some(Arc::new(PasswordFile::load(path)?)),
            None => None,
        };
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for &addr in &cfg.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            listeners.push((listener, local));
        }
        let cfg = Arc::new(cfg);
        let stats = Arc::new(BrokerStats::default());
        let (router_tx, router_rx) = mpsc::channel(ROUTER_INBOX);
        let router = Router::new(cfg.clone(), stats.clone());
        tracker.spawn(router.run(router_rx, shutdown.clone()));
        let ctx = Arc::new(ConnectionContext {
            cfg: cfg.clone(),
            stats: stats.clone(),
            router: router_tx.clone(),
            users,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        });
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        let ids = Arc::new(AtomicU64::new(1));
        let mut local_addrs = Vec::with_capacity(listeners.len());
        for (listener, local) in listeners {
            info!(addr = %local, "MQTT listener ready.");
            local_addrs.push(local);
            tracker.spawn(accept_loop(
                listener,
                ctx.clone(),
                slots.clone(),
                ids.clone(),
            ));
        }
        Ok(Broker {
            local_addrs,
            stats,
            router: router_tx,
            ids,
        })
    }

    /// Installs the check every client PUBLISH passes before routing (see [`guard`]).
    pub async fn set_publish_guard(
        &self,
        guard: Arc<dyn guard::PublishGuard>,
    ) -> Result<(), BrokerGone> {
        self.router
            .send(RouterMsg::SetGuard(guard))
            .await
            .map_err(|_| BrokerGone)
    }

    /// A new in-process client session named `client_id` (see [`InternalClient`]).
    pub async fn internal_client(&self, client_id: &str) -> Result<InternalClient, BrokerGone> {
        let conn = self.ids.fetch_add(1, Ordering::Relaxed);
        InternalClient::connect(self.router.clone(), conn, client_id).await
    }
}

/// Accepts connections until shutdown; each gets a task and one of `slots`.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ConnectionContext>,
    slots: Arc<Semaphore>,
    ids: Arc<AtomicU64>,
) {
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                error!(error = %err, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let refused = ctx
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if refused % 1000 == 0 {
                warn!(%peer, max_connections = ctx.cfg.max_connections,
                    refused_so_far = refused + 1, "Connection limit reached; refusing.");
            }
            drop(stream);
            continue;
        };
        BrokerStats::add(&ctx.stats.connections_accepted, 1);
        let conn = ids.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        ctx.tracker.clone().spawn(async move {
            connection::serve(stream, peer, conn, ctx).await;
            drop(permit);
        });
    }
    info!(addr = ?listener.local_addr().ok(), "MQTT listener closed.");
}
