"""The shared store's cost: authenticated HTTPS requests/s with the Redis store beside
the memory store, and how fast a sign-out reaches another replica.

Run from the repository root::

    .venv/bin/python bench/store_bench.py                # 5 s per load run, 3 rounds
    .venv/bin/python bench/store_bench.py --seconds 3 --rounds 2 --samples 200

It starts, all on 127.0.0.1: nginx as the upstream (1 KB body), a redis-server
(Debian package), and two ``clawgate serve`` processes with the same configuration but
for ``databroker_storage_type`` (memory, redis). wrk loads each in turn with a signed-in
session; rounds alternate, and the median round of each is compared (same invocation,
so the machine's drift touches both alike). The request path never waits on the store,
so the ratio should be ~1.

Sign-out propagation: two Redis stores in this process (as two replicas would hold
them) on that redis-server; one revokes, the time until the other's handler runs is
taken ``--samples`` times, spaced out; p50/p99/max printed. A replica acts on delivery
(its view, then its WebSockets), so this is the replica-to-replica figure less the
WebSocket close itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    Bench,
    clawgate_config,
    free_port,
    mint_cookie,
    nginx_upstream_conf,
    start_clawgate,
    wait_port,
    wrk,
)
from proxy.store import Revocation, open_store  # noqa: E402
from proxy.tls import generate_self_signed  # noqa: E402


def start_redis(bench: Bench, port: int) -> subprocess.Popen[bytes]:
    proc = bench.spawn(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(bench.tmp)],
        "redis",
    )
    wait_port(port, proc)
    return proc


async def propagation(url: str, samples: int) -> list[float]:
    a = open_store("redis", url, prefix="bench:")
    b = open_store("redis", url, prefix="bench:")
    arrived: dict[str, float] = {}

    def seen(revocation: Revocation) -> None:
        arrived.setdefault(revocation.subject, time.perf_counter())

    await a.start(lambda _: None, lambda *_: None)
    await b.start(seen, lambda *_: None)
    while not (a.healthy and b.healthy):
        await asyncio.sleep(0.05)
    delays = []
    try:
        for i in range(samples):
            sid = f"bench-{i}-{time.time_ns()}"
            sent = time.perf_counter()
            await a.revoke(Revocation("session", sid, 0, int(time.time()) + 600))
            while sid not in arrived:
                if time.perf_counter() - sent > 5:
                    raise SystemExit(f"sign-out {i} did not arrive in 5 s")
                await asyncio.sleep(0.0005)
            delays.append((arrived[sid] - sent) * 1000)
            await asyncio.sleep(0.01)  # spaced out, as sign-outs are
    finally:
        await a.aclose()
        await b.aclose()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clawgate-store-bench-") as tmpdir:
        tmp = Path(tmpdir)
        bench = Bench(tmp, args.seconds)
        try:
            run(bench, tmp, args)
        finally:
            bench.stop_all()


def run(bench: Bench, tmp: Path, args: argparse.Namespace) -> None:
    cert = generate_self_signed(["127.0.0.1", "localhost"])
    (tmp / "cert.pem").write_bytes(cert.cert_pem)
    (tmp / "key.pem").write_bytes(cert.key_pem)
    (tmp / "www").mkdir()
    (tmp / "www/index.html").write_bytes(b"x" * 1024)
    up_port, redis_port = free_port(), free_port()
    (tmp / "up.conf").write_text(nginx_upstream_conf(tmp, up_port))
    bench.spawn(["nginx", "-p", str(tmp), "-c", str(tmp / "up.conf")], "nginx-upstream")
    wait_port(up_port, None)
    start_redis(bench, redis_port)
    url = f"redis://127.0.0.1:{redis_port}"

    targets: dict[str, tuple[int, str, int]] = {}
    for kind in ("memory", "redis"):
        port = free_port()
        config: dict[str, Any] = clawgate_config(tmp, port, up_port, up_port, 1, False, True)
        config["databroker_storage_type"] = kind
        if kind == "redis":
            config["databroker_storage_connection_string"] = url
        proc, path, _ = start_clawgate(bench, f"clawgate-{kind}", config, port)
        targets[kind] = (port, mint_cookie(path, port), proc.pid)
    time.sleep(1.0)

    seen: dict[str, list[dict[str, Any]]] = {kind: [] for kind in targets}
    for _ in range(max(1, args.rounds)):
        for kind, (port, cookie, pid) in targets.items():
            row = wrk(f"https://127.0.0.1:{port}/", args.seconds, cookie, pid=pid)
            if row["non_2xx"]:
                raise SystemExit(f"{kind}: {row['non_2xx']} requests were refused")
            seen[kind].append(row)
            print(f"  {kind:7} {row['rps']:9.0f} req/s  p99 {row['p99_us'] / 1000:.2f} ms",
                  flush=True)
    median = {k: statistics.median(r["rps"] for r in rows) for k, rows in seen.items()}
    per_round = [round(r["rps"] / m["rps"], 3)
                 for r, m in zip(seen["redis"], seen["memory"], strict=True)]
    print(f"\nauthenticated HTTPS, 1 KB, wrk 64 connections, {args.seconds:g} s x "
          f"{args.rounds}: memory {median['memory']:.0f} req/s, redis {median['redis']:.0f} "
          f"req/s; redis/memory {median['redis'] / median['memory']:.3f} "
          f"(per round {', '.join(f'{x:.3f}' for x in per_round)})")

    delays = asyncio.run(propagation(url, args.samples))
    quantiles = statistics.quantiles(delays, n=100)
    print(f"sign-out propagation between two stores, {len(delays)} samples: "
          f"p50 {statistics.median(delays):.2f} ms, p99 {quantiles[98]:.2f} ms, "
          f"max {max(delays):.2f} ms")
    print(yaml.safe_dump({"rps": median, "redis_over_memory": per_round,
                          "propagation_ms": {"p50": statistics.median(delays),
                                             "p99": quantiles[98], "max": max(delays)}},
                         sort_keys=False))


if __name__ == "__main__":
    main()
