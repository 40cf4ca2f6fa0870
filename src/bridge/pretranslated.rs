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
    /// Taken by the first delivery that uses it; the broker may keep the copy (in flight until
    /// acknowledged, then resent after a reconnect), and a resent copy translates itself.
    out: Mutex<Option<XmppOut>>,
}

/// Wraps the guard's translation for the broker to carry.
pub(crate) fn carry(table: &MappingTable, out: XmppOut) -> GuardNote {
    Arc::new(Pretranslated {
        generation: table.generation(),
        out: Mutex::new(Some(out)),
    })
}

/// The guard's translation, if `carried` holds one made with `table` and not yet taken.
pub(crate) fn take(carried: Option<&GuardNote>, table: &MappingTable) -> Option<XmppOut> {
    let p = carried?.downcast_ref::<Pretranslated>()?;
    if p.generation != table.generation() {
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

    fn translated(table: &MappingTable) -> XmppOut {
        let payload = br#"{"body":"hi"}"#;
        mqtt_to_xmpp(
            table,
            "users/bob/outbox/alice@localhost",
            payload,
            Some("bob"),
        )
        .unwrap()
    }

    #[test]
    fn taken_once_with_its_own_table() {
        let t = table();
        let out = translated(&t);
        let carried = carry(&t, out.clone());
        assert_eq!(take(Some(&carried), &t), Some(out));
        assert_eq!(take(Some(&carried), &t), None, "used once");
        assert_eq!(take(None, &t), None);
    }

    #[test]
    fn another_table_or_another_type_is_not_used() {
        let (t, other) = (table(), table());
        assert_ne!(t.generation(), other.generation());
        // A clone is the same table.
        assert_eq!(t.clone().generation(), t.generation());
        let carried = carry(&t, translated(&t));
        assert_eq!(take(Some(&carried), &other), None);
        assert!(
            take(Some(&carried), &t).is_some(),
            "still there for its own table"
        );
        let foreign: GuardNote = Arc::new(String::from("not a translation"));
        assert_eq!(take(Some(&foreign), &t), None);
    }
}
