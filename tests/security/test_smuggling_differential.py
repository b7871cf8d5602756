"""Request smuggling, differentially: the same corpus of client byte sequences through
the front (``fast_path: true``) and through aiohttp's handler (``fast_path: false``),
one gate per mode, each in front of its own strict recording upstream
(tests/support/recording_upstream.py). The two gates run side by side in this event
loop: each sequence goes to both at once, on its own client TLS connection, and the
next starts when both are done (and both upstreams have closed every connection).

For every sequence (tests/security/smuggling_corpus.py):

a. every message the upstream parsed carries exactly one identity assertion that
   verifies under the gate's key, one Host, one X-Request-Id, clawgate's own
   attribution and claim headers, and nothing forged by the client under any spelling;
b. the upstream never hit a strict-parse error and parsed only requests the client
   sent as heads (never one hidden in a body, never one clawgate refused), each with
   the client's method and the body the client meant, framed as the client framed it;
   no upstream connection is left holding stray bytes or a head whose body never
   came, and bytes of a request that failed before it was forwarded never arrive;
c. no byte the upstream sent past a response (SMUGGLED-RESPONSE, UNSOLICITED,
   SMUGGLED) reaches the client;
d. both paths agree: the same bytes reached the upstream (with the values fresh per
   request masked: X-Request-Id, X-Pomerium-Jwt-Assertion, the Sec-WebSocket-Key
   clawgate makes for an upgrade; and the two upstreams' and gates' ports) and the
   client saw the same statuses.

Every failing sequence is collected and all of them are reported at the end (also
written to test-artifacts/smuggling-differential.txt).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from proxy.assertion import generate_signing_key, verify_assertion
from proxy.session import Session
from proxy.settings import load_settings
from proxy.snapshot import build_snapshot
from tests.proxy.test_front import fast_path_counts, insecure
from tests.security.smuggling_corpus import (
    ALICE,
    ANSWERED,
    CLOSE,
    COOKIE,
    FORGED,
    HOST,
    LOOKALIKES,
    RECONNECT,
    WAIT,
    Case,
    corpus,
    render,
)
from tests.support.gate import Gate, base_config, running_gate
from tests.support.recording_upstream import (
    MARKERS,
    ConnectionRecord,
    Message,
    ParseError,
    RecordingUpstream,
    StrictParser,
)
from tests.support.upstream import free_port

IDLE = 0.6  # silence that ends a sequence still short of its responses
CAP = 4.0  # longest a sequence may take
SLOW_TIMEOUT = 0.3  # the /slow route's timeout: below IDLE

# Headers clawgate sets itself on every proxied request, with the value it must have.
OWN = (
    "host",
    "x-request-id",
    "x-pomerium-jwt-assertion",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-pomerium-claim-email",
    "x-clawgate-groups",
)
_LOOKALIKE_NAMES = frozenset(n.lower() for n in LOOKALIKES) - {"x-pomerium-claim-email"}
_GATE_MADE = re.compile(rb"(?i)x-request-id: ?[0-9a-f]{16}|eyJ[A-Za-z0-9_-]{20,}\.")
# Values that are fresh per request on either path: the request id, the assertion (its
# jti), and the key of an upgrade request clawgate makes itself.
_MASK = re.compile(
    rb"(?im)^(x-request-id|x-pomerium-jwt-assertion|sec-websocket-key)([ \t]*:)[^\r\n]*"
)


# --- the gates ----------------------------------------------------------------------


@dataclass
class Target:
    """One gate in front of the recording upstream, and what checking needs of it."""

    mode: str  # "fast" | "handler"
    gate: Gate
    upstream: RecordingUpstream
    cookie: bytes
    jwks: dict[str, Any]
    metrics_port: int
    upstream_port: int


def mint_cookie(gate: Gate) -> bytes:
    """A signed-in session for alice at host 127.0.0.1 (any port), sealed with the
    gate's cookie_secret (the same for every gate here), as tests/proxy/test_front.py
    mints them."""
    settings, located = load_settings(gate.path)
    snap = build_snapshot(settings, located, str(gate.path))
    now = int(time.time())
    session = Session.create(
        sub="sub-" + ALICE,
        email=ALICE,
        email_verified=True,
        groups=["staff"],
        claims={"name": "Test"},
        host=HOST.decode(),
        now=now,
        lifetime=3600,
        refresh_at=now + 1800,
        refresh_token=None,
        id_token=None,
    )
    return "; ".join(f"{n}={v}" for n, v in snap.keys.codec.encode(session)).encode()


@contextlib.asynccontextmanager
async def smuggling_gate(
    upstream: RecordingUpstream, directory: Path, *, fast: bool, signing_key: str
) -> Any:
    port, metrics_port = free_port(), free_port()
    # Sessions are minted here, so the identity provider is never called: a closed port.
    config = base_config(
        port,
        upstream.url,
        idp=None,
        fast_path=fast,
        signing_key=signing_key,
        metrics_address=f"127.0.0.1:{metrics_port}",
        log_level="warning",
        idp_provider_url=f"http://127.0.0.1:{free_port()}",
        idp_client_id="clawgate",
        idp_client_secret="unused",
    )
    # No port in ``from``: "Host: 127.0.0.1" matches whatever port the gate has, so
    # both gates get byte-identical requests (and one session cookie opens on both).
    main = {**config["routes"][0], "from": "https://127.0.0.1"}
    config["routes"] = [
        {**main, "prefix": "/refused", "to": f"http://127.0.0.1:{free_port()}"},
        {**main, "prefix": "/slow", "timeout": SLOW_TIMEOUT},
        main,
    ]
    directory.mkdir()
    async with running_gate(config, directory) as gate:
        settings, located = load_settings(gate.path)
        jwks = build_snapshot(settings, located, str(gate.path)).keys.signer.jwks()
        yield Target(
            "fast" if fast else "handler",
            gate,
            upstream,
            mint_cookie(gate),
            jwks,
            metrics_port,
            upstream.port,
        )


# --- running one sequence -------------------------------------------------------------


@dataclass
class Outcome:
    statuses: list[int]
    client: list[bytes]  # what each client connection received
    messages: list[Message]
    connections: list[ConnectionRecord]
    errors: list[tuple[int, str]]
    front: str = ""  # what the front did (fast mode): served / handed off
    elapsed: float = 0.0
    ended_by: str = ""  # what ended the client's wait: closed / answered / silence / cap


def parse_responses(data: bytes, methods: list[str]) -> tuple[list[int], int]:
    """Statuses of the responses in ``data`` (interim ones included) and how many
    final ones are complete; ``methods`` are the requests' methods, in order."""
    statuses, finals, pos = [], 0, 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return statuses, finals
        head = data[pos:end].split(b"\r\n")
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head[0])
        if m is None:
            return statuses, finals
        status = int(m[1])
        statuses.append(status)
        pos = end + 4
        if status < 200:
            if status == 101:
                return statuses, finals
            continue
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        method = methods[finals] if finals < len(methods) else "GET"
        finals += 1
        if status in (204, 304) or method == "HEAD":
            continue
        if b"content-length" in fields and fields[b"content-length"].isdigit():
            pos += int(fields[b"content-length"])
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    return statuses, finals - 1
                size = int(data[pos:line_end].split(b";")[0] or b"0", 16)
                pos = line_end + 2 + size + 2
                if size == 0:
                    break
        else:
            return statuses, finals  # read to the end of the connection
        if pos > len(data):
            return statuses, finals - 1


class Client:
    """The client side of one sequence: raw TLS connections, read in the background."""

    def __init__(self, port: int, methods: list[str]) -> None:
        self.port = port
        self.methods = methods
        self.buffers: list[bytearray] = []
        self.closed: list[bool] = []
        self.last = time.monotonic()
        self.writer: asyncio.StreamWriter | None = None
        self.readers: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=insecure())
        self.writer = writer
        self.buffers.append(bytearray())
        self.closed.append(False)
        self.readers.append(asyncio.create_task(self._pump(reader, len(self.buffers) - 1)))

    async def _pump(self, reader: asyncio.StreamReader, i: int) -> None:
        try:
            while chunk := await reader.read(65536):
                self.buffers[i] += chunk
                self.last = time.monotonic()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self.closed[i] = True
            self.last = time.monotonic()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.closed:
            self.closed[-1] = True

    def statuses(self) -> tuple[list[int], int]:
        out, finals = [], 0
        for buf in self.buffers:
            s, f = parse_responses(bytes(buf), self.methods[finals:])
            out += s
            finals += f
        return out, finals

    async def write(self, data: bytes) -> None:
        if self.writer is None or self.writer.is_closing():
            return
        self.writer.write(data)
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            await self.writer.drain()
        self.last = time.monotonic()  # silence counts from the last byte either way

    async def wait_for_head(self) -> None:
        """Until a new response head arrives on the current connection (at most 1 s)."""
        buf = self.buffers[-1]
        seen = buf.count(b"\r\n\r\n")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not self.closed[-1]:
            if buf.count(b"\r\n\r\n") > seen and re.search(rb"HTTP/1\.[01] \d{3}", buf):
                return
            await asyncio.sleep(0.005)

    async def wait_answered(self, count: int) -> None:
        """Until ``count`` final responses came, or the connection closed (at most 2 s)."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not self.closed[-1]:
            if self.statuses()[1] >= count:
                return
            await asyncio.sleep(0.005)

    async def finish(self, expected: int, settle: float, started: float, last_only: bool) -> str:
        """Until every connection closed, or the expected final responses are in (on
        the last connection only with ``last_only``) and ``settle`` passed quietly, or
        IDLE passed quietly, or CAP; says which."""
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            quiet = now - self.last
            if all(self.closed) and quiet >= 0.02:
                return "closed"
            if last_only:
                answered = parse_responses(bytes(self.buffers[-1]), ["GET"] * expected)[1]
            else:
                answered = self.statuses()[1]
            if answered >= expected and quiet >= settle:
                return "answered"
            if quiet >= IDLE:
                return "silence"
            if now - started >= CAP:
                return "cap"

    async def stop(self) -> None:
        self.close()
        for task in self.readers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def run_case(case: Case, target: Target) -> Outcome:
    upstream = target.upstream
    await upstream.reset()
    before = await fast_path_counts(target.metrics_port) if target.mode == "fast" else {}
    started = time.monotonic()
    client = Client(target.gate.port, [s.method for s in case.sent])
    ended_by = "client closed"
    await client.open()
    try:
        for step in case.steps:
            if isinstance(step, bytes):
                await client.write(render(step, target.cookie))
            elif isinstance(step, float):
                await asyncio.sleep(step)
            elif step == WAIT:
                await client.wait_for_head()
            elif isinstance(step, str) and step.startswith(ANSWERED):
                await client.wait_answered(int(step[len(ANSWERED) :]))
            elif step == CLOSE:
                client.close()
            elif step == RECONNECT:
                client.close()
                await client.open()
        if client.writer is not None:
            expected = len(case.sent) if case.responses is None else case.responses
            last_only = RECONNECT in case.steps
            ended_by = await client.finish(expected, case.settle, started, last_only)
    finally:
        await client.stop()
    await asyncio.sleep(0.02)  # whatever the gate still sends upstream after the close
    outcome = Outcome(
        statuses=client.statuses()[0],
        client=[bytes(b) for b in client.buffers],
        messages=list(upstream.messages),
        connections=list(upstream.connections),
        errors=list(upstream.errors),
        elapsed=time.monotonic() - started,
        ended_by=ended_by,
    )
    if target.mode == "fast":
        after = await fast_path_counts(target.metrics_port)
        served = after.get("served", 0) - before.get("served", 0)
        handed = after.get("handed_off", 0) - before.get("handed_off", 0)
        outcome.front = f"front served {served:g}, handed off {handed:g}"
    return outcome


# --- checks ----------------------------------------------------------------------------


def short(data: bytes | str, limit: int = 160) -> str:
    text = repr(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_message(msg: Message, target: Target) -> list[tuple[str, str]]:
    """Check a: clawgate's own headers, once each, and nothing forged."""
    problems = []
    where = f"{msg.method} {msg.target} (upstream conn {msg.conn})"
    fields = [(k.lower(), v) for k, v in msg.headers]
    expected = {
        "host": f"127.0.0.1:{target.upstream_port}",
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "https",
        "x-forwarded-host": HOST.decode(),
        "x-pomerium-claim-email": ALICE,
        "x-clawgate-groups": "staff",
    }
    for name in OWN:
        values = [v for k, v in fields if k == name]
        if len(values) != 1:
            problems.append(("a:own-headers", f"{where}: {len(values)} {name} {values!r:.120}"))
        elif name in expected and values[0] != expected[name]:
            problems.append(("a:own-headers", f"{where}: {name}: {values[0]!r:.120}"))
    tokens = [v for k, v in fields if k == "x-pomerium-jwt-assertion"]
    if len(tokens) == 1:
        try:
            claims = verify_assertion(tokens[0], target.jwks, HOST.decode())
            if claims.get("email") != ALICE:
                problems.append(("a:assertion", f"{where}: assertion for {claims.get('email')}"))
        except jwt.InvalidTokenError as exc:
            problems.append(("a:assertion", f"{where}: does not verify ({exc}): {tokens[0]!r:.60}"))
    for name, value in fields + [(k.lower(), v) for k, v in msg.trailers]:
        dashed = name.replace("_", "-")
        if dashed in _LOOKALIKE_NAMES or (dashed != name and dashed in OWN):
            problems.append(("a:lookalike", f"{where}: header {name!r}: {value!r:.60}"))
        if any(f in value.lower() for f in FORGED):
            problems.append(("a:forged-value", f"{where}: {name}: {value!r:.80}"))
    found = _GATE_MADE.search(msg.body)
    if found:
        start = max(0, found.start() - 60)
        problems.append(
            (
                "b:head-in-body",
                f"{where}: the body carries clawgate-made header "
                f"bytes: {short(msg.body[start : found.end()])}",
            )
        )
    return problems


def check_outcome(case: Case, out: Outcome, target: Target) -> list[tuple[str, str]]:
    """Checks a, b, c and the expected statuses, for one gate."""
    problems: list[tuple[str, str]] = []
    for msg in out.messages:
        problems += check_message(msg, target)
    by_target = {s.target: s for s in case.sent}
    client_whole = not any(step in (CLOSE, RECONNECT) for step in case.steps)
    for conn in out.connections:
        if conn.error is not None:
            problems.append(("b:parse-error", f"upstream conn {conn.index}: {conn.error}"))
        elif conn.pending and conn.pending_head is None:
            problems.append(
                (
                    "b:stray-bytes",
                    f"upstream conn {conn.index} ({conn.ended or 'open'})"
                    f" got {len(conn.pending)} byte(s) past the last "
                    f"message that are no request head: "
                    f"{short(conn.pending)}",
                )
            )
        elif conn.pending_head is not None and conn.pending_head.target not in by_target:
            head = conn.pending_head
            problems.append(
                (
                    "b:unsent-target",
                    f"upstream conn {conn.index} got the head of {head.method} {head.target}"
                    f", never sent as a head: {short(head.raw[:200])}",
                )
            )
        elif (
            conn.pending_head is not None
            and client_whole
            and by_target[conn.pending_head.target].body is not None
            and conn.ended != "reset by upstream"
            and not conn.pending_head.path.startswith(("/early", "/reset"))
        ):
            head = conn.pending_head
            got = len(conn.pending) - len(head.raw)
            problems.append(
                (
                    "b:incomplete-body",
                    f"upstream conn {conn.index} "
                    f"({conn.ended or 'left open'}): {head.method} {head.target} "
                    f"declares {head.framing} {head.length if head.framing == 'length' else ''}"
                    f" but {got} body byte(s) followed, though the client sent its "
                    f"request whole",
                )
            )
    sent_count: dict[str, int] = defaultdict(int)
    for s in case.sent:
        sent_count[s.target] += 1
    seen_count: dict[str, int] = defaultdict(int)
    for msg in out.messages:
        seen_count[msg.target] += 1
        sent = by_target.get(msg.target)
        if sent is None:
            kind = "b:smuggled" if "/hidden-" in msg.target else "b:unsent-target"
            problems.append(
                (
                    kind,
                    f"upstream parsed {msg.method} {msg.target}, never sent as a "
                    f"head (conn {msg.conn}): {short(msg.raw[:200])}",
                )
            )
            continue
        if msg.method != sent.method:
            problems.append(
                ("b:method", f"{msg.target}: client sent {sent.method}, upstream got {msg.method}")
            )
        meant = None if sent.body is None else render(sent.body, target.cookie)
        if meant is not None and msg.body != meant:
            problems.append(
                (
                    "b:body",
                    f"{msg.method} {msg.target}: body of {len(msg.body)} bytes "
                    f"{short(msg.body[:80], 100)}, sent {len(meant)} "
                    f"{short(meant[:80], 100)}",
                )
            )
        if sent.body and sent.framing in ("length", "chunked") and msg.framing != sent.framing:
            problems.append(
                (
                    "b:framing",
                    f"{msg.method} {msg.target}: client framed "
                    f"{sent.framing}, upstream got {msg.framing}",
                )
            )
    for t, n in seen_count.items():
        if t in sent_count and n > sent_count[t]:
            problems.append(("b:repeated", f"{t} parsed {n} times, sent {sent_count[t]}"))
    if len(out.messages) > len(case.sent):
        problems.append(
            ("b:count", f"{len(out.messages)} messages upstream for {len(case.sent)} heads sent")
        )
    if case.max_upstream is not None and len(out.messages) > case.max_upstream:
        got = ", ".join(f"{m.method} {m.target}" for m in out.messages)
        problems.append(
            (
                "b:reached-upstream",
                f"{len(out.messages)} message(s) reached the "
                f"upstream, at most {case.max_upstream}: {got}",
            )
        )
    elif case.max_upstream == 0 and any(c.received for c in out.connections):
        first = next(bytes(c.received) for c in out.connections if c.received)
        problems.append(("b:reached-upstream", f"bytes reached the upstream: {short(first)}"))
    for blocked in case.blocked:
        line = b" " + blocked.encode() + b" HTTP/"
        for conn in out.connections:
            at = conn.received.find(line)
            if at >= 0:
                start = conn.received.rfind(b"\n", 0, at) + 1
                problems.append(
                    (
                        "b:reached-upstream",
                        f"refused request {blocked} reached "
                        f"the upstream (conn {conn.index}): "
                        f"{short(bytes(conn.received[start : at + len(line) + 4]))}",
                    )
                )
    for needle in (render(n, target.cookie) for n in case.forbidden):
        for conn in out.connections:
            at = conn.received.find(needle)
            if at >= 0:
                problems.append(
                    (
                        "b:forbidden-bytes",
                        f"{needle!r} reached the upstream (conn "
                        f"{conn.index}): "
                        f"{short(bytes(conn.received[max(0, at - 80) : at + 40]))}",
                    )
                )
    for i, data in enumerate(out.client):
        for marker in MARKERS:
            at = data.find(marker)
            if at >= 0:
                problems.append(
                    (
                        "c:marker",
                        f"client conn {i} got {marker.decode()}: "
                        f"{short(data[max(0, at - 120) : at + len(marker)], 260)}",
                    )
                )
                break
    if case.expect is not None and tuple(out.statuses) not in case.expect:
        allowed = " or ".join(str(list(e)) for e in case.expect)
        problems.append(("statuses", f"client got {out.statuses}, expected {allowed}"))
    return problems


def masked(out: Outcome, target: Target) -> list[bytes]:
    """What each upstream connection received, with the request id, the assertion and
    the ports (gate and upstream: each mode has its own) masked."""
    gate, upstream = b"%d" % target.gate.port, b"%d" % target.upstream_port
    return [
        _MASK.sub(rb"\1\2 <masked>", bytes(c.received))
        .replace(b"127.0.0.1:" + gate, b"127.0.0.1:<gate>")
        .replace(b"localhost:" + gate, b"localhost:<gate>")
        .replace(b"127.0.0.1:" + upstream, b"127.0.0.1:<upstream>")
        for c in out.connections
    ]


def _names(data: bytes) -> list[str]:
    """The header names of the first head in ``data``."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return [line.split(b":", 1)[0].decode("latin-1") for line in head[1:]]


def first_difference(a: list[bytes], b: list[bytes]) -> str:
    joined_a, joined_b = b"".join(a), b"".join(b)
    if joined_a == joined_b:
        return (
            f"same bytes over {len(a)} upstream connection(s) (fast) and {len(b)} "
            f"(handler): split {[len(x) for x in a]} vs {[len(x) for x in b]}"
        )
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else b""
        y = b[i] if i < len(b) else b""
        if x == y:
            continue
        lines_x, lines_y = x.split(b"\n"), y.split(b"\n")
        for j in range(max(len(lines_x), len(lines_y))):
            lx = lines_x[j] if j < len(lines_x) else b"<end>"
            ly = lines_y[j] if j < len(lines_y) else b"<end>"
            if lx != ly:
                text = (
                    f"upstream conn {i}, line {j}: fast {short(lx, 120)} / handler "
                    f"{short(ly, 120)} (conn bytes {len(x)} vs {len(y)})"
                )
                if x and y and _names(x) != _names(y):
                    text += f"; header order fast {_names(x)} / handler {_names(y)}"
                return text
    return "differs"


def _one_stopped_early(fast: list[int], slow: list[int]) -> bool:
    """The paths agree up to where one of them closed the connection, in what the
    client saw; what reached the upstream around an early answer depends on when the
    body arrived (a timing race, allowed only where a case says so). Or the client hung
    up before one path's answer to a cut request arrived: the rest agrees."""
    short_s, long_s = sorted((fast, slow), key=len)
    return long_s[: len(short_s)] == short_s or long_s[len(long_s) - len(short_s) :] == short_s


def compare(
    case: Case, fast: Outcome, slow: Outcome, targets: dict[str, Target]
) -> list[tuple[str, str]]:
    """Check d: the two paths agree."""
    problems = []
    a, b = masked(fast, targets["fast"]), masked(slow, targets["handler"])
    if case.race and _one_stopped_early(fast.statuses, slow.statuses):
        return []  # checks a-c still hold for each path on its own
    if fast.statuses != slow.statuses:
        problems.append(("d:statuses", f"fast {fast.statuses} / handler {slow.statuses}"))
    if a != b:
        problems.append(("d:upstream-bytes", first_difference(a, b)))
    return problems


# --- the tests -------------------------------------------------------------------------


@pytest.mark.slow
async def test_front_and_handler_agree_on_every_smuggling_sequence(
    tmp_path: Path, artifacts: Path
) -> None:
    cases = corpus()
    assert len(cases) >= 300
    key = generate_signing_key()
    outcomes: dict[str, dict[str, Outcome]] = {"fast": {}, "handler": {}}
    started = time.monotonic()
    # One gate per mode, each with its own recording upstream, run side by side: every
    # sequence goes to both at once (each on its own connection, one sequence at a time).
    async with (
        RecordingUpstream() as up_fast,
        RecordingUpstream() as up_handler,
        smuggling_gate(up_fast, tmp_path / "fast", fast=True, signing_key=key) as fast,
        smuggling_gate(up_handler, tmp_path / "handler", fast=False, signing_key=key) as handler,
    ):
        targets = {"fast": fast, "handler": handler}
        handler.cookie = fast.cookie  # one session (the gates share the cookie secret)
        for case in cases:
            got = await asyncio.gather(run_case(case, fast), run_case(case, handler))
            outcomes["fast"][case.label], outcomes["handler"][case.label] = got
    elapsed = time.monotonic() - started

    failures: dict[str, list[tuple[str, str, str]]] = {}
    for case in cases:
        fast, slow = outcomes["fast"][case.label], outcomes["handler"][case.label]
        per_mode = {
            mode: check_outcome(case, outcomes[mode][case.label], targets[mode])
            for mode in ("fast", "handler")
        }
        rows = []
        for kind, text in per_mode["fast"]:
            where = "both" if (kind, text) in per_mode["handler"] else "fast"
            rows.append((where, kind, text))
        rows += [
            ("handler", k, t) for k, t in per_mode["handler"] if (k, t) not in per_mode["fast"]
        ]
        rows += [("diff", k, t) for k, t in compare(case, fast, slow, targets)]
        if rows:
            failures[case.label] = rows

    report = render_report(cases, outcomes, failures, elapsed)
    (artifacts / "smuggling-differential.txt").write_text(report)
    print(report)
    assert not failures, f"{len(failures)} of {len(cases)} sequences failed:\n{report}"


def describe_steps(case: Case, limit: int = 700) -> str:
    """The client's steps, the session cookie shown as <session>."""
    parts = []
    for step in case.steps:
        if isinstance(step, bytes):
            parts.append(short(step.replace(COOKIE, b"<session>"), limit))
        else:
            parts.append(f"<{step}>")
    return " ".join(parts)


def render_report(
    cases: tuple[Case, ...],
    outcomes: dict[str, dict[str, Outcome]],
    failures: dict[str, list[tuple[str, str, str]]],
    elapsed: float,
) -> str:
    lines = [f"{len(cases)} sequences x 2 modes in {elapsed:.1f} s; {len(failures)} failing"]
    for mode, got in outcomes.items():
        ends = Counter(o.ended_by for o in got.values())
        lines.append(f"  {mode}: client waits ended by {dict(ends)}")
    lines.append("")
    by_family: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        if case.label in failures:
            by_family[case.family].append(case)
    for family, failing in by_family.items():
        total = sum(1 for c in cases if c.family == family)
        lines.append(f"== {family}: {len(failing)} of {total} failing")
        for case in failing:
            fast, slow = outcomes["fast"][case.label], outcomes["handler"][case.label]
            lines.append(
                f"-- {case.label}  statuses fast {fast.statuses} handler {slow.statuses}"
                f"  [{fast.front}; wait ended by {fast.ended_by} / {slow.ended_by}]"
            )
            lines.append(f"   sent    {describe_steps(case)}")
            for where, kind, text in failures[case.label]:
                lines.append(f"   {where:<7} {kind:<20} {text}")
        lines.append("")
    return "\n".join(lines)


def test_the_corpus_is_the_same_every_time() -> None:
    cases = corpus()
    assert len(cases) >= 300
    assert [c.steps for c in cases] == [c.steps for c in corpus.__wrapped__()]
    families = {c.family for c in cases}
    assert len(families) >= 15, families


def test_the_strict_parser_splits_valid_streams_exactly() -> None:
    stream = (
        b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3;ext=1\r\nabc\r\n2;q="a b"\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n'
        b"GET /c HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Text: caf\xe9\r\n\r\n"
    )
    for step in (1, 7, len(stream)):  # byte by byte, in odd pieces, all at once
        parser = StrictParser()
        events = []
        for i in range(0, len(stream), step):
            events += parser.feed(stream[i : i + step])
        messages = [m for kind, m in events if kind == "message"]
        assert [m.target for m in messages] == ["/a?x=1", "/b", "/c"]
        assert [m.body for m in messages] == [b"hello", b"abcde", b""]
        assert [m.framing for m in messages] == ["length", "chunked", "none"]
        assert messages[1].trailers == [("X-Trailer", "t")]
        assert b"".join(m.raw for m in messages) == stream
        assert messages[2].values("x-empty") == [""] and parser.pending == b""
    parser = StrictParser()
    assert [k for k, _ in parser.feed(b"POST /d HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")] == [
        "head"
    ]
    assert parser.pending.endswith(b"\r\n\r\nab")


@pytest.mark.parametrize(
    "data",
    [
        b"GET /x HTTP/1.1\nHost: h\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\n\r\n",
        b"GET /x HTTP/1.1\r\nX-A: b\rc\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX-A: b\x00\r\n\r\n",
        b"GET /x HTTP/1.2\r\nHost: h\r\n\r\n",
        b"GET  /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
        b"POST /x HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\na",
        b"POST /x HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\na\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\na\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nab\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 1\r\n\r\n",
    ],
)
def test_the_strict_parser_refuses_anything_ambiguous(data: bytes) -> None:
    parser = StrictParser()
    with pytest.raises(ParseError):
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    with pytest.raises(ParseError):
        StrictParser().feed(data)


async def test_the_recording_upstream_behaves_as_documented() -> None:
    async with RecordingUpstream() as upstream:
        reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
        writer.write(b"POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"early\n"), 2)).startswith(b"HTTP/1.1 404")
        writer.write(b"abcGET /extra HTTP/1.1\r\nHost: h\r\n\r\n")
        got = await asyncio.wait_for(reader.readuntil(b"SMUGGLED-RESPONSE"), 2)
        assert got.startswith(b"HTTP/1.1 200") and b"serial=2" in got
        writer.write(b"GET /unsolicited HTTP/1.1\r\nHost: h\r\n\r\n")
        got = await asyncio.wait_for(reader.readuntil(b"UNSOLICITED"), 2)
        assert got.count(b"HTTP/1.1 200") == 2
        writer.write(b"GET /x HTTP/1.1\nHost: h\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 2)).startswith(b"HTTP/1.1 400")
        writer.close()
        assert [(m.method, m.path, m.body) for m in upstream.messages] == [
            ("POST", "/early", b"abc"),
            ("GET", "/extra", b""),
            ("GET", "/unsolicited", b""),
        ]
        assert upstream.errors and "bare LF" in upstream.errors[0][1]
        assert upstream.connections[0].error is not None

        reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
        writer.write(b"GET /reset HTTP/1.1\r\nHost: h\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 2)
        writer.close()
        await upstream.reset()
        assert upstream.messages == [] and upstream.connections == []
