//! One audit `record` line: written straight into the batch buffer (`write_record`, what the
//! writer does) against building a `Line` and serializing it with serde_json (`Line::seal`,
//! the oracle the unit tests compare it with), for each payload policy.
//!
//! Run with `cargo bench --bench audit_record` (add `-- --quick` for a short run).

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use xmpp_mqtt_bridge::audit::PayloadPolicy;
use xmpp_mqtt_bridge::audit::record::{GENESIS, Line, write_record};
use xmpp_mqtt_bridge::bridge::events::{Direction, Outcome, Translation};

/// A delivered MQTT → XMPP chat message as the bridge reports it.
fn event() -> Translation {
    let mut e = Translation::start(Direction::MqttToXmpp);
    e.rule = Some("chat-outbox".into());
    e.xmpp.from = Some("bob@mqtt.localhost".into());
    e.xmpp.to = Some("alice@localhost".into());
    e.xmpp.kind = Some("chat");
    e.xmpp.id = Some("mqtt-de3-c17a805f".into());
    e.mqtt.topic = Some("users/bob/outbox/alice@localhost".into());
    e.mqtt.qos = Some(1);
    e.mqtt.client_id = Some("bob-pub".into());
    e.mqtt.packet_id = Some(4711);
    e.payload = bytes::Bytes::from_static(
        b"{\"body\":\"See you at the stand-up, bring the slides for the Q3 review\"}",
    );
    e.outcome = Outcome::Delivered;
    e
}

fn bench(c: &mut Criterion) {
    let e = event();
    for (name, policy) in [
        ("full", PayloadPolicy::Full),
        ("hash-only", PayloadPolicy::HashOnly),
    ] {
        c.bench_function(&format!("audit record {name}: write_record"), |b| {
            let mut out = String::with_capacity(64 * 1024);
            b.iter(|| {
                out.clear();
                black_box(write_record(&mut out, black_box(&e), policy, 42, GENESIS))
            });
        });
        c.bench_function(&format!("audit record {name}: Line + serde_json"), |b| {
            let mut out = String::with_capacity(64 * 1024);
            b.iter(|| {
                out.clear();
                let mut line = Line::record(black_box(&e), policy);
                line.seq = 42;
                let (text, hash) = line.seal(GENESIS);
                out.push_str(&text);
                black_box(hash)
            });
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
