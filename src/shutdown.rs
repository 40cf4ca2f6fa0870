//! Waiting for SIGINT or SIGTERM; surviving SIGXFSZ.

use tracing::{debug, info, warn};

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

/// Makes a write beyond the process's file-size limit (`RLIMIT_FSIZE`, e.g. set by a service
/// manager or `ulimit -f`) fail with `EFBIG` instead of ending the process: the kernel sends
/// SIGXFSZ first, whose default action is to terminate (found by `tests/faults_audit.rs`). With
/// a handler installed the audit writer sees the error and its failure policy applies.
/// Call once, inside the runtime.
pub fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            Ok(mut xfsz) => {
                tokio::spawn(async move {
                    while xfsz.recv().await.is_some() {
                        debug!("SIGXFSZ: a write went beyond the file-size limit.");
                    }
                });
            }
            Err(error) => warn!(%error,
                "Cannot handle SIGXFSZ; a write beyond the file-size limit will end the process."),
        }
    }
}
