"""WebSocket relay and the registry of live proxied connections.

The relay connects to the upstream first and only then accepts the client, so a
dead upstream is a 502 page rather than a socket that opens and dies. Frames are
forwarded one at a time, each send awaiting the peer's drain, so a slow reader
throttles its writer instead of growing a buffer in clawgate.

The registry lets clawgate end connections it no longer allows: on sign-out, when
the policy changes, when the session runs out (continuous authorization).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from proxy import metrics
from proxy.session import Session
from proxy.upstream_link import UpstreamError

log = structlog.get_logger("clawgate.websocket")

POLICY_VIOLATION = 1008
GOING_AWAY = 1001
_UNSENDABLE = {1005, 1006, 1015}
# OpenClaw accepts frames up to 25 MiB (policy.maxPayload); anything larger is refused (1009).
MAX_MESSAGE = 32 * 1024 * 1024
# How long a clawgate-initiated close waits for the client's close reply before dropping TCP.
CLOSE_HANDSHAKE_TIMEOUT = 5.0


@dataclass(eq=False)
class LiveConnection:
    """One relayed WebSocket; ``close`` ends both sides with a code and reason.

    It keeps what it was admitted with (session, host, path, client address) so it
    can be re-authorized later without a request.

    ``close`` only asks: the relay task that owns both sockets stops its pumps and then
    runs the closing handshake. aiohttp's ``close()`` called from another task while a
    pump is inside ``receive()`` drops the TCP connection right after sending the close
    frame, and a client that had not read it yet sees 1006 instead of the code it was
    sent. ``closed`` is set once both sides are closed.
    """

    session: Session | None
    host: str
    path: str
    source_ip: str
    opened: float = field(default_factory=time.monotonic)
    # Until when its admission holds without asking the policy again (epoch seconds;
    # proxy/admission.py): the sweep re-decides it then (proxy/policy_watch.py).
    valid_until: float = float("inf")
    client: web.WebSocketResponse | None = None
    upstream: aiohttp.ClientWebSocketResponse | None = None
    closing: bool = False
    close_code: int = POLICY_VIOLATION
    close_reason: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_requested: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by a relay that closes from callbacks rather than from a task of its own.
    closer: Callable[[int, str], None] | None = None
    # Called once both sides are closed (after ``closed`` is set), by such a relay.
    on_closed: Callable[[], None] | None = None

    @property
    def sid(self) -> str | None:
        return self.session.sid if self.session is not None else None

    @property
    def user(self) -> str | None:
        if self.session is None:
            return None
        return self.session.email or self.session.sub

    async def close(self, code: int, reason: str) -> None:
        """Ask the relay to close the client with ``code`` (and the upstream with 1001);
        returns at once. Await ``closed`` to know it is done."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, reason
        if self.closer is not None:
            self.closer(code, reason)
        else:
            self.close_requested.set()


class ConnectionRegistry:
    """Live proxied WebSockets, indexed by session id."""

    def __init__(self) -> None:
        self._all: set[LiveConnection] = set()
        self._by_sid: dict[str, set[LiveConnection]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[LiveConnection]:
        return iter(list(self._all))

    def add(self, conn: LiveConnection) -> None:
        if conn not in self._all:
            metrics.websocket_opened()
        self._all.add(conn)
        if conn.sid is not None:
            self._by_sid.setdefault(conn.sid, set()).add(conn)

    def discard(self, conn: LiveConnection) -> None:
        if conn in self._all:
            metrics.websocket_closed()
        self._all.discard(conn)
        if conn.sid is not None:
            peers = self._by_sid.get(conn.sid)
            if peers is not None:
                peers.discard(conn)
                if not peers:
                    del self._by_sid[conn.sid]

    async def close_session(self, sid: str, reason: str) -> int:
        conns = list(self._by_sid.get(sid, ()))
        for conn in conns:
            log.info("websocket_closed_by_clawgate", reason=reason, user=conn.user)
            await conn.close(POLICY_VIOLATION, reason)
        return len(conns)

    async def close_where(
        self, predicate: Callable[[LiveConnection], str | None], code: int = POLICY_VIOLATION
    ) -> int:
        """Close every connection for which ``predicate`` returns a reason."""
        closed = 0
        for conn in self:
            reason = predicate(conn)
            if reason is not None:
                log.info("websocket_closed_by_clawgate", reason=reason, user=conn.user)
                await conn.close(code, reason)
                closed += 1
        return closed

    async def close_all(self, code: int, reason: str) -> None:
        """Close every connection and wait (bounded) until their handshakes are done."""
        conns = list(self)
        await asyncio.gather(*(c.close(code, reason) for c in conns), return_exceptions=True)
        if conns:
            waiters = [asyncio.ensure_future(c.closed.wait()) for c in conns]
            _, late = await asyncio.wait(waiters, timeout=CLOSE_HANDSHAKE_TIMEOUT + 1)
            for waiter in late:
                waiter.cancel()


def _protocols(request: web.BaseRequest) -> tuple[str, ...]:
    raw = request.headers.get("Sec-WebSocket-Protocol", "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())


async def relay(
    request: web.Request,
    client: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    conn: LiveConnection,
    registry: ConnectionRegistry,
    *,
    connect_timeout: float | None,
    idle_timeout: float | None,
    verify_tls: bool,
) -> web.WebSocketResponse:
    """Relay a WebSocket between the client and ``url``; raises UpstreamError pre-accept."""
    for name in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
    ):
        headers.popall(name, None)
    protocols = _protocols(request)
    ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
    # Registered before the upstream handshake: a sign-out or policy change while it
    # runs finds this connection (close_requested), and the pumps end before they start.
    registry.add(conn)
    try:
        return await _relay(
            request,
            client,
            ws_url,
            headers,
            conn,
            protocols,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            verify_tls=verify_tls,
        )
    finally:
        registry.discard(conn)


async def _relay(
    request: web.Request,
    client: aiohttp.ClientSession,
    ws_url: URL,
    headers: CIMultiDict[str],
    conn: LiveConnection,
    protocols: tuple[str, ...],
    *,
    connect_timeout: float | None,
    idle_timeout: float | None,
    verify_tls: bool,
) -> web.WebSocketResponse:
    try:
        upstream = await asyncio.wait_for(
            client.ws_connect(
                ws_url,
                headers=headers,
                protocols=protocols,
                autoping=False,
                autoclose=False,
                max_msg_size=MAX_MESSAGE,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                ssl=verify_tls,
                compress=0,
            ),
            connect_timeout,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamError(
            502 if exc.status >= 500 or exc.status < 400 else exc.status,
            f"upstream_ws_refused:{exc.status}",
        ) from None
    except TimeoutError:
        raise UpstreamError(504, "upstream_timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(502, f"upstream_unreachable:{type(exc).__name__}") from None

    ws = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoping=False,
        autoclose=False,
        max_msg_size=MAX_MESSAGE,
        compress=False,
        timeout=CLOSE_HANDSHAKE_TIMEOUT,  # wait for the client's close reply
    )
    try:
        await ws.prepare(request)
    except Exception:
        await upstream.close()
        raise
    conn.client = ws
    conn.upstream = upstream
    try:
        await _pump_both(ws, upstream, conn, idle_timeout)
        if conn.closing:
            # No pump is reading any more, so aiohttp's close() sends the close frame and
            # waits for the client's reply: a clean handshake with the code we chose.
            with contextlib.suppress(Exception):
                await ws.close(code=conn.close_code, message=conn.close_reason.encode()[:120])
            with contextlib.suppress(Exception):
                await upstream.close(code=GOING_AWAY, message=b"client connection ended")
    finally:
        if not upstream.closed:
            await upstream.close()
        if not ws.closed:
            await ws.close()
        conn.closed.set()
    return ws


async def _pump_both(
    ws: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    conn: LiveConnection,
    idle_timeout: float | None,
) -> None:
    to_up = asyncio.create_task(_pump(ws, upstream, conn, idle_timeout))
    to_client = asyncio.create_task(_pump(upstream, ws, conn, idle_timeout))
    asked = asyncio.create_task(conn.close_requested.wait())
    try:
        _, pending = await asyncio.wait(
            {to_up, to_client, asked}, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        to_up.cancel()
        to_client.cancel()
        asked.cancel()
        raise
    for task in pending:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    conn: LiveConnection,
    idle_timeout: float | None,
) -> None:
    while True:
        try:
            msg = await src.receive(timeout=idle_timeout)
        except TimeoutError:
            await conn.close(GOING_AWAY, "idle timeout")
            return
        kind = msg.type
        try:
            if kind is WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif kind is WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif kind is WSMsgType.PING:
                await dst.ping(msg.data)
            elif kind is WSMsgType.PONG:
                await dst.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                code = msg.data if isinstance(msg.data, int) else WSCloseCode.OK
                if code in _UNSENDABLE:
                    code = WSCloseCode.OK
                if src is conn.upstream:
                    # The client's close goes through the relay task (see LiveConnection),
                    # so a client that is not reading right now still gets this code.
                    await conn.close(code, msg.extra or "")
                elif not dst.closed:
                    await dst.close(code=code, message=(msg.extra or "").encode()[:120])
                return
            elif kind is WSMsgType.ERROR:
                if not dst.closed:
                    # aiohttp already closed ``src`` with the fitting code (e.g. 1009).
                    await dst.close(code=WSCloseCode.GOING_AWAY, message=b"peer error")
                return
            else:  # CLOSING / CLOSED
                if not dst.closed:
                    await dst.close(code=WSCloseCode.GOING_AWAY)
                return
        except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
            return
