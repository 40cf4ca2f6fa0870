//! TLS, WebSocket and WebSocket-over-TLS listeners with real clients: mosquitto_pub/sub with
//! `--cafile`, paho-mqtt over TLS, WebSocket and WebSocket over TLS, rumqttc over TLS (with
//! and without a client certificate), and a WebSocket client driven by the test itself to
//! split and join MQTT packets across frames. Certificates are made by the test (rcgen).
#![allow(
    clippy::unwrap_used,
    clippy::let_underscore_must_use,
    reason = "tests: a failed unwrap is a failed test; ignored results are best-effort cleanup"
)]

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::certs::Pki;
use common::raw::{self, Raw};
use common::{TestBroker, WAIT, connect, connect_with, options, run_with_timeout, start_broker};
use futures::{SinkExt, StreamExt};
use rumqttc::{Event, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use xmpp_mqtt_bridge::broker::listener::{ListenerConfig, ListenerKind};
use xmpp_mqtt_bridge::broker::transport::tls::TlsSettings;

fn tls_settings(pki: &Pki) -> TlsSettings {
    TlsSettings {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: None,
        identity_as_username: false,
    }
}

fn listener(kind: ListenerKind, tls: Option<TlsSettings>) -> ListenerConfig {
    ListenerConfig {
        kind,
        address: "127.0.0.1:0".parse().unwrap(),
        tls,
        path: "/mqtt".to_string(),
    }
}

/// A broker with a plain TCP listener (`addrs[0]`) and then `tls`, `ws`, `wss` ones.
struct Listeners {
    broker: TestBroker,
    tcp: SocketAddr,
    tls: SocketAddr,
    ws: SocketAddr,
    wss: SocketAddr,
}

async fn broker_with_all(pki: &Pki) -> Listeners {
    let settings = tls_settings(pki);
    let broker = start_broker(|b| {
        b.listeners = vec![
            listener(ListenerKind::Tls, Some(settings.clone())),
            listener(ListenerKind::Ws, None),
            listener(ListenerKind::Wss, Some(settings.clone())),
        ];
    })
    .await;
    let a = broker.app.mqtt_addrs.clone();
    assert_eq!(a.len(), 4, "tcp + tls + ws + wss: {a:?}");
    Listeners {
        broker,
        tcp: a[0],
        tls: a[1],
        ws: a[2],
        wss: a[3],
    }
}

fn tls_options(
    addr: SocketAddr,
    id: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> MqttOptions {
    let mut opts = options(addr, id);
    let client_auth =
        client.map(|(cert, key)| (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: std::fs::read(ca).unwrap(),
        alpn: None,
        client_auth,
    }));
    opts
}

/// rumqttc over TLS publishes to a plain TCP subscriber and receives from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_over_tls_talks_with_tcp_clients() {
    let pki = Pki::new();
    let l = broker_with_all(&pki).await;
    let mut secure = connect_with(tls_options(l.tls, "tls-client", &pki.ca, None)).await;
    let mut plain = connect(l.tcp, "tcp-client").await;
    secure.subscribe("to-tls", QoS::AtLeastOnce).await;
    plain.subscribe("to-tcp", QoS::AtLeastOnce).await;
    plain
        .publish("to-tls", QoS::AtLeastOnce, false, b"hello tls")
        .await;
    let got = secure.next_publish().await;
    assert_eq!(&got.payload[..], b"hello tls");
    secure
        .publish("to-tcp", QoS::ExactlyOnce, false, b"hello tcp")
        .await;
    let got = plain.next_publish().await;
    assert_eq!(&got.payload[..], b"hello tcp");
    assert!(l.broker.stop().await);
}

/// mosquitto_pub and mosquitto_sub with `--cafile` over TLS: a retained message published by
/// one is read by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_over_tls() {
    let pki = Pki::new();
    let l = broker_with_all(&pki).await;
    let port = l.tls.port().to_string();
    let ca = pki.ca.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking({
        let (port, ca) = (port.clone(), ca.clone());
        move || {
            run_with_timeout(
                Command::new("mosquitto_pub").args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "--cafile",
                    &ca,
                    "-q",
                    "1",
                    "-r",
                    "-t",
                    "tls/retained",
                    "-m",
                    "via mosquitto_pub",
                ]),
                WAIT,
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
    let out = tokio::task::spawn_blocking(move || {
        run_with_timeout(
            Command::new("mosquitto_sub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--cafile",
                &ca,
                "-t",
                "tls/retained",
                "-C",
                "1",
                "-W",
                "10",
            ]),
            WAIT + Duration::from_secs(2),
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "via mosquitto_pub"
    );
    // Without the CA the server certificate is not trusted: the client gives up.
    let port = l.tls.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_with_timeout(
            Command::new("mosquitto_pub").args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--capath",
                "/nonexistent",
                "-t",
                "x",
                "-m",
                "y",
            ]),
            WAIT,
        )
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "untrusted server accepted: {out:?}");
    assert!(l.broker.stop().await);
}

const PAHO: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
mode, port, ca, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
transport = "websockets" if mode in ("ws", "wss") else "tcp"
protocol = mqtt.MQTTv5 if mode != "tls" else mqtt.MQTTv311
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + mode,
                transport=transport, protocol=protocol)
if transport == "websockets":
    c.ws_set_options(path="/mqtt")
if mode in ("tls", "wss"):
    c.tls_set(ca_certs=ca)
subscribed, got, msgs = threading.Event(), threading.Event(), []
def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(topic + "/in", qos=1)
def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()
def on_message(client, userdata, message):
    msgs.append(message.payload.decode())
    got.set()
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port, 30)
c.loop_start()
if not subscribed.wait(10):
    print("NO-SUBACK", flush=True); sys.exit(1)
print("READY", flush=True)
if not got.wait(10):
    print("NO-MESSAGE", flush=True); sys.exit(1)
print("GOT " + msgs[0], flush=True)
info = c.publish(topic + "/out", "from-paho-" + mode, qos=1)
info.wait_for_publish(10)
print("SENT" if info.is_published() else "NOT-SENT", flush=True)
c.disconnect()
c.loop_stop()
"#;

/// One paho-mqtt client over `mode` (tls, ws, wss) exchanging messages with a TCP client.
async fn paho_round_trip(mode: &str, addr: SocketAddr, tcp: SocketAddr, ca: &Path) {
    let topic = format!("paho-{mode}");
    let mut plain = connect(tcp, &format!("tcp-for-{mode}")).await;
    plain
        .subscribe(&format!("{topic}/out"), QoS::AtLeastOnce)
        .await;
    let mut child = tokio::process::Command::new(common::python())
        .args([
            "-c",
            PAHO,
            mode,
            &addr.port().to_string(),
            ca.to_str().unwrap(),
            &topic,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(WAIT, lines.next_line())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default()
    };
    let ready = next().await;
    if ready != "READY" {
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "paho {mode}: {ready:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    plain
        .publish(
            &format!("{topic}/in"),
            QoS::AtLeastOnce,
            false,
            mode.as_bytes(),
        )
        .await;
    assert_eq!(next().await, format!("GOT {mode}"), "paho {mode} receives");
    assert_eq!(next().await, "SENT", "paho {mode} publishes");
    let got = plain.next_publish().await;
    assert_eq!(&got.payload[..], format!("from-paho-{mode}").as_bytes());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "paho {mode} exit: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_tls_websocket_and_secure_websocket() {
    let pki = Pki::new();
    let l = broker_with_all(&pki).await;
    paho_round_trip("tls", l.tls, l.tcp, &pki.ca).await;
    paho_round_trip("ws", l.ws, l.tcp, &pki.ca).await;
    paho_round_trip("wss", l.wss, l.tcp, &pki.ca).await;
    assert!(l.broker.stop().await);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(addr: SocketAddr, path: &str, protocol: &str) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp)).await {
        Ok(Ok((ws, response))) => {
            let chosen = response.headers().get("Sec-WebSocket-Protocol").unwrap();
            assert_eq!(chosen, "mqtt", "[MQTT-6.0.0-3]");
            Ok(ws)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".to_string()),
    }
}

/// Reads binary messages until `n` bytes came; fails on anything else.
async fn ws_read(ws: &mut Ws, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            other => panic!("expected binary data, got {other:?} after {got:02x?}"),
        }
    }
    got
}

/// A packet split over two messages is read whole; two packets in one message are both
/// read; what the broker sends is binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_packets_may_span_and_share_messages() {
    let pki = Pki::new();
    let l = broker_with_all(&pki).await;
    let mut ws = ws_connect(l.ws, "/mqtt", "mqtt").await.unwrap();
    let connect = raw::connect_packet(4, "ws-raw", true, 60);
    ws.send(Message::binary(connect[..3].to_vec()))
        .await
        .unwrap();
    ws.send(Message::binary(connect[3..].to_vec()))
        .await
        .unwrap();
    assert_eq!(
        ws_read(&mut ws, 4).await,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK"
    );
    let mut both = raw::subscribe_packet(1, "ws/t", 0);
    let publish = raw::publish_packet(b"ws/t", 0, 0, b"joined");
    both.extend_from_slice(&publish);
    ws.send(Message::binary(both)).await.unwrap();
    let mut expected = vec![0x90, 0x03, 0x00, 0x01, 0x00];
    expected.extend_from_slice(&publish);
    assert_eq!(
        ws_read(&mut ws, expected.len()).await,
        expected,
        "SUBACK, PUBLISH"
    );
    // PINGREQ answered.
    ws.send(Message::binary(vec![0xC0, 0x00])).await.unwrap();
    assert_eq!(ws_read(&mut ws, 2).await, [0xD0, 0x00]);
    assert!(l.broker.stop().await);
}

/// A non-MQTT subprotocol, a wrong path and a text message are refused; other clients are
/// not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refuses_other_subprotocols_paths_and_text() {
    let pki = Pki::new();
    let l = broker_with_all(&pki).await;
    let mut watcher = connect(l.tcp, "watcher").await;
    watcher.subscribe("alive", QoS::AtMostOnce).await;
    let err = ws_connect(l.ws, "/mqtt", "chat").await.unwrap_err();
    assert!(err.contains("400"), "{err}");
    let err = ws_connect(l.ws, "/other", "mqtt").await.unwrap_err();
    assert!(err.contains("404"), "{err}");
    let mut ws = ws_connect(l.ws, "/mqtt", "mqtt").await.unwrap();
    ws.send(Message::binary(raw::connect_packet(4, "ws-text", true, 60)))
        .await
        .unwrap();
    assert_eq!(ws_read(&mut ws, 4).await, [0x20, 0x02, 0x00, 0x00]);
    ws.send(Message::text("not mqtt")).await.unwrap();
    // [MQTT-6.0.0-1]: the connection is closed.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "text message closes the connection");
    let mut good = ws_connect(l.ws, "/mqtt", "mqtt").await.unwrap();
    good.send(Message::binary(raw::connect_packet(4, "ws-good", true, 60)))
        .await
        .unwrap();
    assert_eq!(ws_read(&mut good, 4).await, [0x20, 0x02, 0x00, 0x00]);
    good.send(Message::binary(raw::publish_packet(b"alive", 0, 0, b"yes")))
        .await
        .unwrap();
    assert_eq!(&watcher.next_publish().await.payload[..], b"yes");
    assert!(l.broker.stop().await);
}

/// Plain MQTT and garbage on the TLS port are dropped without an answer; a TLS client that
/// does not trust the server gives up; TLS clients keep working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_handshakes_are_refused_and_others_keep_working() {
    let pki = Pki::new();
    let l = broker_with_all(&pki).await;
    let mut secure = connect_with(tls_options(l.tls, "steady", &pki.ca, None)).await;
    secure.subscribe("steady", QoS::AtLeastOnce).await;
    let mut plain = Raw::connect(l.tls).await;
    plain
        .send(&raw::connect_packet(4, "plaintext", true, 60))
        .await;
    let answer = plain.read_until_closed().await;
    assert!(
        answer.first() != Some(&0x20),
        "no CONNACK in plain text on the TLS port: {answer:02x?}"
    );
    let mut garbage = tokio::net::TcpStream::connect(l.tls).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut garbage, &mut sink),
    )
    .await;
    assert!(read.is_ok(), "garbage connection closed");
    // A client with another CA does not accept the server's certificate.
    let other = Pki::new();
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(tls_options(l.tls, "distrust", &other.ca, None), 10);
    let first = tokio::time::timeout(WAIT, eventloop.poll()).await.unwrap();
    assert!(first.is_err(), "handshake with an unknown CA: {first:?}");
    drop(client);
    let again = connect(l.tcp, "publisher").await;
    again
        .publish("steady", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(&secure.next_publish().await.payload[..], b"still here");
    assert!(l.broker.stop().await);
}

/// A listener that requires client certificates: none or an unknown issuer fails the
/// handshake; a certificate from the CA connects, and its Common Name is the user name
/// (seen by the ACL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_and_name_the_user() {
    let pki = Pki::new();
    let acl = pki.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n").unwrap();
    let settings = TlsSettings {
        client_ca_file: Some(pki.ca.clone()),
        identity_as_username: true,
        ..tls_settings(&pki)
    };
    let broker = start_broker(|b| {
        b.listeners = vec![listener(ListenerKind::Tls, Some(settings))];
        b.acl_file = Some(acl);
        b.allow_anonymous = false;
    })
    .await;
    let addr = broker.app.mqtt_addrs[1];
    for (what, client) in [
        ("no certificate", None),
        ("unknown issuer", Some(pki.client("alice", false))),
    ] {
        let paths = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let (_c, mut eventloop) =
            rumqttc::AsyncClient::new(tls_options(addr, "refused", &pki.ca, paths), 10);
        let first = tokio::time::timeout(WAIT, eventloop.poll()).await.unwrap();
        assert!(
            !matches!(first, Ok(Event::Incoming(Packet::ConnAck(_)))),
            "{what}: connected: {first:?}"
        );
    }
    let (cert, key) = pki.client("alice", true);
    // No user name in CONNECT, anonymous clients refused: the certificate names the user.
    let mut alice =
        connect_with(tls_options(addr, "alice-dev", &pki.ca, Some((&cert, &key)))).await;
    alice
        .client
        .subscribe("alice/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    alice
        .client
        .subscribe("bob/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut codes = Vec::new();
    while codes.len() < 2 {
        match alice
            .wait_event(|e| matches!(e, Event::Incoming(Packet::SubAck(_))))
            .await
        {
            Some(Event::Incoming(Packet::SubAck(ack))) => codes.extend(ack.return_codes),
            other => panic!("no SUBACK: {other:?}"),
        }
    }
    assert_eq!(
        codes,
        [
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure
        ]
    );
    assert!(broker.stop().await);
}

fn check_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(common::bin());
    cmd.arg("check-config").arg("--config").arg(&path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Missing, unreadable and invalid certificate files are reported with the listener's key
/// and the file, all at once, before anything listens.
#[test]
fn bad_certificate_files_are_config_errors() {
    let pki = Pki::new();
    let garbage = pki.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let other = Pki::new();
    let listeners = format!(
        "[broker]\nlisten = []\n\
         [[broker.listeners]]\nkind = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         cert_file = \"{missing}\"\nkey_file = \"{key}\"\n\
         [[broker.listeners]]\nkind = \"wss\"\naddress = \"127.0.0.1:0\"\n\
         cert_file = \"{garbage}\"\nkey_file = \"{key}\"\n\
         [[broker.listeners]]\nkind = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         cert_file = \"{cert}\"\nkey_file = \"{other_key}\"\n\
         [[broker.listeners]]\nkind = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         cert_file = \"{cert}\"\nkey_file = \"{cert}\"\n\
         [[broker.listeners]]\nkind = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         cert_file = \"{cert}\"\nkey_file = \"{key}\"\nclient_ca_file = \"{garbage}\"\n\
         [[broker.listeners]]\nkind = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         [[broker.listeners]]\nkind = \"ws\"\naddress = \"127.0.0.1:0\"\ncert_file = \"{cert}\"\n\
         [[broker.listeners]]\nkind = \"quic\"\naddress = \"127.0.0.1:0\"\n",
        missing = pki.path().join("missing.pem").display(),
        key = pki.server_key.display(),
        cert = pki.server_cert.display(),
        other_key = other.server_key.display(),
        garbage = garbage.display(),
    );
    let (code, out) = check_config(&listeners);
    assert_eq!(code, 64, "{out}");
    for expected in [
        format!(
            "broker.listeners.0.cert_file: cert_file: cannot read {}",
            pki.path().join("missing.pem").display()
        ),
        format!(
            "broker.listeners.1.cert_file: cert_file: {}: no PEM certificate",
            garbage.display()
        ),
        format!(
            "broker.listeners.2.key_file: key_file: {}: does not fit the certificate",
            other.server_key.display()
        ),
        format!(
            "broker.listeners.3.key_file: key_file: {}: no PEM private key",
            pki.server_cert.display()
        ),
        format!(
            "broker.listeners.4.client_ca_file: client_ca_file: {}: no PEM certificate",
            garbage.display()
        ),
        "broker.listeners.5.cert_file: a TLS listener needs it".to_string(),
        "broker.listeners.5.key_file: a TLS listener needs it".to_string(),
        "broker.listeners.6.cert_file: only tls and wss listeners take cert_file".to_string(),
        "broker.listeners.7.kind: `quic` is not a listener kind".to_string(),
    ] {
        assert!(out.contains(&expected), "no `{expected}` in:\n{out}");
    }
    // A good configuration is accepted and shown.
    let good = format!(
        "[broker]\n[[broker.listeners]]\nkind = \"wss\"\naddress = \"127.0.0.1:0\"\n\
         cert_file = \"{}\"\nkey_file = \"{}\"\npath = \"/ws\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let (code, out) = check_config(&good);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("kind = \"wss\""), "{out}");
    assert!(out.contains("path = \"/ws\""), "{out}");
}
