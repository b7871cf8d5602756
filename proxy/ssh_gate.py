"""The SSH door's questions to identity and policy (proxy/ssh/ asks them through the
``Gate`` protocol; this module answers them for a running clawgate).

Which route a login names, whether a client key is already bound to a session, the
browser approval that binds one (the page is proxy/ssh_approval.py), and the decision:
``admit`` (proxy/admission.py), the same function that decides HTTP requests and
WebSockets, with method ``SSH`` and the login the user asked for (the policy's
``ssh_username``). While connected, :meth:`SshGate.reauthorize` re-decides every
connection whenever WebSockets are re-checked (sign-out, reload, each sweep) and ends
the ones that no longer hold, with the reason on the user's terminal.

Approvals travel through the shared store (proxy/store/), because the browser's
request may reach another worker or replica than the SSH connection:

- ``ssh:p:<code>``  the attempt awaiting approval (what the page shows), until the
  approval times out;
- ``ssh:a:<code>``  the answer: the approving session, sealed, or a refusal; written
  once, under the store's lock, so an approval URL works once;
- ``ssh:k:<key fingerprint>``  the session a client key was approved for, sealed,
  until that session ends: the next ``ssh`` with that key needs no browser.

Sessions are sealed with the cookie secret (``SessionCodec.seal``) before they reach
the store, so the store never holds a readable token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.admission import admit
from proxy.identity import refresh, to_identity
from proxy.runtime import Runtime
from proxy.session import Session, SessionError, session_from_text, session_to_text
from proxy.snapshot import Snapshot, SshRouteConfig
from proxy.ssh import Attempt, Grant, Refusal, SshConnection, SshDoor, SshRoute
from proxy.store import StoreError

log = structlog.get_logger("clawgate.ssh")

APPROVAL_PREFIX = "/.clawgate/ssh/"
_SEAL_PURPOSE = "ssh-grant"
_PENDING = "ssh:p:"
_ANSWER = "ssh:a:"
_KEY = "ssh:k:"
_POLL = 0.25


def loggable_path(path: str) -> str:
    """``path`` for a log line: an approval link's code is left out, since until it is
    answered it lets whoever holds it answer the sign-in."""
    if path.startswith(APPROVAL_PREFIX):
        return APPROVAL_PREFIX + "<code>"
    return path


@dataclass(frozen=True)
class PendingApproval:
    """What the approval page shows and decides on."""

    code: str
    route: str
    login: str
    key_fingerprint: str
    client_address: str


def ssh_route(config: SshRouteConfig) -> SshRoute:
    rs = config.settings
    return SshRoute(
        name=config.name,
        upstream_host=config.upstream_host,
        upstream_port=config.upstream_port,
        allow_pty=rs.ssh_allow_pty,
        allow_port_forwarding=rs.ssh_allow_port_forwarding,
        allow_agent_forwarding=rs.ssh_allow_agent_forwarding,
        allow_x11_forwarding=rs.ssh_allow_x11_forwarding,
    )


def find_route(snap: Snapshot, name: str) -> SshRouteConfig | None:
    for route in snap.ssh_routes:
        if route.name == name:
            return route
    return None


def approval_origin(snap: Snapshot) -> str | None:
    """The https origin approval pages are served on: the first route with a plain host."""
    for route in snap.routes:
        if not route.matcher.is_wildcard:
            return route.origin
    return None


def decide(
    runtime: Runtime,
    route: SshRouteConfig,
    session: Session,
    login: str,
    client_address: str,
    now: float,
) -> tuple[Grant | Refusal, float]:
    """The one SSH decision: may this session log in as ``login`` on ``route`` now, as
    whom on the upstream, and until when does the answer hold (Unix seconds)."""
    denied = f"not allowed by policy for route {route.name}"
    if runtime.refuses(session):
        return Refusal("your session was signed out; sign in again", "signed out"), now
    if session.is_expired(int(now)):
        return Refusal("your session has expired; sign in again", "session expired"), now
    identity = to_identity(session, runtime.snapshot.settings.idp_groups_claim)
    verdict = admit(route, session, identity, "SSH", "", client_address, now, ssh_username=login)
    if not verdict.allow:
        return Refusal(denied, verdict.decision.reason), now
    principal = _principal(route, session, login)
    if principal is None:
        claim = route.settings.ssh_principal_claim
        return (
            Refusal(f"{denied}: login {login!r} is not one of yours", f"not in claim {claim}"),
            now,
        )
    user = session.email or session.sub
    grant = Grant(
        user=user,
        session_ref=session_ref(session),
        principal=principal,
        key_id=f"clawgate:{user}:session={session_ref(session)}",
        reason=verdict.decision.reason,
    )
    return grant, verdict.valid_until


def session_ref(session: Session) -> str:
    """A name for the session in logs and certificates that reveals nothing usable."""
    return hashlib.sha256(session.sid.encode()).hexdigest()[:12]


def _principal(route: SshRouteConfig, session: Session, login: str) -> str | None:
    rs = route.settings
    if rs.ssh_principal is not None:
        return rs.ssh_principal
    if rs.ssh_principal_claim is None:
        return login
    value: Any = session.claims.get(rs.ssh_principal_claim)
    allowed = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return login if login in [str(v) for v in allowed] else None


@dataclass
class _Live:
    """What a connection was admitted with, to re-decide it later."""

    session: Session
    route: str
    login: str
    client_address: str
    key_fingerprint: str
    valid_until: float
    generation: int


class SshGate:
    """The ``proxy.ssh.Gate`` of a running clawgate (one per process with a door)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._codes: dict[str, str] = {}  # attempt id -> approval code
        self._live: dict[str, _Live] = {}  # attempt id -> admission
        self.door: SshDoor | None = None

    # -- the Gate protocol ------------------------------------------------------------

    def route(self, requested: str | None) -> SshRoute | Refusal:
        snap = self._runtime.snapshot
        if requested is None:
            if len(snap.ssh_routes) == 1:
                return ssh_route(snap.ssh_routes[0])
            names = ", ".join(r.name for r in snap.ssh_routes)
            return Refusal(
                f"name a route: ssh LOGIN@ROUTE@HOST (routes: {names})", "no route named"
            )
        found = find_route(snap, requested)
        if found is None:
            return Refusal(f"no SSH route named {requested!r}", "unknown route")
        return ssh_route(found)

    async def remembered(self, attempt: Attempt) -> Grant | Refusal | None:
        try:
            sealed = await self._runtime.store.get(_KEY + attempt.key_fingerprint)
        except StoreError:
            return Refusal("clawgate cannot reach its shared store; try again", "store down")
        if sealed is None:
            return None
        session = self._unseal(sealed)
        if session is None or self._runtime.refuses(session):
            return None  # signed out since: ask the browser again
        if session.needs_refresh(int(time.time())):
            # Its provider tokens have expired (a refresh elsewhere does not reach this
            # copy): refresh now, or ask the browser again.
            updated = await refresh(self._runtime, session)
            if updated is None:
                return None
            session = updated
            await self._remember(attempt.key_fingerprint, session)
        return self._admit(attempt, session)

    async def begin_approval(self, attempt: Attempt) -> str:
        snap = self._runtime.snapshot
        origin = approval_origin(snap)
        if origin is None:  # settings insist on an https route; kept as a clear failure
            raise RuntimeError("no https route to approve SSH sign-ins on")
        code = secrets.token_urlsafe(24)
        record = {
            "route": attempt.route.name,
            "login": attempt.login,
            "key_fingerprint": attempt.key_fingerprint,
            "client_address": attempt.client_address,
        }
        await self._runtime.store.put(
            _PENDING + code,
            json.dumps(record).encode(),
            self._runtime.snapshot.settings.ssh_approval_timeout,
        )
        self._codes[attempt.attempt_id] = code
        log.info(
            "ssh_approval_started",
            route=attempt.route.name,
            login=attempt.login,
            key=attempt.key_fingerprint,
            client=attempt.client_address,
        )
        return f"{origin}{APPROVAL_PREFIX}{code}"

    async def wait_approval(self, attempt: Attempt, timeout: float) -> Grant | Refusal:  # noqa: ASYNC109
        code = self._codes.pop(attempt.attempt_id, None)
        if code is None:
            return Refusal("no sign-in was started for this connection", "no approval")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = await self._runtime.store.get(_ANSWER + code)
            except StoreError:
                raw = None
            if raw is not None:
                return await self._answered(attempt, raw)
            await asyncio.sleep(_POLL)
        return Refusal("the sign-in was not approved in time; run ssh again", "approval expired")

    # -- continuous authorization -------------------------------------------------------

    async def reauthorize(self) -> None:
        """End the connections that no longer hold: signed out, session over (or its
        refresh failed), or a policy in force that now refuses them."""
        door = self.door
        if door is None:
            return
        open_ids = set()
        now = time.time()
        for conn in door.connections():
            attempt_id = conn.attempt.attempt_id
            open_ids.add(attempt_id)
            live = self._live.get(attempt_id)
            if live is None:
                await self._end(conn, "not admitted", "no admission on record")
                continue
            reason = await self._still(live, now)
            if reason is not None:
                await self._end(conn, reason, reason)
        for gone in set(self._live) - open_ids:
            del self._live[gone]

    async def _still(self, live: _Live, now: float) -> str | None:
        runtime = self._runtime
        session = live.session
        if runtime.refuses(session):
            return "signed out"
        if session.is_expired(int(now)):
            return "session expired"
        if session.needs_refresh(int(now)):
            updated = await refresh(runtime, session)
            if updated is None:
                return "session expired"
            live.session = updated
            live.valid_until = now  # decide again below with the refreshed identity
            await self._remember(live.key_fingerprint, updated)
        generation = runtime.snapshot.generation
        if now < live.valid_until and generation == live.generation:
            return None
        route = find_route(runtime.snapshot, live.route)
        if route is None:
            return f"route {live.route} was removed"
        answer, until = decide(runtime, route, live.session, live.login, live.client_address, now)
        if isinstance(answer, Refusal):
            return answer.message
        live.valid_until, live.generation = until, generation
        return None

    async def _end(self, conn: SshConnection, message: str, reason: str) -> None:
        log.info("ssh_closed_by_clawgate", reason=reason, user=conn.grant.user)
        self._live.pop(conn.attempt.attempt_id, None)
        await conn.end(message)

    # -- helpers --------------------------------------------------------------------------

    def _unseal(self, sealed: bytes) -> Session | None:
        codec = self._runtime.snapshot.keys.codec
        try:
            data = codec.unseal(_SEAL_PURPOSE, sealed.decode("ascii"), now=int(time.time()))
            return session_from_text(str(data["s"]))
        except (SessionError, KeyError, UnicodeDecodeError):
            return None

    async def _answered(self, attempt: Attempt, raw: bytes) -> Grant | Refusal:
        try:
            answer = json.loads(raw)
        except ValueError:
            return Refusal("the approval could not be read", "bad answer")
        if "refused" in answer:
            return Refusal(str(answer["refused"]), str(answer.get("reason", "refused")))
        session = self._unseal(str(answer.get("session", "")).encode())
        if session is None:
            return Refusal("the approval could not be read", "bad answer")
        result = self._admit(attempt, session)
        if isinstance(result, Grant):
            await self._remember(attempt.key_fingerprint, session)
        return result

    async def _remember(self, fingerprint: str, session: Session) -> None:
        """Bind the key to the session (its latest refresh) until the session ends."""
        remaining = session.expires_at - time.time()
        if remaining <= 0:
            return
        try:
            await self._runtime.store.put(
                _KEY + fingerprint, seal_session(self._runtime, session), remaining
            )
        except StoreError:
            log.warning("ssh_key_not_remembered", reason="store unreachable")

    def _admit(self, attempt: Attempt, session: Session) -> Grant | Refusal:
        runtime = self._runtime
        route = find_route(runtime.snapshot, attempt.route.name)
        if route is None:
            return Refusal(f"no SSH route named {attempt.route.name!r}", "unknown route")
        now = time.time()
        answer, until = decide(runtime, route, session, attempt.login, attempt.client_address, now)
        if isinstance(answer, Grant):
            self._live[attempt.attempt_id] = _Live(
                session,
                route.name,
                attempt.login,
                attempt.client_address,
                attempt.key_fingerprint,
                until,
                runtime.snapshot.generation,
            )
        return answer


def seal_session(runtime: Runtime, session: Session) -> bytes:
    ttl = max(1, session.expires_at - int(time.time()))
    codec = runtime.snapshot.keys.codec
    return codec.seal(
        _SEAL_PURPOSE, {"s": session_to_text(session)}, ttl=ttl, now=int(time.time())
    ).encode("ascii")


async def load_pending(runtime: Runtime, code: str) -> PendingApproval | None:
    """The attempt waiting for an answer under ``code``; None once it was answered or
    has timed out (its URL is then spent)."""
    if await runtime.store.get(_ANSWER + code) is not None:
        return None
    raw = await runtime.store.get(_PENDING + code)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return PendingApproval(
            code,
            str(doc["route"]),
            str(doc["login"]),
            str(doc["key_fingerprint"]),
            str(doc["client_address"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


async def answer(
    runtime: Runtime, code: str, *, session: Session | None, refusal: Refusal | None
) -> bool:
    """Write the one answer to an approval; False if it was answered before."""
    store = runtime.store
    # Kept past its attempt's own lifetime: while the attempt can still be read, its
    # answer must be there to say the link is spent.
    ttl = runtime.snapshot.settings.ssh_approval_timeout + 60.0
    async with store.lock("ssh-approval:" + code, 10.0, 5.0) as held:
        if not held or await store.get(_ANSWER + code) is not None:
            return False
        if refusal is not None:
            doc: dict[str, str] = {"refused": refusal.message, "reason": refusal.reason}
        else:
            assert session is not None
            doc = {"session": seal_session(runtime, session).decode("ascii")}
        await store.put(_ANSWER + code, json.dumps(doc).encode(), ttl)
    return True


async def open_door(runtime: Runtime, config_source: str) -> SshDoor:
    """Start the SSH door on ``ssh_address`` (proxy/server.py, one process per instance).

    Files named in the config are relative to it; host keys made here live in
    ``<data_dir>/ssh`` so that clients see the same host key after a restart.
    """
    from proxy.settings import ConfigError, parse_listen_address
    from proxy.snapshot import side_file
    from proxy.ssh import SshSetupError, UserCA

    settings = runtime.snapshot.settings
    assert settings.ssh_address is not None and settings.ssh_user_ca_key_file is not None
    ca_file = side_file(config_source, settings.ssh_user_ca_key_file)
    assert ca_file is not None
    gate = SshGate(runtime)
    try:
        ca = UserCA.load(ca_file)
    except SshSetupError as exc:
        raise ConfigError([f"ssh_user_ca_key_file: {exc}"]) from None
    door = SshDoor(
        gate,
        ca,
        state_dir=settings.data_path() / "ssh",
        host_key_files=[
            p for p in (side_file(config_source, f) for f in settings.ssh_host_key_files) if p
        ],
        known_hosts=side_file(config_source, settings.ssh_upstream_known_hosts_file),
        approval_timeout=settings.ssh_approval_timeout,
    )
    gate.door = door
    host, port = parse_listen_address(settings.ssh_address)
    try:
        bound = await door.start(host, port)
    except SshSetupError as exc:
        raise ConfigError([f"ssh_host_key_files: {exc}"]) from None
    runtime.reauthorizers.append(gate.reauthorize)
    log.info(
        "ssh_listening",
        address=f"{host or '*'}:{bound}",
        routes=[r.name for r in runtime.snapshot.ssh_routes],
    )
    return door


_EVENTS = ("connections", "authenticated", "remembered", "refused", "upstream_failed", "ended")


async def report_metrics(door: SshDoor, every: float = 5.0) -> None:
    """The door's counters as Prometheus counters (their growth since the last look)."""
    from proxy import metrics

    seen: dict[str, int] = {}
    while True:
        stats = door.stats
        for event in _EVENTS:
            value = int(getattr(stats, event))
            if value > seen.get(event, 0):
                metrics.SSH_CONNECTIONS.labels(event=event).inc(value - seen.get(event, 0))
            seen[event] = value
        for direction, value in (("in", stats.bytes_in), ("out", stats.bytes_out)):
            if value > seen.get(direction, 0):
                metrics.SSH_BYTES.labels(direction=direction).inc(value - seen.get(direction, 0))
            seen[direction] = value
        metrics.SSH_ACTIVE.set(len(door.connections()))
        await asyncio.sleep(every)
