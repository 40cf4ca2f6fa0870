//! Property tests of the escaping of JID parts into topic levels (see `escape`).

use proptest::prelude::*;

use super::escape::{escape, unescape};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any string escapes into one valid topic level and unescapes back to itself.
    #[test]
    fn escape_round_trips(s in "\\PC{0,16}|[%/+#$\\x00a2F5B34]{0,12}") {
        let level = escape(&s);
        prop_assert!(!level.starts_with('$'), "{:?} -> {:?}", s, level);
        prop_assert!(!level.contains(['/', '+', '#', '\0']), "{:?} -> {:?}", s, level);
        let back = unescape(&level);
        prop_assert_eq!(back.as_deref(), Some(s.as_str()));
    }

    /// Every level that unescapes is canonical: escaping its value gives the same level, so
    /// two different levels never stand for one JID part.
    #[test]
    fn unescape_accepts_only_canonical_levels(level in "[%$a2F5B34f0]{0,12}|\\PC{0,12}") {
        if let Some(raw) = unescape(&level) {
            let again = escape(&raw);
            prop_assert_eq!(again.as_ref(), level.as_str());
        }
    }

    /// Escaping keeps `@` and `.` (JIDs stay readable in topics) and changes nothing in a
    /// string without special characters.
    #[test]
    fn clean_strings_are_unchanged(s in "[a-z0-9@.\\-_]{0,20}") {
        let escaped = escape(&s);
        prop_assert_eq!(escaped.as_ref(), s.as_str());
    }
}
