//! Load-time errors: each names where the problem is (file, line, rule, field) and what it is.

use std::fmt;
use std::path::PathBuf;

/// One problem in the mapping files.
///
/// Displayed as `mappings/chat.toml:12: rule `chat-inbox`: topic: capture {peer} is not bound
/// by jid or peer`; the parts that are unknown are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    /// The mapping file (or the directory, for "no mapping rules").
    pub file: PathBuf,
    /// 1-based line: of the field when the problem is in one, else of the `[[rule]]` header.
    pub line: Option<usize>,
    /// The rule's `name`, when it has one.
    pub rule: Option<String>,
    /// The field the problem is in, e.g. `topic`.
    pub field: Option<String>,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl fmt::Display for MappingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule `{rule}`")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for MappingError {}

/// A name that is not one of a fixed set (a direction, a message kind, a format).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`{hint}")]
pub struct ParseValueError {
    what: &'static str,
    value: String,
    hint: String,
}

impl ParseValueError {
    pub(crate) fn new(what: &'static str, value: &str, known: &[&str]) -> ParseValueError {
        let hint = match closest(value, known) {
            Some(k) => format!(" (did you mean `{k}`?)"),
            None => format!(" (expected one of {})", known.join(", ")),
        };
        ParseValueError {
            what,
            value: value.to_string(),
            hint,
        }
    }
}

pub(crate) use crate::suggest::closest;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_leaves_out_unknown_parts() {
        let full = MappingError {
            file: "mappings/chat.toml".into(),
            line: Some(12),
            rule: Some("chat-to-app".into()),
            field: Some("topic".into()),
            message: "capture {peer} is not bound by jid or peer".into(),
        };
        assert_eq!(
            full.to_string(),
            "mappings/chat.toml:12: rule `chat-to-app`: topic: capture {peer} is not bound by jid \
             or peer"
        );
        let bare = MappingError {
            file: "mappings".into(),
            line: None,
            rule: None,
            field: None,
            message: "no mapping rules in mappings".into(),
        };
        assert_eq!(bare.to_string(), "mappings: no mapping rules in mappings");
    }
}
