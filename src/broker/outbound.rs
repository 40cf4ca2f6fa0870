//! Packets toward one network client, as bytes: what the MQTT 5 client announced it can
//! receive (Maximum Packet Size, Topic Alias Maximum), and for plain TCP the socket itself
//! with what is encoded and not yet written ([`DirectOut`]), so that the task that routes a
//! message can write it in the same turn (see `link`, "write-through").

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use bytestring::ByteString;
use tokio::net::tcp::OwnedWriteHalf;

use crate::broker::alias::OutboundAliases;
use crate::broker::codec::{
    self, Disconnect, Packet, Properties, Property, ProtocolVersion, Publish,
};
use crate::broker::link::ToClient;
use crate::broker::stats::BrokerStats;

/// An encoded buffer larger than this is freed once written: an idle connection keeps no
/// more than this.
pub(crate) const IDLE_BUFFER: usize = 1024;

/// What the client announced about what it can receive (MQTT 5 CONNECT properties).
#[derive(Debug)]
pub(crate) struct OutLimits {
    /// Maximum Packet Size; a packet that would exceed it is never written.
    pub(crate) max_packet: usize,
    /// Topic Aliases toward the client.
    pub(crate) aliases: OutboundAliases,
}

/// What encoding one item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoded {
    /// A packet was appended.
    Packet,
    /// The connection must close once what is encoded is written (a server DISCONNECT was
    /// appended for MQTT 5; 3.1.1 has none).
    Close,
}

impl OutLimits {
    /// Appends one item from the router to `out`.
    pub(crate) fn encode_item(
        &mut self,
        item: ToClient,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Encoded {
        match item {
            ToClient::Packet(Packet::Publish(publish)) | ToClient::Deliver { publish, .. } => {
                self.encode_publish(publish, version, out);
                Encoded::Packet
            }
            ToClient::Packet(packet) => {
                let packet = self.fit(packet, version);
                codec::encode(&packet, version, out);
                Encoded::Packet
            }
            ToClient::Disconnect { reason, text } => {
                if version == ProtocolVersion::V5 {
                    codec::encode(&self.disconnect(reason, text), version, out);
                }
                Encoded::Close
            }
        }
    }

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

/// A plain TCP client's write side, kept in its link (under the link's lock): whoever holds
/// the lock may encode and write. Every byte for the client goes through `pending`, in
/// order, so a packet written by the routing task and one written by the writer task can
/// never cross.
#[derive(Debug)]
pub(crate) struct DirectOut {
    socket: OwnedWriteHalf,
    version: ProtocolVersion,
    limits: OutLimits,
    stats: Arc<BrokerStats>,
    /// Encoded and not yet written.
    pending: BytesMut,
    /// Packets (whole or in part) in `pending`, for the link's backlog.
    packets: usize,
    /// A DISCONNECT was encoded: nothing after it is.
    closing: bool,
    /// A write failed in a task other than the writer: the writer reports it.
    failed: Option<io::Error>,
}

impl DirectOut {
    /// The write side of a plain TCP connection.
    pub(crate) fn new(
        socket: OwnedWriteHalf,
        version: ProtocolVersion,
        limits: OutLimits,
        stats: Arc<BrokerStats>,
    ) -> Self {
        DirectOut {
            socket,
            version,
            limits,
            stats,
            pending: BytesMut::new(),
            packets: 0,
            closing: false,
            failed: None,
        }
    }

    /// Appends one item after what is pending.
    pub(crate) fn encode(&mut self, item: ToClient) {
        match self
            .limits
            .encode_item(item, self.version, &mut self.pending)
        {
            Encoded::Packet => self.packets += 1,
            Encoded::Close => self.closing = true,
        }
    }

    /// A DISCONNECT is encoded: the connection closes once it is written.
    pub(crate) fn closing(&self) -> bool {
        self.closing
    }

    /// Whether bytes wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes what is pending without waiting. `Ok(Some(n))`: everything is written, `n`
    /// packets with it; `Ok(None)`: the socket is full, the rest waits.
    pub(crate) fn write_pending(&mut self) -> io::Result<Option<usize>> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        while !self.pending.is_empty() {
            match self.socket.try_write(&self.pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    BrokerStats::add(&self.stats.bytes_sent, n as u64);
                    self.pending.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        if self.pending.capacity() > IDLE_BUFFER {
            self.pending = BytesMut::new();
        } else {
            self.pending.clear();
        }
        Ok(Some(std::mem::take(&mut self.packets)))
    }

    /// Keeps a write error for the writer task to report.
    pub(crate) fn keep_error(&mut self, error: io::Error) {
        self.failed = Some(error);
    }

    /// Waits (registers `cx`) for room in the socket.
    pub(crate) fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.as_ref().poll_write_ready(cx)
    }

    /// The socket, to close it.
    pub(crate) fn into_socket(self) -> OwnedWriteHalf {
        self.socket
    }
}
