//! Compiling one `[[rule]]` table: reading each field with its line, validating it, and
//! linking the captures of `jid`, `peer` and `topic` (see "Captures" in the module docs).

use std::collections::HashMap;
use std::path::Path;

use toml_edit::{Item, TableLike};

use super::error::{MappingError, closest};
use super::load::LineIndex;
use super::pattern::{JidPattern, PeerPattern, USER};
use super::rule::{PatternText, Rule};
use super::topic::TopicTemplate;
use super::{Direction, MessageKind, PayloadFormat};

/// The fields of a `[[rule]]` table.
const FIELDS: [&str; 11] = [
    "name",
    "direction",
    "jid",
    "peer",
    "topic",
    "kinds",
    "qos",
    "format",
    "retain",
    "anonymous",
    "receipts",
];
/// `peer` when absent: any legacy bare JID.
const DEFAULT_PEER: &str = "{peer}";
/// `kinds` when absent: what XMPP clients send person to person.
const DEFAULT_KINDS: [MessageKind; 2] = [MessageKind::Chat, MessageKind::Normal];
/// `qos` when absent: at least once, so a message is not lost silently.
const DEFAULT_QOS: u8 = 1;
/// `format` when absent: the JSON envelope keeps ids, thread and subject.
const DEFAULT_FORMAT: PayloadFormat = PayloadFormat::Json;

/// One `[[rule]]` table being compiled; errors carry its name once known.
pub(crate) struct RuleCx<'a> {
    file: &'a Path,
    lines: &'a LineIndex,
    table: &'a dyn TableLike,
    /// Line of the `[[rule]]` header: for missing fields and whole-rule problems.
    line: usize,
    pub(crate) name: Option<String>,
    pub(crate) errors: Vec<MappingError>,
}

impl<'a> RuleCx<'a> {
    pub(crate) fn new(
        file: &'a Path,
        lines: &'a LineIndex,
        table: &'a dyn TableLike,
        line: usize,
    ) -> RuleCx<'a> {
        RuleCx {
            file,
            lines,
            table,
            line,
            name: None,
            errors: Vec::new(),
        }
    }

    fn error(&mut self, field: &str, line: usize, message: impl Into<String>) {
        self.errors.push(MappingError {
            file: self.file.to_path_buf(),
            line: Some(line),
            rule: self.name.clone(),
            field: Some(field.to_string()),
            message: message.into(),
        });
    }

    /// The item of `key` and the line of its key; `None` when absent.
    fn item(&self, key: &str) -> Option<(&'a Item, usize)> {
        let table: &'a dyn TableLike = self.table;
        let (k, item) = table.get_key_value(key)?;
        let line = k
            .span()
            .or_else(|| item.span())
            .map_or(self.line, |s| self.lines.line(s.start));
        Some((item, line))
    }

    /// A string field; a type error is recorded.
    fn string(&mut self, key: &str) -> Option<(String, usize)> {
        let (item, line) = self.item(key)?;
        match item.as_str() {
            Some(s) => Some((s.to_string(), line)),
            None => {
                let found = item.type_name();
                self.error(key, line, format!("expected a string, found {found}"));
                None
            }
        }
    }

    fn required(&mut self, key: &str) -> Option<(String, usize)> {
        if self.table.get(key).is_none() {
            let line = self.line;
            self.error(key, line, format!("missing required field `{key}`"));
            return None;
        }
        self.string(key)
    }

    /// A string field parsed with `FromStr`; the parse error is the message.
    fn parsed<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Option<(T, usize)>
    where
        T::Err: std::fmt::Display,
    {
        if self.table.get(key).is_none() {
            return Some((default, self.line));
        }
        let (text, line) = self.string(key)?;
        match text.parse() {
            Ok(v) => Some((v, line)),
            Err(e) => {
                self.error(key, line, e.to_string());
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<(bool, usize)> {
        self.boolean_or(key, false)
    }

    fn boolean_or(&mut self, key: &str, default: bool) -> Option<(bool, usize)> {
        let Some((item, line)) = self.item(key) else {
            return Some((default, self.line));
        };
        match item.as_bool() {
            Some(b) => Some((b, line)),
            None => {
                let found = item.type_name();
                self.error(key, line, format!("expected true or false, found {found}"));
                None
            }
        }
    }

    fn qos(&mut self) -> Option<u8> {
        let Some((item, line)) = self.item("qos") else {
            return Some(DEFAULT_QOS);
        };
        match item.as_integer() {
            Some(q @ 0..=2) => u8::try_from(q).ok(),
            Some(q) => {
                self.error("qos", line, format!("qos must be 0, 1 or 2, found {q}"));
                None
            }
            None => {
                let found = item.type_name();
                self.error("qos", line, format!("expected 0, 1 or 2, found {found}"));
                None
            }
        }
    }

    fn kinds(&mut self) -> Option<Vec<MessageKind>> {
        let Some((item, line)) = self.item("kinds") else {
            return Some(DEFAULT_KINDS.to_vec());
        };
        let Some(array) = item.as_array() else {
            let found = item.type_name();
            self.error(
                "kinds",
                line,
                format!("expected an array of kinds, found {found}"),
            );
            return None;
        };
        if array.is_empty() {
            self.error(
                "kinds",
                line,
                "list at least one kind (chat, normal, headline, groupchat)",
            );
            return None;
        }
        let mut kinds = Vec::new();
        let mut ok = true;
        for value in array.iter() {
            let parsed = match value.as_str() {
                Some(s) => s.parse::<MessageKind>().map_err(|e| e.to_string()),
                None => Err(format!("expected a string, found {}", value.type_name())),
            };
            match parsed {
                Ok(k) if kinds.contains(&k) => {
                    self.error("kinds", line, format!("kind `{k}` is listed twice"));
                    ok = false;
                }
                Ok(k) => kinds.push(k),
                Err(message) => {
                    self.error("kinds", line, message);
                    ok = false;
                }
            }
        }
        ok.then_some(kinds)
    }

    /// Reads, validates and links every field; `None` when anything was wrong (all recorded).
    pub(crate) fn compile(
        &mut self,
        domain: &str,
        names: &HashMap<String, String>,
    ) -> Option<Rule> {
        let name = self.required("name");
        if let Some((name, line)) = &name {
            self.name = Some(name.clone());
            if !valid_rule_name(name) {
                let msg =
                    format!("`{name}` is not a valid rule name: names match [a-z0-9][a-z0-9_-]*");
                self.error("name", *line, msg);
            }
            if let Some(first) = names.get(name) {
                self.error(
                    "name",
                    *line,
                    format!("rule name `{name}` is already used at {first}"),
                );
            }
        }
        for key in self
            .table
            .iter()
            .map(|(k, _)| k.to_string())
            .collect::<Vec<_>>()
        {
            if !FIELDS.contains(&key.as_str()) {
                let line = self.item(&key).map_or(self.line, |(_, l)| l);
                let hint = match closest(&key, &FIELDS) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => format!("known fields: {}", FIELDS.join(", ")),
                };
                self.error(&key, line, format!("unknown field `{key}` ({hint})"));
            }
        }
        let direction =
            self.required("direction")
                .and_then(|(text, line)| match text.parse::<Direction>() {
                    Ok(d) => Some((d, line)),
                    Err(e) => {
                        self.error("direction", line, e.to_string());
                        None
                    }
                });
        let jid = self.required("jid").and_then(|(text, line)| {
            let parsed = JidPattern::parse(&text, domain);
            parsed
                .map(|p| (p, text, line))
                .map_err(|e| self.error("jid", line, e))
                .ok()
        });
        let (peer_text, peer_line) = self
            .string("peer")
            .unwrap_or_else(|| (DEFAULT_PEER.to_string(), self.line));
        let peer = PeerPattern::parse(&peer_text)
            .map_err(|e| self.error("peer", peer_line, e))
            .ok();
        let topic =
            self.required("topic")
                .and_then(|(text, line)| match TopicTemplate::parse(&text) {
                    Ok(t) => Some((t, text, line)),
                    Err(messages) => {
                        messages
                            .into_iter()
                            .for_each(|m| self.error("topic", line, m));
                        None
                    }
                });
        let kinds = self.kinds();
        let qos = self.qos();
        let format = self.parsed("format", DEFAULT_FORMAT);
        let retain = self.boolean("retain");
        let anonymous = self.boolean("anonymous");
        let receipts = self.boolean_or("receipts", true);

        let (Some(direction), Some(format), Some(retain), Some(anonymous), Some(receipts)) =
            (direction, format, retain, anonymous, receipts)
        else {
            return None;
        };
        if !receipts.0 && direction.0 == Direction::XmppToMqtt {
            let msg = "receipts applies only to rules from MQTT (mqtt-to-xmpp, both)";
            self.error("receipts", receipts.1, msg);
        }
        self.check_options(direction, format, retain, anonymous);
        let (
            Some((name, _)),
            Some((jid, jid_text, jid_line)),
            Some(peer),
            Some((topic, topic_text, topic_line)),
        ) = (name, jid, peer, topic)
        else {
            return None;
        };
        if anonymous.0 && jid.uses_user() {
            let msg = "an anonymous publisher has no user name, so `jid` must not use {user}";
            self.error("anonymous", anonymous.1, msg);
        }
        if anonymous.0 && topic.user_level().is_some() {
            let msg = "an anonymous publisher has no user name, so `topic` must not use {user}";
            self.error("anonymous", anonymous.1, msg);
        }
        let lines = Lines {
            jid: jid_line,
            peer: peer_line,
            topic: topic_line,
        };
        let (jid, peer, topic) = self.link(direction.0, jid, peer, topic, lines)?;
        let (Some(kinds), Some(qos)) = (kinds, qos) else {
            return None;
        };
        if !self.errors.is_empty() {
            return None;
        }
        let text = PatternText {
            jid: jid_text,
            peer: peer_text,
            topic: topic_text,
        };
        Some(Rule {
            name,
            direction: direction.0,
            kinds,
            qos,
            format: format.0,
            retain: retain.0,
            anonymous: anonymous.0,
            receipts: receipts.0,
            file: self.file.to_path_buf(),
            line: self.line,
            jid,
            peer,
            topic,
            text,
        })
    }

    /// Options that make no sense for the rule's direction are errors rather than ignored,
    /// so a setting never silently does nothing.
    fn check_options(
        &mut self,
        direction: (Direction, usize),
        format: (PayloadFormat, usize),
        retain: (bool, usize),
        anonymous: (bool, usize),
    ) {
        let dir = direction.0;
        if format.0 == PayloadFormat::Xml && dir.mqtt_to_xmpp() {
            let msg = format!(
                "format `xml` is not accepted for {dir} rules: raw stanzas from MQTT clients \
                 could forge any stanza; use `text` or `json`"
            );
            self.error("format", format.1, msg);
        }
        if retain.0 && dir == Direction::MqttToXmpp {
            let msg = "retain applies only to rules that publish to MQTT (xmpp-to-mqtt, both)";
            self.error("retain", retain.1, msg);
        }
        if anonymous.0 && dir == Direction::XmppToMqtt {
            let msg = "anonymous applies only to rules from MQTT (mqtt-to-xmpp, both)";
            self.error("anonymous", anonymous.1, msg);
        }
    }

    /// Checks that every capture has one value in each direction the rule carries, and records
    /// where each value comes from.
    fn link(
        &mut self,
        direction: Direction,
        mut jid: JidPattern,
        mut peer: PeerPattern,
        mut topic: TopicTemplate,
        lines: Lines,
    ) -> Option<(JidPattern, PeerPattern, TopicTemplate)> {
        let before = self.errors.len();
        let mut names: Vec<&str> = jid.captures().map(|c| &*c.name).collect();
        for c in peer.captures() {
            if names.contains(&&*c.name) {
                let msg = format!(
                    "capture {{{}}} is already used in jid or peer; a capture appears once in \
                     jid and peer together",
                    c.name
                );
                self.error("peer", lines.peer, msg);
            }
            names.push(&c.name);
        }
        topic.bind(&jid, &peer);
        for c in jid.captures_mut() {
            c.level = topic.level_index(&c.name);
        }
        for c in peer.captures_mut() {
            c.level = topic.level_index(&c.name);
        }
        if direction.xmpp_to_mqtt() {
            let unbound: Vec<String> = topic.unbound().map(str::to_string).collect();
            for name in unbound {
                let msg = format!("capture {{{name}}} is not bound by jid or peer");
                self.error("topic", lines.topic, msg);
            }
        }
        if direction.mqtt_to_xmpp() {
            let missing: Vec<String> = peer
                .captures()
                .iter()
                .filter(|c| c.level.is_none())
                .map(|c| c.name.to_string())
                .collect();
            for name in missing {
                let msg = format!(
                    "capture {{{name}}} is not in topic, so the recipient cannot be taken from \
                     a publish"
                );
                self.error("peer", lines.peer, msg);
            }
            let missing: Vec<String> = jid
                .captures()
                .filter(|c| c.level.is_none() && *c.name != *USER)
                .map(|c| c.name.to_string())
                .collect();
            for name in missing {
                let msg = format!(
                    "capture {{{name}}} is not in topic, so the sender cannot be taken from a \
                     publish (only {{user}}, the MQTT user name, may be missing from topic)"
                );
                self.error("jid", lines.jid, msg);
            }
        }
        (self.errors.len() == before).then_some((jid, peer, topic))
    }
}

/// Lines of the pattern fields, for errors found while linking them.
struct Lines {
    jid: usize,
    peer: usize,
    topic: usize,
}

/// Rule names are `[a-z0-9][a-z0-9_-]*`: safe in logs, metrics labels and file names.
fn valid_rule_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}
