//! The MQTT side of the bridge, with its two faces behind one interface: the embedded broker's
//! in-process client, or a client of an upstream broker. The bridge core calls these four
//! methods and never asks which face it has.
//!
//! | | embedded | upstream |
//! | --- | --- | --- |
//! | publisher identity | the authenticated user name | the topic's `{user}` capture (ACL-guarded) |
//! | loop guard | No Local | No Local + origin User Property |
//! | subscribe | SUBACK codes returned | recorded; (re)subscribed per session, failures logged |
//! | ack | to the broker session | on the connection the delivery came on |
//! | subscribers' acknowledgements | reported per tracked publish | not knowable |

use tokio::sync::mpsc;

use crate::broker::codec::{Publish, QoS};
use crate::broker::tracking::Tracked;
use crate::broker::{BrokerGone, Delivery, InternalClient};
use crate::upstream::UpstreamClient;

/// Where the bridge's MQTT traffic goes.
#[derive(Debug)]
pub enum MqttSide {
    /// An in-process session of the embedded broker.
    Embedded(InternalClient),
    /// A network client of an upstream broker.
    Upstream(UpstreamClient),
}

impl From<InternalClient> for MqttSide {
    fn from(client: InternalClient) -> Self {
        MqttSide::Embedded(client)
    }
}

impl From<UpstreamClient> for MqttSide {
    fn from(client: UpstreamClient) -> Self {
        MqttSide::Upstream(client)
    }
}

impl MqttSide {
    /// Subscribes to `filters` with No Local and without retained messages. Returns the
    /// reason codes the broker gave, when it gave them before returning.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<Vec<u8>, BrokerGone> {
        match self {
            MqttSide::Embedded(c) => c.subscribe(filters, qos).await,
            MqttSide::Upstream(c) => c.subscribe(filters, qos).await,
        }
    }

    /// Publishes a message as the bridge.
    pub async fn publish(&self, publish: Publish) -> Result<(), BrokerGone> {
        match self {
            MqttSide::Embedded(c) => c.publish(publish).await,
            MqttSide::Upstream(c) => c.publish(publish).await,
        }
    }

    /// Publishes a message whose MQTT subscribers' acknowledgements are reported under
    /// `token` on the receiver of [`MqttSide::take_tracked`]. Embedded only: an upstream broker
    /// does not tell a publisher when subscribers acknowledged, so there it is a plain publish.
    pub async fn publish_tracked(&self, publish: Publish, token: u64) -> Result<(), BrokerGone> {
        match self {
            MqttSide::Embedded(c) => c.publish_tracked(publish, token).await,
            MqttSide::Upstream(c) => c.publish(publish).await,
        }
    }

    /// The reports on tracked publishes; `None` in upstream mode (and after the first call).
    pub fn take_tracked(&mut self) -> Option<mpsc::UnboundedReceiver<Tracked>> {
        match self {
            MqttSide::Embedded(c) => c.take_tracked(),
            MqttSide::Upstream(_) => None,
        }
    }

    /// The next delivery; `None` when the MQTT side has stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Delivery> {
        match self {
            MqttSide::Embedded(c) => c.recv().await,
            MqttSide::Upstream(c) => c.recv().await,
        }
    }

    /// Acknowledges a QoS 1/2 delivery: the message is now the XMPP side's.
    pub async fn ack(&mut self, publish: &Publish) -> Result<(), BrokerGone> {
        match self {
            MqttSide::Embedded(c) => c.ack(publish).await,
            MqttSide::Upstream(c) => c.ack(publish).await,
        }
    }
}
