# Seed 003_0311d01104af4138.txt, lines 93-109 (smoke test steps 2 and 3: websocat), rewritten
# for Python `websockets` (Debian packages no websocat). Same URL with ?token=$TOKEN, same
# Origin header, the same frame sent; every frame received is printed, one per line, as
# websocat prints them. websocat runs until Ctrl+C; this stops once the two frames the seed
# promises have come: the chat.delivery and a periodic system.ping (or fails after 10 s).
# tests/seeds.rs replaces 127.0.0.1:8000 by the server's address.
import asyncio
import json
import os

import websockets

TOKEN = os.environ["TOKEN"]  # TOKEN=... # вставьте токен


async def smoke():
    uri = f"ws://127.0.0.1:8000/ws/test?token={TOKEN}"
    async with websockets.connect(uri, origin="http://localhost:8000") as ws:
        await ws.send('{"type":"chat.message","room":"test","text":"hi"}')
        seen = set()
        while not {"chat.delivery", "system.ping"} <= seen:
            frame = await ws.recv()
            print(frame, flush=True)
            seen.add(json.loads(frame).get("type"))


asyncio.run(asyncio.wait_for(smoke(), timeout=10))
