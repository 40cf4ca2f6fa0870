//! SUBSCRIBE and UNSUBSCRIBE: plain and shared subscriptions, subscription options, retained
//! messages on subscribe; and redelivery of a share group's messages.

use tracing::debug;

use super::Router;
use crate::broker::codec::{
    Packet, Properties, Property, ProtocolVersion, QoS, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe, reason,
};
use crate::broker::session::{Outgoing, SessionId, SubEntry};
use crate::broker::session_events::SessionEvent;
use crate::broker::topic::{is_wildcard, parse_shared, validate_topic_filter};

impl Router {
    pub(super) fn subscribe(&mut self, sid: SessionId, sub: Subscribe) {
        let Some(version) = self.version(sid) else {
            return;
        };
        let sub_id = sub.properties.subscription_identifier();
        let mut codes = Vec::with_capacity(sub.filters.len());
        let mut granted = Vec::new();
        let mut retained = Vec::new();
        // Reason String for a failing SUBACK (MQTT 5, unless Request Problem Information 0).
        let mut why: Option<String> = None;
        for (filter, options) in sub.filters {
            if let Err(error) = validate_topic_filter(&filter) {
                debug!(%filter, %error, "Invalid topic filter refused.");
                why.get_or_insert_with(|| format!("{filter}: {error}"));
                codes.push(match version {
                    ProtocolVersion::V5 => reason::TOPIC_FILTER_INVALID,
                    ProtocolVersion::V311 => reason::UNSPECIFIED_ERROR,
                });
                continue;
            }
            let shared = parse_shared(&filter);
            let refusal = if shared.is_some() && !self.cfg.shared_subscriptions {
                Some(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else if !self.cfg.wildcard_subscriptions && is_wildcard(&filter) {
                Some(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
            } else {
                None
            };
            let refusal = refusal
                .or_else(|| (!self.acl_subscribe(sid, &filter)).then_some(reason::NOT_AUTHORIZED));
            if let Some(code) = refusal {
                why.get_or_insert_with(|| {
                    let what = match code {
                        reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED => {
                            "shared subscriptions are turned off"
                        }
                        reason::NOT_AUTHORIZED => "the ACL does not allow it",
                        _ => "wildcard subscriptions are turned off",
                    };
                    format!("{filter}: {what}")
                });
                codes.push(match version {
                    ProtocolVersion::V5 => code,
                    ProtocolVersion::V311 => reason::UNSPECIFIED_ERROR,
                });
                continue;
            }
            if shared.is_some() && options.no_local {
                self.kick(
                    sid,
                    reason::PROTOCOL_ERROR,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                );
                return;
            }
            let mut options = options;
            options.qos =
                QoS::from_u8(self.cfg.maximum_qos).map_or(options.qos, |max| options.qos.min(max));
            let entry = SubEntry {
                options,
                id: sub_id,
            };
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let existed = s.subscriptions.insert(filter.clone(), entry).is_some();
            codes.push(options.qos as u8);
            if self.session_events.is_some() {
                granted.push(filter.clone());
            }
            if let Some(sh) = shared {
                // Retained messages are not sent for shared subscriptions (5.0 §4.8.2).
                self.shared.join(&filter, sh.filter, sid, entry);
                continue;
            }
            self.subs.insert(&filter, sid, entry);
            let send_retained = match options.retain_handling {
                RetainHandling::SendAlways => true,
                RetainHandling::SendIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                self.retained.for_each_match(&filter, |_topic, r| {
                    retained.push((r.publish.clone(), r.expires, entry));
                });
            }
        }
        let mut properties = Properties::new();
        if let Some(why) = why.filter(|_| self.problem_info(sid)) {
            properties.push(Property::ReasonString(why.into()));
        }
        let ack = SubAck {
            pkid: sub.pkid,
            codes,
            properties,
        };
        self.send(sid, Packet::SubAck(ack));
        self.persist_session(sid);
        if !granted.is_empty() {
            self.notify(sid, |client_id, username| SessionEvent::Subscribed {
                client_id,
                username,
                filters: granted,
            });
        }
        for (mut msg, expires, entry) in retained {
            // [MQTT-3.3.1-8]: retained messages sent on subscribe carry RETAIN=1.
            msg.retain = true;
            msg.qos = msg.qos.min(entry.options.qos);
            if let Some(id) = entry.id {
                msg.properties.push(Property::SubscriptionIdentifier(id));
            }
            let message = Outgoing {
                expires,
                ..Outgoing::new(msg)
            };
            self.deliver(sid, message, None);
        }
    }

    pub(super) fn unsubscribe(&mut self, sid: SessionId, unsub: Unsubscribe) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut codes = Vec::with_capacity(unsub.filters.len());
        let mut removed = Vec::new();
        let listening = self.session_events.is_some();
        for filter in &unsub.filters {
            let existed = s.subscriptions.remove(filter).is_some();
            if existed && listening {
                removed.push(filter.clone());
            }
            if parse_shared(filter).is_some() {
                self.shared.leave(filter, sid);
            } else {
                self.subs.remove(filter, sid);
            }
            codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        let ack = UnsubAck {
            pkid: unsub.pkid,
            codes,
            properties: Properties::new(),
        };
        self.send(sid, Packet::UnsubAck(ack));
        self.persist_session(sid);
        if !removed.is_empty() {
            self.notify(sid, |client_id, username| SessionEvent::Unsubscribed {
                client_id,
                username,
                filters: removed,
            });
        }
    }

    /// Gives a message a member of a share group did not acknowledge to another member.
    pub(super) fn redeliver_shared(&mut self, mut message: Outgoing, leaving: SessionId) {
        let Some(gid) = message.shared else {
            return;
        };
        let sessions = &self.sessions;
        let online = |sid: SessionId| sessions.get(&sid).is_some_and(|s| s.attached.is_some());
        let Some((sid, entry)) = self.shared.pick(gid, online, Some(leaving)) else {
            return;
        };
        let p = &mut message.publish;
        p.properties
            .remove_where(|q| matches!(q, Property::SubscriptionIdentifier(_)));
        if let Some(id) = entry.id {
            p.properties.push(Property::SubscriptionIdentifier(id));
        }
        p.qos = p.qos.min(entry.options.qos);
        p.dup = false;
        message.origin = None;
        debug!(session = sid, topic = %p.topic, "Shared message redelivered to another member.");
        self.deliver(sid, message, None);
    }
}
