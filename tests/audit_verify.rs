//! The audit writer on real files, then `audit verify` (library and CLI) against every kind
//! of tampering: a changed record, a changed and re-hashed record, an inserted, a deleted and
//! a reordered record, a missing file, a truncated file, a cut last line, a renamed file.
//! Also: the trail goes on across restarts and after a crash; retention and legal hold;
//! `audit query` and `audit tail`.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use xmpp_mqtt_bridge::audit::record::{Line, check_hash};
use xmpp_mqtt_bridge::audit::verify::{Report, verify};
use xmpp_mqtt_bridge::audit::{self, AuditConfig, PayloadPolicy, file_name, list_files};
use xmpp_mqtt_bridge::bridge::events::{Direction, Outcome, Translation, XmppSide};

/// A child process killed when the test ends, passed or failed.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_xmpp-mqtt-bridge")
}

fn event(i: u64) -> Translation {
    let mut e = Translation::start(if i % 2 == 0 {
        Direction::XmppToMqtt
    } else {
        Direction::MqttToXmpp
    });
    e.rule = Some(if i % 3 == 0 { "news" } else { "chat" }.into());
    e.xmpp = XmppSide {
        from: Some(format!("user{}@example.org/res", i % 4)),
        to: Some("bob@mqtt.example.org".into()),
        kind: Some("chat"),
        id: Some(format!("m{i}")),
    };
    e.mqtt.topic = Some(format!("users/bob/inbox/user{}@example.org", i % 4));
    e.payload = Bytes::from(format!("message number {i}"));
    if i % 5 == 4 {
        e.outcome = Outcome::Denied {
            reason: "no_rule",
            detail: "no mapping rule covers this address".into(),
        };
    }
    e
}

fn config(dir: &Path) -> AuditConfig {
    let mut cfg = AuditConfig::new(dir.to_path_buf());
    cfg.max_file_bytes = 4096;
    cfg.payload = PayloadPolicy::Full;
    cfg
}

/// Runs a writer over `cfg`, writes events `from..to` (in batches of `batch`), stops it.
async fn write(cfg: AuditConfig, from: u64, to: u64) -> u64 {
    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::channel(16);
    let stats = audit::spawn(cfg, rx, &tracker);
    for i in from..to {
        tx.send(event(i)).await.unwrap();
    }
    drop(tx);
    tracker.close();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("the writer stops when the bridge's sender is dropped");
    assert!(stats.is_writable());
    stats
        .records_written
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A trail of 40 records over several files.
async fn trail() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    assert_eq!(write(config(&dir), 0, 40).await, 40);
    (tmp, dir)
}

fn copy(dir: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("audit");
    std::fs::create_dir(&to).unwrap();
    for (_, p) in list_files(dir).unwrap() {
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    (tmp, to)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn put(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn file(dir: &Path, n: u64) -> PathBuf {
    dir.join(file_name(n))
}

/// Asserts that the report has a problem in file `n` at `line` whose text contains `what`.
fn assert_found(report: &Report, n: u64, line: usize, what: &str) {
    let name = file_name(n);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.file.ends_with(&name) && p.line == line && p.message.contains(what)),
        "expected `{what}` at {name}:{line}; got {:#?}",
        report.problems
    );
}

#[tokio::test]
async fn an_untouched_trail_verifies_and_spans_several_files() {
    let (_tmp, dir) = trail().await;
    let files = list_files(&dir).unwrap();
    assert!(files.len() >= 3, "4 KiB files: {} files", files.len());
    let report = verify(&dir).unwrap();
    assert!(report.ok(), "{:#?}", report.problems);
    assert_eq!((report.files, report.records), (files.len(), 40));
    // Every file opens and ends with a checkpoint that counts its records; sequence numbers
    // run 1..=40 without gaps; payloads are there under the `full` policy.
    let mut seqs = Vec::new();
    for (n, path) in &files {
        let ls: Vec<Line> = lines(path)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(ls.first().unwrap().kind, "open");
        assert_eq!(ls.first().unwrap().file, Some(*n));
        let last = ls.last().unwrap();
        assert_eq!(last.kind, "checkpoint");
        let records: Vec<&Line> = ls.iter().filter(|l| l.kind == "record").collect();
        assert_eq!(last.records, Some(records.len() as u64));
        for r in records {
            seqs.push(r.seq);
            let i = r.seq - 1;
            assert_eq!(r.payload.as_deref(), Some(&*format!("message number {i}")));
            assert_eq!(
                r.xmpp.as_ref().unwrap().id.as_deref(),
                Some(&*format!("m{i}"))
            );
        }
    }
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    // The CLI agrees.
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("intact:") && stdout.contains("40 records"),
        "{stdout}"
    );
}

#[tokio::test]
async fn every_kind_of_tampering_is_caught_and_located() {
    let (_tmp, dir) = trail().await;

    // 1. A record edited in place (payload changed): its own hash no longer matches.
    let (_t, d) = copy(&dir);
    let mut ls = lines(&file(&d, 1));
    ls[2] = ls[2].replace("message number 1", "message number 9");
    put(&file(&d, 1), &ls);
    let r = verify(&d).unwrap();
    assert_found(&r, 1, 3, "changed");
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);

    // 2. A record edited and re-hashed by someone without the chain: the next line's `prev`
    //    no longer matches.
    let (_t, d) = copy(&dir);
    let mut ls = lines(&file(&d, 1));
    let mut forged: Line = serde_json::from_str(&ls[2]).unwrap();
    forged.outcome = Some("denied".into());
    let prev = forged.prev.clone();
    let (text, _) = forged.seal(&prev);
    ls[2] = text.trim_end().to_string();
    assert!(
        check_hash(&ls[2]).unwrap().1,
        "the forged line itself is consistent"
    );
    put(&file(&d, 1), &ls);
    let r = verify(&d).unwrap();
    assert_found(&r, 1, 4, "chain broken");

    // 3. A record inserted (a copy of another one).
    let (_t, d) = copy(&dir);
    let mut ls = lines(&file(&d, 1));
    let copy_of = ls[2].clone();
    ls.insert(4, copy_of);
    put(&file(&d, 1), &ls);
    let r = verify(&d).unwrap();
    assert_found(&r, 1, 5, "chain broken");
    assert_found(&r, 1, 5, "out of order");

    // 4. A record deleted.
    let (_t, d) = copy(&dir);
    let mut ls = lines(&file(&d, 1));
    ls.remove(3);
    put(&file(&d, 1), &ls);
    let r = verify(&d).unwrap();
    assert_found(&r, 1, 4, "chain broken");
    assert_found(&r, 1, 4, "1 record(s) missing before record 4");
    assert_found(&r, 1, ls.len(), "the checkpoint counts");

    // 5. Two records swapped.
    let (_t, d) = copy(&dir);
    let mut ls = lines(&file(&d, 1));
    ls.swap(2, 3);
    put(&file(&d, 1), &ls);
    let r = verify(&d).unwrap();
    assert_found(&r, 1, 3, "chain broken");
    assert_found(&r, 1, 4, "out of order");

    // 6. A whole file missing from the middle.
    let (_t, d) = copy(&dir);
    std::fs::remove_file(file(&d, 2)).unwrap();
    let r = verify(&d).unwrap();
    assert_found(&r, 3, 0, "audit file 2 is missing");
    assert_found(&r, 3, 1, "chain broken");

    // 7. A closed file truncated by whole lines (its checkpoint gone).
    let (_t, d) = copy(&dir);
    let mut ls = lines(&file(&d, 1));
    ls.truncate(ls.len() - 2);
    put(&file(&d, 1), &ls);
    let r = verify(&d).unwrap();
    assert_found(
        &r,
        1,
        ls.len(),
        "truncated: the file ends without its checkpoint",
    );

    // 8. A file cut in the middle of a line.
    let (_t, d) = copy(&dir);
    let text = std::fs::read(file(&d, 2)).unwrap();
    std::fs::write(file(&d, 2), &text[..text.len() / 2]).unwrap();
    let r = verify(&d).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.file.ends_with(file_name(2)) && p.message.contains("incomplete")),
        "{:#?}",
        r.problems
    );

    // 9. A file renamed over a gap (file 2 passed off as 2 of a shorter trail).
    let (_t, d) = copy(&dir);
    std::fs::remove_file(file(&d, 2)).unwrap();
    std::fs::rename(file(&d, 3), file(&d, 2)).unwrap();
    let r = verify(&d).unwrap();
    assert_found(&r, 2, 1, "renamed");

    // The CLI exits 1 and names file and line.
    let (_t, d) = copy(&dir);
    let mut ls = lines(&file(&d, 1));
    ls.remove(3);
    put(&file(&d, 1), &ls);
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .arg(&d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("audit-00000001.jsonl:4: chain broken"),
        "{stdout}"
    );
    assert!(stdout.contains("TAMPERED OR DAMAGED"), "{stdout}");
}

#[tokio::test]
async fn the_chain_goes_on_across_restarts_and_after_a_crash() {
    let (_tmp, dir) = trail().await;
    let before = list_files(&dir).unwrap().len();
    // A clean restart: new files, sequence and chain continue.
    assert_eq!(write(config(&dir), 40, 50).await, 10);
    let r = verify(&dir).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.records, 50);
    assert!(list_files(&dir).unwrap().len() > before);
    // A crash: the newest file lost its checkpoint (the process died before closing it).
    let (last, path) = list_files(&dir).unwrap().pop().unwrap();
    let mut ls = lines(&path);
    ls.pop();
    put(&path, &ls);
    let r = verify(&dir).unwrap();
    assert!(
        r.ok(),
        "an open newest file is not a problem: {:#?}",
        r.problems
    );
    assert!(
        r.notes.iter().any(|n| n.contains("still open")),
        "{:?}",
        r.notes
    );
    // The next start closes it with a `recovered` checkpoint and goes on.
    assert_eq!(write(config(&dir), 50, 55).await, 5);
    let closed: Line = serde_json::from_str(lines(&path).last().unwrap()).unwrap();
    assert_eq!(
        (closed.kind.as_str(), closed.recovered),
        ("checkpoint", true)
    );
    assert_eq!(closed.file, Some(last));
    let r = verify(&dir).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.records, 55);
}

#[tokio::test]
async fn payload_policy_per_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = config(&dir);
    cfg.payload = PayloadPolicy::None;
    cfg.rules.insert("chat".into(), PayloadPolicy::HashOnly);
    cfg.rules.insert("news".into(), PayloadPolicy::Full);
    write(cfg, 0, 6).await;
    let records: Vec<Line> = xmpp_mqtt_bridge::audit::query::read_all(&dir)
        .unwrap()
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.kind == "record")
        .collect();
    assert_eq!(records.len(), 6);
    for r in records {
        let payload = format!("message number {}", r.seq - 1);
        assert_eq!(r.size, Some(payload.len()));
        match r.rule.as_deref() {
            Some("news") => {
                assert_eq!(r.payload.as_deref(), Some(&*payload));
                assert!(r.sha256.is_some());
            }
            Some("chat") => {
                assert_eq!(r.payload, None);
                assert_eq!(
                    r.sha256.as_deref(),
                    Some(&*audit::record::sha256_hex(payload.as_bytes()))
                );
            }
            other => panic!("unexpected rule {other:?}"),
        }
    }
}

#[tokio::test]
async fn retention_deletes_old_closed_files_unless_on_legal_hold() {
    let (_tmp, dir) = trail().await;
    let files = list_files(&dir).unwrap();
    // Age the two oldest files by ten days.
    for (_, p) in &files[..2] {
        let ok = Command::new("touch")
            .args(["-d", "10 days ago"])
            .arg(p)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    // Legal hold (the flag file): nothing is deleted.
    std::fs::write(dir.join(audit::LEGAL_HOLD_FILE), "case 42\n").unwrap();
    let mut cfg = config(&dir);
    cfg.retention_days = 7;
    write(cfg.clone(), 40, 41).await;
    assert!(
        files.iter().all(|(_, p)| p.exists()),
        "legal hold keeps all"
    );
    // The config flag holds too.
    std::fs::remove_file(dir.join(audit::LEGAL_HOLD_FILE)).unwrap();
    cfg.legal_hold = true;
    write(cfg.clone(), 41, 42).await;
    assert!(
        files.iter().all(|(_, p)| p.exists()),
        "legal_hold = true keeps all"
    );
    // No hold: the two old files go, the rest stays and still verifies (with a note).
    cfg.legal_hold = false;
    write(cfg, 42, 43).await;
    assert!(!files[0].1.exists() && !files[1].1.exists());
    assert!(files[2..].iter().all(|(_, p)| p.exists()));
    let r = verify(&dir).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert!(
        r.notes.iter().any(|n| n.contains("starts at file 3")),
        "{:?}",
        r.notes
    );
}

#[tokio::test]
async fn query_filters_and_tail_follows() {
    let (_tmp, dir) = trail().await;
    let query = |args: &[&str]| {
        let out = Command::new(bin())
            .args(["audit", "query"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let parse = |text: &str| -> Vec<Line> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(parse(&query(&[])).len(), 40);
    let denied = parse(&query(&["--outcome", "denied"]));
    assert_eq!(denied.len(), 8);
    assert!(
        denied
            .iter()
            .all(|l| l.reason.as_deref() == Some("no_rule"))
    );
    let user1 = parse(&query(&["--jid", "user1@example.org"]));
    assert_eq!(user1.len(), 10);
    let topic = parse(&query(&["--topic", "users/bob/inbox/user2@example.org"]));
    assert_eq!(topic.len(), 10);
    let both = parse(&query(&["--topic", "users/+/inbox/#", "--rule", "news"]));
    assert_eq!(both.len(), 14);
    assert!(parse(&query(&["--since", "2999-01-01T00:00:00Z"])).is_empty());
    assert_eq!(parse(&query(&["--since", "1h"])).len(), 40);
    assert!(parse(&query(&["--until", "1h"])).is_empty());
    let table = query(&["--format", "table", "--rule", "news"]);
    assert_eq!(table.lines().count(), 15, "{table}");
    assert!(table.lines().next().unwrap().starts_with("SEQ"));
    // Bad input: a precise error and exit 64.
    let bad = Command::new(bin())
        .args(["audit", "query"])
        .arg(&dir)
        .args(["--since", "yesterday-ish"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("yesterday-ish"));

    // tail: the last 3, then what is written next (a new file after a restart).
    let mut child = Killed(
        Command::new(bin())
            .args(["audit", "tail", "-n", "3"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }
    write(config(&dir), 40, 45).await;
    for _ in 0..5 {
        seen.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }
    drop(child);
    let seqs: Vec<u64> = parse(&seen.join("\n")).iter().map(|l| l.seq).collect();
    assert_eq!(seqs, vec![38, 39, 40, 41, 42, 43, 44, 45]);
}

#[test]
fn audit_and_admin_config_errors_name_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[xmpp]\nsecret = \"s\"\n\n[mapping]\ndir = \"{}\"\n\n[audit]\npayload = \"half\"\n\
             when_full = \"drop\"\nmax_file_size = 10\nrotate_interval = \"soon\"\n\
             retension_days = 3\n\n[audit.rules]\nchat-inbox = \"full\"\nnobody = \"full\"\n\
             chat-outbox = \"all\"\n\n[admin]\nlisten = \"9464\"\n",
            mappings.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let file = path.display().to_string();
    for expected in [
        format!("{file}:8: audit.payload: `half` is not a payload policy"),
        format!("{file}:9: audit.when_full: `drop` is not a policy"),
        format!("{file}:10: audit.max_file_size: 10 is out of range"),
        format!("{file}:11: audit.rotate_interval: `soon` is not a duration"),
        format!("{file}:12: audit.retension_days: unknown key (did you mean `retention_days`?)"),
        "audit.rules.chat-outbox: `all` is not a payload policy".to_string(),
        "audit.rules.nobody: no mapping rule is named `nobody`".to_string(),
        format!("{file}:20: admin.listen: `9464` is not an IP:port address"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
    // A valid [audit] section shows in the effective configuration, relative dir resolved.
    std::fs::write(
        &path,
        format!(
            "[xmpp]\nsecret = \"s\"\n\n[mapping]\ndir = \"{}\"\n\n[audit]\ndir = \"trail\"\n\
             payload = \"full\"\nwhen_full = \"refuse\"\n\n[audit.rules]\nchat-inbox = \"none\"\n\
             \n[admin]\nlisten = \"127.0.0.1:0\"\n",
            mappings.display()
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trail = tmp.path().join("trail").display().to_string();
    for expected in [
        format!("dir = \"{trail}\""),
        "payload = \"full\"".to_string(),
        "when_full = \"refuse\"".to_string(),
        "chat-inbox = \"none\"".to_string(),
        "listen = \"127.0.0.1:0\"".to_string(),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing `{expected}` in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn files_rotate_by_age_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let mut cfg = config(&dir);
    cfg.max_file_bytes = u64::MAX;
    cfg.rotate_interval = Duration::from_millis(200);
    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::channel(16);
    audit::spawn(cfg, rx, &tracker);
    tx.send(event(0)).await.unwrap();
    // The writer's once-a-second housekeeping closes the file once it is 200 ms old, even
    // with no traffic; the next record opens file 2.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let closed = list_files(&dir)
            .unwrap()
            .first()
            .is_some_and(|(_, p)| lines(p).last().is_some_and(|l| l.contains("checkpoint")));
        if closed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "file 1 never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.send(event(1)).await.unwrap();
    drop(tx);
    tracker.close();
    tracker.wait().await;
    assert_eq!(list_files(&dir).unwrap().len(), 2);
    let r = verify(&dir).unwrap();
    assert!(r.ok(), "{:#?}", r.problems);
    assert_eq!(r.records, 2);
}
