//! Group chat (XEP-0045 Multi-User Chat), sans-IO: MQTT users who subscribe to a room's
//! topic are occupants of the room, from their bridged JIDs.
//!
//! A room is any mapping rule carrying `groupchat` messages whose `peer` is the room
//! (`{room}@conference.example.org`) and whose `topic` has no `{user}` level
//! (`rooms/{room}`). Then:
//!
//! 1. An MQTT client of user `bob` SUBSCRIBEs to `rooms/lobby` (the exact topic; a wildcard
//!    filter joins nothing): the bridge sends presence from `bob@<domain>` to
//!    `lobby@conference.example.org/bob` asking for no history (`<history maxstanzas='0'/>`).
//!    Further clients of the same user share the one occupant.
//! 2. The room answers with its occupants and bob's own presence (status 110). A room the
//!    join created (status 201) is configured as an instant room, so it is not left locked.
//!    An error presence (conflict, forbidden, registration-required, ...) is published to
//!    the user's error topic (`users/bob/errors`) and audited.
//! 3. The room sends every groupchat message to each occupant, so to each bridged occupant:
//!    the bridge publishes one copy (the one addressed to the first bridged occupant by
//!    name) on the room's topic, and none of a message whose sender's nick is a bridged
//!    occupant's (MQTT subscribers already had it from the broker), and none carrying a
//!    `<delay/>` (history).
//! 4. UNSUBSCRIBE by the user's last client, or its disconnect, leaves the room (presence
//!    `unavailable`).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::muc::Muc;
use xmpp_parsers::muc::muc::History;
use xmpp_parsers::presence::{Presence, Type};

use super::presence::LevelPattern;
use crate::broker::session_events::{Departure, SessionEvent};
use crate::mapping::{MappingTable, MessageKind};

/// Where room errors for MQTT user `{user}` are published (QoS 1, not retained).
pub const ERROR_TOPIC: &str = "users/{user}/errors";

const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_DELAY: &str = "urn:xmpp:delay";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// A room error, for the MQTT client and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomError {
    /// The MQTT user.
    pub user: String,
    /// The room's bare JID.
    pub room: String,
    /// The nick the user joined (or spoke) with.
    pub nick: String,
    /// The XMPP error condition (`conflict`, `forbidden`, `registration-required`, ...).
    pub condition: String,
    /// The room's explanation, if any.
    pub text: Option<String>,
    /// The error topic to publish on.
    pub topic: String,
}

impl RoomError {
    /// The JSON payload on the error topic.
    pub fn payload(&self) -> Bytes {
        let v = serde_json::json!({
            "v": 1,
            "type": "groupchat",
            "room": self.room,
            "nick": self.nick,
            "condition": self.condition,
            "text": self.text,
            "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        });
        Bytes::from(v.to_string())
    }
}

/// What the bridge has to do.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomAction {
    /// Send a presence (join, leave).
    Presence(Box<Presence>),
    /// Send an iq (instant-room configuration).
    Iq(Box<Iq>),
    /// Report an error to the MQTT user and the audit trail.
    Error(RoomError),
}

/// What to do with a groupchat message from a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a room the bridge knows: the usual translation decides.
    NotARoom,
    /// Publish it (this is the one copy to carry).
    Publish,
    /// Do not publish; the reason, for logs.
    Skip(&'static str),
}

#[derive(Debug, Default)]
struct Member {
    /// The user's clients subscribed to the room topic.
    clients: HashSet<String>,
    /// The room confirmed the join (self-presence).
    joined: bool,
}

/// Bridged occupants of every room.
#[derive(Debug)]
pub struct Rooms {
    domain: String,
    error_topic: LevelPattern,
    /// Room bare JID → MQTT user (also the nick) → membership.
    rooms: HashMap<String, BTreeMap<String, Member>>,
    /// Client id → rooms it is in, to leave them on disconnect.
    clients: HashMap<String, HashSet<String>>,
    next_iq: u64,
}

impl Rooms {
    /// No room yet, for component domain `domain`.
    pub fn new(domain: &str) -> Rooms {
        Rooms {
            domain: domain.to_owned(),
            error_topic: LevelPattern::parse(ERROR_TOPIC, "user")
                .unwrap_or_else(|_| unreachable!("the constant is a valid pattern")),
            rooms: HashMap::new(),
            clients: HashMap::new(),
            next_iq: 0,
        }
    }

    /// The room a topic filter stands for, with the user's JID, if a groupchat rule maps it.
    fn room_of(table: &MappingTable, filter: &str, user: &str) -> Option<(BareJid, BareJid)> {
        if filter.contains(['+', '#']) {
            return None;
        }
        let route = table.to_xmpp(filter, Some(user)).ok()?;
        if !route.rule.kinds.contains(&MessageKind::Groupchat) {
            return None;
        }
        Some((
            BareJid::new(&route.to).ok()?,
            BareJid::new(&route.from).ok()?,
        ))
    }

    /// A broker session event: joins and leaves.
    pub fn on_session(&mut self, table: &MappingTable, event: &SessionEvent) -> Vec<RoomAction> {
        let Some(user) = event.username() else {
            return Vec::new();
        };
        let client = event.client_id();
        let mut out = Vec::new();
        match event {
            SessionEvent::Subscribed { filters, .. } => {
                for filter in filters {
                    if let Some((room, me)) = Self::room_of(table, filter, user) {
                        out.extend(self.join(user, client, &room, &me));
                    }
                }
            }
            SessionEvent::Unsubscribed { filters, .. } => {
                for filter in filters {
                    if let Some((room, me)) = Self::room_of(table, filter, user) {
                        out.extend(self.leave(user, client, &room, &me));
                    }
                }
            }
            SessionEvent::Disconnected {
                why: Departure::TakenOver,
                ..
            } => {}
            SessionEvent::Disconnected { .. } => {
                let rooms: Vec<String> = self
                    .clients
                    .get(client)
                    .map(|r| r.iter().cloned().collect())
                    .unwrap_or_default();
                let me = BareJid::new(&format!("{user}@{}", self.domain)).ok();
                for room in rooms {
                    if let (Ok(room), Some(me)) = (BareJid::new(&room), &me) {
                        out.extend(self.leave(user, client, &room, me));
                    }
                }
            }
            SessionEvent::Connected { .. } | SessionEvent::WillPublished { .. } => {}
        }
        out
    }

    fn occupant(room: &BareJid, nick: &str) -> Option<FullJid> {
        room.with_resource_str(nick).ok()
    }

    fn join(&mut self, user: &str, client: &str, room: &BareJid, me: &BareJid) -> Vec<RoomAction> {
        let members = self.rooms.entry(room.to_string()).or_default();
        let member = members.entry(user.to_owned()).or_default();
        let first = member.clients.is_empty();
        member.clients.insert(client.to_owned());
        self.clients
            .entry(client.to_owned())
            .or_default()
            .insert(room.to_string());
        let Some(to) = Self::occupant(room, user) else {
            return Vec::new();
        };
        if !first {
            return Vec::new();
        }
        let join = Presence::available()
            .with_from(me.clone())
            .with_to(to)
            .with_payload(Muc::new().with_history(History::new().with_maxstanzas(0)));
        vec![RoomAction::Presence(Box::new(join))]
    }

    fn leave(&mut self, user: &str, client: &str, room: &BareJid, me: &BareJid) -> Vec<RoomAction> {
        let key = room.to_string();
        if let Some(rooms) = self.clients.get_mut(client) {
            rooms.remove(&key);
            if rooms.is_empty() {
                self.clients.remove(client);
            }
        }
        let Some(members) = self.rooms.get_mut(&key) else {
            return Vec::new();
        };
        let Some(member) = members.get_mut(user) else {
            return Vec::new();
        };
        member.clients.remove(client);
        if !member.clients.is_empty() {
            return Vec::new();
        }
        members.remove(user);
        if members.is_empty() {
            self.rooms.remove(&key);
        }
        let Some(to) = Self::occupant(room, user) else {
            return Vec::new();
        };
        let leave = Presence::unavailable().with_from(me.clone()).with_to(to);
        vec![RoomAction::Presence(Box::new(leave))]
    }

    /// The MQTT user a bridged JID stands for, if it is in `room`.
    fn member_of<'a>(&self, room: &str, to: Option<&'a Jid>) -> Option<&'a str> {
        let to = to?;
        let user = to.node()?.as_str();
        let ours = to.domain().as_str() == self.domain;
        let member = self.rooms.get(room).is_some_and(|m| m.contains_key(user));
        (ours && member).then_some(user)
    }

    /// A presence from XMPP: `None` when it is not about a room a bridged user is in.
    pub fn on_presence(&mut self, p: &Presence) -> Option<Vec<RoomAction>> {
        let from = p.from.as_ref()?;
        let room = from.to_bare().to_string();
        let nick = from.resource()?.as_str().to_owned();
        let user = self.member_of(&room, p.to.as_ref())?.to_owned();
        if p.type_ == Type::Error {
            self.rooms.get_mut(&room)?.get_mut(&user)?.joined = false;
            let (condition, text) = error_of(&p.payloads);
            return Some(vec![self.error(&user, &room, &nick, condition, text)]);
        }
        if nick != user {
            // Another occupant's presence: occupants are not bridged as presence.
            return Some(Vec::new());
        }
        let created = status_codes(&p.payloads).any(|c| c == "201");
        let mut out = Vec::new();
        match p.type_ {
            Type::None => {
                if let Some(m) = self.rooms.get_mut(&room).and_then(|m| m.get_mut(&user)) {
                    m.joined = true;
                }
                if created {
                    out.extend(self.instant_room(&room, &user));
                }
            }
            Type::Unavailable => {
                // Kicked, banned or the room went away: the occupant is gone.
                if let Some(m) = self.rooms.get_mut(&room).and_then(|m| m.get_mut(&user)) {
                    m.joined = false;
                }
            }
            _ => {}
        }
        Some(out)
    }

    /// Accepts the default configuration of a room the join created (XEP-0045 §10.1.2).
    fn instant_room(&mut self, room: &str, user: &str) -> Option<RoomAction> {
        self.next_iq += 1;
        let xml = format!(
            "<iq xmlns='{ns}' type='set' id='muc-instant-{n}' from='{user}@{domain}' to='{room}'>\
             <query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'/></query></iq>",
            ns = xmpp_parsers::ns::DEFAULT_NS,
            n = self.next_iq,
            domain = self.domain,
        );
        let element: Element = xml.parse().ok()?;
        let iq = Iq::try_from(element).ok()?;
        Some(RoomAction::Iq(Box::new(iq)))
    }

    fn error(
        &self,
        user: &str,
        room: &str,
        nick: &str,
        condition: String,
        text: Option<String>,
    ) -> RoomAction {
        RoomAction::Error(RoomError {
            user: user.to_owned(),
            room: room.to_owned(),
            nick: nick.to_owned(),
            condition,
            text,
            topic: self.error_topic.render(user),
        })
    }

    /// An error message from a room to a bridged user (e.g. a message refused because the
    /// user is not an occupant, or a visitor in a moderated room).
    pub fn on_error_message(&self, m: &Message) -> Option<RoomAction> {
        let from = m.from.as_ref()?;
        let room = from.to_bare().to_string();
        let to = m.to.as_ref()?;
        let user = to.node()?.as_str();
        if to.domain().as_str() != self.domain || !self.rooms.contains_key(&room) {
            return None;
        }
        let (condition, text) = error_of(&m.payloads);
        let nick = from.resource().map_or(user, |r| r.as_str());
        Some(self.error(user, &room, nick, condition, text))
    }

    /// Whether to publish a groupchat message from a room (see the module docs, step 3).
    pub fn verdict(&self, m: &Message) -> Verdict {
        let Some(from) = m.from.as_ref() else {
            return Verdict::NotARoom;
        };
        let room = from.to_bare().to_string();
        let Some(members) = self.rooms.get(&room) else {
            return Verdict::NotARoom;
        };
        if m.payloads.iter().any(|e| e.is("delay", NS_DELAY)) {
            return Verdict::Skip("room history");
        }
        let Some(nick) = from.resource() else {
            // The room itself (subject changes, announcements): carried like a message.
            return self.designated(members, m);
        };
        if members.contains_key(nick.as_str()) {
            return Verdict::Skip("echo of a bridged occupant's message");
        }
        self.designated(members, m)
    }

    fn designated(&self, members: &BTreeMap<String, Member>, m: &Message) -> Verdict {
        let receiver = members
            .iter()
            .find(|(_, mb)| mb.joined)
            .or_else(|| members.iter().next())
            .map(|(user, _)| user.as_str());
        let to = m.to.as_ref().and_then(|t| t.node()).map(|n| n.as_str());
        if to.is_some() && to == receiver {
            Verdict::Publish
        } else {
            Verdict::Skip("another bridged occupant's copy")
        }
    }
}

/// The status codes of the `<x xmlns='http://jabber.org/protocol/muc#user'/>` among
/// `payloads` (read by hand: a typed parse fails on details that do not matter here).
fn status_codes(payloads: &[Element]) -> impl Iterator<Item = &str> {
    payloads
        .iter()
        .filter(|e| e.is("x", NS_MUC_USER))
        .flat_map(|x| x.children().filter(|c| c.name() == "status"))
        .filter_map(|s| s.attr("code"))
}

/// The condition and text of the `<error/>` among `payloads`.
fn error_of(payloads: &[Element]) -> (String, Option<String>) {
    let Some(error) = payloads.iter().find(|e| e.name() == "error") else {
        return ("undefined-condition".into(), None);
    };
    let condition = error
        .children()
        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
        .map_or_else(|| "undefined-condition".into(), |c| c.name().to_owned());
    let text = error
        .children()
        .find(|c| c.ns() == NS_STANZAS && c.name() == "text")
        .map(Element::text);
    (condition, text)
}

#[cfg(test)]
#[path = "muc_tests.rs"]
mod tests;
