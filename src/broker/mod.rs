//! The embedded MQTT broker (MQTT 3.1.1 and 5.0 packet formats).
//!
//! ```text
//!  TCP listeners ──accept──▶ connection task (reader) ──RouterMsg──▶ router (behind a lock,
//!                             │ writer task ◀──ClientLink (packets)──┘  run in the reader's
//!                                                                       task): sessions, trie,
//!  in-process client (bridge) ──RouterMsg, inbox──▶ router task ──▶ same router; retained,
//!                                                   (and timers, $SYS, shutdown)    $SYS
//! ```
//! - `codec`: bytes ↔ packets, no I/O.
//! - `connection`: handshake, keep-alive, reading and writing one client.
//! - `router`: the single owner of sessions, subscriptions and retained messages.
//! - `session`: sans-IO per-client QoS state.
//! - `topic`, `trie`: topic rules and matching.
//! - `auth`: the password file; `acl`: the access control list.
//! - `listener`, `transport`: TCP, TLS, WebSocket and WebSocket over TLS listeners.

pub mod acl;
pub mod alias;
pub mod auth;
pub mod codec;
pub mod config;
pub mod connack;
pub mod connection;
pub mod guard;
pub mod internal;
pub mod link;
pub mod listener;
pub mod router;
pub mod session;
pub mod session_events;
pub mod shared;
pub mod stats;
pub mod topic;
pub mod tracking;
pub mod transport;
pub mod trie;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

use self::link::RouterMsg;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::acl::Acl;
use self::auth::PasswordFile;
pub use self::config::BrokerConfig;
use self::connection::ConnectionContext;
pub use self::internal::{BrokerGone, Delivery, InternalClient, Resumed};
use self::listener::Transport;
use self::router::{Router, SharedRouter};
pub use self::stats::BrokerStats;

/// Depth of the router task's inbox, for in-process clients (each entry may carry a batch).
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
    /// The ACL file is unreadable or invalid.
    #[error(transparent)]
    Acl(#[from] acl::AclError),
    /// A TLS listener's certificate, key or CA file is unusable.
    #[error("listener {addr}: {source}")]
    Tls {
        /// The listener's address.
        addr: SocketAddr,
        /// The cause.
        source: transport::tls::TlsError,
    },
    /// The broker stopped while starting an in-process client.
    #[error(transparent)]
    Broker(#[from] BrokerGone),
    /// The broker's runtime (its threads) could not start.
    #[error("cannot start the broker's runtime: {0}")]
    Runtime(std::io::Error),
    /// The store could not be opened or read back.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The runtime the router and every connection run on, in threads of their own.
///
/// One worker by default (`worker_threads = 1`): a QoS 1 message wakes the router, the
/// subscriber's writer and the publisher's writer, and on the application's multi-thread
/// runtime those wake-ups crossed worker threads (QoS 1 latency p50 39-43 µs against
/// Mosquitto's 19-20 µs; 25-27 µs here, at the same throughput: the broker needs well under a
/// core). A multi-thread runtime with one worker measured better than a current-thread one
/// (QoS 2 fan-in 4.0× against 3.3-3.8× Mosquitto's). The XMPP link and the bridge run here
/// too (see [`Broker::runtime`]); the audit writer and the admin listener do not.
struct BrokerRuntime {
    handle: tokio::runtime::Handle,
    /// The broker's tasks; the runtime's threads end once all of them have.
    tracker: TaskTracker,
}

impl BrokerRuntime {
    fn start(
        threads: usize,
        shutdown: CancellationToken,
        app: &TaskTracker,
    ) -> std::io::Result<BrokerRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .thread_name("mqtt-broker")
            .build()?;
        let handle = runtime.handle().clone();
        let tracker = TaskTracker::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let tasks = tracker.clone();
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                runtime.block_on(async move {
                    shutdown.cancelled().await;
                    tasks.close();
                    tasks.wait().await;
                });
                // Dropping the runtime here ends its blocking threads too.
                drop(runtime);
                let _app_gone = done_tx.send(());
            })?;
        // The application's shutdown waits for the broker's drain.
        app.spawn(async move {
            let _stopped = done_rx.await;
        });
        Ok(BrokerRuntime { handle, tracker })
    }

    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(task, &self.handle);
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// Addresses the listeners are bound to (port 0 in config becomes the real port here).
    pub local_addrs: Vec<SocketAddr>,
    /// Counters.
    pub stats: Arc<BrokerStats>,
    /// The store when `[persistence]` is on: its generic tables (`Store::put`, `get`,
    /// `delete`, `iter`) are there for the rest of the application.
    pub store: Option<Arc<crate::store::Store>>,
    router: Arc<SharedRouter>,
    /// The router task's inbox, for in-process clients (see [`Router::run`]).
    inbox: mpsc::Sender<RouterMsg>,
    ids: Arc<AtomicU64>,
    /// For the first persistent in-process client (see [`internal::Carryover`]).
    carryover: std::sync::Mutex<Option<internal::Carryover>>,
    handle: tokio::runtime::Handle,
    tasks: TaskTracker,
}

impl Broker {
    /// Loads the password file, binds every listener, and starts the router and the accept
    /// loops on a runtime of the broker's own (see `BrokerRuntime`); `tracker` learns when
    /// the broker has finished. Everything stops when `shutdown` is cancelled: listeners stop
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
        let acl = match &cfg.acl_file {
            Some(path) => Some(Arc::new(Acl::load(path)?)),
            None => None,
        };
        // Certificates are read before any port is bound.
        let mut wanted: Vec<(SocketAddr, Transport)> =
            cfg.listen.iter().map(|&a| (a, Transport::tcp())).collect();
        for l in &cfg.listeners {
            let transport = Transport::build(l).map_err(|source| StartError::Tls {
                addr: l.address,
                source,
            })?;
            wanted.push((l.address, transport));
        }
        // State comes back before any listener opens.
        let recovery_started = std::time::Instant::now();
        let recovered = match &cfg.persistence {
            Some(p) => Some((recover(p)?, p.durability)),
            None => None,
        };
        // Bound here, synchronously, so that a bind error is reported before anything runs;
        // registered with the broker's runtime inside it.
        let mut listeners = Vec::with_capacity(wanted.len());
        for (addr, transport) in wanted {
            let bind = || -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                let local = listener.local_addr()?;
                Ok((listener, local))
            };
            let (listener, local) = bind().map_err(|source| StartError::Bind { addr, source })?;
            listeners.push((listener, local, transport));
        }
        let runtime = BrokerRuntime::start(cfg.worker_threads, shutdown.clone(), tracker)
            .map_err(StartError::Runtime)?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(BrokerStats::default());
        let mut router = Router::new(cfg.clone(), stats.clone()).with_acl(acl.clone());
        let store = recovered.as_ref().map(|((_, _, store), _)| store.clone());
        let mut carryover = None;
        if let Some(((journal, mut state, _), durability)) = recovered {
            let (sessions, messages, qos2_in, retained) = state.summary();
            let replies = std::mem::take(&mut state.replies);
            router.set_journal(journal.clone());
            let (tracked_tx, tracked_rx) = mpsc::unbounded_channel();
            let tracked = router.restore(state, &tracked_tx);
            info!(
                sessions,
                messages,
                qos2_in,
                retained,
                receipts_owed = tracked.len(),
                reply_routes = replies.len(),
                ?durability,
                took_ms = recovery_started.elapsed().as_millis() as u64,
                "State recovered from the store."
            );
            carryover = Some(internal::Carryover {
                tracked_tx,
                tracked_rx,
                resumed: Resumed {
                    tracked,
                    replies,
                    journal,
                },
            });
        }
        let shared = SharedRouter::new(router);
        let (router_tx, router_rx) = mpsc::channel(ROUTER_INBOX);
        runtime.spawn(Router::run(shared.clone(), router_rx, shutdown.clone()));
        let ctx = Arc::new(ConnectionContext {
            cfg: cfg.clone(),
            stats: stats.clone(),
            router: shared.clone(),
            users,
            acl,
            shutdown: shutdown.clone(),
            tracker: runtime.tracker.clone(),
        });
        let slots = Arc::new(Semaphore::new(cfg.max_connections));
        let ids = Arc::new(AtomicU64::new(1));
        let mut local_addrs = Vec::with_capacity(listeners.len());
        for (listener, local, transport) in listeners {
            info!(addr = %local, transport = transport.name(), "MQTT listener ready.");
            local_addrs.push(local);
            let (ctx, slots, ids) = (ctx.clone(), slots.clone(), ids.clone());
            runtime.spawn(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, transport, ctx, slots, ids).await,
                    Err(error) => error!(addr = %local, %error, "MQTT listener lost."),
                }
            });
        }
        Ok(Broker {
            local_addrs,
            store,
            stats,
            router: shared,
            inbox: router_tx,
            ids,
            carryover: std::sync::Mutex::new(carryover),
            handle: runtime.handle.clone(),
            tasks: runtime.tracker.clone(),
        })
    }

    /// The broker's runtime, and the tracker its shutdown waits for: the application runs the
    /// XMPP link and the bridge here too. Every bridged message crosses the bridge, the link
    /// and the broker; on one thread those hand-overs are local wake-ups, where across two
    /// runtimes each was a cross-thread wake (bridge CPU per message 22-25 % lower, measured
    /// in the README's Performance). The bridge's own work per message is a few µs, and its
    /// XMPP side is capped by the XMPP server's rate.
    pub fn runtime(&self) -> (&tokio::runtime::Handle, &TaskTracker) {
        (&self.handle, &self.tasks)
    }

    /// Installs the check every client PUBLISH passes before routing (see [`guard`]).
    pub async fn set_publish_guard(
        &self,
        guard: Arc<dyn guard::PublishGuard>,
    ) -> Result<(), BrokerGone> {
        self.router.with(|r| r.set_guard(guard)).ok_or(BrokerGone)
    }

    /// Starts telling a listener about network clients' sessions (see [`session_events`]):
    /// returns its receiver, `depth` events deep. A second call replaces the first listener.
    pub async fn session_events(
        &self,
        depth: usize,
    ) -> Result<tokio::sync::mpsc::Receiver<session_events::SessionEvent>, BrokerGone> {
        let (tx, rx) = session_events::SessionEventSender::channel(depth);
        self.router
            .with(|r| r.set_session_events(tx))
            .ok_or(BrokerGone)?;
        Ok(rx)
    }

    /// The in-process client session named `client_id` (see [`InternalClient`]). With
    /// persistence on, the session is kept (never expires) and resumed: messages queued or in
    /// flight to it when the process died are delivered again after the restart, and the
    /// first such client gets the tracked publishes and reply routes the store kept
    /// ([`InternalClient::take_resumed`]).
    pub async fn internal_client(&self, client_id: &str) -> Result<InternalClient, BrokerGone> {
        let conn = self.ids.fetch_add(1, Ordering::Relaxed);
        let persistent = self.store.is_some();
        let carryover = self
            .carryover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        InternalClient::connect(self.inbox.clone(), conn, client_id, persistent, carryover).await
    }
}

/// The commit journal, the state read back, and the store.
type Recovery = (
    Arc<crate::store::Journal>,
    crate::store::recover::Recovered,
    Arc<crate::store::Store>,
);

/// Opens the store, reads the broker's state back and starts the commit thread.
fn recover(p: &crate::store::PersistenceConfig) -> Result<Recovery, StartError> {
    let store = Arc::new(crate::store::Store::open(&p.dir)?);
    info!(path = %store.path().display(), "Store open; reading it back.");
    let state = store.recover_broker()?;
    let journal = crate::store::Journal::start(store.clone(), p.durability, state.next_seq)?;
    Ok((journal, state, store))
}

/// Accepts connections until shutdown; each gets a task and one of `slots`.
async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
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
        let (ctx, transport) = (ctx.clone(), transport.clone());
        ctx.tracker.clone().spawn(async move {
            listener::serve(transport, stream, peer, conn, ctx).await;
            drop(permit);
        });
    }
    info!(addr = ?listener.local_addr().ok(), "MQTT listener closed.");
}
