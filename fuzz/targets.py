"""The checks shared by the atheris targets and the hypothesis tests.

Each ``check_*`` takes untrusted input and raises AssertionError when the code under
test does anything but succeed or fail cleanly. "Cleanly" means: the module's own error
type (which the server turns into a 4xx page or a refused config), never another
exception (which would be a 500 or a crash) and never a result that grants anything.
"""

from __future__ import annotations

import json
from typing import Any

from policy.engine import Policy
from policy.parse import PolicyError, compile_route_policy
from policy.paths import UnsafePathError, normalize_path
from proxy.session import Session, SessionCodec, SessionError, parse_cookie_header
from proxy.settings import ConfigError, parse_settings

COOKIE = "__Host-_clawgate"
_SECRET = SessionCodec.parse_secret("8uXG7lJ9t1m1J3lq7h1a0kqB0Wm6o1Jb5zq4Jk2n1xQ=")
CODEC = SessionCodec([_SECRET], COOKIE, cache_size=0)


def check_cookie_header(header: str) -> None:
    """A Cookie header from anyone: no session, or SessionError; never a forged session."""
    cookies = parse_cookie_header(header, COOKIE)
    assert all(k.startswith(COOKIE) for k in cookies)
    try:
        session = CODEC.decode(cookies, host="127.0.0.1:8443", now=1_700_000_000)
    except SessionError as exc:
        assert exc.reason in {"malformed", "bad_key_or_tampered", "expired", "wrong_host",
                              "chunks_inconsistent", "too_large"}, exc.reason
        return
    # Without the secret no input can decrypt, so the only success is "no cookie".
    assert session is None, "a session was decoded from attacker input"
    try:
        CODEC.unseal("login-state", header[:9000], now=1_700_000_000)
    except SessionError:
        pass
    else:
        raise AssertionError("a login state was unsealed from attacker input")


def cookie_header_from(text: str) -> str:
    """Random text as the values of the session cookie and its chunks (NUL-separated), so
    fuzzing spends its time inside the decoder rather than on cookie names."""
    values = text.split("\x00")[:9]
    names = [COOKIE, *(f"{COOKIE}_{i}" for i in range(1, 9))]
    return "; ".join(f"{n}={v}" for n, v in zip(names, values, strict=False))


def check_session_roundtrip(session: Session, host: str) -> None:
    pairs = CODEC.encode(session)
    back = CODEC.decode(dict(pairs), host=session.host or host, now=session.issued_at)
    assert back == session


def check_config_text(text: str) -> None:
    """A config file's text: Settings, or ConfigError naming a place; nothing else."""
    from proxy.snapshot import build_snapshot

    try:
        settings, located = parse_settings(text, "fuzz.yaml")
        build_snapshot(settings, located, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


def check_route_policy(route: Any) -> None:
    """Any JSON-like route mapping: a Policy, or PolicyError with a key path."""
    if not isinstance(route, dict):
        route = {"policy": route}
    try:
        policy = compile_route_policy(route)
    except PolicyError as exc:
        assert isinstance(exc.loc, tuple)
        return
    assert isinstance(policy, Policy)


def check_path(raw: str) -> None:
    """Any request path: a canonical path, or UnsafePathError."""
    try:
        path = normalize_path(raw)
    except UnsafePathError:
        return
    assert path.startswith("/") and "//" not in path
    segments = path.split("/")[1:]
    assert "." not in segments and ".." not in segments
    assert "%2F" not in path.upper() and "\\" not in path and "%5C" not in path.upper()
    assert all(0x21 <= ord(c) <= 0x7E for c in path)
    assert normalize_path(path) == path, "not idempotent"


def as_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return data.decode("latin-1")
