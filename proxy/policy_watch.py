"""Continuous authorization of open WebSockets.

A WebSocket is authorized once, at the upgrade; after that it can live for hours.
These re-checks close it (code 1008, with a reason) when the policy in force no
longer allows it, or when its session ends without a successful refresh.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import structlog

from policy.model import RequestFacts
from proxy.identity import prune_shared_refreshes, refresh, to_identity
from proxy.runtime import Runtime
from proxy.websocket import POLICY_VIOLATION, LiveConnection

log = structlog.get_logger("clawgate.authz")


def _denial(runtime: Runtime, conn: LiveConnection) -> str | None:
    """Why the policy in force would refuse ``conn`` now, or None if it still allows it."""
    snap = runtime.snapshot
    route = snap.table.match(conn.host, conn.path)
    if route is None:
        return "route removed"
    if not route.settings.allow_websockets:
        return "websockets no longer allowed on this route"
    session = conn.session
    identity = to_identity(session, snap.settings.idp_groups_claim) if session else None
    facts = RequestFacts("GET", conn.path, conn.source_ip, datetime.now(UTC))
    decision = route.policy.decide(facts, identity)
    return None if decision.allow else f"policy changed: {decision.reason}"


async def reauthorize_connections(runtime: Runtime) -> int:
    """After a config reload: close the connections the new policy refuses."""
    return await runtime.registry.close_where(lambda conn: _denial(runtime, conn))


async def sweep_sessions(runtime: Runtime) -> None:
    """Close connections whose session ended; refresh the ones that are due."""
    now = int(time.time())
    runtime.prune_revoked(now)
    prune_shared_refreshes(runtime)
    for conn in runtime.registry:
        session = conn.session
        if session is None or conn.closing:
            continue
        if session.is_expired(now):
            log.info("websocket_closed_by_clawgate", reason="session expired", user=conn.user)
            await conn.close(POLICY_VIOLATION, "session expired")
            continue
        if session.needs_refresh(now):
            updated = await refresh(runtime, session)
            if updated is None:
                log.info(
                    "websocket_closed_by_clawgate", reason="session refresh failed", user=conn.user
                )
                await conn.close(POLICY_VIOLATION, "session expired")
                continue
            conn.session = updated
            reason = _denial(runtime, conn)
            if reason is not None:
                log.info("websocket_closed_by_clawgate", reason=reason, user=conn.user)
                await conn.close(POLICY_VIOLATION, reason)
