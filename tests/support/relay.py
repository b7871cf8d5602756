"""A byte-for-byte TCP relay, optionally recording the HTTP request heads that pass through it.

Two jobs in the end-to-end tests:

* **Reaching a loopback-only server from a network namespace.** The test IdP listens on
  127.0.0.1 and clawgate only accepts an ``http`` issuer on a loopback address, so the issuer URL
  must be ``http://127.0.0.1:<port>`` for clawgate *and* for a browser inside the namespace.
  Two relays make that true without touching either rule::

      namespace: 127.0.0.1:P ──(relay, a process inside the namespace)──> 10.213.x.1:P
      host:      10.213.x.1:P ──(relay, a thread in the test process)───> 127.0.0.1:P  (IdP)

  The IdP sees ordinary requests with ``Host: 127.0.0.1:P``; its issuer, redirects and cookies
  are the same on both sides.

* **Proving what reached an upstream.** Between clawgate and the OpenClaw gateway a relay with
  ``record=True`` keeps the client-to-server bytes and `RelayThread.requests()` parses the
  HTTP/1.1 request heads out of them (method, target, headers). After a WebSocket upgrade the
  client's frames are masked, so nothing in them can pass for a request head.

Usage::

    # in-process, on its own event loop thread
    with RelayThread("10.213.7.1", 4000, "127.0.0.1", 4000) as relay: ...
    # as a process under any command prefix, e.g. inside a namespace
    relay = RelayProcess(["ip", "netns", "exec", "ns1"], "127.0.0.1", 4000, "10.213.7.1", 4000)
    relay.start(); ...; relay.stop()

    python -m tests.support.relay LISTEN_HOST:PORT TARGET_HOST:PORT   # prints "READY <port>"
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.lifecycle import StartStop

__all__ = ["RelayProcess", "RelayThread", "SeenRequest", "TcpRelay"]

_REQUEST_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) (\S+) HTTP/1\.[01]\r\n((?:[^\r\n]+\r\n)*)\r\n"
)
_RECORD_LIMIT = 4 * 1024 * 1024  # per connection; the tests send far less


@dataclass(frozen=True)
class SeenRequest:
    """One HTTP request head that went through a recording relay."""

    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased, last one wins

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class TcpRelay:
    """An asyncio TCP server that pipes each connection to ``target_host:target_port``."""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        *,
        record: bool = False,
    ) -> None:
        self.listen_host, self.listen_port = listen_host, listen_port
        self.target_host, self.target_port = target_host, target_port
        self.record = record
        self.recorded: list[bytearray] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._serve, self.listen_host, self.listen_port)
        self.listen_port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                return
            tape: bytearray | None = None
            if self.record:
                tape = bytearray()
                self.recorded.append(tape)
            pumps = [
                asyncio.create_task(_pump(reader, up_writer, tape)),
                asyncio.create_task(_pump(up_reader, writer, None)),
            ]
            try:
                await asyncio.gather(*pumps)
            finally:
                for pump in pumps:
                    pump.cancel()
                up_writer.close()
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tape: bytearray | None
) -> None:
    try:
        while data := await reader.read(65536):
            if tape is not None and len(tape) < _RECORD_LIMIT:
                tape += data
            writer.write(data)
            await writer.drain()
        # Half-close: the other direction may still be sending (HTTP/1.0 style bodies).
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


def parse_requests(tape: bytes) -> list[SeenRequest]:
    """The HTTP/1.x request heads in a client-to-server byte stream, in order."""
    out: list[SeenRequest] = []
    for match in _REQUEST_HEAD.finditer(tape):
        headers: dict[str, str] = {}
        for line in match.group(3).decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        out.append(SeenRequest(match.group(1).decode(), match.group(2).decode(), headers))
    return out


class RelayThread(StartStop):
    """A `TcpRelay` on its own event loop in a daemon thread (for sync fixtures and scripts).

    ``listen_port=0`` picks a free port; read it from `port` after `start`.
    """

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        *,
        record: bool = False,
    ) -> None:
        self._relay = TcpRelay(listen_host, listen_port, target_host, target_port, record=record)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return self._relay.listen_port

    @property
    def address(self) -> str:
        return f"{self._relay.listen_host}:{self._relay.listen_port}"

    def start(self) -> RelayThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._relay.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._relay.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def requests(self) -> list[SeenRequest]:
        """Request heads seen so far on every connection (needs ``record=True``)."""

        async def snapshot() -> list[bytes]:
            return [bytes(t) for t in self._relay.recorded]

        tapes = asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(10)
        return [req for tape in tapes for req in parse_requests(tape)]

class RelayProcess:
    """``python -m tests.support.relay`` run under ``prefix`` (e.g. ``ip netns exec NAME``)."""

    def __init__(
        self,
        prefix: Sequence[str],
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
    ) -> None:
        self.argv = [
            *prefix,
            sys.executable,
            "-m",
            "tests.support.relay",
            f"{listen_host}:{listen_port}",
            f"{target_host}:{target_port}",
        ]
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 15.0) -> RelayProcess:
        root = Path(__file__).resolve().parents[2]
        self._proc = subprocess.Popen(
            self.argv,
            cwd=root,
            stdin=subprocess.PIPE,  # the relay exits when this closes, i.e. when we die
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(
            target=lambda: ready.append(self._proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        if not ready or not ready[0].startswith("READY"):
            err = ""
            self.stop()
            if self._proc is not None and self._proc.stderr is not None:
                err = self._proc.stderr.read()
            raise RuntimeError(f"relay {' '.join(self.argv)} did not start: {err.strip()}")
        return self

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def _main(listen: str, target: str) -> None:
    relay = await TcpRelay(*_split(listen), *_split(target)).start()
    print(f"READY {relay.listen_port}", flush=True)
    # Until SIGTERM, or until stdin reaches EOF: the parent died without stopping us (a killed
    # test run) and nobody else would.
    loop = asyncio.get_running_loop()
    orphaned = asyncio.Event()
    threading.Thread(
        target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(orphaned.set)), daemon=True
    ).start()
    try:
        await orphaned.wait()
    finally:
        await relay.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.support.relay LISTEN_HOST:PORT TARGET_HOST:PORT")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(sys.argv[1], sys.argv[2]))
