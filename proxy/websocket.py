"""The registry of live proxied WebSockets, and what each one was admitted with.

Both request paths relay WebSockets with one raw relay (proxy/wsrelay.py), started
once the upstream has agreed to the upgrade, so a dead upstream is a 502 page rather
than a socket that opens and dies. The registry lets clawgate end connections it no
longer allows: on sign-out, when the policy changes or a verdict's validity ends,
when the session runs out (continuous authorization, proxy/policy_watch.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from proxy import metrics
from proxy.session import Session

log = structlog.get_logger("clawgate.websocket")

POLICY_VIOLATION = 1008
GOING_AWAY = 1001
# OpenClaw accepts frames up to 25 MiB (policy.maxPayload); anything larger is refused (1009).
MAX_MESSAGE = 32 * 1024 * 1024
# How long a clawgate-initiated close waits for the client's close reply before dropping TCP.
CLOSE_HANDSHAKE_TIMEOUT = 5.0
# When clawgate fails a client for a bad frame, how long it lets the upstream's answers
# to what came before (and its close reply) reach the client before the close goes out.
REFUSAL_DRAIN_TIMEOUT = 1.0


@dataclass(eq=False)
class LiveConnection:
    """One relayed WebSocket; ``close`` ends both sides with a code and reason.

    It keeps what it was admitted with (session, host, path, client address) so it
    can be re-authorized later without a request.

    ``close`` only asks: the relay (proxy/wsrelay.py) writes the close frames at frame
    boundaries and runs the closing handshake. A connection is registered before its
    upstream handshake, when no relay exists yet: a close asked then is kept
    (``closing``) and carried out as soon as the relay starts. ``closed`` is set once
    both sides are closed.
    """

    session: Session | None
    host: str
    path: str
    source_ip: str
    opened: float = field(default_factory=time.monotonic)
    # Until when its admission holds without asking the policy again (epoch seconds;
    # proxy/admission.py): the sweep re-decides it then (proxy/policy_watch.py).
    valid_until: float = float("inf")
    closing: bool = False
    close_code: int = POLICY_VIOLATION
    close_reason: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by the relay once it runs: how a close is carried out.
    closer: Callable[[int, str], None] | None = None
    # Called once both sides are closed (after ``closed`` is set), by the relay.
    on_closed: Callable[[], None] | None = None

    @property
    def sid(self) -> str | None:
        return self.session.sid if self.session is not None else None

    @property
    def user(self) -> str | None:
        if self.session is None:
            return None
        return self.session.email or self.session.sub

    async def close(self, code: int, reason: str) -> None:
        """Ask the relay to close the client with ``code`` (and the upstream with 1001);
        returns at once. Await ``closed`` to know it is done."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, reason
        if self.closer is not None:
            self.closer(code, reason)


class ConnectionRegistry:
    """Live proxied WebSockets, indexed by session id."""

    def __init__(self) -> None:
        self._all: set[LiveConnection] = set()
        self._by_sid: dict[str, set[LiveConnection]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[LiveConnection]:
        return iter(list(self._all))

    def add(self, conn: LiveConnection) -> None:
        if conn not in self._all:
            metrics.websocket_opened()
        self._all.add(conn)
        if conn.sid is not None:
            self._by_sid.setdefault(conn.sid, set()).add(conn)

    def discard(self, conn: LiveConnection) -> None:
        if conn in self._all:
            metrics.websocket_closed()
        self._all.discard(conn)
        if conn.sid is not None:
            peers = self._by_sid.get(conn.sid)
            if peers is not None:
                peers.discard(conn)
                if not peers:
                    del self._by_sid[conn.sid]

    async def close_session(self, sid: str, reason: str) -> int:
        conns = list(self._by_sid.get(sid, ()))
        for conn in conns:
            log.info("websocket_closed_by_clawgate", reason=reason, user=conn.user)
            await conn.close(POLICY_VIOLATION, reason)
        return len(conns)

    async def close_where(
        self, predicate: Callable[[LiveConnection], str | None], code: int = POLICY_VIOLATION
    ) -> int:
        """Close every connection for which ``predicate`` returns a reason."""
        closed = 0
        for conn in self:
            reason = predicate(conn)
            if reason is not None:
                log.info("websocket_closed_by_clawgate", reason=reason, user=conn.user)
                await conn.close(code, reason)
                closed += 1
        return closed

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection and wait (bounded) until their handshakes are done."""
        conns = list(self)
        await asyncio.gather(*(c.close(code, reason) for c in conns), return_exceptions=True)
        if conns:
            waiters = [asyncio.ensure_future(c.closed.wait()) for c in conns]
            _, late = await asyncio.wait(waiters, timeout=CLOSE_HANDSHAKE_TIMEOUT + 1)
            for waiter in late:
                waiter.cancel()
