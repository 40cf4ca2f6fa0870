//! The worker task: connect, run a session, back off, repeat; stop on shutdown.
//!
//! A session runs two futures on one task:
//! - the **reader** reads elements, classifies them (`service`), awaits the bounded inbound
//!   channel (back-pressure from the bridge) and passes pongs and replies to the writer;
//! - the **writer** owns the socket's sending half: queued stanzas in order, replies, pings.
//!   It never waits on the inbound channel, so a slow bridge cannot stop outbound traffic.
//!   Pongs queue behind unread stanzas, so while the reader waits for the bridge, confirmations
//!   wait too, and an overdue pong does not end the connection.

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, trace, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ping::Ping;

use super::backoff::Backoff;
use super::connection::{self, Link, Wire, read_error};
use super::error::LinkError;
use super::queue::{MAX_WRITES, OutQueue, Pings};
use super::reader::{Control, Reader, Stall};
use super::service::Service;
use super::stats::XmppStats;
use super::{Inbound, LinkState, Overflow, Queued, Settlements, Stanza, XmppConfig};

/// Queued stanzas written before the writer looks at its other inputs again.
const WRITE_BATCH: usize = 64;
/// See [`Outbound::early_ping`].
const EARLY_PING_FRACTION: usize = 4;
/// Replies and pongs from the reader to the writer.
const CONTROL_DEPTH: usize = 256;
/// A failure of the same kind as the previous attempt is logged as a warning only every this
/// many attempts (at the backoff cap: every few minutes); the others are debug lines.
const REPEAT_LOG_EVERY: u32 = 10;

/// The worker's inputs and outputs; built by [`super::spawn`].
pub(crate) struct Worker {
    pub(crate) cfg: XmppConfig,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stats: Arc<XmppStats>,
    pub(crate) state: watch::Sender<LinkState>,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) outbox: mpsc::Receiver<Queued>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) overflow: Arc<Overflow>,
    pub(crate) ping_prefix: String,
    /// Pongs of our pings that reached another instance and were relayed back.
    pub(crate) relayed: mpsc::Receiver<String>,
    /// Where confirmed and given-up tickets are reported.
    pub(crate) settlements: Arc<Settlements>,
}

/// An outbound stanza in the queue, kept until confirmed.
struct Pending {
    stanza: Arc<Stanza>,
    confirmed: Option<tokio::sync::oneshot::Sender<()>>,
    /// Reported to [`Settlements`] instead (the bridge's chat path).
    ticket: Option<u64>,
    /// Frees the queue slot when the stanza is confirmed or given up.
    slot: tokio::sync::OwnedSemaphorePermit,
}

impl Pending {
    /// The stanza id, for logs (not copied per stanza: only logs read it).
    fn id(&self) -> &str {
        self.stanza.id().unwrap_or_default()
    }
}

impl From<Queued> for Pending {
    fn from(q: Queued) -> Self {
        Pending {
            stanza: Arc::new(q.out.stanza),
            confirmed: q.out.confirmed,
            ticket: q.out.ticket,
            slot: q.permit,
        }
    }
}

/// How a session ended.
enum End {
    Lost(LinkError),
    Shutdown,
}

/// The session state that outlives connections.
struct Outbound {
    cfg: XmppConfig,
    shutdown: CancellationToken,
    stats: Arc<XmppStats>,
    outbox: mpsc::Receiver<Queued>,
    overflow: Arc<Overflow>,
    queue: OutQueue<Pending>,
    pings: Pings,
    /// `from` and `to` of our pings.
    ping_from: Jid,
    ping_to: Jid,
    /// See [`Worker::relayed`].
    relayed: mpsc::Receiver<String>,
    /// See [`Worker::settlements`].
    settlements: Arc<Settlements>,
    /// Given-up tickets, gathered for one report (kept for its allocation).
    given_up: Vec<u64>,
}

impl Worker {
    pub(crate) async fn run(self) {
        let span = info_span!("xmpp", server = %self.cfg.server, domain = %self.cfg.domain);
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(self) {
        let Worker {
            cfg,
            shutdown,
            stats,
            state,
            inbound,
            outbox,
            slots,
            overflow,
            ping_prefix,
            relayed,
            settlements,
        } = self;
        let jids = Jid::new(&cfg.domain).and_then(|d| Ok((d, Jid::new(&cfg.server_domain)?)));
        let service = Service::new(&cfg.domain, ping_prefix.clone());
        let ((ping_from, ping_to), service) = match (jids, service) {
            (Ok(jids), Ok(service)) => (jids, service),
            _ => {
                let cause = LinkError::InvalidDomain {
                    domain: cfg.domain.clone(),
                };
                error!(error = %cause, "XMPP component link cannot start.");
                slots.close();
                settlements.stopped();
                state.send_replace(LinkState::Stopped {
                    cause: Some(Arc::new(cause)),
                });
                return;
            }
        };
        let mut out = Outbound {
            pings: Pings::new(ping_prefix),
            queue: OutQueue::default(),
            cfg,
            shutdown,
            stats,
            outbox,
            overflow,
            ping_from,
            ping_to,
            relayed,
            settlements,
            given_up: Vec::new(),
        };
        let mut backoff = Backoff::new(out.cfg.reconnect_min, out.cfg.reconnect_max);
        let mut last_failure: Option<&'static str> = None;
        info!("XMPP component link starting.");
        loop {
            state.send_replace(LinkState::Connecting);
            let attempt = tokio::select! {
                _ = out.shutdown.cancelled() => break,
                r = connection::connect(&out.cfg) => r,
            };
            let (cause, was_up) = match attempt {
                Ok(link) => {
                    backoff.reset();
                    last_failure = None;
                    match out.session(link, &service, &inbound, &state).await {
                        End::Shutdown => break,
                        End::Lost(e) => (e, true),
                    }
                }
                Err(e) => {
                    XmppStats::add(&out.stats.connect_failures, 1);
                    (e, false)
                }
            };
            let delay = backoff.next_delay(rand::random());
            let repeat = last_failure.replace(cause.kind()) == Some(cause.kind());
            let unconfirmed = out.queue.len();
            log_failure(
                &cause,
                was_up,
                repeat,
                backoff.failures(),
                delay,
                unconfirmed,
            );
            state.send_replace(LinkState::Disconnected {
                cause: Arc::new(cause),
                retry_in: delay,
            });
            tokio::select! {
                _ = out.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        slots.close();
        out.outbox.close();
        let mut lost = out.queue.drain_all().len();
        while out.outbox.try_recv().is_ok() {
            lost += 1;
        }
        // After the queue is gone: nothing is confirmed or given up any more.
        out.settlements.stopped();
        if lost > 0 {
            warn!(
                lost,
                "XMPP component link stopped; outbound stanzas were not confirmed."
            );
        } else {
            info!("XMPP component link stopped.");
        }
        state.send_replace(LinkState::Stopped { cause: None });
    }
}

/// One line per failure that matters: the first of a kind, and every
/// [`REPEAT_LOG_EVERY`]th attempt while it lasts; the rest at debug level.
fn log_failure(
    cause: &LinkError,
    was_up: bool,
    repeat: bool,
    attempts: u32,
    retry_in: Duration,
    unconfirmed: usize,
) {
    if was_up {
        let msg = "XMPP component link lost; reconnecting.";
        warn!(error = %cause, unconfirmed, ?retry_in, "{msg}");
    } else if !repeat && cause.needs_operator() {
        let msg = "XMPP server refused the component; retrying.";
        error!(error = %cause, attempts, ?retry_in, "{msg}");
    } else if !repeat || attempts % REPEAT_LOG_EVERY == 0 {
        let msg = "XMPP component link cannot connect; retrying.";
        warn!(error = %cause, attempts, ?retry_in, "{msg}");
    } else {
        debug!(error = %cause, attempts, ?retry_in, "XMPP connection attempt failed.");
    }
}

impl Outbound {
    /// Runs one connection until it fails or shutdown closes it.
    async fn session(
        &mut self,
        link: Link,
        service: &Service,
        inbound: &mpsc::Sender<Inbound>,
        state: &watch::Sender<LinkState>,
    ) -> End {
        XmppStats::add(&self.stats.connects, 1);
        let (resend, given_up) = self.queue.rewind();
        self.pings.reset();
        XmppStats::add(&self.stats.resent, resend as u64);
        for p in given_up {
            XmppStats::add(&self.stats.given_up, 1);
            error!(
                id = %p.id(),
                connections = MAX_WRITES,
                "Outbound stanza given up: each connection it was written on ended unconfirmed."
            );
            self.given_up.extend(p.ticket);
        }
        self.settlements.given_up(&self.given_up);
        self.given_up.clear();
        info!(
            resend,
            queued = self.queue.len(),
            "XMPP component link connected."
        );
        state.send_replace(LinkState::Connected);
        let end = self.run_session(link, service, inbound).await;
        if matches!(end, End::Lost(_)) {
            XmppStats::add(&self.stats.disconnects, 1);
        }
        end
    }

    async fn run_session(
        &mut self,
        link: Link,
        service: &Service,
        inbound: &mpsc::Sender<Inbound>,
    ) -> End {
        let (sink, stream) = link.split();
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_DEPTH);
        let stall = Arc::new(Stall::default());
        let reader = Reader {
            stall: stall.clone(),
            service,
            stats: self.stats.clone(),
            inbound: inbound.clone(),
            shutdown: self.shutdown.clone(),
            ctl: ctl_tx,
            read_timeout: self.cfg.read_timeout,
        };
        let reader = async move {
            let end = reader.run(stream).await;
            // The writer handles everything the reader passed on before learning of the end.
            if reader.ctl.send(Control::Ended(end)).await.is_err() {
                trace!("Writer already gone.");
            }
            pending::<()>().await;
        };
        let writer = Writer {
            sink,
            limit: self.cfg.read_timeout,
        };
        tokio::select! {
            () = reader => End::Lost(LinkError::Closed),
            end = self.write_loop(writer, ctl_rx, &stall) => end,
        }
    }

    async fn write_loop(
        &mut self,
        mut w: Writer,
        mut ctl: mpsc::Receiver<Control>,
        stall: &Stall,
    ) -> End {
        let every = self.cfg.ping_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if let Err(e) = self.write_queued(&mut w).await {
                return End::Lost(e);
            }
            if self.pings.due(self.queue.last_written(), self.early_ping()) {
                if let Err(e) = self.ping(&mut w).await {
                    return End::Lost(e);
                }
            }
            let overdue = self.pings.deadline(self.cfg.read_timeout);
            let idle = !self.queue.has_unwritten();
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return self.close(w, ctl).await,
                msg = ctl.recv() => match msg {
                    Some(Control::Write(el)) => {
                        if let Err(e) = w.send(Wire::Element(el)).await {
                            return End::Lost(e);
                        }
                    }
                    Some(Control::Pong(id)) => self.pong(&id),
                    Some(Control::Ended(e)) => return End::Lost(e),
                    None => return End::Lost(LinkError::Closed),
                },
                Some(id) = self.relayed.recv() => self.pong(&id),
                _ = tokio::time::sleep_until(overdue.unwrap_or_else(Instant::now)),
                    if overdue.is_some() => {
                    if !stall.check() {
                        return End::Lost(LinkError::PongTimeout(self.cfg.read_timeout));
                    }
                    debug!("Pong overdue while the bridge held the reader; waiting longer.");
                    self.pings.restart_clock(Instant::now());
                }
                _ = tick.tick() => {
                    if !self.pings.in_flight() {
                        if let Err(e) = self.ping(&mut w).await {
                            return End::Lost(e);
                        }
                    }
                }
                Some(q) = self.outbox.recv(), if idle => {
                    self.queue.push(q.into());
                    for _ in 1..WRITE_BATCH {
                        let Ok(q) = self.outbox.try_recv() else { break };
                        self.queue.push(q.into());
                    }
                }
                () = std::future::ready(()), if !idle => {}
            }
        }
    }

    /// Writes up to [`WRITE_BATCH`] queued stanzas and flushes, the whole batch bounded by
    /// the write limit (one timer per batch: a timer per stanza was a measurable share of
    /// the writer's CPU).
    async fn write_queued(&mut self, w: &mut Writer) -> Result<(), LinkError> {
        if !self.queue.has_unwritten() {
            return Ok(());
        }
        let queue = &mut self.queue;
        let sink = &mut w.sink;
        let batch = async {
            let mut n = 0u64;
            while n < WRITE_BATCH as u64 {
                let Some(next) = queue.write_next() else {
                    break;
                };
                trace!(id = %next.item.id(), resend = next.resend, "Writing stanza.");
                if next.resend {
                    debug!(id = %next.item.id(), "Re-sending unconfirmed stanza.");
                }
                let stanza = Wire::Stanza(next.item.stanza.clone());
                sink.feed(stanza).await.map_err(read_error)?;
                n += 1;
            }
            sink.flush().await.map_err(read_error)?;
            Ok::<_, LinkError>(n)
        };
        let n = match tokio::time::timeout(w.limit, batch).await {
            Ok(n) => n?,
            Err(_) => return Err(LinkError::WriteTimeout(w.limit)),
        };
        XmppStats::add(&self.stats.stanzas_out, n);
        Ok(())
    }

    /// Written stanzas not yet covered by a ping after which another ping goes out while
    /// one is in flight: a quarter of the queue (see [`Pings::due`]).
    fn early_ping(&self) -> u64 {
        (self.cfg.queue_depth / EARLY_PING_FRACTION) as u64
    }

    /// Sends a ping to the server covering everything written so far.
    async fn ping(&mut self, w: &mut Writer) -> Result<(), LinkError> {
        let id = self.pings.start(Instant::now(), self.queue.last_written());
        let iq = Iq::Get {
            from: Some(self.ping_from.clone()),
            to: Some(self.ping_to.clone()),
            id,
            payload: Ping.into(),
        };
        w.send(Wire::Stanza(Arc::new(Stanza::Iq(iq)))).await
    }

    /// A ping was answered: confirm what it covered, tickets in one report.
    fn pong(&mut self, id: &str) {
        let Some(upto) = self.pings.answered(id) else {
            return;
        };
        let (mut count, mut counted) = (0u64, 0u64);
        let mut ticket = None;
        // The queue slots, freed in one release: each release of a permit takes the
        // semaphore's lock.
        let mut slots: Option<tokio::sync::OwnedSemaphorePermit> = None;
        for p in self.queue.confirm_upto(upto) {
            count += 1;
            if let Some(tx) = p.confirmed {
                // Counted before its sender learns of it, so that the count is never behind
                // what a waiting sender saw (the bridge's stanzas use tickets instead).
                XmppStats::add(&self.stats.confirmed, 1);
                counted += 1;
                // An error only means the sender stopped waiting.
                tx.send(()).ok();
            }
            // In send order: the last one is the highest.
            ticket = p.ticket.or(ticket);
            match &mut slots {
                Some(all) => all.merge(p.slot),
                None => slots = Some(p.slot),
            }
        }
        // Before the report: the bridge offers a refused delivery again as soon as it has it.
        drop(slots);
        if count == 0 {
            return;
        }
        if let Some(ticket) = ticket {
            self.settlements.confirmed(ticket);
        }
        XmppStats::add(&self.stats.confirmed, count - counted);
        trace!(count, "Stanzas confirmed by the server.");
        if self.overflow.active.swap(false, Ordering::Relaxed) {
            let refused = XmppStats::get(&self.stats.queue_overflow);
            info!(
                refused_total = refused,
                "Outbound XMPP queue has room again."
            );
        }
    }

    /// Shutdown: write what is queued, confirm it within the grace period, close the stream.
    async fn close(&mut self, mut w: Writer, mut ctl: mpsc::Receiver<Control>) -> End {
        let grace = self.cfg.shutdown_grace;
        self.outbox.close();
        while let Ok(q) = self.outbox.try_recv() {
            self.queue.push(q.into());
        }
        let flush = async {
            while self.queue.has_unwritten() {
                self.write_queued(&mut w).await?;
            }
            while self.queue.has_unconfirmed() {
                if !self.pings.in_flight() {
                    self.ping(&mut w).await?;
                }
                let msg = tokio::select! {
                    msg = ctl.recv() => msg,
                    Some(id) = self.relayed.recv() => Some(Control::Pong(id)),
                };
                match msg {
                    Some(Control::Pong(id)) => self.pong(&id),
                    Some(Control::Write(el)) => w.send(Wire::Element(el)).await?,
                    Some(Control::Ended(e)) => return Err(e),
                    None => return Err(LinkError::Closed),
                }
            }
            Ok(())
        };
        // Three quarters of the grace to confirm, the rest to close the stream.
        match tokio::time::timeout(grace * 3 / 4, flush).await {
            Ok(Ok(())) => debug!("Outbound stanzas confirmed before closing."),
            Ok(Err(e)) => warn!(error = %e, "XMPP link failed while closing."),
            Err(_) => warn!(
                ?grace,
                "Outbound stanzas not confirmed within the shutdown grace."
            ),
        }
        match tokio::time::timeout(grace / 4, w.sink.close()).await {
            Ok(Ok(())) => debug!("XMPP stream closed."),
            Ok(Err(e)) => debug!(error = %e, "Closing the XMPP stream failed."),
            Err(_) => debug!("Closing the XMPP stream timed out."),
        }
        End::Shutdown
    }
}

/// The sending half, with every write bounded in time.
struct Writer {
    sink: SplitSink<Link, Wire>,
    limit: Duration,
}

impl Writer {
    async fn feed(&mut self, el: Wire) -> Result<(), LinkError> {
        match tokio::time::timeout(self.limit, self.sink.feed(el)).await {
            Ok(r) => r.map_err(read_error),
            Err(_) => Err(LinkError::WriteTimeout(self.limit)),
        }
    }

    async fn flush(&mut self) -> Result<(), LinkError> {
        match tokio::time::timeout(self.limit, self.sink.flush()).await {
            Ok(r) => r.map_err(read_error),
            Err(_) => Err(LinkError::WriteTimeout(self.limit)),
        }
    }

    async fn send(&mut self, el: Wire) -> Result<(), LinkError> {
        self.feed(el).await?;
        self.flush().await
    }
}
