//! Upstream mode: the bridge as an MQTT 5 client (rumqttc) of an existing, possibly clustered
//! broker, instead of a participant of the embedded one.
//!
//! ```text
//!  bridge ── UpstreamClient::publish/ack ──▶ rumqttc request channel ──▶ broker
//!  bridge ◀── UpstreamClient::recv ◀── deliveries (bounded) ◀── worker: EventLoop::poll
//! ```
//! 1. The worker waits for its start signal (the app gives it "the XMPP link is up", so a
//!    standby that does not hold the component takes no MQTT traffic), then connects with
//!    Clean Start 0 and the configured Session Expiry: the broker keeps the subscriptions
//!    and queues QoS 1/2 messages while the bridge is away.
//! 2. On every CONNACK without a session it subscribes again (No Local, retained messages not
//!    sent, `$share/{group}/` when configured, each filter at its rules' QoS).
//! 3. Deliveries are acknowledged by the bridge only once the XMPP server has the stanza
//!    (manual acks); an acknowledgement for a delivery of an earlier connection is dropped,
//!    because the broker sends that message again on the new one.
//! 4. Everything the bridge publishes carries the User Property [`ORIGIN_PROPERTY`] = the
//!    component domain; a delivery carrying it is acknowledged and dropped (loop guard across
//!    instances; No Local covers the instance itself).
//! 5. A lost connection is retried with capped exponential backoff; rumqttc re-sends the
//!    unacknowledged publishes on the new connection.
//!
//! Identity: the broker does not tell a client who published a message, so the sender comes
//! from the topic (the caller's `identify`), and the broker's ACL must keep clients off other
//! users' topics.

pub mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytestring::ByteString;
use futures::future::BoxFuture;
use rumqttc::v5::mqttbytes::v5::{
    ConnectProperties, ConnectReturnCode, Filter, Packet, Publish as RPublish, PublishProperties,
};
use rumqttc::v5::mqttbytes::{QoS as RQoS, v5::RetainForwardRule};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use self::config::{ORIGIN_PROPERTY, UpstreamConfig};
use crate::broker::codec::{Publish, QoS};
use crate::broker::link::Origin;
use crate::broker::{BrokerGone, Delivery};
use crate::xmpp::backoff::Backoff;

/// Who is speaking for a topic: the sender's user name as the topic binds it (the mapping
/// table's `sender_from_topic`).
pub type Identify = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Upstream counters.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// CONNACKs received.
    pub connects: AtomicU64,
    /// Failed connection attempts and lost connections.
    pub connection_errors: AtomicU64,
    /// Deliveries dropped because another bridge instance published them.
    pub loops_dropped: AtomicU64,
    /// Acknowledgements dropped because their connection is gone.
    pub stale_acks: AtomicU64,
    /// QoS 0 deliveries dropped because the bridge was not reading.
    pub qos0_dropped: AtomicU64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Could not build the client (bad TLS files).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A TLS file could not be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The bridge's handle on the upstream broker.
pub struct UpstreamClient {
    client: AsyncClient,
    deliveries: mpsc::Receiver<(Delivery, u64)>,
    /// Connection counter; a delivery is acknowledged only on the connection it came on.
    epoch: Arc<AtomicU64>,
    /// Epoch of each unacknowledged delivery, by packet id.
    unacked: HashMap<u16, u64>,
    /// Filters (with their QoS) for the worker to subscribe on each new session.
    filters: Arc<std::sync::Mutex<Vec<(String, QoS)>>>,
    /// Per-filter QoS from the mapping rules; the bridge's single QoS is the fallback.
    filter_qos: HashMap<String, QoS>,
    subscribe_now: mpsc::Sender<()>,
    origin: String,
    stats: Arc<UpstreamStats>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What [`spawn`] needs besides the config.
pub struct Wiring {
    /// The value of [`ORIGIN_PROPERTY`] (the component domain).
    pub origin: String,
    /// The sender for a topic.
    pub identify: Identify,
    /// QoS of each filter the bridge will subscribe to (the highest of its rules).
    pub filter_qos: HashMap<String, QoS>,
    /// Resolves when the worker may connect (e.g. once the XMPP link is up).
    pub start: BoxFuture<'static, ()>,
}

/// Starts the worker on `tracker`; it stops when `shutdown` is cancelled.
pub fn spawn(
    cfg: UpstreamConfig,
    wiring: Wiring,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<UpstreamClient, UpstreamError> {
    let options = options(&cfg)?;
    let window = usize::from(cfg.max_inflight.max(1));
    let (client, eventloop) = AsyncClient::new(options, window);
    // The broker never has more than `window` QoS 1/2 deliveries unacknowledged, and the
    // bridge acknowledges only what it handled, so this channel never blocks the event loop
    // for them; QoS 0 deliveries beyond it are dropped and counted.
    let (tx, rx) = mpsc::channel(window * 2 + 16);
    let (subscribe_tx, subscribe_rx) = mpsc::channel(1);
    let epoch = Arc::new(AtomicU64::new(0));
    let filters = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stats = Arc::new(UpstreamStats::default());
    let worker = Worker {
        cfg,
        client: client.clone(),
        eventloop,
        deliveries: tx,
        epoch: epoch.clone(),
        filters: filters.clone(),
        subscribe_now: subscribe_rx,
        origin: wiring.origin.clone(),
        identify: wiring.identify,
        stats: stats.clone(),
        session: false,
    };
    tracker.spawn(worker.run(wiring.start, shutdown));
    Ok(UpstreamClient {
        client,
        deliveries: rx,
        epoch,
        unacked: HashMap::new(),
        filters,
        filter_qos: wiring.filter_qos,
        subscribe_now: subscribe_tx,
        origin: wiring.origin,
        stats,
    })
}

fn options(cfg: &UpstreamConfig) -> Result<MqttOptions, UpstreamError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_clean_start(false);
    o.set_keep_alive(cfg.keep_alive.max(std::time::Duration::from_secs(1)));
    o.set_manual_acks(true);
    o.set_outgoing_inflight_upper_limit(cfg.max_inflight.max(1));
    let mut props = ConnectProperties::new();
    props.session_expiry_interval =
        Some(u32::try_from(cfg.session_expiry.as_secs()).unwrap_or(u32::MAX));
    props.receive_maximum = Some(cfg.max_inflight.max(1));
    props.max_packet_size = Some(16 << 20);
    o.set_connect_properties(props);
    if let Some((user, password)) = &cfg.credentials {
        o.set_credentials(user.clone(), password.clone());
    }
    if let Some(tls) = &cfg.tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| UpstreamError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        let ca = read(&tls.ca_file)?;
        let client_auth = match &tls.client_auth {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

fn to_rumqttc(qos: QoS) -> RQoS {
    match qos {
        QoS::AtMostOnce => RQoS::AtMostOnce,
        QoS::AtLeastOnce => RQoS::AtLeastOnce,
        QoS::ExactlyOnce => RQoS::ExactlyOnce,
    }
}

fn from_rumqttc(qos: RQoS) -> QoS {
    match qos {
        RQoS::AtMostOnce => QoS::AtMostOnce,
        RQoS::AtLeastOnce => QoS::AtLeastOnce,
        RQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

impl UpstreamClient {
    /// Records the filters; the worker subscribes on every connection without a session (the
    /// first one included). Never waits for the broker: SUBACK failures are logged by the
    /// worker, so the returned list is empty.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<Vec<u8>, BrokerGone> {
        let with_qos = filters
            .iter()
            .map(|f| (f.clone(), self.filter_qos.get(f).copied().unwrap_or(qos)))
            .collect();
        *self.filters.lock().map_err(|_| BrokerGone)? = with_qos;
        // Full means a request is pending already; closed means the worker stopped, which
        // `recv` reports.
        if self.subscribe_now.try_send(()).is_err() {
            debug!("Subscription request already pending.");
        }
        Ok(Vec::new())
    }

    /// Publishes a message of the bridge, marked with the origin property.
    pub async fn publish(&self, publish: Publish) -> Result<(), BrokerGone> {
        let properties = PublishProperties {
            user_properties: vec![(ORIGIN_PROPERTY.to_string(), self.origin.clone())],
            ..PublishProperties::default()
        };
        self.client
            .publish_with_properties(
                publish.topic.to_string(),
                to_rumqttc(publish.qos),
                publish.retain,
                publish.payload,
                properties,
            )
            .await
            .map_err(|_| BrokerGone)
    }

    /// The next delivery; `None` once the worker stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let (delivery, epoch) = self.deliveries.recv().await?;
        if delivery.publish.qos != QoS::AtMostOnce {
            self.unacked.insert(delivery.publish.pkid, epoch);
        }
        Some(delivery)
    }

    /// Acknowledges a delivery: PUBACK (QoS 1) or PUBREC (QoS 2) on the connection it came on.
    pub async fn ack(&mut self, publish: &Publish) -> Result<(), BrokerGone> {
        if publish.qos == QoS::AtMostOnce {
            return Ok(());
        }
        let epoch = self.unacked.remove(&publish.pkid);
        if epoch != Some(self.epoch.load(Ordering::Acquire)) {
            // The broker sends it again on the current connection; that copy gets the ack.
            add(&self.stats.stale_acks);
            debug!(
                pkid = publish.pkid,
                "Acknowledgement for an earlier connection dropped."
            );
            return Ok(());
        }
        let mut ack = RPublish::new("", to_rumqttc(publish.qos), Vec::new(), None);
        ack.pkid = publish.pkid;
        self.client.ack(&ack).await.map_err(|_| BrokerGone)
    }

    /// Counters.
    pub fn stats(&self) -> Arc<UpstreamStats> {
        self.stats.clone()
    }
}

struct Worker {
    cfg: UpstreamConfig,
    client: AsyncClient,
    eventloop: EventLoop,
    deliveries: mpsc::Sender<(Delivery, u64)>,
    epoch: Arc<AtomicU64>,
    filters: Arc<std::sync::Mutex<Vec<(String, QoS)>>>,
    subscribe_now: mpsc::Receiver<()>,
    origin: String,
    identify: Identify,
    stats: Arc<UpstreamStats>,
    /// Connected with the filters subscribed.
    session: bool,
}

impl Worker {
    async fn run(mut self, start: BoxFuture<'static, ()>, shutdown: CancellationToken) {
        let server = format!("{}:{}", self.cfg.host, self.cfg.port);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = start => {}
        }
        info!(%server, client_id = %self.cfg.client_id, "Connecting to the upstream MQTT broker.");
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        let mut connected = false;
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(()) = self.subscribe_now.recv() => {
                    if connected {
                        self.subscribe().await;
                    }
                    continue;
                }
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(packet)) => match packet {
                    Packet::ConnAck(ack) => {
                        if ack.code != ConnectReturnCode::Success {
                            // rumqttc reports refusals as errors; nothing to do here.
                            continue;
                        }
                        connected = true;
                        backoff.reset();
                        add(&self.stats.connects);
                        self.epoch.fetch_add(1, Ordering::AcqRel);
                        info!(%server, session_present = ack.session_present,
                            "Connected to the upstream MQTT broker.");
                        if !ack.session_present || !self.session {
                            self.subscribe().await;
                        }
                    }
                    Packet::Publish(p) => self.deliver(p).await,
                    Packet::SubAck(ack) => {
                        for code in &ack.return_codes {
                            let code = format!("{code:?}");
                            if !code.starts_with("Success") {
                                error!(%code, "Upstream broker refused a bridge subscription.");
                            }
                        }
                    }
                    Packet::Disconnect(d) => {
                        warn!(reason = ?d.reason_code, "Upstream broker sent DISCONNECT.");
                    }
                    _ => {}
                },
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    add(&self.stats.connection_errors);
                    let delay = backoff.next_delay(rand::random());
                    log_error(&e, connected, delay, backoff.failures());
                    connected = false;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.disconnect(connected).await;
    }

    async fn subscribe(&mut self) {
        let filters = match self.filters.lock() {
            Ok(f) => f.clone(),
            Err(_) => return,
        };
        if filters.is_empty() {
            return;
        }
        let list: Vec<Filter> = filters
            .iter()
            .map(|(f, qos)| Filter {
                path: self.cfg.subscription(f),
                qos: to_rumqttc(*qos),
                // Nothing this session publishes comes back to it.
                nolocal: true,
                preserve_retain: false,
                // Retained messages would be carried again at every start.
                retain_forward_rule: RetainForwardRule::Never,
            })
            .collect();
        for f in &list {
            info!(filter = %f.path, qos = ?f.qos, "Subscribing upstream.");
        }
        // Queued in the request channel; sent by the event loop we are polling.
        match self.client.try_subscribe_many(list) {
            Ok(()) => self.session = true,
            Err(e) => warn!(error = %e, "Upstream subscription not queued."),
        }
    }

    async fn deliver(&mut self, p: RPublish) {
        let from_bridge = p.properties.as_ref().is_some_and(|props| {
            props
                .user_properties
                .iter()
                .any(|(k, v)| k == ORIGIN_PROPERTY && *v == self.origin)
        });
        if from_bridge {
            add(&self.stats.loops_dropped);
            debug!(
                pkid = p.pkid,
                "Delivery published by a bridge instance; dropped."
            );
            if let Err(e) = self.client.try_ack(&p) {
                debug!(error = %e, "Acknowledgement not queued.");
            }
            return;
        }
        let Ok(topic) = ByteString::try_from(p.topic.clone()) else {
            warn!(
                pkid = p.pkid,
                "Upstream delivery with a non-UTF-8 topic; dropped."
            );
            if let Err(e) = self.client.try_ack(&p) {
                debug!(error = %e, "Acknowledgement not queued.");
            }
            return;
        };
        let username = (self.identify)(&topic).map(ByteString::from);
        let delivery = Delivery {
            publish: Publish {
                dup: p.dup,
                qos: from_rumqttc(p.qos),
                retain: p.retain,
                topic,
                pkid: p.pkid,
                payload: p.payload,
                properties: crate::broker::codec::Properties::new(),
            },
            origin: Some(Arc::new(Origin {
                client_id: ByteString::from_static("(upstream)"),
                username,
            })),
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        if delivery.publish.qos == QoS::AtMostOnce {
            if self.deliveries.try_send((delivery, epoch)).is_err() {
                add(&self.stats.qos0_dropped);
            }
        } else if self.deliveries.send((delivery, epoch)).await.is_err() {
            debug!("Bridge gone; delivery left unacknowledged.");
        }
    }

    async fn disconnect(&mut self, connected: bool) {
        if !connected {
            return;
        }
        if self.client.try_disconnect().is_err() {
            return;
        }
        // Let the event loop write the DISCONNECT (bounded: the broker may be gone).
        let flush = async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(2), flush)
            .await
            .is_err()
        {
            debug!("DISCONNECT not flushed in time.");
        }
        info!("Disconnected from the upstream MQTT broker.");
    }
}

fn log_error(e: &ConnectionError, was_up: bool, retry_in: std::time::Duration, attempts: u32) {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            error!(
                ?code,
                ?retry_in,
                "Upstream MQTT broker refused the connection; retrying."
            );
        }
        _ if was_up => {
            warn!(error = %e, ?retry_in, "Upstream MQTT connection lost; reconnecting.");
        }
        _ if attempts <= 1 || attempts % 10 == 0 => {
            warn!(error = %e, attempts, ?retry_in, "Upstream MQTT broker unreachable; retrying.");
        }
        _ => debug!(error = %e, attempts, ?retry_in, "Upstream MQTT connection attempt failed."),
    }
}
