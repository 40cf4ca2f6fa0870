//! Fault test of the MQTT side (issue 7): the TCP paths between the broker and its clients are
//! cut and blackholed (through `common::proxy`) while QoS 1 and QoS 2 messages flow. Sessions
//! resume (clean session off), what was in flight is redelivered, QoS 2 exactly once, and the
//! will of a client whose path went silent fires when its keep-alive expires.
//!
//! The publisher is rumqttc. The subscriber is a raw MQTT 3.1.1 client written here because
//! it must keep its QoS 2 state across reconnects (spec 4.3.3 method B: deliver on PUBREL,
//! remember the packet ids PUBREC'd), which rumqttc does not (it delivers on PUBLISH and clears
//! its QoS 2 ids at reconnect), so duplicates seen by a rumqttc application would be rumqttc's.
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::raw;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The subscriber's keep-alive, seconds.
const KEEP_ALIVE: u16 = 1;
/// Messages per QoS.
const PER_QOS: u64 = 150;

/// The raw subscriber's view, kept across its connections.
#[derive(Debug, Default)]
struct SubState {
    /// CONNACKs received, with their Session Present flag.
    connacks: Vec<bool>,
    subscribed: bool,
    /// QoS 2 packet ids PUBREC'd and not yet released, with their payload.
    pending: BTreeMap<u16, Vec<u8>>,
    /// Deliveries to the application, per payload.
    delivered: BTreeMap<Vec<u8>, u64>,
    /// Payloads in order of first delivery, per QoS.
    order: [Vec<Vec<u8>>; 3],
    /// PUBLISH packets with the DUP flag.
    dup_flags: u64,
    /// QoS 2 PUBLISH packets for an id already PUBREC'd (answered, not delivered).
    qos2_repeats: u64,
}

impl SubState {
    fn deliver(&mut self, qos: usize, payload: Vec<u8>) {
        let n = self.delivered.entry(payload.clone()).or_insert(0);
        if *n == 0 {
            self.order[qos].push(payload);
        }
        *n += 1;
    }
}

/// One complete packet from `buf`: first byte and body.
fn take_packet(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7F) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    if buf.len() < i + len {
        return None;
    }
    let first = buf[0];
    let body = buf[i..i + len].to_vec();
    buf.drain(..i + len);
    Some((first, body))
}

/// The raw subscriber: connects through `addr` with clean session off and a will, subscribes
/// `cut/data/#` at QoS 2 once, acknowledges as the spec's method B, pings every keep-alive and
/// reconnects when the broker is silent for twice the keep-alive or the connection breaks.
/// Ends with a DISCONNECT when `stop` fires.
async fn subscriber(addr: SocketAddr, state: Arc<Mutex<SubState>>, mut stop: mpsc::Receiver<()>) {
    let silence = Duration::from_secs(2 * u64::from(KEEP_ALIVE));
    loop {
        let Ok(Ok(mut stream)) = tokio::time::timeout(silence, TcpStream::connect(addr)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let connect =
            raw::connect_with_will("cut-sub", false, KEEP_ALIVE, "cut/will/sub", "gone", 1);
        if stream.write_all(&connect).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE)));
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        'conn: loop {
            tokio::select! {
                r = stream.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break 'conn,
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        last_heard = tokio::time::Instant::now();
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > silence
                        || stream.write_all(&[0xC0, 0x00]).await.is_err()
                    {
                        break 'conn;
                    }
                    continue;
                }
                _ = stop.recv() => {
                    let _ = stream.write_all(&[0xE0, 0x00]).await;
                    return;
                }
            }
            let mut out = Vec::new();
            while let Some((first, body)) = take_packet(&mut buf) {
                let mut s = state.lock().unwrap();
                match first >> 4 {
                    2 => {
                        assert_eq!(body[1], 0, "CONNACK refused");
                        s.connacks.push(body[0] & 1 == 1);
                        if !s.subscribed {
                            out.extend(raw::subscribe_packet(1, "cut/data/#", 2));
                        }
                    }
                    9 => {
                        assert_eq!(body[2], 2, "SUBACK granting QoS 2");
                        s.subscribed = true;
                    }
                    3 => {
                        let qos = (first >> 1) & 3;
                        if first & 0x08 != 0 {
                            s.dup_flags += 1;
                        }
                        let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                        let id = u16::from_be_bytes([body[2 + tlen], body[3 + tlen]]);
                        let payload = body[4 + tlen..].to_vec();
                        match qos {
                            1 => {
                                s.deliver(1, payload);
                                out.extend([0x40, 0x02]);
                                out.extend(id.to_be_bytes());
                            }
                            2 => {
                                match s.pending.entry(id) {
                                    std::collections::btree_map::Entry::Occupied(_) => {
                                        s.qos2_repeats += 1;
                                    }
                                    std::collections::btree_map::Entry::Vacant(v) => {
                                        v.insert(payload);
                                    }
                                }
                                out.extend([0x50, 0x02]);
                                out.extend(id.to_be_bytes());
                            }
                            _ => panic!(
                                "QoS {qos} publish on a QoS 2 subscription of QoS 1/2 messages"
                            ),
                        }
                    }
                    6 => {
                        let id = u16::from_be_bytes([body[0], body[1]]);
                        if let Some(payload) = s.pending.remove(&id) {
                            s.deliver(2, payload);
                        }
                        out.extend([0x70, 0x02]);
                        out.extend(id.to_be_bytes());
                    }
                    13 => {}
                    other => panic!("unexpected packet type {other}"),
                }
            }
            if !out.is_empty() && stream.write_all(&out).await.is_err() {
                break 'conn;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// rumqttc through `addr` with clean session off, publishing `PER_QOS` messages at QoS 1 and
/// as many at QoS 2, interleaved; returns the acknowledgements seen (PUBACK, PUBCOMP) as they
/// come, and each connection error.
fn publisher(addr: SocketAddr) -> (mpsc::UnboundedReceiver<Result<u8, String>>, AsyncClient) {
    let mut opts = MqttOptions::new("cut-pub", addr.ip().to_string(), addr.port());
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => Ok(1),
                Ok(Event::Incoming(Packet::PubComp(_))) => Ok(2),
                Ok(_) => continue,
                Err(e) => {
                    // rumqttc reconnects on the next poll.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err(e.to_string())
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    let sender = client.clone();
    tokio::spawn(async move {
        for n in 0..PER_QOS {
            for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let q = qos as u8;
                sender
                    .publish(format!("cut/data/{q}"), qos, false, format!("q{q}-{n}"))
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (rx, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_client_paths_resume_sessions_redeliver_and_fire_the_will_on_keep_alive() {
    let broker = common::start_broker(|_| {}).await;
    let to_sub = Proxy::start(broker.addr).await;
    let to_pub = Proxy::start(broker.addr).await;

    let mut watcher = common::connect(broker.addr, "will-watcher").await;
    watcher.subscribe("cut/will/#", QoS::AtLeastOnce).await;

    let state = Arc::new(Mutex::new(SubState::default()));
    let (stop_sub, stop) = mpsc::channel(1);
    let sub_task = tokio::spawn(subscriber(to_sub.addr, state.clone(), stop));
    let deadline = Instant::now() + common::WAIT;
    while !state.lock().unwrap().subscribed {
        assert!(Instant::now() < deadline, "subscriber not subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (mut acks, _client) = publisher(to_pub.addr);
    let mut acked = [0u64; 3];
    let mut pub_errors = 0;
    let total = 2 * PER_QOS;
    let mut next_ack =
        async |acked: &mut [u64; 3], pub_errors: &mut u64| match tokio::time::timeout(
            common::WAIT,
            acks.recv(),
        )
        .await
        {
            Ok(Some(Ok(q))) => acked[usize::from(q)] += 1,
            Ok(Some(Err(_))) => *pub_errors += 1,
            other => panic!("publisher stalled: {other:?}, acknowledged {acked:?}"),
        };

    // 1. Both paths reset at once, a quarter in.
    while acked[1] + acked[2] < total / 4 {
        next_ack(&mut acked, &mut pub_errors).await;
    }
    to_sub.cut();
    to_pub.cut();
    let will = watcher.next_publish().await;
    assert_eq!(will.topic, "cut/will/sub", "the reset subscriber's will");

    // 2. The subscriber's path goes silent half-way: the broker closes it when 1.5 times the
    // keep-alive has passed without a packet, and its will fires then.
    while acked[1] + acked[2] < total / 2 {
        next_ack(&mut acked, &mut pub_errors).await;
    }
    to_sub.blackhole();
    let holed = Instant::now();
    let will = watcher.next_publish().await;
    let will_after = holed.elapsed();
    assert_eq!(will.topic, "cut/will/sub");
    let keep_alive = Duration::from_secs(u64::from(KEEP_ALIVE));
    assert!(
        will_after >= keep_alive && will_after <= keep_alive * 3 / 2 + Duration::from_millis(1500),
        "will {will_after:?} after the path went silent (keep-alive {keep_alive:?})"
    );
    to_sub.forward();

    while acked[1] + acked[2] < total {
        next_ack(&mut acked, &mut pub_errors).await;
    }
    assert_eq!(acked, [0, PER_QOS, PER_QOS], "PUBACKs and PUBCOMPs");

    // Everything reaches the subscriber: QoS 1 at least once, QoS 2 exactly once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = {
            let s = state.lock().unwrap();
            (s.order[1].len() as u64, s.order[2].len() as u64)
        };
        if got == (PER_QOS, PER_QOS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "subscriber got {got:?} of {PER_QOS} per QoS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Late copies, if any, within half a second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_sub.send(()).await.unwrap();
    tokio::time::timeout(common::WAIT, sub_task)
        .await
        .unwrap()
        .unwrap();
    watcher.expect_no_publish(Duration::from_millis(500)).await;

    let s = std::mem::take(&mut *state.lock().unwrap());
    for q in [1u8, 2] {
        let want: Vec<Vec<u8>> = (0..PER_QOS)
            .map(|n| format!("q{q}-{n}").into_bytes())
            .collect();
        assert_eq!(
            s.order[usize::from(q)],
            want,
            "QoS {q} in order of first delivery"
        );
    }
    let qos1_copies: u64 = (0..PER_QOS)
        .map(|n| s.delivered[format!("q1-{n}").as_bytes()])
        .sum();
    for n in 0..PER_QOS {
        assert_eq!(
            s.delivered[format!("q2-{n}").as_bytes()],
            1,
            "q2-{n} exactly once"
        );
    }
    assert!(
        s.pending.is_empty(),
        "QoS 2 unreleased: {:?}",
        s.pending.keys()
    );
    assert!(s.connacks.len() >= 3, "connections: {:?}", s.connacks);
    assert!(!s.connacks[0], "first connection: no session yet");
    assert!(
        s.connacks[1..].iter().all(|present| *present),
        "every later connection resumed the session: {:?}",
        s.connacks
    );
    eprintln!(
        "client paths cut and blackholed: will {will_after:?} after the silence (keep-alive \
         {keep_alive:?}); subscriber connected {} times, {} redelivered PUBLISH (DUP), {} QoS 2 \
         repeats answered without delivery, {} QoS 1 duplicates; publisher saw {pub_errors} \
         connection errors; proxies accepted {} + {}",
        s.connacks.len(),
        s.dup_flags,
        s.qos2_repeats,
        qos1_copies - PER_QOS,
        to_sub.accepted(),
        to_pub.accepted(),
    );
    assert!(broker.stop().await, "clean shutdown");
}
