"""autocert in a real ``clawgate serve`` (two workers) against the real Pebble: route
hosts get certificates through TLS-ALPN-01 on the main listener and HTTP-01 on
``http_redirect_addr``; a short-lived certificate is renewed and swapped while a
WebSocket stays open; with the CA gone the last good certificate is served and
/readyz says why; a host added by a live reload gets its certificate; a restart reuses
the stored account and certificates.

A client trusting only Pebble's root checks every certificate, as a browser would.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509

from tests.autocert.conftest import pebble_calls
from tests.support.gate import GateProcess
from tests.support.pebble import Pebble
from tests.support.upstream import Upstream, free_port

pytestmark = [pytest.mark.timeout(300)]

VALIDITY = 40  # seconds: renewal comes at about 2/3 of it
REUSED = "none (authorization still valid)"


def route(host: str, port: int, upstream: Upstream) -> dict[str, Any]:
    return {
        "from": f"https://{host}:{port}",
        "to": upstream.url,
        "allow_websockets": True,
        "allow_public_unauthenticated_access": True,
    }


def config_for(
    pebble: Pebble, port: int, http_port: int, upstream: Upstream, tmp: Path, hosts: list[str]
) -> dict[str, Any]:
    return {
        "address": f"127.0.0.1:{port}",
        "http_redirect_addr": f"127.0.0.1:{http_port}",
        "health_address": f"127.0.0.1:{free_port()}",
        "workers": 2,
        "log_format": "json",
        "autocert": True,
        "autocert_ca": pebble.directory_url,
        "autocert_trusted_ca": str(pebble.ca_file),
        "autocert_email": "ops@example.com",
        "autocert_dir": str(tmp / "autocert"),
        "routes": [route(h, port, upstream) for h in hosts],
    }


async def served(port: int, host: str, root: str | None) -> x509.Certificate:
    """The certificate a client sending SNI ``host`` gets (verified against ``root``)."""
    ctx = ssl.create_default_context(cadata=root) if root else ssl._create_unverified_context()
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    return x509.load_der_x509_certificate(der)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (OSError, ssl.SSLError, AssertionError) as exc:
            last = exc
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


async def readyz(gate: GateProcess) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{gate.config['health_address']}/readyz") as resp:
            body: dict[str, Any] = await resp.json()
            return body


def events(gate: GateProcess, event: str) -> list[dict[str, Any]]:
    out = []
    for line in gate.log_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == event:
            out.append(doc)
    return out


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = await Upstream().start()
    yield server
    await server.stop()


async def test_autocert_through_serve(upstream: Upstream, tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    async with Pebble(http_port=http_port, tls_port=port, validity_seconds=VALIDITY) as pebble:
        root = await pebble.root_pem()
        config = config_for(pebble, port, http_port, upstream, tmp_path, ["a.test", "b.test"])
        gate = GateProcess(config, tmp_path).start()
        try:
            await run_scenario(gate, pebble, root, port, upstream, tmp_path)
        finally:
            gate.stop()


async def run_scenario(
    gate: GateProcess, pebble: Pebble, root: str, port: int, upstream: Upstream, tmp: Path
) -> None:
    # 1. Both hosts, verified against Pebble's root alone; both workers serve them.
    for host in ("a.test", "b.test"):
        await eventually(lambda h=host: _verifies(port, h, root), 60, f"a certificate for {host}")
    first = {h: (await served(port, h, root)).serial_number for h in ("a.test", "b.test")}
    await asyncio.sleep(2)  # the other worker loads what this one stored (1 s scan)
    for _ in range(8):  # new connections land on either worker: the same certificate
        assert (await served(port, "a.test", root)).serial_number == first["a.test"]
    # Two workers, one state directory: one order per host, not one per worker (plus
    # one for a challenge that failed and fell back to the other type, should the CA's
    # validation have reached a worker before it saw the challenge: logged if so).
    retried = len(events(gate, "autocert_challenge_failed"))
    orders = pebble_calls(pebble, "POST /order-plz")
    assert orders == 2 + retried, pebble.log_text()[-3000:]
    assert pebble_calls(pebble, "POST /sign-me-up") == 1
    obtained = events(gate, "autocert_certificate_obtained")
    assert sorted(e["host"] for e in obtained) == ["a.test", "b.test"]
    expected = {"tls-alpn-01"} if not retried else {"tls-alpn-01", "http-01"}
    assert {e["challenge"] for e in obtained} <= expected, obtained
    files = tmp / "autocert"
    keys = list(files.rglob("key.pem"))
    assert len(keys) >= 2 and all(k.stat().st_mode & 0o777 == 0o600 for k in keys)
    await eventually(lambda: _ready_ok(gate), 30, "/readyz ok")

    # 2. A WebSocket opened now keeps working across the renewal and swap.
    ctx = ssl.create_default_context(cadata=root)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"https://127.0.0.1:{port}/ws",
            ssl=ctx,
            server_hostname="a.test",
            headers={"Host": f"a.test:{port}"},
        )
        await ws.send_str("before")
        assert (await ws.receive(timeout=10)).data == "before"
        await eventually(
            lambda: _serial_differs(port, "a.test", root, first["a.test"]),
            VALIDITY + 30,
            "the renewed certificate",
        )
        await ws.send_str("after the swap")
        assert (await ws.receive(timeout=10)).data == "after the swap"
        await ws.close()
    # With a certificate live, renewals answer HTTP-01 on http_redirect_addr (no TLS
    # handshake for a.test is given the challenge certificate meanwhile), unless Pebble
    # chose to reuse the still-valid authorization (it does so at random).
    renewed = events(gate, "autocert_certificate_renewed")
    assert renewed, gate.log_text()[-3000:]
    assert {e["challenge"] for e in renewed} <= {"http-01", REUSED}, renewed

    # 3. The CA goes away: the last good certificate is still served, /readyz says why.
    await pebble.stop()
    good = (await served(port, "a.test", root)).serial_number
    await eventually(lambda: _ready_reports_failure(gate), VALIDITY + 30, "a failure in /readyz")
    cert = await served(port, "a.test", root)
    if cert.not_valid_after_utc.timestamp() > time.time():
        assert cert.serial_number == good
    assert events(gate, "autocert_failed")

    # 4. The CA is back (it forgot everything); a reload adds a host, which gets its own.
    # This time the CA cannot reach the TLS listener (its TLS-ALPN-01 port is closed):
    # the new host is proven through HTTP-01 on http_redirect_addr instead.
    pebble.tls_port = free_port()
    await pebble.start()
    root = await pebble.root_pem()  # a restarted Pebble makes a new root
    config = dict(gate.config)
    config["routes"] = [*config["routes"], route("c.test", port, upstream)]
    gate.path.write_text(yaml.safe_dump(config, sort_keys=False))
    gate.config = config
    await eventually(lambda: _verifies(port, "c.test", root), 90, "a certificate for c.test")
    via = [e["challenge"] for e in events(gate, "autocert_certificate_obtained")
           if e["host"] == "c.test"]  # fmt: skip
    assert via == ["http-01"], via

    # 5. A restart reuses the account and certificates on disk.
    accounts = pebble_calls(pebble, "POST /sign-me-up")
    before = (await served(port, "c.test", root)).serial_number
    gate.stop()
    gate.start()
    after = await served(port, "c.test", root)
    assert after.serial_number == before or after.not_valid_before_utc.timestamp() > time.time() - 30
    await asyncio.sleep(3)
    assert pebble_calls(pebble, "POST /sign-me-up") == accounts


async def _verifies(port: int, host: str, root: str) -> bool:
    cert = await served(port, host, root)
    return bool(cert.subject or cert.extensions)


async def _serial_differs(port: int, host: str, root: str, serial: int) -> bool:
    return (await served(port, host, root)).serial_number != serial


async def _ready_ok(gate: GateProcess) -> bool:
    body = await readyz(gate)
    hosts = {entry["host"]: entry for entry in body.get("autocert", [])}
    return body["status"] == "ok" and set(hosts) == {"a.test", "b.test"}


async def _ready_reports_failure(gate: GateProcess) -> bool:
    body = await readyz(gate)
    return body["status"] == "degraded" or any(
        entry["last_error"] for entry in body.get("autocert", [])
    )
