use super::*;

fn settled(token: u64, who: &str, how: Settlement) -> Tracked {
    Tracked::Settled {
        token,
        client_id: who.into(),
        how,
    }
}

#[test]
fn first_acknowledgement_sends_the_receipt_later_ones_are_audited() {
    let mut r = Receipts::default();
    let t = r.track(
        "alice@x/pc",
        "bob@m",
        "m1",
        "chat",
        "inbox",
        "users/bob/inbox/alice@x",
        1,
    );
    assert_eq!(
        r.on_tracked(Tracked::Routed {
            token: t,
            copies: 3
        }),
        None
    );
    let a = r.on_tracked(settled(t, "phone", Settlement::Dropped("queue_full")));
    assert!(matches!(a, Some(Action::Dropped(_, Some(_), "queue_full"))));
    let a = r.on_tracked(settled(t, "laptop", Settlement::Acknowledged));
    assert!(matches!(a, Some(Action::SendReceipt(ref e, ref c)) if e.id == "m1" && c == "laptop"));
    let a = r.on_tracked(settled(t, "tablet", Settlement::Acknowledged));
    assert!(matches!(a, Some(Action::Delivered(..))));
    assert_eq!(r.awaiting(), 0, "all copies settled");
    assert_eq!(
        r.on_tracked(settled(t, "x", Settlement::Acknowledged)),
        None
    );
}

#[test]
fn no_receipt_without_an_acknowledgement() {
    let mut r = Receipts::default();
    let t = r.track("a@x", "b@m", "m1", "chat", "r", "t", 1);
    let a = r.on_tracked(Tracked::Routed {
        token: t,
        copies: 0,
    });
    assert!(matches!(a, Some(Action::Dropped(_, None, "no_subscriber"))));
    let t = r.track("a@x", "b@m", "m2", "chat", "r", "t", 2);
    r.on_tracked(Tracked::Routed {
        token: t,
        copies: 1,
    });
    let a = r.on_tracked(settled(t, "c", Settlement::Expired));
    assert!(matches!(a, Some(Action::Expired(..))));
    assert_eq!(r.awaiting(), 0);
}

#[test]
fn replies_are_kept_per_bridged_jid_and_taken_once() {
    let mut r = Receipts::default();
    let reply = Reply {
        topic: "me/replies".into(),
        correlation: Some(Bytes::from_static(b"c1")),
    };
    r.expect_reply("bob@m", "m1", reply.clone());
    assert_eq!(r.reply_for("eve@m", "m1"), None);
    assert_eq!(r.reply_for("bob@m", "m1"), Some(reply));
    assert_eq!(r.reply_for("bob@m", "m1"), None);
}

#[test]
fn only_the_original_sender_may_correct() {
    let mut s = Senders::default();
    s.record("m1", "alice@x");
    assert_eq!(s.check("m1", "alice@x"), Correction::Allowed);
    assert_eq!(s.check("m1", "eve@x"), Correction::NotTheSender);
    assert_eq!(s.check("m2", "alice@x"), Correction::Unknown);
    for i in 0..=REMEMBERED {
        s.record(&format!("k{i}"), "z");
    }
    assert_eq!(s.check("m1", "alice@x"), Correction::Unknown, "forgotten");
}

#[test]
fn the_kept_sender_hash_follows_runs_and_changes_of_sender() {
    let mut s = Senders::default();
    // Runs of one sender, changes, a longer name after a shorter one (the kept text's buffer
    // is reused), and back.
    let sends = [
        ("a1", "alice@x"),
        ("a2", "alice@x"),
        ("b1", "bob@x"),
        ("a3", "alice@x"),
        ("l1", "a-much-longer-sender-name@example.org"),
        ("b2", "bob@x"),
        ("b3", "bob@x"),
    ];
    for (id, who) in sends {
        s.record(id, who);
    }
    for (id, who) in sends {
        assert_eq!(s.check(id, who), Correction::Allowed, "{id}");
        for other in ["alice@x", "bob@x", "a-much-longer-sender-name@example.org"] {
            if other != who {
                assert_eq!(s.check(id, other), Correction::NotTheSender, "{id} {other}");
            }
        }
    }
}

#[test]
fn the_correction_window_is_the_last_records_exactly() {
    let mut s = Senders::default();
    s.record("m1", "alice@x");
    // m1 stays among the last REMEMBERED records until that many more came.
    for i in 1..REMEMBERED {
        s.record(&format!("k{i}"), &format!("u{}", i % 7));
    }
    assert_eq!(
        s.check("m1", "alice@x"),
        Correction::Allowed,
        "the oldest kept"
    );
    assert_eq!(s.check("k1", "u1"), Correction::Allowed);
    assert_eq!(s.check("k1", "u2"), Correction::NotTheSender);
    let last = REMEMBERED - 1;
    assert_eq!(
        s.check(&format!("k{last}"), &format!("u{}", last % 7)),
        Correction::Allowed
    );
    s.record("k-next", "z");
    assert_eq!(
        s.check("m1", "alice@x"),
        Correction::Unknown,
        "one more: forgotten"
    );
    assert_eq!(s.check("k1", "u1"), Correction::Allowed);
    // The same id recorded again: the newest record decides, and keeps it longer.
    s.record("k1", "eve@x");
    assert_eq!(s.check("k1", "eve@x"), Correction::Allowed);
    assert_eq!(s.check("k1", "u1"), Correction::NotTheSender);
    for i in 0..REMEMBERED - 1 {
        s.record(&format!("later{i}"), "z");
    }
    assert_eq!(
        s.check("k1", "eve@x"),
        Correction::Allowed,
        "kept by its new record"
    );
    assert_eq!(s.check("k2", "u2"), Correction::Unknown);
    // Four full windows of records: every id of the last window is still known (no bucket
    // ran over), none of the one before.
    for i in 0..4 * REMEMBERED {
        s.record(&format!("w{i}"), "z");
    }
    let last_window = 3 * REMEMBERED..4 * REMEMBERED;
    assert!(
        last_window
            .clone()
            .all(|i| s.check(&format!("w{i}"), "z") == Correction::Allowed)
    );
    let before = 2 * REMEMBERED..3 * REMEMBERED;
    assert!(
        before
            .step_by(97)
            .all(|i| s.check(&format!("w{i}"), "z") == Correction::Unknown)
    );
}

fn journal() -> (tempfile::TempDir, Arc<crate::store::Store>, Arc<Journal>) {
    use crate::store::{DurabilityPolicy, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let j = Journal::start(store.clone(), DurabilityPolicy::Sync, 100).unwrap();
    (dir, store, j)
}

/// What a restart gives back: the owed receipt (sent at the first acknowledgement of a
/// recovered copy), a receipt already sent (only audited now), and the reply routes.
#[test]
fn resumed_bookkeeping_answers_as_before_the_restart() {
    use crate::broker::tracking::Recovered;
    let (_dir, store, j) = journal();
    let mut before = Receipts {
        journal: Some(j.clone()),
        ..Receipts::default()
    };
    let owed = before.track("a@x/pc", "b@m", "m1", "chat", "inbox", "t/b", 1);
    let sent = before.track("a@x/pc", "c@m", "m2", "headline", "inbox", "t/c", 2);
    let reply = ReplyRecord {
        v: FORMAT,
        from: "b@m".into(),
        id: "r1".into(),
        topic: "me/replies".into(),
        correlation: Some(vec![1, 2]),
    };
    let stored = crate::store::Op::Put {
        table: REPLIES.into(),
        key: seq_key(7),
        value: to_bytes(&reply),
    };
    store.apply(&[stored], true).unwrap();
    let resumed = Resumed {
        tracked: vec![
            Recovered {
                token: owed,
                note: before.note(owed).unwrap(),
                copies: 2,
                acked: false,
            },
            Recovered {
                token: sent,
                note: before.note(sent).unwrap(),
                copies: 1,
                acked: true,
            },
            Recovered {
                token: 99,
                note: b"damaged".to_vec(),
                copies: 1,
                acked: false,
            },
        ],
        replies: vec![(7, reply)],
        journal: j.clone(),
    };
    let mut r = Receipts::resumed(Some(resumed));
    assert_eq!(r.awaiting(), 2, "the damaged note is skipped");
    let a = r.on_tracked(settled(owed, "phone", Settlement::Acknowledged));
    assert!(
        matches!(a, Some(Action::SendReceipt(ref e, _)) if e.id == "m1" && e.sender == "a@x/pc" && e.kind == "chat"),
        "{a:?}"
    );
    let a = r.on_tracked(settled(owed, "tablet", Settlement::Acknowledged));
    assert!(matches!(a, Some(Action::Delivered(..))), "{a:?}");
    let a = r.on_tracked(settled(sent, "phone", Settlement::Acknowledged));
    assert!(
        matches!(a, Some(Action::Delivered(ref e, _)) if e.kind == "headline"),
        "no second receipt: {a:?}"
    );
    assert_eq!(r.awaiting(), 0);
    assert!(
        r.track("a@x", "b@m", "m3", "chat", "r", "t", 1) > 99,
        "new tokens never reuse recovered ones"
    );
    let back = r.reply_for("b@m", "r1").unwrap();
    assert_eq!(r.reply_for("b@m", "r1"), None, "taken once");
    assert_eq!(back.topic, "me/replies");
    assert_eq!(back.correlation.as_deref(), Some(&[1u8, 2][..]));
    // A new route is written; the used one is deleted with it.
    r.expect_reply(
        "d@m",
        "r2",
        Reply {
            topic: "d/r".into(),
            correlation: None,
        },
    );
    j.close(std::time::Duration::from_secs(5));
    let kept = store.recover_broker().unwrap().replies;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        (kept[0].1.from.as_str(), kept[0].1.id.as_str()),
        ("d@m", "r2")
    );
    assert!(kept[0].0 >= 100, "keys come from the journal's sequence");
}

#[test]
fn waiting_receipts_are_bounded_and_the_oldest_forgotten_is_counted() {
    let (_dir, _store, j) = journal();
    let mut r = Receipts {
        journal: Some(j),
        ..Receipts::default()
    };
    let first = r.track("a@x", "b@m", "first", "chat", "r", "t", 1);
    assert!(r.note(first).is_some(), "kept while it waits");
    for i in 0..REMEMBERED {
        r.track("a@x", "b@m", &i.to_string(), "chat", "r", "t", 1);
    }
    assert_eq!(r.awaiting(), REMEMBERED);
    assert_eq!(r.forgotten(), 1);
    assert_eq!(r.note(first), None, "the oldest went");
    assert_eq!(
        r.on_tracked(settled(first, "c", Settlement::Acknowledged)),
        None
    );
}

#[test]
fn without_a_store_no_note_is_made() {
    let mut r = Receipts::default();
    let token = r.track("a@x", "b@m", "m", "chat", "r", "t", 1);
    assert_eq!(r.note(token), None);
}
