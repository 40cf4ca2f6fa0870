#!/usr/bin/env python3
"""One Eclipse paho-mqtt 2.x client run for tests/chat_semantics.rs.

Usage: paho_chat.py --port P --user bob [--v311] [--client-id ID] [--keep-session]
                    [--sub FILTER ...] [--pub TOPIC PAYLOAD] [--response-topic T]
                    [--correlation C] [--prop NAME=VALUE ...] [--count N] [--timeout S]

Connects (MQTT 5 unless --v311; password `<user>pw`), subscribes to every --sub at QoS 1, prints
{"event":"ready"}, publishes --pub at QoS 1 (with the MQTT 5 properties given), then prints
one JSON line per message received ({"event":"message","topic","payload","qos","retain",
"user_properties":[[k,v]],"correlation"}) until --count messages or --timeout seconds, then
{"event":"done"} and disconnects (a --keep-session client keeps its session: MQTT 5 Session
Expiry 300 s, or CleanSession 0 in 3.1.1).
"""

import argparse
import json
import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--client-id", default="")
    ap.add_argument("--v311", action="store_true")
    ap.add_argument("--keep-session", action="store_true")
    ap.add_argument("--sub", action="append", default=[])
    ap.add_argument("--pub", nargs=2, metavar=("TOPIC", "PAYLOAD"))
    ap.add_argument("--response-topic")
    ap.add_argument("--correlation")
    ap.add_argument("--prop", action="append", default=[])
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    v5 = not args.v311
    client_id = args.client_id or f"paho-{args.user}-{time.monotonic_ns()}"
    if v5:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, clean_session=not args.keep_session)
    c.username_pw_set(args.user, args.user + "pw")
    got = queue.Queue()
    connected = queue.Queue()

    def on_connect(_c, _u, _flags, reason, _props):
        connected.put(str(reason))

    def on_message(_c, _u, m):
        props = getattr(m, "properties", None)
        user = getattr(props, "UserProperty", []) if props else []
        corr = getattr(props, "CorrelationData", None) if props else None
        got.put(dict(event="message", topic=m.topic, payload=m.payload.decode("utf-8", "replace"),
                     qos=m.qos, retain=bool(m.retain), user_properties=[list(p) for p in user],
                     correlation=corr.decode() if corr else None))

    c.on_connect = on_connect
    c.on_message = on_message
    if v5:
        cp = Properties(PacketTypes.CONNECT)
        if args.keep_session:
            cp.SessionExpiryInterval = 300
        c.connect(args.host, args.port, keepalive=30, clean_start=not args.keep_session,
                  properties=cp)
    else:
        c.connect(args.host, args.port, keepalive=30)
    c.loop_start()
    reason = connected.get(timeout=5)
    for f in args.sub:
        result, mid = c.subscribe(f, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            emit(event="failed", reason=f"subscribe {f}: {result}")
    time.sleep(0.3)
    emit(event="ready", connack=reason)
    if args.pub:
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            if args.response_topic:
                props.ResponseTopic = args.response_topic
            if args.correlation:
                props.CorrelationData = args.correlation.encode()
            if args.prop:
                props.UserProperty = [tuple(p.split("=", 1)) for p in args.prop]
        info = c.publish(args.pub[0], args.pub[1], qos=1, properties=props)
        info.wait_for_publish(5)
        emit(event="published", ok=info.is_published())
    deadline = time.monotonic() + args.timeout
    n = 0
    while n < args.count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            emit(**got.get(timeout=left))
            n += 1
        except queue.Empty:
            break
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()
    emit(event="done", received=n)


if __name__ == "__main__":
    main()
