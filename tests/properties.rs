//! Property tests (proptest): MQTT packets survive encode → decode in both protocol versions, also
//! when the bytes arrive in two pieces, and topic matching (`topic::matches`, the subscription
//! trie, the retained-message trie) agrees with a naive reference matcher.
//!
//! The escape round trips of the mapping module are property-tested beside the code
//! (`src/mapping/proptests.rs`), since `escape` is private to the crate.
#![allow(
    clippy::unwrap_used,
    reason = "tests: a failed unwrap is a failed test"
)]

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use xmpp_mqtt_bridge::broker::codec::{
    Connect, Disconnect, LastWill, Packet, Properties, Property, ProtocolVersion, PubResponse,
    Publish, QoS, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe, decode, encode,
    encoded_len, reason,
};
use xmpp_mqtt_bridge::broker::topic::{matches, validate_topic_filter, validate_topic_name};
use xmpp_mqtt_bridge::broker::trie::{RetainedTree, SubscriptionTree};

// ---------------------------------------------------------------- codec round trips

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// A UTF-8 string as MQTT allows it (no U+0000, no other control characters).
fn text() -> impl Strategy<Value = ByteString> {
    "\\PC{0,12}".prop_map(ByteString::from)
}

/// A topic name: non-empty, no wildcards, levels of any characters but `/`, `+`, `#`, NUL.
fn topic_name() -> impl Strategy<Value = ByteString> {
    "[a-zA-Z0-9 $é東🦀/_-]{1,24}".prop_map(ByteString::from)
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = Vec<Property>> {
    vec(
        (text(), text()).prop_map(|(k, v)| Property::UserProperty(k, v)),
        0..3,
    )
}

/// MQTT 5 properties: each optional single-valued property at most once, then user properties.
fn props(singles: Vec<BoxedStrategy<Property>>) -> impl Strategy<Value = Properties> {
    let singles: Vec<_> = singles.into_iter().map(option::of).collect();
    (singles, user_properties()).prop_map(|(singles, users)| {
        Properties(singles.into_iter().flatten().chain(users).collect())
    })
}

fn publish_properties() -> impl Strategy<Value = Properties> {
    props(vec![
        (0u8..=1).prop_map(Property::PayloadFormatIndicator).boxed(),
        any::<u32>()
            .prop_map(Property::MessageExpiryInterval)
            .boxed(),
        text().prop_map(Property::ContentType).boxed(),
        topic_name().prop_map(Property::ResponseTopic).boxed(),
        bytes(8).prop_map(Property::CorrelationData).boxed(),
        (1u32..=268_435_455)
            .prop_map(Property::SubscriptionIdentifier)
            .boxed(),
        (1u16..).prop_map(Property::TopicAlias).boxed(),
    ])
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        1u16..,
        bytes(64),
        publish_properties(),
    )
        .prop_map(
            move |(qos, dup, retain, topic, pkid, payload, properties)| {
                let qos0 = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    pkid: if qos0 { 0 } else { pkid },
                    payload,
                    properties: only_v5(v, properties),
                })
            },
        )
}

fn only_v5(v: ProtocolVersion, properties: Properties) -> Properties {
    match v {
        ProtocolVersion::V5 => properties,
        ProtocolVersion::V311 => Properties::new(),
    }
}

fn pub_response(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let reasons = prop_oneof![
        Just(reason::SUCCESS),
        Just(reason::NO_MATCHING_SUBSCRIBERS),
        Just(reason::UNSPECIFIED_ERROR),
        Just(reason::PACKET_IDENTIFIER_NOT_FOUND),
    ];
    let properties = props(vec![text().prop_map(Property::ReasonString).boxed()]);
    (0u8..4, 1u16.., reasons, properties).prop_map(move |(kind, pkid, code, properties)| {
        let r = match v {
            ProtocolVersion::V5 => PubResponse {
                pkid,
                reason: code,
                properties,
            },
            ProtocolVersion::V311 => PubResponse::new(pkid),
        };
        match kind {
            0 => Packet::PubAck(r),
            1 => Packet::PubRec(r),
            2 => Packet::PubRel(r),
            _ => Packet::PubComp(r),
        }
    })
}

/// A topic filter; the codec does not check wildcard placement, so any non-empty string.
fn filter() -> impl Strategy<Value = ByteString> {
    "[a-z+#/$]{1,12}".prop_map(ByteString::from)
}

fn subscription_options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let handling = prop_oneof![
        Just(RetainHandling::SendAlways),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    (qos(), any::<bool>(), any::<bool>(), handling).prop_map(move |(qos, nl, rap, rh)| match v {
        ProtocolVersion::V311 => SubscriptionOptions::with_qos(qos),
        ProtocolVersion::V5 => SubscriptionOptions {
            qos,
            no_local: nl,
            retain_as_published: rap,
            retain_handling: rh,
        },
    })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties = props(vec![
        (1u32..=268_435_455)
            .prop_map(Property::SubscriptionIdentifier)
            .boxed(),
    ]);
    (
        1u16..,
        vec((filter(), subscription_options(v)), 1..5),
        properties,
    )
        .prop_map(move |(pkid, filters, properties)| {
            Packet::Subscribe(Subscribe {
                pkid,
                filters,
                properties: only_v5(v, properties),
            })
        })
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (1u16.., vec(filter(), 1..5), props(vec![])).prop_map(move |(pkid, filters, properties)| {
        Packet::Unsubscribe(Unsubscribe {
            pkid,
            filters,
            properties: only_v5(v, properties),
        })
    })
}

fn will(v: ProtocolVersion) -> impl Strategy<Value = LastWill> {
    let properties = props(vec![
        any::<u32>().prop_map(Property::WillDelayInterval).boxed(),
        (0u8..=1).prop_map(Property::PayloadFormatIndicator).boxed(),
        text().prop_map(Property::ContentType).boxed(),
        bytes(8).prop_map(Property::CorrelationData).boxed(),
    ]);
    (topic_name(), bytes(32), qos(), any::<bool>(), properties).prop_map(
        move |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: only_v5(v, properties),
        },
    )
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties = props(vec![
        any::<u32>()
            .prop_map(Property::SessionExpiryInterval)
            .boxed(),
        (1u16..).prop_map(Property::ReceiveMaximum).boxed(),
        (1u32..).prop_map(Property::MaximumPacketSize).boxed(),
        any::<u16>().prop_map(Property::TopicAliasMaximum).boxed(),
    ]);
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(will(v)),
        option::of(text()),
        option::of(bytes(16)),
        properties,
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 forbids a password without a user name [MQTT-3.1.2-22].
                let password = match v {
                    ProtocolVersion::V311 if username.is_none() => None,
                    _ => password,
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: only_v5(v, properties),
                }))
            },
        )
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let properties = props(vec![
        any::<u32>()
            .prop_map(Property::SessionExpiryInterval)
            .boxed(),
        text().prop_map(Property::ReasonString).boxed(),
    ]);
    let reasons = prop_oneof![
        Just(reason::SUCCESS),
        Just(reason::DISCONNECT_WITH_WILL),
        Just(reason::PROTOCOL_ERROR),
    ];
    (reasons, properties).prop_map(move |(code, properties)| {
        Packet::Disconnect(match v {
            ProtocolVersion::V5 => Disconnect {
                reason: code,
                properties,
            },
            ProtocolVersion::V311 => Disconnect {
                reason: reason::SUCCESS,
                properties: Properties::new(),
            },
        })
    })
}

fn packet(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    prop_oneof![
        publish(v),
        pub_response(v),
        subscribe(v),
        unsubscribe(v),
        connect(v),
        disconnect(v),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
    ]
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// encode → decode gives the packet back, `encoded_len` is exact and nothing is left over.
    #[test]
    fn packets_survive_encode_decode((v, packet) in versioned_packet()) {
        let mut buf = BytesMut::new();
        encode(&packet, v, &mut buf);
        prop_assert_eq!(buf.len(), encoded_len(&packet, v));
        let decoded = decode(&mut buf, v, usize::MAX);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    /// Bytes arriving in two pieces: the first piece is "incomplete" and consumes nothing, and
    /// after the rest arrives the packet decodes; a second packet behind it is left in place.
    #[test]
    fn packets_decode_across_a_split(
        (v, packet) in versioned_packet(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut whole = BytesMut::new();
        encode(&packet, v, &mut whole);
        let cut = cut.index(whole.len());
        let mut buf = BytesMut::from(&whole[..cut]);
        prop_assert_eq!(decode(&mut buf, v, usize::MAX), Ok(None));
        prop_assert_eq!(buf.len(), cut);
        buf.extend_from_slice(&whole[cut..]);
        encode(&Packet::PingReq, v, &mut buf);
        prop_assert_eq!(decode(&mut buf, v, usize::MAX), Ok(Some(packet)));
        prop_assert_eq!(&buf[..], &[0xC0, 0x00][..]);
    }

    /// A packet larger than the limit is refused as soon as its fixed header is read.
    #[test]
    fn packets_over_the_limit_are_refused((v, packet) in versioned_packet()) {
        let mut buf = BytesMut::new();
        encode(&packet, v, &mut buf);
        let len = buf.len();
        let header = 1 + buf[1..].iter().take_while(|b| **b & 0x80 != 0).count() + 1;
        let mut head = BytesMut::from(&buf[..header]);
        prop_assert!(decode(&mut head, v, len - 1).is_err());
        prop_assert!(decode(&mut buf, v, len).is_ok());
    }
}

// ---------------------------------------------------------------- topic matching

/// Level by level, written from the specification (MQTT 4.7) and nothing else.
fn reference_matches(filter: &str, name: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (None, None) => true,
            (Some(&"#"), _) => true,
            (Some(fl), Some(tl)) if *fl == "+" || fl == tl => go(&f[1..], &t[1..]),
            _ => false,
        }
    }
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = name.split('/').collect();
    go(&f, &t)
}

/// Levels from a small alphabet so that matches are frequent; includes empty levels and `$`.
fn name_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$SYS", "ab"])
}

fn topic_names() -> impl Strategy<Value = Vec<String>> {
    vec(
        vec(name_level(), 1..5).prop_map(|l| {
            let name = l.join("/");
            if name.is_empty() {
                "/".to_string()
            } else {
                name
            }
        }),
        1..12,
    )
}

fn filters() -> impl Strategy<Value = Vec<String>> {
    let level = prop::sample::select(vec!["a", "b", "", "$SYS", "+", "+"]);
    let one = (vec(level, 1..5), any::<bool>()).prop_map(|(levels, hash)| {
        let mut f = levels.join("/");
        if f.is_empty() {
            f.push('/');
        }
        if hash {
            f.push_str("/#");
        }
        f
    });
    vec(prop_oneof![Just("#".to_string()), one], 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// `matches`, the subscription trie and the retained trie all agree with the reference.
    #[test]
    fn topic_matching_agrees_with_the_reference(filters in filters(), names in topic_names()) {
        for f in &filters {
            prop_assert!(validate_topic_filter(f).is_ok(), "{}", f);
        }
        let mut subs: SubscriptionTree<usize, ()> = SubscriptionTree::new();
        for (key, f) in filters.iter().enumerate() {
            subs.insert(f, key, ());
        }
        let mut retained: RetainedTree<()> = RetainedTree::new();
        for n in &names {
            prop_assert!(validate_topic_name(n).is_ok(), "{}", n);
            retained.insert(n, ());
        }
        for n in &names {
            let want: BTreeSet<usize> = (0..filters.len())
                .filter(|&k| reference_matches(&filters[k], n))
                .collect();
            let mut got = BTreeSet::new();
            subs.for_each_match(n, |_, key, ()| {
                got.insert(key);
            });
            prop_assert_eq!(&got, &want, "subscriptions matching {:?}", n);
            for (k, f) in filters.iter().enumerate() {
                prop_assert_eq!(matches(f, n), want.contains(&k), "{:?} vs {:?}", f, n);
            }
        }
        for f in &filters {
            let want: BTreeSet<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| reference_matches(f, n))
                .collect();
            let mut got = BTreeSet::new();
            retained.for_each_match(f, |topic, ()| {
                got.insert(topic.to_string());
            });
            let got: BTreeSet<&str> = got.iter().map(String::as_str).collect();
            prop_assert_eq!(got, want, "retained matching {:?}", f);
        }
    }

    /// Removing a subscription takes away exactly its matches.
    #[test]
    fn removing_a_subscription_removes_its_matches(
        filters in filters(),
        names in topic_names(),
        gone in any::<prop::sample::Index>(),
    ) {
        let mut subs: SubscriptionTree<usize, ()> = SubscriptionTree::new();
        for (key, f) in filters.iter().enumerate() {
            subs.insert(f, key, ());
        }
        let gone = gone.index(filters.len());
        prop_assert_eq!(subs.remove(&filters[gone], gone), Some(()));
        prop_assert_eq!(subs.remove(&filters[gone], gone), None);
        prop_assert_eq!(subs.len(), filters.len() - 1);
        for n in &names {
            let mut got = BTreeSet::new();
            subs.for_each_match(n, |_, key, ()| {
                got.insert(key);
            });
            let want: BTreeSet<usize> = (0..filters.len())
                .filter(|&k| k != gone && reference_matches(&filters[k], n))
                .collect();
            prop_assert_eq!(got, want, "after removing {:?}", filters[gone]);
        }
    }
}
