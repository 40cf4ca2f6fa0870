//! The reading half of a session: each element read is classified (`service`) and then
//! delivered to the bridge (waiting while its channel is full), answered, or passed to the
//! writer (pongs, replies). The reader never waits for the writer, except to pass a pong or
//! the end of the stream, which the writer always takes promptly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::SplitStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_xmpp::xmlstream::ReadError;
use tracing::{debug, warn};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::Inbound;
use super::connection::{Link, read_error};
use super::error::LinkError;
use super::service::{Action, Head, Service};
use super::stats::XmppStats;

/// Reader → writer.
pub(super) enum Control {
    /// Write this (an answer or an error reply).
    Write(Arc<Element>),
    /// One of our pings was answered.
    Pong(String),
    /// The reading side ended.
    Ended(LinkError),
}

/// Whether the reader waits for the bridge. It reads nothing meanwhile, so a missing pong then
/// proves nothing about the server and must not end the connection.
#[derive(Debug, Default)]
pub(super) struct Stall {
    /// Waiting right now.
    now: AtomicBool,
    /// Waited at some point since the writer last looked.
    recently: AtomicBool,
}

impl Stall {
    fn set(&self, waiting: bool) {
        self.now.store(waiting, Ordering::Relaxed);
        self.recently.store(true, Ordering::Relaxed);
    }

    /// Whether the reader waited since the last call (or still does).
    pub(super) fn check(&self) -> bool {
        let recently = self.recently.swap(false, Ordering::Relaxed);
        recently || self.now.load(Ordering::Relaxed)
    }
}

/// The receiving half and where its results go.
pub(super) struct Reader<'a> {
    pub(super) service: &'a Service,
    pub(super) stall: Arc<Stall>,
    pub(super) stats: Arc<XmppStats>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    pub(super) shutdown: CancellationToken,
    pub(super) ctl: mpsc::Sender<Control>,
    pub(super) read_timeout: Duration,
}

impl Reader<'_> {
    /// Reads until the stream ends; returns why.
    pub(super) async fn run(&self, mut stream: SplitStream<Link>) -> LinkError {
        loop {
            let incoming = match stream.next().await {
                Some(Ok(incoming)) => incoming,
                // Silence for a read timeout. Keepalive pings (whose answers the writer awaits,
                // aware of stalls) decide; the stream itself gives up after another read
                // timeout of silence.
                Some(Err(ReadError::SoftTimeout)) => {
                    debug!(after = ?self.read_timeout, "Nothing received from the XMPP server.");
                    continue;
                }
                Some(Err(ReadError::HardError(e))) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return LinkError::ReadTimeout(self.read_timeout * 2);
                }
                Some(Err(ReadError::HardError(e))) => return read_error(e),
                Some(Err(ReadError::ParseError(e))) => {
                    XmppStats::add(&self.stats.bad_stanzas, 1);
                    warn!(error = %e, "Unreadable element from the XMPP server skipped.");
                    continue;
                }
                Some(Err(ReadError::StreamFooterReceived)) | None => return LinkError::Closed,
            };
            match self.service.classify(incoming) {
                Action::Deliver(inbound) => {
                    XmppStats::add(&self.stats.stanzas_in, 1);
                    self.deliver(inbound).await;
                }
                Action::Reply(reply) => {
                    XmppStats::add(&self.stats.stanzas_in, 1);
                    XmppStats::add(&self.stats.answered, 1);
                    self.reply(reply);
                }
                Action::Pong(id) => {
                    if self.ctl.send(Control::Pong(id)).await.is_err() {
                        return LinkError::Closed;
                    }
                }
                Action::ForeignPong(id) => {
                    // Never waits: a pong lost here only makes its owner's ping time out.
                    if self.inbound.try_send(Inbound::ForeignPong(id)).is_err() {
                        debug!("Pong for another bridge instance dropped: the bridge is busy.");
                    }
                }
                Action::Bad { error, name, reply } => {
                    XmppStats::add(&self.stats.stanzas_in, 1);
                    XmppStats::add(&self.stats.bad_stanzas, 1);
                    let answered = reply.is_some();
                    warn!(
                        stanza = %name,
                        %error,
                        answered,
                        "Stanza from the XMPP server does not parse; answered with bad-request."
                    );
                    if let Some(reply) = reply {
                        self.reply(reply);
                    }
                }
                Action::Fatal(e) => return e,
                Action::Ignore(what) => debug!(element = %what, "Ignoring a non-stanza element."),
            }
        }
    }

    /// Hands a stanza to the bridge, waiting while its channel is full; bounces it when the
    /// bridge is gone or shutdown started, so nothing disappears silently.
    async fn deliver(&self, inbound: Inbound) {
        if !self.shutdown.is_cancelled() {
            let slot = match self.inbound.try_reserve() {
                Ok(slot) => Some(slot),
                Err(mpsc::error::TrySendError::Closed(())) => None,
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.stall.set(true);
                    let slot = tokio::select! {
                        biased;
                        slot = self.inbound.reserve() => slot.ok(),
                        _ = self.shutdown.cancelled() => None,
                    };
                    self.stall.set(false);
                    slot
                }
            };
            if let Some(slot) = slot {
                slot.send(inbound);
                return;
            }
        }
        let head = Head::of_inbound(&inbound);
        let (type_, cond) = (ErrorType::Wait, DefinedCondition::RecipientUnavailable);
        let reply =
            self.service
                .error_reply(&head, type_, cond, "The bridge is not accepting stanzas.");
        debug!(
            bounced = reply.is_some(),
            "Inbound stanza not delivered: the bridge is not reading."
        );
        if let Some(reply) = reply {
            self.reply(reply);
        }
    }

    /// Passes a reply to the writer without waiting: replies are best effort.
    fn reply(&self, el: Element) {
        if self.ctl.try_send(Control::Write(Arc::new(el))).is_err() {
            XmppStats::add(&self.stats.replies_dropped, 1);
            debug!("Reply dropped: the writer is far behind.");
        }
    }
}
