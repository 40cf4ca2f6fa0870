//! Waiting for SIGINT or SIGTERM.

use tracing::{info, warn};

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => info!("SIGINT received; shutting down."),
                    _ = term.recv() => info!("SIGTERM received; shutting down."),
                }
            }
            Err(error) => {
                warn!(%error, "Cannot listen for SIGTERM; only SIGINT stops the process.");
                let _ignored = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ignored = tokio::signal::ctrl_c().await;
        info!("Ctrl-C received; shutting down.");
    }
}
