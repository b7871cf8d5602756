"""Shared pieces for the attack and fault tests: bare clients, raw sockets, gates."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.gate import Gate, base_config, client_session, register_client, running_gate
from tests.support.idp import ALICE, TestIdP, TestUser, login
from tests.support.upstream import Upstream, free_port

COOKIE = "__Host-_clawgate"
SESSION_NAMES = (COOKIE, *(f"{COOKIE}_{i}" for i in range(1, 8)))


def insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def bare_client(**kwargs: Any) -> aiohttp.ClientSession:
    """No cookie jar, no TLS verification: it sends exactly what it is told to."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=False), cookie_jar=aiohttp.DummyCookieJar(), **kwargs
    )


def session_cookies(browser: aiohttp.ClientSession) -> dict[str, str]:
    return {c.key: c.value for c in browser.cookie_jar if c.key in SESSION_NAMES}


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def cleared_cookies(resp: aiohttp.ClientResponse) -> set[str]:
    cleared: set[str] = set()
    for header in resp.headers.getall("Set-Cookie", []):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        for name, morsel in parsed.items():
            if morsel["max-age"] == "0" or "1970" in morsel["expires"]:
                cleared.add(name)
    return cleared


async def raw_exchange(
    port: int, data: bytes, *, timeout: float = 5.0, tls: bool = True, read: int = 65536
) -> bytes:
    """Send raw bytes on a fresh connection and return what comes back until close/timeout."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=insecure_tls() if tls else None
    )
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await reader.read(read)
                    if not chunk:
                        break
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def status_of(raw: bytes) -> int | None:
    line = raw.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None


@contextlib.asynccontextmanager
async def gate_for(
    upstream: Upstream, tmp_path: Path, idp: TestIdP | None = None, **overrides: Any
) -> AsyncIterator[Gate]:
    port = free_port()
    if idp is not None:
        register_client(idp, port, hosts=overrides.pop("hosts", ("127.0.0.1",)))
    async with running_gate(
        base_config(port, upstream.url, idp=idp, **overrides), tmp_path
    ) as gate:
        yield gate


async def sign_in(
    browser: aiohttp.ClientSession, gate: Gate, user: TestUser = ALICE, path: str = "/"
) -> aiohttp.ClientResponse:
    resp = await login(browser, f"{gate.url}{path}", user.username, user.password)
    assert session_cookies(browser), "sign-in set no session cookie"
    return resp


@contextlib.asynccontextmanager
async def signed_in_browser(
    gate: Gate, user: TestUser = ALICE
) -> AsyncIterator[aiohttp.ClientSession]:
    async with client_session() as browser:
        await sign_in(browser, gate, user)
        yield browser
