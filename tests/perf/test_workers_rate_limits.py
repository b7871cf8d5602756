"""With workers: 2, a rate limit holds for the deployment, not for each process.

SO_REUSEPORT spreads a client's connections over the workers; without the workers
telling each other what they admitted, a client got a burst from each of them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from tests.support.gate import JSON, GateProcess, base_config
from tests.support.upstream import Upstream, free_port

BURST = 4


async def test_per_ip_limit_is_shared_by_the_workers(upstream: Upstream, tmp_path: Path) -> None:
    config = base_config(
        free_port(),
        upstream.url,
        idp=None,
        workers=2,
        log_format="json",
        log_level="info",
        # A token every 100 s: within the test the burst is all a client gets.
        rate_limits={"sign_in_per_ip": None, "proxy_per_ip": {"rate": 0.01, "burst": BURST}},
        route={"allow_public_unauthenticated_access": True, "policy": None},
    )
    gate = GateProcess(config, tmp_path)
    gate.start()
    try:
        statuses = []
        for i in range(20):
            # A new connection each time, so SO_REUSEPORT spreads them over both workers;
            # a pause longer than the workers' report delay between them.
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=False, force_close=True)
                ) as client,
                client.get(f"{gate.url}/n{i}", headers=JSON) as r,
            ):
                statuses.append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
            await asyncio.sleep(0.1)
    finally:
        gate.stop()
    assert statuses == [200] * BURST + [429] * (20 - BURST)
    lines = [json.loads(raw) for raw in gate.log_text().splitlines() if raw.startswith("{")]
    served = {x.get("worker") for x in lines if x.get("event") in ("access", "rate_limited")}
    assert served == {0, 1}  # both workers answered, and neither gave its own burst
