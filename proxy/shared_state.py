"""What this instance shares through its store (proxy/store/), and takes from it.

- Sign-outs: one made here goes into the local view at once (``Runtime.apply``), to
  sibling workers (proxy/peers.py, through ``Runtime.revoke``) and to the store; one
  made anywhere else arrives from the store, goes into the local view, and closes the
  WebSockets it covers with 1008. Requests only ever read the local view.
- Rate-limit counts: what this instance admitted is reported to the store in batches,
  at most every ``REPORT_DELAY`` seconds, and what the others admitted is charged to
  this instance's buckets (proxy/throttle.py): a deployment-wide limit with no store
  round trip per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import structlog
from aiohttp import web

from proxy.policy_watch import close_signed_out
from proxy.runtime import Runtime
from proxy.store import Revocation, StoreError
from proxy.throttle import SCOPES, Throttle

log = structlog.get_logger("clawgate.store")

__all__ = ["REPORT_DELAY", "SHARED", "SharedState"]

REPORT_DELAY = 0.05


class SharedState:
    """Connects one runtime (and its throttle) to ``runtime.store``."""

    def __init__(self, runtime: Runtime, throttle: Throttle, *, share_counts: bool) -> None:
        self._runtime = runtime
        self._throttle = throttle
        self._share_counts = share_counts
        self._report_due: asyncio.TimerHandle | None = None
        # Tasks in flight (the loop keeps only weak references to tasks).
        self._pending: set[asyncio.Future[Any]] = set()
        # Sign-outs made here that the store did not take: in force here, and written
        # again once the store is back, so the other replicas reconcile.
        self._unsent: list[Revocation] = []

    async def start(self) -> None:
        if self._share_counts:
            self._throttle.share(self._report_soon)
        await self._runtime.store.start(self._arrived, self._charge)

    async def aclose(self) -> None:
        if self._report_due is not None:
            self._report_due.cancel()
        for task in list(self._pending):
            task.cancel()
        await self._runtime.store.aclose()

    # sign-outs

    async def sign_out(self, revocation: Revocation) -> bool:
        """A sign-out made here: in force here at once, then shared; False when the
        store did not take it (this process group still refuses the session)."""
        runtime = self._runtime
        runtime.revoke(revocation)
        self._close_covered(revocation)
        try:
            await runtime.store.revoke(revocation)
        except StoreError as exc:
            log.warning("sign_out_not_shared", kind=revocation.kind, detail=str(exc))
            self._unsent.append(revocation)
            return False
        return True

    async def flush(self) -> None:
        """Write the sign-outs the store missed, once it is reachable again."""
        if not self._unsent or not self._runtime.store.healthy:
            return
        now = time.time()
        unsent, self._unsent = self._unsent, []
        for index, revocation in enumerate(unsent):
            if revocation.until <= now:
                continue
            try:
                await self._runtime.store.revoke(revocation)
            except StoreError:
                self._unsent.extend(unsent[index:])
                return
            log.info("sign_out_shared_late", kind=revocation.kind)

    def _arrived(self, revocation: Revocation) -> None:
        runtime = self._runtime
        if revocation.until <= time.time():
            return
        runtime.apply(revocation)
        self._close_covered(revocation)

    def _close_covered(self, revocation: Revocation) -> None:
        task = asyncio.ensure_future(close_signed_out(self._runtime))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # rate-limit counts

    def _report_soon(self) -> None:
        if self._report_due is None:
            self._report_due = asyncio.get_running_loop().call_later(REPORT_DELAY, self._report)

    def _report(self) -> None:
        self._report_due = None
        counts = self._throttle.take_admitted()
        if not counts:
            return
        task = asyncio.ensure_future(self._runtime.store.charge(counts))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _charge(self, scope: str, counts: Mapping[str, int]) -> None:
        if scope not in SCOPES:
            return
        throttle = self._throttle
        # This instance may not have served a request yet: its limits are made from the
        # configuration in force on first use, here as on the request path.
        throttle.configure(self._runtime.snapshot.settings.rate_limits)
        throttle.charge(scope, counts, time.monotonic())


SHARED = web.AppKey("shared_state", SharedState)
