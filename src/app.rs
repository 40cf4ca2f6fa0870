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
use crate::broker::{Broker, BrokerStats, StartError};
use crate::config::Config;
use crate::xmpp::{self, XmppHandle};

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
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl App {
    /// Starts every component. Fails before serving anything if a port cannot be bound.
    pub async fn start(config: Config) -> Result<App, StartError> {
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
                    .map_err(StartError::Broker)?;
                let guard = Arc::new(MappingGuard::new(settings.mapping.clone()));
                broker
                    .set_publish_guard(guard)
                    .await
                    .map_err(StartError::Broker)?;
                let bridge = Bridge::new(settings.mapping, client, handle.clone(), inbound)
                    .await
                    .map_err(StartError::Broker)?;
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
