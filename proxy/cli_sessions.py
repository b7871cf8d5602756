"""``clawgate sessions``: sign users out everywhere, and list the sign-outs in force.

``revoke --user EMAIL`` (or a subject) refuses every session of that user issued up to
now, ``--all`` everyone's, and closes their WebSockets with 1008. With the Redis store
the command writes to the store the config names, and every replica takes it from
there within a second. With the memory store it asks the running process group,
through its health listener, with a request signed by the cookie secret
(proxy/revoke_request.py). A "not before" time per user, not a list of session ids:
clawgate keeps no list of sessions, they live in cookies.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

from proxy.revoke_request import PATH, SIGNATURE_HEADER, sign
from proxy.settings import Settings
from proxy.store import Revocation, Store, StoreError, open_store

__all__ = ["add_sessions_commands"]


def _store(settings: Settings) -> Store | None:
    if settings.databroker_storage_type == "memory":
        print(
            "clawgate: sessions list needs the shared store (databroker_storage_type: "
            "redis): the memory store lives inside the running processes.",
            file=sys.stderr,
        )
        return None
    secret = settings.databroker_storage_connection_string
    return open_store(
        settings.databroker_storage_type,
        None if secret is None else secret.get_secret_value(),
        prefix=settings.databroker_storage_key_prefix,
    )


def _settings(config: str | None) -> Settings | None:
    from proxy.cli import load_or_report

    snapshot = load_or_report(config)
    return None if snapshot is None else snapshot.settings


async def _revoke(store: Store, revocation: Revocation) -> None:
    try:
        await store.revoke(revocation)
    finally:
        await store.aclose()


def cmd_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    now = int(time.time())
    # No cookie issued up to now outlives its lifetime (plus the IdP clock leeway).
    until = now + int(settings.cookie_expire) + int(settings.idp_clock_leeway) + 1
    if args.all:
        revocation = Revocation("all", "", now, until)
        who = "every user"
    else:
        user = args.user.strip()
        if not user:
            print("clawgate: --user needs an email or subject", file=sys.stderr)
            return 2
        revocation = Revocation("user", user, now, until)
        who = user
    if settings.databroker_storage_type == "memory":
        problem = _ask_running(settings, revocation, now)
        where = "by the running process group"
    else:
        store = _store(settings)
        assert store is not None
        try:
            asyncio.run(_revoke(store, revocation))
            problem = None
        except StoreError as exc:
            problem = str(exc)
        where = "everywhere"
    if problem is not None:
        print(f"clawgate: the sign-out was not recorded: {problem}", file=sys.stderr)
        return 1
    print(f"signed out {who}: sessions issued up to {_when(now)} are refused {where}")
    return 0


def _ask_running(settings: Settings, revocation: Revocation, now: int) -> str | None:
    """The memory store: ask the running clawgate through its health listener, with a
    request signed by the cookie secret (proxy/revoke_request.py). None when done."""
    if not settings.cookie_secret:
        return "no cookie_secret is configured, so the request cannot be signed"
    if not settings.health_address:
        return "health_address is off: the running clawgate cannot be reached"
    host, _, port = settings.health_address.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - a listener's address, not a bind
        host = "127.0.0.1"
    body, signature = sign(revocation, settings.cookie_secret[0].get_secret_value(), now)
    request = urllib.request.Request(
        f"http://{host}:{port}{PATH}",
        data=body,
        method="POST",
        headers={SIGNATURE_HEADER: signature, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            answer.read()
    except urllib.error.HTTPError as exc:
        return f"clawgate answered {exc.code}: {exc.read()[:200].decode(errors='replace')}"
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot reach the running clawgate at {host}:{port} ({exc})"
    return None


async def _list(store: Store) -> list[Revocation]:
    try:
        return await store.revocations()
    finally:
        await store.aclose()


def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if settings is None:
        return 2
    store = _store(settings)
    if store is None:
        return 2
    try:
        found = asyncio.run(_list(store))
    except StoreError as exc:
        print(f"clawgate: cannot read the store: {exc}", file=sys.stderr)
        return 1
    users = sorted((r for r in found if r.kind != "session"), key=lambda r: r.not_before)
    if args.user:
        users = [r for r in users if r.subject == args.user]
    sessions = sum(1 for r in found if r.kind == "session")
    for r in users:
        who = "everyone" if r.kind == "all" else r.subject
        print(f"{who}: sessions issued up to {_when(r.not_before)} refused "
              f"(until {_when(r.until)})")
    print(f"{sessions} single sessions signed out and still in force")
    return 0


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def add_sessions_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sessions = sub.add_parser("sessions", help="sign users out everywhere")
    commands = sessions.add_subparsers(dest="sessions_command", required=True)

    p = commands.add_parser("revoke", help="refuse every session of a user, or of everyone")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="email (or subject) of the user to sign out")
    who.add_argument("--all", action="store_true", help="sign everyone out")
    p.add_argument("--config")
    p.set_defaults(func=cmd_revoke)

    p = commands.add_parser("list", help="the sign-outs in force")
    p.add_argument("--user", help="only this user's")
    p.add_argument("--config")
    p.set_defaults(func=cmd_list)
