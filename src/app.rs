//! Builds the components from a validated [`Config`], runs them, and owns shutdown.
//!
//! Shutdown order: the token is cancelled → listeners stop accepting → the router publishes
//! the wills of connected clients and disconnects them → writers flush → tasks end. The
//! drain has a grace period; whether it finished is logged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use std::sync::Arc;

use crate::audit::{self, AuditStats};
use crate::bridge::events::{EventSink, Observe};
use crate::bridge::{BRIDGE_CLIENT_ID, Bridge, BridgeStats, MappingGuard};
use crate::broker::{Broker, BrokerStats};
use crate::config::Config;
use crate::telemetry::admin::{self, Readiness};
use crate::telemetry::metrics::Metrics;
use crate::xmpp::{self, XmppHandle};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The broker could not start.
    #[error(transparent)]
    Broker(#[from] crate::broker::StartError),
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
    /// Where the MQTT listeners are bound.
    pub mqtt_addrs: Vec<SocketAddr>,
    /// Broker counters.
    pub broker_stats: std::sync::Arc<BrokerStats>,
    /// The embedded broker (for in-process clients).
    pub broker: Broker,
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

impl App {
    /// Starts every component. Fails before serving anything if a port cannot be bound.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let admin_listener = match &config.admin {
            Some(cfg) => Some(admin::bind(cfg).await.map_err(|source| StartError::Admin {
                addr: cfg.listen,
                source,
            })?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let broker = Broker::start(config.broker, shutdown.child_token(), &tracker).await?;
        metrics.broker(&broker.stats);
        let mut audit_stats = None;
        let (xmpp, bridge_stats) = match config.bridge {
            Some(settings) => {
                let domain = settings.xmpp.domain.clone();
                let server = settings.xmpp.server.clone();
                let (handle, inbound) =
                    xmpp::spawn(settings.xmpp, shutdown.child_token(), &tracker);
                metrics.xmpp(&handle);
                let client = broker.internal_client(BRIDGE_CLIENT_ID).await?;
                let observers: Vec<Arc<dyn Observe>> = vec![metrics.bridge.clone()];
                let events = match config.audit {
                    Some(cfg) => {
                        let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue_depth);
                        let (depth, when_full) = (cfg.queue_depth, cfg.when_full);
                        info!(dir = %cfg.dir.display(), payload = ?cfg.payload, ?when_full,
                            "Audit trail on.");
                        let stats = audit::spawn(cfg, rx, &tracker);
                        metrics.audit(&stats, tx.downgrade(), depth);
                        audit_stats = Some(stats);
                        EventSink::new(Some((tx, when_full)), observers)
                    }
                    None => {
                        warn!("No [audit] section (or enabled = false): no audit trail.");
                        EventSink::new(None, observers)
                    }
                };
                metrics.audit_lost(events.lost());
                let guard = MappingGuard::new(settings.mapping.clone()).with_events(events.clone());
                broker.set_publish_guard(Arc::new(guard)).await?;
                let bridge = Bridge::new(settings.mapping, client, handle.clone(), inbound)
                    .await?
                    .with_events(events);
                let stats = bridge.stats();
                tracker.spawn(bridge.run(shutdown.child_token()));
                info!(%server, %domain, "XMPP bridge configured.");
                (Some(handle), Some(stats))
            }
            None => {
                info!("No [xmpp] section: running the MQTT broker alone.");
                (None, None)
            }
        };
        let admin_addr = match admin_listener {
            Some(listener) => {
                let addr = listener.local_addr().ok();
                let ready = Readiness {
                    running: shutdown.clone(),
                    xmpp: xmpp.clone(),
                    audit: audit_stats.clone(),
                };
                admin::serve(
                    listener,
                    metrics.clone(),
                    ready,
                    shutdown.child_token(),
                    &tracker,
                );
                addr
            }
            None => None,
        };
        info!(mqtt = ?broker.local_addrs, "Bridge started.");
        Ok(App {
            admin_addr,
            audit: audit_stats,
            metrics,
            mqtt_addrs: broker.local_addrs.clone(),
            broker_stats: broker.stats.clone(),
            broker,
            xmpp,
            bridge_stats,
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
