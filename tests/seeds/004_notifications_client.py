# Seed 004_0dd24b76e3b7976e.txt, line 193 (troubleshooting step 5, "connect to the backend
# directly, bypassing nginx"): new WebSocket('ws://…:8000/api/v1/ws/notifications?token=YOUR_TOKEN')
# in a browser console, as a Python `websockets` client. nginx maps /api/v1/ws/ to wsnotify's
# /ws/ (deploy/nginx.conf), so straight at wsnotify the path is /ws/notifications.
# It prints "connected", then every frame, one per line, until a notification (or fails after 10 s).
# tests/seeds.rs replaces 127.0.0.1:8000 by the server's address.
import asyncio
import json
import os

import websockets

TOKEN = os.environ["TOKEN"]  # YOUR_TOKEN


async def listen():
    uri = f"ws://127.0.0.1:8000/ws/notifications?token={TOKEN}"
    async with websockets.connect(uri) as ws:
        print("connected", flush=True)
        while True:
            frame = await ws.recv()
            print(frame, flush=True)
            if json.loads(frame).get("type") == "notification":
                return


asyncio.run(asyncio.wait_for(listen(), timeout=10))
