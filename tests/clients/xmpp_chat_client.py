#!/usr/bin/env python3
"""A slixmpp client with the chat-semantics plugins (XEP-0184 receipts, XEP-0085 chat states,
XEP-0308 corrections, XEP-0359 ids, XEP-0203 delay), driven by tests/chat_semantics.rs.

Usage: xmpp_chat_client.py --port P --jid alice@localhost --password alicepw [--no-auto-ack]

Same protocol as xmpp_client.py (JSON lines in, JSON lines out), plus:

  {"cmd": "chat", "to": J, "id": I, "body": B, "receipt": true, "state": "composing",
   "replaces": ID, "origin_id": O, "thread": T, "subject": S, "delay": "2026-01-01T10:00:00Z"}
      every field but "to" is optional; a chat state alone has no body

  {"event": "message", "from", "to", "id", "type", "body", "state", "replaces", "receipt_request",
   "received", "origin_id", "thread", "subject", "delay"}
      one per message stanza with a body, receipt or chat state (extension values read from
      the XML)

With auto-ack on (the default) the xep_0184 plugin answers every receipt request itself.
"""

import argparse
import asyncio
import json
import threading

from xmpp_client import Client, emit, stdin_reader

RECEIPTS = "urn:xmpp:receipts"
STATES = "http://jabber.org/protocol/chatstates"
SID = "urn:xmpp:sid:0"
CORRECT = "urn:xmpp:message-correct:0"
DELAY = "urn:xmpp:delay"


def child(xml, ns, name, attr):
    e = xml.find("{%s}%s" % (ns, name))
    return None if e is None else e.get(attr)


class ChatClient(Client):
    def __init__(self, jid, password, auto_ack):
        super().__init__(jid, password)
        self.register_plugin("xep_0184", {"auto_ack": auto_ack, "auto_request": False})
        self.register_plugin("xep_0085")
        self.register_plugin("xep_0308")
        self.register_plugin("xep_0359")
        self.register_plugin("xep_0203")
        # slixmpp's `message` event fires only for messages with a body; the plugins' events
        # cover the others (a receipt, a chat state alone).
        self.add_event_handler("receipt_received", self.on_bodiless)
        self.add_event_handler("chatstate", self.on_bodiless)

    def on_bodiless(self, msg):
        if not msg["body"]:
            self.on_message(msg)

    def on_message(self, msg):
        if msg["type"] == "error":
            return
        xml = msg.xml
        state = None
        for s in ("active", "composing", "paused", "inactive", "gone"):
            if xml.find("{%s}%s" % (STATES, s)) is not None:
                state = s
        emit(
            event="message",
            **{"from": str(msg["from"]), "to": str(msg["to"])},
            id=msg["id"],
            type=msg["type"],
            body=msg["body"],
            state=state,
            replaces=child(xml, CORRECT, "replace", "id"),
            receipt_request=xml.find("{%s}request" % RECEIPTS) is not None,
            received=child(xml, RECEIPTS, "received", "id"),
            origin_id=child(xml, SID, "origin-id", "id"),
            thread=msg["thread"] or None,
            subject=msg["subject"] or None,
            delay=child(xml, DELAY, "delay", "stamp"),
        )

    async def run_command(self, cmd):
        if cmd.get("cmd") != "chat":
            return await super().run_command(cmd)
        msg = self.make_message(mto=cmd["to"], mbody=cmd.get("body"), mtype="chat")
        if "id" in cmd:
            msg["id"] = cmd["id"]
        if cmd.get("receipt"):
            msg["request_receipt"] = True
        if cmd.get("state"):
            msg["chat_state"] = cmd["state"]
        if cmd.get("replaces"):
            msg["replace"]["id"] = cmd["replaces"]
        if cmd.get("origin_id"):
            msg["origin_id"]["id"] = cmd["origin_id"]
        if cmd.get("thread"):
            msg["thread"] = cmd["thread"]
        if cmd.get("subject"):
            msg["subject"] = cmd["subject"]
        if cmd.get("delay"):
            msg["delay"]["stamp"] = cmd["delay"]
        msg.send()
        return True


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--jid", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--timeout", type=float, default=50.0)
    ap.add_argument("--no-auto-ack", action="store_true")
    args = ap.parse_args()

    loop = asyncio.get_running_loop()
    client = ChatClient(args.jid, args.password, not args.no_auto_ack)
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
    await asyncio.sleep(0.2)
    await client.disconnect(wait=1.0)
    emit(event="done")


if __name__ == "__main__":
    asyncio.run(main())
