"""``clawgate apikey``: create, list and revoke API keys (service accounts).

``create`` prints the new key once, on stdout and alone on its line, so a script can
capture it (``KEY=$(clawgate apikey create ci-bot --expires 90d)``); everything else goes
to stderr. Only the key's SHA-256 is written, to the file the config's ``api_keys_file``
names (relative to the config file's directory). The running clawgate re-reads that
file when it changes, so ``revoke`` takes effect within seconds and ends the key's open
WebSockets. ``list`` never prints a key or a hash.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.apikeys import (
    ApiKey,
    KeyFileError,
    RateLimit,
    format_rate,
    hash_key,
    load_key_file,
    new_key,
    normalize_route,
    parse_duration,
    parse_rate,
    route_matches,
    save_key_file,
)

if TYPE_CHECKING:
    from proxy.snapshot import Snapshot

__all__ = ["add_apikey_commands"]


def _fail(message: str, code: int = 2) -> int:
    print(f"clawgate: {message}", file=sys.stderr)
    return code


def _snapshot(config: str | None) -> Snapshot | None:
    from proxy.cli import load_or_report

    return load_or_report(config)


def _key_file(snapshot: Snapshot) -> Path | None:
    from proxy.snapshot import side_file

    # Resolved exactly as the server resolves it: relative to the config file's directory.
    path = side_file(snapshot.source, snapshot.settings.api_keys_file)
    if path is None:
        print(
            f"clawgate: {snapshot.source} does not set api_keys_file: add e.g. "
            "`api_keys_file: api_keys.yaml` (relative to the config file) to say where "
            "the API keys are kept",
            file=sys.stderr,
        )
        return None
    return path


def _keys_in_force(config: str | None) -> tuple[Snapshot, Path, list[ApiKey]] | None:
    """The config, its key file and the keys in it; None once the problem is reported."""
    snapshot = _snapshot(config)
    if snapshot is None:
        return None
    path = _key_file(snapshot)
    if path is None:
        return None
    keys = _load(path)
    if keys is None:
        return None
    return snapshot, path, keys


def _load(path: Path) -> list[ApiKey] | None:
    try:
        return load_key_file(path)
    except KeyFileError as exc:
        print(f"clawgate: {exc}", file=sys.stderr)
        return None


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "never"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _items(text: str | None, normalize: Callable[[str], str]) -> tuple[str, ...]:
    """``a,b`` as a tuple, each item checked, blanks and repeats dropped."""
    out: list[str] = []
    for part in (text or "").split(","):
        if part.strip():
            item = normalize(part.strip())
            if item not in out:
                out.append(item)
    return tuple(out)


def _route_hosts(snapshot: Snapshot) -> set[str]:
    """The hosts of the routes that accept API keys, as a key's ``routes`` names them."""
    hosts = set()
    for route in snapshot.routes:
        if route.settings.allow_api_keys:
            port = route.matcher.port
            hosts.add(route.matcher.host + (f":{port}" if port else ""))
    return hosts


def cmd_create(args: argparse.Namespace) -> int:
    key = new_key()
    # Whole seconds: what the file shows is exactly what is enforced.
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        lifetime: timedelta | None = None if args.expires is None else parse_duration(args.expires)
        rate: RateLimit | None = None if args.rate is None else parse_rate(args.rate)
        # The record checks the name, the groups and the routes.
        record = ApiKey(
            name=args.name,
            key_hash=hash_key(key),
            groups=_items(args.groups, str),
            created=now,
            expires=None if lifetime is None else now + lifetime,
            rate=rate,
            routes=_items(args.routes, normalize_route),
        )
    except ValueError as exc:
        return _fail(str(exc))
    found = _keys_in_force(args.config)
    if found is None:
        return 2
    snapshot, path, keys = found
    if any(k.name == args.name for k in keys):
        return _fail(
            f"{path} already has an API key named {args.name!r}: revoke it first "
            "(`clawgate apikey revoke NAME`) or choose another name"
        )
    try:
        save_key_file(path, [*keys, record])
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}", 1)
    # Written first, shown second: a key is never shown that the file does not hold.
    print(key, flush=True)
    print(
        f"created API key {record.name!r} (principal {record.subject}) in {path}; "
        f"expires: {_when(record.expires)}.\n"
        "This is the only time the key is shown: store it now (e.g. in the CI secret "
        "store). Only its hash is kept.",
        file=sys.stderr,
    )
    for note in _notes(snapshot, record):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _notes(snapshot: Snapshot, record: ApiKey) -> list[str]:
    notes = []
    if record.expires is None:
        notes.append("this key never expires (clawgate audit flags it); consider --expires 90d")
    hosts = _route_hosts(snapshot)
    if not hosts:
        notes.append(
            "no route says allow_api_keys: true, so the key is refused everywhere until one does"
        )
    else:
        for entry in record.routes:
            # Either way round: a host under a wildcard route, or a wildcard entry.
            if not any(route_matches(entry, h) or route_matches(h, entry) for h in hosts):
                notes.append(f"no route for {entry} allows API keys")
    return notes


def cmd_list(args: argparse.Namespace) -> int:
    found = _keys_in_force(args.config)
    if found is None:
        return 2
    _, path, keys = found
    if not keys:
        print(f"no API keys in {path}")
        return 0
    now = datetime.now(UTC)
    rows: list[tuple[str, ...]] = [("NAME", "GROUPS", "CREATED", "EXPIRES", "RATE", "ROUTES", "")]
    rows += [_row(k, now) for k in keys]
    print(_table(rows))
    return 0


def _row(key: ApiKey, now: datetime) -> tuple[str, ...]:
    # Never the hash: it is not secret enough to print for nothing, and a list is often
    # pasted into tickets and chats.
    return (
        key.name,
        ",".join(key.groups) or "-",
        _when(key.created),
        _when(key.expires),
        "-" if key.rate is None else format_rate(key.rate),
        ",".join(key.routes) or "any",
        "EXPIRED" if key.expired(now) else "",
    )


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def cmd_revoke(args: argparse.Namespace) -> int:
    found = _keys_in_force(args.config)
    if found is None:
        return 2
    _, path, keys = found
    kept = [k for k in keys if k.name != args.name]
    if len(kept) == len(keys):
        return _fail(f"{path} has no API key named {args.name!r}", 1)
    try:
        save_key_file(path, kept)
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}", 1)
    print(
        f"revoked API key {args.name!r}: the running clawgate refuses it, and closes its "
        f"WebSockets, as soon as it re-reads {path}"
    )
    return 0


def add_apikey_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apikey = sub.add_parser("apikey", help="API keys (service accounts) for scripts and CI")
    commands = apikey.add_subparsers(dest="apikey_command", required=True)

    p = commands.add_parser(
        "create", help="make a key: printed once on stdout, only its hash is kept"
    )
    p.add_argument("name", help="1 to 63 of a-z 0-9 . _ - (the principal is apikey:NAME)")
    p.add_argument("--groups", help="comma-separated groups the key's principal is in")
    p.add_argument(
        "--expires", help="lifetime: 30m (minutes), 12h, 90d, 2w, 1y; default: never"
    )
    p.add_argument("--rate", help="per-key limit: 10/s, 600/m, 5/s:20 (burst after the colon)")
    p.add_argument(
        "--routes",
        help="comma-separated route hosts the key may be used on (default: every route "
        "with allow_api_keys: true)",
    )
    p.add_argument("--config")
    p.set_defaults(func=cmd_create)

    p = commands.add_parser("list", help="the keys, without keys or hashes")
    p.add_argument("--config")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("revoke", help="remove a key; the running proxy refuses it at once")
    p.add_argument("name")
    p.add_argument("--config")
    p.set_defaults(func=cmd_revoke)
