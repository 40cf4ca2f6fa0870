//! A raw MQTT socket with hand-written bytes, independent of the broker's own codec, for
//! malformed input and for observing exact wire behaviour.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

pub struct Raw {
    pub stream: TcpStream,
}

/// Appends a variable byte integer.
pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

pub fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet from a first byte and a body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// CONNECT for MQTT 3.1.1 (level 4) or 5 (level 5, empty properties).
pub fn connect_packet(level: u8, client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(level);
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    string(client_id.as_bytes(), &mut body);
    packet(0x10, &body)
}

/// CONNECT 3.1.1 with a will. `clean` sets CleanSession; the will has `will_qos`.
pub fn connect_with_will(
    client_id: &str,
    clean: bool,
    keep_alive: u16,
    will_topic: &str,
    will_payload: &str,
    will_qos: u8,
) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(if clean { 0x02 } else { 0 } | 0x04 | (will_qos << 3));
    body.extend_from_slice(&keep_alive.to_be_bytes());
    string(client_id.as_bytes(), &mut body);
    string(will_topic.as_bytes(), &mut body);
    string(will_payload.as_bytes(), &mut body);
    packet(0x10, &body)
}

/// CONNECT 3.1.1 with user name and password.
pub fn connect_with_login(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(0x02 | 0x80 | 0x40);
    body.extend_from_slice(&30u16.to_be_bytes());
    string(client_id.as_bytes(), &mut body);
    string(user.as_bytes(), &mut body);
    string(password.as_bytes(), &mut body);
    packet(0x10, &body)
}

/// PUBLISH 3.1.1.
pub fn publish_packet(topic: &[u8], qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// SUBSCRIBE 3.1.1 with one filter.
pub fn subscribe_packet(pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    string(filter.as_bytes(), &mut body);
    body.push(qos);
    packet(0x82, &body)
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("TCP connect"),
        }
    }

    /// Connects and completes an MQTT 3.1.1 CONNECT/CONNACK.
    pub async fn mqtt(addr: SocketAddr, client_id: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.send(&connect_packet(4, client_id, true, 60)).await;
        assert_eq!(
            raw.read_exact(4).await,
            vec![0x20, 0x02, 0x00, 0x00],
            "CONNACK accepted"
        );
        raw
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        // The broker may close while we write: that is what some tests look for.
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut buf))
            .await
            .expect("bytes in time")
            .expect("read");
        buf
    }

    /// Reads until the broker closes the connection; returns what came before. Panics if the
    /// connection stays open for [`WAIT`].
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return all,
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                Err(_) => panic!("connection still open after {WAIT:?}; got {all:02x?}"),
            }
        }
    }

    /// True when the connection stays open (no bytes, no close) for `quiet`.
    pub async fn stays_open(&mut self, quiet: Duration) -> bool {
        let mut buf = [0u8; 1];
        tokio::time::timeout(quiet, self.stream.read(&mut buf))
            .await
            .is_err()
    }
}
