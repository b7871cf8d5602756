"""Token-bucket rate limits, keyed by client address or user. Pure: no I/O, no clock.

Public surface:

- :class:`TokenBucket`: ``rate`` tokens per second, at most ``burst`` stored.
- :class:`KeyedLimiter`: one bucket per key with bounded memory; ``hit(key, now)``
  returns ``0.0`` when the request may pass, else the seconds until it would;
  ``spend(key, n, now)`` charges requests another worker admitted.
- :func:`address_key`: the key for a client address (IPv6 grouped by /64, because one
  host usually owns the whole /64 and could otherwise rotate through it).

Callers pass ``now`` (monotonic seconds) so every decision is deterministic in tests.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict

__all__ = ["MAX_DEBT_BURSTS", "KeyedLimiter", "TokenBucket", "address_key"]

# How far a bucket can be charged below empty by siblings' reports: as many bursts as
# there can be workers (settings.MAX_WORKERS; each may admit a burst before it hears of
# the others).
MAX_DEBT_BURSTS = 64


class TokenBucket:
    """``rate`` requests per second on average, ``burst`` at once."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now

    def take(self, now: float) -> float:
        """Spend one token: ``0.0`` if there was one, else seconds until there will be."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def spend(self, n: int, now: float) -> None:
        """Charge ``n`` requests admitted elsewhere (by a sibling worker). The bucket may
        go below zero and then refuses until the debt is refilled, so that over time the
        workers together admit ``rate``; never below ``-MAX_DEBT_BURSTS * burst``."""
        self._refill(now)
        self.tokens = max(self.tokens - n, -MAX_DEBT_BURSTS * self.burst)

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class KeyedLimiter:
    """A bucket per key, for at most ``max_keys`` keys.

    Idle buckets refill to full and are then indistinguishable from new ones, so
    pruning drops them. When an attacker spreads over more keys than fit, the least
    recently used bucket is evicted; that key starts over with a full burst, which
    bounds memory at the cost of some leniency towards that one key.
    """

    def __init__(self, rate: float, burst: int, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        TokenBucket(rate, burst, 0.0)  # validates
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def hit(self, key: str, now: float) -> float:
        return self._bucket(key, now).take(now)

    def spend(self, key: str, n: int, now: float) -> None:
        """Charge ``key`` with ``n`` requests admitted elsewhere (see TokenBucket.spend)."""
        self._bucket(key, now).spend(n, now)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self.prune(now)
                while len(self._buckets) >= self._max_keys:
                    self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def prune(self, now: float) -> int:
        """Drop buckets that have refilled completely; returns how many."""
        idle = [k for k, b in self._buckets.items() if b.full(now)]
        for key in idle:
            del self._buckets[key]
        return len(idle)


def retry_after_header(wait: float) -> str:
    """``Retry-After`` in whole seconds, never 0 (a 0 invites an instant retry storm)."""
    return str(max(1, math.ceil(wait)))


@functools.lru_cache(maxsize=16384)
def address_key(address: str) -> str:
    """The rate-limit key of a client address. Remembered for the addresses seen last:
    parsing one costs ~2 us, more than the rest of a limit check."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
