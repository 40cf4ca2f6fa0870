//! The writer task of one connection: packets from the router to bytes, many per socket
//! write, within what the MQTT 5 client announced it can receive (Maximum Packet Size, Topic
//! Alias Maximum). On plain TCP the routing task writes most packets itself (see `link`,
//! write-through); the writer task then only writes what the socket could not take at once
//! and what was queued outside a routing pass.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::broker::codec::ProtocolVersion;
use crate::broker::link::LinkReceiver;
use crate::broker::outbound::{Encoded, IDLE_BUFFER, OutLimits};
use crate::broker::stats::BrokerStats;
use crate::broker::transport::ConnWrite;

/// Packets written per socket write, at most.
const WRITE_BATCH: usize = 256;
/// A write buffer larger than this is freed once written, even under load.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;
/// Writer batch slots kept when the connection goes idle.
const IDLE_ITEMS: usize = 32;

pub(super) async fn write_loop<W: ConnWrite>(
    mut wr: W,
    mut rx: LinkReceiver,
    version: ProtocolVersion,
    mut limits: OutLimits,
    stats: Arc<BrokerStats>,
    closing: CancellationToken,
) {
    let mut items = Vec::new();
    let mut out = BytesMut::new();
    loop {
        if rx.recv_many(&mut items, WRITE_BATCH).await == 0 {
            break;
        }
        let mut written = 0;
        let mut close = false;
        for item in items.drain(..) {
            match limits.encode_item(*item, version, &mut out) {
                Encoded::Packet => written += 1,
                Encoded::Close => {
                    close = true;
                    break;
                }
            }
        }
        let result = wr.send_all(&out).await;
        BrokerStats::add(&stats.bytes_sent, out.len() as u64);
        rx.written(written);
        // An idle connection keeps no buffers: free them when nothing else is waiting.
        if out.capacity() > KEEP_WRITE_BUFFER || (rx.is_empty() && out.capacity() > IDLE_BUFFER) {
            out = BytesMut::new();
        } else {
            out.clear();
        }
        if rx.is_empty() && items.capacity() > IDLE_ITEMS {
            items = Vec::new();
        }
        if let Err(error) = result {
            debug!(%error, "Write failed.");
            break;
        }
        if close {
            break;
        }
    }
    // Best effort: the peer may be gone already.
    let _ignored = wr.close().await;
    closing.cancel();
}

/// The writer task of a plain TCP connection: its socket is in the link ([`DirectOut`]), where
/// the routing task writes what it routes; this task writes the rest (see
/// [`LinkReceiver::drive_direct`]), then closes the socket.
///
/// [`DirectOut`]: crate::broker::outbound::DirectOut
pub(super) async fn direct_write_loop(mut rx: LinkReceiver, closing: CancellationToken) {
    if let Err(error) = rx.drive_direct().await {
        debug!(%error, "Write failed.");
    }
    if let Some(direct) = rx.take_direct() {
        // Best effort: the peer may be gone already.
        let _ignored = direct.into_socket().shutdown().await;
    }
    closing.cancel();
}
