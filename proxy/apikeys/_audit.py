"""What ``clawgate audit`` says about the API keys: long-lived or forgotten keys, and a
key file other users could read or change (whoever can write it can add a key)."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from proxy.apikeys._model import ApiKey

__all__ = ["MAX_AGE", "key_findings"]

MAX_AGE = timedelta(days=365)


def key_findings(
    path: Path, keys: Sequence[ApiKey], now: datetime
) -> list[tuple[str, str, str, str]]:
    """``(severity, key, message, fix)`` for each problem, the file's first."""
    out: list[tuple[str, str, str, str]] = []
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = None  # no file yet: no keys, nothing to expose
    if mode is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
        out.append(
            (
                "high",
                "api_keys_file",
                f"{path} is readable or writable by other users (mode {mode:o}): whoever "
                "can write it can add a key for any group, and the hashes it holds identify "
                "every service account",
                f"chmod 600 {path}",
            )
        )
    for key in keys:
        who = key.subject
        if key.expires is not None and now >= key.expires:
            # Useless but harmless; the other findings would only repeat the point.
            out.append(
                (
                    "low",
                    who,
                    f"API key {key.name!r} expired on {key.expires:%Y-%m-%d} and is still "
                    "listed",
                    f"clawgate apikey revoke {key.name}",
                )
            )
            continue
        if key.expires is None:
            out.append(
                (
                    "medium",
                    who,
                    f"API key {key.name!r} never expires: if it leaks it works until someone "
                    "notices",
                    f"replace it with one that expires: clawgate apikey create NEW-NAME "
                    f"--expires 90d, move the job to it, then clawgate apikey revoke {key.name}",
                )
            )
        if now - key.created > MAX_AGE:
            out.append(
                (
                    "medium",
                    who,
                    f"API key {key.name!r} was created on {key.created:%Y-%m-%d}, more than "
                    "a year ago",
                    f"rotate it: clawgate apikey create NEW-NAME --expires 90d, move the job "
                    f"to it, then clawgate apikey revoke {key.name}",
                )
            )
    return out
