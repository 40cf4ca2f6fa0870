#!/usr/bin/env python3
"""A real XMPP client (slixmpp) driven by the Rust tests.

Usage: xmpp_client.py --port P --jid alice@localhost --password alicepw [--timeout S]

Commands come as JSON lines on stdin, events go out as JSON lines on stdout (flushed):

  {"cmd": "message", "to": J, "body": B, "id": I, "type": "chat"}   send a message
  {"cmd": "raw", "xml": "<message .../>"}                             send raw XML as is
  {"cmd": "disco_info", "to": J, "tag": T}                            -> disco_info | iq_error
  {"cmd": "disco_items", "to": J, "tag": T}                           -> disco_items | iq_error
  {"cmd": "ping", "to": J, "tag": T}                                  -> pong | iq_error
  {"cmd": "presence", "to": J, "type": T, "show": S, "status": X}    send presence (all optional;
                                                                      no "to": broadcast)
  {"cmd": "quit"}

  {"event": "ready"}                        logged in, presence sent
  {"event": "message", "from", "to", "id", "type", "body"}
  {"event": "error", "stanza": "message"|"presence", "from", "id", "type", "condition"}
  {"event": "disco_info", "tag", "identities": [[category, type, name]], "features": [...]}
  {"event": "disco_items", "tag", "items": [...]}
  {"event": "presence", "from", "type", "show", "status"}   every presence received
  {"event": "pong", "tag"}
  {"event": "iq_error", "tag", "condition"}
  {"event": "failed", "reason"}             could not log in
  {"event": "done"}

The client exits after --timeout seconds in any case, and at the end of stdin.
"""

import argparse
import asyncio
import json
import sys
import threading

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(
            jid,
            password,
            plugin_config={"feature_mechanisms": {"unencrypted_scram": True}},
        )
        # Loopback test server without a trusted certificate: stay on plain TCP (SCRAM auth).
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message_error)
        self.add_event_handler("presence_error", self.on_presence_error)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("failed_auth", lambda _: emit(event="failed", reason="auth"))
        self.ready = asyncio.Event()

    async def on_start(self, _event):
        self.send_presence()
        emit(event="ready")
        self.ready.set()

    def on_message_error(self, msg):
        emit(
            event="error",
            stanza="message",
            **{"from": str(msg["from"]), "id": msg["id"]},
            type=msg["error"]["type"],
            condition=msg["error"]["condition"],
        )

    def on_message(self, msg):
        if msg["type"] == "error":
            return  # reported by on_message_error
        emit(
            event="message",
            **{"from": str(msg["from"]), "to": str(msg["to"])},
            id=msg["id"],
            type=msg["type"],
            body=msg["body"],
        )

    def on_presence(self, pres):
        emit(
            event="presence",
            **{"from": str(pres["from"])},
            type=pres["type"],
            show=pres["show"],
            status=pres["status"],
        )

    def on_presence_error(self, pres):
        emit(
            event="error",
            stanza="presence",
            **{"from": str(pres["from"]), "id": pres["id"]},
            type=pres["error"]["type"],
            condition=pres["error"]["condition"],
        )

    async def run_command(self, cmd):
        kind = cmd.get("cmd")
        tag = cmd.get("tag")
        if kind == "message":
            msg = self.make_message(
                mto=cmd["to"], mbody=cmd.get("body", ""), mtype=cmd.get("type", "chat")
            )
            if "id" in cmd:
                msg["id"] = cmd["id"]
            msg.send()
        elif kind == "presence":
            self.send_presence(
                pto=cmd.get("to"),
                ptype=cmd.get("type"),
                pshow=cmd.get("show"),
                pstatus=cmd.get("status"),
            )
        elif kind == "raw":
            self.send_raw(cmd["xml"])
        elif kind in ("disco_info", "disco_items", "ping"):
            try:
                if kind == "disco_info":
                    info = await self.plugin["xep_0030"].get_info(jid=cmd["to"], timeout=10)
                    q = info["disco_info"]
                    emit(
                        event="disco_info",
                        tag=tag,
                        identities=[[c, t, n] for (c, t, _lang, n) in q["identities"]],
                        features=sorted(q["features"]),
                    )
                elif kind == "disco_items":
                    items = await self.plugin["xep_0030"].get_items(jid=cmd["to"], timeout=10)
                    emit(
                        event="disco_items",
                        tag=tag,
                        items=[str(i[0]) for i in items["disco_items"]["items"]],
                    )
                else:
                    await self.plugin["xep_0199"].send_ping(cmd["to"], timeout=10)
                    emit(event="pong", tag=tag)
            except IqError as e:
                emit(event="iq_error", tag=tag, condition=e.iq["error"]["condition"])
            except IqTimeout:
                emit(event="iq_error", tag=tag, condition="timeout")
        elif kind == "quit":
            return False
        else:
            emit(event="unknown_command", cmd=cmd)
        return True


def stdin_reader(loop, queue):
    for line in sys.stdin:
        line = line.strip()
        if line:
            loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--timeout", type=float, default=50.0)
    args = ap.parse_args()

    loop = asyncio.get_running_loop()
    client = Client(args.jid, args.password)
    client.connect(args.host, args.port)
    commands = asyncio.Queue()
    threading.Thread(target=stdin_reader, args=(loop, commands), daemon=True).start()

    async def drive():
        await client.ready.wait()
        while True:
            line = await commands.get()
            if line is None:
                break
            try:
                cmd = json.loads(line)
            except ValueError:
                emit(event="unknown_command", cmd=line)
                continue
            if not await client.run_command(cmd):
                break

    try:
        await asyncio.wait_for(drive(), timeout=args.timeout)
    except asyncio.TimeoutError:
        emit(event="timeout")
    # Let the last stanzas leave before closing.
    await asyncio.sleep(0.2)
    await client.disconnect(wait=1.0)
    emit(event="done")


if __name__ == "__main__":
    asyncio.run(main())
