//! The worker task: polls the rumqttc event loop, (re)subscribes, hands deliveries to the
//! bridge, reconnects with backoff, falls back to 3.1.1 when the broker needs it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::proto::{ConnError, Incoming, Loop, Message, Protocol};
use super::{Identify, PongRelay, Shared, UpstreamConfig, add, connection_v4};
use crate::broker::Delivery;
use crate::broker::codec::{Publish, QoS};
use crate::broker::link::Origin;
use crate::xmpp::backoff::Backoff;

pub(super) struct Worker {
    pub(super) cfg: UpstreamConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) eventloop: Loop,
    pub(super) deliveries: mpsc::Sender<(Delivery, u64)>,
    pub(super) subscribe_now: mpsc::Receiver<()>,
    pub(super) origin: String,
    pub(super) identify: Identify,
    /// Subscribed on the current session.
    pub(super) session: bool,
    /// Between CONNACK and the connection's end.
    pub(super) connected: bool,
    /// Whether an MQTT 5 CONNACK was ever seen (then never fall back to 3.1.1).
    pub(super) spoke_v5: bool,
    /// Deliveries the bridge has not taken yet. The worker never awaits the bridge (which
    /// may itself be waiting for the request channel this task drains by polling): this
    /// queue is bounded by the broker's flow control (Receive Maximum / in-flight window) per
    /// connection, and a new connection drops what an old one left (the broker sends it again).
    pub(super) pending: VecDeque<(Delivery, u64)>,
}

impl Worker {
    /// Connected to the broker while `link_up` says so: an instance that does not hold the
    /// XMPP component (a standby refused with `<conflict/>`, or the link is down) stays off
    /// the broker, so it neither takes messages it cannot deliver nor fights the active
    /// instance over their shared session.
    pub(super) async fn run(
        mut self,
        mut link_up: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let server = format!("{}:{}", self.cfg.host, self.cfg.port);
        loop {
            let stopped = tokio::select! {
                () = shutdown.cancelled() => return,
                up = link_up.wait_for(|up| *up) => up.is_err(),
            };
            if stopped {
                // The link stopped: shutdown is under way.
                shutdown.cancelled().await;
                return;
            }
            info!(%server, client_id = %self.cfg.client_id,
                "XMPP link up; connecting to the upstream MQTT broker.");
            let shut = self.connected_while(&mut link_up, &shutdown).await;
            self.disconnect().await;
            if shut {
                return;
            }
            info!("XMPP link down; left the upstream MQTT broker until it is back.");
        }
    }

    /// Runs the connection until shutdown (true) or the XMPP link goes down (false).
    async fn connected_while(
        &mut self,
        link_up: &mut watch::Receiver<bool>,
        shutdown: &CancellationToken,
    ) -> bool {
        let server = format!("{}:{}", self.cfg.host, self.cfg.port);
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        self.connected = false;
        // Consecutive first attempts that failed like a 3.1.1-only broker fails them; two
        // are needed, so a broker restarting under us does not cause a fallback.
        let mut v311_hints = 0;
        // A clone, so a permit does not borrow `self` across the loop body.
        let deliveries = self.deliveries.clone();
        loop {
            // Until CONNACK, nothing but shutdown may win over `poll`: rumqttc's connect is not
            // cancel-safe (a dropped `poll` that had sent CONNECT leaves that connection open,
            // and the next `poll` connects again: the broker saw the same client id twice and
            // closed the first). What the other branches wait for keeps meanwhile: a link
            // change since the last look still shows on the next `changed()`, and deliveries
            // and subscriptions only matter once connected.
            let connected = self.connected;
            if !connected && !*link_up.borrow_and_update() {
                // The link went down while this was connecting or waiting to retry.
                return false;
            }
            let event = tokio::select! {
                () = shutdown.cancelled() => return true,
                changed = link_up.changed(), if connected => {
                    if changed.is_err() || !*link_up.borrow_and_update() {
                        return false;
                    }
                    continue;
                }
                permit = deliveries.reserve(), if connected && !self.pending.is_empty() => {
                    match (permit, self.pending.pop_front()) {
                        (Ok(permit), Some(item)) => permit.send(item),
                        // The bridge stopped: shutdown is under way.
                        (Err(_), _) => self.pending.clear(),
                        (Ok(_), None) => {}
                    }
                    continue;
                }
                Some(()) = self.subscribe_now.recv(), if connected => {
                    self.subscribe();
                    continue;
                }
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Incoming::ConnAck { session_present }) => {
                    self.connected = true;
                    self.spoke_v5 |= matches!(self.eventloop, Loop::V5(_));
                    backoff.reset();
                    add(&self.shared.stats.connects);
                    let epoch = self.shared.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                    // What an earlier connection left is sent again on this one.
                    self.pending
                        .retain(|(d, e)| *e == epoch || d.publish.qos == QoS::AtMostOnce);
                    let protocol = if self.shared.v311() { "3.1.1" } else { "5" };
                    info!(%server, session_present, protocol,
                        "Connected to the upstream MQTT broker.");
                    if !session_present || !self.session {
                        self.subscribe();
                    }
                }
                Ok(Incoming::Publish(m)) => self.deliver(m),
                Ok(Incoming::SubAck { refused }) => {
                    for code in refused {
                        error!(%code, "Upstream broker refused a bridge subscription.");
                    }
                }
                Ok(Incoming::Disconnect(reason)) => {
                    warn!(%reason, "Upstream broker sent DISCONNECT.");
                }
                Ok(Incoming::DisconnectSent | Incoming::Other) => {}
                Err(e) => {
                    add(&self.shared.stats.connection_errors);
                    if self.cfg.protocol == Protocol::Auto && !self.spoke_v5 && !self.shared.v311()
                    {
                        v311_hints = if e.suggests_v311() { v311_hints + 1 } else { 0 };
                        if v311_hints >= 2 {
                            self.fall_back(&e);
                            continue;
                        }
                    }
                    let delay = backoff.next_delay(rand::random());
                    log_error(&e, self.connected, delay, backoff.failures());
                    self.connected = false;
                    self.session = false;
                    tokio::select! {
                        () = shutdown.cancelled() => return true,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Switches to MQTT 3.1.1 for good, moving the publishes still waiting over.
    fn fall_back(&mut self, cause: &ConnError) {
        let (handle, eventloop) = match connection_v4(&self.cfg) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "Cannot build the MQTT 3.1.1 client.");
                return;
            }
        };
        warn!(error = %cause,
            "Upstream broker does not speak MQTT 5; falling back to 3.1.1 (no No Local, no \
             origin property: own publishes are recognised by content).");
        let waiting = self.eventloop.take_publishes();
        self.eventloop = eventloop;
        for (topic, qos, retain, payload) in waiting {
            if let super::proto::Handle::V4(c) = &handle {
                if let Err(e) = c.try_publish(topic, to4(qos), retain, payload) {
                    warn!(error = %e, "A waiting publish could not move to the 3.1.1 client.");
                }
            }
        }
        if let Ok(mut h) = self.shared.handle.lock() {
            *h = handle;
        }
        self.shared.stats.v311.store(1, Ordering::Relaxed);
    }

    fn subscribe(&mut self) {
        let filters = match self.shared.filters.lock() {
            Ok(f) => f.clone(),
            Err(_) => return,
        };
        let mut list: Vec<(String, QoS)> = filters
            .iter()
            .map(|(f, qos)| (self.cfg.subscription(f), *qos))
            .collect();
        // Pongs for this instance come to it alone: no share group.
        if let Some(relay) = self.relay() {
            list.push((relay.topic, QoS::AtLeastOnce));
        }
        if list.is_empty() {
            return;
        }
        for (filter, qos) in &list {
            info!(%filter, ?qos, "Subscribing upstream.");
        }
        let Ok(handle) = self.shared.handle() else {
            return;
        };
        // Queued in the request channel; sent by the event loop this task polls.
        match handle.try_subscribe(&list) {
            Ok(()) => self.session = true,
            Err(_) => warn!("Upstream subscription not queued."),
        }
    }

    fn ack_now(&self, m: &Message) {
        if m.qos == QoS::AtMostOnce {
            return;
        }
        if let Ok(handle) = self.shared.handle() {
            if handle.try_ack(m.qos, m.pkid).is_err() {
                debug!(pkid = m.pkid, "Acknowledgement not queued.");
            }
        }
    }

    fn relay(&self) -> Option<PongRelay> {
        self.shared.relay.lock().ok()?.clone()
    }

    fn deliver(&mut self, m: Message) {
        if let Some(relay) = self.relay() {
            if m.topic == relay.topic.as_bytes() {
                self.ack_now(&m);
                match std::str::from_utf8(&m.payload) {
                    Ok(id) => (relay.deliver)(id.to_owned()),
                    Err(_) => warn!("Relayed pong with a non-UTF-8 id; ignored."),
                }
                return;
            }
        }
        let looped = if self.shared.v311() {
            self.shared
                .echoes
                .lock()
                .is_ok_and(|mut e| e.is_echo(&m.topic, &m.payload, Instant::now()))
        } else {
            m.origin.as_deref() == Some(self.origin.as_str())
        };
        if looped {
            add(&self.shared.stats.loops_dropped);
            debug!(
                pkid = m.pkid,
                "Delivery published by a bridge instance; dropped."
            );
            self.ack_now(&m);
            return;
        }
        let Ok(topic) = ByteString::try_from(m.topic.clone()) else {
            warn!(
                pkid = m.pkid,
                "Upstream delivery with a non-UTF-8 topic; dropped."
            );
            self.ack_now(&m);
            return;
        };
        let username = (self.identify)(&topic).map(ByteString::from);
        let delivery = Delivery {
            publish: Publish {
                dup: m.dup,
                qos: m.qos,
                retain: m.retain,
                topic,
                pkid: m.pkid,
                payload: m.payload,
                properties: m.properties,
            },
            origin: Some(Arc::new(Origin {
                client_id: ByteString::from_static("(upstream)"),
                username,
            })),
            carried: None,
        };
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        // QoS 0 has no flow control: beyond the window it is dropped and counted.
        let limit = usize::from(self.cfg.max_inflight.max(1)) * 2;
        if delivery.publish.qos == QoS::AtMostOnce && self.pending.len() >= limit {
            add(&self.shared.stats.qos0_dropped);
            return;
        }
        self.pending.push_back((delivery, epoch));
    }

    /// Sends DISCONNECT (the session stays for `session_expiry`) and resets the event loop
    /// so the next poll connects afresh; what waits to be published stays queued in it.
    async fn disconnect(&mut self) {
        let connected = std::mem::replace(&mut self.connected, false);
        self.session = false;
        if !connected {
            self.eventloop.reset();
            return;
        }
        let Ok(handle) = self.shared.handle() else {
            return;
        };
        if handle.try_disconnect().is_err() {
            return;
        }
        // Let the event loop write the DISCONNECT (bounded: the broker may be gone).
        let flush = async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Incoming::DisconnectSent) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), flush)
            .await
            .is_err()
        {
            debug!("DISCONNECT not flushed in time.");
        }
        self.eventloop.reset();
        info!("Disconnected from the upstream MQTT broker.");
    }
}

fn to4(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn log_error(e: &ConnError, was_up: bool, retry_in: Duration, attempts: u32) {
    if e.refused() {
        error!(error = %e, ?retry_in, "Upstream MQTT broker refused the connection; retrying.");
    } else if was_up {
        warn!(error = %e, ?retry_in, "Upstream MQTT connection lost; reconnecting.");
    } else if attempts <= 1 || attempts % 10 == 0 {
        warn!(error = %e, attempts, ?retry_in, "Upstream MQTT broker unreachable; retrying.");
    } else {
        debug!(error = %e, attempts, ?retry_in, "Upstream MQTT connection attempt failed.");
    }
}
