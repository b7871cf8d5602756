"""Several processes on one state directory: one orders, the others load; and the CA's
validation may reach a process that did not order."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from proxy.autocert import Autocert
from proxy.store._memory import MemoryStore
from tests.autocert.conftest import (
    MakeAutocert,
    Responders,
    Start,
    config_for,
    connect,
    events,
    eventually,
    pebble_calls,
)
from tests.support.pebble import Pebble

pytestmark = pytest.mark.timeout(60)


async def test_two_instances_racing_for_one_host_order_once(
    tmp_path: Path,
    pebble: Pebble,
    responders: Responders,
    spare: Responders,
    make_autocert: MakeAutocert,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    state = tmp_path / "state"
    one = make_autocert(state)
    two = make_autocert(state)
    # Pebble validates against `responders`, which only `one` answers for: if `two`
    # wins the race, its challenge must reach Pebble through `one`.
    responders.attach(one)
    spare.attach(two)
    # Started in the same loop turn: both find no certificate and no account.
    start(one, ["a.test"])
    start(two, ["a.test"])

    await eventually(lambda: one.healthy and two.healthy, 40, "both serving")

    assert pebble_calls(pebble, "POST /order-plz") == 1
    assert pebble_calls(pebble, "POST /sign-me-up") == 1
    assert len(events(logs, "autocert_order_created")) == 1
    assert len(events(logs, "autocert_certificate_obtained")) == 1
    assert len(events(logs, "autocert_certificate_loaded", host="a.test")) == 1
    assert len(events(logs, "autocert_account_registered")) == 1

    root = await pebble.root_pem()
    via_one = await connect(responders.tls_port, "a.test", root)
    via_two = await connect(spare.tls_port, "a.test", root)
    assert via_one.certificate == via_two.certificate
    await via_one.close()
    await via_two.close()
    assert {s.not_after for s in one.status()} == {s.not_after for s in two.status()}


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
async def test_challenge_answered_by_a_process_that_did_not_order(
    challenge: str,
    tmp_path: Path,
    pebble: Pebble,
    responders: Responders,
    make_autocert: MakeAutocert,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    state = tmp_path / "state"
    # The listeners Pebble reaches belong to `answering`, which wants no host at all;
    # `ordering` is on no listener. Only the shared challenges/ directory links them.
    answering = make_autocert(state)
    ordering = make_autocert(state, challenges=(challenge,))
    responders.attach(answering)
    start(answering, [])
    await asyncio.sleep(0.3)
    start(ordering, ["d.test"])

    await eventually(lambda: ordering.healthy, 30, "d.test obtained")
    [line] = events(logs, "autocert_certificate_obtained", host="d.test")
    assert line["challenge"] == challenge
    if challenge == "http-01":
        assert responders.http01_requests
    # `answering` picks up the certificate too, from the disk.
    await eventually(
        lambda: any(s.host == "d.test" and s.not_after for s in answering.status()),
        10,
        "loaded by the other process",
    )
    conn = await connect(responders.tls_port, "d.test", await pebble.root_pem())
    await conn.close()
    # Withdrawn everywhere after validation.
    await eventually(lambda: not answering._board.tls_alpn01, 2, "challenge withdrawn")
    assert not answering._board.http01
    assert not list((state / "challenges").rglob("*.*"))


async def test_the_shared_store_lock_is_held_around_an_order(
    tmp_path: Path,
    pebble: Pebble,
    responders: Responders,
    make_autocert: MakeAutocert,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    # Replicas that share the store but not a volume: flock cannot see the other one,
    # the store's lock must.
    store = MemoryStore()
    asked: list[tuple[str, float, float]] = []

    def recording(name: str, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        asked.append((name, ttl, wait))
        return store.lock(name, ttl, wait)

    def impatient(name: str, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        return store.lock(name, ttl, 0.05)

    first = Autocert(config_for(pebble, tmp_path / "one"), lock=recording)
    second = Autocert(config_for(pebble, tmp_path / "two"), lock=impatient)
    responders.attach(first)
    start(first, ["a.test"])
    await eventually(lambda: events(logs, "autocert_order_created"), 10, "first ordering")
    start(second, ["a.test"])
    await eventually(lambda: events(logs, "autocert_lock_busy"), 5, "second held off")
    await eventually(lambda: first.healthy, 30, "first obtained")

    assert len(events(logs, "autocert_order_created")) == 1
    [busy] = events(logs, "autocert_lock_busy")
    assert busy["host"] == "a.test" and busy["next_attempt"]
    [status] = second.status()
    assert status.last_error is None and status.next_attempt is not None
    [(name, ttl, wait)] = asked
    assert name.startswith("autocert:") and name.endswith(":a.test")
    assert ttl >= 300 and wait > 0
    await store.aclose()


def test_an_http01_token_is_answered_before_the_next_scan(tmp_path: Path) -> None:
    """The CA's request may reach a worker the moment the token is published, before
    that worker's scan of the challenge directory: it reads the file itself."""
    from proxy.autocert import AutocertConfig
    from proxy.autocert import _challenges as challenges

    config = AutocertConfig(directory_url="https://127.0.0.1:9/dir", state_dir=tmp_path / "s")
    publisher, other = Autocert(config), Autocert(config)
    token = "A" * 43
    assert other.http01(token) is None
    challenges.publish_http01(publisher._state, token, f"{token}.thumb")
    assert other.http01(token) == f"{token}.thumb"
    assert other.http01("../../etc/passwd") is None  # only well-formed tokens are looked up
    challenges.withdraw_http01(publisher._state, token)
    assert other.http01(token) is None
