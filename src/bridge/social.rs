//! Presence and group chat inside the bridge task: the broker's session events, status
//! publishes and presence stanzas go to [`super::presence::PresenceBook`] and
//! [`super::muc::Rooms`] (both sans-IO); this file carries out what they decide.

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::events::{Outcome, Taken, Translation};
use super::muc::{self, RoomAction, Rooms};
use super::presence::{self, Action as PresenceAction, PresenceBook, PresenceConfig};
use super::presence_store::{self, SubscriberStore};
use super::{BRIDGE_CLIENT_ID, Bridge};
use crate::broker::Delivery;
use crate::broker::codec::{Properties, Publish, QoS};
use crate::broker::session_events::SessionEvent;
use crate::xmpp::{Outgoing, Stanza};

/// Presence state and where its subscribers are saved.
pub(super) struct PresenceSide {
    book: PresenceBook,
    store: Box<dyn SubscriberStore>,
    status_topic: presence::LevelPattern,
    /// Upstream mode: the broker does not say who published, so the status topic's
    /// `{user}` level names the user (the upstream broker's ACL guards it).
    trust_topic: bool,
}

/// Why presence could not start.
#[derive(Debug, thiserror::Error)]
pub enum PresenceStartError {
    /// The subscriber store is unreadable.
    #[error(transparent)]
    Store(#[from] presence_store::StoreError),
    /// The broker stopped.
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerGone),
}

/// The next session event; pending for ever without a receiver.
pub(super) async fn next_session_event(
    rx: &mut Option<mpsc::Receiver<SessionEvent>>,
) -> Option<SessionEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Bridge {
    /// Turns presence on: loads the subscribers from `store`, subscribes to the status
    /// topics, and probes every subscribed contact for its current presence.
    pub async fn with_presence(
        self,
        cfg: &PresenceConfig,
        store: Box<dyn SubscriberStore>,
    ) -> Result<Bridge, PresenceStartError> {
        self.start_presence(cfg, store, false).await
    }

    /// Presence in upstream mode: there are no broker sessions to watch, so a user is online
    /// while its status topic says so (a retained status published on connect, and a will
    /// that sets `unavailable`), and the topic's `{user}` level names the user.
    pub async fn with_presence_from_status(
        self,
        cfg: &PresenceConfig,
        store: Box<dyn SubscriberStore>,
    ) -> Result<Bridge, PresenceStartError> {
        self.start_presence(cfg, store, true).await
    }

    async fn start_presence(
        mut self,
        cfg: &PresenceConfig,
        mut store: Box<dyn SubscriberStore>,
        from_status: bool,
    ) -> Result<Bridge, PresenceStartError> {
        let subscribers = store.load()?;
        let mut book =
            PresenceBook::new(self.table.domain(), cfg.legacy_topic.clone(), subscribers);
        book.online_from_status = from_status;
        let filter = cfg.status_topic.filter();
        let codes = self
            .mqtt
            .subscribe(std::slice::from_ref(&filter), QoS::AtLeastOnce)
            .await?;
        if codes.first().is_some_and(|&c| c >= 0x80) {
            warn!(%filter, "Status topic subscription refused by the broker.");
        }
        let probes = book.startup();
        info!(subscriptions = book.subscribers.pairs().count(), status = %filter,
            "Presence on.");
        self.presence = Some(PresenceSide {
            book,
            store,
            status_topic: cfg.status_topic.clone(),
            trust_topic: from_status,
        });
        self.presence_actions(probes).await?;
        Ok(self)
    }

    /// Hears of MQTT clients' sessions (embedded broker): presence and room membership.
    /// Group chat (rules carrying `groupchat`) is on from here.
    pub fn with_session_events(mut self, session_events: mpsc::Receiver<SessionEvent>) -> Self {
        self.session_events = Some(session_events);
        self.rooms = Some(Rooms::new(self.table.domain()));
        self
    }

    /// A presence stanza from XMPP: a room's, else the presence book's.
    pub(super) async fn on_presence(
        &mut self,
        presence: &xmpp_parsers::presence::Presence,
    ) -> Result<(), crate::broker::BrokerGone> {
        if let Some(actions) = self.rooms.as_mut().and_then(|r| r.on_presence(presence)) {
            debug!(from = ?presence.from, actions = actions.len(), "Room presence.");
            return self.room_actions(actions).await;
        }
        let Some(side) = &mut self.presence else {
            debug!(from = ?presence.from, to = ?presence.to, type_ = ?presence.type_,
                "Presence is off; ignored.");
            return Ok(());
        };
        let actions = side.book.on_xmpp(&self.table, presence);
        self.presence_actions(actions).await
    }

    /// A broker session event: presence of the client's user.
    pub(super) async fn on_session_event(
        &mut self,
        event: &SessionEvent,
    ) -> Result<(), crate::broker::BrokerGone> {
        if let Some(rooms) = &mut self.rooms {
            let actions = rooms.on_session(&self.table, event);
            self.room_actions(actions).await?;
        }
        let Some(side) = &mut self.presence else {
            return Ok(());
        };
        let actions = side.book.on_session(&self.table, event);
        self.presence_actions(actions).await
    }

    /// Carries out what the room book decided.
    pub(super) async fn room_actions(
        &mut self,
        actions: Vec<RoomAction>,
    ) -> Result<(), crate::broker::BrokerGone> {
        for action in actions {
            match action {
                RoomAction::Presence(p) => self.send_stanza(Stanza::Presence(*p)),
                RoomAction::Iq(iq) => self.send_stanza(Stanza::Iq(*iq)),
                RoomAction::Error(e) => self.room_error(e).await?,
            }
        }
        Ok(())
    }

    /// A room error: published on the user's error topic and audited (`denied`).
    async fn room_error(&mut self, e: muc::RoomError) -> Result<(), crate::broker::BrokerGone> {
        warn!(user = %e.user, room = %e.room, condition = %e.condition, text = ?e.text,
            "Group chat error reported to the MQTT user.");
        let payload = e.payload();
        let me = format!("{}@{}", e.user, self.table.domain());
        let occupant = format!("{}/{}", e.room, e.nick);
        let mut event = Translation::from_xmpp(&occupant, &me, "groupchat", None, Taken::now());
        event.to_mqtt("groupchat", &e.topic, 1, BRIDGE_CLIENT_ID, &payload, None);
        let detail = match &e.text {
            Some(text) => format!("{}: {text}", e.condition),
            None => e.condition.clone(),
        };
        event.outcome = Outcome::denied("room_error", detail);
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: e.topic.into(),
            pkid: 0,
            payload,
            properties: Properties::new(),
        };
        self.mqtt.publish(publish).await?;
        self.events.emit(*event).await;
        Ok(())
    }

    fn send_stanza(&self, stanza: Stanza) {
        if let Err(e) = self.xmpp.send(Outgoing::new(stanza)) {
            warn!(error = %e, "Stanza not sent to XMPP.");
        }
    }

    /// A publish on a status topic: `Some` when it was one (handled), else the delivery back.
    pub(super) async fn on_status(
        &mut self,
        delivery: Delivery,
    ) -> Result<Option<Delivery>, crate::broker::BrokerGone> {
        let Some(side) = &mut self.presence else {
            return Ok(Some(delivery));
        };
        let Some(owner) = side.status_topic.capture(&delivery.publish.topic) else {
            return Ok(Some(delivery));
        };
        let user = delivery.origin.as_ref().and_then(|o| o.username.as_deref());
        let user = if side.trust_topic {
            Some(owner.as_str())
        } else {
            user
        };
        let actions = if user != Some(owner.as_str()) {
            // The broker's guard refuses these; a message from before it was installed.
            warn!(topic = %delivery.publish.topic, ?user, "Status of another user ignored.");
            Vec::new()
        } else {
            match presence::Status::parse(&delivery.publish.payload) {
                Ok(status) => {
                    let present = !delivery.publish.payload.is_empty();
                    side.book.on_status(&self.table, &owner, status, present)
                }
                Err(e) => {
                    warn!(topic = %delivery.publish.topic, error = %e, "Status not understood.");
                    Vec::new()
                }
            }
        };
        self.presence_actions(actions).await?;
        self.mqtt.ack(&delivery.publish).await?;
        Ok(None)
    }

    /// Carries out what the presence book decided.
    pub(super) async fn presence_actions(
        &mut self,
        actions: Vec<PresenceAction>,
    ) -> Result<(), crate::broker::BrokerGone> {
        for action in actions {
            match action {
                PresenceAction::Send(p) => {
                    if let Err(e) = self.xmpp.send(Outgoing::new(*p)) {
                        warn!(error = %e, "Presence not sent to XMPP.");
                    }
                }
                PresenceAction::Publish { topic, payload } => {
                    let publish = Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        topic: topic.into(),
                        pkid: 0,
                        payload,
                        properties: Properties::new(),
                    };
                    self.mqtt.publish(publish).await?;
                }
                PresenceAction::Save => {
                    if let Some(side) = &mut self.presence {
                        let save = || side.store.save(&side.book.subscribers);
                        if let Err(e) = off_the_runtime(save) {
                            warn!(error = %e, "Presence subscribers not saved.");
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Runs blocking file work (a write and its fsync) without stalling the tasks that share this
/// thread: the bridge runs on the broker's runtime, so a stalled thread would stall MQTT too.
/// `block_in_place` hands the thread's other tasks to another worker meanwhile; it needs a
/// multi-thread runtime (the application's and the broker's are), others run it in place.
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}
