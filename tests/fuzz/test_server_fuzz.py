"""Hypothesis against the running server: random paths, cookies and headers must each end
in a deliberate answer (never a 500) and never in an allow for a denied path.

The server runs in a background event loop so hypothesis can drive it with plain
blocking sockets, one raw request per example.
"""

from __future__ import annotations

import asyncio
import posixpath
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gate import Gate, base_config
from tests.support.upstream import Upstream, free_port

COOKIE = "__Host-_clawgate"
POLICY = [{"allow": {"or": [{"accept": True}]}},
          {"deny": {"or": [{"http_path": {"starts_with": "/admin"}}]}}]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gate, Upstream]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    directory = tmp_path_factory.mktemp("fuzzgate")

    async def start() -> tuple[Gate, Upstream]:
        upstream = await Upstream().start()
        config = base_config(free_port(), upstream.url, idp=None, route={"policy": POLICY},
                             idp_provider_url="http://127.0.0.1:9", idp_client_id="x",
                             idp_client_secret="y", log_level="warning",
                             rate_limits={"sign_in_per_ip": None})
        return await Gate(config, Path(directory)).start(), upstream

    gate, upstream = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield gate, upstream

    async def stop() -> None:
        await gate.stop()
        await upstream.stop()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def exchange(port: int, data: bytes) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(data)
        out = b""
        try:
            while chunk := tls.recv(65536):
                out += chunk
        except (TimeoutError, ssl.SSLError, ConnectionError):
            pass
    return out


def means_admin(path: str) -> bool:
    seen = posixpath.normpath(unquote(path.split("?", 1)[0]).replace("\\", "/"))
    seen = seen.replace("//", "/")
    return seen == "/admin" or seen.startswith("/admin/")


segment = st.sampled_from(["admin", "ADMIN", "x", ".", "..", "%2e", "%2e%2e", "%2f", "%5c",
                           "%61dmin", "adm%69n", ";", "..;", "%00", "%25", "", "a b",
                           "%C0%AE", "\\", "?", "#", "%", "%zz", "~", "é"])
paths = st.lists(segment, min_size=1, max_size=6).map(lambda s: "/" + "/".join(s))
cookie_values = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop0123456789-_.2",
                        max_size=300)
header_names = st.sampled_from(["X-Forwarded-For", "X-Pomerium-Jwt-Assertion", "Origin",
                                "Upgrade", "Connection", "Accept", "Transfer-Encoding",
                                "Content-Length", "X_Forwarded_Host", "Host", "Expect"])
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                        max_size=40)


@settings(max_examples=120, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(paths, st.lists(st.tuples(st.sampled_from([COOKIE, f"{COOKIE}_1", f"{COOKIE}_2"]),
                                 cookie_values), max_size=3),
       st.lists(st.tuples(header_names, header_values), max_size=3),
       st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "DELETE", "PROPFIND"]))
def test_random_requests_end_in_deliberate_answers(
    live: tuple[Gate, Upstream], path: str, cookies: list[tuple[str, str]],
    headers: list[tuple[str, str]], method: str
) -> None:
    gate, upstream = live
    before = len(upstream.seen.requests)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{gate.port}",
             "Accept: application/json", "Connection: close"]
    if cookies:
        lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies))
    lines += [f"{k}: {v}" for k, v in headers]
    reply = exchange(gate.port, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    status_line = reply.split(b"\r\n", 1)[0].split()
    assert reply == b"" or (len(status_line) >= 2 and status_line[1].isdigit()), reply[:200]
    if status_line:
        status = int(status_line[1])
        assert status < 500, reply[:500]
        assert b"Traceback" not in reply
    seen: list[dict[str, Any]] = upstream.seen.requests[before:]
    for request in seen:
        assert not means_admin(request["path"]), request["path"]
