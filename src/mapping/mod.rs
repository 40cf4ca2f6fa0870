//! The mapping table: which XMPP addresses correspond to which MQTT topics, both ways.
//!
//! Pure: no I/O besides reading the mapping files in [`MappingTable::load_dir`]. The table is
//! compiled once at start (and on reload), is immutable, and is shared by `Arc`; lookups run
//! per message and compare precompiled slots without allocating anything but their output.
//!
//! # Mapping files
//!
//! Every `*.toml` file of the mappings directory, read in file-name order, holds `[[rule]]`
//! tables:
//!
//! ```toml
//! [[rule]]
//! name = "chat-inbox"           # required, unique across all files; [a-z0-9][a-z0-9_-]*
//! direction = "xmpp-to-mqtt"    # required: "xmpp-to-mqtt" | "mqtt-to-xmpp" | "both"
//! jid = "{user}@{domain}"       # required: the bridged JID, in the bridge's domain
//! peer = "{peer}"               # the legacy-side JID; default "{peer}" (any bare JID)
//! topic = "users/{user}/inbox/{peer}"   # required: MQTT topic template
//! kinds = ["chat", "normal"]    # message types; default ["chat", "normal"]
//! qos = 1                       # 0..=2, default 1
//! format = "json"               # "text" | "json" | "xml"; default "json"
//! retain = false                # xmpp-to-mqtt only; default false
//! anonymous = false             # mqtt-to-xmpp only; default false
//! ```
//!
//! # Captures
//!
//! `{name}` (`[a-z_][a-z0-9_]*`) stands for a value taken from one side and put on the other.
//! - In `topic`, a capture is a whole level (`users/{user}/inbox`, never `user-{id}`), because
//!   the level is the unit that filters and ACLs work on and that escaping protects. Templates
//!   hold no `+`/`#` and must otherwise be valid MQTT topic names; a first level starting with
//!   `$` is refused (reserved for the broker).
//! - In `jid`, the localpart is a literal or a capture and the domain is literally `{domain}`:
//!   a bridged JID can only live in the bridge's own component domain, and it has no resource.
//! - In `peer`, either one capture for a whole bare JID (`{peer}`), or `localpart@domain` with
//!   each part a literal or a capture (`{room}@conference.example.org`), or (beyond the two
//!   usual forms) a literal domain alone (`example.org`, a server announcing headlines).
//! - `{domain}` is built in (the bridge domain) and may stand only as `jid`'s domain.
//! - `{user}` is the authenticated MQTT user name (see *Identity*).
//! - A capture name appears at most once in `topic`, and at most once in `jid` and `peer`
//!   together, so every capture has exactly one value and no hidden equality constraint.
//! - Literal JID parts are validated and normalized (nodeprep/nameprep: `Alice` → `alice`),
//!   because the XMPP side hands over normalized JIDs.
//!
//! # XMPP → MQTT
//!
//! A message of kind K from legacy bare JID P to bridged bare JID J matches a rule of
//! direction `xmpp-to-mqtt` or `both` when `jid` matches J, `peer` matches P and K is in
//! `kinds`. The captures of both fill `topic`, each value escaped into its level (see
//! *Escaping*). Load time rejects a rule whose `topic` uses a capture that
//! neither `jid` nor `peer` binds.
//!
//! # MQTT → XMPP and identity
//!
//! A PUBLISH on topic T by authenticated user U (or anonymous) matches a rule of direction
//! `mqtt-to-xmpp` or `both` when `topic` matches T (literal levels exactly, captures any
//! non-empty level). Then, in this order:
//! 1. Anonymous publishers are refused unless the rule says `anonymous = true`; such a rule may
//!    use `{user}` neither in `jid` nor in `topic` (checked at load time), since there is no
//!    user to derive an identity from.
//! 2. If `topic` has a `{user}` level, its (unescaped) value must equal U: publishing on
//!    another user's bridged topic is refused. Why: identity comes from the authenticated
//!    user name only, never from the payload or a topic the client chose.
//! 3. The sender is `jid` rendered with `{user}` = U and other captures from the topic. It must
//!    be a valid JID *already in normalized form*: otherwise the MQTT users `Alice` and
//!    `alice` would both speak as `alice@…`.
//! 4. The recipient is `peer` rendered with the topic's captures, validated and normalized.
//!
//! Load time rejects a rule whose `peer` uses a capture absent from `topic`, or whose `jid`
//! uses a capture other than `{user}` absent from `topic`. A rule whose `jid` does not use
//! `{user}` (e.g. `alerts@{domain}`) lets every publisher that may publish on its topic speak
//! as that one JID: that is what such a rule is for, and the broker's ACLs decide who may
//! publish there.
//!
//! Rules from MQTT list in `kinds` the message types they may send, the first being the
//! default. `format = "xml"` is refused for them: raw stanza XML from MQTT clients would let
//! them forge any stanza. Options that do not apply to a rule's direction (`retain` without
//! xmpp-to-mqtt, `anonymous` without mqtt-to-xmpp) are errors, so that a setting never
//! silently does nothing.
//!
//! # Escaping
//!
//! A JID or JID part put into a topic level is escaped reversibly: `%`→`%25`, `/`→`%2F`,
//! `+`→`%2B`, `#`→`%23`, U+0000→`%00`, and a leading `$`→`%24`. Unescaping accepts exactly
//! the levels escaping can produce (upper-case hex, only those six codes), so a JID has one
//! topic level and one only; a malformed level is refused ([`Refusal::BadEscape`]).
//!
//! # Precedence and ambiguity
//!
//! When several rules of one direction match one input, the strictly more specific one wins:
//! rule A is more specific than rule B when, position by position (`jid` localpart, `peer`
//! localpart and domain; or topic level by topic level), A has the same literal or a literal
//! where B has a capture, and at least one literal where B has a capture. A `localpart@domain`
//! peer is more specific than a whole-JID `{peer}`. Kinds do not count toward specificity.
//!
//! Two rules of one direction that can match a same input (for XMPP → MQTT: a shared kind as
//! well) with neither strictly more specific are *ambiguous* and rejected at load time; rules
//! with the same patterns (up to capture names) are *duplicates* and rejected. Why reject
//! instead of "first file wins": the outcome would then depend on file names and order, which
//! an operator reading one file cannot see. Because every two matching rules are ordered, the
//! lookup tries rules from most to least specific and stops at the first match; there is no
//! fallback to a wider rule when identity checks refuse the most specific one.
//!
//! # Errors
//!
//! Every problem in every file is reported at once ([`MappingError`]), with file, line, rule,
//! field and message: TOML syntax, unknown fields (with a did-you-mean hint), bad values,
//! unbound captures, duplicate names, ambiguous and duplicate rules, and a directory without
//! rules.

mod compile;
mod error;
mod escape;
mod load;
mod overlap;
mod pattern;
mod rule;
mod topic;
mod upstream;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use error::{MappingError, ParseValueError};
pub use rule::Rule;

use pattern::PeerInput;

/// Which way a rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the legacy XMPP side to MQTT.
    XmppToMqtt,
    /// From MQTT publishers to XMPP.
    MqttToXmpp,
    /// Both ways; the rule must satisfy the checks of both.
    Both,
}

impl Direction {
    const NAMES: [&'static str; 3] = ["xmpp-to-mqtt", "mqtt-to-xmpp", "both"];

    /// The name used in mapping files.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::XmppToMqtt => "xmpp-to-mqtt",
            Direction::MqttToXmpp => "mqtt-to-xmpp",
            Direction::Both => "both",
        }
    }

    /// Whether the rule applies to messages coming from XMPP.
    pub fn xmpp_to_mqtt(self) -> bool {
        matches!(self, Direction::XmppToMqtt | Direction::Both)
    }

    /// Whether the rule applies to publishes coming from MQTT.
    pub fn mqtt_to_xmpp(self) -> bool {
        matches!(self, Direction::MqttToXmpp | Direction::Both)
    }
}

/// An XMPP message type (RFC 6121 §5.2.2) a rule carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// One-to-one chat.
    Chat,
    /// A standalone message (the XMPP default type).
    Normal,
    /// An alert or notice, usually not answered.
    Headline,
    /// A message in a multi-user chat room.
    Groupchat,
}

impl MessageKind {
    const NAMES: [&'static str; 4] = ["chat", "normal", "headline", "groupchat"];

    /// The XMPP `type` attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Chat => "chat",
            MessageKind::Normal => "normal",
            MessageKind::Headline => "headline",
            MessageKind::Groupchat => "groupchat",
        }
    }
}

/// How a message is carried in an MQTT payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// The body as UTF-8.
    Text,
    /// The bridge's JSON envelope (from, to, id, type, body, thread, subject, timestamp, …).
    Json,
    /// The stanza as sent; XMPP → MQTT only.
    Xml,
}

impl PayloadFormat {
    const NAMES: [&'static str; 3] = ["text", "json", "xml"];

    /// The name used in mapping files.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Text => "text",
            PayloadFormat::Json => "json",
            PayloadFormat::Xml => "xml",
        }
    }
}

macro_rules! name_enum {
    ($ty:ty, $what:literal, [$($name:literal => $variant:expr),+]) => {
        impl FromStr for $ty {
            type Err = ParseValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err(ParseValueError::new($what, s, &<$ty>::NAMES)),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

name_enum!(Direction, "direction", [
    "xmpp-to-mqtt" => Direction::XmppToMqtt,
    "mqtt-to-xmpp" => Direction::MqttToXmpp,
    "both" => Direction::Both
]);
name_enum!(MessageKind, "message kind", [
    "chat" => MessageKind::Chat,
    "normal" => MessageKind::Normal,
    "headline" => MessageKind::Headline,
    "groupchat" => MessageKind::Groupchat
]);
name_enum!(PayloadFormat, "format", [
    "text" => PayloadFormat::Text,
    "json" => PayloadFormat::Json,
    "xml" => PayloadFormat::Xml
]);

/// Where an XMPP message goes on the MQTT side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToMqtt<'a> {
    /// The rule that matched: QoS, payload format and retain flag for the publish.
    pub rule: &'a Rule,
    /// The topic to publish on, with captured JID parts escaped.
    pub topic: String,
}

/// Where an MQTT publish goes on the XMPP side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToXmpp<'a> {
    /// The rule that matched: kinds and payload format.
    pub rule: &'a Rule,
    /// The sender, a bare JID in the bridge domain derived from the publisher's identity.
    pub from: String,
    /// The recipient, a normalized bare JID.
    pub to: String,
}

/// Why an MQTT publish is not bridged to XMPP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No mqtt-to-xmpp rule matches the topic.
    #[error("no mapping rule matches the topic")]
    NoRule,
    /// The topic's `{user}` level names another user than the publisher.
    #[error("user `{user}` may not publish on the topic of user `{topic_user}` (rule `{rule}`)")]
    NotYourTopic {
        /// The authenticated publisher.
        user: String,
        /// The user the topic belongs to.
        topic_user: String,
        /// The rule that matched.
        rule: String,
    },
    /// An unauthenticated publisher, and the rule does not allow them.
    #[error("anonymous clients may not publish through rule `{rule}`")]
    Anonymous {
        /// The rule that matched.
        rule: String,
    },
    /// A captured topic level is not a valid escaped JID part.
    #[error("malformed escape in topic level `{level}`")]
    BadEscape {
        /// The level as published.
        level: String,
    },
    /// The sender or recipient rendered from the topic or user name is not a valid JID (or,
    /// for the sender, not in normalized form).
    #[error("`{jid}` is not a valid JID (rule `{rule}`)")]
    InvalidJid {
        /// The JID as rendered.
        jid: String,
        /// The rule that matched.
        rule: String,
    },
}

/// `s` as one topic level, escaped as rules escape JID parts (`%`, `/`, `+`, `#`, NUL, a
/// leading `$`).
pub fn escape_level(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape::escape_into(s, &mut out);
    out
}

/// Reverses [`escape_level`]; `None` for a level escaping cannot produce.
pub fn unescape_level(level: &str) -> Option<String> {
    escape::unescape(level).map(std::borrow::Cow::into_owned)
}

/// The compiled, validated mapping rules. Immutable; `Send + Sync`, shared by `Arc`.
#[derive(Debug, Clone)]
pub struct MappingTable {
    /// In file order, then position in file: the order operators read them in.
    rules: Vec<Rule>,
    /// The bridge's component domain, normalized.
    domain: Box<str>,
    /// Indices of xmpp-to-mqtt/both rules, most specific first, so the first match wins.
    from_xmpp: Vec<usize>,
    /// Indices of mqtt-to-xmpp/both rules, most specific first.
    from_mqtt: Vec<usize>,
    /// Different for every table built in this process (see [`MappingTable::generation`]).
    generation: u64,
}

impl MappingTable {
    /// Loads every `*.toml` file of `dir` in file-name order; `domain` is the bridge's
    /// component domain. Every problem of every file is returned at once.
    pub fn load_dir(dir: &Path, domain: &str) -> Result<MappingTable, Vec<MappingError>> {
        load::load_dir(dir, domain)
    }

    /// Compiles one mapping file's text; `file` is used in error messages and [`Rule::file`].
    pub fn parse(text: &str, file: &Path, domain: &str) -> Result<MappingTable, Vec<MappingError>> {
        load::parse_one(text, file, domain)
    }

    /// Builds the table from rules that passed every check.
    fn new(rules: Vec<Rule>, domain: Box<str>) -> MappingTable {
        let order = |keep: fn(Direction) -> bool, score: fn(&Rule) -> u32| {
            let mut idx: Vec<usize> = (0..rules.len())
                .filter(|&i| keep(rules[i].direction))
                .collect();
            idx.sort_by_key(|&i| std::cmp::Reverse(score(&rules[i])));
            idx
        };
        let from_xmpp = order(Direction::xmpp_to_mqtt, Rule::xmpp_score);
        let from_mqtt = order(Direction::mqtt_to_xmpp, Rule::mqtt_score);
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        MappingTable {
            rules,
            domain,
            from_xmpp,
            from_mqtt,
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A number no other table built in this process has: what was worked out with one
    /// table (the publish guard's translation, handed to the bridge) is used only with it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// All rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The bridge domain the table was compiled for (normalized).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The topic for a message of `kind` from legacy bare JID `from` to bridged bare JID `to`
    /// (both as the XMPP side normalized them); `None` when no rule matches, when `to` is not
    /// in the bridge domain, or when either has a resource.
    /// A domain's final dot is dropped from both (see `without_final_dot`).
    pub fn to_mqtt(&self, from: &str, to: &str, kind: MessageKind) -> Option<ToMqtt<'_>> {
        let node = self.bridged_node(without_final_dot(to)?)?;
        let peer = PeerInput::split(without_final_dot(from)?)?;
        let rule =
            self.from_xmpp.iter().map(|&i| &self.rules[i]).find(|r| {
                r.kinds.contains(&kind) && r.jid.matches(node) && r.peer.matches(&peer)
            })?;
        Some(ToMqtt {
            rule,
            topic: rule.topic.render(node, &peer)?,
        })
    }

    /// The sender and recipient for a PUBLISH on `topic` by authenticated user `user` (`None`:
    /// anonymous). See the module docs for the identity rules.
    pub fn to_xmpp(&self, topic: &str, user: Option<&str>) -> Result<ToXmpp<'_>, Refusal> {
        let levels = topic.bytes().filter(|&b| b == b'/').count() + 1;
        let rule = self
            .from_mqtt
            .iter()
            .map(|&i| &self.rules[i])
            .find(|r| r.topic.level_count() == levels && r.topic.matches(topic))
            .ok_or(Refusal::NoRule)?;
        rule.resolve(topic, user, &self.domain)
    }

    /// The topic filters the bridge subscribes to for mqtt-to-xmpp/both rules (captures become
    /// `+`), sorted. Deduplicated, and a filter covered by another is left out: a server may
    /// deliver one copy of a publish per matching subscription (MQTT 5.0 §3.3.4), and the bridge
    /// must never translate a message twice. A filter may so stand for rules of different
    /// `qos`; subscribe with the highest of them (each rule's `qos` is in [`Self::rules`]).
    pub fn mqtt_filters(&self) -> Vec<String> {
        let filters: Vec<String> = self
            .from_mqtt
            .iter()
            .map(|&i| self.rules[i].topic.filter())
            .collect();
        let covers = |wide: &str, narrow: &str| {
            wide.split('/').count() == narrow.split('/').count()
                && wide
                    .split('/')
                    .zip(narrow.split('/'))
                    .all(|(w, n)| w == "+" || w == n)
        };
        let mut out: Vec<String> = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            let covered = filters
                .iter()
                .enumerate()
                .any(|(j, g)| j != i && covers(g, f) && (g != f || j < i));
            if !covered {
                out.push(f.clone());
            }
        }
        out.sort();
        out
    }

    /// Whether any rule's `jid` pattern matches the bridged bare JID `to`: a stanza to a JID
    /// no rule covers is answered with `<item-not-found/>`.
    pub fn covers_jid(&self, to: &str) -> bool {
        self.bridged_node(to)
            .is_some_and(|node| self.rules.iter().any(|r| r.jid.matches(node)))
    }

    /// The localpart of `jid` when it is a bare JID in the bridge domain.
    fn bridged_node<'j>(&self, jid: &'j str) -> Option<&'j str> {
        let (node, domain) = split_once_byte(jid, b'@')?;
        (domain == &*self.domain && !node.is_empty()).then_some(node)
    }

    /// A human-readable table of the rules, for `check-config`.
    pub fn describe(&self) -> String {
        rule::describe(&self.rules)
    }
}

/// `s` split at the first `b` (an ASCII byte), like `str::split_once` with a `char`, which
/// compares each candidate through `memcmp`: these splits run several times per message, on
/// short strings (JIDs), where a plain loop also beats a call into `memchr`.
pub(crate) fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    debug_assert!(b.is_ascii());
    let i = s.bytes().position(|c| c == b)?;
    // `b` is ASCII, so `i` and `i + 1` are character boundaries.
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// `s` split at the last `b` (an ASCII byte); see [`split_once_byte`].
pub(crate) fn rsplit_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    debug_assert!(b.is_ascii());
    let i = s.bytes().rposition(|c| c == b)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// The levels of a topic name or filter, as `topic.split('/')` yields them (one empty level
/// for an empty topic), split byte-wise (see [`split_once_byte`]): the publish guard and the
/// translation split every bridged topic.
pub(crate) fn topic_levels(topic: &str) -> TopicLevels<'_> {
    TopicLevels { rest: Some(topic) }
}

/// See [`topic_levels`].
#[derive(Debug, Clone)]
pub(crate) struct TopicLevels<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for TopicLevels<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match split_once_byte(rest, b'/') {
            Some((level, more)) => {
                self.rest = Some(more);
                Some(level)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Whether `s` contains the ASCII byte `b`; see [`split_once_byte`].
pub(crate) fn contains_byte(s: &str, b: u8) -> bool {
    s.bytes().any(|c| c == b)
}

/// A bare JID without the final dot of its domain: `example.org.` is the fully qualified
/// spelling of `example.org` (RFC 7622 §3.2), and keeping it would give one JID two topics.
/// `None` when nothing but a dot would be left of the domain, or the domain ends in two dots.
pub(crate) fn without_final_dot(jid: &str) -> Option<&str> {
    let Some(rest) = jid.strip_suffix('.') else {
        return Some(jid);
    };
    (!rest.is_empty() && !rest.ends_with(['.', '@'])).then_some(rest)
}
