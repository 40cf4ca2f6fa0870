//! The access control list (`[broker] acl_file`): which topics a client may publish to and
//! subscribe to. The syntax follows Mosquitto's `acl_file`, so existing files carry over:
//!
//! ```text
//! # Comment lines and blank lines are ignored.
//! topic read public/#            # before any `user` line: clients without a user name
//! user alice                     # the `topic` lines below apply to user alice
//! topic readwrite home/alice/#
//! topic write alerts/+           # ACCESS is read, write or readwrite; none means readwrite
//! pattern read devices/%c/cmd    # every client; %c = client id, %u = user name
//! pattern write devices/%u/+/state
//! ```
//!
//! Once an ACL is configured, whatever it does not grant is denied. PUBLISH needs `write` on
//! the topic name; SUBSCRIBE needs `read` on an ACL filter that covers the whole subscription
//! filter (`a/#` covers `a/b/+`, but `a/+` does not cover `a/#`), so a granted subscription
//! can never deliver a message the ACL does not allow. A `$share/{group}/` prefix is left out
//! before the check. As with Mosquitto, `%u` and `%c` never match a user name or client id
//! that contains `+`, `#` or `/`, so a client cannot name itself into another's topics.
//! The bridge's in-process session is not subject to the ACL (see `router`).

use std::fmt;
use std::path::{Path, PathBuf};

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribe.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }
}

/// A rule's topic filter, split into levels once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    levels: Vec<String>,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// `topic` lines before any `user` line: clients without a user name.
    anonymous: Vec<Rule>,
    /// `topic` lines after `user NAME`, by user name.
    users: std::collections::HashMap<String, Vec<Rule>>,
    /// `pattern` lines, with `%u` and `%c` still in them: every client.
    patterns: Vec<Rule>,
}

/// A line of the ACL file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file cannot be read.
    #[error("cannot read ACL file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is invalid.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl Acl {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Acl::parse(&text).map_err(|(line, message)| AclError::Syntax {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses ACL text; the error is the 1-based line number and what is wrong there.
    pub fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(content);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err((line, "`user` needs a user name".to_string()));
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|m| (line, format!("{keyword}: {m}")))?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(name) = &user {
                        acl.users.entry(name.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => {
                    return Err((
                        line,
                        format!("unknown keyword `{other}`; expected `user`, `topic` or `pattern`"),
                    ));
                }
            }
        }
        Ok(acl)
    }

    /// Whether a client may publish to `topic`.
    pub fn may_publish(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        let topic: Vec<&str> = topic.split('/').collect();
        self.allowed(user, client_id, Access::Write, |rule| {
            filter_matches(rule, &topic)
        })
    }

    /// Whether a client may subscribe to `filter` (a `$share/{group}/` prefix is removed).
    pub fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        let filter = crate::broker::topic::parse_shared(filter).map_or(filter, |s| s.filter);
        let filter: Vec<&str> = filter.split('/').collect();
        self.allowed(user, client_id, Access::Read, |rule| {
            filter_covers(rule, &filter)
        })
    }

    fn allowed(
        &self,
        user: Option<&str>,
        client_id: &str,
        wanted: Access,
        test: impl Fn(&[&str]) -> bool,
    ) -> bool {
        let plain = match user {
            Some(name) => self.users.get(name).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        if plain
            .iter()
            .any(|r| r.access.allows(wanted) && test(&levels(r)))
        {
            return true;
        }
        self.patterns.iter().any(|r| {
            r.access.allows(wanted)
                && substitute(&r.levels, user, client_id).is_some_and(|levels| {
                    test(&levels.iter().map(String::as_str).collect::<Vec<_>>())
                })
        })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        })
    }
}

fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

/// `[read|write|readwrite] FILTER`.
fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, after) = split_word(rest);
    let (access, filter) = match first {
        "read" => (Access::Read, after),
        "write" => (Access::Write, after),
        "readwrite" => (Access::ReadWrite, after),
        "deny" => return Err("`deny` rules are not supported; leave the topic out".to_string()),
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("a topic filter is needed".to_string());
    }
    // Mosquitto allows spaces inside the topic; so does MQTT. Only the ends are trimmed.
    let check = filter.replace("%u", "u").replace("%c", "c");
    crate::broker::topic::validate_topic_filter(&check)
        .map_err(|e| format!("`{filter}` is not a valid topic filter: {e}"))?;
    Ok(Rule {
        access,
        levels: filter.split('/').map(str::to_string).collect(),
    })
}

/// A pattern's levels with `%u` and `%c` replaced; `None` when the pattern names a value the
/// client does not have, or one that could widen the filter.
fn substitute(levels: &[String], user: Option<&str>, client_id: &str) -> Option<Vec<String>> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['+', '#', '/']);
    let mut out = Vec::with_capacity(levels.len());
    for level in levels {
        let mut level = level.clone();
        if level.contains("%u") {
            let name = user.filter(|u| safe(u))?;
            level = level.replace("%u", name);
        }
        if level.contains("%c") {
            if !safe(client_id) {
                return None;
            }
            level = level.replace("%c", client_id);
        }
        out.push(level);
    }
    Some(out)
}

/// Whether the ACL filter `rule` matches the topic name `topic` (MQTT matching: `+` one
/// level, `#` the rest; a wildcard first level does not match a `$` topic).
fn filter_matches(rule: &[&str], topic: &[&str]) -> bool {
    if topic.first().is_some_and(|t| t.starts_with('$'))
        && rule.first().is_some_and(|r| *r == "+" || *r == "#")
    {
        return false;
    }
    let mut i = 0;
    for level in rule {
        match *level {
            "#" => return true,
            "+" if i < topic.len() => {}
            literal if topic.get(i) == Some(&literal) => {}
            _ => return false,
        }
        i += 1;
    }
    i == topic.len()
}

/// Whether every topic the subscription filter `sub` matches is matched by the ACL filter
/// `rule`.
fn filter_covers(rule: &[&str], sub: &[&str]) -> bool {
    // A rule starting with a wildcard does not match `$` topics, so it does not cover a
    // subscription to them either.
    if sub.first().is_some_and(|t| t.starts_with('$'))
        && rule.first().is_some_and(|r| *r == "+" || *r == "#")
    {
        return false;
    }
    let mut i = 0;
    for level in rule {
        match *level {
            "#" => return true,
            "+" => match sub.get(i) {
                Some(&"#") | None => return false,
                Some(_) => {}
            },
            literal => match sub.get(i) {
                Some(s) if *s == literal => {}
                _ => return false,
            },
        }
        i += 1;
    }
    i == sub.len()
}

fn levels(rule: &Rule) -> Vec<&str> {
    rule.levels.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FILE: &str = "\
# Public read for anonymous clients
topic read public/#

user alice
topic readwrite home/alice/#
topic write alerts/+
topic sensors/+/temp

user bob
topic read home/alice/status

pattern read devices/%c/cmd
pattern write devices/%u/+/state
";

    fn acl() -> Acl {
        Acl::parse(FILE).unwrap()
    }

    #[test]
    fn topic_rules_belong_to_their_user() {
        let acl = acl();
        assert!(acl.may_publish(Some("alice"), "c1", "home/alice/lamp"));
        assert!(acl.may_subscribe(Some("alice"), "c1", "home/alice/#"));
        assert!(!acl.may_publish(Some("bob"), "c2", "home/alice/lamp"));
        assert!(acl.may_subscribe(Some("bob"), "c2", "home/alice/status"));
        assert!(!acl.may_publish(Some("bob"), "c2", "home/alice/status"));
        assert!(!acl.may_subscribe(Some("mallory"), "c3", "home/alice/#"));
    }

    #[test]
    fn anonymous_rules_apply_only_without_a_user_name() {
        let acl = acl();
        assert!(acl.may_subscribe(None, "c", "public/news"));
        assert!(acl.may_subscribe(None, "c", "public/#"));
        assert!(!acl.may_publish(None, "c", "public/news"));
        assert!(!acl.may_subscribe(Some("alice"), "c", "public/news"));
    }

    #[test]
    fn access_levels() {
        let acl = acl();
        assert!(acl.may_publish(Some("alice"), "c", "alerts/fire"));
        assert!(!acl.may_subscribe(Some("alice"), "c", "alerts/fire"));
        // No access word means readwrite.
        assert!(acl.may_publish(Some("alice"), "c", "sensors/k/temp"));
        assert!(acl.may_subscribe(Some("alice"), "c", "sensors/+/temp"));
    }

    #[test]
    fn patterns_substitute_user_and_client_id() {
        let acl = acl();
        assert!(acl.may_subscribe(Some("x"), "dev7", "devices/dev7/cmd"));
        assert!(!acl.may_subscribe(Some("x"), "dev7", "devices/dev8/cmd"));
        assert!(acl.may_publish(Some("carol"), "any", "devices/carol/3/state"));
        assert!(!acl.may_publish(Some("carol"), "any", "devices/dave/3/state"));
        // %u needs a user name.
        assert!(!acl.may_publish(None, "any", "devices/%u/3/state"));
    }

    #[test]
    fn wildcards_in_names_do_not_widen_patterns() {
        let acl = acl();
        assert!(!acl.may_subscribe(Some("x"), "+", "devices/+/cmd"));
        assert!(!acl.may_subscribe(Some("x"), "#", "devices/#"));
        assert!(!acl.may_publish(Some("a/b"), "c", "devices/a/b/3/state"));
    }

    #[test]
    fn subscriptions_must_be_covered_whole() {
        let rule = |r: &str, s: &str| {
            filter_covers(
                &r.split('/').collect::<Vec<_>>(),
                &s.split('/').collect::<Vec<_>>(),
            )
        };
        assert!(rule("a/#", "a/b/+"));
        assert!(rule("a/#", "a/#"));
        assert!(rule("a/#", "a"));
        assert!(rule("a/+", "a/+"));
        assert!(rule("a/+", "a/b"));
        assert!(!rule("a/+", "a/#"));
        assert!(!rule("a/+", "a/b/c"));
        assert!(!rule("a/b", "a/+"));
        assert!(!rule("#", "$SYS/#"));
        assert!(rule("$SYS/#", "$SYS/broker/+"));
        assert!(rule("#", "+/x"));
    }

    #[test]
    fn topic_matching_follows_mqtt() {
        let m = |r: &str, t: &str| {
            filter_matches(
                &r.split('/').collect::<Vec<_>>(),
                &t.split('/').collect::<Vec<_>>(),
            )
        };
        assert!(m("a/+/c", "a/b/c"));
        assert!(!m("a/+/c", "a/b/d"));
        assert!(m("a/#", "a"));
        assert!(m("a/#", "a/b/c"));
        assert!(!m("a/+", "a/b/c"));
        assert!(m("+/x", "/x"));
        assert!(!m("#", "$SYS/x"));
        assert!(!m("+/x", "$SYS/x"));
    }

    #[test]
    fn shared_subscriptions_are_checked_on_their_filter() {
        let acl = acl();
        assert!(acl.may_subscribe(Some("alice"), "c", "$share/g/home/alice/x"));
        assert!(!acl.may_subscribe(Some("alice"), "c", "$share/g/home/bob/x"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let cases = [
            (
                "user alice\nfrobnicate x\n",
                2,
                "unknown keyword `frobnicate`",
            ),
            ("\n\nuser\n", 3, "`user` needs a user name"),
            ("topic read\n", 1, "a topic filter is needed"),
            ("topic read a/#/b\n", 1, "not a valid topic filter"),
            ("# c\ntopic deny a\n", 2, "`deny` rules are not supported"),
        ];
        for (text, line, what) in cases {
            let (got_line, message) = Acl::parse(text).unwrap_err();
            assert_eq!(got_line, line, "{text:?}");
            assert!(message.contains(what), "{text:?}: {message}");
        }
    }

    #[test]
    fn load_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, "user a\ntopic bogus a/#/b\n").unwrap();
        let err = Acl::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:2: ", path.display())), "{err}");
        let missing = Acl::load(&dir.path().join("none")).unwrap_err().to_string();
        assert!(missing.contains("cannot read ACL file"), "{missing}");
    }

    #[test]
    fn empty_acl_denies_everything() {
        let acl = Acl::parse("# nothing\n").unwrap();
        assert!(!acl.may_publish(Some("a"), "c", "t"));
        assert!(!acl.may_subscribe(None, "c", "t"));
    }
}
