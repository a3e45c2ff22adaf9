"""A plain ASGI app doing what apps.streams does, for uvicorn workers.

GET /                 -> "ok"
GET /leak?kib=N       -> keeps N KiB forever, answers "ok"
GET /stream?n=N&gap=S -> N server-sent events "data: i", one every S seconds, then "data: end"
GET /pid              -> this worker's pid
GET /gc               -> runs a full garbage collection, answers "ok"
WebSocket /ws         -> each text message "N" keeps N KiB forever and is answered "ok"
"""

import asyncio
import gc
import os
from urllib.parse import parse_qs

LEAKED = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            LEAKED.append(b"\x01" * (int(message.get("text") or 0) * 1024))
            await send({"type": "websocket.send", "text": "ok"})
        return
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    if path == "/stream":
        count, gap = int(query.get("n", ["10"])[0]), float(query.get("gap", ["0.5"])[0])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(count):
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
            await asyncio.sleep(gap)
        await send({"type": "http.response.body", "body": b"data: end\n\n"})
        return
    if path == "/gc":
        gc.collect()
    if path == "/leak":
        LEAKED.append(b"\x01" * (int(query.get("kib", ["100"])[0]) * 1024))
    body = str(os.getpid()).encode() if path == "/pid" else b"ok"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
