//! What CONNACK tells an MQTT 5 client about the broker (5.0 section 3.2.2.3): the limits and
//! features of the configuration, so a client never has to find them out by being refused.

use bytestring::ByteString;

use super::codec::{Connect, Properties, Property};
use super::config::BrokerConfig;

/// The CONNACK properties for a successful MQTT 5 CONNECT. `assigned` is the client id the
/// broker chose when the client sent none.
pub fn connack_properties(
    cfg: &BrokerConfig,
    connect: &Connect,
    client_id: &ByteString,
    assigned: bool,
) -> Properties {
    let mut p = Properties::new();
    if assigned {
        p.push(Property::AssignedClientIdentifier(client_id.clone()));
    }
    p.push(Property::ReceiveMaximum(cfg.receive_maximum));
    // Maximum QoS is sent only below 2; its only legal values are 0 and 1 [MQTT-3.2.2-9].
    if cfg.maximum_qos < 2 {
        p.push(Property::MaximumQoS(cfg.maximum_qos));
    }
    p.push(Property::RetainAvailable(u8::from(cfg.retain_available)));
    p.push(Property::MaximumPacketSize(
        u32::try_from(cfg.max_packet_size).unwrap_or(u32::MAX),
    ));
    p.push(Property::TopicAliasMaximum(cfg.topic_alias_maximum));
    p.push(Property::WildcardSubscriptionAvailable(u8::from(
        cfg.wildcard_subscriptions,
    )));
    p.push(Property::SubscriptionIdentifierAvailable(u8::from(
        cfg.subscription_identifiers,
    )));
    p.push(Property::SharedSubscriptionAvailable(u8::from(
        cfg.shared_subscriptions,
    )));
    if let Some(keep_alive) = cfg.server_keep_alive {
        p.push(Property::ServerKeepAlive(keep_alive));
    }
    let requested = connect.properties.find(|q| match q {
        Property::RequestResponseInformation(v) => Some(*v == 1),
        _ => None,
    });
    if let (Some(true), Some(template)) = (requested, &cfg.response_information) {
        let info = template.replace("{client_id}", client_id);
        p.push(Property::ResponseInformation(ByteString::from(info)));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::ProtocolVersion;

    fn connect(request_info: bool) -> Connect {
        let mut properties = Properties::new();
        if request_info {
            properties.push(Property::RequestResponseInformation(1));
        }
        Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: ByteString::from_static("c1"),
            will: None,
            username: None,
            password: None,
            properties,
        }
    }

    #[test]
    fn flags_follow_the_config() {
        let cfg = BrokerConfig {
            maximum_qos: 1,
            retain_available: false,
            shared_subscriptions: false,
            server_keep_alive: Some(20),
            ..BrokerConfig::default()
        };
        let p = connack_properties(&cfg, &connect(false), &"c1".into(), false);
        let has = |want: Property| p.0.contains(&want);
        assert!(has(Property::MaximumQoS(1)));
        assert!(has(Property::RetainAvailable(0)));
        assert!(has(Property::SharedSubscriptionAvailable(0)));
        assert!(has(Property::WildcardSubscriptionAvailable(1)));
        assert!(has(Property::ServerKeepAlive(20)));
        assert!(has(Property::ReceiveMaximum(cfg.receive_maximum)));
        assert!(
            !p.0.iter()
                .any(|q| matches!(q, Property::ResponseInformation(_)))
        );
        assert!(
            !p.0.iter()
                .any(|q| matches!(q, Property::AssignedClientIdentifier(_)))
        );
    }

    #[test]
    fn response_information_only_when_requested() {
        let cfg = BrokerConfig::default();
        let p = connack_properties(&cfg, &connect(true), &"c1".into(), true);
        assert!(p.0.contains(&Property::ResponseInformation("reply/c1".into())));
        assert!(p.0.contains(&Property::AssignedClientIdentifier("c1".into())));
        let default_qos = p.0.iter().any(|q| matches!(q, Property::MaximumQoS(_)));
        assert!(!default_qos, "Maximum QoS 2 is not sent");
    }
}
