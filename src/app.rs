//! Builds the components from a validated [`Config`], runs them, and owns shutdown.
//!
//! Shutdown order: the token is cancelled → listeners stop accepting → the router publishes
//! the wills of connected clients and disconnects them → writers flush → tasks end. The
//! drain has a grace period; whether it finished is logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::audit::{self, AuditConfig, AuditStats};
use crate::bridge::events::{EventSink, Observe};
use crate::bridge::presence::SESSION_EVENT_DEPTH;
use crate::bridge::presence_store::FileStore;
use crate::bridge::{BRIDGE_CLIENT_ID, Bridge, BridgeStats, MappingGuard};
use crate::broker::{Broker, BrokerStats};
use crate::config::{BridgeSettings, Config, MqttMode};
use crate::telemetry::admin::{self, Readiness};
use crate::telemetry::metrics::Metrics;
use crate::upstream::{self, UpstreamConfig, UpstreamError, UpstreamStats};
use crate::xmpp::{self, LinkState, XmppHandle};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The embedded broker could not start.
    #[error(transparent)]
    Broker(#[from] crate::broker::StartError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Upstream mode without the bridge's settings (`[xmpp]`).
    #[error("upstream mode needs the bridge ([xmpp] and [mapping])")]
    NoBridge,
    /// Presence could not start (its subscriber file).
    #[error("presence: {0}")]
    Presence(#[from] crate::bridge::PresenceStartError),
    /// The admin listener could not bind.
    #[error("cannot listen on {addr} (admin): {source}")]
    Admin {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl From<crate::broker::BrokerGone> for StartError {
    fn from(e: crate::broker::BrokerGone) -> Self {
        StartError::Broker(crate::broker::StartError::Broker(e))
    }
}

/// Time allowed for connections to drain after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running application.
#[derive(Debug)]
pub struct App {
    /// Where the MQTT listeners are bound (none in upstream mode).
    pub mqtt_addrs: Vec<SocketAddr>,
    /// Broker counters (all zero in upstream mode).
    pub broker_stats: Arc<BrokerStats>,
    /// The embedded broker (for in-process clients); `None` in upstream mode.
    pub broker: Option<Broker>,
    /// Upstream client counters, in upstream mode.
    pub upstream_stats: Option<Arc<UpstreamStats>>,
    /// The XMPP component link, when the bridge is configured.
    pub xmpp: Option<XmppHandle>,
    /// Bridge counters, when the bridge is configured.
    pub bridge_stats: Option<Arc<BridgeStats>>,
    /// Where `/metrics`, `/healthz`, `/readyz` are served, when the admin listener is on.
    pub admin_addr: Option<SocketAddr>,
    /// The audit writer's state, when the bridge runs with audit on.
    pub audit: Option<Arc<AuditStats>>,
    /// Every metric of the process.
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// What both modes share while starting.
struct Start {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    admin: Option<TcpListener>,
}

impl Start {
    /// Binds the admin listener first: a port clash fails before anything serves.
    async fn new(config: &Config) -> Result<Start, StartError> {
        let admin = match &config.admin {
            Some(cfg) => Some(admin::bind(cfg).await.map_err(|source| StartError::Admin {
                addr: cfg.listen,
                source,
            })?),
            None => None,
        };
        Ok(Start {
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            metrics: Arc::new(Metrics::new()),
            admin,
        })
    }

    /// The sink of translation events: metrics always, the audit trail when configured.
    fn events(&self, audit: Option<AuditConfig>) -> (EventSink, Option<Arc<AuditStats>>) {
        let observers: Vec<Arc<dyn Observe>> = vec![self.metrics.bridge.clone()];
        let (events, stats) = match audit {
            Some(cfg) => {
                let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue_depth);
                let (depth, when_full) = (cfg.queue_depth, cfg.when_full);
                info!(dir = %cfg.dir.display(), payload = ?cfg.payload, ?when_full,
                    "Audit trail on.");
                let stats = audit::spawn(cfg, rx, &self.tracker);
                self.metrics.audit(&stats, tx.downgrade(), depth);
                (
                    EventSink::new(Some((tx, when_full)), observers),
                    Some(stats),
                )
            }
            None => {
                warn!("No [audit] section (or enabled = false): no audit trail.");
                (EventSink::new(None, observers), None)
            }
        };
        self.metrics.audit_lost(events.lost());
        (events, stats)
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` when the admin listener is configured.
    fn serve_admin(
        &mut self,
        xmpp: Option<XmppHandle>,
        audit: Option<Arc<AuditStats>>,
    ) -> Option<SocketAddr> {
        let listener = self.admin.take()?;
        let addr = listener.local_addr().ok();
        let ready = Readiness {
            running: self.shutdown.clone(),
            xmpp,
            audit,
        };
        admin::serve(
            listener,
            self.metrics.clone(),
            ready,
            self.shutdown.child_token(),
            &self.tracker,
        );
        addr
    }
}

impl App {
    /// Starts every component. Fails before serving anything if a port cannot be bound.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let mut s = Start::new(&config).await?;
        if let MqttMode::Upstream(upstream) = config.mqtt {
            return Self::start_upstream(
                s,
                *upstream,
                config.bridge,
                config.audit,
                config.presence,
            )
            .await;
        }
        let broker = Broker::start(config.broker, s.shutdown.child_token(), &s.tracker).await?;
        s.metrics.broker(&broker.stats);
        let mut audit_stats = None;
        let (xmpp, bridge_stats) = match config.bridge {
            Some(settings) => {
                let domain = settings.xmpp.domain.clone();
                let server = settings.xmpp.server.clone();
                // The link and the bridge run on the broker's runtime (see `Broker::runtime`),
                // and the broker's shutdown waits for them.
                let (rt, rt_tasks) = broker.runtime();
                let (rt, rt_tasks) = (rt.clone(), rt_tasks.clone());
                let (handle, inbound) = {
                    let _on_broker_runtime = rt.enter();
                    xmpp::spawn(settings.xmpp, s.shutdown.child_token(), &rt_tasks)
                };
                s.metrics.xmpp(&handle);
                let client = broker.internal_client(BRIDGE_CLIENT_ID).await?;
                let (events, stats) = s.events(config.audit);
                audit_stats = stats;
                let guard = MappingGuard::new(settings.mapping.clone())
                    .with_events(events.clone())
                    .with_presence(config.presence.clone());
                broker.set_publish_guard(Arc::new(guard)).await?;
                let session_events = broker.session_events(SESSION_EVENT_DEPTH).await?;
                let mut bridge = Bridge::new(settings.mapping, client, handle.clone(), inbound)
                    .await?
                    .with_events(events)
                    .with_session_events(session_events);
                if let Some(presence) = &config.presence {
                    let store = Box::new(FileStore::new(&presence.file));
                    bridge = bridge.with_presence(presence, store).await?;
                }
                let stats = bridge.stats();
                rt_tasks.spawn_on(bridge.run(s.shutdown.child_token()), &rt);
                info!(%server, %domain, "XMPP bridge configured.");
                (Some(handle), Some(stats))
            }
            None => {
                info!("No [xmpp] section: running the MQTT broker alone.");
                (None, None)
            }
        };
        let admin_addr = s.serve_admin(xmpp.clone(), audit_stats.clone());
        info!(mqtt = ?broker.local_addrs, "Bridge started.");
        Ok(App {
            mqtt_addrs: broker.local_addrs.clone(),
            broker_stats: broker.stats.clone(),
            broker: Some(broker),
            upstream_stats: None,
            xmpp,
            bridge_stats,
            admin_addr,
            audit: audit_stats,
            metrics: s.metrics,
            shutdown: s.shutdown,
            tracker: s.tracker,
        })
    }

    /// Upstream mode: the XMPP link and the bridge as a client of an existing broker. The MQTT
    /// connection is up only while the XMPP link is, so a standby instance (the XMPP server
    /// refuses it the component while the active one holds it) takes no MQTT traffic; with
    /// the same `client_id` as the active one, it resumes the active's session.
    async fn start_upstream(
        mut s: Start,
        cfg: UpstreamConfig,
        settings: Option<BridgeSettings>,
        audit: Option<AuditConfig>,
        presence: Option<crate::bridge::presence::PresenceConfig>,
    ) -> Result<App, StartError> {
        // Config validation refuses upstream mode without [xmpp].
        let Some(settings) = settings else {
            return Err(StartError::NoBridge);
        };
        let (shutdown, tracker) = (s.shutdown.clone(), s.tracker.clone());
        let domain = settings.xmpp.domain.clone();
        let server = settings.xmpp.server.clone();
        let (handle, inbound) = xmpp::spawn(settings.xmpp, shutdown.child_token(), &tracker);
        s.metrics.xmpp(&handle);
        let table = settings.mapping.clone();
        // The upstream connection follows the XMPP link (see `upstream::Worker::run`).
        let mut link = handle.subscribe_state();
        let (up_tx, link_up) = tokio::sync::watch::channel(false);
        let stop = shutdown.child_token();
        tracker.spawn(async move {
            loop {
                let up = matches!(*link.borrow_and_update(), LinkState::Connected);
                up_tx.send_if_modified(|v| std::mem::replace(v, up) != up);
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = link.changed() => if changed.is_err() { return },
                }
            }
        });
        let filter_qos = table
            .filter_qos()
            .into_iter()
            .map(|(f, q)| (f, qos(q)))
            .collect();
        let wiring = upstream::Wiring {
            origin: domain.clone(),
            identify: Arc::new(move |topic: &str| table.sender_from_topic(topic)),
            filter_qos,
            link_up,
        };
        let upstream_server = format!("{}:{}", cfg.host, cfg.port);
        let client = upstream::spawn(cfg, wiring, shutdown.child_token(), &tracker)?;
        let upstream_stats = client.stats();
        let (events, audit_stats) = s.events(audit);
        let mut bridge = Bridge::new(settings.mapping, client, handle.clone(), inbound)
            .await?
            .with_events(events);
        if let Some(presence) = &presence {
            // No broker sessions to watch: a user is online while its (retained) status
            // says so; its will should set `unavailable` (see the README).
            let store = Box::new(FileStore::new(&presence.file));
            bridge = bridge.with_presence_from_status(presence, store).await?;
        }
        let bridge_stats = bridge.stats();
        tracker.spawn(bridge.run(shutdown.child_token()));
        let admin_addr = s.serve_admin(Some(handle.clone()), audit_stats.clone());
        info!(%server, %domain, upstream = %upstream_server,
            "Bridge started in upstream mode; MQTT is connected while the XMPP link is up.");
        Ok(App {
            mqtt_addrs: Vec::new(),
            broker_stats: Arc::new(BrokerStats::default()),
            broker: None,
            upstream_stats: Some(upstream_stats),
            xmpp: Some(handle),
            bridge_stats: Some(bridge_stats),
            admin_addr,
            audit: audit_stats,
            metrics: s.metrics,
            shutdown,
            tracker,
        })
    }

    /// A token that stops the application when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops everything and waits up to `grace` for the tasks to finish. True when they did.
    pub async fn stop(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if drained {
            info!("Shutdown complete.");
        } else {
            warn!(grace = ?grace, "Shutdown grace period over; some connections did not drain.");
        }
        drained
    }
}

fn qos(q: u8) -> crate::broker::codec::QoS {
    use crate::broker::codec::QoS;
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}
