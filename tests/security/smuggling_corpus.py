"""Client byte sequences for tests/security/test_smuggling_differential.py.

Each :class:`Case` is what one client does on its own TLS connection(s): bytes to
write, pauses, waits for an interim response, a close. The gates' routes are for
``https://127.0.0.1`` (no port), so every request names ``Host: 127.0.0.1`` whatever
port the gate listens on. Bytes are templates in one respect: ``COOKIE`` is a
placeholder of fixed length for the signed-in session cookie (minted at run time),
which :func:`render` fills in padded to that same length, so every Content-Length and
chunk size computed here stays right.

A case also says what the client *meant*: the request heads it sent (target, the body
it intended when that is unambiguous), the statuses it may get back (when the right
answer is known) and byte strings that must never reach the upstream. Targets are
unique within a case; a request hidden inside a body always has a target under
``/ok/hidden-``, which no head ever uses.

Hand-written families come first; :func:`generated` adds sequences drawn by
hypothesis with a fixed seed (``derandomize``), so every run sees the same corpus.
(The seed derives from the drawing function's source: editing it or the strategies
draws a different, equally fixed, set.)
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

HOST: Final = b"127.0.0.1"
COOKIE_SLOT: Final = 1000
COOKIE: Final = b"@@COOKIE@@".ljust(COOKIE_SLOT, b"@")  # the session cookie, padded
ALICE: Final = "alice@example.com"

# Steps besides bytes (write) and floats (sleep for that many seconds).
WAIT: Final = "wait"  # until a response head (interim or final) arrives, at most 1 s
CLOSE: Final = "close"  # the client closes its connection
RECONNECT: Final = "reconnect"  # the client closes and opens a new connection
# Until this many final responses came on the connection, or it closed, at most 2 s:
# what a case checks after it then never depends on how fast the machine answers.
ANSWERED: Final = "answered:"

Step = bytes | float | str

# Forged values a client sends; none may ever reach the upstream.
FORGED: Final = ("attacker@evil", "forged")

LOOKALIKES: Final = (
    "X-Pomerium-Claim-Email",
    "X-Pomerium-Claim-Groups",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Auth-Request-Email",
    "X-Auth-Request-User",
    "Remote-User",
    "X-Remote-User",
    "X-Remote-Email",
    "X-Webauth-User",
)

# Behaviours of tests/support/recording_upstream.py, by path prefix; /refused is a
# route to a closed port, /slow one with a short timeout.
BEHAVIOURS: Final = (
    "ok",
    "early",
    "extra",
    "unsolicited",
    "reset",
    "slow",
    "refused",
    "upgrade-no",
)
# What the client gets for one (non-upgrade) request to each.
FIRST_STATUS: Final = {
    "ok": 200,
    "early": 404,
    "extra": 200,
    "unsolicited": 200,
    "reset": 502,
    "slow": 504,
    "refused": 502,
    "upgrade-no": 403,  # followed by a second response ("SMUGGLED") on the same bytes
}


@dataclass(frozen=True)
class Sent:
    """One request head the client sent."""

    method: str
    target: str
    # The body the client means when its framing is unambiguous (the upstream must
    # then get exactly this), None when the case is ambiguous on purpose.
    body: bytes | None = b""
    framing: str = "none"  # "none" | "length" | "chunked" | "?"


@dataclass(frozen=True)
class Case:
    family: str
    variant: str
    steps: tuple[Step, ...]
    sent: tuple[Sent, ...]
    # Allowed sequences of statuses (interim ones included), None: whatever both
    # paths agree on.
    expect: tuple[tuple[int, ...], ...] | None = None
    max_upstream: int | None = None  # at most this many messages may reach the upstream
    # Requests (by target) of which not one byte may reach the upstream.
    blocked: tuple[str, ...] = ()
    forbidden: tuple[bytes, ...] = ()  # never in any byte the upstream receives
    settle: float = 0.03  # quiet time after the last expected response
    # Final responses to wait for (on the last connection when the case reconnects);
    # default: one per head.
    responses: int | None = None
    note: str = ""
    # Whether the connection outlives a failed exchange depends on timing here (was the
    # body all in when the upstream failed?): the paths may differ only in serving, or
    # not, what came after it.
    race: bool = False

    @property
    def label(self) -> str:
        return f"{self.family}/{self.variant}"

    @property
    def targets(self) -> set[str]:
        return {s.target for s in self.sent}


# --- building blocks ---------------------------------------------------------------


def render(data: bytes, cookie: bytes) -> bytes:
    """``data`` with the session ``cookie`` (``name=value[; name_1=value...]``) in place
    of the placeholder, padded with a cookie of no meaning to the placeholder's length."""
    pad = COOKIE_SLOT - len(cookie) - len(b"; pad=")
    assert pad >= 0, f"the session cookie is longer than {COOKIE_SLOT} bytes"
    return data.replace(COOKIE, cookie + b"; pad=" + b"p" * pad)


def chunked(body: bytes, sizes: Sequence[int] = ()) -> bytes:
    """``body`` chunked (in pieces of ``sizes``, the rest in one), with the last chunk."""
    out, rest = bytearray(), body
    for n in [*sizes, len(body)]:
        piece, rest = rest[:n], rest[n:]
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
    return bytes(out + b"0\r\n\r\n")


def inner(tag: str, *, cookie: bool = True, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    """A complete request with forged identity headers, to be sent inside a body."""
    return (
        method
        + b" /ok/hidden-"
        + tag.encode()
        + b" HTTP/1.1\r\nHost: "
        + HOST
        + b"\r\n"
        + (b"Cookie: other=1; " + COOKIE + b"\r\n" if cookie else b"")
        + b"X-Pomerium-Jwt-Assertion: forged\r\nX-Pomerium-Claim-Email: attacker@evil\r\n"
        + extra
        + b"\r\n"
    )


class Builder:
    """Builds one case: requests appended in order, each with a unique target."""

    def __init__(self, family: str, variant: str) -> None:
        self.family = family
        self.variant = variant
        self.steps: list[Step] = []
        self.sent: list[Sent] = []
        self.tag = f"{family}-{variant}".replace("/", "-").replace(" ", "_")

    def target(self, behaviour: str, suffix: str = "") -> str:
        return f"/{behaviour}/{self.tag}-{len(self.sent)}{suffix}"

    def head(
        self,
        method: str = "GET",
        behaviour: str = "ok",
        lines: Iterable[bytes] = (),
        *,
        version: bytes = b"HTTP/1.1",
        host: bool = True,
        cookie: bool = True,
        eol: bytes = b"\r\n",
        target: str | None = None,
        body: bytes | None = b"",
        framing: str = "none",
    ) -> bytes:
        """A head (with ``lines`` after Host and Cookie) and the request it stands for."""
        target = target or self.target(behaviour)
        out = method.encode("latin-1") + b" " + target.encode() + b" " + version + eol
        if host:
            out += b"Host: " + HOST + eol
        if cookie:
            out += b"Cookie: other=1; " + COOKIE + eol
        for line in lines:
            out += line + eol
        self.sent.append(Sent(method, target, body, framing))
        return out + eol

    def request(
        self,
        method: str = "GET",
        behaviour: str = "ok",
        lines: Iterable[bytes] = (),
        body: bytes = b"",
        framing: str = "auto",
        **kw: Any,
    ) -> bytes:
        """A whole request; ``framing`` "length" or "chunked" adds the header and encodes
        ``body`` ("auto": length when there is a body)."""
        lines = list(lines)
        if framing == "auto":
            framing = "length" if body else "none"
        if framing == "length":
            lines.append(b"Content-Length: %d" % len(body))
            data = body
        elif framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            data = chunked(body)
        else:
            data = body
        return self.head(method, behaviour, lines, body=body, framing=framing, **kw) + data

    def raw(
        self,
        method: str,
        behaviour: str,
        lines: Iterable[bytes],
        data: bytes,
        body: bytes | None = None,
        **kw: Any,
    ) -> bytes:
        """A request whose framing is the case's point: ``data`` follows the head as
        is; ``body`` is what the client means, None when that is ambiguous."""
        return self.head(method, behaviour, lines, body=body, framing="?", **kw) + data

    def case(self, *steps: Step, **kw: Any) -> Case:
        return Case(self.family, self.variant, tuple(steps), tuple(self.sent), **kw)


def _expect(*seqs: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(seqs)


BAD: Final = _expect((400,))


def _then_get(first: Iterable[int], *, interim: bool = False) -> tuple[tuple[int, ...], ...]:
    """Any of ``first``, then 200 for the GET that follows; after a failure clawgate
    may close the connection instead. ``interim``: a 100 Continue may come first."""
    out: list[tuple[int, ...]] = []
    for status in first:
        for pre in ((), (100,)) if interim else ((),):
            out.append((*pre, status, 200))
            if status != 200:
                out.append((*pre, status))
    return tuple(out)


# A refused upgrade may come back as the upstream's 403 or as clawgate's own 502.
REFUSED_UPGRADE: Final = (403, 502)


# --- hand-written families ---------------------------------------------------------


def connection_names() -> list[Case]:
    """``Connection`` naming a framing, identity or host header."""
    cases = []
    framing_tokens = [
        "content-length",
        "Content-Length",
        "keep-alive, content-length",
        "transfer-encoding",
        "TRANSFER-ENCODING",
        "close, transfer-encoding",
    ]
    other_tokens = [
        "host",
        "x-pomerium-jwt-assertion",
        "x-pomerium-claim-email",
        "x-forwarded-for",
        "cookie",
        "x-request-id",
        "upgrade",
        "x-forwarded-host, x-forwarded-proto",
        "x-clawgate-groups",
    ]
    for token in framing_tokens + other_tokens:
        refused = token in framing_tokens
        conn = b"Connection: " + token.encode()
        name = token.replace(", ", "+")
        for shape in ("post-length", "post-chunked", "get"):
            b = Builder("connection-names", f"{name}/{shape}")
            if shape == "get":
                data = b.request("GET", "ok", [conn])
            else:
                framing = "length" if shape == "post-length" else "chunked"
                data = b.request("POST", "ok", [conn], inner(b.tag), framing)
                data += b.request("GET", "ok")
            if refused:
                # Refused with 400; the connection may go on after the body (read by
                # its framing and dropped) or close, but nothing of this request, its
                # body included, may reach the upstream.
                blocked = (b.sent[0].target, f"/ok/hidden-{b.tag}")
                expect = BAD if shape == "get" else _expect((400,), (400, 200))
                cases.append(b.case(data, expect=expect, blocked=blocked))
            else:
                cases.append(b.case(data, expect=_expect((200,) * len(b.sent))))
    return cases


def content_length() -> list[Case]:
    """Duplicate, conflicting and malformed Content-Length."""
    cases = []
    either = _expect((200, 200), (400,))
    body = b"hello"
    specs: list[
        tuple[str, list[bytes], bytes, bytes | None, tuple[tuple[int, ...], ...] | None]
    ] = [
        ("dup-same", [b"Content-Length: 5", b"Content-Length: 5"], body, None, either),
        ("list-same", [b"Content-Length: 5, 5"], body, None, either),
        ("list-differ", [b"Content-Length: 5, 6"], body + b"!", None, BAD),
        ("plus", [b"Content-Length: +5"], body, None, BAD),
        ("minus", [b"Content-Length: -5"], body, None, BAD),
        ("hex", [b"Content-Length: 0x5"], body, None, BAD),
        ("leading-zeros", [b"Content-Length: 0005"], body, body, either),
        ("inner-space", [b"Content-Length: 5 5"], body, None, BAD),
        ("ows", [b"Content-Length:   5   "], body, body, either),
        ("tab", [b"Content-Length:\t5\t"], body, body, either),
        ("huge", [b"Content-Length: 99999999999999999999999"], body, None, _expect((400,), (413,))),
        ("empty", [b"Content-Length: "], body, None, BAD),
        ("letters", [b"Content-Length: five"], body, None, BAD),
        ("obs-fold", [b"Content-Length: 0", b" 5"], body, None, BAD),
        ("fold-name", [b"X-Foo: bar", b" Content-Length: 5"], body, None, BAD),
    ]
    for variant, lines, data, means, expect in specs:
        b = Builder("content-length", variant)
        req = b.raw("POST", "ok", lines, data, means) + b.request("GET", "ok")
        cases.append(b.case(req, expect=expect))
    for variant, first, second in (("conflict-0-then-n", 0, 1), ("conflict-n-then-0", 1, 0)):
        b = Builder("content-length", variant)
        hidden = inner(b.tag)
        sizes = [0, len(hidden)]
        lines = [b"Content-Length: %d" % sizes[first], b"Content-Length: %d" % sizes[second]]
        req = b.raw("POST", "ok", lines, hidden) + b.request("GET", "ok")
        cases.append(b.case(req, expect=BAD))
    b = Builder("content-length", "underscore-name")
    hidden = inner(b.tag)
    req = b.raw("POST", "ok", [b"Content_Length: %d" % len(hidden)], b"")
    # Without a Content-Length the "body" is a request of its own: that is what the
    # client sent, so it counts as a head here.
    b.sent.append(Sent("GET", f"/ok/hidden-{b.tag}", b"", "none"))
    cases.append(b.case(req + hidden, note="Content_Length is not a framing header"))
    b = Builder("content-length", "longer-than-sent")
    req = b.raw("POST", "ok", [b"Content-Length: 20"], b"short")
    # The next connection's request must arrive on its own, never as the rest of a body.
    cases.append(
        b.case(req, 0.3, RECONNECT, b.request("GET", "ok"), responses=1, expect=_expect((200,)))
    )
    return cases


def cl_and_te() -> list[Case]:
    cases = []
    b = Builder("cl-te", "cl-then-te")
    hidden = inner(b.tag)
    cases.append(
        b.case(
            b.raw(
                "POST",
                "ok",
                [b"Content-Length: 4", b"Transfer-Encoding: chunked"],
                b"0\r\n\r\n" + hidden,
            ),
            expect=BAD,
            max_upstream=0,
        )
    )
    b = Builder("cl-te", "te-then-cl")
    hidden = inner(b.tag)
    cases.append(
        b.case(
            b.raw(
                "POST",
                "ok",
                [b"Transfer-Encoding: chunked", b"Content-Length: %d" % (len(hidden) + 5)],
                b"0\r\n\r\n" + hidden,
            ),
            expect=BAD,
            max_upstream=0,
        )
    )
    b = Builder("cl-te", "te-and-cl-0")
    hidden = inner(b.tag)
    cases.append(
        b.case(
            b.raw(
                "POST", "ok", [b"Transfer-Encoding: chunked", b"Content-Length: 0"], chunked(hidden)
            ),
            expect=BAD,
            max_upstream=0,
        )
    )
    b = Builder("cl-te", "cl-covers-chunked")
    body = chunked(b"hello")
    cases.append(
        b.case(
            b.raw(
                "POST",
                "ok",
                [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"],
                body,
            )
            + b.request("GET", "ok"),
            expect=BAD,
            max_upstream=0,
        )
    )
    b = Builder("cl-te", "te-identity-and-cl")
    cases.append(
        b.case(
            b.raw("POST", "ok", [b"Transfer-Encoding: identity", b"Content-Length: 5"], b"hello"),
            expect=_expect((400,), (501,)),
            max_upstream=0,
        )
    )
    b = Builder("cl-te", "http10-cl-te")
    hidden = inner(b.tag)
    cases.append(
        b.case(
            b.raw(
                "POST",
                "ok",
                [b"Connection: keep-alive", b"Content-Length: 5", b"Transfer-Encoding: chunked"],
                b"0\r\n\r\n" + hidden,
                version=b"HTTP/1.0",
            ),
            expect=BAD,
            max_upstream=0,
        )
    )
    b = Builder("cl-te", "cl-list-and-te")
    cases.append(
        b.case(
            b.raw(
                "POST",
                "ok",
                [b"Content-Length: 5, 5", b"Transfer-Encoding: chunked"],
                chunked(b"hello"),
            ),
            expect=BAD,
            max_upstream=0,
        )
    )
    return cases


def te_variants() -> list[Case]:
    """Transfer-Encoding spellings; the body is a chunked request with forged headers."""
    cases = []
    fine = _expect((200, 200), (400,))
    specs: list[tuple[str, list[bytes], bool, tuple[tuple[int, ...], ...] | None]] = [
        (
            "chunked-identity",
            [b"Transfer-Encoding: chunked, identity"],
            False,
            _expect((400,), (501,)),
        ),
        ("identity-chunked", [b"Transfer-Encoding: identity, chunked"], False, None),
        ("gzip-chunked", [b"Transfer-Encoding: gzip, chunked"], False, None),
        ("chunked-chunked", [b"Transfer-Encoding: chunked, chunked"], False, None),
        ("Chunked", [b"Transfer-Encoding: Chunked"], True, fine),
        ("CHUNKED", [b"Transfer-Encoding: CHUNKED"], True, fine),
        ("trailing-space", [b"Transfer-Encoding: chunked "], True, fine),
        ("trailing-tab", [b"Transfer-Encoding: chunked\t"], True, fine),
        ("leading-tab", [b"Transfer-Encoding:\tchunked"], True, fine),
        ("xchunked", [b"Transfer-Encoding: xchunked"], False, _expect((400,), (501,))),
        ("chunked-param", [b"Transfer-Encoding: chunked;q=1"], False, None),
        ("identity", [b"Transfer-Encoding: identity"], False, _expect((400,), (501,))),
        ("obs-fold-value", [b"Transfer-Encoding:", b" chunked"], False, BAD),
        ("obs-fold-list", [b"Transfer-Encoding: chunked", b" , identity"], False, BAD),
        (
            "twice-chunked-identity",
            [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
            False,
            None,
        ),
        (
            "twice-identity-chunked",
            [b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked"],
            False,
            None,
        ),
        (
            "twice-chunked",
            [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
            False,
            None,
        ),
        ("space-before-colon", [b"Transfer-Encoding : chunked"], False, BAD),
        ("underscore-name", [b"Transfer_Encoding: chunked"], False, None),
        ("vtab", [b"Transfer-Encoding: \x0bchunked"], False, BAD),
        ("nul", [b"Transfer-Encoding: chun\x00ked"], False, BAD),
        ("quoted", [b'Transfer-Encoding: "chunked"'], False, None),
    ]
    for variant, lines, valid, expect in specs:
        b = Builder("te-variants", variant)
        hidden = inner(b.tag)
        req = b.raw("POST", "ok", lines, chunked(hidden), hidden if valid else None)
        req += b.request("GET", "ok")
        cases.append(b.case(req, expect=expect))
    return cases


def chunks() -> list[Case]:
    """Valid Transfer-Encoding: chunked, then chunk streams valid and not."""
    cases = []
    hello = b"hello"
    specs: list[tuple[str, bytes, bytes | None, tuple[tuple[int, ...], ...] | None]] = [
        ("size-g", b"g\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("size-minus", b"-5\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("size-0x", b"0x5\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("size-plus", b"+5\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n", None, None),
        ("size-trailing-space", b"5 \r\nhello\r\n0\r\n\r\n", None, None),
        ("size-overflow", b"fffffffffffffffff5\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("size-leading-zeros", b"0005\r\nhello\r\n0000\r\n\r\n", hello, None),
        ("ext-token", b"5;a=b\r\nhello\r\n0\r\n\r\n", hello, None),
        ("ext-quoted", b'5;a="q v"\r\nhello\r\n0\r\n\r\n', hello, None),
        ("ext-bws", b"5 ;a=b\r\nhello\r\n0\r\n\r\n", None, None),
        ("ext-crlf-in-quote", b'5;a="x\r\ny"\r\nhello\r\n0\r\n\r\n', None, BAD),
        ("ext-nul", b"5;a\x00\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("ext-bare-lf", b"5;a\nb\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("size-bare-lf", b"5\nhello\r\n0\r\n\r\n", None, BAD),
        ("data-longer-than-size", b"3\r\nhello\r\n0\r\n\r\n", None, BAD),
        ("data-no-crlf", b"5\r\nhelloXX0\r\n\r\n", None, BAD),
        ("data-bare-lf", b"5\r\nhello\n0\r\n\r\n", None, BAD),
        ("last-bare-lf", b"5\r\nhello\r\n0\n\n", None, None),
        (
            "trailer-identity",
            b"5\r\nhello\r\n0\r\nX-Pomerium-Claim-Email: attacker@evil\r\n"
            b"X-Forwarded-User: forged\r\n\r\n",
            None,
            None,
        ),
        ("trailer-content-length", b"5\r\nhello\r\n0\r\nContent-Length: 44\r\n\r\n", None, None),
        ("trailer-te", b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n", None, None),
        ("trailer-bare-lf", b"5\r\nhello\r\n0\r\nX-A: b\n\r\n", None, None),
        ("many-small", b"".join(b"1\r\n%c\r\n" % c for c in hello) + b"0\r\n\r\n", hello, None),
    ]
    for variant, data, means, expect in specs:
        b = Builder("chunks", variant)
        req = b.raw("POST", "ok", [b"Transfer-Encoding: chunked"], data, means)
        req += b.request("GET", "ok")
        # Where the chunks are bad the right answer is a 4xx, but a streamed body may
        # fail after the head went upstream: only the upstream side is checked.
        cases.append(b.case(req, expect=None if expect == BAD else expect))
    return cases


def line_ends() -> list[Case]:
    cases = []
    eols = [
        ("bare-lf-everywhere", b"\n", None),
        ("cr-cr-lf", b"\r\r\n", None),
    ]
    for variant, eol, _ in eols:
        b = Builder("line-ends", variant)
        cases.append(b.case(b.head("GET", "ok", [b"X-A: b"], eol=eol) + b.request("GET", "ok")))
    raw_heads = {
        "bare-lf-one-header": b"GET {T} HTTP/1.1\r\nHost: {H}\r\nCookie: other=1; {C}\n"
        b"X-A: b\r\n\r\n",
        "bare-lf-terminator": b"GET {T} HTTP/1.1\r\nHost: {H}\r\nCookie: other=1; {C}\r\n\n",
        "lf-cr-lf-terminator": b"GET {T} HTTP/1.1\r\nHost: {H}\r\nCookie: other=1; {C}\n\r\n",
        "bare-cr-in-value": b"GET {T} HTTP/1.1\r\nHost: {H}\r\nCookie: other=1; {C}\r\n"
        b"X-A: b\rX-Pomerium-Claim-Email: attacker@evil\r\n\r\n",
        "bare-cr-request-line": b"GET {T}\rX-Pomerium-Claim-Email: attacker@evil HTTP/1.1\r\n"
        b"Host: {H}\r\nCookie: other=1; {C}\r\n\r\n",
        "lf-in-request-line": b"GET {T}\nX-Injected: 1 HTTP/1.1\r\nHost: {H}\r\n"
        b"Cookie: other=1; {C}\r\n\r\n",
    }
    for variant, template in raw_heads.items():
        b = Builder("line-ends", variant)
        target = b.target("ok")
        b.sent.append(Sent("GET", target, b"", "none"))
        data = template.replace(b"{T}", target.encode()).replace(b"{H}", HOST)
        data = data.replace(b"{C}", COOKIE)
        cases.append(b.case(data + b.request("GET", "ok")))
    for variant, eol in (("post-bare-lf-head", b"\n"), ("post-bare-lf-cl", None)):
        b = Builder("line-ends", variant)
        hidden = inner(b.tag)
        if eol:
            req = b.raw("POST", "ok", [b"Content-Length: %d" % len(hidden)], hidden, eol=eol)
        else:
            target = b.target("ok")
            b.sent.append(Sent("POST", target, None, "?"))
            req = (
                b"POST "
                + target.encode()
                + b" HTTP/1.1\r\nHost: "
                + HOST
                + b"\r\nCookie: other=1; "
                + COOKIE
                + b"\r\nX-A: b\nContent-Length: %d\r\n\r\n" % len(hidden)
                + hidden
            )
        cases.append(b.case(req + b.request("GET", "ok")))
    return cases


def control_bytes() -> list[Case]:
    cases = []
    specs = [
        ("nul-in-value", [b"X-A: b\x00c"]),
        ("nul-in-name", [b"X-\x00A: b"]),
        ("soh-in-value", [b"X-A: b\x01c"]),
        ("del-in-value", [b"X-A: b\x7fc"]),
        ("vtab-in-value", [b"X-A: b\x0bc"]),
        ("ff-in-cl", [b"Content-Length: 5\x0c"]),
        ("nul-after-cl", [b"Content-Length: 5\x00"]),
        ("esc-in-name", [b"X-\x1bA: b"]),
        ("obs-text-value", [b"X-A: caf\xe9 \xff"]),
        ("nul-before-identity", [b"X-A: \x00\r\nX-Pomerium-Claim-Email: attacker@evil"]),
    ]
    for variant, lines in specs:
        b = Builder("control-bytes", variant)
        body = b"hello" if any(b"Content-Length" in x for x in lines) else b""
        req = b.raw("POST" if body else "GET", "ok", lines, body, None)
        cases.append(
            b.case(req + b.request("GET", "ok"), expect=None if "obs-text" in variant else BAD)
        )
    for variant, target in (("nul-in-target", "/ok/x\x00y"), ("esc-in-target", "/ok/x\x1b[y")):
        b = Builder("control-bytes", variant)
        cases.append(
            b.case(
                b.head("GET", target=target) + b.request("GET", "ok"),
                expect=_expect((400,), (404,)),
            )
        )
    return cases


def space_before_colon() -> list[Case]:
    cases = []
    b = Builder("space-before-colon", "host")
    target = b.target("ok")
    b.sent.append(Sent("GET", target))
    cases.append(
        b.case(
            b"GET "
            + target.encode()
            + b" HTTP/1.1\r\nHost : "
            + HOST
            + b"\r\nCookie: other=1; "
            + COOKIE
            + b"\r\n\r\n",
            expect=BAD,
        )
    )
    for variant, lines, data in (
        ("content-length", [b"Content-Length : 5"], b"hello"),
        ("content-length-tab", [b"Content-Length\t: 5"], b"hello"),
        ("transfer-encoding", [b"Transfer-Encoding : chunked"], chunked(b"hello")),
        ("identity", [b"X-Pomerium-Claim-Email : attacker@evil"], b""),
        ("cookie", [b"Cookie : other=2"], b""),
        ("first-line-leading-space", [], b""),
    ):
        b = Builder("space-before-colon", variant)
        if variant == "first-line-leading-space":
            target = b.target("ok")
            b.sent.append(Sent("GET", target, b"", "?"))
            req = (
                b"GET " + target.encode() + b" HTTP/1.1\r\n X-Pomerium-Claim-Email: attacker@evil"
                b"\r\nHost: " + HOST + b"\r\nCookie: other=1; " + COOKIE + b"\r\n\r\n"
            )
            cases.append(b.case(req + b.request("GET", "ok")))
            continue
        req = b.raw("POST" if data else "GET", "ok", lines, data)
        cases.append(b.case(req + b.request("GET", "ok"), expect=BAD))
    return cases


def expect_continue() -> list[Case]:
    cases = []
    e100 = b"Expect: 100-continue"
    body = b"field=value-continue"
    b = Builder("expect-continue", "wait-then-body")
    cases.append(
        b.case(
            b.head(
                "POST", "ok", [e100, b"Content-Length: %d" % len(body)], body=body, framing="length"
            ),
            WAIT,
            body,
            expect=_expect((100, 200)),
        )
    )
    b = Builder("expect-continue", "case-100-Continue")
    cases.append(
        b.case(
            b.head(
                "POST",
                "ok",
                [b"Expect: 100-Continue", b"Content-Length: %d" % len(body)],
                body=body,
                framing="length",
            ),
            WAIT,
            body,
            expect=_expect((100, 200)),
        )
    )
    b = Builder("expect-continue", "chunked-wait-then-body")
    cases.append(
        b.case(
            b.head(
                "POST", "ok", [e100, b"Transfer-Encoding: chunked"], body=body, framing="chunked"
            ),
            WAIT,
            chunked(body),
            expect=_expect((100, 200)),
        )
    )
    b = Builder("expect-continue", "body-at-once")
    cases.append(
        b.case(
            b.request("POST", "ok", [e100], body) + b.request("GET", "ok"),
            expect=_expect((100, 200, 200), (200, 200)),
        )
    )
    b = Builder("expect-continue", "get-without-body")
    cases.append(
        b.case(
            b.request("GET", "ok", [e100]) + b.request("GET", "ok"),
            expect=_expect((200, 200), (100, 200, 200)),
        )
    )
    b = Builder("expect-continue", "content-length-0")
    cases.append(
        b.case(
            b.request("POST", "ok", [e100, b"Content-Length: 0"]),
            expect=_expect((200,), (100, 200)),
        )
    )
    b = Builder("expect-continue", "unknown-expectation")
    cases.append(
        b.case(
            b.request("POST", "ok", [b"Expect: 200-ok"], body),
            expect=_expect((417,)),
            max_upstream=0,
        )
    )
    for behaviour in ("refused", "slow", "early", "reset"):
        for wait in (True, False):
            b = Builder("expect-continue", f"{behaviour}-{'wait' if wait else 'no-wait'}")
            secret = f"BODY-OF-{b.tag}".encode()
            hidden = secret + b"&" + inner(b.tag)
            head = b.head(
                "POST",
                behaviour,
                [e100, b"Content-Length: %d" % len(hidden)],
                body=hidden,
                framing="length",
            )
            after = b.request("GET", "ok")
            allowed = _then_get((FIRST_STATUS[behaviour],), interim=True)
            steps: tuple[Step, ...] = (
                (head, WAIT, hidden + after) if wait else (head + hidden + after,)
            )
            cases.append(
                b.case(
                    *steps,
                    expect=allowed,
                    forbidden=(secret,) if behaviour == "refused" else (),
                    race=wait and behaviour != "slow",
                )
            )
    return cases


def http10() -> list[Case]:
    cases = []
    ka = b"Connection: keep-alive"
    b = Builder("http10", "keep-alive-get-twice")
    cases.append(
        b.case(
            b.request("GET", "ok", [ka], version=b"HTTP/1.0")
            + b.request("GET", "ok", [ka], version=b"HTTP/1.0"),
            expect=_expect((200, 200)),
        )
    )
    b = Builder("http10", "keep-alive-post-length")
    hidden = inner(b.tag)
    cases.append(
        b.case(
            b.request("POST", "ok", [ka], hidden, version=b"HTTP/1.0")
            + b.request("GET", "ok", [ka], version=b"HTTP/1.0"),
            expect=_expect((200, 200)),
        )
    )
    b = Builder("http10", "no-keep-alive-then-get")
    # The connection ends with the first answer; what follows is never a request. A 400
    # for the lot (llhttp: data after the end of a closing request) is as good.
    cases.append(
        b.case(
            b.request("GET", "ok", version=b"HTTP/1.0") + b.request("GET", "ok"),
            expect=_expect((200,), (400,)),
            max_upstream=1,
        )
    )
    b = Builder("http10", "chunked")
    hidden = inner(b.tag)
    cases.append(
        b.case(
            b.raw(
                "POST",
                "ok",
                [ka, b"Transfer-Encoding: chunked"],
                chunked(hidden),
                version=b"HTTP/1.0",
            )
            + b.request("GET", "ok", [ka], version=b"HTTP/1.0"),
            expect=BAD,
            max_upstream=0,
        )
    )
    b = Builder("http10", "post-without-length")
    # No length: the request has no body (RFC 9112 6.3), so what follows is a request.
    first = b.raw("POST", "ok", [ka], b"", b"", version=b"HTTP/1.0")
    b.sent.append(Sent("GET", f"/ok/hidden-{b.tag}", b"", "none"))
    cases.append(b.case(first + inner(b.tag), expect=_expect((200, 200))))
    b = Builder("http10", "expect-continue")
    cases.append(
        b.case(
            b.request("POST", "ok", [ka, b"Expect: 100-continue"], b"hello", version=b"HTTP/1.0"),
            expect=_expect((200,)),
        )
    )
    b = Builder("http10", "keep-alive-pipelined-bodies")
    cases.append(
        b.case(
            b"".join(
                b.request("PUT", "ok", [ka], b"body-%d" % i, version=b"HTTP/1.0") for i in range(3)
            ),
            expect=_expect((200, 200, 200)),
        )
    )
    return cases


def pipelined() -> list[Case]:
    cases = []
    b = Builder("pipelined", "two-posts-length-then-get")
    cases.append(
        b.case(
            b.request("POST", "ok", [], inner(b.tag + "a"))
            + b.request("POST", "ok", [], inner(b.tag + "b"))
            + b.request("GET", "ok"),
            expect=_expect((200, 200, 200)),
        )
    )
    b = Builder("pipelined", "three-chunked")
    cases.append(
        b.case(
            b"".join(
                b.request("POST", "ok", [], inner(b.tag + str(i)), "chunked") for i in range(3)
            ),
            expect=_expect((200, 200, 200)),
        )
    )
    b = Builder("pipelined", "mixed-framings")
    cases.append(
        b.case(
            b.request("POST", "ok", [], b"one")
            + b.request("PUT", "ok", [], b"two", "chunked")
            + b.request("PATCH", "ok", [], b"three")
            + b.request("DELETE", "ok")
            + b.request("GET", "ok"),
            expect=_expect((200,) * 5),
        )
    )
    for variant, method, body in (
        ("close-then-get", "GET", b""),
        ("close-post-then-get", "POST", b"a=1"),
    ):
        b = Builder("pipelined", variant)
        cases.append(
            b.case(
                b.request(method, "ok", [b"Connection: close"], body) + b.request("GET", "ok"),
                expect=_expect((200,), (400,)),
                max_upstream=1,
            )
        )
    b = Builder("pipelined", "post-head-get")
    cases.append(
        b.case(
            b.request("POST", "ok", [], b"x=1") + b.request("HEAD", "ok") + b.request("GET", "ok"),
            expect=_expect((200, 200, 200)),
        )
    )
    b = Builder("pipelined", "large-body-then-get")
    big = bytes(range(256)) * 1024
    cases.append(
        b.case(
            b.request("POST", "ok", [], big) + b.request("GET", "ok"), expect=_expect((200, 200))
        )
    )
    # Each upstream behaviour, then a plain GET on the same client connection.
    for behaviour in BEHAVIOURS:
        for shape in ("post-length", "post-chunked", "get"):
            b = Builder("behaviour-then-get", f"{behaviour}/{shape}")
            secret = f"BODY-OF-{b.tag}".encode()
            lines: list[bytes] = []
            if behaviour == "upgrade-no":
                lines = [
                    b"Connection: Upgrade",
                    b"Upgrade: websocket",
                    b"Sec-WebSocket-Version: 13",
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                ]
            if shape == "get":
                first = b.request("GET", behaviour, lines)
            else:
                first = b.request(
                    "POST",
                    behaviour,
                    lines,
                    secret + b"&a=1",
                    "length" if shape == "post-length" else "chunked",
                )
            status = FIRST_STATUS[behaviour]
            after = b.request("GET", "ok")
            steps: tuple[Step, ...] = (first + after,)
            # (lines: an upgrade request, whose refusal may also be clawgate's 502)
            settle = 0.03
            if behaviour == "unsolicited":
                settle = 0.2
            if behaviour == "upgrade-no" and shape == "get":
                steps = (first, WAIT, after)
            if not lines:
                allowed = _then_get((status,))
            elif shape == "get":
                allowed = _then_get(REFUSED_UPGRADE)
            else:  # an upgrade with a body: refused by clawgate (400) or by the upstream
                allowed = _then_get((400, *REFUSED_UPGRADE))
            cases.append(
                b.case(
                    *steps,
                    expect=allowed,
                    settle=settle,
                    forbidden=(secret,) if behaviour == "refused" else (),
                )
            )
    b = Builder("behaviour-then-get", "unsolicited/pause")
    cases.append(
        b.case(
            b.request("GET", "unsolicited"),
            # The pause starts once the answer is in, so the upstream's unsolicited
            # bytes (100 ms after its answer) are on the idle link before the next
            # request, however slowly a loaded machine answered.
            f"{ANSWERED}1",
            0.3,
            b.request("GET", "ok"),
            expect=_expect((200, 200)),
            settle=0.2,
        )
    )
    b = Builder("behaviour-then-get", "unsolicited/pause-post")
    cases.append(
        b.case(
            b.request("POST", "unsolicited", [], b"a=1"),
            f"{ANSWERED}1",
            0.3,
            b.request("POST", "ok", [], b"b=2"),
            expect=_expect((200, 200)),
            settle=0.2,
        )
    )
    b = Builder("behaviour-then-get", "early/large-body")
    cases.append(
        b.case(
            b.request("POST", "early", [], b"z" * 300_000) + b.request("GET", "ok"),
            expect=_expect((404, 200), (404,)),
        )
    )
    b = Builder("behaviour-then-get", "extra/pause")
    cases.append(
        b.case(b.request("GET", "extra"), 0.1, b.request("GET", "ok"), expect=_expect((200, 200)))
    )
    return cases


def get_body() -> list[Case]:
    cases = []
    for method, framing in (
        ("GET", "length"),
        ("GET", "chunked"),
        ("HEAD", "length"),
        ("DELETE", "length"),
        ("OPTIONS", "length"),
        ("GET", "zero"),
    ):
        b = Builder("body-on-get", f"{method}-{framing}")
        if framing == "zero":
            first = b.request(method, "ok", [b"Content-Length: 0"])
        else:
            first = b.request(method, "ok", [], inner(b.tag), framing)
        cases.append(b.case(first + b.request("GET", "ok"), expect=_expect((200, 200))))
    return cases


def compressed() -> list[Case]:
    cases = []
    text = b'{"message": "' + b"compress me " * 40 + b'"}'
    gz = gzip.compress(text, mtime=0)
    zl = zlib.compress(text)
    raw_deflate = zlib.compressobj(wbits=-15)
    rd = raw_deflate.compress(text) + raw_deflate.flush()
    # A gzip body whose plain text is a request with forged identity headers.
    for variant, encoding, data, framing, extra in (
        ("gzip-length", b"gzip", gz, "length", []),
        ("deflate-length", b"deflate", zl, "length", []),
        ("raw-deflate-length", b"deflate", rd, "length", []),
        ("gzip-chunked", b"gzip", gz, "chunked", []),
        ("GZIP-upper", b"GZIP", gz, "length", []),
        ("gzip-deflate-list", b"gzip, deflate", gzip.compress(zl, mtime=0), "length", []),
        ("gzip-with-expect", b"gzip", gz, "length", [b"Expect: 100-continue"]),
        ("gzip-inner-request", b"gzip", None, "length", []),
        ("gzip-inner-request-chunked", b"gzip", None, "chunked", []),
    ):
        b = Builder("compressed", variant)
        if data is None:
            data = gzip.compress(inner(b.tag), mtime=0)
        lines = [b"Content-Encoding: " + encoding, b"Content-Type: application/json", *extra]
        if extra:
            head = b.head(
                "POST",
                "ok",
                [*lines, b"Content-Length: %d" % len(data)],
                body=data,
                framing="length",
            )
            cases.append(b.case(head, WAIT, data, expect=_expect((100, 200))))
            continue
        cases.append(
            b.case(
                b.request("POST", "ok", lines, data, framing) + b.request("GET", "ok"),
                expect=_expect((200, 200)),
            )
        )
    return cases


def methods() -> list[Case]:
    cases = []
    for method in (
        "PROPFIND",
        "TRACE",
        "MKCOL",
        "COPY",
        "LOCK",
        "PURGE",
        "FOO",
        "get",
        "PATCH",
        "REPORT",
    ):
        b = Builder("methods", method)
        first = b.request(method, "ok", [b"Depth: 1"] if method == "PROPFIND" else [], inner(b.tag))
        cases.append(b.case(first + b.request("GET", "ok")))
    b = Builder("methods", "PROPFIND-chunked")
    cases.append(
        b.case(b.request("PROPFIND", "ok", [], inner(b.tag), "chunked") + b.request("GET", "ok"))
    )
    return cases


def short_body_then_close() -> list[Case]:
    cases = []
    for behaviour in ("ok", "slow", "early", "refused", "reset"):
        for framing in ("length", "chunked"):
            b = Builder("short-body-close", f"{behaviour}-{framing}")
            secret = f"PARTIAL-{b.tag}".encode()
            if framing == "length":
                head = b.head(
                    "POST", behaviour, [b"Content-Length: 1000"], body=None, framing="length"
                )
                partial = secret
            else:
                head = b.head(
                    "POST", behaviour, [b"Transfer-Encoding: chunked"], body=None, framing="chunked"
                )
                partial = b"3e8\r\n" + secret
            after = b.request("GET", "ok")
            # The second connection's GET must arrive on its own, never as the rest of
            # the first one's body.
            cases.append(
                b.case(
                    head + partial,
                    0.15,
                    RECONNECT,
                    after,
                    responses=1,
                    expect=_expect((200,), (FIRST_STATUS[behaviour], 200)),
                    forbidden=(secret,) if behaviour == "refused" else (),
                    # Whether an answer to the cut request reaches the client before it
                    # hangs up (0.15 s) is timing: each path is held to ``expect``.
                    race=True,
                )
            )
    return cases


def body_is_request() -> list[Case]:
    """A body that is itself a request with forged identity headers."""
    cases = []
    for behaviour in BEHAVIOURS:
        for framing in ("length", "chunked"):
            b = Builder("body-is-request", f"{behaviour}-{framing}")
            hidden = inner(b.tag)
            first = b.request("POST", behaviour, [], hidden, framing)
            status = FIRST_STATUS[behaviour]
            allowed = _then_get((status,))
            cases.append(
                b.case(
                    first + b.request("GET", "ok"),
                    expect=allowed,
                    settle=0.2 if behaviour == "unsolicited" else 0.03,
                    forbidden=(b"/ok/hidden-",) if behaviour == "refused" else (),
                )
            )
    variants = {
        "no-cookie": lambda t: inner(t, cookie=False),
        "post-with-body": lambda t: (
            inner(t, method=b"POST", extra=b"Content-Length: 5\r\n") + b"hello"
        ),
        "names-content-length": lambda t: inner(t, extra=b"Connection: content-length\r\n"),
        "two-requests": lambda t: inner(t + "a") + inner(t + "b"),
        "http10": lambda t: inner(t).replace(b"HTTP/1.1", b"HTTP/1.0"),
    }
    for variant, make in variants.items():
        b = Builder("body-is-request", variant)
        cases.append(
            b.case(
                b.request("POST", "ok", [], make(b.tag)) + b.request("GET", "ok"),
                expect=_expect((200, 200)),
            )
        )
    return cases


def _odd_case(name: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))


def lookalikes() -> list[Case]:
    cases = []
    for name in LOOKALIKES:
        b = Builder("lookalike", f"{name}/odd-case+underscore")
        lines = [
            f"{_odd_case(name)}: attacker@evil".encode(),
            f"{name.replace('-', '_')}: forged-{name}".encode(),
        ]
        cases.append(b.case(b.request("GET", "ok", lines), expect=_expect((200,))))
        b = Builder("lookalike", f"{name}/upper-underscore+plain-chunked")
        lines = [
            f"{name.upper().replace('-', '_')}: forged-admin".encode(),
            f"{name}: attacker@evil".encode(),
        ]
        cases.append(
            b.case(b.request("POST", "ok", lines, b"a=1", "chunked"), expect=_expect((200,)))
        )
    everything = [f"{n}: attacker@evil".encode() for n in LOOKALIKES]
    everything += [f"{n.lower().replace('-', '_')}: forged".encode() for n in LOOKALIKES]
    everything += [
        b"X_Pomerium_Jwt_Assertion: forged",
        b"x-pomerium-jwt-assertion: forged",
        b"X-Clawgate-Groups: forged",
        b"x_clawgate_groups: forged",
    ]
    for behaviour, method in (
        ("ok", "PROPFIND"),
        ("ok", "GET"),
        ("extra", "GET"),
        ("early", "POST"),
        ("unsolicited", "GET"),
        ("ok", "HEAD"),
    ):
        b = Builder("lookalike", f"all/{behaviour}-{method}")
        body = b"a=1" if method in ("POST", "PROPFIND") else b""
        cases.append(
            b.case(
                b.request(method, behaviour, everything, body),
                expect=_expect((FIRST_STATUS[behaviour],)),
                settle=0.2 if behaviour == "unsolicited" else 0.03,
            )
        )
    b = Builder("lookalike", "all/connection-named")
    names = b", ".join(n.lower().encode() for n in LOOKALIKES)
    cases.append(
        b.case(
            b.request("GET", "ok", [*everything, b"Connection: " + names]), expect=_expect((200,))
        )
    )
    return cases


def upgrades() -> list[Case]:
    cases = []
    ws = [
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]
    b = Builder("upgrade", "refused-upgrade-pipelined")
    cases.append(
        b.case(
            b.request("GET", "upgrade-no", ws) + b.request("GET", "ok"),
            expect=_then_get(REFUSED_UPGRADE),
        )
    )
    b = Builder("upgrade", "refused-upgrade-with-body")
    cases.append(
        b.case(
            b.request("GET", "upgrade-no", ws, b"hello"), WAIT, b.request("GET", "ok"), expect=None
        )
    )
    b = Builder("upgrade", "upgrade-answered-200")
    cases.append(
        b.case(
            b.request("GET", "ok", ws),
            WAIT,
            b.request("GET", "ok"),
            expect=_expect((200, 200), (200,), *_then_get((502,))),
        )
    )
    b = Builder("upgrade", "h2c")
    cases.append(
        b.case(
            b.request(
                "GET",
                "ok",
                [
                    b"Connection: Upgrade, HTTP2-Settings",
                    b"Upgrade: h2c",
                    b"HTTP2-Settings: AAMAAABkAAQAAP__",
                ],
            )
            + b.request("GET", "ok"),
            # An upgrade not done ends the connection: what follows is never read.
            expect=_expect((200,)),
        )
    )
    b = Builder("upgrade", "upgrade-without-connection")
    cases.append(
        b.case(
            b.request("GET", "upgrade-no", [b"Upgrade: websocket"]) + b.request("GET", "ok"),
            expect=_expect((403, 200), (403,)),
        )
    )
    b = Builder("upgrade", "websocket-post-body")
    cases.append(b.case(b.request("POST", "upgrade-no", ws, inner(b.tag)) + b.request("GET", "ok")))
    return cases


HAND_WRITTEN: Final = (
    connection_names,
    content_length,
    cl_and_te,
    te_variants,
    chunks,
    line_ends,
    control_bytes,
    space_before_colon,
    expect_continue,
    http10,
    pipelined,
    get_body,
    compressed,
    methods,
    short_body_then_close,
    body_is_request,
    lookalikes,
    upgrades,
)


# --- generated by hypothesis -------------------------------------------------------

_GEN_BEHAVIOURS = (
    "ok",
    "ok",
    "ok",
    "early",
    "extra",
    "unsolicited",
    "reset",
    "refused",
    "upgrade-no",
)
_GEN_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND")
_TE_VALUES = (
    b"chunked",
    b"Chunked",
    b"chunked ",
    b"chunked, identity",
    b"identity",
    b"xchunked",
    b"chunked\t",
    b" chunked",
)
_CONN_TOKENS = (
    "content-length",
    "transfer-encoding",
    "host",
    "cookie",
    "x-request-id",
    "x-pomerium-jwt-assertion",
    "x-forwarded-for",
    "upgrade",
    "keep-alive",
    "x-pomerium-claim-email",
    "te",
    "trailer",
)


def _spell(name: str, style: int) -> str:
    return [
        name,
        name.lower(),
        name.upper(),
        _odd_case(name),
        name.replace("-", "_"),
        name.lower().replace("-", "_"),
    ][style]


@st.composite
def _request(draw: st.DrawFn, b: Builder) -> tuple[bytes, str]:
    method = draw(st.sampled_from(_GEN_METHODS))
    behaviour = draw(st.sampled_from(_GEN_BEHAVIOURS))
    lines: list[bytes] = []
    clean = True  # the framing stays unambiguous
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("lookalike", "connection", "forged", "expect", "plain")))
        if kind == "lookalike":
            name = _spell(draw(st.sampled_from(LOOKALIKES)), draw(st.integers(0, 5)))
            lines.append(f"{name}: attacker@evil".encode())
        elif kind == "connection":
            tokens = draw(
                st.lists(st.sampled_from(_CONN_TOKENS), min_size=1, max_size=3, unique=True)
            )
            lines.append(b"Connection: " + ", ".join(tokens).encode())
            if {"content-length", "transfer-encoding"} & set(tokens):
                clean = False
        elif kind == "forged":
            lines.append(
                _spell("X-Pomerium-Jwt-Assertion", draw(st.integers(0, 5))).encode() + b": forged"
            )
        elif kind == "expect":
            lines.append(b"Expect: 100-continue")
        else:
            lines.append(b"X-Custom-%d: value" % draw(st.integers(0, 9)))
    body_kind = draw(st.sampled_from(("none", "token", "inner")))
    body = {"none": b"", "token": b"data-" + b.tag.encode(), "inner": inner(b.tag)}[body_kind]
    framing = draw(
        st.sampled_from(
            (
                "length",
                "length",
                "chunked",
                "chunked",
                "chunked-split",
                "length-off",
                "length-dup",
                "te-variant",
                "cl-te",
            )
        )
    )
    if not body and framing in ("chunked-split", "length-off"):
        framing = "length"
    means: bytes | None = body
    if framing == "length":
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body))
        data = body
    elif framing in ("chunked", "chunked-split"):
        lines.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 16), max_size=4)) if framing == "chunked-split" else []
        data = chunked(body, sizes)
    elif framing == "length-off":
        delta = draw(st.sampled_from((-3, -1, 1)))
        lines.append(b"Content-Length: %d" % max(0, len(body) + delta))
        data, means, clean = body, None, False
    elif framing == "length-dup":
        other = draw(st.sampled_from((len(body), 0, len(body) + 2)))
        lines += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % other]
        data, means, clean = body, None, False
    elif framing == "te-variant":
        lines.append(b"Transfer-Encoding: " + draw(st.sampled_from(_TE_VALUES)))
        data, means, clean = chunked(body), None, False
    else:
        lines += [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
        data, means, clean = chunked(body), None, False
    if behaviour == "upgrade-no" and draw(st.booleans()):
        lines += [
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]
    lines = draw(st.permutations(lines))
    mutation = draw(st.sampled_from(("none",) * 10 + ("bare-lf", "nul", "space-colon", "fold")))
    if mutation != "none" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if mutation == "bare-lf":
            lines[i] = line + b"\nX-Injected: attacker@evil"
        elif mutation == "nul":
            lines[i] = line + b"\x00"
        elif mutation == "space-colon":
            lines[i] = line.replace(b":", b" :", 1)
        else:
            lines[i : i + 1] = [b"X-Fold: a", b" " + line]
        means, clean = None, False
    head = b.head(
        method,
        behaviour,
        lines,
        body=means if clean else None,
        framing="?" if not clean else framing.split("-")[0],
    )
    return head + data, behaviour


@st.composite
def _case(draw: st.DrawFn, index: int) -> Case:
    b = Builder("generated", f"g{index:03d}")
    parts: list[Step] = []
    behaviours = []
    for _ in range(draw(st.sampled_from((1, 2, 3)))):
        data, behaviour = draw(_request(b))
        behaviours.append(behaviour)
        if parts and draw(st.booleans()):
            parts.append(0.05)
        parts.append(data)
    last = parts[-1]
    assert isinstance(last, bytes)
    if draw(st.sampled_from(range(10))) == 0 and not last.endswith(b"\r\n\r\n"):
        # The last body cut short, then the client goes away.
        parts[-1] = last[
            : last.index(b"\r\n\r\n") + 4 + (len(last) - last.index(b"\r\n\r\n") - 4) // 2
        ]
        parts += [0.15, f"{ANSWERED}{len(behaviours) - 1}", CLOSE]
    return b.case(*parts, settle=0.2 if "unsolicited" in behaviours else 0.03)


def generated(count: int = 130) -> list[Case]:
    """``count`` sequences drawn by hypothesis, the same on every run."""
    out: list[Case] = []

    @settings(
        derandomize=True,
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def collect(data: st.DataObject) -> None:
        out.append(data.draw(_case(len(out))))

    collect()
    return out


@cache
def corpus() -> tuple[Case, ...]:
    cases = [case for family in HAND_WRITTEN for case in family()]
    cases += generated()
    labels = [c.label for c in cases]
    assert len(labels) == len(set(labels)), "case labels must be unique"
    return tuple(cases)
