//! Presence both ways (RFC 6121), sans-IO: [`PresenceBook`] takes broker session events,
//! status publishes and XMPP presence stanzas, and returns [`Action`]s (stanzas to send,
//! retained messages to publish, subscriptions to save). The bridge executes them.
//!
//! - **MQTT → XMPP.** An MQTT user is available while at least one of its clients is
//!   connected; its bridged JID (`{user}@{domain}`, when a mapping rule covers it) sends
//!   presence to its XMPP subscribers: available on the first connect, unavailable when the
//!   last client leaves (DISCONNECT, connection lost, keep-alive timeout). A client whose
//!   MQTT 5 will waits for its Will Delay stays available until the will fires or it comes
//!   back, so a short network cut does not flap. A retained message on the status topic
//!   (`users/{user}/status`: `{"show":"away","status":"text"}`) sets show and status text.
//! - **Subscriptions.** `subscribe` to a bridged JID is approved (`subscribed`), the current
//!   presence follows, and the bridge asks for the contact's presence back (`subscribe`);
//!   `unsubscribe` ends it (`unsubscribed`); `probe` is answered with the current presence
//!   (subscribers only, `unsubscribed` to others). Subscribers are saved
//!   ([`super::presence_store`]); at start every one is probed so legacy state is fresh.
//! - **XMPP → MQTT.** Presence of legacy users (per resource, aggregated by priority and
//!   availability) becomes a retained JSON message on `presence/{jid}` (bare JID, escaped as
//!   a topic level), QoS 1; `unavailable` when no resource is left.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use serde::Deserialize;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::message::Lang;
use xmpp_parsers::presence::{Presence, Show, Type};

use super::presence_store::Subscribers;
use crate::broker::session_events::{Departure, SessionEvent};
use crate::mapping::{MappingTable, escape_level, topic_levels, unescape_level};

/// `[presence]`: presence both ways (upstream mode: online state from the status topic).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PresenceConfig {
    /// Where an MQTT user sets its show and status text (capture `{user}`).
    pub status_topic: LevelPattern,
    /// Where legacy users' presence is published, retained (capture `{jid}`).
    pub legacy_topic: LevelPattern,
    /// The subscriber file.
    pub file: std::path::PathBuf,
}

/// What stands for "a client" in `online` when the status topic decides (upstream mode).
const STATUS_SOURCE: &str = "(status topic)";

/// Default `status_topic`.
pub const DEFAULT_STATUS_TOPIC: &str = "users/{user}/status";
/// Default `legacy_topic`.
pub const DEFAULT_LEGACY_TOPIC: &str = "presence/{jid}";
/// Default `file`, relative to the configuration file.
pub const DEFAULT_FILE: &str = "../state/presence-subscribers.json";
/// Depth of the broker's session-event queue toward the bridge.
pub const SESSION_EVENT_DEPTH: usize = 4096;

impl PresenceConfig {
    /// The broker-side check: a client may publish on its own status topic only, and on no
    /// legacy presence topic (the bridge alone speaks for legacy users). `Err` says why.
    pub fn check_publish(&self, topic: &str, user: Option<&str>) -> Result<(), String> {
        if self.legacy_topic.capture(topic).is_some() {
            return Err("legacy presence topics are written by the bridge only".into());
        }
        match self.status_topic.capture(topic) {
            Some(owner) if user != Some(owner.as_str()) => {
                Err(format!("`{topic}` is the status topic of user `{owner}`"))
            }
            _ => Ok(()),
        }
    }
}

/// A topic template with exactly one capture standing for a whole level, e.g.
/// `users/{user}/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelPattern {
    levels: Vec<String>,
    capture: usize,
}

impl serde::Serialize for LevelPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.levels.join("/"))
    }
}

impl LevelPattern {
    /// Parses `pattern`, which must hold `{name}` as exactly one whole level and no wildcard.
    pub fn parse(pattern: &str, name: &str) -> Result<LevelPattern, String> {
        let want = format!("{{{name}}}");
        let levels: Vec<String> = pattern.split('/').map(str::to_owned).collect();
        let at: Vec<usize> = (0..levels.len()).filter(|&i| levels[i] == want).collect();
        if at.len() != 1 {
            return Err(format!(
                "`{pattern}` must have {want} as exactly one whole level"
            ));
        }
        if pattern.starts_with('$') || levels.iter().any(|l| l.contains(['+', '#', '\0'])) {
            return Err(format!("`{pattern}`: no wildcards, NUL or leading `$`"));
        }
        if levels
            .iter()
            .enumerate()
            .any(|(i, l)| i != at[0] && l.contains(['{', '}']))
        {
            return Err(format!("`{pattern}`: only {want} may be a capture"));
        }
        Ok(LevelPattern {
            levels,
            capture: at[0],
        })
    }

    /// The topic for `value` (escaped into one level).
    pub fn render(&self, value: &str) -> String {
        let mut levels = self.levels.clone();
        levels[self.capture] = escape_level(value);
        levels.join("/")
    }

    /// The filter matching every topic of the pattern.
    pub fn filter(&self) -> String {
        let mut levels = self.levels.clone();
        levels[self.capture] = "+".into();
        levels.join("/")
    }

    /// The captured value (unescaped) when `topic` is one of the pattern's topics.
    pub fn capture(&self, topic: &str) -> Option<String> {
        // No `Vec` of the levels: the publish guard asks this of every publish.
        let mut parts = topic_levels(topic);
        let mut captured = None;
        for (i, level) in self.levels.iter().enumerate() {
            let part = parts.next()?;
            if i == self.capture {
                captured = Some(part);
            } else if part != level {
                return None;
            }
        }
        if parts.next().is_some() {
            return None;
        }
        unescape_level(captured?)
    }
}

/// Availability as carried on MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Free to chat (XMPP `chat`).
    Chat,
    /// Online.
    Available,
    /// Away.
    Away,
    /// Extended away.
    Xa,
    /// Do not disturb.
    Dnd,
    /// Offline.
    Unavailable,
}

impl State {
    /// The name on MQTT.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Chat => "chat",
            State::Available => "available",
            State::Away => "away",
            State::Xa => "xa",
            State::Dnd => "dnd",
            State::Unavailable => "unavailable",
        }
    }

    fn from_show(show: Option<&Show>) -> State {
        match show {
            None => State::Available,
            Some(Show::Chat) => State::Chat,
            Some(Show::Away) => State::Away,
            Some(Show::Xa) => State::Xa,
            Some(Show::Dnd) => State::Dnd,
        }
    }

    fn show(self) -> Option<Show> {
        match self {
            State::Chat => Some(Show::Chat),
            State::Away => Some(Show::Away),
            State::Xa => Some(Show::Xa),
            State::Dnd => Some(Show::Dnd),
            State::Available | State::Unavailable => None,
        }
    }

    /// Higher is "more reachable", to pick one resource's state for a bare JID.
    fn rank(self) -> u8 {
        match self {
            State::Chat => 5,
            State::Available => 4,
            State::Dnd => 3,
            State::Away => 2,
            State::Xa => 1,
            State::Unavailable => 0,
        }
    }
}

/// What an MQTT user set on its status topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `away`, `dnd`, ...; `None`: plain available.
    pub state: Option<State>,
    /// Free text.
    pub text: Option<String>,
}

/// A status payload that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad status payload: {0}")]
pub struct StatusError(String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusJson {
    #[serde(default)]
    show: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

impl Status {
    /// Parses `{"show": "away"|"chat"|"dnd"|"xa"|"available", "status": "text"}` (both
    /// optional); an empty payload (a cleared retained message) is the default status.
    pub fn parse(payload: &[u8]) -> Result<Status, StatusError> {
        if payload.is_empty() {
            return Ok(Status::default());
        }
        let json: StatusJson =
            serde_json::from_slice(payload).map_err(|e| StatusError(e.to_string()))?;
        let state = match json.show.as_deref() {
            None | Some("available") => None,
            Some("unavailable") => Some(State::Unavailable),
            Some("chat") => Some(State::Chat),
            Some("away") => Some(State::Away),
            Some("xa") => Some(State::Xa),
            Some("dnd") => Some(State::Dnd),
            Some(other) => {
                return Err(StatusError(format!(
                    "show `{other}` is not one of available, chat, away, xa, dnd, unavailable"
                )));
            }
        };
        if json.status.as_ref().is_some_and(|s| s.len() > 1024) {
            return Err(StatusError("status text longer than 1024 bytes".into()));
        }
        Ok(Status {
            state,
            text: json.status,
        })
    }
}

/// What the bridge has to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this presence stanza to XMPP.
    Send(Box<Presence>),
    /// Publish retained, QoS 1, on MQTT.
    Publish {
        /// The topic.
        topic: String,
        /// The JSON payload.
        payload: Bytes,
    },
    /// The subscribers changed: save them.
    Save,
}

/// One legacy resource's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resource {
    state: State,
    priority: i8,
    text: Option<String>,
}

/// Presence state of both sides.
#[derive(Debug)]
pub struct PresenceBook {
    domain: String,
    legacy_topic: LevelPattern,
    /// Who receives which bridged JID's presence (persisted).
    pub subscribers: Subscribers,
    /// Connected client ids per MQTT user (those with a delayed will included).
    online: HashMap<String, HashSet<String>>,
    /// Upstream mode: online while the status topic holds a status other than
    /// `unavailable` (no broker sessions to watch).
    pub online_from_status: bool,
    /// Status set on the status topic, per MQTT user.
    status: HashMap<String, Status>,
    /// Legacy presence per bare JID, per resource.
    legacy: HashMap<String, BTreeMap<String, Resource>>,
}

impl PresenceBook {
    /// A book for component domain `domain`, publishing legacy presence on `legacy_topic`.
    pub fn new(domain: &str, legacy_topic: LevelPattern, subscribers: Subscribers) -> Self {
        PresenceBook {
            domain: domain.to_owned(),
            legacy_topic,
            subscribers,
            online: HashMap::new(),
            online_from_status: false,
            status: HashMap::new(),
            legacy: HashMap::new(),
        }
    }

    /// The bridged JID of MQTT user `user`, if it is a valid JID some rule covers.
    pub fn jid_of(&self, table: &MappingTable, user: &str) -> Option<BareJid> {
        let text = format!("{user}@{}", self.domain);
        let jid = BareJid::new(&text).ok()?;
        (jid.as_str() == text && table.covers_jid(&text)).then_some(jid)
    }

    /// What to send at start, per saved subscription: `unavailable` (nobody is connected
    /// yet; a contact may still show the user online from before a crash or restart), then a
    /// probe for the contact's own presence.
    pub fn startup(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (bridged, contact) in self.subscribers.pairs() {
            let (Ok(from), Ok(to)) = (Jid::new(bridged), Jid::new(contact)) else {
                continue;
            };
            let gone = Presence::unavailable()
                .with_from(from.clone())
                .with_to(to.clone());
            out.push(Action::Send(Box::new(gone)));
            let probe = Presence::probe().with_from(from).with_to(to);
            out.push(Action::Send(Box::new(probe)));
        }
        out
    }

    /// A broker session event.
    pub fn on_session(&mut self, table: &MappingTable, event: &SessionEvent) -> Vec<Action> {
        let Some(user) = event.username() else {
            return Vec::new();
        };
        let Some(jid) = self.jid_of(table, user) else {
            return Vec::new();
        };
        let client = event.client_id().to_owned();
        let was_online = self.is_online(user);
        match event {
            SessionEvent::Connected { .. } => {
                self.online
                    .entry(user.to_owned())
                    .or_default()
                    .insert(client);
            }
            // A new connection of the same client follows at once.
            SessionEvent::Disconnected {
                why: Departure::TakenOver,
                ..
            } => {}
            // Available until the will fires or the client comes back.
            SessionEvent::Disconnected {
                will_delayed: true, ..
            } => {}
            SessionEvent::Disconnected { .. } | SessionEvent::WillPublished { .. } => {
                if let Some(set) = self.online.get_mut(user) {
                    set.remove(&client);
                    if set.is_empty() {
                        self.online.remove(user);
                    }
                }
            }
            SessionEvent::Subscribed { .. } | SessionEvent::Unsubscribed { .. } => {}
        }
        if was_online == self.is_online(user) {
            return Vec::new();
        }
        self.broadcast(user, &jid)
    }

    /// A status publish by `user` (already checked to be the topic's own user).
    /// `present`: the payload was not empty (an empty one clears a retained status; with
    /// `online_from_status` that means offline).
    pub fn on_status(
        &mut self,
        table: &MappingTable,
        user: &str,
        status: Status,
        present: bool,
    ) -> Vec<Action> {
        let was_online = self.is_online(user);
        if self.online_from_status {
            if present && status.state != Some(State::Unavailable) {
                self.online
                    .entry(user.to_owned())
                    .or_default()
                    .insert(STATUS_SOURCE.to_owned());
            } else {
                self.online.remove(user);
            }
        }
        let same = self.status.get(user) == Some(&status)
            || (status == Status::default() && !self.status.contains_key(user));
        if same && was_online == self.is_online(user) {
            return Vec::new();
        }
        if status == Status::default() {
            self.status.remove(user);
        } else {
            self.status.insert(user.to_owned(), status);
        }
        match self.jid_of(table, user) {
            Some(jid) if self.is_online(user) || was_online => self.broadcast(user, &jid),
            _ => Vec::new(),
        }
    }

    /// Connected (or, upstream, declared online) and not declared `unavailable`.
    fn is_online(&self, user: &str) -> bool {
        let declared_off = self
            .status
            .get(user)
            .is_some_and(|s| s.state == Some(State::Unavailable));
        !declared_off && self.online.get(user).is_some_and(|s| !s.is_empty())
    }

    /// `user`'s current presence from `jid` to `to`.
    fn current(&self, user: &str, jid: &BareJid, to: Jid) -> Presence {
        let mut p = if self.is_online(user) {
            let status = self.status.get(user);
            let mut p = Presence::available();
            p.show = status.and_then(|s| s.state).and_then(State::show);
            if let Some(text) = status.and_then(|s| s.text.clone()) {
                p.statuses.insert(Lang::new(), text);
            }
            p
        } else {
            Presence::unavailable()
        };
        p.from = Some(Jid::from(jid.clone()));
        p.to = Some(to);
        p
    }

    fn broadcast(&self, user: &str, jid: &BareJid) -> Vec<Action> {
        self.subscribers
            .of(jid.as_str())
            .filter_map(|c| Jid::new(c).ok())
            .map(|to| Action::Send(Box::new(self.current(user, jid, to))))
            .collect()
    }

    /// A presence stanza from XMPP to an address of the component domain.
    pub fn on_xmpp(&mut self, table: &MappingTable, p: &Presence) -> Vec<Action> {
        let (Some(from), Some(to)) = (&p.from, &p.to) else {
            return Vec::new();
        };
        let contact = from.to_bare();
        let bridged = to.to_bare();
        match p.type_ {
            Type::Subscribe | Type::Unsubscribe | Type::Probe => {
                self.subscription(table, &p.type_, &contact, &bridged)
            }
            Type::None | Type::Unavailable => self.legacy_presence(p, &contact, from),
            // Answers to the bridge's own requests, and errors: nothing to do.
            Type::Subscribed | Type::Unsubscribed | Type::Error => Vec::new(),
        }
    }

    fn subscription(
        &mut self,
        table: &MappingTable,
        type_: &Type,
        contact: &BareJid,
        bridged: &BareJid,
    ) -> Vec<Action> {
        let answer = |t: Presence| {
            Action::Send(Box::new(
                t.with_from(bridged.clone()).with_to(contact.clone()),
            ))
        };
        let user = bridged.node().map(|n| n.as_str().to_owned());
        let covered = table.covers_jid(bridged.as_str());
        let (Some(user), true) = (user, covered) else {
            // Nobody there: deny (RFC 6121 §3.1.3: a subscription to a non-existent entity).
            return match type_ {
                Type::Subscribe | Type::Probe => vec![answer(Presence::new(Type::Unsubscribed))],
                _ => Vec::new(),
            };
        };
        let (b, c) = (bridged.as_str(), contact.as_str());
        match type_ {
            Type::Subscribe => {
                let new = self.subscribers.add(b, c);
                let mut out = Vec::new();
                if new {
                    out.push(Action::Save);
                }
                out.push(answer(Presence::subscribed()));
                let current = self.current(&user, bridged, Jid::from(contact.clone()));
                out.push(Action::Send(Box::new(current)));
                if new {
                    // Ask for the contact's presence back (XMPP → MQTT direction); only for
                    // a new subscriber, so two auto-approving ends cannot loop.
                    out.push(answer(Presence::subscribe()));
                }
                out
            }
            Type::Unsubscribe => {
                let mut out = Vec::new();
                if self.subscribers.remove(b, c) {
                    out.push(Action::Save);
                }
                out.push(answer(Presence::new(Type::Unsubscribed)));
                out
            }
            _ if self.subscribers.contains(b, c) => {
                let current = self.current(&user, bridged, Jid::from(contact.clone()));
                vec![Action::Send(Box::new(current))]
            }
            _ => vec![answer(Presence::new(Type::Unsubscribed))],
        }
    }

    fn legacy_presence(&mut self, p: &Presence, contact: &BareJid, from: &Jid) -> Vec<Action> {
        let resource = from
            .resource()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        let key = contact.as_str().to_owned();
        let before = self.legacy_summary(&key);
        let resources = self.legacy.entry(key.clone()).or_default();
        if p.type_ == Type::Unavailable {
            if resource.is_empty() {
                resources.clear();
            } else {
                resources.remove(&resource);
            }
        } else {
            let text = p.statuses.values().next().cloned();
            resources.insert(
                resource,
                Resource {
                    state: State::from_show(p.show.as_ref()),
                    priority: p.priority.0,
                    text,
                },
            );
        }
        if resources.is_empty() {
            self.legacy.remove(&key);
        }
        let after = self.legacy_summary(&key);
        // Several bridged JIDs may receive the same contact's presence: publish on change,
        // but always the first unavailable (a retained "available" from an earlier run may
        // be on the topic).
        if before == after && !(before.is_none() && p.type_ == Type::Unavailable) {
            return Vec::new();
        }
        let (state, text) = after.map_or((State::Unavailable, None), |r| (r.state, r.text));
        let payload = serde_json::json!({
            "v": 1,
            "jid": key,
            "state": state.as_str(),
            "status": text,
            "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        });
        vec![Action::Publish {
            topic: self.legacy_topic.render(&key),
            payload: Bytes::from(payload.to_string()),
        }]
    }

    /// The resource that stands for a bare JID: highest priority, then most reachable.
    fn legacy_summary(&self, bare: &str) -> Option<Resource> {
        self.legacy
            .get(bare)?
            .values()
            .max_by_key(|r| (r.priority, r.state.rank()))
            .cloned()
    }
}

#[cfg(test)]
#[path = "presence_tests.rs"]
mod tests;
