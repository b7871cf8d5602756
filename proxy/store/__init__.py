"""Shared state between the processes and replicas of one deployment.

What is shared: sign-outs (one session, every session of a user, or everyone's, issued
before a time), single-use sign-in state, a lock and a hand-over slot per refresh, and
what each replica admitted under the rate limits. The request path never waits on a
store: it reads the local view a store keeps current (``Runtime.revoked`` and the
throttle's buckets); stores are written and read off the request path, or, where a
request must wait (a sign-in callback, a refresh), with a short deadline.

Two backends behind one interface, chosen by ``databroker_storage_type``:

- ``memory``: this process alone (with ``workers: N``, proxy/peers.py carries sign-outs
  and counts between the workers of one machine, as before).
- ``redis``: every replica naming the same Redis and key prefix.

The code that uses a store knows only :class:`Store`, :class:`Revocation` and
:class:`StoreError`; :func:`open_store` picks the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

__all__ = [
    "CountsHandler",
    "Revocation",
    "RevocationHandler",
    "Store",
    "StoreError",
    "open_store",
]

RevocationKind = Literal["session", "user", "all", "provider_session"]


@dataclass(frozen=True)
class Revocation:
    """One sign-out.

    - ``session``: the session ``subject`` (its id) is refused.
    - ``user``: every session of the user ``subject`` (matched against the session's
      email and its ``sub``) issued before ``not_before`` is refused.
    - ``all``: every session issued before ``not_before`` is refused (``subject`` "").
    - ``provider_session``: every session signed in through the provider's session
      ``subject`` (its ``sid``, as a back-channel logout names it) is refused.

    ``until`` (epoch seconds) is when it stops mattering: no cookie it concerns can be
    valid past it, so a store may forget it then.
    """

    kind: RevocationKind
    subject: str
    not_before: int
    until: int

    def key(self) -> tuple[str, str]:
        """What a newer revocation of the same kind and subject replaces."""
        return (self.kind, self.subject)


class StoreError(Exception):
    """The store could not do what was asked in time (unreachable, refused, timed out)."""


RevocationHandler = Callable[[Revocation], None]
# (scope, {key: count}): what another process or replica admitted under a rate limit.
CountsHandler = Callable[[str, Mapping[str, int]], None]


class Store(Protocol):
    """The one interface to shared state; see the module docstring."""

    @property
    def backend(self) -> str:
        """``memory`` or ``redis``."""
        ...

    @property
    def healthy(self) -> bool:
        """False while the backend is unreachable: the local view may be stale."""
        ...

    async def start(self, on_revocation: RevocationHandler, on_counts: CountsHandler) -> None:
        """Connect, and from now on call ``on_revocation`` with every revocation in
        force (all of them at start and again after every reconnect, then each new one,
        this process's own included) and ``on_counts`` with the counts other processes
        charge. Handlers run in the event loop and must not block. Does not raise when
        the backend is down: it keeps trying and reports it through ``healthy``."""
        ...

    async def revoke(self, revocation: Revocation) -> None:
        """Record ``revocation`` for every process; raises StoreError if not recorded."""
        ...

    async def revocations(self) -> list[Revocation]:
        """Every revocation still in force (for ``clawgate sessions``)."""
        ...

    async def charge(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Tell the other processes what this one admitted, by scope and key. Losing a
        report makes limits lenient, never strict: it may be dropped when the backend is
        down (no error)."""
        ...

    async def consume_once(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is consumed within ``ttl`` seconds, anywhere;
        False after. Raises StoreError when that cannot be known."""
        ...

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` under ``key`` for ``ttl`` seconds."""
        ...

    async def get(self, key: str) -> bytes | None:
        ...

    def lock(self, name: str, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        """Hold ``name`` for at most ``ttl`` seconds, waiting at most ``wait`` for it;
        the context value says whether it is held (False: not got in time, or the
        store is down). Released on exit."""
        ...

    async def aclose(self) -> None:
        ...


def open_store(
    kind: str, connection_string: str | None, *, prefix: str, shared_dir: Path | None = None
) -> Store:
    """The store ``databroker_storage_type`` names (not started yet). ``shared_dir``:
    the private directory sibling workers of one machine share, if any (memory only)."""
    if kind == "memory":
        from proxy.store._memory import MemoryStore

        return MemoryStore(shared_dir)
    if kind == "redis":
        from proxy.store._redis import RedisStore

        if not connection_string:
            raise ValueError("the redis store needs a connection string")
        return RedisStore(connection_string, prefix=prefix)
    raise ValueError(f"unknown store {kind!r}")
