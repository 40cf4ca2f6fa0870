//! MQTT 5 test helpers: hand-made MQTT 5 packets (independent of the broker's codec), a
//! reader that splits the broker's answers into packets and properties, and a rumqttc v5
//! client running in a task.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;

use crate::common::WAIT;
use crate::common::raw::{self, Raw};

// ---- bytes -------------------------------------------------------------------------------

/// One property as bytes: identifier then value.
pub fn prop(id: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![id];
    out.extend_from_slice(value);
    out
}

pub fn prop_u16(id: u8, v: u16) -> Vec<u8> {
    prop(id, &v.to_be_bytes())
}

pub fn prop_u32(id: u8, v: u32) -> Vec<u8> {
    prop(id, &v.to_be_bytes())
}

pub fn prop_str(id: u8, s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    raw::string(s.as_bytes(), &mut v);
    prop(id, &v)
}

/// A property block: length then properties.
pub fn props(list: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = list.concat();
    let mut out = Vec::new();
    raw::varint(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// A will for [`connect5`].
pub struct Will<'a> {
    pub props: Vec<u8>,
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

/// MQTT 5 CONNECT with a ready-made property block.
pub fn connect5(
    client_id: &str,
    clean: bool,
    keep_alive: u16,
    properties: &[u8],
    will: Option<Will<'_>>,
) -> Vec<u8> {
    let mut body = Vec::new();
    raw::string(b"MQTT", &mut body);
    body.push(5);
    let mut flags = if clean { 0x02 } else { 0 };
    if let Some(w) = &will {
        flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(properties);
    raw::string(client_id.as_bytes(), &mut body);
    if let Some(w) = will {
        body.extend_from_slice(&w.props);
        raw::string(w.topic.as_bytes(), &mut body);
        raw::string(w.payload, &mut body);
    }
    raw::packet(0x10, &body)
}

/// MQTT 5 PUBLISH with a ready-made property block.
pub fn publish5(
    topic: &str,
    qos: u8,
    retain: bool,
    pkid: u16,
    properties: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    raw::string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(properties);
    body.extend_from_slice(payload);
    raw::packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// MQTT 5 SUBSCRIBE with one filter.
pub fn subscribe5(pkid: u16, properties: &[u8], filter: &str, options: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.extend_from_slice(properties);
    raw::string(filter.as_bytes(), &mut body);
    body.push(options);
    raw::packet(0x82, &body)
}

/// MQTT 5 DISCONNECT with a reason code and a property block.
pub fn disconnect5(reason: u8, properties: &[u8]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend_from_slice(properties);
    raw::packet(0xE0, &body)
}

// ---- reading -----------------------------------------------------------------------------

/// A packet from the broker: first byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first: u8,
    pub body: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
}

/// Reads one whole packet.
pub async fn read_packet(raw: &mut Raw) -> RawPacket {
    let first = raw.read_exact(1).await[0];
    let mut len = 0usize;
    for i in 0..4 {
        let b = raw.read_exact(1).await[0];
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    let body = raw.read_exact(len).await;
    RawPacket { first, body }
}

/// A variable byte integer at `at`; returns the value and its length.
pub fn read_varint(bytes: &[u8], at: usize) -> (usize, usize) {
    let mut value = 0usize;
    for i in 0..4 {
        let b = bytes[at + i];
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("malformed varint in {bytes:02x?}");
}

/// A decoded property: identifier and value as text (numbers in decimal, strings as is,
/// binary in hex, a user property as `key=value`).
pub type Prop = (u8, String);

/// Decodes a property block at `at`; returns the properties and the bytes used.
pub fn parse_props(bytes: &[u8], at: usize) -> (Vec<Prop>, usize) {
    let (len, n) = read_varint(bytes, at);
    let mut i = at + n;
    let end = i + len;
    let mut out = Vec::new();
    let str_at = |i: usize| {
        let l = usize::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        (
            String::from_utf8_lossy(&bytes[i + 2..i + 2 + l]).into_owned(),
            2 + l,
        )
    };
    while i < end {
        let id = bytes[i];
        i += 1;
        let (value, used) = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => (bytes[i].to_string(), 1),
            0x13 | 0x21 | 0x22 | 0x23 => {
                (u16::from_be_bytes([bytes[i], bytes[i + 1]]).to_string(), 2)
            }
            0x02 | 0x11 | 0x18 | 0x27 => (
                u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
                    .to_string(),
                4,
            ),
            0x0B => {
                let (v, n) = read_varint(bytes, i);
                (v.to_string(), n)
            }
            0x09 | 0x16 => {
                let l = usize::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
                let hex: String = bytes[i + 2..i + 2 + l]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                (hex, 2 + l)
            }
            0x26 => {
                let (k, a) = str_at(i);
                let (v, b) = str_at(i + a);
                (format!("{k}={v}"), a + b)
            }
            _ => str_at(i),
        };
        out.push((id, value));
        i += used;
    }
    (out, n + len)
}

/// A PUBLISH from the broker, taken apart.
#[derive(Debug)]
pub struct RawPublish {
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pkid: u16,
    pub props: Vec<Prop>,
    pub payload: Vec<u8>,
}

impl RawPublish {
    pub fn parse(p: &RawPacket) -> RawPublish {
        assert_eq!(p.kind(), 3, "expected PUBLISH, got {p:02x?}");
        let qos = (p.first >> 1) & 3;
        let b = &p.body;
        let tl = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8(b[2..2 + tl].to_vec()).unwrap();
        let mut i = 2 + tl;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([b[i], b[i + 1]]);
            i += 2;
        }
        let (props, used) = parse_props(b, i);
        RawPublish {
            qos,
            retain: p.first & 1 == 1,
            topic,
            pkid,
            props,
            payload: b[i + used..].to_vec(),
        }
    }

    pub fn prop(&self, id: u8) -> Option<&str> {
        self.props
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.as_str())
    }
}

/// Connects with a raw MQTT 5 CONNECT and returns the socket and the CONNACK's reason code
/// and properties.
pub async fn raw5(addr: SocketAddr, connect: &[u8]) -> (Raw, u8, Vec<Prop>) {
    let mut raw = Raw::connect(addr).await;
    raw.send(connect).await;
    let ack = read_packet(&mut raw).await;
    assert_eq!(ack.kind(), 2, "CONNACK expected, got {ack:02x?}");
    let (props, _) = parse_props(&ack.body, 2);
    (raw, ack.body[1], props)
}

/// A raw MQTT 5 client that connected with a clean start and the given CONNECT properties.
pub async fn raw5_ok(addr: SocketAddr, client_id: &str, properties: &[Vec<u8>]) -> Raw {
    let (raw, code, _) = raw5(
        addr,
        &connect5(client_id, true, 60, &props(properties), None),
    )
    .await;
    assert_eq!(code, 0, "CONNACK success");
    raw
}

/// Subscribes a raw client and checks the SUBACK grants `expect`.
pub async fn raw_subscribe(
    raw: &mut Raw,
    pkid: u16,
    properties: &[Vec<u8>],
    filter: &str,
    options: u8,
    expect: u8,
) {
    raw.send(&subscribe5(pkid, &props(properties), filter, options))
        .await;
    let ack = read_packet(raw).await;
    assert_eq!(ack.kind(), 9, "SUBACK expected, got {ack:02x?}");
    assert_eq!(
        *ack.body.last().unwrap(),
        expect,
        "SUBACK code for {filter}"
    );
}

/// Reads until the broker closes; asserts the last thing sent was DISCONNECT with `reason`
/// and returns its properties.
pub async fn expect_disconnect(raw: &mut Raw, reason: u8, tag: &str) -> Vec<Prop> {
    let rest = raw.read_until_closed().await;
    assert!(
        rest.len() >= 2,
        "{tag}: no DISCONNECT before close: {rest:02x?}"
    );
    // Only DISCONNECT is expected, possibly after other packets: find it from the start.
    let mut i = 0;
    while i < rest.len() {
        let (len, n) = read_varint(&rest, i + 1);
        let end = i + 1 + n + len;
        if rest[i] == 0xE0 {
            let body = &rest[i + 1 + n..end];
            assert_eq!(
                body.first().copied(),
                Some(reason),
                "{tag}: DISCONNECT reason in {rest:02x?}"
            );
            return if body.len() > 1 {
                parse_props(body, 1).0
            } else {
                Vec::new()
            };
        }
        i = end;
    }
    panic!("{tag}: no DISCONNECT in {rest:02x?}");
}

// ---- rumqttc v5 --------------------------------------------------------------------------

/// A rumqttc v5 client whose event loop runs in a task.
pub struct Client5 {
    pub client: AsyncClient,
    pub publishes: mpsc::UnboundedReceiver<Publish>,
    pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
}

pub fn options5(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

/// Connects and returns the client with its CONNACK.
pub async fn connect5_client(opts: MqttOptions) -> (Client5, rumqttc::v5::mqttbytes::v5::ConnAck) {
    let (client, eventloop) = AsyncClient::new(opts, 1000);
    let mut c = spawn5(client, eventloop);
    let ack = c
        .wait_event(|e| matches!(e, Event::Incoming(Packet::ConnAck(_))))
        .await;
    let Some(Event::Incoming(Packet::ConnAck(ack))) = ack else {
        panic!("no CONNACK");
    };
    (c, ack)
}

pub async fn client5(addr: SocketAddr, id: &str) -> Client5 {
    connect5_client(options5(addr, id)).await.0
}

fn spawn5(client: AsyncClient, mut eventloop: EventLoop) -> Client5 {
    let (ptx, publishes) = mpsc::unbounded_channel();
    let (etx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if let Event::Incoming(Packet::Publish(p)) = &event {
                        let _ = ptx.send(p.clone());
                    }
                    if etx.send(Ok(event)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = etx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    Client5 {
        client,
        publishes,
        events,
    }
}

impl Client5 {
    pub async fn wait_event(&mut self, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(e))) if pred(&e) => return Some(e),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    eprintln!("client event loop ended: {e}");
                    return None;
                }
                _ => return None,
            }
        }
    }

    /// Waits for SUBACK and returns its reason codes.
    pub async fn wait_suback(&mut self) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        match self
            .wait_event(|e| matches!(e, Event::Incoming(Packet::SubAck(_))))
            .await
        {
            Some(Event::Incoming(Packet::SubAck(ack))) => ack.return_codes,
            other => panic!("no SUBACK: {other:?} {:?}", self.events.try_recv()),
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        self.wait_suback().await;
    }

    pub async fn next_publish(&mut self) -> Publish {
        tokio::time::timeout(WAIT, self.publishes.recv())
            .await
            .expect("a PUBLISH in time")
            .expect("event loop alive")
    }

    pub async fn expect_no_publish(&mut self, quiet: Duration) {
        if let Ok(Some(p)) = tokio::time::timeout(quiet, self.publishes.recv()).await {
            panic!("unexpected PUBLISH on {:?}: {:?}", p.topic, p.payload);
        }
    }
}
