"""Continuous authorization of open WebSockets (and, through ``Runtime.reauthorizers``,
of the SSH door's connections: proxy/ssh_gate.py).

A WebSocket is authorized once, at the upgrade; after that it can live for hours.
These re-checks close it (code 1008, with a reason) when its session is signed out,
when the policy in force no longer allows it (after a reload, or once a time bound of
the verdict it was admitted with has passed: proxy/admission.py), or when its session
ends without a successful refresh.
"""

from __future__ import annotations

import time

import structlog

from proxy.admission import admit
from proxy.identity import refresh, to_identity
from proxy.runtime import Runtime
from proxy.websocket import POLICY_VIOLATION, LiveConnection

log = structlog.get_logger("clawgate.authz")


def _denial(runtime: Runtime, conn: LiveConnection, clock: float) -> str | None:
    """Why the policy in force would refuse ``conn`` now, or None if it still allows
    it (then ``conn.valid_until`` is how long that answer holds)."""
    snap = runtime.snapshot
    route = snap.table.match(conn.host, conn.path)
    if route is None:
        return "route removed"
    if not route.settings.allow_websockets:
        return "websockets no longer allowed on this route"
    session = conn.session
    if session is not None and runtime.refuses(session):
        return "signed out"  # a revoked API key included: its file changed with the reload
    identity = to_identity(session, snap.settings.idp_groups_claim) if session else None
    verdict = admit(route, session, identity, "GET", conn.path, conn.source_ip, clock)
    if not verdict.allow:
        return f"policy changed: {verdict.decision.reason}"
    conn.valid_until = verdict.valid_until
    return None


async def reauthorize_connections(runtime: Runtime) -> int:
    """After a config reload: close the connections the new policy refuses."""
    clock = time.time()
    closed = await runtime.registry.close_where(lambda conn: _denial(runtime, conn, clock))
    await _others(runtime)
    return closed


async def _others(runtime: Runtime) -> None:
    for reauthorize in runtime.reauthorizers:
        try:
            await reauthorize()
        except Exception:
            log.exception("reauthorize_failed")


async def _close(conn: LiveConnection, reason: str, logged: str | None = None) -> None:
    log.info("websocket_closed_by_clawgate", reason=logged or reason, user=conn.user)
    await conn.close(POLICY_VIOLATION, reason)


async def close_signed_out(runtime: Runtime) -> int:
    """Close, with 1008, the WebSockets whose session a sign-out now covers (the moment
    one arrives; the next sweep would find them within a second anyway)."""

    def covered(conn: LiveConnection) -> str | None:
        session = conn.session
        if session is None or conn.closing or not runtime.refuses(session):
            return None
        return "signed out"

    closed = await runtime.registry.close_where(covered)
    await _others(runtime)
    return closed


async def sweep_connections(runtime: Runtime) -> None:
    """Close what no longer holds: a revoked session (a sign-out that reached this
    process while the socket's handshake ran is caught here too), and connections
    whose verdict has run out and that the policy now refuses. Cheap: a lookup per
    connection, a decision only where the verdict's validity has ended."""
    clock = time.time()
    for conn in runtime.registry:
        if conn.closing:
            continue
        session = conn.session
        if session is not None and runtime.refuses(session):
            await _close(conn, "signed out")
            continue
        if session is not None and session.is_expired(int(clock)):
            await _close(conn, "session expired")
            continue
        # A session due for refresh is still decided here (its verdict ends at the
        # refresh time, so each pass asks again until sweep_sessions has refreshed it):
        # a time rule's bound must not wait for the refresh.
        if clock >= conn.valid_until:
            reason = _denial(runtime, conn, clock)
            if reason is not None:
                await _close(conn, reason)
    await _others(runtime)


async def sweep_sessions(runtime: Runtime) -> None:
    """Close connections whose session ended; refresh the ones that are due."""
    now = int(time.time())
    runtime.prune_revoked(now)
    for conn in runtime.registry:
        session = conn.session
        if session is None or conn.closing:
            continue
        if session.is_expired(now):
            await _close(conn, "session expired")
            continue
        if session.needs_refresh(now):
            updated = await refresh(runtime, session)
            if updated is None:
                await _close(conn, "session expired", "session refresh failed")
                continue
            conn.session = updated
            reason = _denial(runtime, conn, time.time())
            if reason is not None:
                await _close(conn, reason)
