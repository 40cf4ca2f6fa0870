//! The XMPP adapter: an XEP-0114 external component link to the legacy server.
//!
//! ```text
//!  bridge ── XmppHandle::send ──▶ outbox (bounded; when full: refused and counted)
//!                                   │
//!  worker task: connect + handshake ──▶ session ──▶ backoff ──▶ connect ...
//!    session:   writer (queue in order, pings, replies) ◀── pongs, replies ── reader
//!               reader ──▶ Inbound channel (bounded: back-pressure) ──▶ bridge
//! ```
//! - `config`: [`XmppConfig`] and its defaults.
//! - `connection`: TCP, stream header and handshake (XEP-0114), with typed failures.
//! - `stanza_reader`: what the stream is read as: typed stanzas built straight from the XML
//!   parser's events, stanzas that do not parse as values with their head, other elements
//!   untyped.
//! - `splitter`, `fast_stanza`, `wire_reader`: the link's own reading of the stream after the
//!   handshake: complete stanzas found in the read buffer, a chat `<message/>` read by hand,
//!   anything else through rxml and `stanza_reader`'s builder.
//! - `service`: disco (XEP-0030) and ping (XEP-0199) answers, `<bad-request/>` for stanzas that
//!   do not parse; everything else becomes an [`Inbound`] value.
//! - `queue`: outbound order and confirmation by ping round trips (sans-IO).
//! - `backoff`: reconnect delays (sans-IO).
//! - `link`: the worker task: the writer of a connection, keepalive, reconnects, shutdown.
//! - `reader`: the reading half of a connection.
//! - `error`, `stats`: [`LinkError`], [`XmppStats`].
//!
//! Bytes become typed stanzas here, once; the bridge sees only `xmpp_parsers` types.

pub(crate) mod backoff;
pub mod config;
mod connection;
pub mod error;
mod fast_stanza;
mod link;
pub mod message_xml;
mod queue;
mod raw_xml;
mod reader;
mod service;
mod splitter;
mod stanza_reader;
pub mod stats;
mod wire_reader;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::message::{Id, Message};
use xmpp_parsers::presence::Presence;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

pub use self::config::XmppConfig;
pub use self::error::LinkError;
pub use self::message_xml::ChatXml;
pub use self::stats::XmppStats;

/// A stanza from the XMPP side for the bridge. Pings and disco queries to the component domain
/// are answered by the adapter and never show up here.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The answer to a keepalive ping of another bridge instance on the same component
    /// domain, by ping id; relay it with [`XmppHandle::owner_of_ping`] to the instance that
    /// sent the ping (it confirms that instance's stanzas).
    ForeignPong(String),
    /// A message to an address of the component domain.
    ///
    /// The stanzas are boxed: each crosses a channel from the link's reader to the bridge and
    /// is moved several times on the way, and an unboxed `Inbound` (as large as its largest
    /// stanza type, over 200 bytes) made those moves a measurable share of the bridge's CPU.
    Message(Box<Message>),
    /// A presence (subscription, directed presence, ...).
    Presence(Box<Presence>),
    /// An iq the adapter does not answer itself (including results of the bridge's own iqs).
    Iq(Box<Iq>),
}

impl Inbound {
    /// The error reply to this stanza (e.g. `<item-not-found/>` for an address no mapping rule
    /// covers), from the address it was sent to; send it with [`XmppHandle::send`]. `None` for
    /// stanzas that must not be answered (errors, iq results) or cannot be (no `from`/`to`).
    pub fn error_reply(
        &self,
        type_: ErrorType,
        condition: DefinedCondition,
        text: &str,
    ) -> Option<Stanza> {
        let head = service::Head::of_inbound(self);
        let from = match self {
            Inbound::Message(m) => m.to.clone(),
            Inbound::Presence(p) => p.to.clone(),
            Inbound::Iq(iq) => iq.to().cloned(),
            Inbound::ForeignPong(_) => None,
        }?;
        service::error_stanza(&head, from, type_, condition, text)
    }
}

/// A stanza for the XMPP side.
#[derive(Debug, Clone, PartialEq)]
pub enum Stanza {
    /// A message.
    Message(Message),
    /// A message of the MQTT → XMPP path in its lean form (no `Message`, no `Element`s).
    Chat(ChatXml),
    /// A presence.
    Presence(Presence),
    /// An iq.
    Iq(Iq),
}

impl From<Message> for Stanza {
    fn from(m: Message) -> Self {
        Self::Message(m)
    }
}

impl From<Presence> for Stanza {
    fn from(p: Presence) -> Self {
        Self::Presence(p)
    }
}

impl From<Iq> for Stanza {
    fn from(iq: Iq) -> Self {
        Self::Iq(iq)
    }
}

impl Stanza {
    /// The `id`, if set.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Message(m) => m.id.as_ref().map(|id| id.0.as_str()),
            Self::Chat(c) => Some(c.id.as_str()).filter(|id| !id.is_empty()),
            Self::Presence(p) => p.id.as_deref(),
            Self::Iq(iq) => Some(iq.id()).filter(|id| !id.is_empty()),
        }
    }

    fn set_id(&mut self, id: String) {
        match self {
            Self::Message(m) => m.id = Some(Id(id)),
            Self::Chat(c) => c.id = id,
            Self::Presence(p) => p.id = Some(id),
            Self::Iq(iq) => *iq.id_mut() = id,
        }
    }

    /// The domain of `from`, and whether `to` is set.
    fn route(&self) -> (Option<&str>, bool) {
        fn jids<'a>(from: Option<&'a Jid>, to: Option<&Jid>) -> (Option<&'a str>, bool) {
            (from.map(|j| j.domain().as_str()), to.is_some())
        }
        match self {
            Self::Message(m) => jids(m.from.as_ref(), m.to.as_ref()),
            // Bare JIDs the mapping table validated.
            Self::Chat(c) => {
                let domain = c.from.rsplit_once('@').map_or(&*c.from, |(_, d)| d);
                (Some(domain), !c.to.is_empty())
            }
            Self::Presence(p) => jids(p.from.as_ref(), p.to.as_ref()),
            Self::Iq(iq) => jids(iq.from(), iq.to()),
        }
    }
}

impl From<Stanza> for xmpp_parsers::minidom::Element {
    fn from(s: Stanza) -> Self {
        match s {
            Stanza::Message(m) => m.into(),
            Stanza::Chat(c) => c.to_element(),
            Stanza::Presence(p) => p.into(),
            Stanza::Iq(iq) => iq.into(),
        }
    }
}

/// A stanza to send, and who wants to know when the server has it.
#[derive(Debug)]
pub struct Outgoing {
    /// The stanza. Its `from` must be an address of the component domain and `to` must be set.
    /// Give it a stable `id` (the link assigns one if missing): a stanza re-sent after a
    /// reconnect keeps it, so recipients can recognise duplicates.
    pub stanza: Stanza,
    /// Fired once a ping round trip proves the server read the stanza; dropped unfired when the
    /// link stops before that.
    pub confirmed: Option<oneshot::Sender<()>>,
    /// Reported in [`Settlements`] once the server read the stanza or the link gave it up.
    /// Tickets must grow with the order of [`XmppHandle::send`] calls (one sender uses them):
    /// confirmations then come as "every ticket up to N".
    pub ticket: Option<u64>,
}

impl Outgoing {
    /// A stanza nobody waits on.
    pub fn new(stanza: impl Into<Stanza>) -> Self {
        Self {
            stanza: stanza.into(),
            confirmed: None,
            ticket: None,
        }
    }

    /// A stanza and the receiver that fires when the server confirmed it.
    pub fn confirmed(stanza: impl Into<Stanza>) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                stanza: stanza.into(),
                confirmed: Some(tx),
                ticket: None,
            },
            rx,
        )
    }
}

/// What happened to ticketed stanzas ([`Outgoing::ticket`]) since the last report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Every ticket up to this one, not in `given_up`, was confirmed by the server.
    pub confirmed_upto: Option<u64>,
    /// Tickets of stanzas given up (written on too many connections that all ended before
    /// confirming them). Settle these before applying `confirmed_upto`.
    pub given_up: Vec<u64>,
    /// The link stopped: tickets neither confirmed nor given up will never be.
    pub stopped: bool,
}

impl Settlement {
    fn is_empty(&self) -> bool {
        self.confirmed_upto.is_none() && self.given_up.is_empty() && !self.stopped
    }
}

/// The link's reports on ticketed stanzas, merged until the sender of the tickets takes them:
/// one report per ping answer at most, however many stanzas it confirms (no channel or task
/// per stanza). One consumer.
#[derive(Debug, Default)]
pub struct Settlements {
    state: Mutex<Settlement>,
    ready: Notify,
}

impl Settlements {
    fn update(&self, f: impl FnOnce(&mut Settlement)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.ready.notify_one();
    }

    /// Every ticket up to `upto` is confirmed.
    pub(crate) fn confirmed(&self, upto: u64) {
        self.update(|s| s.confirmed_upto = s.confirmed_upto.max(Some(upto)));
    }

    /// These tickets are given up.
    pub(crate) fn given_up(&self, tickets: &[u64]) {
        if !tickets.is_empty() {
            self.update(|s| s.given_up.extend_from_slice(tickets));
        }
    }

    /// The link stopped.
    pub(crate) fn stopped(&self) {
        self.update(|s| s.stopped = true);
    }

    /// Takes what was reported since the last call; waits while there is nothing.
    /// Cancel-safe: a report is taken only by a call that returns it.
    pub async fn next(&self) -> Settlement {
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if !state.is_empty() {
                    let stopped = state.stopped;
                    let report = std::mem::take(&mut *state);
                    // Stopping is for good: every later call reports it again.
                    state.stopped = stopped;
                    return report;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Why [`XmppHandle::send`] refused a stanza; each variant gives it back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// `queue_depth` stanzas are waiting or unconfirmed (counted in `queue_overflow`).
    #[error("the outbound XMPP queue is full")]
    Full(Outgoing),
    /// The stanza cannot be sent on a component link (the server would close the stream).
    #[error("stanza not sendable: {reason}")]
    Invalid {
        /// The stanza.
        outgoing: Outgoing,
        /// What is wrong.
        reason: &'static str,
    },
    /// The link has stopped.
    #[error("the XMPP link has stopped")]
    Closed(Outgoing),
}

impl SendError {
    /// The refused stanza.
    pub fn into_inner(self) -> Outgoing {
        match self {
            Self::Full(o) | Self::Closed(o) | Self::Invalid { outgoing: o, .. } => o,
        }
    }
}

/// State of the link, published through a `watch` channel.
#[derive(Debug, Clone)]
pub enum LinkState {
    /// Connecting and authenticating.
    Connecting,
    /// Handshake done; stanzas flow.
    Connected,
    /// Not connected; the next attempt starts after `retry_in`.
    Disconnected {
        /// Why the last attempt or connection ended.
        cause: Arc<LinkError>,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// Shut down (or not startable: `cause` tells).
    Stopped {
        /// Set when the link could not run at all.
        cause: Option<Arc<LinkError>>,
    },
}

/// An outbound stanza on its way to the worker; the permit holds its queue slot until it is
/// confirmed or given up.
#[derive(Debug)]
struct Queued {
    out: Outgoing,
    permit: OwnedSemaphorePermit,
}

/// Shared by the handle and the worker: overflow reporting.
#[derive(Debug, Default)]
struct Overflow {
    /// Set while refusing; the first refusal of a burst is a warning, the rest are debug lines.
    active: AtomicBool,
}

/// Sends stanzas to the XMPP server and observes the link. Cheap to clone.
#[derive(Debug, Clone)]
pub struct XmppHandle {
    outbox: mpsc::Sender<Queued>,
    /// `queue_depth` permits: one per stanza waiting or unconfirmed.
    slots: Arc<Semaphore>,
    /// The number of `slots` permits.
    depth: usize,
    state: watch::Receiver<LinkState>,
    stats: Arc<XmppStats>,
    overflow: Arc<Overflow>,
    /// The component domain (normalised), to check `from` addresses.
    domain: String,
    /// Ids for stanzas sent without one: `{id_prefix}{n}`.
    id_prefix: Arc<str>,
    next_id: Arc<AtomicU64>,
    /// Identifies this link's pings (`{PING_ID_PREFIX}{token}-{n}`).
    token: Arc<str>,
    /// Pongs relayed from other instances, to the link's writer.
    relayed: mpsc::Sender<String>,
    /// Reports on ticketed stanzas.
    settlements: Arc<Settlements>,
}

impl XmppHandle {
    /// Queues a stanza; never waits. In order with every other stanza of this link.
    #[expect(
        clippy::result_large_err,
        reason = "the refused stanza comes back by value; only the rare error path moves it"
    )]
    pub fn send(&self, mut out: Outgoing) -> Result<(), SendError> {
        if let Err(reason) = self.check(&out.stanza) {
            return Err(SendError::Invalid {
                outgoing: out,
                reason,
            });
        }
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                XmppStats::add(&self.stats.queue_overflow, 1);
                let total = XmppStats::get(&self.stats.queue_overflow);
                let domain = &*self.domain;
                if !self.overflow.active.swap(true, Ordering::Relaxed) {
                    let msg = "Outbound XMPP queue full; refusing stanzas until it drains.";
                    warn!(domain, total, "{msg}");
                } else {
                    let id = out.stanza.id();
                    debug!(
                        domain,
                        id, total, "Outbound XMPP stanza refused: queue full."
                    );
                }
                return Err(SendError::Full(out));
            }
            Err(TryAcquireError::Closed) => return Err(SendError::Closed(out)),
        };
        if out.stanza.id().is_none() {
            let n = self.next_id.fetch_add(1, Ordering::Relaxed);
            out.stanza.set_id(format!("{}{n}", self.id_prefix));
        }
        // The permit bounds what is in the channel, so only a stopped worker refuses here.
        self.outbox
            .try_send(Queued { out, permit })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q) => {
                    SendError::Closed(q.out)
                }
            })
    }

    fn check(&self, stanza: &Stanza) -> Result<(), &'static str> {
        match stanza.route() {
            (Some(from), true) if from == self.domain => Ok(()),
            (Some(_), true) => Err("`from` is not an address of the component domain"),
            (None, _) => Err("`from` is required on a component link"),
            (_, false) => Err("`to` is required on a component link"),
        }
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn subscribe_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Stanzas queued toward the server: waiting to be written or for confirmation.
    pub fn queued(&self) -> usize {
        self.depth.saturating_sub(self.slots.available_permits())
    }

    /// The link's counters.
    pub fn stats(&self) -> Arc<XmppStats> {
        self.stats.clone()
    }

    /// What identifies this link's pings; another instance that receives one of our pongs
    /// relays it to the topic named after this token.
    pub fn ping_token(&self) -> &str {
        &self.token
    }

    /// The token of the link that sent ping `id` (see [`Self::ping_token`]).
    pub fn owner_of_ping(id: &str) -> Option<&str> {
        let rest = id.strip_prefix(PING_ID_PREFIX)?;
        let (token, _n) = rest.rsplit_once('-')?;
        (!token.is_empty()).then_some(token)
    }

    /// A pong for one of this link's pings, received by another instance and relayed here:
    /// it confirms what the ping covered, as if it had come on our own stream. Pongs of
    /// earlier connections are ignored. Never waits; dropped (the ping then times out and the
    /// link reconnects, losing nothing) if the link is not reading them.
    pub fn relayed_pong(&self, id: String) {
        if self.relayed.try_send(id).is_err() {
            debug!("Relayed pong dropped: the link is not taking them.");
        }
    }

    /// The link's reports on stanzas sent with a ticket ([`Outgoing::ticket`]).
    pub fn settlements(&self) -> Arc<Settlements> {
        self.settlements.clone()
    }
}

/// Relayed pongs waiting for the link's writer (one ping is in flight at a time, so a few
/// slots are plenty).
const RELAYED_PONGS: usize = 16;

/// Every ping id starts with this, followed by the link's token.
pub(crate) const PING_ID_PREFIX: &str = "xmb-ping-";

/// Starts the link on `tracker`. It connects, reconnects forever with backoff, and stops when
/// `shutdown` is cancelled (confirming what it can within `shutdown_grace`, then closing the
/// stream). Inbound stanzas arrive on the returned receiver; when the bridge reads slowly, the
/// link stops reading from the server (the writer keeps going).
pub fn spawn(
    cfg: XmppConfig,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> (XmppHandle, mpsc::Receiver<Inbound>) {
    let depth = cfg.queue_depth.max(1);
    let (in_tx, in_rx) = mpsc::channel(cfg.inbound_depth.max(1));
    let (out_tx, out_rx) = mpsc::channel(depth);
    let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
    let slots = Arc::new(Semaphore::new(depth));
    let stats = Arc::new(XmppStats::default());
    let overflow = Arc::new(Overflow::default());
    // Unique per link: ids of stanzas and pings we make up cannot collide with older runs.
    let token = format!("{:08x}", rand::random::<u32>());
    let (relayed_tx, relayed_rx) = mpsc::channel(RELAYED_PONGS);
    let domain = Jid::new(&cfg.domain).map_or_else(|_| cfg.domain.clone(), |j| j.to_string());
    let settlements = Arc::new(Settlements::default());
    let handle = XmppHandle {
        outbox: out_tx,
        slots: slots.clone(),
        depth,
        state: state_rx,
        stats: stats.clone(),
        overflow: overflow.clone(),
        domain,
        id_prefix: format!("xmb-{token}-").into(),
        next_id: Arc::new(AtomicU64::new(1)),
        token: token.as_str().into(),
        relayed: relayed_tx,
        settlements: settlements.clone(),
    };
    let worker = link::Worker {
        cfg,
        shutdown,
        stats,
        state: state_tx,
        inbound: in_tx,
        outbox: out_rx,
        slots,
        overflow,
        ping_prefix: format!("{PING_ID_PREFIX}{token}-"),
        relayed: relayed_rx,
        settlements,
    };
    tracker.spawn(worker.run());
    (handle, in_rx)
}

/// For the fuzz target `stanza_reader` only: reads `bytes` as one element with the typed
/// reader and as an `Element` converted with `TryFrom`, and as the content of a component
/// stream both the way tokio-xmpp's `XmlStream` read it and the link's own way (splitter,
/// hand-written `<message/>` reader, rxml for the rest); panics where they disagree.
#[doc(hidden)]
pub fn check_stanza_reader(bytes: &[u8]) {
    stanza_reader::check_against_try_from(bytes);
    wire_reader::check_against_xml_stream(bytes);
}

/// For the fuzz target `payload_json` only: writes a chat message with these texts as the
/// link does (its own bytes) and as rxml's encoder does; panics where they disagree.
#[doc(hidden)]
pub fn check_chat_writer(body: &str, subject: Option<&str>, thread: Option<&str>, id: &str) {
    raw_xml::check_against_rxml(body, subject, thread, id);
}

/// For `benches/xmpp_stanza.rs` only: reads `content` (the stanzas of a component stream
/// after its header) as the link does and returns how many stanzas it read.
#[doc(hidden)]
pub fn read_stream_as_link(content: &[u8]) -> usize {
    wire_reader::count_stanzas(content)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Settlement, Settlements, XmppHandle};

    #[tokio::test]
    async fn settlement_reports_merge_until_taken() {
        let s = Settlements::default();
        s.confirmed(3);
        s.given_up(&[1]);
        s.confirmed(7);
        s.confirmed(5);
        s.given_up(&[]);
        let expected = Settlement {
            confirmed_upto: Some(7),
            given_up: vec![1],
            stopped: false,
        };
        assert_eq!(s.next().await, expected);
        // Nothing new: waits.
        let waited = tokio::time::timeout(Duration::from_millis(20), s.next()).await;
        assert!(waited.is_err(), "an empty report must not be returned");
        s.stopped();
        let stopped = Settlement {
            stopped: true,
            ..Settlement::default()
        };
        assert_eq!(s.next().await, stopped);
        assert_eq!(s.next().await, stopped, "stopping is reported for good");
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_on_a_report() {
        let s = std::sync::Arc::new(Settlements::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.next().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        s.confirmed(2);
        let report = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(report.unwrap().unwrap().confirmed_upto, Some(2));
    }

    #[test]
    fn the_owner_of_a_ping_is_the_token_in_its_id() {
        assert_eq!(
            XmppHandle::owner_of_ping("xmb-ping-a5bc9afb-12"),
            Some("a5bc9afb")
        );
        for not_a_ping in ["xmb-ping--3", "xmb-ping-abc", "disco-1", "xmb-a5bc9afb-1"] {
            assert_eq!(XmppHandle::owner_of_ping(not_a_ping), None, "{not_a_ping}");
        }
    }
}
