"""Prometheus metrics: what clawgate counts, and the listener that serves them.

Public surface:

- ``observe_request(route, status, seconds)``, ``observe_decision(allow, reason)``,
  ``observe_upstream(route, seconds)``, ``upstream_error(route, reason)``,
  ``websocket_opened()`` / ``websocket_closed()``, ``idp_call(endpoint, outcome)``,
  ``session_refresh(ok)``, ``config_reload(ok, generation)``: the hooks the server calls.
- :func:`metrics_app`: the aiohttp app for ``metrics_address`` (``GET /metrics``).
- :func:`idp_trace`: an aiohttp ``TraceConfig`` counting calls to the identity provider.

Updates made while an event loop runs are gathered and applied to the Prometheus
objects together at the end of the loop's turn (:class:`_Batch`): each counter then
takes one locked update per turn instead of one per request. A scrape applies what is
gathered first, so it never misses an update made before it.

Labels stay bounded whatever the traffic: routes come from the config, statuses are
three-digit numbers, and a decision's reason is reduced to its kind (``groups``,
``anonymous``, ``no_match``...) because the full reason names users and values.

With ``workers: N`` every worker writes its samples to files under
``PROMETHEUS_MULTIPROC_DIR`` (set by the supervising process before the workers start),
and the metrics listener adds them up, so one scrape sees the whole instance.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable
from itertools import compress, repeat
from typing import Any

from aiohttp import TraceConfig, TraceRequestEndParams, TraceRequestExceptionParams, web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets from a cached decision (sub-millisecond) to a slow upstream.
_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

REQUESTS = Counter(
    "clawgate_http_requests_total", "Requests answered, by route and status", ["route", "status"]
)
REQUEST_SECONDS = Histogram(
    "clawgate_http_request_duration_seconds",
    "Time from request to the end of the answer",
    ["route"],
    buckets=_BUCKETS,
)
DECISIONS = Counter(
    "clawgate_authorization_decisions_total",
    "Policy decisions on proxied requests, by result and kind of reason",
    ["result", "reason"],
)
UPSTREAM_SECONDS = Histogram(
    "clawgate_upstream_response_seconds",
    "Time until the upstream's response head",
    ["route"],
    buckets=_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "clawgate_upstream_errors_total", "Upstream failures answered with 502/504", ["route", "reason"]
)
FAST_PATH = Counter(
    "clawgate_fast_path_requests_total",
    "Requests the front (proxy/front.py) forwarded itself, and those it handed to the full handler",
    ["outcome"],
)
_FAST_SERVED = FAST_PATH.labels("served")
_FAST_HANDED = FAST_PATH.labels("handed_off")
RETURNED = Counter(
    "clawgate_fast_path_connections_returned_total",
    "Connections the full handler gave back to the front between requests",
)
WEBSOCKETS = Gauge(
    "clawgate_websockets_active", "Proxied WebSockets open now", multiprocess_mode="livesum"
)
STORE_UP = Gauge(
    "clawgate_store_up",
    "1 while the shared store (databroker_storage_type) is reachable and its sign-outs "
    "loaded, else 0",
    multiprocess_mode="livemin",
)
IDP_CALLS = Counter(
    "clawgate_idp_requests_total",
    "HTTP calls to the identity provider, by endpoint and outcome",
    ["endpoint", "outcome"],
)
SESSION_REFRESHES = Counter(
    "clawgate_session_refreshes_total", "Session refreshes with the identity provider", ["result"]
)
CONFIG_RELOADS = Counter(
    "clawgate_config_reloads_total", "Configuration reloads from disk", ["result"]
)
CONFIG_GENERATION = Gauge(
    "clawgate_config_generation",
    "Generation of the configuration in force (1 at start)",
    multiprocess_mode="max",
)

CERTIFICATE_EXPIRY = Gauge(
    "clawgate_certificate_expiry_seconds",
    "Seconds until the certificate served for a host (autocert) expires; negative once expired",
    ["host"],
    multiprocess_mode="min",
)
AUTOCERT_FAILING = Gauge(
    "clawgate_autocert_failing",
    "1 while the last attempt to obtain or renew a host's certificate failed (autocert "
    "retries with backoff), else 0",
    ["host"],
    multiprocess_mode="max",
)
SSH_CONNECTIONS = Counter(
    "clawgate_ssh_connections_total",
    "SSH door events: connections accepted, signed in (of which with a remembered "
    "key), refused, upstream failures, ended by clawgate",
    ["event"],
)
SSH_BYTES = Counter(
    "clawgate_ssh_bytes_total",
    "Bytes relayed by the SSH door, from the user (in) and to the user (out)",
    ["direction"],
)
SSH_ACTIVE = Gauge(
    "clawgate_ssh_connections_active",
    "Signed-in SSH connections open now",
    multiprocess_mode="livesum",
)

_BOUNDS = (*_BUCKETS, float("inf"))


class _Batch:
    """Counter increments and histogram observations gathered during one turn of the
    event loop, applied together when the turn's callbacks run (or at once outside a
    loop, or from another thread)."""

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}
        self.observed: list[tuple[Any, float]] = []  # (histogram child, value)
        # The front's requests as they came: decision reasons at admission, and
        # (route, status, seconds, upstream seconds) at the end; counted at the flush.
        self.admitted: list[str] = []
        self.done: list[tuple[str, int, float, float]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = 0
        self.lock = threading.Lock()

    def count(self, child: Any, amount: float = 1) -> None:
        if self.gathering():
            counts = self.counts
            counts[child] = counts.get(child, 0) + amount
        else:
            child.inc(amount)

    def observe(self, child: Any, seconds: float) -> None:
        if self.gathering():
            self.observed.append((child, seconds))
        else:
            child.observe(seconds)

    def gathering(self) -> bool:
        """True when updates are to be gathered (this thread runs the loop whose flush
        is due); schedules that flush when none is."""
        due = self.loop
        if due is not None and due.is_running():
            # A flush is due on that loop; another thread's update is applied at once.
            return self.thread == threading.get_ident()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        with self.lock:
            # (A loop stopped before its flush ran leaves its batch to this loop.)
            if self.loop is not None and self.loop.is_running():
                return self.loop is loop
            self.loop, self.thread = loop, threading.get_ident()
        # At the end of this loop turn: a scrape that follows a response sees its counts,
        # whichever worker serves the scrape.
        loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        with self.lock:
            counts, self.counts = self.counts, {}
            observed, self.observed = self.observed, []
            admitted, self.admitted = self.admitted, []
            done, self.done = self.done, []
            self.loop = None
        # histogram child -> [sum, count in bucket 0, count in bucket 1, ...]
        rows: dict[Any, list[float]] = {}
        if observed:
            children, values = zip(*observed, strict=True)
            _histogram_rows(rows, children, values, _itself)
        _count_front(counts, rows, admitted, done)
        for child, amount in counts.items():
            child.inc(amount)
        for child, row in rows.items():
            # Histogram.observe() per sample is what this saves; its per-bucket values
            # (``_sum``, ``_buckets``) are what it updates, in the same order.
            child._sum.inc(row[0])
            for index, seen in enumerate(row[1:]):
                if seen:
                    child._buckets[index].inc(seen)


def _count_front(
    counts: dict[Any, float],
    rows: dict[Any, list[float]],
    admitted: list[str],
    done: list[tuple[str, int, float, float]],
) -> None:
    """Add a turn of the front's requests to ``counts`` and histogram ``rows``. The
    requests are transposed and counted with C iterators (zip, Counter, map), so the
    Python work is per distinct label value, not per request."""
    if admitted:
        counts[_FAST_SERVED] = counts.get(_FAST_SERVED, 0) + len(admitted)
        for reason, seen in Tally(admitted).items():
            child = _decision_child(True, reason)
            counts[child] = counts.get(child, 0) + seen
    if not done:
        return
    routes, statuses, seconds, upstream_seconds = zip(*done, strict=True)
    for (route, status), seen in Tally(zip(routes, statuses, strict=True)).items():
        child = _request_child(route, status)
        counts[child] = counts.get(child, 0) + seen
    _histogram_rows(rows, routes, seconds, _latency_child)
    # Only requests whose upstream head came have an upstream latency (>= 0).
    came = list(map((0.0).__le__, upstream_seconds))
    _histogram_rows(
        rows,
        tuple(compress(routes, came)),
        tuple(compress(upstream_seconds, came)),
        _upstream_child,
    )


def _histogram_rows(
    into: dict[Any, list[float]],
    keys: tuple[Any, ...],
    values: tuple[float, ...],
    child_of: Callable[[Any], Any],
) -> None:
    """Add ``values`` to the rows of ``child_of(key)``, key by key: the sum first, then
    the count in each bucket."""
    if not values:
        return
    size = len(_BOUNDS) + 1
    rows: dict[Any, list[float]] = {}
    if len(set(keys)) == 1:
        rows[keys[0]] = row = [0.0] * size
        row[0] = sum(values)
    else:
        for key, value in zip(keys, values, strict=True):
            row = rows.get(key) or rows.setdefault(key, [0.0] * size)
            row[0] += value
    # Prometheus's bucket is the first whose bound is >= the value.
    buckets = map(bisect_left, repeat(_BOUNDS), values)
    for (key, bucket), seen in Tally(zip(keys, buckets, strict=True)).items():
        rows[key][1 + bucket] += seen
    for key, row in rows.items():
        child = child_of(key)
        have = into.get(child)
        if have is None:
            into[child] = row
        else:
            for index, value in enumerate(row):
                have[index] += value


def _itself(child: Any) -> Any:
    return child


_BATCH = _Batch()


def flush() -> None:
    """Apply the updates gathered in this loop turn (a scrape does this first)."""
    _BATCH.flush()


# Children cached by label values: .labels() takes a lock and builds a key every call.
_request_children: dict[tuple[str, int], Any] = {}
_latency_children: dict[str, Any] = {}
_upstream_children: dict[str, Any] = {}
_decision_children: dict[tuple[bool, str], Any] = {}
_MAX_CACHED = 4096


def _request_child(name: str, status: int) -> Any:
    key = (name, status)
    counter = _request_children.get(key)
    if counter is None:
        if len(_request_children) > _MAX_CACHED:
            _request_children.clear()
        counter = _request_children[key] = REQUESTS.labels(name, str(status))
    return counter


def _latency_child(name: str) -> Any:
    hist = _latency_children.get(name)
    if hist is None:
        hist = _latency_children[name] = REQUEST_SECONDS.labels(name)
    return hist


def _upstream_child(name: str) -> Any:
    hist = _upstream_children.get(name)
    if hist is None:
        hist = _upstream_children[name] = UPSTREAM_SECONDS.labels(name)
    return hist


def observe_request(route: str | None, status: int, seconds: float) -> None:
    name = route or "-"
    _BATCH.count(_request_child(name, status))
    _BATCH.observe(_latency_child(name), seconds)


_KIND = re.compile(r"^(?:allow|deny): (?:rule \d+ \S+ )?(?:not )?([a-z_]+)")


def reason_kind(reason: str) -> str:
    """``allow: rule 0 allow.or[3] domain is x`` -> ``domain``; bounded vocabulary."""
    if reason.startswith("deny: no allow rule matched"):
        if reason.endswith("(anonymous)"):
            return "anonymous"
        if reason.endswith("(email not verified)"):
            return "email_not_verified"
        return "no_match"
    if reason == "deny: route has no allow rule":
        return "no_allow_rule"
    match = _KIND.match(reason)
    return match.group(1)[:32] if match else "other"


_kinds: dict[str, str] = {}


def _decision_child(allow: bool, reason: str) -> Any:
    kind = _kinds.get(reason)
    if kind is None:
        if len(_kinds) > _MAX_CACHED:
            _kinds.clear()
        kind = _kinds[reason] = reason_kind(reason)
    key = (allow, kind)
    counter = _decision_children.get(key)
    if counter is None:
        counter = _decision_children[key] = DECISIONS.labels("allow" if allow else "deny", kind)
    return counter


def observe_decision(allow: bool, reason: str) -> None:
    _BATCH.count(_decision_child(allow, reason))


def observe_upstream(route: str, seconds: float) -> None:
    _BATCH.observe(_upstream_child(route), seconds)


def upstream_error(route: str, reason: str) -> None:
    # "upstream_error:ClientOSError" -> "upstream_error": the type names are unbounded.
    UPSTREAM_ERRORS.labels(route, reason.split(":", 1)[0]).inc()


def fast_path(served: bool) -> None:
    _BATCH.count(_FAST_SERVED if served else _FAST_HANDED)


def connection_returned() -> None:
    _BATCH.count(RETURNED)


def front_admitted(reason: str) -> None:
    """A request the front serves itself: ``fast_path(True)`` and the allow decision."""
    batch = _BATCH
    if batch.gathering():
        batch.admitted.append(reason)  # counted at the flush
    else:
        fast_path(True)
        observe_decision(True, reason)


def front_done(route: str, status: int, seconds: float, upstream_seconds: float) -> None:
    """The end of a request the front served: ``observe_upstream`` (when the upstream's
    head came, ``upstream_seconds`` >= 0) and ``observe_request`` in one call."""
    batch = _BATCH
    if batch.gathering():
        batch.done.append((route, status, seconds, upstream_seconds))  # counted at the flush
        return
    if upstream_seconds >= 0:
        observe_upstream(route, upstream_seconds)
    observe_request(route, status, seconds)


def websocket_opened() -> None:
    WEBSOCKETS.inc()


def websocket_closed() -> None:
    WEBSOCKETS.dec()


def idp_call(endpoint: str, outcome: str) -> None:
    IDP_CALLS.labels(endpoint, outcome).inc()


def session_refresh(ok: bool) -> None:
    SESSION_REFRESHES.labels("ok" if ok else "failed").inc()


def config_reload(ok: bool, generation: int) -> None:
    CONFIG_RELOADS.labels("ok" if ok else "failed").inc()
    CONFIG_GENERATION.set(generation)


def _endpoint(path: str) -> str:
    if path.endswith("/.well-known/openid-configuration"):
        return "discovery"
    last = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for name in (
        "token",
        "userinfo",
        "jwks",
        "certs",
        "keys",
        "revoke",
        "introspect",
        "end_session",
        "logout",
    ):
        if name in last:
            return "jwks" if name in ("certs", "keys") else name
    return "other"


def idp_trace() -> TraceConfig:
    """Counts every request made with the ClientSession it is attached to."""
    trace = TraceConfig()

    async def on_end(session: Any, context: Any, params: TraceRequestEndParams) -> None:
        status = params.response.status
        outcome = "ok" if status < 400 else f"http_{status // 100}xx"
        idp_call(_endpoint(params.url.path), outcome)

    async def on_error(session: Any, context: Any, params: TraceRequestExceptionParams) -> None:
        idp_call(_endpoint(params.url.path), "error")

    trace.on_request_end.append(on_end)
    trace.on_request_exception.append(on_error)
    return trace


def _registry() -> CollectorRegistry:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def metrics_app() -> web.Application:
    registry = _registry()

    async def metrics(request: web.Request) -> web.Response:
        flush()
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
