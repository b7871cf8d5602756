"""Rate limits: per client IP for sign-in endpoints and for proxied traffic, per user for
proxied traffic; 429 with Retry-After; the client IP is the one xff_num_trusted_hops says.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.security.helpers import bare_client, gate_for, signed_in_browser
from tests.support.gate import HTML, JSON
from tests.support.idp import ALICE, BOB, TestIdP
from tests.support.upstream import Upstream

PUBLIC_ROUTE = {"allow_public_unauthenticated_access": True, "policy": None}


async def statuses(client, url: str, n: int, headers: dict[str, str] | None = None) -> list[int]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        async with client.get(url, headers=headers or JSON, allow_redirects=False) as r:
            out.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                body = await r.json() if "json" in r.content_type else {}
                assert body.get("error", "rate_limited") == "rate_limited"
    return out


async def test_sign_in_endpoints_per_ip(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    limits = {"sign_in_per_ip": {"rate": 0.5, "burst": 3}}
    async with (
        gate_for(
            upstream,
            tmp_path,
            idp,
            rate_limits=limits,
            route={"allow_public_unauthenticated_access": True, "policy": None},
        ) as gate,
        bare_client() as client,
    ):
        sign_in = f"{gate.url}/.clawgate/sign_in"
        assert await statuses(client, sign_in, 3, HTML) == [302, 302, 302]
        # Spelled differently, still the sign-in endpoint, still the same bucket.
        for spelling in ("/.clawgate/./sign_in", "//.clawgate/sign_in", "/.clawgate/callback"):
            assert await statuses(client, f"{gate.url}{spelling}", 1) == [429], spelling
        async with client.get(sign_in, headers=HTML) as r:
            assert r.status == 429 and "Too many requests" in await r.text()
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        # Proxied traffic has its own (here: no) limit, and health checks are never limited.
        assert await statuses(client, f"{gate.url}/app", 5) == [200] * 5
        assert await statuses(client, f"{gate.url}/ping", 5) == [200] * 5


async def test_proxied_traffic_per_ip_and_trusted_hops(upstream: Upstream, tmp_path: Path) -> None:
    limits = {"sign_in_per_ip": None, "proxy_per_ip": {"rate": 2, "burst": 4}}
    async with (
        gate_for(upstream, tmp_path, None, rate_limits=limits, route=PUBLIC_ROUTE) as gate,
        bare_client() as client,
    ):
        url = f"{gate.url}/app"
        # Without trusted hops a forged X-Forwarded-For is just noise: one bucket.
        got = []
        for i in range(5):
            got += await statuses(client, url, 1, {**JSON, "X-Forwarded-For": f"10.0.0.{i}"})
        assert got == [200, 200, 200, 200, 429]
        upstream.seen.requests.clear()
        await asyncio.sleep(0.6)  # 2 per second: one token back
        assert await statuses(client, url, 2) == [200, 429]
    async with (
        gate_for(
            upstream, tmp_path, None, rate_limits=limits, xff_num_trusted_hops=1, route=PUBLIC_ROUTE
        ) as gate,
        bare_client() as client,
    ):
        url = f"{gate.url}/app"
        a = {**JSON, "X-Forwarded-For": "198.51.100.1"}
        b = {**JSON, "X-Forwarded-For": "spoofed, 198.51.100.2"}
        assert await statuses(client, url, 5, a) == [200, 200, 200, 200, 429]
        assert await statuses(client, url, 5, b) == [200, 200, 200, 200, 429]
        v6 = [{**JSON, "X-Forwarded-For": f"2001:db8::{i}"} for i in range(5)]
        got = []
        for headers in v6:  # one /64 is one client
            got += await statuses(client, url, 1, headers)
        assert got == [200, 200, 200, 200, 429]


async def test_proxied_traffic_per_user(idp: TestIdP, upstream: Upstream, tmp_path: Path) -> None:
    limits = {"sign_in_per_ip": None, "proxy_per_user": {"rate": 0.2, "burst": 3}}
    async with gate_for(upstream, tmp_path, idp, rate_limits=limits) as gate:
        async with signed_in_browser(gate, ALICE) as alice, signed_in_browser(gate, BOB) as bob:
            # Sign-in landed on "/" once each: one token spent.
            assert await statuses(alice, f"{gate.url}/a", 3) == [200, 200, 429]
            assert await statuses(bob, f"{gate.url}/b", 2) == [200, 200]
            assert await statuses(alice, f"{gate.url}/.clawgate/user", 1) == [200]
        upstream_paths = [r["path"] for r in upstream.seen.requests]
        assert upstream_paths.count("/a") == 2
