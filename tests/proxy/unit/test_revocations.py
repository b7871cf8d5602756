"""The local view of sign-outs (``Runtime.refuses`` / ``Runtime.apply``): one session,
every session of a user issued up to a time, everyone's; and pruning."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.runtime import Runtime
from proxy.session import Session
from proxy.settings import load_settings
from proxy.snapshot import build_snapshot
from proxy.store import Revocation
from tests.support.gate import COOKIE_SECRET


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "cookie_secret": COOKIE_SECRET,
        "routes": [{"from": "https://a.example", "to": "http://127.0.0.1:1",
                    "allow_public_unauthenticated_access": True}],
    }))
    settings, located = load_settings(path)
    return Runtime(snapshot=build_snapshot(settings, located, str(path)), oidc=None)


def session(sub: str, email: str | None, issued: int) -> Session:
    return Session.create(
        sub=sub, email=email, email_verified=True, groups=(), claims={}, host="a.example",
        now=issued, lifetime=3600, refresh_at=issued + 1800, refresh_token=None, id_token=None,
    )


def test_one_session(runtime: Runtime) -> None:
    a, b = session("s1", "alice@example.com", 1000), session("s1", "alice@example.com", 1000)
    runtime.apply(Revocation("session", a.sid, 1000, 5000))
    assert runtime.refuses(a) and not runtime.refuses(b)


@pytest.mark.parametrize("subject", ["alice@example.com", "s1"])
def test_a_user_by_email_or_subject(runtime: Runtime, subject: str) -> None:
    before = session("s1", "alice@example.com", 1000)
    same_second = session("s1", "alice@example.com", 2000)
    after = session("s1", "alice@example.com", 2001)
    other = session("s2", "bob@example.com", 1000)
    runtime.apply(Revocation("user", subject, 2000, 9000))
    assert runtime.refuses(before) and runtime.refuses(same_second)  # fail closed
    assert not runtime.refuses(after)
    assert not runtime.refuses(other)


def test_everyone(runtime: Runtime) -> None:
    runtime.apply(Revocation("all", "", 2000, 9000))
    assert runtime.refuses(session("s2", None, 1500))
    assert not runtime.refuses(session("s2", None, 2500))


def test_later_mark_wins_whatever_the_order(runtime: Runtime) -> None:
    runtime.apply(Revocation("user", "s1", 3000, 9000))
    runtime.apply(Revocation("user", "s1", 2000, 8000))  # an older one arriving late
    assert runtime.refuses(session("s1", None, 2500))
    assert runtime.not_before["s1"] == (3000, 9000)


def test_pruned_once_no_cookie_can_outlive_them(runtime: Runtime) -> None:
    runtime.apply(Revocation("user", "s1", 3000, 9000))
    runtime.apply(Revocation("session", "sid", 0, 4000))
    runtime.prune_revoked(4000)
    assert "sid" not in runtime.revoked and "s1" in runtime.not_before
    runtime.prune_revoked(9000)
    assert not runtime.not_before
