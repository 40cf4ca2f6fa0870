//! Upstream mode: the bridge as an MQTT 5 client (rumqttc) of an existing, possibly clustered
//! broker, instead of a participant of the embedded one.
//!
//! ```text
//!  bridge ── UpstreamClient::publish/ack ──▶ rumqttc request channel ──▶ broker
//!  bridge ◀── UpstreamClient::recv ◀── deliveries (bounded) ◀── worker: EventLoop::poll
//! ```
//! 1. The worker is connected only while the XMPP link is up (so a standby that does not
//!    hold the component takes no MQTT traffic and does not fight the active instance over
//!    their shared session), with Clean Start 0 and the configured Session Expiry: the
//!    broker keeps the subscriptions and queues QoS 1/2 messages while the bridge is away.
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
//! 6. With `protocol = "auto"`, a first MQTT 5 attempt that fails as a 3.1.1-only broker
//!    fails it makes the worker switch to MQTT 3.1.1 for good (publishes waiting in the MQTT 5
//!    client move over). On 3.1.1 there is neither No Local nor User Properties: the bridge
//!    recognises its own publishes coming back by a hash of topic and payload instead.
//!
//! Identity: the broker does not tell a client who published a message, so the sender comes
//! from the topic (the caller's `identify`), and the broker's ACL must keep clients off other
//! users' topics.

pub mod config;
mod proto;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rumqttc::v5::mqttbytes::v5::ConnectProperties;
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use self::config::{ORIGIN_PROPERTY, Protocol, UpstreamConfig};
use self::proto::{Echoes, Handle, Loop};
use crate::broker::codec::{Properties, Publish, QoS};
use crate::broker::{BrokerGone, Delivery};

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
    /// Deliveries dropped because a bridge instance published them.
    pub loops_dropped: AtomicU64,
    /// Acknowledgements dropped because their connection is gone.
    pub stale_acks: AtomicU64,
    /// QoS 0 deliveries dropped because the bridge was not reading.
    pub qos0_dropped: AtomicU64,
    /// 1 once the client fell back to (or was set to) MQTT 3.1.1.
    pub v311: AtomicU64,
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

/// State shared by the bridge's handle and the worker.
struct Shared {
    /// The current request handle (replaced on the fallback to 3.1.1).
    handle: Mutex<Handle>,
    /// What the bridge published recently (3.1.1 loop guard).
    echoes: Mutex<Echoes>,
    /// Connection counter; a delivery is acknowledged only on the connection it came on.
    epoch: AtomicU64,
    /// Filters (with their QoS) to subscribe on each new session.
    filters: Mutex<Vec<(String, QoS)>>,
    /// Where pongs for this instance's XMPP link arrive, and what takes them.
    relay: Mutex<Option<PongRelay>>,
    stats: Arc<UpstreamStats>,
}

/// This instance's end of the keepalive pong relay (see [`UpstreamConfig::pong_relay`]).
#[derive(Clone)]
pub(crate) struct PongRelay {
    /// `{prefix}/{token}`, subscribed without a share group.
    topic: String,
    /// Hands a relayed pong's id to the XMPP link.
    deliver: Arc<dyn Fn(String) + Send + Sync>,
}

impl Shared {
    fn handle(&self) -> Result<Handle, BrokerGone> {
        self.handle
            .lock()
            .map(|h| h.clone())
            .map_err(|_| BrokerGone)
    }

    fn v311(&self) -> bool {
        self.stats.v311.load(Ordering::Relaxed) > 0
    }
}

/// The bridge's handle on the upstream broker.
pub struct UpstreamClient {
    shared: Arc<Shared>,
    deliveries: mpsc::Receiver<(Delivery, u64)>,
    /// Epoch of each unacknowledged delivery, by packet id.
    unacked: HashMap<u16, u64>,
    /// Per-filter QoS from the mapping rules; the bridge's single QoS is the fallback.
    filter_qos: HashMap<String, QoS>,
    subscribe_now: mpsc::Sender<()>,
    origin: String,
    /// The relay prefix from the config, `None` when off.
    pong_relay: Option<String>,
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
    /// Whether the worker may be connected (the XMPP link is up).
    pub link_up: watch::Receiver<bool>,
}

/// Starts the worker on `tracker`; it stops when `shutdown` is cancelled.
pub fn spawn(
    cfg: UpstreamConfig,
    wiring: Wiring,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<UpstreamClient, UpstreamError> {
    let window = usize::from(cfg.max_inflight.max(1));
    let stats = Arc::new(UpstreamStats::default());
    let (handle, eventloop) = if cfg.protocol == Protocol::V311 {
        stats.v311.store(1, Ordering::Relaxed);
        connection_v4(&cfg)?
    } else {
        connection_v5(&cfg)?
    };
    // The worker never waits on this channel (it queues behind it, see `Worker::pending`).
    let (tx, rx) = mpsc::channel(window);
    let (subscribe_tx, subscribe_rx) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        handle: Mutex::new(handle),
        echoes: Mutex::new(Echoes::default()),
        epoch: AtomicU64::new(0),
        filters: Mutex::new(Vec::new()),
        relay: Mutex::new(None),
        stats,
    });
    let pong_relay = cfg.pong_relay.clone();
    let worker = worker::Worker {
        cfg,
        shared: shared.clone(),
        eventloop,
        deliveries: tx,
        subscribe_now: subscribe_rx,
        origin: wiring.origin.clone(),
        identify: wiring.identify,
        session: false,
        connected: false,
        spoke_v5: false,
        pending: std::collections::VecDeque::new(),
    };
    tracker.spawn(worker.run(wiring.link_up, shutdown));
    Ok(UpstreamClient {
        shared,
        deliveries: rx,
        unacked: HashMap::new(),
        filter_qos: wiring.filter_qos,
        subscribe_now: subscribe_tx,
        origin: wiring.origin,
        pong_relay,
    })
}

fn transport(cfg: &UpstreamConfig) -> Result<Option<Transport>, UpstreamError> {
    let Some(tls) = &cfg.tls else {
        return Ok(None);
    };
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
    Ok(Some(Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })))
}

fn connection_v5(cfg: &UpstreamConfig) -> Result<(Handle, Loop), UpstreamError> {
    use rumqttc::v5::{AsyncClient, MqttOptions};
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_clean_start(false);
    o.set_keep_alive(cfg.keep_alive.max(std::time::Duration::from_secs(1)));
    o.set_manual_acks(true);
    o.set_outgoing_inflight_upper_limit(cfg.max_inflight.max(1));
    let mut props = ConnectProperties::new();
    props.session_expiry_interval =
        Some(u32::try_from(cfg.session_expiry.as_secs()).unwrap_or(u32::MAX));
    props.receive_maximum = Some(cfg.max_inflight.max(1));
    props.max_packet_size = Some(MAX_PACKET);
    o.set_connect_properties(props);
    if let Some((user, password)) = &cfg.credentials {
        o.set_credentials(user.clone(), password.clone());
    }
    if let Some(t) = transport(cfg)? {
        o.set_transport(t);
    }
    let (client, eventloop) = AsyncClient::new(o, usize::from(cfg.max_inflight.max(1)));
    Ok((Handle::V5(client), Loop::V5(Box::new(eventloop))))
}

fn connection_v4(cfg: &UpstreamConfig) -> Result<(Handle, Loop), UpstreamError> {
    use rumqttc::{AsyncClient, MqttOptions};
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_clean_session(false);
    o.set_keep_alive(cfg.keep_alive.max(std::time::Duration::from_secs(5)));
    o.set_manual_acks(true);
    o.set_inflight(cfg.max_inflight.max(1));
    o.set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize);
    if let Some((user, password)) = &cfg.credentials {
        o.set_credentials(user.clone(), password.clone());
    }
    if let Some(t) = transport(cfg)? {
        o.set_transport(t);
    }
    let (client, eventloop) = AsyncClient::new(o, usize::from(cfg.max_inflight.max(1)));
    Ok((Handle::V4(client), Loop::V4(Box::new(eventloop))))
}

/// Largest packet either way.
const MAX_PACKET: u32 = 16 << 20;

impl UpstreamClient {
    /// Adds the filters to the recorded ones; the worker subscribes on every connection
    /// without a session (the first one included). Never waits for the broker: SUBACK failures are logged by the
    /// worker, so the returned list is empty.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<Vec<u8>, BrokerGone> {
        {
            // Added to what was subscribed before (the rules' filters, then e.g. presence's).
            let mut list = self.shared.filters.lock().map_err(|_| BrokerGone)?;
            for f in filters {
                let q = self.filter_qos.get(f).copied().unwrap_or(qos);
                match list.iter_mut().find(|(known, _)| known == f) {
                    Some(entry) => entry.1 = q,
                    None => list.push((f.clone(), q)),
                }
            }
        }
        // Full means a request is pending already; closed means the worker stopped, which
        // `recv` reports.
        if self.subscribe_now.try_send(()).is_err() {
            debug!("Subscription request already pending.");
        }
        Ok(Vec::new())
    }

    /// Publishes a message of the bridge, marked with the origin property (MQTT 5) or
    /// remembered as an echo to drop (3.1.1).
    pub async fn publish(&self, publish: Publish) -> Result<(), BrokerGone> {
        // Remembered whatever the protocol, so a fallback to 3.1.1 cannot race with it.
        if let Ok(mut echoes) = self.shared.echoes.lock() {
            echoes.published(publish.topic.as_bytes(), &publish.payload, Instant::now());
        }
        let handle = self.shared.handle()?;
        handle
            .publish(
                publish.topic.to_string(),
                publish.qos,
                publish.retain,
                publish.payload,
                &self.origin,
                &publish.properties,
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
        if epoch != Some(self.shared.epoch.load(Ordering::Acquire)) {
            // The broker sends it again on the current connection; that copy gets the ack.
            add(&self.shared.stats.stale_acks);
            debug!(
                pkid = publish.pkid,
                "Acknowledgement for an earlier connection dropped."
            );
            return Ok(());
        }
        let handle = self.shared.handle()?;
        handle
            .ack(publish.qos, publish.pkid)
            .await
            .map_err(|_| BrokerGone)
    }

    /// Receives pongs for the XMPP link whose ping token is `token` on
    /// `{pong_relay}/{token}` (subscribed on every connection, without a share group) and hands
    /// each id to `deliver`. Does nothing when the relay is off.
    pub fn enable_pong_relay(&self, token: &str, deliver: Arc<dyn Fn(String) + Send + Sync>) {
        let Some(prefix) = &self.pong_relay else {
            return;
        };
        let relay = PongRelay {
            topic: format!("{prefix}/{token}"),
            deliver,
        };
        if let Ok(mut r) = self.shared.relay.lock() {
            *r = Some(relay);
        }
        if self.subscribe_now.try_send(()).is_err() {
            debug!("Subscription request already pending.");
        }
    }

    /// Publishes the pong `id` for the instance whose link token is `owner` (QoS 1: a lost
    /// relay only makes that instance's ping time out, but costs it a reconnect).
    pub async fn relay_pong(&self, owner: &str, id: &str) -> Result<(), BrokerGone> {
        let Some(prefix) = &self.pong_relay else {
            return Ok(());
        };
        let handle = self.shared.handle()?;
        handle
            .publish(
                format!("{prefix}/{owner}"),
                QoS::AtLeastOnce,
                false,
                bytes::Bytes::copy_from_slice(id.as_bytes()),
                &self.origin,
                &Properties::new(),
            )
            .await
            .map_err(|_| BrokerGone)
    }

    /// Counters.
    pub fn stats(&self) -> Arc<UpstreamStats> {
        self.shared.stats.clone()
    }
}
