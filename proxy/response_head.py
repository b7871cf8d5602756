"""The client's response head, written from the upstream's head bytes.

Used by the front for every response it relays and by both paths for the ``101`` of a
WebSocket upgrade (proxy/wsrelay.py): hop-by-hop headers and those the upstream's
``Connection`` names are dropped, a route's response headers applied as the handler
path applies them (proxy/forward.py), clawgate's request id added unless the upstream
or the route set one. llhttp has refused CR, LF and NUL in the upstream's bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from proxy.forward import DEFAULT_RESPONSE_HEADERS, HOP_BY_HOP

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Extras:
    """A route's response headers as bytes: ``overrides`` replace the upstream's,
    ``defaults`` (the security headers) only fill in what the upstream did not set."""

    __slots__ = ("defaults", "override_lines", "overrides", "source")

    def __init__(self, source: Mapping[str, str]) -> None:
        self.source = source
        self.overrides: set[bytes] = set()
        self.override_lines: list[bytes] = []
        self.defaults: list[tuple[bytes, bytes]] = []
        for name, value in source.items():
            line = f"{name}: {value}".encode("utf-8", "surrogateescape")
            lname = name.lower().encode("latin-1")
            if DEFAULT_RESPONSE_HEADERS.get(name) == value:
                self.defaults.append((lname, line))
            else:
                self.overrides.add(lname)
                self.override_lines.append(line)


_EXTRAS: dict[int, Extras] = {}


def extras_for(source: Mapping[str, str]) -> Extras:
    hit = _EXTRAS.get(id(source))
    if hit is None or hit.source is not source:
        if len(_EXTRAS) > 256:  # routes of configs no longer in force
            _EXTRAS.clear()
        hit = _EXTRAS[id(source)] = Extras(source)
    return hit


_HOP_BY_HOP = frozenset(h.encode() for h in HOP_BY_HOP)
NO_EXTRAS = Extras({})


def response_head_bytes(
    status: int,
    reason: bytes,
    raw: list[tuple[bytes, bytes]],
    extras: Extras,
    rid: str,
    *,
    chunked: bool,
    close: bool,
) -> bytes:
    """The client's response head, straight from the upstream's header bytes (llhttp
    has refused CR, LF and NUL in them): hop-by-hop headers and those the upstream's
    ``Connection`` names dropped, the route's headers applied as in forward.py."""
    prefix, needs_id = head_prefix(status, reason, raw, extras, chunked=chunked)
    return head_suffix(prefix, rid if needs_id else None, chunked=chunked, close=close)


def head_prefix(
    status: int,
    reason: bytes,
    raw: list[tuple[bytes, bytes]],
    extras: Extras,
    *,
    chunked: bool,
) -> tuple[bytes, bool]:
    """What of the client's head depends only on the upstream's head and the route: the
    status line and header lines, each ending in CRLF; and whether clawgate's request id
    is to be added (the upstream or the route may set their own)."""
    drop: frozenset[bytes] | set[bytes] = _HOP_BY_HOP
    for name, value in raw:
        if name.lower() == b"connection":
            drop = set(drop)
            drop.update(t.strip().lower() for t in value.split(b",") if t.strip())
    overrides = extras.overrides
    lines = [b"HTTP/1.1 %d %s" % (status, reason or _REASONS.get(status, b"Unknown"))]
    present: set[bytes] = set()
    for name, value in raw:
        lname = name.lower()
        if lname in drop or lname in overrides or (chunked and lname == b"content-length"):
            continue
        present.add(lname)
        lines.append(name + b": " + value)
    lines.extend(extras.override_lines)
    for lname, line in extras.defaults:
        if lname not in present:
            lines.append(line)
    lines.append(b"")
    needs_id = b"x-request-id" not in present and b"x-request-id" not in overrides
    return b"\r\n".join(lines), needs_id


def head_suffix(prefix: bytes, rid: str | None, *, chunked: bool, close: bool) -> bytes:
    if rid is not None and not chunked and not close:  # the usual keep-alive response
        return b"%sX-Request-Id: %s\r\n\r\n" % (prefix, rid.encode())
    parts = [prefix]
    if rid is not None:
        parts.append(b"X-Request-Id: %s\r\n" % rid.encode())
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
