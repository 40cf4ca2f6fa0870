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

use crate::bridge::{Bridge, BridgeStats, MappingGuard};
use crate::broker::{Broker, BrokerStats};
use crate::config::{BridgeSettings, Config, MqttMode};
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
    /// The embedded broker (for in-process clients); `None` in upstream mode.
    pub broker: Option<Broker>,
    /// Upstream client counters, in upstream mode.
    pub upstream_stats: Option<Arc<UpstreamStats>>,
    /// The XMPP component link, when the bridge is configured.
    pub xmpp: Option<XmppHandle>,
    /// Bridge counters, when the bridge is configured.
    pub bridge_stats: Option<Arc<BridgeStats>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl App {
    /// Starts every component. Fails before serving anything if a port cannot be bound.
    pub async fn start(config: Config) -> Result<App, StartError> {
        if let MqttMode::Upstream(upstream) = config.mqtt {
            return Self::start_upstream(*upstream, config.bridge).await;
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let broker = Broker::start(config.broker, shutdown.child_token(), &tracker).await?;
        let (xmpp, bridge_stats) = match config.bridge {
            Some(settings) => {
                let domain = settings.xmpp.domain.clone();
                let server = settings.xmpp.server.clone();
                let (handle, inbound) =
                    xmpp::spawn(settings.xmpp, shutdown.child_token(), &tracker);
                let client = broker
                    .internal_client("bridge")
                    .await
                    .map_err(crate::broker::StartError::Broker)?;
                let guard = Arc::new(MappingGuard::new(settings.mapping.clone()));
                broker
                    .set_publish_guard(guard)
                    .await
                    .map_err(crate::broker::StartError::Broker)?;
                let bridge = Bridge::new(settings.mapping, client, handle.clone(), inbound)
                    .await
                    .map_err(crate::broker::StartError::Broker)?;
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
        info!(mqtt = ?broker.local_addrs, "Bridge started.");
        Ok(App {
            mqtt_addrs: broker.local_addrs.clone(),
            broker_stats: broker.stats.clone(),
            broker: Some(broker),
            upstream_stats: None,
            xmpp,
            bridge_stats,
            shutdown,
            tracker,
        })
    }

    /// Upstream mode: the XMPP link and the bridge as a client of an existing broker. The MQTT
    /// connection is up only while the XMPP link is, so a standby instance (the XMPP server
    /// refuses it the component while the active one holds it) takes no MQTT traffic; with
    /// the same `client_id` as the active one, it resumes the active's session.
    async fn start_upstream(
        cfg: UpstreamConfig,
        settings: Option<BridgeSettings>,
    ) -> Result<App, StartError> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // Config validation refuses upstream mode without [xmpp].
        let Some(settings) = settings else {
            return Err(StartError::NoBridge);
        };
        let domain = settings.xmpp.domain.clone();
        let server = settings.xmpp.server.clone();
        let (handle, inbound) = xmpp::spawn(settings.xmpp, shutdown.child_token(), &tracker);
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
        let bridge = Bridge::new(settings.mapping, client, handle.clone(), inbound)
            .await
            .map_err(crate::broker::StartError::Broker)?;
        let bridge_stats = bridge.stats();
        tracker.spawn(bridge.run(shutdown.child_token()));
        info!(%server, %domain, upstream = %upstream_server,
            "Bridge started in upstream mode; MQTT is connected while the XMPP link is up.");
        Ok(App {
            mqtt_addrs: Vec::new(),
            broker_stats: Arc::new(BrokerStats::default()),
            broker: None,
            upstream_stats: Some(upstream_stats),
            xmpp: Some(handle),
            bridge_stats: Some(bridge_stats),
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
