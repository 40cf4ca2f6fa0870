//! "Did you mean" hints for configuration and mapping files.

/// The known name nearest to `name`, when it is a likely typo.
pub(crate) fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= if k.len() <= 4 { 1 } else { 2.max(k.len() / 4) })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["max_connections", "max_inflight", "listen"];
        assert_eq!(closest("max_conections", &known), Some("max_connections"));
        assert_eq!(closest("lisen", &known), Some("listen"));
        assert_eq!(closest("colour", &known), None);
        let known = ["xmpp-to-mqtt", "mqtt-to-xmpp", "both"];
        assert_eq!(closest("xmpp_to_mqtt", &known), Some("xmpp-to-mqtt"));
        assert_eq!(closest("bath", &known), Some("both"));
        assert_eq!(closest("sideways", &known), None);
        assert_eq!(closest("yaml", &["text", "json", "xml"]), None);
        assert_eq!(closest("topc", &["topic", "peer"]), Some("topic"));
    }
}
