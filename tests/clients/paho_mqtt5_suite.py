#!/usr/bin/env python3
"""MQTT 5 checks of the built-in broker with Eclipse paho-mqtt 2.x (protocol=MQTTv5).

Usage: paho_mqtt5_suite.py --host 127.0.0.1 --port 1883 [--check NAME ...]

Prints one line per check (`PASS name` or `FAIL name: why`), then exactly
`paho5: N passed, M failed`. Exits 1 when a check failed. Reuses the client wrapper of
paho_suite.py. Run by tests/mqtt5_clients.rs.
"""

import argparse
import sys
import time
import traceback

from paho_suite import CheckFailed, Peer, expect, take, unique

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions


def v5_peer(suite, name):
    p = Peer(suite.host, suite.port, unique(name), protocol=mqtt.MQTTv5, name=name)
    suite.peers.append(p)
    return p


def publish_props(**values):
    props = Properties(PacketTypes.PUBLISH)
    for key, value in values.items():
        setattr(props, key, value)
    return props


def wait_published(info, what):
    info.wait_for_publish(5)
    expect(info.is_published(), f"no acknowledgement for {what}")


class Suite:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.peers = []

    def cleanup(self):
        for p in self.peers:
            p.close()
        self.peers = []

    def check_properties_forwarded(self):
        """Every PUBLISH property a subscriber can get arrives unchanged, user properties in
        order; Message Expiry Interval arrives as what is left of it."""
        base = unique("p5")
        sub = v5_peer(self, "props-sub")
        sub.connect()
        sub.subscribe(f"{base}/#", 1)
        pub = v5_peer(self, "props-pub")
        pub.connect()
        props = publish_props(
            PayloadFormatIndicator=1,
            ContentType="application/json",
            ResponseTopic=f"{base}/reply",
            CorrelationData=b"\x00corr",
            MessageExpiryInterval=60,
        )
        props.UserProperty = [("z", "1"), ("a", "2"), ("z", "3")]
        wait_published(pub.client.publish(f"{base}/t", b"{}", qos=1, properties=props), "publish")
        msg = sub.next_message("message with properties")
        got = msg.properties
        expect(msg.payload == b"{}", f"payload {msg.payload!r}")
        expect(got.PayloadFormatIndicator == 1, f"PayloadFormatIndicator {got}")
        expect(got.ContentType == "application/json", f"ContentType {got}")
        expect(got.ResponseTopic == f"{base}/reply", f"ResponseTopic {got}")
        expect(got.CorrelationData == b"\x00corr", f"CorrelationData {got}")
        expect(got.UserProperty == [("z", "1"), ("a", "2"), ("z", "3")], f"UserProperty {got}")
        expect(59 <= got.MessageExpiryInterval <= 60, f"MessageExpiryInterval {got}")

    def check_request_response(self):
        """Response Information when requested; a responder answers on the Response Topic
        with the Correlation Data, and the requester matches it."""
        requester = v5_peer(self, "requester")
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.RequestResponseInformation = 1
        infos = []
        requester.client.on_connect = lambda c, u, f, rc, p: (
            infos.append(getattr(p, "ResponseInformation", None)),
            requester.connacks.put((f, rc)),
        )
        requester.connect(properties=connect_props)
        expect(infos and infos[0], f"no Response Information in CONNACK: {infos}")
        reply_topic = f"{infos[0]}/answers"
        requester.subscribe(reply_topic, 1)
        service = unique("svc")
        responder = v5_peer(self, "responder")
        responder.connect()
        responder.subscribe(f"{service}/req", 1)
        props = publish_props(ResponseTopic=reply_topic, CorrelationData=b"id-42")
        wait_published(
            requester.client.publish(f"{service}/req", b"ping", qos=1, properties=props), "request"
        )
        req = responder.next_message("request")
        answer = publish_props(CorrelationData=req.properties.CorrelationData)
        wait_published(
            responder.client.publish(
                req.properties.ResponseTopic, b"pong", qos=1, properties=answer
            ),
            "response",
        )
        resp = requester.next_message("response")
        expect(resp.payload == b"pong", f"response payload {resp.payload!r}")
        expect(resp.properties.CorrelationData == b"id-42", f"correlation {resp.properties}")

    def check_shared_subscription(self):
        """Two members of one share group get half the messages each."""
        base = unique("share")
        members = []
        for i in range(2):
            m = v5_peer(self, f"member-{i}")
            m.connect()
            m.subscribe(f"$share/grp/{base}/jobs", 1)
            members.append(m)
        pub = v5_peer(self, "share-pub")
        pub.connect()
        for i in range(10):
            wait_published(pub.client.publish(f"{base}/jobs", f"{i}".encode(), qos=1), f"job {i}")
        for m in members:
            got = [m.next_message("job").payload for _ in range(5)]
            expect(len(got) == 5, f"{m.name}: {got}")
            m.no_message()

    def check_topic_alias(self):
        """paho publishes with a Topic Alias, then with only the alias; the subscriber gets
        both on the full topic."""
        base = unique("alias")
        sub = v5_peer(self, "alias-sub")
        sub.connect()
        sub.subscribe(f"{base}/t", 0)
        pub = v5_peer(self, "alias-pub")
        pub.connect()
        first = publish_props(TopicAlias=1)
        pub.client.publish(f"{base}/t", b"1", qos=0, properties=first)
        pub.client.publish("", b"2", qos=0, properties=publish_props(TopicAlias=1))
        for want in (b"1", b"2"):
            msg = sub.next_message("aliased message")
            expect((msg.topic, msg.payload) == (f"{base}/t", want), f"{msg.topic} {msg.payload}")

    def check_subscription_options_and_ids(self):
        """No Local and a Subscription Identifier."""
        base = unique("opts")
        me = v5_peer(self, "opts-me")
        me.connect()
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = 42
        options = SubscribeOptions(qos=1, noLocal=True)
        me.client.subscribe(f"{base}/t", options=options, properties=props)
        take(me.subacks, "SUBACK")
        wait_published(me.client.publish(f"{base}/t", b"mine", qos=1), "own publish")
        other = v5_peer(self, "opts-other")
        other.connect()
        wait_published(other.client.publish(f"{base}/t", b"theirs", qos=1), "other publish")
        msg = me.next_message("message from the other client")
        expect(msg.payload == b"theirs", f"No Local: got {msg.payload!r} first")
        expect(msg.properties.SubscriptionIdentifier == [42], f"ids {msg.properties}")


CHECKS = [
    "properties_forwarded",
    "request_response",
    "shared_subscription",
    "topic_alias",
    "subscription_options_and_ids",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--check", action="append", choices=CHECKS)
    args = parser.parse_args()
    suite = Suite(args.host, args.port)
    passed = failed = 0
    for name in args.check or CHECKS:
        start = time.monotonic()
        try:
            getattr(suite, f"check_{name}")()
            print(f"PASS {name} ({time.monotonic() - start:.2f} s)", flush=True)
            passed += 1
        except CheckFailed as e:
            print(f"FAIL {name}: {e}", flush=True)
            failed += 1
        except Exception as e:  # noqa: BLE001 - a crash is a failed check
            detail = traceback.format_exc().strip().replace("\n", " | ")
            print(f"FAIL {name}: {type(e).__name__}: {e} [{detail}]", flush=True)
            failed += 1
        finally:
            suite.cleanup()
    print(f"paho5: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
