//! MQTT topic names and topic filters: validation, wildcard matching and shared subscriptions.
//!
//! Implements MQTT 3.1.1 section 4.7 and MQTT 5.0 section 4.7 (topic names and filters) and
//! section 4.8.2 (shared subscriptions, `$share/{ShareName}/{filter}`). The rules are the same in
//! both versions except for shared subscriptions, which only exist in 5.0; the clause numbers
//! differ for the wildcard rules, so error messages name both.
//!
//! Everything here is pure and allocation-free.

use thiserror::Error;

/// Longest topic name or filter: a UTF-8 encoded string has a two-byte length prefix.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared subscription filter (MQTT 5.0 section 4.8.2).
pub const SHARED_PREFIX: &str = "$share/";

/// Why a topic name or filter is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TopicError {
    /// The name or filter is the empty string.
    #[error("topic names and topic filters must be at least one character long [MQTT-4.7.3-1]")]
    Empty,
    /// The UTF-8 encoding is longer than 65,535 bytes.
    #[error(
        "topic names and topic filters must not encode to more than 65535 bytes [MQTT-4.7.3-3]"
    )]
    TooLong,
    /// The name or filter contains U+0000.
    #[error(
        "topic names and topic filters must not contain the null character U+0000 [MQTT-4.7.3-2]"
    )]
    Nul,
    /// A topic name contains `+` or `#`.
    #[error(
        "wildcard characters '+' and '#' must not be used within a topic name \
         [MQTT-4.7.1-1 in 3.1.1, MQTT-4.7.0-1 in 5.0]"
    )]
    WildcardInName,
    /// A `#` is not alone in the last level of a filter.
    #[error(
        "'#' must be the last character and alone in its level \
         [MQTT-4.7.1-2 in 3.1.1, MQTT-4.7.1-1 in 5.0]"
    )]
    MisplacedMultiLevel,
    /// A `+` does not occupy a whole level of a filter.
    #[error(
        "'+' must occupy an entire level of the filter [MQTT-4.7.1-3 in 3.1.1, MQTT-4.7.1-2 in 5.0]"
    )]
    MisplacedSingleLevel,
    /// The ShareName of a `$share/` filter is empty or contains `+` or `#`.
    #[error(
        "the ShareName of a shared subscription must be at least one character long and must not \
         contain '/', '+' or '#' [MQTT-4.8.2-1, MQTT-4.8.2-2]"
    )]
    InvalidSharedGroup,
    /// A `$share/{ShareName}` filter has no `/` and topic filter after the ShareName.
    #[error(
        "the ShareName of a shared subscription must be followed by '/' and a topic filter \
         [MQTT-4.8.2-2]"
    )]
    SharedMissingFilter,
}

/// Checks a topic name, as carried by PUBLISH or a will message.
///
/// A topic name is at least one character, at most 65,535 bytes, has no U+0000 and no wildcard.
/// Names starting with `$` are accepted: whether a client may publish to `$SYS/...` is policy, not
/// syntax.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_string(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter, as carried by SUBSCRIBE or UNSUBSCRIBE.
///
/// `#` must be a whole level and the last one, `+` must be a whole level. A filter starting with
/// `$share/` is a shared subscription (MQTT 5.0 section 4.8.2): it must have a non-empty ShareName
/// without `+` or `#`, followed by `/` and a valid filter. A 3.1.1 session should reject shared
/// filters itself if it does not want them; syntactically they are also valid 3.1.1 filters.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_string(filter)?;
    if let Some(rest) = filter.strip_prefix(SHARED_PREFIX) {
        let (group, inner) = match rest.split_once('/') {
            Some(parts) => parts,
            None if rest.is_empty() => return Err(TopicError::InvalidSharedGroup),
            None => return Err(TopicError::SharedMissingFilter),
        };
        if group.is_empty() || group.contains(['+', '#']) {
            return Err(TopicError::InvalidSharedGroup);
        }
        if inner.is_empty() {
            return Err(TopicError::SharedMissingFilter);
        }
        return check_filter_levels(inner);
    }
    check_filter_levels(filter)
}

/// Rules shared by names and filters: length and U+0000.
fn check_string(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Wildcard placement in a (non-shared) filter.
fn check_filter_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevel);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevel);
        }
    }
    Ok(())
}

/// Whether the topic name `topic` matches the topic filter `filter`.
///
/// - `+` matches exactly one level, which may be empty: `+/+` matches `/finance`.
/// - `#` matches the parent level and any number of levels below: `sport/#` matches `sport`.
/// - A filter starting with `+` or `#` does not match a topic starting with `$`
///   [MQTT-4.7.2-1]; `$SYS/#` does match `$SYS/broker`.
///
/// `filter` must be a valid plain filter (see [`validate_topic_filter`]); strip a `$share/group/`
/// prefix with [`parse_shared`] first. On an invalid filter the result is unspecified but
/// the function does not panic.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The parts of a shared subscription filter `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The ShareName.
    pub group: &'a str,
    /// The topic filter shared by the group.
    pub filter: &'a str,
}

/// Splits `$share/{group}/{filter}` into its group and filter: `"$share/g/a/b"` gives group `g`
/// and filter `a/b`.
///
/// Returns `None` when `filter` does not start with `$share/` or has no `/` after the group.
/// This only splits; use [`validate_topic_filter`] to check the parts.
pub fn parse_shared(filter: &str) -> Option<SharedFilter<'_>> {
    let rest = filter.strip_prefix(SHARED_PREFIX)?;
    let (group, filter) = rest.split_once('/')?;
    Some(SharedFilter { group, filter })
}

/// Whether a (valid) filter contains a wildcard, i.e. can match more than one topic name.
pub fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        use TopicError::*;
        let long_ok = "a".repeat(MAX_TOPIC_LEN);
        let long_bad = "a".repeat(MAX_TOPIC_LEN + 1);
        // A 3-byte character straddling the limit counts in bytes, not characters.
        let long_unicode = format!("{}€", "a".repeat(MAX_TOPIC_LEN - 2));
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("sport/tennis/player1", Ok(())),
            ("sport", Ok(())),
            ("/", Ok(())),
            ("//", Ok(())),
            ("/finance", Ok(())),
            ("sport/", Ok(())),
            (" ", Ok(())),
            ("$SYS/broker/uptime", Ok(())),
            ("$share/g/topic", Ok(())),
            ("ACCOUNTS/accounts", Ok(())),
            ("Ünïcödé/😀/日本語", Ok(())),
            (&long_ok, Ok(())),
            ("", Err(Empty)),
            (&long_bad, Err(TooLong)),
            (&long_unicode, Err(TooLong)),
            ("a\0b", Err(Nul)),
            ("sport/+", Err(WildcardInName)),
            ("sport/#", Err(WildcardInName)),
            ("#", Err(WildcardInName)),
            ("+", Err(WildcardInName)),
            ("sport+", Err(WildcardInName)),
            ("a#b", Err(WildcardInName)),
        ];
        for (name, want) in cases {
            assert_eq!(validate_topic_name(name), *want, "name {name:?}");
        }
    }

    #[test]
    fn topic_filters() {
        use TopicError::*;
        let long_bad = "a".repeat(MAX_TOPIC_LEN + 1);
        let cases: &[(&str, Result<(), TopicError>)] = &[
            // Section 4.7.1.2 (multi-level wildcard), both versions.
            ("sport/tennis/player1/#", Ok(())),
            ("sport/#", Ok(())),
            ("#", Ok(())),
            ("sport/tennis#", Err(MisplacedMultiLevel)),
            ("sport/tennis/#/ranking", Err(MisplacedMultiLevel)),
            // Section 4.7.1.3 (single-level wildcard).
            ("+", Ok(())),
            ("+/tennis/#", Ok(())),
            ("sport+", Err(MisplacedSingleLevel)),
            ("sport/+/player1", Ok(())),
            ("/+", Ok(())),
            ("+/+", Ok(())),
            // Section 4.7.2 ($ topics).
            ("$SYS/#", Ok(())),
            ("$SYS/monitor/+", Ok(())),
            ("+/monitor/Clients", Ok(())),
            // Edge cases.
            ("+/#", Ok(())),
            ("/", Ok(())),
            ("/#", Ok(())),
            ("//", Ok(())),
            ("a//+//#", Ok(())),
            ("#/", Err(MisplacedMultiLevel)),
            ("#/a", Err(MisplacedMultiLevel)),
            ("##", Err(MisplacedMultiLevel)),
            ("a/b#", Err(MisplacedMultiLevel)),
            ("+#", Err(MisplacedMultiLevel)),
            ("++", Err(MisplacedSingleLevel)),
            ("a+/b", Err(MisplacedSingleLevel)),
            ("a/+b", Err(MisplacedSingleLevel)),
            ("Ünïcödé/+/😀/#", Ok(())),
            ("", Err(Empty)),
            (&long_bad, Err(TooLong)),
            ("a/\0/#", Err(Nul)),
            // Shared subscriptions (MQTT 5.0 section 4.8.2).
            ("$share/consumer1/sport/tennis/+", Ok(())),
            ("$share/consumer2/sport/tennis/+", Ok(())),
            ("$share/g/#", Ok(())),
            ("$share/g//", Ok(())),
            ("$share/g/$SYS/#", Ok(())),
            ("$share/g", Err(SharedMissingFilter)),
            ("$share/g/", Err(SharedMissingFilter)),
            ("$share/", Err(InvalidSharedGroup)),
            ("$share//a", Err(InvalidSharedGroup)),
            ("$share//", Err(InvalidSharedGroup)),
            ("$share/+/a", Err(InvalidSharedGroup)),
            ("$share/g#/a", Err(InvalidSharedGroup)),
            ("$share/g/a#", Err(MisplacedMultiLevel)),
            ("$share/g/a+", Err(MisplacedSingleLevel)),
            ("$share/g/#/a", Err(MisplacedMultiLevel)),
            // Not shared: `$share` alone or with another spelling is an ordinary filter.
            ("$share", Ok(())),
            ("$SHARE/g/a", Ok(())),
            ("$sharex/g", Ok(())),
        ];
        for (filter, want) in cases {
            assert_eq!(validate_topic_filter(filter), *want, "filter {filter:?}");
        }
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            // Section 4.7.1.2: "sport/tennis/player1/#".
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/tennis/player1/#", "sport/tennis/player2", false),
            ("sport/tennis/player1/#", "sport/tennis", false),
            // "sport/#" also matches the singular "sport".
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("#", "sport", true),
            ("#", "/", true),
            ("#", "a/b/c/d/e", true),
            // Section 4.7.1.3: "sport/tennis/+".
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "", true),
            ("+", "a", true),
            ("+/tennis/#", "sport/tennis/player1", true),
            ("+/tennis/#", "sport/tennis", true),
            ("+/tennis/#", "sport/golf", false),
            // Section 4.7.2: topics beginning with '$' [MQTT-4.7.2-1].
            ("#", "$SYS/broker/clients", false),
            ("#", "$SYS", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("+/#", "$SYS/a", false),
            ("+", "$", false),
            ("$", "$", true),
            ("a/#", "a/$b", true),
            ("a/+", "a/$b", true),
            // Section 4.7.3: case-sensitive, spaces are ordinary, "/" is two empty levels.
            ("ACCOUNTS", "accounts", false),
            ("/finance", "finance", false),
            ("finance", "/finance", false),
            ("Accounts payable", "Accounts payable", true),
            ("/", "/", true),
            ("+/+", "/", true),
            ("+", "/", false),
            ("/#", "/", true),
            ("//", "/", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a/+/b", "a/b", false),
            ("+/#", "a", true),
            ("+/#", "/", true),
            // Exact and unicode.
            ("sport/tennis", "sport/tennis", true),
            ("sport/tennis", "sport/tennis/", false),
            ("sport/tennis/", "sport/tennis", false),
            ("日本/+/😀", "日本/東京/😀", true),
            ("日本/+/😀", "日本/東京/😃", false),
            ("é", "é", true),
            ("é", "e\u{301}", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(
                matches(filter, topic),
                *want,
                "filter {filter:?} topic {topic:?}"
            );
            assert_eq!(validate_topic_filter(filter), Ok(()), "filter {filter:?}");
        }
    }

    #[test]
    fn shared() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("$share/g/a/b", Some(("g", "a/b"))),
            (
                "$share/consumer1/sport/tennis/+",
                Some(("consumer1", "sport/tennis/+")),
            ),
            ("$share/g/#", Some(("g", "#"))),
            ("$share/consumer1//finance", Some(("consumer1", "/finance"))),
            ("$share/g/", Some(("g", ""))),
            ("$share//a", Some(("", "a"))),
            ("$share/g", None),
            ("$share/", None),
            ("$share", None),
            ("$SHARE/g/a", None),
            ("a/b", None),
            ("$SYS/#", None),
        ];
        for (filter, want) in cases {
            let got = parse_shared(filter).map(|s| (s.group, s.filter));
            assert_eq!(got, *want, "filter {filter:?}");
        }
    }

    #[test]
    fn wildcards() {
        for (filter, want) in [
            ("a/b", false),
            ("/", false),
            ("$SYS/x", false),
            ("+", true),
            ("#", true),
            ("a/+/b", true),
            ("a/#", true),
        ] {
            assert_eq!(is_wildcard(filter), want, "filter {filter:?}");
        }
    }

    #[test]
    fn error_messages_name_the_clause() {
        let msg = TopicError::MisplacedMultiLevel.to_string();
        assert!(msg.contains("[MQTT-4.7.1-2 in 3.1.1"), "{msg}");
        assert!(TopicError::Empty.to_string().contains("[MQTT-4.7.3-1]"));
        assert!(
            TopicError::InvalidSharedGroup
                .to_string()
                .contains("MQTT-4.8.2-1")
        );
    }
}
