"""Fixtures for the store tests: real redis-servers, started stores, what they delivered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from typing import Any, Protocol

import pytest
import structlog
from structlog.testing import capture_logs

from proxy.store import Revocation, RevocationKind, _redis
from proxy.store._redis import RedisStore
from tests.support.redis import RedisServer


class Seen:
    """What a store delivered to its handlers."""

    def __init__(self) -> None:
        self.revocations: list[Revocation] = []
        self.counts: list[tuple[str, dict[str, int]]] = []

    def on_revocation(self, revocation: Revocation) -> None:
        self.revocations.append(revocation)

    def on_counts(self, scope: str, counts: Mapping[str, int]) -> None:
        self.counts.append((scope, dict(counts)))

    def subjects(self) -> set[str]:
        return {r.subject for r in self.revocations}


async def eventually(
    condition: Callable[[], object], within: float = 5.0, what: str = "condition"
) -> float:
    """Wait until ``condition()`` is true; how long it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


class MakeStore(Protocol):
    def __call__(
        self, url: str, *, prefix: str = ..., start: bool = ..., wait_healthy: bool = ...
    ) -> Awaitable[tuple[RedisStore, Seen]]: ...


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server


@pytest.fixture
async def make_store() -> AsyncIterator[MakeStore]:
    made: list[RedisStore] = []

    async def make(
        url: str, *, prefix: str = "clawgate:", start: bool = True, wait_healthy: bool = True
    ) -> tuple[RedisStore, Seen]:
        store, seen = RedisStore(url, prefix=prefix), Seen()
        made.append(store)
        if start:
            await store.start(seen.on_revocation, seen.on_counts)
            if wait_healthy:
                await eventually(lambda: store.healthy, what="healthy")
        return store, seen

    yield make
    for store in made:
        await store.aclose()


@pytest.fixture
def store_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[MutableMapping[str, Any]]]:
    """The store's log lines. A fresh logger: the module's may have been cached with
    another configuration by an earlier test."""
    with capture_logs() as logs:
        monkeypatch.setattr(_redis, "log", structlog.get_logger("clawgate.store"))
        yield logs


def revocation(
    subject: str, *, kind: RevocationKind = "user", ttl: int = 300, not_before: int = 0
) -> Revocation:
    now = int(time.time())
    return Revocation(kind, subject, not_before or now, now + ttl)
