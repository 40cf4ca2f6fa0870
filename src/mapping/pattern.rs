//! Compiled patterns: the bridged JID (`jid`), the legacy-side JID (`peer`) and the MQTT topic
//! template (`topic`), each parsed once at load time into slots that are either a literal or a
//! `{capture}`. Matching compares slots in place, without allocating; rendering allocates only
//! the output string.

use xmpp_parsers::jid::{DomainPart, NodePart};

/// The built-in capture that stands for the bridge's component domain.
pub(crate) const DOMAIN: &str = "domain";
/// The built-in capture that stands for the authenticated MQTT user name.
pub(crate) const USER: &str = "user";

/// A `{name}` capture. `level` is the index of the topic level with the same name, when the
/// topic has one: that is where the MQTT→XMPP direction takes the capture's value from.
#[derive(Debug, Clone)]
pub(crate) struct Capture {
    pub(crate) name: Box<str>,
    pub(crate) level: Option<usize>,
}

/// One JID part or topic level: a literal (normalized, for JID parts) or a capture.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Literal(Box<str>),
    Capture(Capture),
}

/// How two patterns' sets of matched inputs relate; drives precedence and ambiguity checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overlap {
    /// No input matches both.
    Disjoint,
    /// The same inputs match both: the patterns are the same up to capture names.
    Equal,
    /// Every input of the first matches the second, not the reverse: the first is more specific.
    Narrower,
    /// The reverse of `Narrower`.
    Wider,
    /// Some inputs match both, and neither pattern is more specific than the other.
    Crossed,
}

impl Overlap {
    /// Combines the relations of two independent dimensions (e.g. `jid` and `peer`).
    pub(crate) fn and(self, other: Overlap) -> Overlap {
        use Overlap::*;
        match (self, other) {
            (Disjoint, _) | (_, Disjoint) => Disjoint,
            (Equal, x) | (x, Equal) => x,
            (Narrower, Narrower) => Narrower,
            (Wider, Wider) => Wider,
            _ => Crossed,
        }
    }
}

impl Slot {
    fn matches(&self, value: &str) -> bool {
        match self {
            Slot::Literal(l) => **l == *value,
            Slot::Capture(_) => !value.is_empty(),
        }
    }

    fn compare(&self, other: &Slot) -> Overlap {
        compare_slots(self.literal(), other.literal())
    }

    fn literal(&self) -> Option<&str> {
        match self {
            Slot::Literal(l) => Some(l),
            Slot::Capture(_) => None,
        }
    }

    fn is_literal(&self) -> bool {
        matches!(self, Slot::Literal(_))
    }

    pub(crate) fn capture(&self) -> Option<&Capture> {
        match self {
            Slot::Capture(c) => Some(c),
            Slot::Literal(_) => None,
        }
    }

    /// The pattern text of the inputs both slots match (the literal wins over a capture).
    fn meet(&self, other: &Slot) -> String {
        match (self, other) {
            (Slot::Literal(l), _) | (_, Slot::Literal(l)) => l.to_string(),
            (Slot::Capture(c), _) => format!("{{{}}}", c.name),
        }
    }
}

/// Compares two slots given as `Some(literal)` or `None` (a capture).
pub(crate) fn compare_slots(a: Option<&str>, b: Option<&str>) -> Overlap {
    match (a, b) {
        (Some(a), Some(b)) if a == b => Overlap::Equal,
        (Some(_), Some(_)) => Overlap::Disjoint,
        // A capture never matches an empty value, so an empty literal is outside it.
        (Some(""), None) | (None, Some("")) => Overlap::Disjoint,
        (Some(_), None) => Overlap::Narrower,
        (None, Some(_)) => Overlap::Wider,
        (None, None) => Overlap::Equal,
    }
}

/// One piece of pattern text as written: a literal or a whole `{capture}`.
pub(crate) enum Piece<'a> {
    Literal(&'a str),
    Capture(&'a str),
}

/// Splits `text` (one JID part or topic level) into a literal or a whole capture. `what` names
/// the unit for messages ("topic level", "localpart", ...).
pub(crate) fn piece<'a>(text: &'a str, what: &str) -> Result<Piece<'a>, String> {
    if !text.contains(['{', '}']) {
        return Ok(Piece::Literal(text));
    }
    let mut depth = 0usize;
    let mut captures = 0usize;
    for c in text.chars() {
        match c {
            '{' if depth > 0 => return Err(format!("nested `{{` in `{text}`")),
            '{' => depth = 1,
            '}' if depth == 0 => return Err(format!("unmatched `}}` in `{text}`")),
            '}' => {
                depth = 0;
                captures += 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(format!("unclosed `{{` in `{text}`"));
    }
    let inner = text.strip_prefix('{').and_then(|t| t.strip_suffix('}'));
    match inner {
        Some(name) if captures == 1 => {
            check_capture_name(name)?;
            Ok(Piece::Capture(name))
        }
        _ => Err(format!(
            "a capture must be a whole {what}, found `{text}` (write e.g. `{{name}}` alone)"
        )),
    }
}

/// Capture names are `[a-z_][a-z0-9_]*`, so they read the same in every file and message.
fn check_capture_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(())
    } else if name.is_empty() {
        Err("empty capture `{}`".to_string())
    } else {
        Err(format!(
            "invalid capture name `{name}`: names match [a-z_][a-z0-9_]*"
        ))
    }
}

pub(crate) fn reserved_domain(name: &str, field: &str) -> String {
    format!(
        "{{{name}}} is the bridge domain; it may only stand as the domain of `jid`, not in {field}"
    )
}

/// Validates and normalizes a literal localpart (nodeprep: `Alice` becomes `alice`), since
/// the JIDs the XMPP side hands over are normalized the same way.
fn literal_node(text: &str) -> Result<Box<str>, String> {
    NodePart::new(text)
        .map(|n| Box::from(n.as_str()))
        .map_err(|e| format!("`{text}` is not a valid JID localpart: {e}"))
}

fn literal_domain(text: &str) -> Result<Box<str>, String> {
    DomainPart::new(text)
        .map(|d| Box::from(d.as_str()))
        .map_err(|e| format!("`{text}` is not a valid JID domain: {e}"))
}

/// A JID part pattern: a literal, validated with `check`, or a capture (not `{domain}`).
fn part_slot(
    text: &str,
    what: &str,
    field: &str,
    check: fn(&str) -> Result<Box<str>, String>,
) -> Result<Slot, String> {
    match piece(text, what)? {
        Piece::Capture(DOMAIN) => Err(reserved_domain(DOMAIN, field)),
        Piece::Capture(name) => Ok(Slot::Capture(Capture {
            name: name.into(),
            level: None,
        })),
        Piece::Literal(l) => check(l).map(Slot::Literal),
    }
}

/// The `jid` pattern: `localpart@{domain}`, the localpart a literal or a capture.
#[derive(Debug, Clone)]
pub(crate) struct JidPattern {
    pub(crate) node: Slot,
}

impl JidPattern {
    pub(crate) fn parse(text: &str, domain: &str) -> Result<JidPattern, String> {
        if text.contains('/') {
            return Err(format!(
                "`{text}` has a resource; a bridged JID is a bare JID"
            ));
        }
        let Some((node, dom)) = text.split_once('@') else {
            return Err(format!(
                "`{text}` must be `localpart@{{domain}}`, e.g. `{{user}}@{{domain}}`"
            ));
        };
        if dom.contains('@') {
            return Err(format!("`{text}` has more than one `@`"));
        }
        if dom != "{domain}" {
            return Err(format!(
                "the domain must be `{{domain}}` (the bridge domain `{domain}`), found `{dom}`"
            ));
        }
        if node.is_empty() {
            return Err(format!("`{text}` has an empty localpart"));
        }
        Ok(JidPattern {
            node: part_slot(node, "localpart", "`jid`'s localpart", literal_node)?,
        })
    }

    pub(crate) fn matches(&self, node: &str) -> bool {
        self.node.matches(node)
    }

    pub(crate) fn compare(&self, other: &JidPattern) -> Overlap {
        self.node.compare(&other.node)
    }

    pub(crate) fn score(&self) -> u32 {
        u32::from(self.node.is_literal())
    }

    pub(crate) fn uses_user(&self) -> bool {
        self.node.capture().is_some_and(|c| *c.name == *USER)
    }

    pub(crate) fn captures(&self) -> impl Iterator<Item = &Capture> {
        self.node.capture().into_iter()
    }

    pub(crate) fn captures_mut(&mut self) -> impl Iterator<Item = &mut Capture> {
        match &mut self.node {
            Slot::Capture(c) => Some(c),
            Slot::Literal(_) => None,
        }
        .into_iter()
    }

    pub(crate) fn meet(&self, other: &JidPattern) -> String {
        format!("{}@{{domain}}", self.node.meet(&other.node))
    }
}

/// The `peer` pattern: the legacy-side JID.
#[derive(Debug, Clone)]
pub(crate) enum PeerPattern {
    /// `{peer}`: one capture for a whole bare JID, with or without a localpart.
    Whole(Capture),
    /// `localpart@domain` (each a literal or a capture), or a literal domain alone
    /// (`node` is `None`, `domain` a literal), e.g. a server's own JID sending headlines.
    Parts { node: Option<Slot>, domain: Slot },
}

/// A legacy-side bare JID split once per lookup, so that every rule compares slices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerInput<'a> {
    pub(crate) whole: &'a str,
    pub(crate) node: Option<&'a str>,
    pub(crate) domain: &'a str,
}

impl<'a> PeerInput<'a> {
    /// Splits a bare JID; `None` when it has a resource, an empty part or several `@`. The
    /// JID is otherwise trusted: the XMPP side parsed and normalized it.
    pub(crate) fn split(jid: &'a str) -> Option<PeerInput<'a>> {
        if super::contains_byte(jid, b'/') {
            return None;
        }
        let (node, domain) = match super::split_once_byte(jid, b'@') {
            Some((n, d)) if !n.is_empty() && !super::contains_byte(d, b'@') => (Some(n), d),
            Some(_) => return None,
            None => (None, jid),
        };
        (!domain.is_empty()).then_some(PeerInput {
            whole: jid,
            node,
            domain,
        })
    }
}

impl PeerPattern {
    pub(crate) fn parse(text: &str) -> Result<PeerPattern, String> {
        if text.contains('/') {
            return Err(format!("`{text}` has a resource; the peer is a bare JID"));
        }
        let field = "`peer`";
        let Some((node, domain)) = text.split_once('@') else {
            return match piece(text, "JID")? {
                Piece::Capture(DOMAIN) => Err(reserved_domain(DOMAIN, field)),
                Piece::Capture(name) => Ok(PeerPattern::Whole(Capture {
                    name: name.into(),
                    level: None,
                })),
                Piece::Literal(l) => Ok(PeerPattern::Parts {
                    node: None,
                    domain: Slot::Literal(literal_domain(l)?),
                }),
            };
        };
        if domain.contains('@') {
            return Err(format!("`{text}` has more than one `@`"));
        }
        if node.is_empty() {
            return Err(format!("`{text}` has an empty localpart"));
        }
        let node = part_slot(node, "localpart", field, literal_node)?;
        let domain = part_slot(domain, "domain", field, literal_domain)?;
        Ok(PeerPattern::Parts {
            node: Some(node),
            domain,
        })
    }

    pub(crate) fn matches(&self, p: &PeerInput<'_>) -> bool {
        match self {
            PeerPattern::Whole(_) => true,
            PeerPattern::Parts { node: None, domain } => {
                p.node.is_none() && domain.matches(p.domain)
            }
            PeerPattern::Parts {
                node: Some(n),
                domain,
            } => p.node.is_some_and(|v| n.matches(v)) && domain.matches(p.domain),
        }
    }

    pub(crate) fn compare(&self, other: &PeerPattern) -> Overlap {
        use PeerPattern::*;
        match (self, other) {
            (Whole(_), Whole(_)) => Overlap::Equal,
            (Whole(_), Parts { .. }) => Overlap::Wider,
            (Parts { .. }, Whole(_)) => Overlap::Narrower,
            (
                Parts {
                    node: n1,
                    domain: d1,
                },
                Parts {
                    node: n2,
                    domain: d2,
                },
            ) => {
                let node = match (n1, n2) {
                    (None, None) => Overlap::Equal,
                    (Some(a), Some(b)) => a.compare(b),
                    _ => Overlap::Disjoint,
                };
                node.and(d1.compare(d2))
            }
        }
    }

    /// Higher for more specific patterns: strictly narrower patterns score strictly higher.
    pub(crate) fn score(&self) -> u32 {
        match self {
            PeerPattern::Whole(_) => 0,
            PeerPattern::Parts { node, domain } => {
                1 + node.as_ref().map_or(0, |n| u32::from(n.is_literal()))
                    + u32::from(domain.is_literal())
            }
        }
    }

    pub(crate) fn captures(&self) -> Vec<&Capture> {
        match self {
            PeerPattern::Whole(c) => vec![c],
            PeerPattern::Parts { node, domain } => node
                .iter()
                .chain([domain])
                .filter_map(Slot::capture)
                .collect(),
        }
    }

    pub(crate) fn captures_mut(&mut self) -> Vec<&mut Capture> {
        match self {
            PeerPattern::Whole(c) => vec![c],
            PeerPattern::Parts { node, domain } => node
                .iter_mut()
                .chain([domain])
                .filter_map(|s| match s {
                    Slot::Capture(c) => Some(c),
                    Slot::Literal(_) => None,
                })
                .collect(),
        }
    }

    pub(crate) fn meet(&self, other: &PeerPattern) -> String {
        match (self, other) {
            (PeerPattern::Whole(c), PeerPattern::Whole(_)) => format!("{{{}}}", c.name),
            (PeerPattern::Whole(_), p) | (p, PeerPattern::Whole(_)) => p.meet(p),
            (
                PeerPattern::Parts {
                    node: n1,
                    domain: d1,
                },
                PeerPattern::Parts {
                    node: n2,
                    domain: d2,
                },
            ) => match (n1, n2) {
                (Some(a), Some(b)) => format!("{}@{}", a.meet(b), d1.meet(d2)),
                _ => d1.meet(d2),
            },
        }
    }
}

/// The value a `jid`/`peer` capture takes from a topic level in the MQTT→XMPP direction.
pub(crate) fn level_of(topic: &str, index: usize) -> &str {
    super::topic_levels(topic).nth(index).unwrap_or("")
}

/// Whether a user-derived localpart is valid *and* already normalized. Why exact: if `Alice` and `alice` were both accepted as `alice@…`,
/// two MQTT accounts would speak as one JID.
pub(crate) fn exact_node(value: &str) -> bool {
    // Compare, not `Cow::Borrowed`: stringprep returns owned strings for non-ASCII input even
    // when nothing changed.
    NodePart::new(value).is_ok_and(|n| n.as_str() == value)
}
