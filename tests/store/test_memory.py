"""The memory store: one process's shared state."""

from __future__ import annotations

import asyncio
import time

from proxy.store import Revocation, open_store
from proxy.store._memory import MemoryStore
from tests.store.conftest import Seen, revocation


async def started() -> tuple[MemoryStore, Seen]:
    store, seen = MemoryStore(), Seen()
    await store.start(seen.on_revocation, seen.on_counts)
    return store, seen


async def test_open_store_memory() -> None:
    store = open_store("memory", None, prefix="clawgate:")
    assert store.backend == "memory"
    assert store.healthy
    assert isinstance(store, MemoryStore)


async def test_start_delivers_nothing_and_revoke_delivers_at_once() -> None:
    store, seen = await started()
    assert seen.revocations == []
    r = revocation("alice@example.com")
    await store.revoke(r)
    assert seen.revocations == [r]  # synchronously, before any other task ran
    assert await store.revocations() == [r]


async def test_newer_revocation_replaces_older_keeping_the_later_times() -> None:
    store, seen = await started()
    now = int(time.time())
    await store.revoke(Revocation("user", "bob", now - 10, now + 100))
    await store.revoke(Revocation("user", "bob", now, now + 200))
    await store.revoke(Revocation("session", "bob", now, now + 50))  # another key
    in_force = sorted(await store.revocations(), key=lambda r: r.kind)
    assert in_force == [
        Revocation("session", "bob", now, now + 50),
        Revocation("user", "bob", now, now + 200),
    ]
    # An older one arriving late widens nothing back.
    await store.revoke(Revocation("user", "bob", now - 50, now + 10))
    assert Revocation("user", "bob", now, now + 200) in await store.revocations()
    assert seen.revocations[-1] == Revocation("user", "bob", now, now + 200)


async def test_expired_revocations_are_pruned_and_not_delivered() -> None:
    store, seen = await started()
    now = int(time.time())
    await store.revoke(Revocation("all", "", now, now - 1))
    await store.revoke(Revocation("session", "s1", now, now + 1))
    assert seen.revocations == [Revocation("session", "s1", now, now + 1)]
    assert await store.revocations() == [Revocation("session", "s1", now, now + 1)]
    await asyncio.sleep(max(0.0, now + 1 - time.time()) + 0.05)
    assert await store.revocations() == []
    assert store._revocations == {}  # pruned, not only hidden
    late, late_seen = MemoryStore(), Seen()
    await late.start(late_seen.on_revocation, late_seen.on_counts)
    assert late_seen.revocations == []


async def test_consume_once_then_again_after_ttl() -> None:
    store, _ = await started()
    assert await store.consume_once("state-1", 0.2)
    assert not await store.consume_once("state-1", 0.2)
    assert await store.consume_once("state-2", 0.2)
    await asyncio.sleep(0.25)
    assert await store.consume_once("state-1", 0.2)


async def test_put_get_with_expiry() -> None:
    store, _ = await started()
    assert await store.get("k") is None
    await store.put("k", b"v1", 0.2)
    await store.put("k", b"v2", 0.2)
    assert await store.get("k") == b"v2"
    await asyncio.sleep(0.25)
    assert await store.get("k") is None


async def test_charge_does_nothing() -> None:
    store, seen = await started()
    await store.charge({"ip": {"192.0.2.1": 3}})
    assert seen.counts == []


async def test_lock_is_mutually_exclusive() -> None:
    store, _ = await started()
    inside = 0
    most = 0
    got = 0

    async def worker() -> None:
        nonlocal inside, most, got
        async with store.lock("refresh:abc", ttl=5, wait=5) as held:
            assert held
            got += 1
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(10)))
    assert (got, most) == (10, 1)
    assert store._locks == {}  # cleaned up when unused


async def test_lock_times_out_and_other_names_are_free() -> None:
    store, _ = await started()
    async with store.lock("a", ttl=5, wait=1) as held:
        assert held
        started_at = time.monotonic()
        async with store.lock("a", ttl=5, wait=0.1) as second:
            assert not second
        assert 0.09 <= time.monotonic() - started_at < 1
        async with store.lock("b", ttl=5, wait=0.1) as other:
            assert other
    async with store.lock("a", ttl=5, wait=0.1) as again:
        assert again
    assert store._locks == {}


async def test_lock_held_past_ttl_is_lost() -> None:
    store, _ = await started()
    first = store.lock("a", ttl=0.1, wait=1)
    assert await first.__aenter__()
    second = store.lock("a", ttl=5, wait=1)
    assert await second.__aenter__()  # the first overstayed its ttl
    await first.__aexit__(None, None, None)  # releases nothing: the lock is not its own
    async with store.lock("a", ttl=5, wait=0.1) as third:
        assert not third
    await second.__aexit__(None, None, None)
    async with store.lock("a", ttl=5, wait=0.1) as fourth:
        assert fourth
    assert store._locks == {}
    await store.aclose()
