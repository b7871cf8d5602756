"""A real upstream for the tests: echoes what it received, streams, and speaks WebSocket."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


@dataclass
class Seen:
    """What the upstream received, so tests can check what clawgate forwarded."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_upstream(seen: Seen) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        record = {
            "method": request.method,
            "path": request.raw_path,
            "headers": {k: v for k, v in request.headers.items()},
            "header_list": list(request.headers.items()),
        }
        seen.requests.append(record)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await websocket(request)
        body = await request.read()
        record["body_len"] = len(body)
        return web.json_response(record)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        ws = web.WebSocketResponse(protocols=protocols[:1], autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                if msg.data == "headers":
                    await ws.send_str(json.dumps(dict(request.headers)))
                elif msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data.split(":")[1]), message=b"bye")
                elif msg.data.startswith("flood:"):
                    # As fast as the relay lets us: each send waits for the socket to drain.
                    frame = b"f" * 65536
                    for _ in range(int(msg.data.split(":")[1])):
                        await ws.send_bytes(frame)
                    await ws.send_str("flood-done")
                else:
                    await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def download(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        chunk = b"x" * 65536
        left = size
        while left > 0:
            n = min(left, len(chunk))
            await resp.write(chunk[:n])
            left -= n
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for data in request.content.iter_any():
            total += len(data)
        return web.json_response({"received": total})

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.3)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    app = web.Application(client_max_size=0)
    app.router.add_get("/download/{size}", download)
    app.router.add_post("/upload", upload)
    app.router.add_get("/sse", sse)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


class Upstream:
    """Runs :func:`build_upstream` on 127.0.0.1 in the current event loop."""

    def __init__(self, port: int = 0) -> None:
        self.seen = Seen()
        self.port = port or free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Upstream:
        self._runner = web.AppRunner(build_upstream(self.seen))
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
