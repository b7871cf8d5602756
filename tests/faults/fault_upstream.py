"""An upstream that misbehaves on purpose, and counts its open connections.

Modes (set ``mode`` at any time; it applies to each new request):

- ``ok``: a small 200 response.
- ``hang``: read the request, never answer.
- ``reset``: send the head and part of the body, then reset the connection (RST).
- ``close_early``: send half a Content-Length body, then close cleanly.
- ``garbage``: answer with bytes that are not HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from tests.support.upstream import free_port


class FaultUpstream:
    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.mode = "ok"
        self.open = 0
        self.accepted = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_open(self, at_most: int, timeout: float = 5.0) -> int:
        """Wait until no more than ``at_most`` connections are open; return the count."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.open > at_most and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return self.open

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                mode = self.mode
                if mode == "ok":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    continue
                if mode == "hang":
                    await reader.read()  # until the peer gives up
                    return
                if mode in ("reset", "close_early"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
                    await writer.drain()
                    await asyncio.sleep(0.1)
                    if mode == "reset":
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    writer.close()
                    return
                if mode == "garbage":
                    writer.write(b"\x00\x01 not http at all\r\n\r\n")
                    await writer.drain()
                    writer.close()
                    return
        finally:
            self.open -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
