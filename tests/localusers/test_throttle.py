"""Throttle: free mistakes, then doubling delays up to a cap, per IP and per user;
success clears; quiet keys are forgotten; memory is bounded."""

from __future__ import annotations

import pytest

from proxy.localusers import Throttle


def fail(throttle: Throttle, times: int, ip: str, user: str, now: float) -> None:
    for _ in range(times):
        throttle.failed(ip, user, now)


def test_free_tries_then_doubling_then_cap() -> None:
    throttle = Throttle(per_ip_free=3, per_user_free=3, base_delay=1.0, max_delay=10.0)
    fail(throttle, 3, "10.0.0.1", "alice", 100.0)
    assert throttle.wait("10.0.0.1", "alice", 100.0) == 0.0
    waits = []
    for _ in range(6):
        throttle.failed("10.0.0.1", "alice", 100.0)
        waits.append(throttle.wait("10.0.0.1", "alice", 100.0))
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    # The wait runs out with time.
    assert throttle.wait("10.0.0.1", "alice", 104.0) == 6.0
    assert throttle.wait("10.0.0.1", "alice", 110.0) == 0.0
    assert throttle.wait("10.0.0.1", "alice", 200.0) == 0.0


def test_defaults() -> None:
    throttle = Throttle()
    fail(throttle, 5, "10.0.0.1", "alice", 0.0)
    assert throttle.wait("10.0.0.1", "alice", 0.0) == 0.0
    throttle.failed("10.0.0.1", "alice", 0.0)
    assert throttle.wait("10.0.0.1", "alice", 0.0) == 1.0
    fail(throttle, 200, "10.0.0.1", "alice", 0.0)  # no overflow however many
    assert throttle.wait("10.0.0.1", "alice", 0.0) == 300.0


def test_success_clears_that_ip_and_that_user() -> None:
    throttle = Throttle(per_ip_free=0, per_user_free=0)
    fail(throttle, 4, "10.0.0.1", "alice", 0.0)
    fail(throttle, 4, "10.0.0.2", "bob", 0.0)
    throttle.succeeded("10.0.0.1", "alice")
    assert throttle.wait("10.0.0.1", "alice", 0.0) == 0.0
    assert throttle.wait("10.0.0.2", "bob", 0.0) == 8.0  # others keep theirs
    throttle.failed("10.0.0.1", "alice", 0.0)
    assert throttle.wait("10.0.0.1", "alice", 0.0) == 1.0  # counting started over


def test_per_ip_and_per_user_are_separate() -> None:
    throttle = Throttle(per_ip_free=2, per_user_free=5)
    # One address guessing many names: that address waits, a fresh one for a fresh name not.
    for n in range(4):
        throttle.failed("10.0.0.1", f"user{n}", 0.0)
    assert throttle.wait("10.0.0.1", "someone-else", 0.0) == 2.0
    assert throttle.wait("10.0.0.9", "user0", 0.0) == 0.0
    # Many addresses guessing one name: the name waits, from any address.
    for n in range(7):
        throttle.failed(f"10.1.0.{n}", "carol", 0.0)
    assert throttle.wait("10.2.0.1", "carol", 0.0) == 2.0
    assert throttle.wait("10.2.0.1", "dave", 0.0) == 0.0
    # The larger of the two waits.
    fail(throttle, 10, "10.3.0.1", "erin", 0.0)  # ip: 8 past free, user: 5 past free
    assert throttle.wait("10.3.0.1", "carol", 0.0) == 128.0
    assert throttle.wait("10.3.0.2", "erin", 0.0) == 16.0


def test_ipv6_by_prefix_and_names_without_case() -> None:
    throttle = Throttle(per_ip_free=0, per_user_free=0)
    throttle.failed("2001:db8::1", "x1", 0.0)
    throttle.failed("2001:db8::2", "x2", 0.0)
    assert throttle.wait("2001:db8::ffff", "x3", 0.0) == 2.0
    assert throttle.wait("2001:db8:0:1::1", "x3", 0.0) == 0.0
    throttle.failed("10.0.0.1", "Alice", 0.0)
    assert throttle.wait("10.0.0.2", "ALICE", 0.0) == 1.0


def test_forgotten_after_quiet_time() -> None:
    throttle = Throttle(per_ip_free=1, per_user_free=1, forget_after=900.0)
    fail(throttle, 4, "10.0.0.1", "alice", 0.0)
    assert throttle.wait("10.0.0.1", "alice", 0.0) == 4.0
    throttle.failed("10.0.0.2", "bob", 800.0)
    assert len(throttle) == 4
    throttle.failed("10.0.0.3", "carol", 900.0)  # alice and 10.0.0.1 are forgotten now
    assert len(throttle) == 4
    throttle.failed("10.0.0.1", "alice", 901.0)  # the first failure again: free
    assert throttle.wait("10.0.0.1", "alice", 901.0) == 0.0
    throttle.failed("10.0.0.1", "alice", 902.0)
    assert throttle.wait("10.0.0.1", "alice", 902.0) == 1.0
    # bob's failure at 800 is still remembered at 1699, not at 1700.
    throttle.failed("10.0.0.2", "bob", 1699.0)
    assert throttle.wait("10.0.0.2", "bob", 1699.0) == 1.0
    assert throttle.wait("10.0.0.2", "bob", 1699.0 + 900.0) == 0.0


def test_never_forgotten_while_waiting() -> None:
    throttle = Throttle(per_ip_free=0, per_user_free=0, max_delay=64.0, forget_after=10.0)
    fail(throttle, 7, "10.0.0.1", "alice", 0.0)
    assert throttle.wait("10.0.0.1", "alice", 0.0) == 64.0
    throttle.failed("10.0.0.2", "bob", 30.0)  # prunes what is old enough
    assert throttle.wait("10.0.0.1", "alice", 30.0) == 34.0


def test_bounded_memory() -> None:
    small = Throttle(max_keys=10)
    for n in range(100):
        small.failed(f"10.0.{n // 256}.{n % 256}", f"user{n}", float(n))
        assert len(small) <= 10
    # The most recent keys are the ones kept.
    fail(small, 10, "10.0.0.99", "user99", 100.0)
    assert small.wait("10.0.0.99", "user99", 100.0) > 0
    throttle = Throttle()
    for n in range(60_000):
        throttle.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", f"user{n}", 0.0)
    assert len(throttle) == 100_000


def test_invalid_settings() -> None:
    for kwargs in (
        {"per_ip_free": -1},
        {"base_delay": 0.0},
        {"base_delay": 10.0, "max_delay": 5.0},
        {"forget_after": 0.0},
        {"max_keys": 1},
    ):
        with pytest.raises(ValueError):
            Throttle(**kwargs)  # type: ignore[arg-type]
