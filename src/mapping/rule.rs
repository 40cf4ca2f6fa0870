//! A compiled rule and the MQTT→XMPP resolution of sender and recipient.

use std::borrow::Cow;
use std::path::PathBuf;

use xmpp_parsers::jid::BareJid;

use super::escape::unescape;
use super::pattern::{JidPattern, PeerPattern, Slot, USER, exact_node, level_of};
use super::topic::TopicTemplate;
use super::{Direction, MessageKind, PayloadFormat, Refusal, ToXmpp, without_final_dot};

/// One validated mapping rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique across all files; names the rule in errors, logs and audit records.
    pub name: String,
    /// Which way the rule carries messages.
    pub direction: Direction,
    /// XMPP → MQTT: the message types the rule accepts. MQTT → XMPP: the types it may send,
    /// the first being the default. Never empty.
    pub kinds: Vec<MessageKind>,
    /// XMPP → MQTT: the QoS of the publish. MQTT → XMPP: the QoS of the bridge's subscription.
    pub qos: u8,
    /// How the message is carried in the payload; never `Xml` for rules from MQTT.
    pub format: PayloadFormat,
    /// XMPP → MQTT: publish with the retain flag (e.g. the latest headline for late joiners).
    pub retain: bool,
    /// MQTT → XMPP: whether unauthenticated clients may publish through this rule.
    pub anonymous: bool,
    /// MQTT → XMPP: ask the XMPP recipient for a delivery receipt (XEP-0184) and mark the
    /// message with an origin id (XEP-0359). On by default.
    pub receipts: bool,
    /// The file the rule was read from.
    pub file: PathBuf,
    /// 1-based line of the rule's `[[rule]]` header.
    pub line: usize,
    pub(crate) jid: JidPattern,
    pub(crate) peer: PeerPattern,
    pub(crate) topic: TopicTemplate,
    /// The patterns as written, for `describe` and operators' tools.
    pub(crate) text: PatternText,
}

/// The three patterns as the operator wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatternText {
    pub(crate) jid: String,
    pub(crate) peer: String,
    pub(crate) topic: String,
}

// Compiled patterns are derived from `text`, so comparing the text compares the patterns.
impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.name == other.name
            && self.direction == other.direction
            && self.kinds == other.kinds
            && self.qos == other.qos
            && self.format == other.format
            && self.retain == other.retain
            && self.anonymous == other.anonymous
            && self.receipts == other.receipts
            && self.file == other.file
            && self.line == other.line
            && self.text == other.text
    }
}

impl Eq for Rule {}

impl Rule {
    /// The `jid` pattern as written, e.g. `{user}@{domain}`.
    pub fn jid_pattern(&self) -> &str {
        &self.text.jid
    }

    /// The `peer` pattern as written, e.g. `{peer}`.
    pub fn peer_pattern(&self) -> &str {
        &self.text.peer
    }

    /// The `topic` template as written, e.g. `users/{user}/inbox/{peer}`.
    pub fn topic_template(&self) -> &str {
        &self.text.topic
    }

    /// `file:line`, for messages naming the rule.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    pub(crate) fn xmpp_score(&self) -> u32 {
        self.jid.score() + self.peer.score()
    }

    pub(crate) fn mqtt_score(&self) -> u32 {
        self.topic.score()
    }

    /// Steps 1–4 of the MQTT → XMPP direction (module docs) for a topic this rule matches.
    pub(crate) fn resolve<'a>(
        &'a self,
        topic: &str,
        user: Option<&str>,
        domain: &str,
    ) -> Result<ToXmpp<'a>, Refusal> {
        let capture = |index: usize| capture(topic, index);
        let invalid = |jid: String| Refusal::InvalidJid {
            jid,
            rule: self.name.clone(),
        };

        // 1–2: identity.
        match user {
            None if !self.anonymous => {
                return Err(Refusal::Anonymous {
                    rule: self.name.clone(),
                });
            }
            None => {}
            Some(user) => {
                if let Some(index) = self.topic.user_level() {
                    let topic_user = capture(index)?;
                    if topic_user != user {
                        return Err(Refusal::NotYourTopic {
                            user: user.to_string(),
                            topic_user: topic_user.into_owned(),
                            rule: self.name.clone(),
                        });
                    }
                }
            }
        }

        // 3: the sender, exactly as derived (no normalization).
        let node: Cow<'_, str> = match &self.jid.node {
            Slot::Literal(l) => Cow::Borrowed(l),
            Slot::Capture(c) if *c.name == *USER => match user {
                Some(u) => Cow::Borrowed(u),
                // Load time forbids {user} in `jid` of anonymous rules.
                None => {
                    return Err(Refusal::Anonymous {
                        rule: self.name.clone(),
                    });
                }
            },
            // Load time guarantees the capture is in the topic.
            Slot::Capture(c) => capture(c.level.ok_or(Refusal::NoRule)?)?,
        };
        let from = join_at(&node, domain);
        if !exact_node(&node) {
            return Err(invalid(from));
        }

        // 4: the recipient, validated and normalized.
        let part = |slot| slot_value(slot, topic);
        let raw_to = match &self.peer {
            PeerPattern::Whole(c) => capture(c.level.ok_or(Refusal::NoRule)?)?.into_owned(),
            PeerPattern::Parts {
                node: Some(n),
                domain,
            } => join_at(&part(n)?, &part(domain)?),
            PeerPattern::Parts { node: None, domain } => part(domain)?.into_owned(),
        };
        // The final dot of a domain is dropped, as toward MQTT, so the dotted topic reaches
        // the same JID.
        let Some(to) = RECIPIENTS.with_borrow_mut(|known| known.normalized(&raw_to)) else {
            return Err(invalid(raw_to));
        };
        Ok(ToXmpp {
            rule: self,
            from,
            to,
        })
    }
}

/// `node@domain`, without the formatting machinery (this runs for every bridged publish).
fn join_at(node: &str, domain: &str) -> String {
    let mut s = String::with_capacity(node.len() + 1 + domain.len());
    s.push_str(node);
    s.push('@');
    s.push_str(domain);
    s
}

/// How many recipients [`Recipients`] keeps.
const CACHED_RECIPIENTS: usize = 8;

thread_local! {
    /// Per thread (the router runs on one): no lock on the path of every publish.
    static RECIPIENTS: std::cell::RefCell<Recipients> = std::cell::RefCell::default();
}

/// The last few valid recipients, as written in topics, with their normalized form: the same
/// few peers come again and again, and normalizing a JID (nodeprep, IDNA) costs several times
/// more than comparing its text. The cache changes no result: the normalized form is a
/// function of the text, and only valid recipients are kept.
#[derive(Debug, Default)]
struct Recipients {
    slots: [Option<(Box<str>, Box<str>)>; CACHED_RECIPIENTS],
    /// The slot to replace next (oldest first).
    next: usize,
}

impl Recipients {
    /// `raw` as a bare JID, normalized and without a final dot; `None` when it is not valid.
    fn normalized(&mut self, raw: &str) -> Option<String> {
        for (text, jid) in self.slots.iter().flatten() {
            if **text == *raw {
                return Some(jid.to_string());
            }
        }
        let jid = BareJid::new(raw).ok()?;
        let to = without_final_dot(jid.as_str())?;
        self.slots[self.next] = Some((raw.into(), to.into()));
        self.next = (self.next + 1) % CACHED_RECIPIENTS;
        Some(to.to_string())
    }
}

/// The unescaped value of the topic's level `index`.
fn capture(topic: &str, index: usize) -> Result<Cow<'_, str>, Refusal> {
    let level = level_of(topic, index);
    unescape(level).ok_or_else(|| Refusal::BadEscape {
        level: level.to_string(),
    })
}

/// A `peer` part: its literal, or the topic level it captures.
fn slot_value<'s>(slot: &'s Slot, topic: &'s str) -> Result<Cow<'s, str>, Refusal> {
    match slot {
        Slot::Literal(l) => Ok(Cow::Borrowed(l)),
        // Load time guarantees that a `peer` capture of an mqtt-to-xmpp rule is in the topic.
        Slot::Capture(c) => capture(topic, c.level.ok_or(Refusal::NoRule)?),
    }
}

/// The rules as an aligned text table, one line per rule.
pub(crate) fn describe(rules: &[Rule]) -> String {
    const HEADER: [&str; 10] = [
        "NAME",
        "DIRECTION",
        "JID",
        "PEER",
        "TOPIC",
        "KINDS",
        "QOS",
        "FORMAT",
        "FLAGS",
        "SOURCE",
    ];
    let rows: Vec<[String; 10]> = rules
        .iter()
        .map(|r| {
            let kinds: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
            let no_receipts = !r.receipts && r.direction.mqtt_to_xmpp();
            let flags: Vec<&str> = [
                (r.retain, "retain"),
                (r.anonymous, "anonymous"),
                (no_receipts, "no-receipts"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            [
                r.name.clone(),
                r.direction.as_str().to_string(),
                r.text.jid.clone(),
                r.text.peer.clone(),
                r.text.topic.clone(),
                kinds.join(","),
                r.qos.to_string(),
                r.format.as_str().to_string(),
                if flags.is_empty() {
                    "-".to_string()
                } else {
                    flags.join(",")
                },
                r.location(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = w - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
