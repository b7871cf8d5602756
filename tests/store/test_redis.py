"""The Redis store between replicas: two (or more) stores on one real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import pytest

from proxy.store import Revocation, _redis, open_store
from proxy.store._redis import RedisStore
from tests.store.conftest import MakeStore, eventually, revocation
from tests.support.redis import RedisServer


async def test_open_store_redis(redis_server: RedisServer) -> None:
    store = open_store("redis", redis_server.url, prefix="clawgate:")
    try:
        assert isinstance(store, RedisStore)
        assert store.backend == "redis"
        assert not store.healthy  # not started
    finally:
        await store.aclose()
        await store.aclose()  # idempotent


async def test_revocation_reaches_the_other_replica_within_a_second(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, a_seen = await make_store(redis_server.url)
    b, b_seen = await make_store(redis_server.url)
    assert a_seen.revocations == b_seen.revocations == []
    r = revocation("alice@example.com")
    await a.revoke(r)
    took = await eventually(lambda: r in b_seen.revocations, within=1.0, what="delivered to B")
    assert took < 1.0
    assert r in a_seen.revocations  # its own too
    assert await b.revocations() == [r]


async def test_replica_started_later_gets_what_is_in_force(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, _ = await make_store(redis_server.url)
    in_force = revocation("sid-1", kind="session")
    everyone = revocation("", kind="all")
    await a.revoke(in_force)
    await a.revoke(everyone)
    _b, b_seen = await make_store(redis_server.url)
    # Delivered while loading, before it says it is healthy.
    assert sorted(b_seen.revocations, key=lambda r: r.kind) == [everyone, in_force]


async def test_expired_revocations_are_never_delivered(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, a_seen = await make_store(redis_server.url)
    _b, b_seen = await make_store(redis_server.url)
    now = int(time.time())
    past = Revocation("user", "gone@example.com", now - 100, now - 1)
    soon = Revocation("user", "soon@example.com", now, now + 1)
    marker = revocation("marker@example.com")
    await a.revoke(past)
    await a.revoke(soon)
    await a.revoke(marker)
    await eventually(lambda: marker in b_seen.revocations, what="marker delivered")
    assert past not in b_seen.revocations and past not in a_seen.revocations
    assert soon in b_seen.revocations
    await asyncio.sleep(max(0.0, now + 1 - time.time()) + 0.05)
    assert {r.subject for r in await a.revocations()} == {"marker@example.com"}
    _c, c_seen = await make_store(redis_server.url)
    assert c_seen.revocations == [marker]


async def test_newer_revocation_for_the_same_user_replaces_the_older(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, _ = await make_store(redis_server.url)
    b, b_seen = await make_store(redis_server.url)
    now = int(time.time())
    older = Revocation("user", "bob@example.com", now - 60, now + 100)
    newer = Revocation("user", "bob@example.com", now, now + 200)
    session = Revocation("session", "bob@example.com", now, now + 50)
    for r in (older, newer, session):
        await a.revoke(r)
    await eventually(lambda: session in b_seen.revocations, what="all delivered")
    assert b_seen.revocations == [older, newer, session]
    assert sorted(await b.revocations(), key=lambda r: r.kind) == [session, newer]
    # A stale one arriving late (a replica's clock behind) narrows nothing.
    await a.revoke(Revocation("user", "bob@example.com", now - 120, now + 10))
    await eventually(lambda: len(b_seen.revocations) == 4, what="stale one delivered")
    assert b_seen.revocations[-1] == newer
    assert sorted(await b.revocations(), key=lambda r: r.kind) == [session, newer]
    assert await redis_server.command("HLEN", "clawgate:revocation:index") == 2
    assert await redis_server.command("ZCARD", "clawgate:revocations") == 2
    _c, c_seen = await make_store(redis_server.url)
    assert sorted(c_seen.revocations, key=lambda r: r.kind) == [session, newer]


async def test_prune_drops_past_revocations_and_their_index(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, _ = await make_store(redis_server.url, start=False)
    now = int(time.time())
    await a.revoke(Revocation("user", "old@example.com", now - 100, now - 1))
    await a.revoke(revocation("kept@example.com"))
    keys = ["clawgate:revocations", "clawgate:revocation:index"]
    assert await a._prune(keys=keys, args=[time.time()]) == 1
    assert await redis_server.command("ZCARD", "clawgate:revocations") == 1
    assert await redis_server.command("HKEYS", "clawgate:revocation:index") == [
        b'["user","kept@example.com"]'
    ]


async def test_stream_is_capped(
    redis_server: RedisServer, make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trimming with MAXLEN ~ drops whole nodes: small nodes make it show with few entries.
    await redis_server.command("CONFIG", "SET", "stream-node-max-entries", "2")
    monkeypatch.setattr(_redis, "STREAM_MAX", 4)
    a, _ = await make_store(redis_server.url, start=False)
    for i in range(20):
        await a.revoke(revocation(f"s{i}", kind="session"))
    assert 4 <= await redis_server.command("XLEN", "clawgate:events") <= 6
    assert await redis_server.command("ZCARD", "clawgate:revocations") == 20


async def test_consume_once_across_replicas(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, _ = await make_store(redis_server.url)
    b, _ = await make_store(redis_server.url)
    assert await a.consume_once("state-xyz", 0.3)
    assert not await b.consume_once("state-xyz", 0.3)
    assert not await a.consume_once("state-xyz", 0.3)
    await asyncio.sleep(0.35)
    assert await b.consume_once("state-xyz", 0.3)
    results = await asyncio.gather(*(s.consume_once("race", 5) for s in (a, b) * 10))
    assert results.count(True) == 1


async def test_put_on_one_get_on_another(redis_server: RedisServer, make_store: MakeStore) -> None:
    a, _ = await make_store(redis_server.url)
    b, _ = await make_store(redis_server.url)
    assert await b.get("handover") is None
    await a.put("handover", b"\x00tokens\xff", 0.3)
    assert await b.get("handover") == b"\x00tokens\xff"
    await asyncio.sleep(0.35)
    assert await b.get("handover") is None


async def test_lock_across_replicas_is_mutually_exclusive(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, _ = await make_store(redis_server.url)
    b, _ = await make_store(redis_server.url)
    async with a.lock("refresh:1", ttl=5, wait=0.5) as held:
        assert held
        started = time.monotonic()
        async with b.lock("refresh:1", ttl=5, wait=0.3) as other:
            assert not other
        assert 0.25 <= time.monotonic() - started < 1.5
        async with b.lock("refresh:2", ttl=5, wait=0.3) as another:
            assert another
    async with b.lock("refresh:1", ttl=5, wait=0.3) as after:
        assert after  # released on exit

    inside = most = got = 0

    async def worker(store: RedisStore) -> None:
        nonlocal inside, most, got
        async with store.lock("refresh:3", ttl=5, wait=5) as held:
            assert held
            got += 1
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(worker(s) for s in (a, b) * 4))
    assert (got, most) == (8, 1)


async def test_lock_expires_after_ttl(redis_server: RedisServer, make_store: MakeStore) -> None:
    a, _ = await make_store(redis_server.url)
    b, _ = await make_store(redis_server.url)
    first = a.lock("crashed", ttl=0.2, wait=0.1)
    assert await first.__aenter__()
    second = b.lock("crashed", ttl=5, wait=1)
    assert await second.__aenter__()  # the first overstayed its ttl
    await first.__aexit__(None, None, None)  # releases nothing: the lock is not its own
    async with a.lock("crashed", ttl=5, wait=0.1) as third:
        assert not third
    await second.__aexit__(None, None, None)
    async with a.lock("crashed", ttl=5, wait=0.1) as fourth:
        assert fourth


async def test_charge_reaches_the_others_only(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    a, a_seen = await make_store(redis_server.url)
    b, b_seen = await make_store(redis_server.url)
    await subscribed(redis_server, "clawgate:admitted", 2)
    await a.charge({"ip": {"192.0.2.1": 3, "192.0.2.2": 1}, "user": {"alice": 2}})
    await eventually(lambda: len(b_seen.counts) == 2, within=1.0, what="counts delivered")
    assert sorted(b_seen.counts) == [
        ("ip", {"192.0.2.1": 3, "192.0.2.2": 1}),
        ("user", {"alice": 2}),
    ]
    await b.charge({"ip": {"192.0.2.9": 1}})
    await eventually(lambda: a_seen.counts, within=1.0, what="B's counts at A")
    assert a_seen.counts == [("ip", {"192.0.2.9": 1})]
    assert len(b_seen.counts) == 2  # not its own
    await a.charge({})  # nothing to say
    await a.charge({"ip": {"192.0.2.1": 0}})  # nothing admitted
    await asyncio.sleep(0.1)
    assert len(b_seen.counts) == 2


async def test_malformed_counts_are_ignored_with_a_log_line(
    redis_server: RedisServer, make_store: MakeStore, store_logs: list[MutableMapping[str, Any]]
) -> None:
    _b, b_seen = await make_store(redis_server.url)
    await subscribed(redis_server, "clawgate:admitted", 1)
    malformed = [
        b"not json",
        b"[1,2]",
        b'{"from":"x"}',
        b'{"from":"x","counts":{"ip":{"k":-1}}}',
        b'{"from":"x","counts":{"ip":{"k":"3"}}}',
        b'{"from":"x","counts":{"ip":{"k":true}}}',
        b'{"from":"x","counts":{"ip":{"k":1.5}}}',
        b'{"from":"x","counts":{"ip":{"k":10000000}}}',
        b'{"from":"x","counts":{"ip":[1]}}',
        b'{"from":"x","counts":{"ip":{"' + b"k" * 5000 + b'":1}}}',
        b"\xff\xfe",
    ]
    for message in malformed:
        await redis_server.command("PUBLISH", "clawgate:admitted", message)
    await redis_server.command(
        "PUBLISH", "clawgate:admitted", b'{"from":"x","counts":{"ip":{"k":2}}}'
    )
    await eventually(lambda: b_seen.counts, within=1.0, what="the valid report")
    assert b_seen.counts == [("ip", {"k": 2})]
    ignored = [line for line in store_logs if line["event"] == "store_message_ignored"]
    assert len(ignored) == len(malformed)


async def test_prefixes_keep_deployments_apart(
    redis_server: RedisServer, make_store: MakeStore
) -> None:
    one_a, _one_a_seen = await make_store(redis_server.url, prefix="one:")
    _one_b, one_b_seen = await make_store(redis_server.url, prefix="one:")
    two, two_seen = await make_store(redis_server.url, prefix="two:")
    await subscribed(redis_server, "one:admitted", 2)
    await subscribed(redis_server, "two:admitted", 1)
    r = revocation("carol@example.com")
    await one_a.revoke(r)
    await one_a.charge({"ip": {"192.0.2.1": 1}})
    await eventually(lambda: r in one_b_seen.revocations and one_b_seen.counts, what="at one_b")
    await asyncio.sleep(0.1)
    assert two_seen.revocations == [] and two_seen.counts == []
    assert await two.revocations() == []
    assert await one_a.consume_once("k", 5) and await two.consume_once("k", 5)
    await one_a.put("v", b"1", 5)
    assert await two.get("v") is None
    _late, late_seen = await make_store(redis_server.url, prefix="two:")
    assert late_seen.revocations == []
    keys = await redis_server.command("KEYS", "*")
    assert keys and all(k.startswith((b"one:", b"two:")) for k in keys)


async def subscribed(server: RedisServer, channel: str, count: int) -> None:
    """Wait for ``count`` subscribers: a report published before is lost, as it should."""

    async def numsub() -> int:
        reply = await server.command("PUBSUB", "NUMSUB", channel)
        return int(reply[1])

    deadline = time.monotonic() + 5
    while await numsub() < count:
        assert time.monotonic() < deadline, f"{channel} has not {count} subscribers"
        await asyncio.sleep(0.01)
