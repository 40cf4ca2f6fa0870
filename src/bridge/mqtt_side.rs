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
//! | keepalive pongs of other instances | cannot be relayed (logged) | relayed through the broker |
//! | subscribers' acknowledgements | reported per tracked publish | not knowable |

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use crate::broker::codec::{Publish, QoS};
use crate::broker::tracking::Tracked;
use crate::broker::{BrokerGone, Delivery, InternalClient};
use crate::upstream::UpstreamClient;
use crate::xmpp::XmppHandle;

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
    /// `note` is kept with the token while a copy is in the store (it survives a restart).
    pub async fn publish_tracked(
        &self,
        publish: Publish,
        token: u64,
        note: Option<Vec<u8>>,
    ) -> Result<(), BrokerGone> {
        match self {
            MqttSide::Embedded(c) => c.publish_noted(publish, token, note).await,
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

    /// What the embedded broker's store kept for the bridge across a restart (once).
    pub fn take_resumed(&mut self) -> Option<crate::broker::Resumed> {
        match self {
            MqttSide::Embedded(c) => c.take_resumed(),
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

    /// A delivery that is there already, without waiting (embedded: one the broker handed
    /// over in the same batch); `None` otherwise, and always upstream.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        match self {
            MqttSide::Embedded(c) => c.try_recv(),
            MqttSide::Upstream(_) => None,
        }
    }

    /// Takes relayed keepalive pongs for the XMPP link (upstream mode: instances share the
    /// broker; an embedded broker has no other instance to hear from).
    pub fn enable_pong_relay(&self, xmpp: &XmppHandle) {
        if let MqttSide::Upstream(c) = self {
            let link = xmpp.clone();
            c.enable_pong_relay(xmpp.ping_token(), Arc::new(move |id| link.relayed_pong(id)));
        }
    }

    /// Passes the pong of another instance's ping on to that instance.
    pub async fn relay_pong(&self, id: &str) -> Result<(), BrokerGone> {
        let Some(owner) = XmppHandle::owner_of_ping(id) else {
            return Ok(());
        };
        match self {
            MqttSide::Embedded(_) => {
                warn!(%id, "A keepalive answer for another bridge instance arrived: several \
                    instances hold this component domain (ejabberd balances it). Without a \
                    shared broker (upstream mode) their keepalives fail; run them in upstream mode.");
                Ok(())
            }
            MqttSide::Upstream(c) => c.relay_pong(owner, id).await,
        }
    }

    /// Acknowledges a QoS 1/2 delivery: the message is now the XMPP side's.
    pub async fn ack(&mut self, publish: &Publish) -> Result<(), BrokerGone> {
        match self {
            MqttSide::Embedded(c) => c.ack(publish).await,
            MqttSide::Upstream(c) => c.ack(publish).await,
        }
    }

    /// Acknowledges several deliveries: to the embedded broker in one hand-over; upstream,
    /// one packet each on the connection they came on.
    pub async fn ack_all(&mut self, publishes: &[Publish]) -> Result<(), BrokerGone> {
        match self {
            MqttSide::Embedded(c) => c.ack_all(publishes).await,
            MqttSide::Upstream(c) => {
                for publish in publishes {
                    c.ack(publish).await?;
                }
                Ok(())
            }
        }
    }
}
