"""Soak: mixed HTTP and WebSocket traffic through one signed-in session against a real
``clawgate serve`` process. Zero errors allowed; resident memory must level off.

Runs CLAWGATE_SOAK_SECONDS (default 20). The RSS samples and the growth after warm-up
are printed and written to test-artifacts/soak.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.support.gate import GateProcess, base_config, client_session, register_client
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port

SECONDS = float(os.environ.get("CLAWGATE_SOAK_SECONDS", "20"))
# Allowed growth between the end of warm-up and the end of the run.
MAX_GROWTH_MIB = 16.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_soak_mixed_traffic(
    idp: TestIdP, upstream: Upstream, tmp_path: Path, artifacts: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    gate = GateProcess(base_config(port, upstream.url, idp=idp, log_level="warning"), tmp_path)
    await asyncio.to_thread(gate.start)
    assert gate.proc is not None
    counts: Counter[str] = Counter()
    errors: list[str] = []
    samples: list[tuple[float, int]] = []
    try:
        async with client_session() as browser:
            assert (await login(browser, f"{gate.url}/", ALICE.username,
                                ALICE.password)).status == 200
            deadline = time.monotonic() + SECONDS
            payload = os.urandom(64 * 1024)

            async def http_worker(n: int) -> None:
                i = 0
                while time.monotonic() < deadline:
                    i += 1
                    try:
                        if i % 5 == 0:
                            async with browser.post(f"{gate.url}/upload", data=payload) as r:
                                ok = r.status == 200 and (await r.json())["received"] == len(
                                    payload)
                        elif i % 7 == 0:
                            async with browser.get(f"{gate.url}/download/262144") as r:
                                ok = r.status == 200 and len(await r.read()) == 262144
                        else:
                            async with browser.get(f"{gate.url}/w{n}/{i}?q={i}") as r:
                                ok = r.status == 200 and (await r.json())["path"] == \
                                    f"/w{n}/{i}?q={i}"
                        counts["http"] += 1
                        if not ok:
                            errors.append(f"http {n}/{i}")
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        errors.append(f"http {n}/{i}: {exc!r}")

            async def ws_worker(n: int) -> None:
                while time.monotonic() < deadline:
                    try:
                        async with browser.ws_connect(f"{gate.url}/ws/{n}",
                                                      origin=gate.url) as ws:
                            for j in range(20):
                                await ws.send_str(f"{n}:{j}")
                                if await ws.receive_str(timeout=5) != f"{n}:{j}":
                                    errors.append(f"ws {n}/{j} mismatch")
                                counts["ws_messages"] += 1
                        counts["ws_sessions"] += 1
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        errors.append(f"ws {n}: {exc!r}")

            async def sampler() -> None:
                start = time.monotonic()
                while time.monotonic() < deadline:
                    samples.append((round(time.monotonic() - start, 1), rss_kib(gate.proc.pid)))
                    await asyncio.sleep(0.5)

            await asyncio.gather(*(http_worker(n) for n in range(3)),
                                 *(ws_worker(n) for n in range(2)), sampler())
        upstream.seen.requests.clear()  # the upstream's record grows with the run, not clawgate
    finally:
        code = gate.stop()
    warm = [kib for t, kib in samples if t <= SECONDS * 0.25] or [samples[0][1]]
    tail = [kib for t, kib in samples if t >= SECONDS * 0.9] or [samples[-1][1]]
    growth_mib = (max(tail) - max(warm)) / 1024
    report = {"seconds": SECONDS, "counts": dict(counts), "errors": len(errors),
              "rss_after_warmup_mib": round(max(warm) / 1024, 1),
              "rss_end_mib": round(max(tail) / 1024, 1), "growth_mib": round(growth_mib, 2),
              "samples_kib": samples}
    (artifacts / "soak.json").write_text(json.dumps(report, indent=1))
    print(f"\nsoak: {dict(counts)} errors={len(errors)} rss {report['rss_after_warmup_mib']} "
          f"-> {report['rss_end_mib']} MiB (growth {report['growth_mib']} MiB)")
    assert errors == [], errors[:10]
    assert code == 0
    assert counts["http"] > 100 and counts["ws_sessions"] > 5
    assert growth_mib < MAX_GROWTH_MIB, report
