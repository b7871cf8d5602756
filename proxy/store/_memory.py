"""The ``memory`` store: shared state for this process (and its sibling workers).

Nothing leaves the machine, so nothing can fail: ``healthy`` is always True and
``charge`` has no one to tell (sibling workers exchange counts and sign-outs through
proxy/peers.py). Revocations are kept by :meth:`Revocation.key` until their
``until``; single-use keys and kept values until their deadline (monotonic clock);
locks are asyncio locks, one per name while anyone holds or waits for it.

With ``workers: N`` the supervisor gives the workers a private directory
(``shared_dir``, mode 0700): locks are then also ``flock``s on a file there and kept
values files there, so that one refresh token is spent by one worker of the machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from proxy.store import CountsHandler, Revocation, RevocationHandler

# How often expired single-use keys and values are swept (they are checked on every
# read anyway; the sweep only bounds memory).
_SWEEP_EVERY = 60.0
# Single-use keys kept at most; beyond, the oldest go first. They come from sign-ins,
# which are rate limited per address, so this is reached only under attack.
_MAX_ONCE = 100_000
# How often a worker waiting for a sibling's file lock looks again.
_FILE_LOCK_POLL = 0.02


@dataclass
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting: the entry goes when none are left
    holder: object | None = None
    expiry: asyncio.TimerHandle | None = None


class MemoryStore:
    """:class:`proxy.store.Store` within one process."""

    def __init__(self, shared_dir: Path | None = None) -> None:
        self._dir = shared_dir
        self._revocations: dict[tuple[str, str], Revocation] = {}
        self._on_revocation: RevocationHandler | None = None
        self._once: dict[str, float] = {}
        self._values: dict[str, tuple[bytes, float]] = {}
        self._locks: dict[str, _Lock] = {}
        self._swept = time.monotonic()

    @property
    def backend(self) -> str:
        return "memory"

    @property
    def healthy(self) -> bool:
        return True

    async def start(self, on_revocation: RevocationHandler, on_counts: CountsHandler) -> None:
        self._on_revocation = on_revocation
        for revocation in await self.revocations():
            on_revocation(revocation)

    async def revoke(self, revocation: Revocation) -> None:
        old = self._revocations.get(revocation.key())
        if old is not None:
            # Revoking less than before is never what a later sign-out means.
            revocation = Revocation(
                revocation.kind,
                revocation.subject,
                max(old.not_before, revocation.not_before),
                max(old.until, revocation.until),
            )
        self._revocations[revocation.key()] = revocation
        if self._on_revocation is not None and revocation.until > time.time():
            self._on_revocation(revocation)

    async def revocations(self) -> list[Revocation]:
        now = time.time()
        for key in [k for k, r in self._revocations.items() if r.until <= now]:
            del self._revocations[key]
        return list(self._revocations.values())

    async def charge(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        return None

    async def consume_once(self, key: str, ttl: float) -> bool:
        now = self._sweep()
        if self._once.get(key, 0.0) > now:
            return False
        self._once.pop(key, None)  # re-inserted last: insertion order is age
        self._once[key] = now + ttl
        while len(self._once) > _MAX_ONCE:
            del self._once[next(iter(self._once))]
        return True

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        self._values[key] = (value, self._sweep() + ttl)
        if self._dir is not None:
            doc = {"until": time.time() + ttl, "value": base64.b64encode(value).decode()}
            path = self._file("kv", key)
            tmp = path.with_suffix(".tmp")
            with contextlib.suppress(OSError):
                tmp.write_text(json.dumps(doc))
                os.replace(tmp, path)

    async def get(self, key: str) -> bytes | None:
        value, deadline = self._values.get(key, (None, 0.0))
        if deadline > time.monotonic():
            return value
        if self._dir is None:
            return None
        try:
            doc = json.loads(self._file("kv", key).read_text())
            if float(doc["until"]) <= time.time():
                return None
            return base64.b64decode(doc["value"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def lock(self, name: str, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        if self._dir is None:
            return self._hold(name, ttl, wait)
        return self._hold_file(name, ttl, wait)

    def _prune_files(self, max_age: float = 600.0) -> None:
        """Drop lock and value files no one can still want (values live at most ten
        minutes; a lock file is recreated by whoever needs it next)."""
        if self._dir is None:
            return
        cutoff = time.time() - max_age
        for path in self._dir.glob("store-*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def _file(self, kind: str, name: str) -> Path:
        assert self._dir is not None
        digest = hashlib.sha256(name.encode()).hexdigest()[:32]
        return self._dir / f"store-{kind}-{digest}"

    @contextlib.asynccontextmanager
    async def _hold_file(self, name: str, ttl: float, wait: float) -> AsyncIterator[bool]:
        """The process's own lock first (so its tasks queue here, not on the file),
        then a ``flock`` that sibling workers share; closing the file releases it."""
        async with self._hold(name, ttl, wait) as held:
            if not held:
                yield False
                return
            fd = os.open(self._file("lock", name), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                deadline = time.monotonic() + wait
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            yield False
                            return
                        await asyncio.sleep(_FILE_LOCK_POLL)
                yield True
            finally:
                os.close(fd)

    async def aclose(self) -> None:
        for entry in self._locks.values():
            if entry.expiry is not None:
                entry.expiry.cancel()
        self._on_revocation = None

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, ttl: float, wait: float) -> AsyncIterator[bool]:
        entry = self._locks.setdefault(name, _Lock())
        entry.users += 1
        token = object()
        try:
            try:
                async with asyncio.timeout(wait):
                    await entry.lock.acquire()
            except TimeoutError:
                yield False
                return
            entry.holder = token
            # As with a shared lock, a holder that overstays ``ttl`` loses it.
            entry.expiry = asyncio.get_running_loop().call_later(ttl, self._release, entry, token)
            try:
                yield True
            finally:
                self._release(entry, token)
        finally:
            entry.users -= 1
            if entry.users == 0 and self._locks.get(name) is entry:
                del self._locks[name]

    @staticmethod
    def _release(entry: _Lock, token: object) -> None:
        if entry.holder is not token:
            return  # expired already: someone else may hold it now
        entry.holder = None
        if entry.expiry is not None:
            entry.expiry.cancel()
            entry.expiry = None
        entry.lock.release()

    def _sweep(self) -> float:
        now = time.monotonic()
        if now - self._swept >= _SWEEP_EVERY:
            self._swept = now
            self._once = {k: t for k, t in self._once.items() if t > now}
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
            self._prune_files()
        return now
