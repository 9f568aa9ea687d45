#!/usr/bin/env python3
"""Follow a wsnotify user's notifications, broadcasts and rooms from Python, resuming.

Prints every delivery once, in order, as one JSON line on stdout; resume outcomes and
connection changes go to stderr. Keeps each stream's position (epoch, offset), resumes
with `since` on every reconnect (and across restarts with --state), and falls back to
long-polling `GET /poll` when WebSocket upgrades keep failing while HTTP works, going
back to the WebSocket when it works again.

    pip install websockets        # 10 or later
    python3 resume_client.py --url http://127.0.0.1:8050 --user alice --room lobby --state alice.json
    WSNOTIFY_TOKEN=<jwt> python3 resume_client.py --url https://notify.example.com --room lobby

The wire contract: docs/PROTOCOL.md; the JavaScript client doing the same: docs/CLIENT.md.
"""
import argparse
import asyncio
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import websockets

HARD = {1002, 1003, 1007, 1008, 1009}  # the client is at fault: never retry in a tight loop
PING_TIMEOUT = 60  # s without any frame (the server sends system.ping every 25 s)


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def encode_since(positions, names):
    # stream~epoch~offset, the stream percent-encoded ("~" too: a user id may contain it)
    return ",".join(
        quote(n, safe="") + "~" + positions[n][0] + "~" + str(positions[n][1]) for n in names if n in positions
    )


class Follower:
    def __init__(self, args):
        self.base = args.url.rstrip("/")
        self.token = args.token or os.environ.get("WSNOTIFY_TOKEN")
        self.user = args.user
        self.rooms = args.room or []
        self.state_file = args.state
        self.fallback_after = args.fallback_after
        self.probe_every = args.probe_every
        self.positions = {}  # stream -> (epoch, offset); "loose" streams take their next message as the start
        self.loose = set()
        self.attempt = 0
        if self.state_file and os.path.exists(self.state_file):
            with open(self.state_file) as f:
                self.positions = {s: (p["epoch"], p["offset"]) for s, p in json.load(f).items()}

    # ---- streams -------------------------------------------------------------------
    def adopt(self, stream):
        # An open server names a user-less client anew on each connection: keep the first
        # name it gave us, so that a reconnect resumes the same inbox.
        if not self.token and not self.user and stream.startswith("user:"):
            self.user = stream[5:]

    def names(self, rooms):
        # the user's stream, broadcast and these rooms, as named in `since`
        user = [s for s in self.positions if s.startswith("user:")] if self.token else (["user:" + self.user] if self.user else [])
        return user[:1] + ["broadcast"] + ["room:" + r for r in rooms]

    def save(self):
        if self.state_file:
            tmp = self.state_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({s: {"epoch": e, "offset": o} for s, (e, o) in self.positions.items()}, f)
            os.replace(tmp, self.state_file)

    def position(self, e, loose=False):
        """stream.position, or a /poll `streams` entry: where live messages continue."""
        s, r = e["stream"], e.get("recovered")
        self.adopt(s)
        if r is False:
            log(f"LOST {s}: {e.get('reason')}: refetch its state (now at {e['epoch']}~{e['offset']})")
            self.positions[s] = (e["epoch"], e["offset"])
            if loose or e.get("reason") == "unavailable":
                self.loose.add(s)
        elif r is True:
            log(f"resumed {s} from {self.positions.get(s)}")
            self.loose.discard(s)
        elif s not in self.positions or s in self.loose:
            self.positions[s] = (e["epoch"], e["offset"])
            self.loose.discard(s)
        self.save()

    def deliver(self, m):
        """True if `m` may be handed on; raise Gap when only a resume can fill the hole."""
        s = m.get("stream")
        if isinstance(s, str) and isinstance(m.get("offset"), int):
            if s.startswith("room:") and s[5:] not in self.rooms:
                return False
            self.adopt(s)
            p = self.positions.get(s)
            if p and s not in self.loose:
                if m["epoch"] == p[0] and m["offset"] <= p[1]:
                    return False  # duplicate
                if m["epoch"] != p[0] or m["offset"] != p[1] + 1:
                    raise Gap(f"{s}: have {p}, got {m['epoch']}~{m['offset']}")
            self.positions[s] = (m["epoch"], m["offset"])
            self.loose.discard(s)
            self.save()
        print(json.dumps(m, ensure_ascii=False), flush=True)
        return True

    # ---- WebSocket ------------------------------------------------------------------
    def query(self, rooms, name_rooms=False, **q):
        """Query string with the since of the user, broadcast and `rooms`; `name_rooms` adds
        rooms=a,b (raw: all their characters are safe). since is encoded once more, whole."""
        since = encode_since(self.positions, self.names(rooms))
        if since:
            q["since"] = since
        if not self.token and self.user:
            q["user"] = self.user
        parts = [k + "=" + quote(str(v), safe="") for k, v in q.items()]
        if name_rooms and rooms:
            parts.append("rooms=" + ",".join(rooms))
        return "?" + "&".join(parts) if parts else ""

    def http(self, path):
        req = urllib.request.Request(self.base + path)
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        return req

    def ws_url(self):
        first = self.rooms[:1]
        path = "/ws/rooms/" + first[0] if first else "/ws/notifications"
        return self.base.replace("http", "ws", 1) + path + self.query(first)

    async def websocket(self):
        """One WebSocket session. Returns (close code, seconds to wait before the next try)."""
        protocols = ["bearer", self.token] if self.token else None
        async with websockets.connect(self.ws_url(), subprotocols=protocols, open_timeout=20) as ws:
            log("connected over websocket")
            opened, leave_at = time.monotonic(), None
            for r in self.rooms[1:]:
                join = {"type": "room.join", "room": r}
                since = encode_since(self.positions, ["room:" + r])
                if since:
                    join["since"] = since
                await ws.send(json.dumps(join))
            while True:
                try:
                    frame = await asyncio.wait_for(ws.recv(), PING_TIMEOUT)
                except asyncio.TimeoutError:
                    log("no frame for", PING_TIMEOUT, "s: reconnecting")
                    return 4000, self.backoff()
                except websockets.ConnectionClosed as e:
                    code = e.rcvd.code if e.rcvd else 1006
                    if time.monotonic() - opened > 10:
                        self.attempt = 0  # stable: back off from the start again
                    if leave_at is not None:  # draining server: its spread, not everyone at once
                        return code, max(0, leave_at - time.monotonic())
                    return code, self.delay_for(code)
                try:
                    m = json.loads(frame)
                except ValueError:
                    continue
                if not isinstance(m, dict):
                    continue
                t = m.get("type")
                if t == "stream.position":
                    self.position(m)
                elif t == "system.shutdown":
                    # leave by ourselves after the server's per-client delay
                    hint = m.get("reconnect_after_ms", 0) / 1000
                    leave_at = time.monotonic() + hint
                    log(f"server draining: moving in {hint:.1f} s")
                    asyncio.get_running_loop().call_later(hint, lambda: asyncio.ensure_future(ws.close()))
                elif t == "system.error":
                    log("error", m.get("code"), m.get("message"))
                elif t in ("chat.delivery", "notification", "broadcast") or "stream" in m:
                    try:
                        self.deliver(m)
                    except Gap as g:
                        log("gap,", g, ": resuming")
                        await ws.close()
                        return 4010, 0

    def backoff(self):
        # full jitter, 0.5 s doubling up to 30 s
        d = random.uniform(0, min(30, 0.5 * 2 ** self.attempt))
        self.attempt += 1
        return d

    def delay_for(self, code):
        if code in HARD:
            return 30 + random.uniform(0, 30)
        if code == 4010:
            return 0
        return self.backoff()

    # ---- long-polling ---------------------------------------------------------------
    def get_poll(self, wait):
        with urllib.request.urlopen(self.http("/poll" + self.query(self.rooms, name_rooms=True, wait=wait)), timeout=wait + 15) as r:
            return json.load(r)

    async def poll_once(self, wait):
        body = await asyncio.to_thread(self.get_poll, wait)
        streams = body.get("streams", [])
        # `streams` hold the positions after this answer's messages: resets first (loosely), the rest after
        for e in streams:
            if e.get("recovered") is False:
                self.position(e, loose=True)
        for m in body.get("messages", []):
            try:
                self.deliver(m)
            except Gap as g:
                log("gap,", g, ": polling again from our position")
                return
        for e in streams:
            if e.get("recovered") is not False:
                self.position({**e, "recovered": None})

    async def poll(self):
        """Long-poll until it is time to probe the WebSocket again."""
        log("connected over poll")
        until = time.monotonic() + random.uniform(0.5, 1.5) * self.probe_every
        await self.poll_once(0)
        while time.monotonic() < until:
            started = time.monotonic()
            await self.poll_once(25)
            if time.monotonic() - started < 1:
                await asyncio.sleep(1)  # an answer at once with nothing in it: do not spin

    def http_status(self):
        try:
            with urllib.request.urlopen(self.http("/poll?wait=0"), timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    # ---- the loop -------------------------------------------------------------------
    async def run(self):
        failures = 0
        while True:
            try:
                code, delay = await self.websocket()
                failures = 0
                log(f"closed with {code}; next try in {delay:.1f} s")
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
                status = await asyncio.to_thread(self.http_status)
                log(f"websocket failed ({type(e).__name__}: {e}); GET /poll answers {status or 'nothing'}")
                if status == 401:
                    sys.exit("refused: 401, give a valid token (--token or WSNOTIFY_TOKEN)")
                failures += 1 if 200 <= status < 300 else 0
                if failures >= self.fallback_after:
                    try:
                        await self.poll()
                        continue  # probe the WebSocket again
                    except (OSError, ValueError) as e:
                        log("poll failed:", repr(e))
                delay = self.backoff() if not 400 <= status < 500 else 30 + random.uniform(0, 30)
            await asyncio.sleep(delay)


class Gap(Exception):
    pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8050", help="base http(s) URL of the server")
    p.add_argument("--user", help="?user= on an open server")
    p.add_argument("--token", help="JWT (default: $WSNOTIFY_TOKEN)")
    p.add_argument("--room", action="append", help="a room to follow (repeatable)")
    p.add_argument("--state", help="file keeping the positions, to resume across restarts")
    p.add_argument("--fallback-after", type=int, default=2, help="failed upgrades before long-polling")
    p.add_argument("--probe-every", type=float, default=30, help="mean seconds between WebSocket tries while polling")
    try:
        asyncio.run(Follower(p.parse_args()).run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
