"""The front on the event loop clawgate runs on in production (uvloop)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import uvloop

from tests.perf.test_operations import scrape
from tests.proxy.test_front import (
    gate_with_metrics,
    get,
    handed_back,
    insecure,
    mint_cookie,
    read_responses,
)
from tests.support.upstream import Upstream


def test_the_fronts_timings_are_finer_than_the_loop_clock(tmp_path: Path) -> None:
    """uvloop's loop.time() counts whole milliseconds: latencies measured with it would
    all be multiples of 1 ms (and most of them 0)."""

    async def scenario() -> str:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        upstream = await Upstream().start()
        try:
            async with gate_with_metrics(upstream.url, tmp_path) as (gate, metrics_port):
                cookie = mint_cookie(gate)
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", gate.port, ssl=insecure()
                )
                for i in range(8):
                    writer.write(get(f"/t{i}", gate.port, cookie))
                    await read_responses(reader, 1)
                writer.close()
                return await scrape(metrics_port)
        finally:
            await upstream.stop()

    text = uvloop.run(scenario())
    for name in ("clawgate_http_request_duration_seconds", "clawgate_upstream_response_seconds"):
        total = sum(float(v) for v in re.findall(rf"^{name}_sum\{{[^}}]*\}} (\S+)$", text, re.M))
        assert total > 0, name
        assert abs(total * 1000 - round(total * 1000)) > 1e-9, (name, total)


def test_a_connection_goes_back_to_the_front_on_uvloop(tmp_path: Path) -> None:
    """uvloop's TLS transport is what production hands back and forth."""

    async def scenario() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        upstream = await Upstream().start()
        try:
            await handed_back(upstream, tmp_path)
        finally:
            await upstream.stop()

    uvloop.run(scenario())
