//! The bridge's handling of receipts, corrections and reply routes (the I/O around the
//! sans-IO bookkeeping in `receipts`).

use bytes::Bytes;
use tracing::{debug, info, warn};
use xmpp_parsers::message::Message;
use xmpp_parsers::stanza_error::DefinedCondition;

use super::envelope::{Bounce, bounce_json, receipt_json};
use super::events::{Outcome, Taken, Translation};
use super::receipts::{Action, Correction, Reply};
use super::stanza;
use super::translate::{InboundChat, XmppOut, bare};
use super::{BRIDGE_CLIENT_ID, Bridge};
use crate::broker::BrokerGone;
use crate::broker::codec::{Properties, Property, Publish, QoS};
use crate::broker::tracking::Tracked;
use crate::mapping::Refusal;
use crate::xmpp::{Inbound, Outgoing};

fn correction_refusal(check: Correction) -> Option<(&'static str, &'static str)> {
    match check {
        Correction::Allowed => None,
        Correction::NotTheSender => Some((
            "not_original_sender",
            "a correction from someone other than the original sender",
        )),
        Correction::Unknown => Some((
            "unknown_original",
            "a correction of a message the bridge did not carry (or no longer remembers)",
        )),
    }
}

impl Bridge {
    /// Records the ids of a message carried from XMPP with its sender (for corrections).
    pub(super) fn remember_sender(&mut self, chat: &InboundChat<'_>) {
        let sender = bare(&chat.from);
        if let Some(id) = &chat.id {
            self.senders.record(id, sender);
        }
        if let Some(id) = &chat.extras.origin_id {
            self.senders.record(id, sender);
        }
    }

    /// A message from XMPP with extensions: refuses corrections from anyone but the original
    /// sender, and publishes an XMPP client's receipt to an MQTT 5 publisher's Response Topic.
    /// Returns the event back when the message goes on through the normal translation.
    pub(super) async fn xmpp_extras(
        &mut self,
        chat: &InboundChat<'_>,
        mut event: Box<Translation>,
        m: &Message,
    ) -> Result<Option<Box<Translation>>, BrokerGone> {
        let has_body = chat.body.as_ref().is_some_and(|b| !b.is_empty());
        if let (Some(original), true) = (&chat.extras.replaces, has_body) {
            let check = self.senders.check(original, bare(&chat.from));
            if let Some((reason, detail)) = correction_refusal(check) {
                info!(from = %chat.from, replaces = %original, reason, "Correction refused.");
                event.payload = (chat.body.as_ref())
                    .map(|b| Bytes::copy_from_slice(b.as_bytes()))
                    .unwrap_or_default();
                event.outcome = Outcome::denied(reason, detail);
                self.events.emit(*event).await;
                let inbound = Inbound::Message(Box::new(m.clone()));
                let text = "Only the original sender may correct a message.";
                self.reply_error(&inbound, DefinedCondition::NotAllowed, text);
                return Ok(None);
            }
        }
        if let (Some(id), false) = (&chat.extras.received, has_body) {
            if let Some(reply) = self.receipts.reply_for(bare(&chat.to), id) {
                let payload = Bytes::from(receipt_json(&chat.from, &chat.to, id));
                self.publish_to_reply(reply, payload, event, Outcome::ReceiptSent)
                    .await?;
                debug!(id, "XMPP receipt published to the Response Topic.");
                return Ok(None);
            }
        }
        if let (Some(bounce), Some(id)) = (&chat.extras.bounced, &chat.id) {
            if let Some(reply) = self.receipts.reply_for(bare(&chat.to), id) {
                let payload = Bytes::from(bounce_json(&chat.from, &chat.to, id, bounce));
                let outcome = Outcome::Bounced {
                    detail: bounce.detail(),
                };
                self.publish_to_reply(reply, payload, event, outcome)
                    .await?;
                debug!(id = &**id, "XMPP bounce published to the Response Topic.");
                return Ok(None);
            }
        }
        Ok(Some(event))
    }

    /// Publishes a receipt or a bounce to the Response Topic (with the Correlation Data) an
    /// MQTT 5 publisher gave with its message, and audits it with `outcome`.
    async fn publish_to_reply(
        &mut self,
        reply: Reply,
        payload: Bytes,
        mut event: Box<Translation>,
        outcome: Outcome,
    ) -> Result<(), BrokerGone> {
        let mut properties = Properties::new();
        if let Some(c) = reply.correlation {
            properties.push(Property::CorrelationData(c));
        }
        let topic = reply.topic.to_string();
        event.to_mqtt("", &topic, 1, BRIDGE_CLIENT_ID, &payload, None);
        event.rule = None;
        event.outcome = outcome;
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: reply.topic,
            pkid: 0,
            payload,
            properties,
        };
        self.mqtt.publish(publish).await?;
        event.handed_over();
        self.events.emit(*event).await;
        Ok(())
    }

    /// An error stanza that bounces a message the bridged user sent through the bridge (its id
    /// was carried from MQTT and is still remembered), as a bodiless message to carry back;
    /// `None` for every other error (never answered, never carried: no error loops).
    pub(super) fn bounce_of<'m>(&self, m: &'m Message) -> Option<InboundChat<'m>> {
        let chat = stanza::bounced_chat(m)?;
        let id = chat.id.as_deref()?;
        let ours = self.senders.check(id, bare(&chat.to)) == Correction::Allowed;
        if ours {
            let detail = chat.extras.bounced.as_ref().map(Bounce::detail);
            info!(from = %chat.from, to = %chat.to, id, detail, "The XMPP side bounced a message from MQTT.");
        }
        ours.then_some(chat)
    }

    /// An MQTT message's extensions: refuses a correction by anyone but the original sender
    /// (false: handled, acknowledged), keeps an MQTT 5 Response Topic for the XMPP receipt,
    /// and remembers the sender of the message's ids.
    pub(super) async fn mqtt_extras(
        &mut self,
        out: &XmppOut,
        id: &str,
        publish: &Publish,
        event: &mut Box<Translation>,
    ) -> Result<bool, BrokerGone> {
        if out.body.is_empty() {
            return Ok(true); // a chat state: no ids, no receipt
        }
        if let Some(original) = &out.extras.replaces {
            if let Some((reason, detail)) =
                correction_refusal(self.senders.check(original, &out.from))
            {
                warn!(from = %out.from, replaces = %original, reason, "Correction refused.");
                let mut refused = event.clone();
                refused.outcome = Outcome::denied(reason, detail);
                self.events.emit(*refused).await;
                self.mqtt.ack(publish).await?;
                return Ok(false);
            }
        }
        self.senders.record(id, &out.from);
        if let Some(origin) = &out.extras.origin_id {
            self.senders.record(origin, &out.from);
        }
        if publish.properties.is_empty() {
            return Ok(true);
        }
        let topic = publish.properties.find(|p| match p {
            Property::ResponseTopic(t) => Some(t.clone()),
            _ => None,
        });
        if let Some(topic) = topic {
            // The bridge publishes the receipt as itself: never onto a bridged topic, where it
            // would speak for a user.
            let bridged = !matches!(self.table.to_xmpp(&topic, None), Err(Refusal::NoRule));
            if bridged || topic.contains(['+', '#']) || topic.is_empty() {
                warn!(%topic, "Response Topic refused for receipts (bridged topic or not a topic name).");
            } else {
                let correlation = publish.properties.find(|p| match p {
                    Property::CorrelationData(c) => Some(c.clone()),
                    _ => None,
                });
                self.receipts
                    .expect_reply(&out.from, id, Reply { topic, correlation });
            }
        }
        Ok(true)
    }

    /// A report from the broker on a tracked publish: the receipt toward XMPP, and the audit
    /// record of each copy's end.
    pub(super) async fn on_tracked(&mut self, tracked: Tracked) {
        let Some(action) = self.receipts.on_tracked(tracked) else {
            return;
        };
        let (entry, client_id, outcome) = match action {
            Action::SendReceipt(entry, client_id) => {
                match stanza::receipt(&entry.recipient, &entry.sender, &entry.id) {
                    Some(receipt) => {
                        if let Err(e) = self.xmpp.send(Outgoing::new(receipt)) {
                            warn!(error = %e, id = %entry.id, "Receipt not sent.");
                        }
                    }
                    None => warn!(id = %entry.id, "Receipt addresses are not valid JIDs."),
                }
                debug!(id = %entry.id, subscriber = %client_id, "Receipt sent to XMPP.");
                (entry, Some(client_id), Outcome::ReceiptSent)
            }
            Action::Delivered(entry, client_id) => (entry, Some(client_id), Outcome::Delivered),
            Action::Expired(entry, client_id) => {
                let detail = "the MQTT 5 Message Expiry Interval ran out before delivery";
                let outcome = Outcome::Expired {
                    detail: detail.into(),
                };
                (entry, Some(client_id), outcome)
            }
            Action::Dropped(entry, client_id, reason) => {
                let detail = match reason {
                    "no_subscriber" => "no MQTT subscriber at QoS 1 or 2: no receipt",
                    "queue_full" => "the subscriber's session queue was full",
                    "too_large" => "larger than the subscriber's Maximum Packet Size",
                    "refused_by_subscriber" => "the subscriber answered with an error reason code",
                    _ => "the subscriber's session ended before it acknowledged",
                };
                (entry, client_id, Outcome::dropped(reason, detail))
            }
        };
        let mut event = Translation::from_xmpp(
            &entry.sender,
            &entry.recipient,
            entry.kind,
            Some(&entry.id),
            Taken::now(),
        );
        let subscriber = client_id.as_deref().unwrap_or("");
        event.to_mqtt(
            &entry.rule,
            &entry.topic,
            entry.qos,
            subscriber,
            &Bytes::new(),
            None,
        );
        if client_id.is_none() {
            event.mqtt.client_id = None;
        }
        event.outcome = outcome;
        self.events.emit(*event).await;
    }
}
