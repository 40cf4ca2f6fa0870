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

use crate::broker::{Broker, BrokerStats, StartError};
use crate::config::Config;

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
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl App {
    /// Starts every component. Fails before serving anything if a port cannot be bound.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let broker = Broker::start(config.broker, shutdown.child_token(), &tracker).await?;
        info!(mqtt = ?broker.local_addrs, "Bridge started.");
        Ok(App {
            mqtt_addrs: broker.local_addrs.clone(),
            broker_stats: broker.stats.clone(),
            broker,
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
