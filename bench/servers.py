"""Small servers the benchmark runs beside nginx, each in its own process.

    python bench/servers.py upstream --port P        WebSocket echo + upload sink (plain HTTP)
    python bench/servers.py self --port P --cert C --key K
                                                     aiohttp over TLS answering by itself
    python bench/servers.py pipe --port P --cert C --key K --upstream U
                                                     TLS in, bytes piped to U: no parsing,
                                                     no checks (the floor for a Python proxy)

The WebSocket echo is a bare asyncio protocol rather than aiohttp, so that the direct
measurement is limited by the network path and not by the echo server: whatever
clawgate adds then shows up in full.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import ssl
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BODY_1K = b"x" * 1024
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n or mask == b"\0\0\0\0":
        return payload
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


class UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: ``POST /upload`` counts and drops the body, ``GET /ws``
    upgrades to a WebSocket echo, anything else gets a 1 KB body."""

    def __init__(self) -> None:
        self.buf = b""
        self.ws = False
        self.body_left = 0
        self.body_total = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.body_left:
            take = min(self.body_left, len(data))
            self.body_left -= take
            self.body_total += take
            data = data[take:]
            if not self.body_left:
                self._reply(b'{"received": %d}' % self.body_total, b"application/json")
            if not data:
                return
        self.buf += data
        if self.ws:
            self._frames()
            return
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            _method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("upgrade", "").lower() == "websocket":
                accept = base64.b64encode(
                    hashlib.sha1(headers["sec-websocket-key"].encode() + _WS_GUID).digest()
                )
                self.transport.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                self.ws = True
                self._frames()
                return
            length = int(headers.get("content-length", "0") or 0)
            if headers.get("transfer-encoding", "").lower() == "chunked":
                self._reply(b"chunked uploads are not supported here", b"text/plain", 400)
                self.transport.close()
                return
            if length:
                take = min(length, len(self.buf))
                self.body_total = take
                self.body_left = length - take
                self.buf = self.buf[take:]
                if self.body_left:
                    return
                self._reply(b'{"received": %d}' % self.body_total, b"application/json")
                continue
            if path == "/.well-known/openid-configuration":
                # Enough of an identity provider for clawgate to start and be ready.
                issuer = f"http://{headers.get('host', '')}"
                self._reply(json.dumps({
                    "issuer": issuer, "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token", "jwks_uri": f"{issuer}/jwks",
                }).encode(), b"application/json")
                continue
            self._reply(BODY_1K, b"text/plain")

    def _reply(self, body: bytes, ctype: bytes, status: int = 200) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status, ctype, len(body), body)
        )

    def _frames(self) -> None:
        assert self.transport is not None
        buf = self.buf
        out = []
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = int.from_bytes(buf[2:10], "big")
                pos = 10
            masked = b1 & 0x80
            mask = buf[pos:pos + 4] if masked else b""
            pos += 4 if masked else 0
            if len(buf) < pos + n:
                break
            payload = _unmask(buf[pos:pos + n], mask) if masked else buf[pos:pos + n]
            buf = buf[pos + n:]
            opcode = b0 & 0x0F
            if opcode == 0x8:
                out.append(_frame(0x8, payload[:2]))
                self.transport.write(b"".join(out))
                self.transport.close()
                self.buf = b""
                return
            if opcode == 0x9:
                out.append(_frame(0xA, payload))
            elif opcode in (0x1, 0x2):
                out.append(_frame(opcode, payload))
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


async def run_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def run_self(port: int, cert: str, key: str) -> None:
    """The bar for clawgate: the same aiohttp server answering with the same 1 KB body."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=BODY_1K, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=1024).start()
    await asyncio.Event().wait()


class _PipeUp(asyncio.Protocol):
    def __init__(self, client: _PipeClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _PipeClient(asyncio.Protocol):
    """One upstream connection per client connection; bytes copied both ways."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.up, _ = await loop.create_connection(
            lambda: _PipeUp(self), "127.0.0.1", self.upstream_port)
        for data in self.early:
            self.up.write(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


async def run_pipe(port: int, cert: str, key: str, upstream: int) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: _PipeClient(upstream), "127.0.0.1", port, ssl=ctx,
                             backlog=1024)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("upstream", "self", "pipe"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--upstream", type=int)
    args = parser.parse_args()
    import uvloop

    if args.kind == "upstream":
        uvloop.run(run_upstream(args.port))
    elif args.kind == "pipe":
        uvloop.run(run_pipe(args.port, args.cert, args.key, args.upstream))
    else:
        uvloop.run(run_self(args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
