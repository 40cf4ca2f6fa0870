#!/usr/bin/env python3
"""Interoperability checks of the built-in MQTT broker with Eclipse paho-mqtt 2.x.

Usage: paho_suite.py --host 127.0.0.1 --port 1883 [--check NAME ...] [--list]

Runs named checks one after the other, each bounded by timeouts, and prints one line per
check (`PASS name` or `FAIL name: why`), then exactly `paho: N passed, M failed`. Exits 1
when a check failed or paho-mqtt 2.x is missing (never skips), 0 otherwise.

The broker under test must publish `$SYS` statistics (the `sys_dollar_topics` check waits
for them) and accept anonymous clients. Run by tests/interop_clients.rs.
"""

import argparse
import queue
import socket
import struct
import sys
import time
import traceback
import uuid

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as import_error:
    print(
        f"FAIL import: paho-mqtt 2.x is not importable by {sys.executable}: {import_error} "
        "(run scripts/test.sh, or set TEST_PYTHON_FOR_BRIDGE to a Python with "
        "`pip install -r tests/requirements.txt`)"
    )
    print("paho: 0 passed, 1 failed")
    sys.exit(1)

# Time any single expectation may take.
WAIT = 5.0
# How long "nothing arrives" is watched.
QUIET = 0.7


class CheckFailed(Exception):
    """A check's expectation did not hold."""


def expect(cond, why):
    if not cond:
        raise CheckFailed(why)


def unique(prefix):
    """A topic prefix or client id no other check (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Peer:
    """A paho client on its own network thread; callbacks feed queues."""

    def __init__(self, host, port, client_id, clean=True, protocol=mqtt.MQTTv311, name=None):
        self.host, self.port, self.client_id = host, port, client_id
        self.name = f"{name or client_id} (client id {client_id!r}, clean={clean})"
        self.protocol = protocol
        kwargs = {"client_id": client_id, "protocol": protocol, "reconnect_on_failure": False}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        self.messages = queue.Queue()
        self.connacks = queue.Queue()
        self.subacks = queue.Queue()
        self.unsubacks = queue.Queue()
        self.disconnects = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put((mid, codes))
        self.client.on_unsubscribe = lambda c, u, mid, codes, props: self.unsubacks.put(mid)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.running = False

    def connect(self, expect_session_present=None, properties=None):
        """Connects and waits for a successful CONNACK; returns (flags, reason code)."""
        kwargs = {"keepalive": 30}
        if self.protocol == mqtt.MQTTv5:
            kwargs["clean_start"] = True
            kwargs["properties"] = properties
        try:
            self.client.connect(self.host, self.port, **kwargs)
        except OSError as e:
            raise CheckFailed(f"{self.client_id}: TCP connect to {self.host}:{self.port}: {e}")
        self.client.loop_start()
        self.running = True
        flags, rc = take(self.connacks, f"CONNACK for {self.client_id}")
        expect(not rc.is_failure, f"{self.name}: CONNECT refused: {rc} ({rc.value})")
        if expect_session_present is not None:
            expect(
                flags.session_present == expect_session_present,
                f"{self.name}: session_present={flags.session_present}, "
                f"expected {expect_session_present}",
            )
        return flags, rc

    def subscribe(self, topic, qos):
        result, mid = self.client.subscribe(topic, qos)
        expect(result == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topic}: {result}")
        got_mid, codes = take(self.subacks, f"SUBACK for {topic}")
        expect(got_mid == mid, f"SUBACK mid {got_mid}, expected {mid}")
        expect(len(codes) == 1, f"SUBACK with {len(codes)} codes for one filter")
        expect(codes[0].value == qos, f"SUBACK for {topic} granted {codes[0].value}, asked {qos}")

    def unsubscribe(self, topic):
        result, mid = self.client.unsubscribe(topic)
        expect(result == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe {topic}: {result}")
        got = take(self.unsubacks, f"UNSUBACK for {topic}")
        expect(got == mid, f"UNSUBACK mid {got}, expected {mid}")

    def publish(self, topic, payload, qos=0, retain=False):
        """Publishes; for QoS 1/2 waits until the broker completed the exchange."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        expect(info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish {topic}: rc {info.rc}")
        if qos > 0:
            info.wait_for_publish(WAIT)
            what = "PUBACK" if qos == 1 else "PUBREC/PUBCOMP"
            expect(info.is_published(), f"no {what} for QoS {qos} publish on {topic}")

    def next_message(self, what):
        return take(self.messages, what)

    def no_message(self, quiet=QUIET):
        try:
            msg = self.messages.get(timeout=quiet)
        except queue.Empty:
            return
        raise CheckFailed(
            f"{self.name}: unexpected message on {msg.topic!r}: {msg.payload!r} "
            f"(qos {msg.qos}, retain {msg.retain})"
        )

    def disconnect(self):
        """Clean DISCONNECT, waits until paho closed the connection."""
        if not self.running:
            return
        self.client.disconnect()
        take(self.disconnects, f"disconnect of {self.client_id}")
        self.client.loop_stop()
        self.running = False

    def drop_connection(self, reset=False):
        """Ends the TCP connection without DISCONNECT: the network thread is stopped first (so
        paho neither reconnects nor sends anything), then the socket is shut down (FIN) or,
        with `reset`, closed with SO_LINGER 0 (RST)."""
        self.client.loop_stop()
        self.running = False
        sock = self.client.socket()
        expect(sock is not None, f"{self.client_id}: no socket to drop")
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self):
        """Best-effort cleanup after a check, whatever state the client is in."""
        try:
            if self.running:
                self.client.disconnect()
                self.client.loop_stop()
                self.running = False
        except Exception:  # noqa: BLE001 - cleanup must not hide the check's own result
            pass


def take(q, what, timeout=WAIT):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise CheckFailed(f"no {what} within {timeout} s") from None


def expect_message(msg, topic, payload, qos, retain):
    got = (msg.topic, msg.payload, msg.qos, bool(msg.retain))
    want = (topic, payload, qos, retain)
    expect(got == want, f"got (topic, payload, qos, retain) = {got}, expected {want}")


class Suite:
    def __init__(self, host, port):
        self.host, self.port = host, port
        self.peers = []

    def peer(self, name, clean=True, protocol=mqtt.MQTTv311, client_id=None):
        p = Peer(self.host, self.port, client_id or unique(name), clean=clean, protocol=protocol,
                 name=name)
        self.peers.append(p)
        return p

    def cleanup(self):
        for p in self.peers:
            p.close()
        self.peers = []

    # ---- checks ---------------------------------------------------------------------------

    def check_qos_round_trip(self):
        """QoS 0, 1, 2: payload (binary, empty too), topic and QoS arrive unchanged."""
        base = unique("rt")
        sub = self.peer("rt-sub")
        sub.connect()
        pub = self.peer("rt-pub")
        pub.connect()
        for qos in (0, 1, 2):
            sub.subscribe(f"{base}/{qos}", qos)
        for qos in (0, 1, 2):
            topic = f"{base}/{qos}"
            for payload in (f"qos {qos} \u00e9".encode(), bytes(range(256)), b""):
                pub.publish(topic, payload, qos=qos)
                expect_message(sub.next_message(f"QoS {qos} message"), topic, payload, qos, False)
        sub.no_message()

    def check_qos_downgrade(self):
        """Delivered at the lower of the publish and subscription QoS, never upgraded."""
        base = unique("dg")
        sub = self.peer("dg-sub")
        sub.connect()
        pub = self.peer("dg-pub")
        pub.connect()
        for sub_qos in (0, 1, 2):
            sub.subscribe(f"{base}/{sub_qos}", sub_qos)
        for sub_qos in (0, 1, 2):
            for pub_qos in (0, 1, 2):
                topic = f"{base}/{sub_qos}"
                payload = f"pub {pub_qos} sub {sub_qos}".encode()
                pub.publish(topic, payload, qos=pub_qos)
                want = min(pub_qos, sub_qos)
                expect_message(sub.next_message(payload.decode()), topic, payload, want, False)
        sub.no_message()

    def check_retained(self):
        """Retained message: delivered to a later subscriber with retain=1, replaced, and
        deleted by an empty retained payload; live subscribers get retain=0."""
        base = unique("ret")
        topic = f"{base}/a"
        pub = self.peer("ret-pub")
        pub.connect()
        pub.publish(topic, b"one", qos=1, retain=True)
        first = self.peer("ret-first")
        first.connect()
        first.subscribe(f"{base}/#", 1)
        expect_message(first.next_message("retained 'one'"), topic, b"one", 1, True)
        first.no_message()

        pub.publish(topic, b"two", qos=1, retain=True)
        # An established subscription gets it as a normal message [MQTT-3.3.1-9].
        expect_message(first.next_message("live 'two'"), topic, b"two", 1, False)
        second = self.peer("ret-second")
        second.connect()
        second.subscribe(f"{base}/+", 2)
        expect_message(second.next_message("retained 'two'"), topic, b"two", 1, True)
        second.no_message()  # 'one' was replaced, not kept besides

        # A retained QoS 2 message is delivered at the subscription's QoS 0.
        pub.publish(topic, b"three", qos=2, retain=True)
        expect_message(first.next_message("live 'three'"), topic, b"three", 1, False)
        expect_message(second.next_message("live 'three'"), topic, b"three", 2, False)
        zero = self.peer("ret-qos0")
        zero.connect()
        zero.subscribe(topic, 0)
        expect_message(zero.next_message("retained 'three'"), topic, b"three", 0, True)

        # Empty retained payload: forwarded as normal [MQTT-3.3.1-10], then nothing retained.
        pub.publish(topic, b"", qos=1, retain=True)
        expect_message(first.next_message("the deleting message"), topic, b"", 1, False)
        third = self.peer("ret-third")
        third.connect()
        third.subscribe(f"{base}/#", 1)
        third.no_message(1.0)

    def _will_after_drop(self, reset):
        base = unique("will")
        watcher = self.peer("will-watch")
        watcher.connect()
        watcher.subscribe(f"{base}/#", 1)
        dying = self.peer("will-dying")
        dying.client.will_set(f"{base}/status", b"gone", qos=1, retain=False)
        dying.connect()
        dying.publish(f"{base}/alive", b"yes", qos=1)
        expect_message(watcher.next_message("the client's own message"), f"{base}/alive", b"yes",
                       1, False)
        dying.drop_connection(reset=reset)
        expect_message(watcher.next_message("the will after the socket was closed"),
                       f"{base}/status", b"gone", 1, False)
        watcher.no_message()

    def check_will_on_socket_close(self):
        """Will published when the client's TCP connection ends (FIN) without DISCONNECT."""
        self._will_after_drop(reset=False)

    def check_will_on_connection_reset(self):
        """Will published when the client's TCP connection is reset (RST)."""
        self._will_after_drop(reset=True)

    def check_will_retained(self):
        """A will with the retain flag is stored as a retained message."""
        base = unique("willr")
        topic = f"{base}/status"
        watcher = self.peer("willr-watch")
        watcher.connect()
        watcher.subscribe(topic, 1)
        dying = self.peer("willr-dying")
        dying.client.will_set(topic, b"offline", qos=1, retain=True)
        dying.connect()
        dying.drop_connection()
        expect_message(watcher.next_message("the will"), topic, b"offline", 1, False)
        later = self.peer("willr-later")
        later.connect()
        later.subscribe(topic, 1)
        expect_message(later.next_message("the retained will"), topic, b"offline", 1, True)
        watcher.publish(topic, b"", qos=1, retain=True)

    def check_no_will_after_clean_disconnect(self):
        """No will after DISCONNECT [MQTT-3.1.2-10]."""
        base = unique("nowill")
        watcher = self.peer("nowill-watch")
        watcher.connect()
        watcher.subscribe(f"{base}/#", 1)
        leaving = self.peer("nowill-leaving")
        leaving.client.will_set(f"{base}/status", b"gone", qos=1)
        leaving.connect()
        leaving.disconnect()
        watcher.no_message(1.0)
        # A marker sent afterwards is the first and only thing the watcher sees.
        marker = self.peer("nowill-marker")
        marker.connect()
        marker.publish(f"{base}/marker", b"m", qos=1)
        expect_message(watcher.next_message("the marker"), f"{base}/marker", b"m", 1, False)
        watcher.no_message()

    def check_persistent_session(self):
        """clean_session=False: subscriptions survive a disconnect and QoS 1/2 messages
        published meanwhile arrive on reconnect with session_present=1; clean_session=True
        then ends the session."""
        base = unique("ps")
        client_id = unique("ps-client")
        first = self.peer("ps", clean=False, client_id=client_id)
        first.connect(expect_session_present=False)
        first.subscribe(f"{base}/#", 2)
        first.disconnect()

        pub = self.peer("ps-pub")
        pub.connect()
        sent = [(f"{base}/{i}", f"offline {i}".encode(), 1 + i % 2) for i in range(5)]
        for topic, payload, qos in sent:
            pub.publish(topic, payload, qos=qos)

        again = self.peer("ps-again", clean=False, client_id=client_id)
        again.connect(expect_session_present=True)
        got = []
        for i in range(len(sent)):
            msg = again.next_message(f"queued message {i + 1} of {len(sent)}")
            got.append((msg.topic, msg.payload, msg.qos))
            expect(not msg.retain, f"queued message {msg.topic} has retain=1")
        expect(sorted(got) == sorted(sent), f"queued messages {got}, expected {sent}")
        # Order is kept per QoS level [MQTT-4.6.0-6] (brokers may interleave the levels).
        for qos in (1, 2):
            got_q = [m for m in got if m[2] == qos]
            sent_q = [m for m in sent if m[2] == qos]
            expect(got_q == sent_q, f"QoS {qos} messages out of order: {got_q}")
        again.no_message()
        # The subscription is still in place for new messages.
        pub.publish(f"{base}/live", b"live", qos=1)
        expect_message(again.next_message("live message"), f"{base}/live", b"live", 1, False)
        again.disconnect()

        # A clean session discards the stored one: no session_present, no subscription.
        clean = self.peer("ps-clean", clean=True, client_id=client_id)
        clean.connect(expect_session_present=False)
        pub.publish(f"{base}/after", b"after", qos=1)
        clean.no_message()
        clean.disconnect()
        resumed = self.peer("ps-resumed", clean=False, client_id=client_id)
        resumed.connect(expect_session_present=False)
        resumed.no_message()

    def check_session_takeover(self):
        """A second connection with a connected client's id takes over [MQTT-3.1.4-2]: the
        first is disconnected; a persistent session continues (session_present=1, its
        subscriptions kept), a clean one ends with its connection [MQTT-3.1.2-6]."""
        base = unique("to")
        pub = self.peer("to-pub")
        pub.connect()
        for clean in (False, True):
            client_id = unique("to-client")
            topic = f"{base}/{'clean' if clean else 'persistent'}"
            first = self.peer("to-first", clean=clean, client_id=client_id)
            first.connect(expect_session_present=False)
            first.subscribe(topic, 1)
            second = self.peer("to-second", clean=False, client_id=client_id)
            second.connect(expect_session_present=not clean)
            take(first.disconnects, "close of the taken-over connection")
            pub.publish(topic, b"after takeover", qos=1)
            if clean:
                second.no_message()  # the clean session's subscription is gone with it
            else:
                expect_message(second.next_message("message for the kept subscription"),
                               topic, b"after takeover", 1, False)
            first.no_message(0.1)
            second.disconnect()

    def check_wildcards(self):
        """'+' matches one level (an empty one too), '#' any number, its parent included."""
        base = unique("wc")
        plus = self.peer("wc-plus")
        plus.connect()
        plus.subscribe(f"{base}/+/player1", 1)
        hash_ = self.peer("wc-hash")
        hash_.connect()
        hash_.subscribe(f"{base}/#", 1)
        mixed = self.peer("wc-mixed")
        mixed.connect()
        mixed.subscribe("+/tennis/#", 0)
        pub = self.peer("wc-pub")
        pub.connect()
        topics = [
            f"{base}/tennis/player1",
            f"{base}/tennis/player2",
            f"{base}/tennis/player1/ranking",
            f"{base}",
            f"{base}//player1",
        ]
        for t in topics:
            pub.publish(t, t.encode(), qos=1)
        want = {
            "plus": [f"{base}/tennis/player1", f"{base}//player1"],
            "hash": topics,
            "mixed": topics[:3],
        }
        for name, peer in (("plus", plus), ("hash", hash_), ("mixed", mixed)):
            got = [peer.next_message(f"{name}: {t}").topic for t in want[name]]
            expect(got == want[name], f"'{name}' subscriber got {got}, expected {want[name]}")
            peer.no_message(0.3)

    def check_sys_dollar_topics(self):
        """'$SYS/#' receives the statistics; '#' and '+/...' never match '$' topics
        [MQTT-4.7.2-1]."""
        sys_sub = self.peer("sys")
        sys_sub.connect()
        sys_sub.subscribe("$SYS/#", 0)
        every = self.peer("sys-every")
        every.connect()
        every.subscribe("#", 0)
        plus = self.peer("sys-plus")
        plus.connect()
        plus.subscribe("+/broker/#", 0)
        # Watch long enough for several statistics periods (the test broker uses < 1 s).
        sys_seen = 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            for name, peer in (("$SYS/#", sys_sub), ("#", every), ("+/broker/#", plus)):
                try:
                    got = peer.messages.get_nowait()
                except queue.Empty:
                    continue
                if peer is sys_sub:
                    expect(got.topic.startswith("$SYS/"), f"'$SYS/#' matched {got.topic!r}")
                    sys_seen += 1
                else:
                    expect(not got.topic.startswith("$"),
                           f"'{name}' matched {got.topic!r} [MQTT-4.7.2-1]")
            time.sleep(0.02)
        expect(sys_seen > 0, "no $SYS message in 2 s (does the broker publish statistics?)")

    def check_unsubscribe(self):
        """After UNSUBACK nothing more arrives for that filter; other filters keep working;
        unsubscribing an unknown filter is acknowledged too."""
        base = unique("un")
        sub = self.peer("un-sub")
        sub.connect()
        sub.subscribe(f"{base}/a", 1)
        sub.subscribe(f"{base}/b", 1)
        pub = self.peer("un-pub")
        pub.connect()
        pub.publish(f"{base}/a", b"1", qos=1)
        expect_message(sub.next_message("a before"), f"{base}/a", b"1", 1, False)
        sub.unsubscribe(f"{base}/a")
        sub.unsubscribe(f"{base}/never-subscribed")
        pub.publish(f"{base}/a", b"2", qos=1)
        pub.publish(f"{base}/b", b"3", qos=1)
        expect_message(sub.next_message("b after"), f"{base}/b", b"3", 1, False)
        sub.no_message()

    def check_mqtt5_connect_and_qos1(self):
        """MQTT 5 smoke test: CONNACK reason 0 and a QoS 1 round trip."""
        base = unique("v5")
        sub = self.peer("v5-sub", protocol=mqtt.MQTTv5)
        _, rc = sub.connect()
        expect(rc.value == 0, f"CONNACK reason {rc.value} ({rc})")
        sub.subscribe(f"{base}/t", 1)
        pub = self.peer("v5-pub", protocol=mqtt.MQTTv5)
        pub.connect()
        pub.publish(f"{base}/t", b"five", qos=1)
        expect_message(sub.next_message("v5 QoS 1 message"), f"{base}/t", b"five", 1, False)
        sub.disconnect()
        pub.disconnect()


# Checks run by default, in order. MQTT 5 is opt-in (`--check mqtt5_connect_and_qos1`).
DEFAULT_CHECKS = [
    "qos_round_trip",
    "qos_downgrade",
    "retained",
    "will_on_socket_close",
    "will_on_connection_reset",
    "will_retained",
    "no_will_after_clean_disconnect",
    "persistent_session",
    "session_takeover",
    "wildcards",
    "sys_dollar_topics",
    "unsubscribe",
]
ALL_CHECKS = DEFAULT_CHECKS + ["mqtt5_connect_and_qos1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--check", action="append", choices=ALL_CHECKS,
                        help="run only this check (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the default checks")
    args = parser.parse_args()
    if args.list:
        print("\n".join(DEFAULT_CHECKS))
        return 0

    version = getattr(paho.mqtt, "__version__", "0")
    passed = failed = 0
    if int(version.split(".")[0]) < 2:
        print(f"FAIL version: paho-mqtt {version} found, 2.x needed ({sys.executable})")
        print("paho: 0 passed, 1 failed")
        return 1

    suite = Suite(args.host, args.port)
    for name in args.check or DEFAULT_CHECKS:
        start = time.monotonic()
        try:
            getattr(suite, f"check_{name}")()
            print(f"PASS {name} ({time.monotonic() - start:.2f} s)", flush=True)
            passed += 1
        except CheckFailed as e:
            print(f"FAIL {name}: {e}", flush=True)
            failed += 1
        except Exception as e:  # noqa: BLE001 - a crash is a failed check, reported as such
            detail = traceback.format_exc().strip().replace("\n", " | ")
            print(f"FAIL {name}: {type(e).__name__}: {e} [{detail}]", flush=True)
            failed += 1
        finally:
            suite.cleanup()
    print(f"paho: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
