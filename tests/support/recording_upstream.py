"""A raw HTTP/1.1 upstream that records every byte it receives and parses message
boundaries itself, strictly, so a test can tell exactly which messages a proxy made it
see (tests/security/test_smuggling_differential.py).

The parser (:class:`StrictParser`) accepts only unambiguous HTTP/1.1: CRLF line ends,
a ``METHOD SP target SP HTTP/1.x`` request line, ``name: value`` fields without
whitespace before the colon, no obs-fold, no control bytes, and at most one framing
header: one ``Content-Length`` of digits, or one ``Transfer-Encoding: chunked`` with
well-formed chunks. Anything else is recorded as a parse error and the connection is
closed, so a proxy that would make a lenient server see an extra (smuggled) message
shows up here as an error or as a message nobody sent.

What the server answers is chosen by the request target's path (one server serves all
scenarios):

- ``/early...``: 404 as soon as the head is in, before any body byte is read (the
  body is then still consumed by its framing, as Node does);
- ``/extra...``: 200, followed by a complete second response ("SMUGGLED-RESPONSE");
- ``/unsolicited...``: 200, then ~100 ms later an unsolicited 200 ("UNSOLICITED") on
  the idle keep-alive connection;
- ``/reset...``: the connection is reset (SO_LINGER 0) as soon as the head is in;
- ``/slow...``: never answered;
- ``/upgrade-no...``: 403 with a length, immediately followed by more bytes (a
  second response, "SMUGGLED");
- anything else (``/ok...``): 200 with ``Content-Length`` and a serial number,
  keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MARKERS",
    "ConnectionRecord",
    "Head",
    "Message",
    "ParseError",
    "RecordingUpstream",
    "StrictParser",
]

# Bytes the upstream sends that no client may ever see.
MARKERS: Final = (b"SMUGGLED-RESPONSE", b"UNSOLICITED", b"SMUGGLED")

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/1\.([01])")
_FIELD = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*([\x09\x20-\x7e\x80-\xff]*?)[ \t]*")
_FIELD_VALUE_OK = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:;"
    + _TCHAR
    + rb"+(?:=(?:"
    + _TCHAR
    + rb"+|\"(?:[\x09\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\x09\x20-\x7e\x80-\xff])*\"))?)*)"
)
MAX_HEAD: Final = 64 * 1024
MAX_BODY: Final = 16 * 1024 * 1024


class ParseError(Exception):
    """The bytes are not one unambiguous HTTP/1.1 request."""


class _Lookups:
    """What a head and a whole message both answer: the path, a header's values."""

    target: str
    headers: list[tuple[str, str]]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class Head(_Lookups):
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    raw: bytes
    framing: str  # "none" | "length" | "chunked"
    length: int = 0


@dataclass
class Message(_Lookups):
    """One request the upstream parsed completely."""

    conn: int
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]  # as received: name case and order kept
    body: bytes  # de-chunked
    raw: bytes  # the exact bytes of the message, head and body as framed
    framing: str  # "none" | "length" | "chunked"
    trailers: list[tuple[str, str]] = field(default_factory=list)


def _line_end_problem(data: bytes | bytearray, final: bool) -> str | None:
    """A bare LF or a bare CR in ``data`` (a CR at its very end is fine unless
    ``final``: the LF may still come)."""
    i = data.find(b"\n")
    while i >= 0:
        if i == 0 or data[i - 1] != 0x0D:
            return f"bare LF at offset {i}"
        i = data.find(b"\n", i + 1)
    i = data.find(b"\r")
    while i >= 0:
        if i + 1 < len(data):
            if data[i + 1] != 0x0A:
                return f"bare CR at offset {i}"
        elif final:
            return f"bare CR at offset {i}"
        i = data.find(b"\r", i + 1)
    return None


def _fields(lines: list[bytes], what: str) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise ParseError(f"obs-fold in {what}: {line[:60]!r}")
        m = _FIELD.fullmatch(line)
        if m is None:
            raise ParseError(f"bad {what} line: {line[:80]!r}")
        out.append((m[1].decode("latin-1"), m[2].decode("latin-1")))
    return out


def parse_head(raw: bytes) -> Head:
    """The request head ``raw`` (without its blank line); raises :class:`ParseError`."""
    if _line_end_problem(raw, True):
        raise ParseError(f"{_line_end_problem(raw, True)} in head")
    lines = raw.split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise ParseError(f"bad request line: {lines[0][:80]!r}")
    headers = _fields(lines[1:], "header")
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    framing, length = "none", 0
    if te and cl:
        raise ParseError("both Transfer-Encoding and Content-Length")
    if te:
        if len(te) > 1:
            raise ParseError(f"{len(te)} Transfer-Encoding headers")
        if te[0].lower() != "chunked":
            raise ParseError(f"Transfer-Encoding {te[0]!r}")
        framing = "chunked"
    elif cl:
        if len(cl) > 1:
            raise ParseError(f"{len(cl)} Content-Length headers: {cl}")
        if not re.fullmatch(r"[0-9]{1,15}", cl[0]):
            raise ParseError(f"Content-Length {cl[0]!r}")
        framing, length = "length", int(cl[0])
        if length > MAX_BODY:
            raise ParseError(f"Content-Length {length} too large")
    return Head(
        method=m[1].decode("ascii"),
        target=m[2].decode("ascii"),
        version=f"HTTP/1.{m[3].decode()}",
        headers=headers,
        raw=raw + b"\r\n\r\n",
        framing=framing,
        length=length,
    )


def _chunked(buf: bytearray) -> tuple[bytes, list[tuple[str, str]], int] | None:
    """(body, trailers, bytes used) of a complete chunked body at the start of ``buf``,
    None when more bytes are needed; raises :class:`ParseError`."""
    pos = 0
    body = bytearray()
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            problem = _line_end_problem(buf[pos:], False)
            if problem or len(buf) - pos > 4096:
                raise ParseError(f"chunk size line: {problem or 'too long'}")
            return None
        line = bytes(buf[pos:end])
        if _line_end_problem(line, True):
            raise ParseError(f"chunk size line {line[:60]!r}: {_line_end_problem(line, True)}")
        m = _CHUNK_LINE.fullmatch(line)
        if m is None:
            raise ParseError(f"bad chunk size line {line[:60]!r}")
        size = int(m[1], 16)
        pos = end + 2
        if size == 0:
            break
        if len(body) + size > MAX_BODY:
            raise ParseError("chunked body too large")
        if len(buf) < pos + size + 2:
            if len(buf) > pos + size and buf[pos + size : pos + size + 1] != b"\r":
                raise ParseError(
                    f"chunk data not followed by CRLF: {bytes(buf[pos + size :])[:20]!r}"
                )
            return None
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise ParseError(
                f"chunk data not followed by CRLF: {bytes(buf[pos + size : pos + size + 20])!r}"
            )
        body += buf[pos : pos + size]
        pos += size + 2
    trailer_lines: list[bytes] = []
    while True:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            problem = _line_end_problem(buf[pos:], False)
            if problem or len(buf) - pos > MAX_HEAD:
                raise ParseError(f"trailer section: {problem or 'too long'}")
            return None
        line = bytes(buf[pos:end])
        if _line_end_problem(line, True):
            raise ParseError(f"trailer line {line[:60]!r}: {_line_end_problem(line, True)}")
        pos = end + 2
        if not line:
            break
        trailer_lines.append(line)
    trailers = _fields(trailer_lines, "trailer")
    for name, _ in trailers:
        if name.lower() in ("content-length", "transfer-encoding", "host"):
            raise ParseError(f"framing field {name!r} in trailers")
    return bytes(body), trailers, pos


class StrictParser:
    """Incremental strict parser of a stream of requests.

    :meth:`feed` returns the events the new bytes complete, in order: ``("head",
    Head)`` once a head is in, ``("message", Message)`` once its body is too. After a
    :class:`ParseError` it raises again on every call.
    """

    def __init__(self, conn: int = 0) -> None:
        self.conn = conn
        self.buf = bytearray()
        self.head: Head | None = None
        self.error: str | None = None
        self.consumed = 0

    @property
    def pending(self) -> bytes:
        """Bytes of a message not complete yet (the head's included)."""
        return (self.head.raw if self.head else b"") + bytes(self.buf)

    def feed(self, data: bytes) -> list[tuple[str, Head | Message]]:
        if self.error is not None:
            raise ParseError(self.error)
        self.buf += data
        try:
            return self._events()
        except ParseError as exc:
            self.error = f"at stream offset {self.consumed}: {exc}"
            raise ParseError(self.error) from None

    def _events(self) -> list[tuple[str, Head | Message]]:
        events: list[tuple[str, Head | Message]] = []
        while True:
            if self.head is None:
                if not self.buf:
                    return events
                end = self.buf.find(b"\r\n\r\n")
                region = self.buf if end < 0 else self.buf[: end + 4]
                problem = _line_end_problem(region, False)
                if problem:
                    raise ParseError(f"{problem} in head {bytes(region[:120])!r}")
                if self.buf.startswith(b"\r\n"):
                    raise ParseError("empty line before the request line")
                if end < 0:
                    if len(self.buf) > MAX_HEAD:
                        raise ParseError("head too large")
                    return events
                self.head = parse_head(bytes(self.buf[:end]))
                del self.buf[: end + 4]
                events.append(("head", self.head))
            head = self.head
            if head.framing == "length":
                if len(self.buf) < head.length:
                    return events
                body, trailers, used = bytes(self.buf[: head.length]), [], head.length
            elif head.framing == "chunked":
                done = _chunked(self.buf)
                if done is None:
                    return events
                body, trailers, used = done
            else:
                body, trailers, used = b"", [], 0
            raw_body = bytes(self.buf[:used])
            del self.buf[:used]
            message = Message(
                conn=self.conn,
                method=head.method,
                target=head.target,
                version=head.version,
                headers=head.headers,
                body=body,
                raw=head.raw + raw_body,
                framing=head.framing,
                trailers=trailers,
            )
            self.consumed += len(message.raw)
            self.head = None
            events.append(("message", message))


@dataclass
class ConnectionRecord:
    """Everything one upstream connection received and how it ended."""

    index: int
    received: bytearray = field(default_factory=bytearray)
    error: str | None = None  # a strict-parse error (the connection was then closed)
    # Bytes of a message not complete (yet, or when the connection ended), and its head
    # when that much is in (None: not even a whole head).
    pending: bytes = b""
    pending_head: Head | None = None
    ended: str = ""  # "peer closed" | "parse error" | "reset by upstream" | "closed by reset()"


_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
_SMUGGLED_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\nSMUGGLED-RESPONSE"
_UNSOLICITED = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nUNSOLICITED"
_EARLY = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nearly\n"
_UPGRADE_NO = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nforbidden\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
)
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Conn(asyncio.Protocol):
    def __init__(self, server: RecordingUpstream, record: ConnectionRecord) -> None:
        self.server = server
        self.record = record
        self.parser = StrictParser(record.index)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server._live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._live.discard(self)
        if not self.record.ended:
            self.record.ended = "peer closed"

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        if self.record.error is not None:
            self.record.received += data
            return
        self.record.received += data
        try:
            events = self.parser.feed(data)
        except ParseError as exc:
            self.record.error = str(exc)
            self.record.ended = "parse error"
            self.server.errors.append((self.record.index, str(exc)))
            self._write(_BAD)
            if self.transport is not None:
                self.transport.close()
            return
        self.record.pending = self.parser.pending
        self.record.pending_head = self.parser.head
        for kind, item in events:
            if kind == "head":
                assert isinstance(item, Head)
                if self._on_head(item):
                    return
            else:
                assert isinstance(item, Message)
                self.server.messages.append(item)
                self._on_message(item)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _on_head(self, head: Head) -> bool:
        """Act on a head before its body; True when the connection is gone."""
        path = head.path
        if path.startswith("/early"):
            self._write(_EARLY)
        elif path.startswith("/reset"):
            self.record.ended = "reset by upstream"
            if self.transport is not None:
                sock = self.transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                self.transport.abort()
            return True
        return False

    def _on_message(self, msg: Message) -> None:
        path = msg.path
        self.server.serial += 1
        if path.startswith(("/early", "/slow")):
            return
        if path.startswith("/upgrade-no"):
            self._write(_UPGRADE_NO)
            return
        body = b"serial=%d\n" % self.server.serial
        head = _OK % len(body)
        self._write(head if msg.method == "HEAD" else head + body)
        if path.startswith("/extra"):
            self._write(_SMUGGLED_RESPONSE)
        elif path.startswith("/unsolicited"):
            asyncio.get_running_loop().call_later(0.1, self._write, _UNSOLICITED)


class RecordingUpstream:
    """The server: ``messages`` in the order they were parsed, ``connections`` in the
    order they were accepted, ``errors`` (connection index, reason); :meth:`reset`
    closes every connection and starts a fresh record."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.messages: list[Message] = []
        self.connections: list[ConnectionRecord] = []
        self.errors: list[tuple[int, str]] = []
        self.serial = 0
        self._live: set[_Conn] = set()

    def _protocol(self) -> _Conn:
        record = ConnectionRecord(index=len(self.connections))
        self.connections.append(record)
        return _Conn(self, record)

    async def start(self) -> RecordingUpstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self._live):
            if conn.transport is not None:
                conn.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()

    async def __aenter__(self) -> RecordingUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def reset(self, settle: float = 0.01) -> None:
        """Close every open connection (a proxy's pooled ones included), give the proxy
        a moment to notice, and start a fresh record."""
        for conn in list(self._live):
            if not conn.record.ended:
                conn.record.ended = "closed by reset()"
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(settle)
        self.messages = []
        self.connections = []
        self.errors = []
        self.serial = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[bytes]:
        """What each connection received, in accept order."""
        return [bytes(c.received) for c in self.connections]
