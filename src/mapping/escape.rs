//! Reversible escaping of a JID (or JID part) into one MQTT topic level.
//!
//! A JID part may contain characters that cannot stand in a topic level: `/` separates levels,
//! `+` and `#` are wildcards in filters, U+0000 is forbidden in topics [MQTT-4.7.3-2], and a
//! topic starting with `$` is special (`$SYS`; filters starting with a wildcard never match it,
//! [MQTT-4.7.2-1]), so a level never starts with a raw `$`. Escaping
//! turns each of them into `%` and two upper-case hex digits, and `%` itself into `%25`, so the
//! mapping is a bijection between strings and the levels that escaping can produce:
//!
//! | character          | escaped |
//! |--------------------|---------|
//! | `%`                | `%25`   |
//! | `/`                | `%2F`   |
//! | `+`                | `%2B`   |
//! | `#`                | `%23`   |
//! | U+0000             | `%00`   |
//! | `$` (leading only) | `%24`   |
//!
//! [`unescape`] accepts exactly those levels and nothing else (no lower-case hex, no `%41`, no
//! raw `+`, `#` or U+0000, no leading raw `$`). Why so strict: the level is the identity of a
//! JID. If two different topics could decode to the same JID, an ACL on one topic could be side
//! stepped by publishing on its alias.

use std::borrow::Cow;

/// Escapes `s` into one topic level; borrows when nothing needs escaping (the common case).
#[cfg(test)]
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    let leading_dollar = s.starts_with('$');
    if !leading_dollar && !s.bytes().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    escape_into(s, &mut out);
    Cow::Owned(out)
}

/// Appends the escaped form of `s` to `out`; used when building a whole topic at once.
pub(crate) fn escape_into(s: &str, out: &mut String) {
    let mut rest = s;
    if let Some(tail) = s.strip_prefix('$') {
        out.push_str("%24");
        rest = tail;
    }
    let mut start = 0;
    for (i, b) in rest.bytes().enumerate() {
        if needs_escape(b) {
            out.push_str(&rest[start..i]);
            out.push_str(code(b));
            start = i + 1;
        }
    }
    out.push_str(&rest[start..]);
}

/// Reverses escaping; `None` when `level` is not something [`escape_into`] can produce.
pub(crate) fn unescape(level: &str) -> Option<Cow<'_, str>> {
    if level.starts_with('$') || level.bytes().any(|b| matches!(b, b'/' | b'+' | b'#' | 0)) {
        return None;
    }
    if !super::contains_byte(level, b'%') {
        return Some(Cow::Borrowed(level));
    }
    let bytes = level.as_bytes();
    let mut out = String::with_capacity(level.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let decoded = match bytes.get(i + 1..i + 3)? {
            b"25" => '%',
            b"2F" => '/',
            b"2B" => '+',
            b"23" => '#',
            b"00" => '\0',
            b"24" if i == 0 => '$',
            _ => return None,
        };
        out.push_str(&level[start..i]);
        out.push(decoded);
        i += 3;
        start = i;
    }
    out.push_str(&level[start..]);
    Some(Cow::Owned(out))
}

fn needs_escape(b: u8) -> bool {
    matches!(b, b'%' | b'/' | b'+' | b'#' | 0)
}

fn code(b: u8) -> &'static str {
    match b {
        b'%' => "%25",
        b'/' => "%2F",
        b'+' => "%2B",
        b'#' => "%23",
        _ => "%00",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_table() {
        let cases = [
            ("alice", "alice"),
            ("", ""),
            ("a/b", "a%2Fb"),
            ("a+b#c", "a%2Bb%23c"),
            ("100%", "100%25"),
            ("nul\0x", "nul%00x"),
            ("$SYS", "%24SYS"),
            ("a$b", "a$b"),
            ("$$", "%24$"),
            ("%24", "%2524"),
            ("bob@example.org", "bob@example.org"),
            ("jürgen/東京", "jürgen%2F東京"),
        ];
        for (raw, escaped) in cases {
            assert_eq!(escape(raw), escaped, "escape({raw:?})");
            assert_eq!(
                unescape(escaped).as_deref(),
                Some(raw),
                "unescape({escaped:?})"
            );
        }
    }

    #[test]
    fn borrows_when_clean() {
        assert!(matches!(escape("alice@example.org"), Cow::Borrowed(_)));
        assert!(matches!(
            unescape("alice@example.org"),
            Some(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn rejects_malformed_levels() {
        let bad = [
            "%", "%2", "%2f", "%41", "a%zz", "a+b", "a#", "a/b", "nul\0", "$SYS", "a%24", "%%25",
            "x%",
        ];
        for level in bad {
            assert_eq!(unescape(level), None, "unescape({level:?}) must fail");
        }
    }

    /// SplitMix64: a deterministic generator, so a failure is reproducible from its seed.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn round_trip_random_strings() {
        const ALPHABET: &[char] = &[
            '%', '/', '+', '#', '\0', '$', '@', 'a', 'Z', '0', '2', '5', 'F', ' ', '.', '-', 'é',
            'ß', '東', '🦀', '\u{202e}', '\u{fffd}',
        ];
        let mut rng = SplitMix(0x5EED_2024);
        for case in 0..20_000 {
            let len = rng.below(12);
            let s: String = (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            let escaped = escape(&s);
            assert!(
                !escaped.starts_with('$'),
                "case {case}: {s:?} -> {escaped:?}"
            );
            assert!(
                !escaped.contains(['/', '+', '#', '\0']),
                "case {case}: {s:?} -> {escaped:?}"
            );
            assert_eq!(
                unescape(&escaped).as_deref(),
                Some(s.as_str()),
                "case {case}: {s:?}"
            );
        }
    }

    #[test]
    fn unescape_accepts_only_canonical_levels() {
        // Every accepted level escapes back to itself: no two levels decode to one string.
        let mut rng = SplitMix(7);
        const ALPHABET: &[&str] = &["%", "2", "5", "F", "f", "B", "3", "0", "4", "$", "a", "é"];
        for _ in 0..20_000 {
            let len = rng.below(8);
            let level: String = (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            if let Some(raw) = unescape(&level) {
                assert_eq!(escape(&raw), level.as_str(), "{level:?} is not canonical");
            }
        }
    }
}
