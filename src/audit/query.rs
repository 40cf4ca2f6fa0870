//! `audit query` and `audit tail`: read records back, filter them, print them.

use std::path::Path;
use std::time::SystemTime;

use super::list_files;
use super::record::Line;
use crate::broker::topic::matches;

/// What `audit query` keeps. Every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<SystemTime>,
    /// Records before this time.
    pub until: Option<SystemTime>,
    /// A JID (bare or full) that is the sender or the recipient; bare matches any resource.
    pub jid: Option<String>,
    /// An MQTT topic filter (wildcards allowed) the record's topic matches.
    pub topic: Option<String>,
    /// Rule name.
    pub rule: Option<String>,
    /// Outcome (`published`, `delivered`, `denied`, `dropped`).
    pub outcome: Option<String>,
}

fn jid_matches(pattern: &str, jid: Option<&str>) -> bool {
    let Some(jid) = jid else { return false };
    if pattern.contains('/') {
        jid.eq_ignore_ascii_case(pattern)
    } else {
        jid.split('/')
            .next()
            .is_some_and(|b| b.eq_ignore_ascii_case(pattern))
    }
}

impl Filter {
    /// Whether `line` (a record) passes.
    pub fn keeps(&self, line: &Line) -> bool {
        if line.kind != "record" {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Ok(ts) = humantime::parse_rfc3339_weak(&line.ts) else {
                return false;
            };
            if self.since.is_some_and(|s| ts < s) || self.until.is_some_and(|u| ts >= u) {
                return false;
            }
        }
        if let Some(jid) = &self.jid {
            let x = line.xmpp.clone().unwrap_or_default();
            if !jid_matches(jid, x.from.as_deref()) && !jid_matches(jid, x.to.as_deref()) {
                return false;
            }
        }
        if let Some(filter) = &self.topic {
            let topic = line.mqtt.as_ref().and_then(|m| m.topic.as_deref());
            if !topic.is_some_and(|t| matches(filter, t)) {
                return false;
            }
        }
        if self.rule.is_some() && line.rule != self.rule {
            return false;
        }
        if self.outcome.is_some() && line.outcome != self.outcome {
            return false;
        }
        true
    }
}

/// Every parsable line of the trail in `dir`, in order, with the raw text.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<(String, Line)>> {
    let mut out = Vec::new();
    for (_, path) in list_files(dir)? {
        let text = std::fs::read_to_string(&path)?;
        for raw in text.lines() {
            if let Ok(line) = serde_json::from_str::<Line>(raw) {
                out.push((raw.to_string(), line));
            }
        }
    }
    Ok(out)
}

/// The header of [`table_row`].
pub const TABLE_HEADER: &str = "SEQ      TIME                         DIRECTION     RULE             OUTCOME             XMPP                                               TOPIC";

/// One record as a table row.
pub fn table_row(line: &Line) -> String {
    let x = line.xmpp.clone().unwrap_or_default();
    let outcome = match &line.reason {
        Some(r) => format!("{}:{r}", line.outcome.as_deref().unwrap_or("?")),
        None => line.outcome.clone().unwrap_or_default(),
    };
    let xmpp = format!(
        "{} -> {}",
        x.from.as_deref().unwrap_or("-"),
        x.to.as_deref().unwrap_or("-")
    );
    format!(
        "{:<8} {:<28} {:<13} {:<16} {:<19} {:<50} {}",
        line.seq,
        line.ts,
        line.dir.as_deref().unwrap_or("-"),
        line.rule.as_deref().unwrap_or("-"),
        outcome,
        xmpp,
        line.mqtt
            .as_ref()
            .and_then(|m| m.topic.as_deref())
            .unwrap_or("-")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::audit::record::{MqttPart, XmppPart};

    fn record() -> Line {
        Line {
            kind: "record".into(),
            ts: "2026-11-26T01:00:00.000000Z".into(),
            rule: Some("chat".into()),
            outcome: Some("published".into()),
            xmpp: Some(XmppPart {
                from: Some("alice@example.org/phone".into()),
                to: Some("bob@mqtt.example.org".into()),
                ..XmppPart::default()
            }),
            mqtt: Some(MqttPart {
                topic: Some("users/bob/inbox/alice@example.org".into()),
                ..MqttPart::default()
            }),
            ..Line::default()
        }
    }

    #[test]
    fn filters() {
        let r = record();
        let t = |s: &str| Some(humantime::parse_rfc3339_weak(s).unwrap());
        let cases: Vec<(Filter, bool)> = vec![
            (Filter::default(), true),
            (
                Filter {
                    jid: Some("alice@example.org".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    jid: Some("alice@example.org/phone".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    jid: Some("alice@example.org/pc".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    jid: Some("BOB@mqtt.example.org".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    jid: Some("carol@example.org".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    topic: Some("users/bob/#".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    topic: Some("users/+/outbox/#".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    rule: Some("chat".into()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    rule: Some("news".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    outcome: Some("denied".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    since: t("2026-11-26T00:59:59Z"),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    since: t("2026-11-26T01:00:01Z"),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    until: t("2026-11-26T01:00:00Z"),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    until: t("2026-11-26T01:00:01Z"),
                    ..Filter::default()
                },
                true,
            ),
        ];
        for (i, (f, want)) in cases.into_iter().enumerate() {
            assert_eq!(f.keeps(&r), want, "case {i}: {f:?}");
        }
        let mut open = r.clone();
        open.kind = "open".into();
        assert!(!Filter::default().keeps(&open));
        assert!(table_row(&r).contains("alice@example.org/phone -> bob@mqtt.example.org"));
    }
}
