//! MQTT topic templates: a topic name whose levels are literals or whole-level `{captures}`.
//!
//! Why whole levels only: a level is the unit MQTT filters and ACLs work on (`users/+/inbox`),
//! and a capture that is a whole level can be escaped and unescaped without ambiguity. A
//! template like `user-{id}` would need a second escaping scheme inside the level.

use super::escape::escape_into;
use super::pattern::{DOMAIN, JidPattern, Overlap, PeerInput, PeerPattern, Piece, USER};
use super::pattern::{compare_slots, piece, reserved_domain};

/// Longest topic name MQTT can carry [MQTT-4.7.3-3].
const MAX_TOPIC_BYTES: usize = 65_535;

/// Where a topic capture's value comes from in the XMPP→MQTT direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// The localpart of the bridged JID (`jid = "{user}@{domain}"`).
    JidNode,
    /// The whole legacy JID (`peer = "{peer}"`).
    PeerWhole,
    /// The legacy JID's localpart (`peer = "{nick}@example.org"`).
    PeerNode,
    /// The legacy JID's domain (`peer = "{nick}@{server}"`).
    PeerDomain,
}

/// One level of a template.
#[derive(Debug, Clone)]
pub(crate) enum Level {
    Literal(Box<str>),
    /// `bound` is `None` when neither `jid` nor `peer` has the capture; such a rule is valid
    /// only for the MQTT→XMPP direction, where the value comes from the topic.
    Capture {
        name: Box<str>,
        bound: Option<Bound>,
    },
}

impl Level {
    fn literal(&self) -> Option<&str> {
        match self {
            Level::Literal(l) => Some(l),
            Level::Capture { .. } => None,
        }
    }
}

/// A compiled `topic` template.
#[derive(Debug, Clone)]
pub(crate) struct TopicTemplate {
    levels: Vec<Level>,
}

impl TopicTemplate {
    /// Parses and validates a template; every problem is reported, one message per problem.
    pub(crate) fn parse(text: &str) -> Result<TopicTemplate, Vec<String>> {
        if text.is_empty() {
            return Err(vec![
                "the topic must not be empty [MQTT-4.7.3-1]".to_string(),
            ]);
        }
        let mut errors = Vec::new();
        if text.len() > MAX_TOPIC_BYTES {
            errors.push(format!(
                "the topic is longer than {MAX_TOPIC_BYTES} bytes [MQTT-4.7.3-3]"
            ));
        }
        if text.contains('\0') {
            errors.push("the topic contains U+0000 [MQTT-4.7.3-2]".to_string());
        }
        let mut levels: Vec<Level> = Vec::new();
        for (i, level) in text.split('/').enumerate() {
            if level.contains(['+', '#']) {
                errors.push(format!(
                    "level `{level}`: wildcards `+` and `#` are not allowed in a topic template \
                     [MQTT-3.3.2-2]; use a capture such as `{{id}}` for a whole level"
                ));
                continue;
            }
            match piece(level, "topic level") {
                Ok(Piece::Literal(l)) => {
                    if i == 0 && l.starts_with('$') {
                        errors.push(format!(
                            "`{l}`: topics starting with `$` are reserved for the broker"
                        ));
                    }
                    levels.push(Level::Literal(l.into()));
                }
                Ok(Piece::Capture(DOMAIN)) => errors.push(reserved_domain(DOMAIN, "`topic`")),
                Ok(Piece::Capture(name)) => {
                    if levels
                        .iter()
                        .any(|l| matches!(l, Level::Capture { name: n, .. } if **n == *name))
                    {
                        errors.push(format!("capture {{{name}}} appears twice"));
                    }
                    levels.push(Level::Capture {
                        name: name.into(),
                        bound: None,
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(TopicTemplate { levels })
        } else {
            Err(errors)
        }
    }

    /// Records, for each capture, which part of the XMPP addresses fills it.
    pub(crate) fn bind(&mut self, jid: &JidPattern, peer: &PeerPattern) {
        for level in &mut self.levels {
            let Level::Capture { name, bound } = level else {
                continue;
            };
            let is = |c: Option<&super::pattern::Capture>| c.is_some_and(|c| c.name == *name);
            *bound = if jid.captures().any(|c| c.name == *name) {
                Some(Bound::JidNode)
            } else {
                match peer {
                    PeerPattern::Whole(c) if is(Some(c)) => Some(Bound::PeerWhole),
                    PeerPattern::Parts { node: Some(n), .. } if is(n.capture()) => {
                        Some(Bound::PeerNode)
                    }
                    PeerPattern::Parts { domain, .. } if is(domain.capture()) => {
                        Some(Bound::PeerDomain)
                    }
                    _ => None,
                }
            };
        }
    }

    pub(crate) fn level_count(&self) -> usize {
        self.levels.len()
    }

    /// The index of the level that is capture `name`.
    pub(crate) fn level_index(&self, name: &str) -> Option<usize> {
        self.levels
            .iter()
            .position(|l| matches!(l, Level::Capture { name: n, .. } if **n == *name))
    }

    /// The index of the `{user}` level, whose value must be the publisher's user name.
    pub(crate) fn user_level(&self) -> Option<usize> {
        self.level_index(USER)
    }

    /// Names of the captures that `jid`/`peer` do not fill.
    pub(crate) fn unbound(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture { name, bound: None } => Some(&**name),
            _ => None,
        })
    }

    /// Whether `topic` (with `level_count()` levels, checked by the caller) matches. Captures
    /// match any non-empty level; literals match exactly (no unescaping).
    pub(crate) fn matches(&self, topic: &str) -> bool {
        let mut parts = super::topic_levels(topic);
        self.levels.iter().all(|l| match (l, parts.next()) {
            (Level::Literal(lit), Some(v)) => **lit == *v,
            (Level::Capture { .. }, Some(v)) => !v.is_empty(),
            (_, None) => false,
        }) && parts.next().is_none()
    }

    /// Renders the topic for an XMPP→MQTT message; `None` when a capture is unbound (not
    /// possible for a validated xmpp-to-mqtt rule) or the result is longer than MQTT allows.
    pub(crate) fn render(&self, jid_node: &str, peer: &PeerInput<'_>) -> Option<String> {
        let mut out = String::with_capacity(self.levels.len() * 16 + peer.whole.len());
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match level {
                Level::Literal(l) => out.push_str(l),
                Level::Capture { bound, .. } => {
                    let value = match (*bound)? {
                        Bound::JidNode => jid_node,
                        Bound::PeerWhole => peer.whole,
                        Bound::PeerNode => peer.node?,
                        Bound::PeerDomain => peer.domain,
                    };
                    escape_into(value, &mut out);
                }
            }
        }
        (out.len() <= MAX_TOPIC_BYTES).then_some(out)
    }

    /// The subscription filter: each capture becomes `+`.
    pub(crate) fn filter(&self) -> String {
        let levels: Vec<&str> = self
            .levels
            .iter()
            .map(|l| l.literal().unwrap_or("+"))
            .collect();
        levels.join("/")
    }

    pub(crate) fn compare(&self, other: &TopicTemplate) -> Overlap {
        if self.levels.len() != other.levels.len() {
            return Overlap::Disjoint;
        }
        self.levels
            .iter()
            .zip(&other.levels)
            .fold(Overlap::Equal, |acc, (a, b)| {
                acc.and(compare_slots(a.literal(), b.literal()))
            })
    }

    /// Number of literal levels: a strictly narrower template has strictly more.
    pub(crate) fn score(&self) -> u32 {
        self.levels.iter().filter(|l| l.literal().is_some()).count() as u32
    }

    /// The template of the topics both match (literals win over captures).
    pub(crate) fn meet(&self, other: &TopicTemplate) -> String {
        let levels: Vec<String> = self
            .levels
            .iter()
            .zip(&other.levels)
            .map(|(a, b)| match (a, b) {
                (Level::Literal(l), _) | (_, Level::Literal(l)) => l.to_string(),
                (Level::Capture { name, .. }, _) => format!("{{{name}}}"),
            })
            .collect();
        levels.join("/")
    }
}
