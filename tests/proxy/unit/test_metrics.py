"""proxy/metrics.py: updates gathered per event-loop turn export exactly what direct
updates would have."""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy import metrics
from proxy.metrics import _BUCKETS, _Batch


def _pair() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("t_requests_total", "t", ["route"], registry=registry)
    hist = Histogram("t_seconds", "t", ["route"], buckets=_BUCKETS, registry=registry)
    return registry, counter, hist


# Values on, just under and past bucket bounds, tiny, huge and zero.
SAMPLES = [0.0, 0.0004, 0.0005, 0.00051, 0.001, 0.003, 0.0999, 0.1, 0.7, 9.99, 30.0, 31.0, 1e6]


def test_a_turns_batch_exports_the_same_text_as_direct_updates() -> None:
    direct_registry, direct_counter, direct_hist = _pair()
    for value in SAMPLES:
        direct_counter.labels("r").inc()
        direct_hist.labels("r").observe(value)

    batched_registry, counter, hist = _pair()
    batch = _Batch()

    async def one_turn() -> str:
        for value in SAMPLES:
            batch.count(counter.labels("r"))
            batch.observe(hist.labels("r"), value)
        before = generate_latest(batched_registry).decode()
        await asyncio.sleep(0)  # the flush runs at the start of the next turn
        return before

    before = asyncio.run(one_turn())
    assert "t_requests_total" not in before or 't_requests_total{route="r"} 0.0' in before
    strip = [ln for ln in generate_latest(direct_registry).decode().splitlines()
             if "_created" not in ln]
    got = [ln for ln in generate_latest(batched_registry).decode().splitlines()
           if "_created" not in ln]
    assert got == strip
    assert f't_seconds_count{{route="r"}} {float(len(SAMPLES))}' in got


def test_outside_a_loop_and_from_other_threads_updates_apply_at_once() -> None:
    registry, counter, hist = _pair()
    batch = _Batch()
    batch.count(counter.labels("r"), 2)
    batch.observe(hist.labels("r"), 0.2)
    assert counter.labels("r")._value.get() == 2

    async def in_loop() -> None:
        batch.count(counter.labels("r"))  # gathered: this loop turn
        other = threading.Thread(target=lambda: batch.count(counter.labels("r"), 10))
        other.start()
        other.join()
        assert counter.labels("r")._value.get() == 12  # the other thread's, at once
        await asyncio.sleep(0)
        assert counter.labels("r")._value.get() == 13

    asyncio.run(in_loop())
    assert 't_seconds_count{route="r"} 1.0' in generate_latest(registry).decode()


def test_a_scrape_sees_updates_of_the_current_turn() -> None:
    async def scrape_now() -> str:
        metrics.observe_request("batch-route", 200, 0.01)
        metrics.flush()
        return generate_latest(metrics.REGISTRY).decode()

    text = asyncio.run(scrape_now())
    assert 'clawgate_http_requests_total{route="batch-route",status="200"} 1.0' in text


def test_the_fronts_combined_hooks_count_what_the_separate_ones_do() -> None:
    def sample(name: str) -> list[float]:
        metrics.flush()
        text = generate_latest(metrics.REGISTRY).decode()
        wanted = [
            'clawgate_fast_path_requests_total{outcome="served"}',
            'clawgate_authorization_decisions_total{reason="groups",result="allow"}',
            f'clawgate_http_requests_total{{route="{name}",status="200"}}',
            f'clawgate_http_request_duration_seconds_count{{route="{name}"}}',
            f'clawgate_upstream_response_seconds_count{{route="{name}"}}',
            f'clawgate_http_request_duration_seconds_bucket{{le="0.005",route="{name}"}}',
        ]
        found = []
        for prefix in wanted:
            lines = [ln for ln in text.splitlines() if ln.startswith(prefix + " ")]
            found.append(float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0)
        return found

    reason = "allow: rule 0 allow.or[1] groups has team"

    async def separate() -> None:
        for _ in range(3):  # the first call of each fills the label caches
            metrics.fast_path(True)
            metrics.observe_decision(True, reason)
            metrics.observe_upstream("sep", 0.002)
            metrics.observe_request("sep", 200, 0.004)
        await asyncio.sleep(0)

    async def combined() -> None:
        for _ in range(3):
            metrics.front_admitted(reason)
            metrics.front_done("comb", 200, 0.004, 0.002)
        metrics.front_done("comb", 200, 0.004, -1.0)  # no upstream head: not observed
        await asyncio.sleep(0)

    base_sep = sample("sep")
    asyncio.run(separate())
    after_sep = sample("sep")
    base_comb = sample("comb")
    asyncio.run(combined())
    after_comb = sample("comb")
    grew_sep = [a - b for a, b in zip(after_sep, base_sep, strict=True)]
    grew_comb = [a - b for a, b in zip(after_comb, base_comb, strict=True)]
    assert grew_sep == [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert grew_comb == [3.0, 3.0, 4.0, 4.0, 3.0, 4.0]


def test_a_batch_left_by_a_stopped_loop_is_flushed_by_the_next() -> None:
    _, counter, _ = _pair()
    batch = _Batch()
    # A loop that stopped (a worker's, a test's) with a flush still due on it.
    dead = asyncio.new_event_loop()
    dead.close()
    batch.loop, batch.thread = dead, threading.get_ident()
    batch.counts[counter.labels("r")] = 1

    async def second() -> None:
        batch.count(counter.labels("r"))
        await asyncio.sleep(0)

    asyncio.run(second())
    assert counter.labels("r")._value.get() == 2


def test_a_turn_of_front_requests_on_several_routes_counts_as_direct_updates() -> None:
    """Several routes, statuses and latencies (some with no upstream head) in one turn:
    every bucket, sum and count equals what one direct update per request gives."""
    rows = [
        (route, status, seconds, upstream)
        for route in ("a", "b", "c")
        for status, seconds, upstream in (
            (200, 0.0004, 0.0001), (200, 0.003, 0.002), (404, 0.1, -1.0),
            (502, 31.0, 30.5), (200, 0.0005, 0.0005), (200, 1e-7, -1.0),
        )
    ][:-2]  # route c one short: the groups differ in size

    def lines(prefix: str) -> list[str]:
        metrics.flush()
        text = generate_latest(metrics.REGISTRY).decode()
        found = [ln.replace(f'"{prefix}-', '"x-') for ln in text.splitlines()
                 if f'route="{prefix}-' in ln and "_created" not in ln]
        return sorted(found)

    async def front(prefix: str) -> None:
        for route, status, seconds, upstream in rows:
            metrics.front_done(f"{prefix}-{route}", status, seconds, upstream)
        await asyncio.sleep(0)

    def direct(prefix: str) -> None:
        for route, status, seconds, upstream in rows:
            if upstream >= 0:
                metrics.UPSTREAM_SECONDS.labels(f"{prefix}-{route}").observe(upstream)
            metrics.REQUESTS.labels(f"{prefix}-{route}", str(status)).inc()
            metrics.REQUEST_SECONDS.labels(f"{prefix}-{route}").observe(seconds)

    asyncio.run(front("turn"))
    direct("direct")
    got, want = lines("turn"), lines("direct")
    assert got == want and len(got) > 3 * len(_BUCKETS)
    assert 'clawgate_http_requests_total{route="x-c",status="200"} 2.0' in got
