//! The writer task of one connection: packets from the router to bytes, many per socket
//! write, within what the MQTT 5 client announced it can receive (Maximum Packet Size, Topic
//! Alias Maximum).

use std::sync::Arc;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::broker::alias::OutboundAliases;
use crate::broker::codec::{
    self, Disconnect, Packet, Properties, Property, ProtocolVersion, Publish,
};
use crate::broker::link::{LinkReceiver, ToClient};
use crate::broker::stats::BrokerStats;
use crate::broker::transport::ConnWrite;

/// Packets written per socket write, at most.
const WRITE_BATCH: usize = 256;
/// A write buffer larger than this is freed once written, even under load.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;
/// Buffers larger than this are freed when the connection goes idle.
const IDLE_BUFFER: usize = 1024;
/// Writer batch slots kept when the connection goes idle.
const IDLE_ITEMS: usize = 32;

/// What the client announced about what it can receive (MQTT 5 CONNECT properties).
pub(super) struct OutLimits {
    /// Maximum Packet Size; a packet that would exceed it is never written.
    pub(super) max_packet: usize,
    /// Topic Aliases toward the client.
    pub(super) aliases: OutboundAliases,
}

impl OutLimits {
    /// Encodes a PUBLISH, with a Topic Alias when one can be used.
    fn encode_publish(
        &mut self,
        mut publish: Publish,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) {
        if version == ProtocolVersion::V5 {
            let packet_len = codec::publish_len(&publish, version);
            let room = self.max_packet.saturating_sub(packet_len);
            self.aliases.apply(&mut publish, room);
        }
        codec::encode(&Packet::Publish(publish), version, out);
    }

    /// An acknowledgement without its Reason String and User Properties when the client could
    /// not take it whole [MQTT-3.1.2-25].
    fn fit(&self, mut packet: Packet, version: ProtocolVersion) -> Packet {
        if version == ProtocolVersion::V311
            || self.max_packet == usize::MAX
            || codec::encoded_len(&packet, version) <= self.max_packet
        {
            return packet;
        }
        let properties = match &mut packet {
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                &mut p.properties
            }
            Packet::SubAck(s) => &mut s.properties,
            Packet::UnsubAck(u) => &mut u.properties,
            _ => return packet,
        };
        properties
            .remove_where(|p| matches!(p, Property::ReasonString(_) | Property::UserProperty(..)));
        packet
    }

    /// A server DISCONNECT, its Reason String left out when the client could not take it.
    fn disconnect(&self, reason: u8, text: Option<Box<str>>) -> Packet {
        let mut d = Disconnect {
            reason,
            properties: Properties::new(),
        };
        if let Some(text) = text {
            d.properties
                .push(Property::ReasonString(ByteString::from(&*text)));
            let packet = Packet::Disconnect(d);
            if codec::encoded_len(&packet, ProtocolVersion::V5) <= self.max_packet {
                return packet;
            }
            return Packet::Disconnect(Disconnect {
                reason,
                properties: Properties::new(),
            });
        }
        Packet::Disconnect(d)
    }
}

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
            match *item {
                ToClient::Packet(Packet::Publish(publish)) | ToClient::Deliver { publish, .. } => {
                    limits.encode_publish(publish, version, &mut out);
                    written += 1;
                }
                ToClient::Encoded(bytes) => out.extend_from_slice(&bytes),
                ToClient::Packet(packet) => {
                    let packet = limits.fit(packet, version);
                    codec::encode(&packet, version, &mut out);
                    written += 1;
                }
                ToClient::Disconnect { reason, text } => {
                    if version == ProtocolVersion::V5 {
                        codec::encode(&limits.disconnect(reason, text), version, &mut out);
                    }
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
