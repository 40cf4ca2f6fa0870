//! Session life: takeover, end, close, delayed wills, expiry, protocol-error kicks and
//! shutdown.

use std::time::{Duration, Instant};

use bytestring::ByteString;
use tracing::{debug, info, warn};

use super::Router;
use super::notify::departure;
use crate::broker::codec::reason;
use crate::broker::link::{CloseCause, ConnId};
use crate::broker::session::{NEVER_EXPIRES, Session, SessionId};
use crate::broker::session_events::{Departure, SessionEvent};
use crate::broker::stats::BrokerStats;
use crate::broker::topic::parse_shared;

impl Router {
    /// Closes the current connection of a session whose client id connects again
    /// [MQTT-3.1.4-2]; its will is published as for any server-side close.
    pub(super) fn take_over(&mut self, sid: SessionId, now: Instant) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(old) = session.detach(now) else {
            return;
        };
        let will = session.will.take();
        self.notify(sid, |client_id, username| SessionEvent::Disconnected {
            client_id,
            username,
            why: Departure::TakenOver,
            will_delayed: false,
        });
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        self.by_conn.remove(&old.conn);
        BrokerStats::dec(&self.stats.clients_connected);
        old.link.disconnect(reason::SESSION_TAKEN_OVER);
        info!(client_id = %session.client_id, "Session taken over by a new connection.");
        // The client may have said goodbye just before reconnecting: its DISCONNECT can still
        // be in flight, so the will waits for the old connection's close to be reported.
        if let Some(will) = will {
            // With a Will Delay, this new connection comes in time: no will [MQTT-3.1.3-9].
            let delayed = will.properties.will_delay_interval().unwrap_or(0) > 0;
            if old.link.will_due() && !delayed {
                self.taken_over.insert(old.conn, (sid, will));
            }
        }
    }

    pub(super) fn new_session(&mut self, client_id: ByteString, expiry: u32) -> SessionId {
        let sid = self.next_session;
        self.next_session += 1;
        self.sessions
            .insert(sid, Box::new(Session::new(sid, client_id.clone(), expiry)));
        self.by_client.insert(client_id, sid);
        self.sweep.add(sid);
        sid
    }

    /// Files the session's next deadline (its expiry while detached, a delayed will) with
    /// the expiry tick, or clears it.
    pub(super) fn reschedule(&mut self, sid: SessionId) {
        let at = self.sessions.get(&sid).and_then(|s| next_deadline(s));
        self.deadlines.set(sid, at);
    }

    pub(super) fn end_session(&mut self, sid: SessionId) {
        let Some(mut session) = self.sessions.remove(&sid) else {
            return;
        };
        self.deadlines.set(sid, None);
        self.sweep.remove(sid);
        session.forget_stored();
        for filter in session.subscriptions.keys() {
            if parse_shared(filter).is_some() {
                self.shared.leave(filter, sid);
            } else {
                self.subs.remove(filter, sid);
            }
        }
        self.by_client.remove(&session.client_id);
        // 5.0 §4.8.2: what a share group gave this session and it did not
        // acknowledge goes to another member.
        for message in session.take_shared() {
            self.redeliver_shared(message, sid);
        }
        if session.queued() + session.inflight() > 0 {
            debug!(client_id = %session.client_id, queued = session.queued(),
                inflight = session.inflight(), "Session ended with undelivered messages.");
        }
    }

    pub(super) fn closed(&mut self, conn: ConnId, cause: CloseCause) {
        if let Some((sid, will)) = self.taken_over.remove(&conn) {
            if cause.publishes_will() {
                let who = self.identity_for_events(sid);
                self.publish_will(will, Some(sid), who.as_ref());
            }
            return;
        }
        let Some(sid) = self.by_conn.remove(&conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        session.detach(Instant::now());
        BrokerStats::dec(&self.stats.clients_connected);
        let will = session.will.take();
        let publish_will = match cause {
            CloseCause::Disconnect {
                publish_will,
                session_expiry,
            } => {
                if let Some(expiry) = session_expiry {
                    session.expiry = expiry;
                }
                publish_will
            }
            CloseCause::Abnormal | CloseCause::KeepAliveTimeout => true,
        };
        info!(client_id = %session.client_id, ?cause, will = will.is_some() && publish_will,
            "Client disconnected.");
        let ends = session.expiry == 0;
        let will = will.filter(|_| publish_will);
        // MQTT 5 Will Delay Interval: the will waits, unless the session ends first
        // [MQTT-3.1.3-9], 5.0 §3.1.3.2.2.
        let delay = will
            .as_ref()
            .and_then(|w| w.properties.will_delay_interval())
            .unwrap_or(0);
        let will = match will {
            Some(will) if delay > 0 && !ends => {
                let due = Instant::now() + Duration::from_secs(u64::from(delay));
                session.pending_will = Some((will, due));
                None
            }
            other => other,
        };
        let will_delayed = session.pending_will.is_some();
        let why = departure(cause);
        self.notify(sid, |client_id, username| SessionEvent::Disconnected {
            client_id,
            username,
            why,
            will_delayed,
        });
        let who = will.as_ref().and_then(|_| self.identity_for_events(sid));
        if ends {
            self.end_session(sid);
        } else {
            self.reschedule(sid);
            self.persist_session(sid);
        }
        if let Some(will) = will {
            self.publish_will(will, Some(sid), who.as_ref());
        }
    }

    /// Ends the detached sessions whose expiry has come and publishes the delayed wills that
    /// are due: only the sessions whose deadline passed are looked at.
    pub(super) fn expire_sessions(&mut self, now: Instant) {
        for sid in self.deadlines.take_due(now) {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if expires_by(s, now) {
                debug!(session = sid, "Session expired.");
                // A will still waiting for its delay goes when the session ends.
                let will = s.pending_will.take();
                let who = self.identity_for_events(sid);
                self.end_session(sid);
                if let Some((will, _)) = will {
                    self.publish_will(will, None, who.as_ref());
                }
                continue;
            }
            let due = s.pending_will.as_ref().is_some_and(|(_, at)| *at <= now);
            if let Some((will, _)) = s.pending_will.take_if(|_| due) {
                // The stored session no longer holds the will (same batch as its copies).
                s.save();
                let who = self.identity_for_events(sid);
                self.publish_will(will, Some(sid), who.as_ref());
            }
            self.reschedule(sid);
        }
        while let Some((at, _)) = self.retained_expiry.first() {
            if *at > now {
                break;
            }
            let Some((_, topic)) = self.retained_expiry.pop_first() else {
                break;
            };
            // Entries leave with their message (`set_retained`); checked all the same.
            let expired = self
                .retained
                .get(&topic)
                .is_some_and(|r| r.expires.is_some_and(|at| at <= now));
            if expired {
                self.retained.remove(&topic);
            }
        }
    }

    /// Whether the broker is closing this session's connection for a protocol error.
    pub(super) fn kicked(&self, sid: SessionId) -> bool {
        self.sessions
            .get(&sid)
            .and_then(|s| s.attached.as_ref())
            .is_some_and(|a| a.kicked)
    }

    /// Closes a session's connection for a protocol error found by the router (MQTT 5
    /// DISCONNECT with `code`); what it still sends is ignored.
    pub(super) fn kick(&mut self, sid: SessionId, code: u8, why: &str) {
        BrokerStats::add(&self.stats.protocol_errors, 1);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        warn!(client_id = %s.client_id, error = why, reason_code = code,
            "Protocol violation; connection closed.");
        if let Some(att) = &mut s.attached {
            att.kicked = true;
            att.link.disconnect_because(code, why);
        }
    }

    /// Server shutdown: every connected client's will is published (the server closes the
    /// connection without a DISCONNECT from the client), then every client is disconnected.
    pub(super) fn shutdown(&mut self) {
        let connected: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.attached.is_some())
            .map(|s| s.id)
            .collect();
        info!(
            clients = connected.len(),
            "Broker shutting down; publishing wills."
        );
        for (_, (sid, will)) in std::mem::take(&mut self.taken_over) {
            let who = self.identity_for_events(sid);
            self.publish_will(will, Some(sid), who.as_ref());
        }
        for &sid in &connected {
            if let Some(will) = self.sessions.get_mut(&sid).and_then(|s| s.will.take()) {
                let who = self.identity_for_events(sid);
                self.publish_will(will, Some(sid), who.as_ref());
            }
        }
        let delayed: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| s.pending_will.is_some())
            .map(|s| s.id)
            .collect();
        for sid in delayed {
            if let Some((will, _)) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.pending_will.take())
            {
                // Published now: the stored session must not bring it back after the restart.
                if let Some(s) = self.sessions.get(&sid) {
                    s.save();
                }
                let who = self.identity_for_events(sid);
                self.publish_will(will, None, who.as_ref());
            }
        }
        for sid in connected {
            self.notify(sid, |client_id, username| SessionEvent::Disconnected {
                client_id,
                username,
                why: Departure::ServerShutdown,
                will_delayed: false,
            });
            if let Some(att) = self.sessions.get_mut(&sid).and_then(|s| s.attached.take()) {
                att.link.disconnect(reason::SERVER_SHUTTING_DOWN);
            }
        }
        self.by_conn.clear();
    }
}

/// When a detached session's expiry interval runs out (`None`: attached, never expires, or
/// beyond what `Instant` can hold).
fn expiry_at(s: &Session) -> Option<Instant> {
    if s.attached.is_some() || s.expiry == NEVER_EXPIRES {
        return None;
    }
    s.detached_at?
        .checked_add(Duration::from_secs(u64::from(s.expiry)))
}

/// Whether a detached session's expiry interval has run out by `now`.
fn expires_by(s: &Session, now: Instant) -> bool {
    expiry_at(s).is_some_and(|at| at <= now)
}

/// When the expiry tick must next look at a session: the end of its expiry interval while
/// it is detached, or its delayed will's due time, whichever comes first.
fn next_deadline(s: &Session) -> Option<Instant> {
    let will = s.pending_will.as_ref().map(|(_, due)| *due);
    match (expiry_at(s), will) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
