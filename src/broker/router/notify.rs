//! Session events for the installed listener (see `broker::session_events`): built only
//! when a listener is there, never for in-process clients.

use bytestring::ByteString;

use super::Router;
use crate::broker::codec::LastWill;
use crate::broker::internal::INTERNAL_ID_PREFIX;
use crate::broker::link::{CloseCause, Origin};
use crate::broker::session::{SessionId, will_publish};
use crate::broker::session_events::{Departure, SessionEvent, SessionEventSender};

impl Router {
    /// Installs the listener.
    pub fn set_session_events(&mut self, tx: SessionEventSender) {
        self.session_events = Some(tx);
    }

    /// Emits the event `make` builds from the session's client id and user name, if a
    /// listener is installed and the session is a network client's.
    pub(super) fn notify(
        &self,
        sid: SessionId,
        make: impl FnOnce(ByteString, Option<ByteString>) -> SessionEvent,
    ) {
        let Some(tx) = &self.session_events else {
            return;
        };
        if let Some(s) = self.sessions.get(&sid) {
            notify_as(tx, &s.identity, make);
        }
    }

    /// Publishes a will; the listener hears of it. `who` is the session's identity, taken
    /// before the session may have ended.
    pub(super) fn publish_will(
        &mut self,
        will: LastWill,
        origin: Option<SessionId>,
        who: Option<&Origin>,
    ) {
        if let (Some(tx), Some(who)) = (&self.session_events, who) {
            let topic = will.topic.clone();
            notify_as(tx, who, |client_id, username| SessionEvent::WillPublished {
                client_id,
                username,
                topic,
            });
        }
        self.route(will_publish(will), origin);
    }

    /// The identity of a session, for [`Router::publish_will`] (cloned only when a listener
    /// is installed).
    pub(super) fn identity_for_events(&self, sid: SessionId) -> Option<Origin> {
        self.session_events.as_ref()?;
        self.sessions.get(&sid).map(|s| Origin::clone(&s.identity))
    }
}

fn notify_as(
    tx: &SessionEventSender,
    who: &Origin,
    make: impl FnOnce(ByteString, Option<ByteString>) -> SessionEvent,
) {
    if who.client_id.starts_with(INTERNAL_ID_PREFIX) {
        return;
    }
    tx.emit(make(who.client_id.clone(), who.username.clone()));
}

/// How a close looks to a listener.
pub(super) fn departure(cause: CloseCause) -> Departure {
    match cause {
        CloseCause::Disconnect { .. } => Departure::Normal,
        CloseCause::Abnormal => Departure::ConnectionLost,
        CloseCause::KeepAliveTimeout => Departure::KeepAliveTimeout,
    }
}
