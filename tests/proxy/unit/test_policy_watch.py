"""Continuous authorization (proxy/policy_watch.py): the every-second sweep of open
WebSockets against revocations and the validity of the verdicts they were admitted
with (proxy/admission.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from proxy.admission import admit, still_holds
from proxy.identity import to_identity
from proxy.policy_watch import sweep_connections
from proxy.runtime import Runtime
from proxy.session import Session
from proxy.settings import load_settings
from proxy.snapshot import Snapshot, build_snapshot
from proxy.websocket import LiveConnection
from tests.support.gate import COOKIE_SECRET

HOST = "gate.example.com"


def _snapshot(tmp_path: Path, policy: list[dict[str, Any]]) -> Snapshot:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "address": "127.0.0.1:0",
                "cookie_secret": COOKIE_SECRET,
                "idp_provider_url": "http://127.0.0.1:9",
                "idp_client_id": "clawgate",
                "idp_client_secret": "unused",
                "routes": [
                    {"from": f"https://{HOST}", "to": "http://127.0.0.1:9", "policy": policy,
                     "allow_websockets": True}
                ],
            }
        )
    )
    settings, located = load_settings(path)
    return build_snapshot(settings, located, str(path))


def _session(now: int) -> Session:
    return Session.create(
        sub="sub-alice", email="alice@example.com", email_verified=True, groups=[],
        claims={}, host=HOST, now=now, lifetime=3600, refresh_at=now + 1800,
        refresh_token=None, id_token=None,
    )


def _runtime(snapshot: Snapshot) -> Runtime:
    return Runtime(snapshot=snapshot, oidc=None)


def _conn(runtime: Runtime, session: Session, valid_until: float) -> LiveConnection:
    conn = LiveConnection(
        session=session, host=HOST, path="/ws", source_ip="10.0.0.1", valid_until=valid_until
    )
    runtime.registry.add(conn)
    return conn


ALICE = {"or": [{"email": {"is": "alice@example.com"}}]}


async def test_a_revoked_session_is_closed_by_the_next_sweep(tmp_path: Path) -> None:
    now = int(time.time())
    runtime = _runtime(_snapshot(tmp_path, [{"allow": ALICE}]))
    session = _session(now)
    kept = _conn(runtime, _session(now), float("inf"))
    conn = _conn(runtime, session, float("inf"))
    runtime.revoked[session.sid] = now + 3600
    await sweep_connections(runtime)
    assert conn.closing and conn.close_code == 1008 and conn.close_reason == "signed out"
    assert not kept.closing


async def test_a_verdict_past_its_validity_is_decided_again(tmp_path: Path) -> None:
    now = time.time()
    bound = datetime.fromtimestamp(int(now) + 2, UTC)
    policy = [
        {"allow": {"and": [{"email": {"is": "alice@example.com"}},
                           {"date": {"before": bound.isoformat()}}]}}
    ]
    runtime = _runtime(_snapshot(tmp_path, policy))
    session = _session(int(now))
    route = runtime.snapshot.routes[0]
    identity = to_identity(session, runtime.snapshot.settings.idp_groups_claim)
    verdict = admit(route, session, identity, "GET", "/ws", "10.0.0.1", now)
    assert verdict.allow and verdict.valid_until == bound.timestamp()
    conn = _conn(runtime, session, bound.timestamp())
    # Allowed until the bound, so the sweep does not even ask.
    runtime.snapshot = _snapshot(tmp_path, [{"deny": ALICE}, {"allow": ALICE}])
    await sweep_connections(runtime)
    assert not conn.closing
    # Past its validity it is decided again, by the policy in force.
    conn.valid_until = time.time() - 1
    await sweep_connections(runtime)
    assert conn.closing and conn.close_reason.startswith("policy changed: deny")


async def test_a_verdict_that_still_holds_gets_its_new_validity(tmp_path: Path) -> None:
    runtime = _runtime(_snapshot(tmp_path, [{"allow": ALICE}]))
    session = _session(int(time.time()))
    conn = _conn(runtime, session, time.time() - 1)
    await sweep_connections(runtime)
    assert not conn.closing
    # No time criterion: until the session's refresh time.
    assert conn.valid_until == session.refresh_at


def test_still_holds() -> None:
    session = _session(1000)

    def never(_: Session) -> bool:
        return False

    assert still_holds(2000.0, session, never, 1999.9)
    assert not still_holds(2000.0, session, never, 2000.0)
    assert not still_holds(2000.0, session, lambda s: s.sid == session.sid, 1500.0)
    assert still_holds(float("inf"), None, lambda _: True, 1e12)


async def test_a_time_bound_does_not_wait_for_a_due_refresh(tmp_path: Path) -> None:
    runtime = _runtime(_snapshot(tmp_path, [{"deny": ALICE}, {"allow": ALICE}]))
    now = int(time.time())
    session = Session.create(
        sub="sub-alice", email="alice@example.com", email_verified=True, groups=[],
        claims={}, host=HOST, now=now - 100, lifetime=3600, refresh_at=now - 1,
        refresh_token=None, id_token=None,
    )
    assert session.needs_refresh(now)
    conn = _conn(runtime, session, time.time() - 1)
    await sweep_connections(runtime)
    assert conn.closing and conn.close_reason.startswith("policy changed: deny")


async def test_an_expired_session_is_closed_by_the_next_sweep(tmp_path: Path) -> None:
    runtime = _runtime(_snapshot(tmp_path, [{"allow": ALICE}]))
    now = int(time.time())
    session = Session.create(
        sub="sub-alice", email="alice@example.com", email_verified=True, groups=[],
        claims={}, host=HOST, now=now - 3700, lifetime=3600, refresh_at=now - 1800,
        refresh_token=None, id_token=None,
    )
    conn = _conn(runtime, session, float("inf"))
    await sweep_connections(runtime)
    assert conn.closing and conn.close_reason == "session expired"
