"""Who owns the framing of a request: clawgate, never a header the client forwarded.

A request's body framing is what clawgate's own parser read (llhttp on the front,
aiohttp's parser on the handler path) and what clawgate will send: a length, chunked,
or no body. It is a value (:class:`Framing`), and the upstream request head is written
by one function, :func:`request_head_prefix` plus :func:`finish_head`, for both paths:
any ``Content-Length`` or ``Transfer-Encoding`` among the headers is dropped and the
framing line is written from the value. So no header the client sends, lists in
``Connection`` or spells oddly can make the upstream frame the body differently from
how clawgate forwards it.

``Connection`` is parsed here once (:func:`connection_options`) for every user of it.
A client may name its own end-to-end headers there to have them dropped, as RFC 9110
7.6.1 says; it may not name the framing headers (the request is refused with 400, as
Envoy and nginx refuse it: re-framing would hide the client's intent), and naming
``Host``, the upgrade headers or any header clawgate sets or strips itself changes
nothing (clawgate's own values are written regardless).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "CHUNKED",
    "NO_BODY",
    "ConnectionOptions",
    "Framing",
    "FramingError",
    "connection_options",
    "finish_head",
    "request_head",
    "request_head_prefix",
]


class FramingError(ValueError):
    """A request clawgate refuses to forward because its framing would be ambiguous.
    ``reason`` goes to the log and the 400 page."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Framing:
    """How the body clawgate forwards is delimited: ``length`` bytes, or chunked."""

    length: int
    chunked: bool = False

    @property
    def has_body(self) -> bool:
        return self.chunked or self.length > 0

    def line(self) -> str:
        """The one framing header line of the upstream head ('' for no body)."""
        if self.chunked:
            return "Transfer-Encoding: chunked"
        if self.length:
            return f"Content-Length: {self.length}"
        return ""


NO_BODY = Framing(0)
CHUNKED = Framing(0, chunked=True)

# Headers a Connection option may never remove: the request's framing (refused), the
# target's authority and the upgrade handshake (kept; clawgate writes or checks them).
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
_NOT_NOMINABLE = FRAMING_HEADERS | frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """What the ``Connection`` header says: close, keep-alive, upgrade, and the other
    headers it names (lower case, those a client may drop that way)."""

    close: bool
    keep_alive: bool
    upgrade: bool
    nominated: frozenset[str]


def connection_options(values: Iterable[str]) -> ConnectionOptions:
    """Parse every ``Connection`` header value; raises :class:`FramingError` when one
    names a framing header. Headers clawgate sets itself may be named: it writes its
    own values after the client's named headers are dropped (proxy/forward.py)."""
    close = keep_alive = upgrade = False
    nominated: set[str] = set()
    for value in values:
        for raw in value.split(","):
            option = raw.strip().lower()
            if not option:
                continue
            if option == "close":
                close = True
            elif option == "keep-alive":
                keep_alive = True
            elif option == "upgrade":
                upgrade = True
            elif option.replace("_", "-") in FRAMING_HEADERS:
                raise FramingError("connection_names_framing_header")
            elif option not in _NOT_NOMINABLE:
                nominated.add(option.replace("_", "-"))
    return ConnectionOptions(close, keep_alive, upgrade, frozenset(nominated))


def request_head_prefix(
    method: str, target: str, headers: Iterable[tuple[str, str]], framing: Framing
) -> bytes:
    """The upstream request head up to, not including, the request id line and the
    blank line that ends it. Framing headers among ``headers`` are dropped; the line
    from ``framing`` is written instead. Raises :class:`FramingError` for a name or
    value that would split the head (CR, LF, NUL) or a name that is not a token."""
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        lname = name.lower()
        if lname in FRAMING_HEADERS or lname == "x-request-id":
            continue
        if _TOKEN.fullmatch(name) is None:
            raise FramingError("bad_header_name")
        lines.append(f"{name}: {value}")
    framing_line = framing.line()
    if framing_line:
        lines.append(framing_line)
    text = "\r\n".join(lines) + "\r\n"
    # A CR, LF or NUL inside a name or value would split or smuggle a request (some
    # parsers end a line at a bare CR): refuse.
    if text.count("\n") != len(lines) or text.count("\r") != len(lines) or "\x00" in text:
        raise FramingError("bad_header_value")
    return text.encode("utf-8", "surrogateescape")


def finish_head(prefix: bytes, request_id: str | None) -> bytes:
    """The whole head: ``prefix``, clawgate's request id (always the last header),
    the blank line."""
    if request_id is None:
        return prefix + b"\r\n"
    return b"%sX-Request-Id: %s\r\n\r\n" % (prefix, request_id.encode("utf-8", "surrogateescape"))


def request_head(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    framing: Framing,
    request_id: str | None,
) -> bytes:
    """The upstream request head, whole (see :func:`request_head_prefix`)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return finish_head(request_head_prefix(method, target, items, framing), request_id)


# RFC 9110 5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
