"""Can the upstreams be reached? A TCP connect per upstream, cached for a few seconds.

``/readyz`` asks on every probe; a load balancer probing every second must not turn
into a connection storm against the upstreams, hence the cache and the single flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable

from yarl import URL

Target = tuple[str, int]


def upstream_targets(urls: Iterable[URL]) -> list[Target]:
    seen: dict[Target, None] = {}
    for url in urls:
        if url.raw_host:
            seen[(url.raw_host, url.port or (443 if url.scheme == "https" else 80))] = None
    return list(seen)


class UpstreamProbe:
    """``await probe.problems(targets)`` -> one line per unreachable upstream."""

    def __init__(self, ttl: float = 5.0, timeout: float = 2.0) -> None:
        self._ttl = ttl
        self._timeout = timeout
        self._results: dict[Target, tuple[float, str | None]] = {}
        self._lock = asyncio.Lock()

    async def _connect(self, target: Target) -> str | None:
        host, port = target
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self._timeout)
        except TimeoutError:
            return "connect timed out"
        except OSError as exc:
            return os.strerror(exc.errno) if exc.errno else type(exc).__name__
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    async def problems(self, targets: list[Target]) -> list[str]:
        async with self._lock:  # concurrent probes share one round of connects
            now = time.monotonic()
            stale = [
                t
                for t in targets
                if t not in self._results or now - self._results[t][0] >= self._ttl
            ]
            if stale:
                outcomes = await asyncio.gather(*(self._connect(t) for t in stale))
                checked = time.monotonic()
                for target, outcome in zip(stale, outcomes, strict=True):
                    self._results[target] = (checked, outcome)
            for gone in [t for t in self._results if t not in targets]:
                del self._results[gone]
            return [
                f"upstream {host}:{port}: {self._results[(host, port)][1]}"
                for host, port in targets
                if self._results[(host, port)][1] is not None
            ]
