"""Security response headers: defaults like Pomerium's on proxied responses, overridable
per route, never weakening what the upstream chose itself; clawgate's own pages carry a
strict CSP, HSTS under TLS, and no server version."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.security.helpers import bare_client, gate_for
from tests.support.gate import HTML, JSON, base_config, running_gate
from tests.support.idp import TestIdP
from tests.support.upstream import Upstream, free_port

PUBLIC = {"allow_public_unauthenticated_access": True, "policy": None}


@pytest.fixture
async def header_upstream() -> AsyncIterator[str]:
    """Answers with every query parameter as a response header."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers=dict(request.query))

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_defaults_on_proxied_responses(header_upstream: str, tmp_path: Path) -> None:
    port = free_port()
    config = base_config(port, header_upstream, idp=None, route=PUBLIC)
    async with running_gate(config, tmp_path) as gate, bare_client() as client:
        async with client.get(f"{gate.url}/") as r:
            assert r.headers["Strict-Transport-Security"].startswith("max-age=31536000")
            assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        # The upstream's own stricter choice survives the defaults.
        async with client.get(
            f"{gate.url}/",
            params={
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
                "Strict-Transport-Security": "max-age=63072000; preload",
            },
        ) as r:
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["Referrer-Policy"] == "no-referrer"
            assert r.headers["Strict-Transport-Security"] == "max-age=63072000; preload"
            assert r.headers.getall("X-Frame-Options") == ["DENY"]


async def test_route_overrides(header_upstream: str, tmp_path: Path) -> None:
    port = free_port()
    route = {
        **PUBLIC,
        "set_response_headers": {
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "",
            "Permissions-Policy": "camera=()",
            "Strict-Transport-Security": "max-age=60",
        },
    }
    config = base_config(port, header_upstream, idp=None, route=route)
    async with (
        running_gate(config, tmp_path) as gate,
        bare_client() as client,
        client.get(f"{gate.url}/", params={"X-Frame-Options": "ALLOWALL"}) as r,
    ):
        assert r.headers.getall("X-Frame-Options") == ["DENY"]  # set = overwrite
        assert "Referrer-Policy" not in r.headers  # "" removes a default
        assert r.headers["Permissions-Policy"] == "camera=()"
        assert r.headers["Strict-Transport-Security"] == "max-age=60"
        assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_no_hsts_without_tls(header_upstream: str, tmp_path: Path) -> None:
    port = free_port()
    config = base_config(port, header_upstream, idp=None, insecure_server=True, route=PUBLIC)
    async with running_gate(config, tmp_path), bare_client() as client:
        async with client.get(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 200
            assert "Strict-Transport-Security" not in r.headers
            assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
        async with client.get(f"http://127.0.0.1:{port}/.clawgate/signed_out") as r:
            assert "Strict-Transport-Security" not in r.headers


async def test_own_pages_are_locked_down(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate, bare_client() as client:
        for path, headers in [
            ("/.clawgate/signed_out", HTML),
            ("/.clawgate/sign_out", HTML),
            ("/.clawgate/callback?error=x&state=" + "s" * 20, HTML),
            ("/a%2Fb", HTML),
            ("/.clawgate/nope", HTML),
        ]:
            async with client.get(f"{gate.url}{path}", headers=headers, allow_redirects=False) as r:
                csp = r.headers.get("Content-Security-Policy", f"missing on {path} {r.status}")
                assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
                assert "script-src" not in csp and "unsafe-inline" not in csp, path
                assert r.headers["X-Frame-Options"] == "DENY", path
                assert r.headers["X-Content-Type-Options"] == "nosniff", path
                assert r.headers["Cache-Control"] == "no-store", path
                assert r.headers["Strict-Transport-Security"].startswith("max-age="), path
                assert "aiohttp" not in r.headers.get(
                    "Server", ""
                ) and "Python" not in r.headers.get("Server", ""), path
        for path in ("/app", "/.clawgate/user"):
            async with client.get(f"{gate.url}{path}", headers=JSON) as r:
                assert r.status == 401
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        async with client.get(f"{gate.url}/app", headers=HTML, allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Cache-Control"] == "no-store"
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
