"""Sign-outs reach every worker: a revoked session is broadcast to the sibling processes.

With ``workers: N`` a sign-out lands in one process, but the user's cookie copies and
WebSockets may be served by any of them. Each supervised worker binds a UNIX datagram
socket in the supervisor's private directory (mode 0700, so no other user can send)
and tells its siblings about every session it revokes; a sibling then refuses that
session and closes its WebSockets with 1008, as the worker that handled the sign-out did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path

import structlog

from proxy.runtime import Runtime

log = structlog.get_logger("clawgate.peers")

PEERS_ENV = "_CLAWGATE_PEERS_DIR"
_MAX_MESSAGE = 512


class Peers:
    """This worker's mailbox and the addresses of its siblings."""

    def __init__(self, runtime: Runtime, directory: Path, index: int) -> None:
        self._runtime = runtime
        self._dir = directory
        self._path = directory / f"worker-{index}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # left by a previous incarnation of this worker
        self._sock.bind(str(self._path))
        self._sock.setblocking(False)
        # Close tasks in flight (the loop keeps only weak references to tasks).
        self._pending: set[asyncio.Future[int]] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._receive)
        self._runtime.revoke_hooks.append(self.broadcast)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def broadcast(self, sid: str, until: int) -> None:
        message = json.dumps({"revoke": sid, "until": until}).encode()
        for peer in self._dir.glob("worker-*.sock"):
            if peer == self._path:
                continue
            with contextlib.suppress(OSError):  # a sibling restarting misses nothing it serves
                self._sock.sendto(message, str(peer))

    def _receive(self) -> None:
        while True:
            try:
                data = self._sock.recv(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                doc = json.loads(data)
                sid, until = str(doc["revoke"]), int(doc["until"])
            except (ValueError, KeyError, TypeError):
                log.warning("peer_message_ignored")
                continue
            self._runtime.revoke(sid, until, broadcast=False)
            task = asyncio.ensure_future(self._runtime.registry.close_session(sid, "signed out"))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
