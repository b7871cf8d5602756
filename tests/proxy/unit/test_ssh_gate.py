"""The SSH door's questions answered by a running clawgate (proxy/ssh_gate.py): route
choice, the decision and principal mapping, approvals answered once through the store,
remembered keys, and re-decisions of open connections."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import yaml

from proxy.ssh_gate import SshGate, answer, decide, find_route, load_pending
from proxy.runtime import Runtime
from proxy.session import Session
from proxy.settings import load_settings
from proxy.snapshot import build_snapshot
from proxy.ssh import Attempt, Grant, Refusal, SshRoute
from proxy.store import Revocation
from tests.support.gate import COOKIE_SECRET

HOST = "gate.example.com"
ALICE_ONLY = [{"allow": {"and": [{"email": {"is": "alice@example.com"}},
                                 {"ssh_username": {"in": ["claw", "ops"]}}]}}]  # fmt: skip


def runtime(tmp_path: Path, *ssh_routes: dict[str, Any]) -> Runtime:
    from proxy.ssh import init_ca

    init_ca(tmp_path / "user_ca", force=True)
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "address": "127.0.0.1:0",
                "cookie_secret": COOKIE_SECRET,
                "idp_provider_url": "http://127.0.0.1:9",
                "idp_client_id": "clawgate",
                "idp_client_secret": "unused",
                "ssh_address": "127.0.0.1:0",
                "ssh_user_ca_key_file": "user_ca",
                "routes": [
                    {"from": f"https://{HOST}", "to": "http://127.0.0.1:9",
                     "allow_any_authenticated_user": True},
                    *ssh_routes,
                ],
            }
        )
    )  # fmt: skip
    settings, located = load_settings(path)
    return Runtime(snapshot=build_snapshot(settings, located, str(path)), oidc=None)


def ssh_route(name: str = "openclaw", **keys: Any) -> dict[str, Any]:
    return {"from": f"ssh://{name}", "to": "ssh://10.0.0.5:22", "policy": ALICE_ONLY, **keys}


def session(email: str = "alice@example.com", **claims: Any) -> Session:
    now = int(time.time())
    return Session.create(
        sub=email.split("@")[0], email=email, email_verified=True, groups=[], claims=claims,
        host=HOST, now=now, lifetime=3600, refresh_at=now + 1800, refresh_token=None,
        id_token=None,
    )  # fmt: skip


def attempt(route: SshRoute, login: str = "claw", fp: str = "SHA256:abc") -> Attempt:
    return Attempt("attempt-1", route, login, fp, "ssh-ed25519 AAAA", "192.0.2.7")


def test_route_by_name_and_the_single_route_default(tmp_path: Path) -> None:
    one = SshGate(runtime(tmp_path, ssh_route()))
    chosen = one.route(None)
    assert isinstance(chosen, SshRoute) and chosen.name == "openclaw"
    assert chosen.upstream_host == "10.0.0.5" and chosen.upstream_port == 22
    assert not chosen.allow_port_forwarding and chosen.allow_pty
    unknown = one.route("nope")
    assert isinstance(unknown, Refusal) and "no SSH route named 'nope'" in unknown.message
    two = SshGate(runtime(tmp_path, ssh_route("a"), ssh_route("b")))
    ambiguous = two.route(None)
    assert isinstance(ambiguous, Refusal) and "routes: a, b" in ambiguous.message


def test_decision_and_principal_mapping(tmp_path: Path) -> None:
    rt = runtime(
        tmp_path,
        ssh_route("plain"),
        ssh_route("fixed", ssh_principal="node"),
        ssh_route("claimed", ssh_principal_claim="unix_logins"),
    )
    now = time.time()
    alice = session(unix_logins=["ops"])
    routes = {r.name: r for r in rt.snapshot.ssh_routes}
    grant, until = decide(rt, routes["plain"], alice, "claw", "192.0.2.7", now)
    assert isinstance(grant, Grant) and grant.principal == "claw"
    assert grant.key_id.startswith("clawgate:alice@example.com:session=")
    assert alice.sid not in grant.key_id and until <= alice.refresh_at
    fixed, _ = decide(rt, routes["fixed"], alice, "claw", "192.0.2.7", now)
    assert isinstance(fixed, Grant) and fixed.principal == "node"
    claimed, _ = decide(rt, routes["claimed"], alice, "ops", "192.0.2.7", now)
    assert isinstance(claimed, Grant) and claimed.principal == "ops"
    not_hers, _ = decide(rt, routes["claimed"], alice, "claw", "192.0.2.7", now)
    assert isinstance(not_hers, Refusal) and "not one of yours" in not_hers.message
    root, _ = decide(rt, routes["plain"], alice, "root", "192.0.2.7", now)
    assert isinstance(root, Refusal)
    assert root.message == "not allowed by policy for route plain"
    bob, _ = decide(rt, routes["plain"], session("bob@example.com"), "claw", "192.0.2.7", now)
    assert isinstance(bob, Refusal) and bob.message == "not allowed by policy for route plain"
    rt.apply(Revocation("session", alice.sid, alice.issued_at, alice.expires_at))
    signed_out, _ = decide(rt, routes["plain"], alice, "claw", "192.0.2.7", now)
    assert isinstance(signed_out, Refusal) and "signed out" in signed_out.message
    expired, _ = decide(rt, routes["plain"], session(), "claw", "192.0.2.7", time.time() + 7200)
    assert isinstance(expired, Refusal) and "expired" in expired.message


async def test_an_approval_answers_once_and_binds_the_key(tmp_path: Path) -> None:
    rt = runtime(tmp_path, ssh_route())
    gate = SshGate(rt)
    route = gate.route("openclaw")
    assert isinstance(route, SshRoute)
    tried = attempt(route)
    assert await gate.remembered(tried) is None
    url = await gate.begin_approval(tried)
    assert url.startswith(f"https://{HOST}/.clawgate/ssh/")
    code = url.rsplit("/", 1)[1]
    pending = await load_pending(rt, code)
    assert pending is not None
    assert (pending.route, pending.login, pending.key_fingerprint, pending.client_address) == (
        "openclaw", "claw", "SHA256:abc", "192.0.2.7",
    )  # fmt: skip
    alice = session()
    assert await answer(rt, code, session=alice, refusal=None)
    assert not await answer(rt, code, session=alice, refusal=None)  # replayed
    assert not await answer(rt, code, session=None, refusal=Refusal("x", "y"))
    assert await load_pending(rt, code) is None  # the link is spent
    granted = await gate.wait_approval(tried, 5)
    assert isinstance(granted, Grant) and granted.user == "alice@example.com"
    # The same key, on a new connection: no browser.
    again = await gate.remembered(attempt(route))
    assert isinstance(again, Grant)
    # Another key is not.
    assert await gate.remembered(attempt(route, fp="SHA256:other")) is None
    # Nothing readable in the store: the session is sealed.
    stored = await rt.store.get("ssh:k:SHA256:abc")
    assert stored is not None and b"alice" not in stored and alice.sid.encode() not in stored
    # Signed out: the remembered key no longer lets anyone in.
    rt.apply(Revocation("session", alice.sid, alice.issued_at, alice.expires_at))
    assert await gate.remembered(attempt(route)) is None


async def test_a_refusal_and_a_timeout(tmp_path: Path) -> None:
    rt = runtime(tmp_path, ssh_route())
    gate = SshGate(rt)
    route = gate.route(None)
    assert isinstance(route, SshRoute)
    tried = attempt(route)
    code = (await gate.begin_approval(tried)).rsplit("/", 1)[1]
    await answer(
        rt, code, session=None, refusal=Refusal("not allowed by policy for route openclaw", "r")
    )
    refused = await gate.wait_approval(tried, 5)
    assert isinstance(refused, Refusal) and refused.message.startswith("not allowed")
    await gate.begin_approval(tried)
    late = await gate.wait_approval(tried, 0.3)
    assert isinstance(late, Refusal) and "not approved in time" in late.message
    # No approval was begun for this attempt: nothing to wait for.
    stray = await gate.wait_approval(attempt(route, fp="SHA256:x"), 0.3)
    assert isinstance(stray, Refusal)
    assert find_route(rt.snapshot, "openclaw") is not None


async def test_an_answer_outlives_its_attempt_whatever_the_timeout(tmp_path: Path) -> None:
    rt = runtime(tmp_path, ssh_route())
    settings = rt.snapshot.settings.model_copy(update={"ssh_approval_timeout": 3600.0})
    rt.snapshot = dataclasses.replace(rt.snapshot, settings=settings)
    gate = SshGate(rt)
    route = gate.route(None)
    assert isinstance(route, SshRoute)
    code = (await gate.begin_approval(attempt(route))).rsplit("/", 1)[1]
    assert await answer(rt, code, session=session(), refusal=None)
    values = rt.store._values  # type: ignore[attr-defined]
    pending_until = values["ssh:p:" + code][1]
    answer_until = values["ssh:a:" + code][1]
    assert answer_until > pending_until
