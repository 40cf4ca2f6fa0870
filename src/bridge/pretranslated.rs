//! The publish guard's translation, handed to the bridge with the delivery.
//!
//! The broker runs [`MappingGuard`](super::MappingGuard) on every client publish, and the
//! guard translates it (`mqtt_to_xmpp`) to refuse what the bridge would refuse. The result
//! travels with the routed copy to the bridge's in-process session (the broker's
//! [`GuardNote`], never on the wire), so the bridge does not translate the same publish a
//! second time. It is used once, and only with the table it was made with; otherwise (a copy
//! read back from the store, a resent copy, a table built since) the bridge translates
//! itself, as before.

use std::sync::{Arc, Mutex};

use super::translate::XmppOut;
use crate::broker::guard::GuardNote;
use crate::mapping::MappingTable;

/// A translation made by the guard.
#[derive(Debug)]
pub(crate) struct Pretranslated {
    /// [`MappingTable::generation`] of the table used.
    generation: u64,
    /// Where the topic and payload it was made from are, and their lengths: every routed
    /// copy of a publish shares its topic and payload buffers, and a copy holds them alive,
    /// so equal addresses mean this very publish. A check that costs four comparisons and
    /// holds whatever the router does with the note.
    source: [usize; 4],
    /// Taken by the first delivery that uses it; the broker may keep the copy (in flight until
    /// acknowledged, then resent after a reconnect), and a resent copy translates itself.
    out: Mutex<Option<XmppOut>>,
}

fn source(topic: &str, payload: &[u8]) -> [usize; 4] {
    [
        topic.as_ptr() as usize,
        topic.len(),
        payload.as_ptr() as usize,
        payload.len(),
    ]
}

/// Wraps the guard's translation of `topic` and `payload` (the publish's own buffers) for
/// the broker to carry.
pub(crate) fn carry(table: &MappingTable, topic: &str, payload: &[u8], out: XmppOut) -> GuardNote {
    Arc::new(Pretranslated {
        generation: table.generation(),
        source: source(topic, payload),
        out: Mutex::new(Some(out)),
    })
}

/// The guard's translation, if `carried` holds one made with `table` from this `topic` and
/// `payload` (the same buffers) and not yet taken.
pub(crate) fn take(
    carried: Option<&GuardNote>,
    table: &MappingTable,
    topic: &str,
    payload: &[u8],
) -> Option<XmppOut> {
    let p = carried?.downcast_ref::<Pretranslated>()?;
    if p.generation != table.generation() || p.source != source(topic, payload) {
        return None;
    }
    // A poisoned lock (a panic while holding it, which nothing here can do) means: translate.
    p.out.lock().ok()?.take()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use std::path::Path;

    use super::*;
    use crate::bridge::translate::mqtt_to_xmpp;

    const RULES: &str = r#"
[[rule]]
name = "outbox"
direction = "mqtt-to-xmpp"
jid = "{user}@{domain}"
topic = "users/{user}/outbox/{peer}"
kinds = ["chat"]
format = "json"
"#;

    fn table() -> MappingTable {
        MappingTable::parse(RULES, Path::new("t.toml"), "mqtt.localhost").unwrap()
    }

    const TOPIC: &str = "users/bob/outbox/alice@localhost";
    const PAYLOAD: &[u8] = br#"{"body":"hi"}"#;

    fn translated(table: &MappingTable) -> XmppOut {
        mqtt_to_xmpp(table, TOPIC, PAYLOAD, Some("bob")).unwrap()
    }

    #[test]
    fn taken_once_with_its_own_table() {
        let t = table();
        let out = translated(&t);
        let carried = carry(&t, TOPIC, PAYLOAD, out.clone());
        assert_eq!(take(Some(&carried), &t, TOPIC, PAYLOAD), Some(out));
        assert_eq!(take(Some(&carried), &t, TOPIC, PAYLOAD), None, "used once");
        assert_eq!(take(None, &t, TOPIC, PAYLOAD), None);
    }

    #[test]
    fn another_table_publish_or_type_is_not_used() {
        let (t, other) = (table(), table());
        assert_ne!(t.generation(), other.generation());
        // A clone is the same table.
        assert_eq!(t.clone().generation(), t.generation());
        let carried = carry(&t, TOPIC, PAYLOAD, translated(&t));
        assert_eq!(take(Some(&carried), &other, TOPIC, PAYLOAD), None);
        // The same text in other buffers is another publish.
        let (topic, payload) = (TOPIC.to_string(), PAYLOAD.to_vec());
        assert_eq!(take(Some(&carried), &t, &topic, PAYLOAD), None);
        assert_eq!(take(Some(&carried), &t, TOPIC, &payload), None);
        assert_eq!(take(Some(&carried), &t, TOPIC, &PAYLOAD[..3]), None);
        assert!(
            take(Some(&carried), &t, TOPIC, PAYLOAD).is_some(),
            "still there for its own publish and table"
        );
        let foreign: GuardNote = Arc::new(String::from("not a translation"));
        assert_eq!(take(Some(&foreign), &t, TOPIC, PAYLOAD), None);
    }
}
