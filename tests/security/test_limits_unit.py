"""The pure pieces behind rate limits and connection caps."""

from __future__ import annotations

import pytest

from proxy.connlimit import ConnectionCounter
from proxy.ratelimit import KeyedLimiter, TokenBucket, address_key, retry_after_header


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0  # one token back after 1/rate seconds
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at burst
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


def test_keyed_limiter_separates_keys_and_bounds_memory() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=1, max_keys=3)
    assert limiter.hit("a", 0.0) == 0.0
    assert limiter.hit("a", 0.0) > 0
    assert limiter.hit("b", 0.0) == 0.0
    for key in ("c", "d", "e"):
        limiter.hit(key, 0.0)
    assert len(limiter) == 3
    assert limiter.prune(10.0) == 3 and len(limiter) == 0


def test_retry_after_is_whole_seconds_never_zero() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8::ffff:1", "2001:db8::/64"),
    ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("not an address", "not an address"),
])
def test_address_keys(address: str, key: str) -> None:
    assert address_key(address) == key


def test_connection_counter() -> None:
    counter = ConnectionCounter()
    assert counter.acquire("a", 2) and counter.acquire("a", 2)
    assert not counter.acquire("a", 2)
    assert counter.acquire("b", 2) and counter.total() == 3
    counter.release("a")
    assert counter.acquire("a", 2)
    counter.release("a")
    counter.release("a")
    counter.release("a")  # extra releases never go negative
    assert counter.count("a") == 0 and counter.acquire("x", None)
