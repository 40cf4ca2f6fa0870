//! In-process clients of the broker: the bridge is a participant of the broker, not a TCP
//! client of it, so it sees who published each message (the authenticated user name), and it
//! acknowledges deliveries only when the other side has them.
//!
//! The router treats an in-process client like any session (subscriptions, QoS windows,
//! No Local) with three differences: deliveries carry their [`Origin`], its window is the
//! full packet-id space, and its own publishes enter the router directly, without a QoS
//! exchange (the hand-off in memory cannot be lost).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};

use super::codec::{
    Connect, Packet, Properties, Property, ProtocolVersion, PubResponse, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use super::guard::GuardNote;
use super::link::{
    ClientLink, ConnId, ConnectOutcome, ConnectRequest, LinkReceiver, Origin, RouterMsg, ToClient,
};
use super::tracking::{self, Tracked, Tracker};
use crate::store::Journal;
use crate::store::record::ReplyRecord;

/// Client ids starting with this belong to in-process clients; network clients asking for
/// one are refused (CONNACK 0x02 / 0x85), so nobody can take over the bridge's session.
pub const INTERNAL_ID_PREFIX: &str = "$internal/";

/// The broker stopped.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the broker has stopped")]
pub struct BrokerGone;

/// A message delivered to an in-process client.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message (packet id set for QoS 1 and 2: pass it back to [`InternalClient::ack`]).
    pub publish: Publish,
    /// Who published it; `None` for broker-made messages ($SYS, retained on subscribe).
    pub origin: Option<Arc<Origin>>,
    /// What the publish guard worked out about it (the bridge's translation, see
    /// [`GuardNote`]); `None` when the guard had nothing to say or the copy came back from
    /// the store.
    pub carried: Option<GuardNote>,
}

/// What the first persistent in-process client takes over from the run before a restart (with
/// persistence on): the tracking channel the recovered trackers report on, the trackers and
/// the reply routes read back, and the journal to keep its own bookkeeping with.
#[derive(Debug)]
pub(crate) struct Carryover {
    pub tracked_tx: mpsc::UnboundedSender<Tracked>,
    pub tracked_rx: mpsc::UnboundedReceiver<Tracked>,
    pub resumed: Resumed,
}

/// The bookkeeping an in-process client gets back after a restart (see
/// [`InternalClient::take_resumed`]).
#[derive(Debug)]
pub struct Resumed {
    /// Tracked publishes whose copies are still to be settled; their reports come on the
    /// client's tracking channel under the same tokens.
    pub tracked: Vec<tracking::Recovered>,
    /// Reply routes kept in the store's replies table, oldest first, with their keys.
    pub replies: Vec<(u64, ReplyRecord)>,
    /// The store's journal: writes recorded here go to disk with the broker's next batch.
    pub journal: Arc<Journal>,
}

/// A session of the broker used from inside the process.
#[derive(Debug)]
pub struct InternalClient {
    conn: ConnId,
    router: mpsc::Sender<RouterMsg>,
    /// Kept so the link stays open while the client lives.
    _link: ClientLink,
    rx: LinkReceiver,
    #[expect(
        clippy::vec_box,
        reason = "the link carries boxed items (see ClientLink)"
    )]
    inbox: Vec<Box<ToClient>>,
    pending: VecDeque<Delivery>,
    /// Answers to send before reading more (kept here so `recv` stays cancel-safe).
    outbox: Vec<Packet>,
    next_pkid: u16,
    /// Where the router reports on tracked publishes ([`InternalClient::publish_tracked`]).
    tracked_tx: mpsc::UnboundedSender<Tracked>,
    /// Its other end, until [`InternalClient::take_tracked`] hands it out.
    tracked_rx: Option<mpsc::UnboundedReceiver<Tracked>>,
    /// What the store kept for this client, until [`InternalClient::take_resumed`].
    resumed: Option<Resumed>,
}

impl InternalClient {
    pub(super) async fn connect(
        router: mpsc::Sender<RouterMsg>,
        conn: ConnId,
        client_id: &str,
        persistent: bool,
        carryover: Option<Carryover>,
    ) -> Result<InternalClient, BrokerGone> {
        let (link, rx) = ClientLink::new();
        let (tracked_tx, tracked_rx, resumed) = match carryover {
            Some(c) => (c.tracked_tx, c.tracked_rx, Some(c.resumed)),
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, rx, None)
            }
        };
        let (accepted, outcome) = oneshot::channel();
        let client_id = ByteString::from(format!("{INTERNAL_ID_PREFIX}{client_id}"));
        // With persistence on, the session outlives the process: what the broker acknowledged
        // to a publisher and queued for this client is on disk, and comes back after a crash.
        let mut properties = Properties::new();
        if persistent {
            properties.push(Property::SessionExpiryInterval(u32::MAX));
        }
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: !persistent,
            keep_alive: 0,
            client_id: client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties,
        };
        let request = ConnectRequest {
            conn,
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            connect: Box::new(connect),
            client_id,
            assigned_id: false,
            username: None,
            link: link.clone(),
            accepted,
            internal: true,
        };
        router
            .send(RouterMsg::Connect(request))
            .await
            .map_err(|_| BrokerGone)?;
        match outcome.await {
            Ok(ConnectOutcome::Accepted) => {}
            _ => return Err(BrokerGone),
        }
        let mut client = InternalClient {
            conn,
            router,
            _link: link,
            rx,
            inbox: Vec::new(),
            pending: VecDeque::new(),
            outbox: Vec::new(),
            next_pkid: 0,
            tracked_tx,
            tracked_rx: Some(tracked_rx),
            resumed,
        };
        // The first item is CONNACK.
        client.fill_inbox().await?;
        client
            .inbox
            .retain(|item| !matches!(**item, ToClient::Packet(Packet::ConnAck(_))));
        Ok(client)
    }

    async fn fill_inbox(&mut self) -> Result<(), BrokerGone> {
        if self.inbox.is_empty() {
            let n = self.rx.recv_many(&mut self.inbox, 256).await;
            self.rx.written(n);
            if n == 0 {
                return Err(BrokerGone);
            }
        }
        Ok(())
    }

    /// Subscribes to `filters` with No Local (nothing this client publishes comes back to it)
    /// and without retained messages (they would be bridged again at every start). Returns
    /// the SUBACK reason codes.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<Vec<u8>, BrokerGone> {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        let pkid = self.next_pkid;
        let options = SubscriptionOptions {
            qos,
            no_local: true,
            retain_as_published: false,
            retain_handling: super::codec::RetainHandling::DoNotSend,
        };
        let subscribe = Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|f| (ByteString::from(f.as_str()), options))
                .collect(),
            properties: Properties::new(),
        };
        self.send(vec![Packet::Subscribe(subscribe)]).await?;
        loop {
            self.fill_inbox().await?;
            let items: Vec<Box<ToClient>> = self.inbox.drain(..).collect();
            let mut codes = None;
            for item in items {
                match *item {
                    ToClient::Packet(Packet::SubAck(ack)) if ack.pkid == pkid => {
                        codes = Some(ack.codes);
                    }
                    other => self.handle(other)?,
                }
            }
            if let Some(codes) = codes {
                return Ok(codes);
            }
        }
    }

    /// Publishes a message as this client.
    pub async fn publish(&self, publish: Publish) -> Result<(), BrokerGone> {
        let msg = RouterMsg::Publish {
            conn: self.conn,
            publish,
            track: None,
        };
        self.router.send(msg).await.map_err(|_| BrokerGone)
    }

    /// Publishes a message whose delivery is reported, under `token`, on the receiver that
    /// [`InternalClient::take_tracked`] gives: how many QoS 1/2 copies were made, then how each
    /// one ended (acknowledged by its subscriber, expired, dropped).
    pub async fn publish_tracked(&self, publish: Publish, token: u64) -> Result<(), BrokerGone> {
        self.publish_noted(publish, token, None).await
    }

    /// As [`InternalClient::publish_tracked`]; with persistence on and a `note`, the tracker
    /// survives a restart while a copy is in the store, and the note comes back in
    /// [`InternalClient::take_resumed`].
    pub async fn publish_noted(
        &self,
        publish: Publish,
        token: u64,
        note: Option<Vec<u8>>,
    ) -> Result<(), BrokerGone> {
        let mut track = Tracker::new(token, self.tracked_tx.clone());
        if let Some(note) = note {
            track = track.with_note(note);
        }
        let track = Arc::new(track);
        let msg = RouterMsg::Publish {
            conn: self.conn,
            publish,
            track: Some(track),
        };
        self.router.send(msg).await.map_err(|_| BrokerGone)
    }

    /// What the store kept for this client across a restart; `None` without persistence, for
    /// any but the first persistent in-process client, and after the first call.
    pub fn take_resumed(&mut self) -> Option<Resumed> {
        self.resumed.take()
    }

    /// The reports on tracked publishes; `None` after the first call.
    pub fn take_tracked(&mut self) -> Option<mpsc::UnboundedReceiver<Tracked>> {
        self.tracked_rx.take()
    }

    /// The next delivery; `None` when the broker has stopped. Cancel-safe: every await in
    /// it either completes or leaves all state in place, so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if !self.outbox.is_empty() {
                let permit = self.router.reserve().await.ok()?;
                let packets = std::mem::take(&mut self.outbox);
                permit.send(RouterMsg::Packets {
                    conn: self.conn,
                    packets,
                });
            }
            if let Some(delivery) = self.pending.pop_front() {
                return Some(delivery);
            }
            self.fill_inbox().await.ok()?;
            let items: Vec<Box<ToClient>> = self.inbox.drain(..).collect();
            for item in items {
                self.handle(*item).ok()?;
            }
        }
    }

    /// A delivery already received from the router, without waiting; `None` when there is
    /// none or answers must be sent first (then [`InternalClient::recv`] does both).
    pub fn try_recv(&mut self) -> Option<Delivery> {
        if self.outbox.is_empty() {
            self.pending.pop_front()
        } else {
            None
        }
    }

    /// Acknowledges a QoS 1 or 2 delivery: the message is now the other side's.
    pub async fn ack(&self, publish: &Publish) -> Result<(), BrokerGone> {
        let response = PubResponse::new(publish.pkid);
        match publish.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => self.send(vec![Packet::PubAck(response)]).await,
            QoS::ExactlyOnce => self.send(vec![Packet::PubRec(response)]).await,
        }
    }

    /// Acknowledges several QoS 1 and 2 deliveries in one message to the router (which handles
    /// each as [`InternalClient::ack`] would); QoS 0 ones are skipped.
    pub async fn ack_all(&self, publishes: &[Publish]) -> Result<(), BrokerGone> {
        let packets: Vec<Packet> = (publishes.iter())
            .filter_map(|p| {
                let response = PubResponse::new(p.pkid);
                match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(Packet::PubAck(response)),
                    QoS::ExactlyOnce => Some(Packet::PubRec(response)),
                }
            })
            .collect();
        if packets.is_empty() {
            return Ok(());
        }
        self.send(packets).await
    }

    /// Sorts one item from the router without awaiting: deliveries wait in `pending`,
    /// answers (PUBCOMP) in `outbox`.
    fn handle(&mut self, item: ToClient) -> Result<(), BrokerGone> {
        match item {
            ToClient::Deliver {
                publish,
                origin,
                carried,
            } => {
                self.pending.push_back(Delivery {
                    publish,
                    origin,
                    carried,
                });
            }
            ToClient::Packet(Packet::Publish(publish)) => {
                self.pending.push_back(Delivery {
                    publish,
                    origin: None,
                    carried: None,
                });
            }
            // Only network links are written straight through.
            ToClient::Encoded(_) => {}
            ToClient::Packet(Packet::PubRel(rel)) => {
                self.outbox
                    .push(Packet::PubComp(PubResponse::new(rel.pkid)));
            }
            ToClient::Disconnect { .. } => return Err(BrokerGone),
            ToClient::Packet(_) => {}
        }
        Ok(())
    }

    async fn send(&self, packets: Vec<Packet>) -> Result<(), BrokerGone> {
        let msg = RouterMsg::Packets {
            conn: self.conn,
            packets,
        };
        self.router.send(msg).await.map_err(|_| BrokerGone)
    }
}
