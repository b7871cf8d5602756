"""Fixtures for the autocert tests: a real Pebble, and stand-ins for clawgate's listeners.

``Responders`` is what clawgate's listeners do for autocert: a TLS server whose base
context (clawgate's self-signed fallback) carries ``Autocert.install``'s SNI callback,
and a plain-HTTP server answering ``/.well-known/acme-challenge/{token}`` from
``Autocert.http01``. Pebble validates against exactly these two ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import structlog
from aiohttp import web
from cryptography import x509
from structlog.testing import capture_logs

from proxy.autocert import Autocert, AutocertConfig, _manager, _storage
from proxy.tls import generate_self_signed, new_server_context
from tests.support.pebble import Pebble
from tests.support.upstream import free_port

FALLBACK_NAME = "fallback.clawgate.invalid"


class Responders:
    """The TLS and HTTP listeners Pebble's validation connects to."""

    def __init__(self, directory: Path) -> None:
        self.tls_port = free_port()
        self.http_port = free_port()
        self.autocerts: list[Autocert] = []
        self.http01_requests: list[str] = []
        self.context = new_server_context()
        made = generate_self_signed([FALLBACK_NAME])
        cert, key = directory / "fallback-cert.pem", directory / "fallback-key.pem"
        cert.write_bytes(made.cert_pem)
        key.write_bytes(made.key_pem)
        self.context.load_cert_chain(cert, key)
        self._tls: asyncio.Server | None = None
        self._http: web.AppRunner | None = None

    def attach(self, autocert: Autocert, *, tls: bool = True, http: bool = True) -> None:
        if tls:
            autocert.install(self.context)
        if http:
            self.autocerts.append(autocert)

    async def start(self) -> None:
        self._tls = await asyncio.start_server(_echo, "127.0.0.1", self.tls_port, ssl=self.context)
        app = web.Application()
        app.router.add_get("/.well-known/acme-challenge/{token}", self._challenge)
        self._http = web.AppRunner(app)
        await self._http.setup()
        await web.TCPSite(self._http, "127.0.0.1", self.http_port).start()

    async def stop(self) -> None:
        if self._tls is not None:
            self._tls.close()
            # Open test connections may still be around; do not wait for them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tls.wait_closed(), 2)
        if self._http is not None:
            await self._http.cleanup()

    async def _challenge(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        self.http01_requests.append(token)
        for autocert in self.autocerts:
            answer = autocert.http01(token)
            if answer is not None:
                return web.Response(text=answer, content_type="application/octet-stream")
        return web.Response(status=404)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(b"echo " + line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


@dataclass
class Connection:
    """A TLS connection to the responders' TLS port."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    certificate: x509.Certificate

    async def echo(self, text: str) -> str:
        self.writer.write(text.encode() + b"\n")
        await self.writer.drain()
        return (await asyncio.wait_for(self.reader.readline(), 5)).decode().strip()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def connect(port: int, host: str, root_pem: str | None) -> Connection:
    """Connect with SNI ``host``. With ``root_pem`` the chain and the host name are
    verified against that root only; without, whatever is served is accepted."""
    if root_pem is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cadata=root_pem)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host), 10
    )
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True)
    return Connection(reader, writer, x509.load_der_x509_certificate(der))


async def served_certificate(port: int, host: str) -> x509.Certificate:
    connection = await connect(port, host, None)
    await connection.close()
    return connection.certificate


async def eventually(
    condition: Callable[[], object], within: float, what: str, every: float = 0.1
) -> float:
    """Wait until ``condition()`` is true; how long it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def eventually_await(
    condition: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.5
) -> float:
    """``eventually`` for a condition that has to connect somewhere to know."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(every)
    return time.monotonic() - started


@dataclass
class Running:
    """An ``Autocert.run`` task and the hosts it is given."""

    autocert: Autocert
    hosts: list[str]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def set_hosts(self, hosts: list[str]) -> None:
        self.hosts[:] = hosts
        self.wake.set()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class MakeAutocert(Protocol):
    def __call__(self, state_dir: Path, **overrides: Any) -> Autocert: ...


class Start(Protocol):
    def __call__(self, autocert: Autocert, hosts: list[str]) -> Running: ...


@pytest.fixture
async def responders(tmp_path: Path) -> AsyncIterator[Responders]:
    made = Responders(tmp_path)
    await made.start()
    yield made
    await made.stop()


@pytest.fixture
async def spare(tmp_path: Path) -> AsyncIterator[Responders]:
    """Listeners Pebble does not validate against: to see what one instance serves."""
    directory = tmp_path / "spare"
    directory.mkdir()
    made = Responders(directory)
    await made.start()
    yield made
    await made.stop()


@pytest.fixture
async def pebble(responders: Responders) -> AsyncIterator[Pebble]:
    async with Pebble(http_port=responders.http_port, tls_port=responders.tls_port) as made:
        yield made


def config_for(pebble: Pebble, state_dir: Path, **overrides: Any) -> AutocertConfig:
    values: dict[str, Any] = {
        "directory_url": pebble.directory_url,
        "state_dir": state_dir,
        "email": "admin@example.com",
        "trusted_ca": pebble.ca_file,
        # Quick retries, so recovery is seen within a test's time.
        "retry_min": 0.5,
        "retry_max": 2.0,
    }
    values.update(overrides)
    return AutocertConfig(**values)


@pytest.fixture
def make_autocert(pebble: Pebble) -> MakeAutocert:
    def make(state_dir: Path, **overrides: Any) -> Autocert:
        return Autocert(config_for(pebble, state_dir, **overrides))

    return make


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    started: list[Running] = []

    def run(autocert: Autocert, hosts: list[str]) -> Running:
        running = Running(autocert, list(hosts))
        running.task = asyncio.create_task(autocert.run(lambda: running.hosts, running.wake))
        started.append(running)
        return running

    yield run
    for running in started:
        await running.stop()


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """autocert's log lines. Fresh loggers: the modules' may have been cached with
    another configuration by an earlier test."""
    with capture_logs() as captured:
        for module in (_manager, _storage):
            monkeypatch.setattr(module, "log", structlog.get_logger("clawgate.autocert"))
        yield captured


def events(logs: list[MutableMapping[str, Any]], event: str, **match: Any) -> list[Any]:
    return [
        line
        for line in logs
        if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
    ]


def pebble_calls(pebble: Pebble, request: str) -> int:
    """How many times Pebble was sent ``request`` (e.g. "POST /order-plz"), by its log."""
    return sum(1 for line in pebble.log_text().splitlines() if f"{request} ->" in line)
