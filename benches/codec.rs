//! Criterion benchmarks of the MQTT codec: decode and encode of typical hot-path packets.
//!
//! `cargo bench --bench codec` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xmpp_mqtt_bridge::broker::codec::{
    Connect, LastWill, Packet, Properties, Property, ProtocolVersion, Publish, QoS, decode, encode,
    encoded_len,
};

const MAX_PACKET_SIZE: usize = 1 << 20;

fn publish(qos: QoS, version: ProtocolVersion) -> Packet {
    let properties = match version {
        ProtocolVersion::V311 => Properties::new(),
        ProtocolVersion::V5 => Properties(vec![
            Property::UserProperty("source".into(), "xmpp".into()),
            Property::UserProperty("jid".into(), "alice@example.org/phone".into()),
        ]),
    };
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: ByteString::from_static("bridge/xmpp/alice@example.org/messages"),
        pkid: if qos == QoS::AtMostOnce { 0 } else { 4242 },
        payload: Bytes::from(vec![0x42; 64]),
        properties,
    })
}

fn connect(version: ProtocolVersion) -> Packet {
    let properties = match version {
        ProtocolVersion::V311 => Properties::new(),
        ProtocolVersion::V5 => Properties(vec![
            Property::SessionExpiryInterval(3600),
            Property::ReceiveMaximum(100),
            Property::TopicAliasMaximum(16),
        ]),
    };
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: ByteString::from_static("sensor-gateway-0042"),
        will: Some(LastWill {
            topic: ByteString::from_static("gateways/0042/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::new(),
        }),
        username: Some(ByteString::from_static("gateway")),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
        properties,
    }))
}

fn cases() -> Vec<(&'static str, ProtocolVersion, Packet)> {
    use ProtocolVersion::{V5, V311};
    vec![
        ("publish_qos0_v311", V311, publish(QoS::AtMostOnce, V311)),
        ("publish_qos1_v311", V311, publish(QoS::AtLeastOnce, V311)),
        ("publish_qos0_v5_2props", V5, publish(QoS::AtMostOnce, V5)),
        ("publish_qos1_v5_2props", V5, publish(QoS::AtLeastOnce, V5)),
        ("connect_v311", V311, connect(V311)),
        ("connect_v5", V5, connect(V5)),
    ]
}

/// Decodes from one read buffer holding many packets back to back, as a connection's read loop
/// does; filling the buffer is outside the measurement, dropping the packets is inside.
fn bench_decode(c: &mut Criterion) {
    const CHUNK: u64 = 1024;
    let mut group = c.benchmark_group("decode");
    for (name, version, packet) in cases() {
        let mut wire = BytesMut::new();
        encode(&packet, version, &mut wire);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let mut buf = BytesMut::with_capacity(wire.len() * n as usize);
                    for _ in 0..n {
                        buf.extend_from_slice(&wire);
                    }
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(decode(&mut buf, version, MAX_PACKET_SIZE).ok());
                    }
                    total += start.elapsed();
                    left -= n;
                }
                total
            })
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, version, packet) in cases() {
        group.throughput(Throughput::Bytes(encoded_len(&packet, version) as u64));
        // A reused write buffer, as a connection's writer would have.
        let mut out = BytesMut::with_capacity(1024);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&packet), version, &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
