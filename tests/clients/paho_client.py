#!/usr/bin/env python3
"""A paho-mqtt 2.x client driven by the Rust tests (presence, group chat).

Usage: paho_client.py --port P --client-id ID [--user U --password W] [--version 5|311]
                      [--keepalive S] [--will-topic T --will-payload X [--will-delay S]]
                      [--session-expiry S]
                      [--timeout S]

Commands come as JSON lines on stdin, events go out as JSON lines on stdout (flushed):

  {"cmd": "publish", "topic": T, "payload": X, "qos": Q, "retain": R}   -> published
  {"cmd": "subscribe", "topic": F, "qos": Q}                           -> subscribed
  {"cmd": "unsubscribe", "topic": F}                                   -> unsubscribed
  {"cmd": "disconnect"}                                                 clean DISCONNECT, exit

  {"event": "connected", "reason": N}
  {"event": "message", "topic", "payload", "qos", "retain"}
  {"event": "published", "mid", "reason"} | {"event": "subscribed", "codes": [...]}
  {"event": "unsubscribed"} | {"event": "disconnected", "reason"} | {"event": "done"}

The process exits after --timeout seconds in any case, and at the end of stdin (without
DISCONNECT: the broker sees the connection drop).
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--version", default="5", choices=["5", "311"])
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--will-topic")
    ap.add_argument("--will-payload", default="")
    ap.add_argument("--will-delay", type=int, default=0)
    ap.add_argument("--session-expiry", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=50.0)
    args = ap.parse_args()

    v5 = args.version == "5"
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol)
    if args.user:
        client.username_pw_set(args.user, args.password)
    if args.will_topic:
        props = None
        if v5 and args.will_delay:
            props = Properties(PacketTypes.WILLMESSAGE)
            props.WillDelayInterval = args.will_delay
        client.will_set(args.will_topic, args.will_payload, qos=1, properties=props)

    def on_connect(_c, _u, _flags, reason, _props):
        emit(event="connected", reason=int(reason.value if hasattr(reason, "value") else reason))

    def on_message(_c, _u, m):
        emit(
            event="message",
            topic=m.topic,
            payload=m.payload.decode("utf-8", "replace"),
            qos=m.qos,
            retain=bool(m.retain),
        )

    def on_subscribe(_c, _u, _mid, codes, _props):
        emit(event="subscribed", codes=[int(c.value) for c in codes])

    def on_unsubscribe(_c, _u, _mid, _codes, _props):
        emit(event="unsubscribed")

    def on_publish(_c, _u, mid, reason, _props):
        emit(event="published", mid=mid, reason=int(reason.value))

    def on_disconnect(_c, _u, _flags, reason, _props):
        emit(event="disconnected", reason=str(reason))

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_unsubscribe = on_unsubscribe
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    if v5:
        props = None
        if args.session_expiry:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = args.session_expiry
        client.connect(
            args.host, args.port, keepalive=args.keepalive, clean_start=True, properties=props
        )
    else:
        client.connect(args.host, args.port, keepalive=args.keepalive)
    client.loop_start()

    done = threading.Event()

    def read_commands():
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                cmd = json.loads(line)
            except ValueError:
                emit(event="unknown_command", cmd=line)
                continue
            kind = cmd.get("cmd")
            if kind == "publish":
                client.publish(
                    cmd["topic"],
                    cmd.get("payload", ""),
                    qos=cmd.get("qos", 1),
                    retain=cmd.get("retain", False),
                )
            elif kind == "subscribe":
                client.subscribe(cmd["topic"], qos=cmd.get("qos", 1))
            elif kind == "unsubscribe":
                client.unsubscribe(cmd["topic"])
            elif kind == "disconnect":
                client.disconnect()
                time.sleep(0.2)
                break
            else:
                emit(event="unknown_command", cmd=cmd)
        done.set()

    threading.Thread(target=read_commands, daemon=True).start()
    done.wait(args.timeout)
    client.loop_stop()
    emit(event="done")


if __name__ == "__main__":
    main()
