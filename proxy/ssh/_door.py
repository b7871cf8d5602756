"""The SSH door: an SSH server for users, an SSH client of the upstream sshd.

Sign-in, per connection:

1. ``begin_auth``: the user name ``LOGIN@ROUTE`` (split at the last "@") names the
   route; the Gate resolves it or refuses.
2. publickey: the first key offered is accepted provisionally (PK_OK) and the client
   signs with it; asyncssh checks the signature. A remembered key (Gate.remembered)
   signs in at once. Otherwise the proof is answered with a partial success, so the
   client goes on with keyboard-interactive, and the connection is bound to that key:
   no other key is accepted on it afterwards.
3. keyboard-interactive: one round without prompts shows the sign-in URL and what is
   being approved; the client answers it at once, and the door then waits for the
   Gate's answer before replying. An approval signs in; a refusal is shown as an SSH
   banner and ends the sign-in, and no upstream connection is ever made for it.

After sign-in, channels are relayed to the upstream over one connection per user
connection, authenticated with a fresh key and a certificate signed for the grant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import asyncssh
import structlog
from asyncssh.auth import KbdIntChallenge
from asyncssh.public_key import decode_ssh_public_key

from proxy.ssh._ca import UserCA
from proxy.ssh._hostkeys import PINNED_FILE, PinnedHosts, ensure_state_dir, load_host_keys
from proxy.ssh._relay import SessionRelay, TcpRelaySide
from proxy.ssh._types import (
    Attempt,
    Gate,
    Grant,
    Refusal,
    SshConnection,
    SshRoute,
    SshSetupError,
    SshStats,
)
from proxy.ssh._upstream import UpstreamError, connect_upstream

log = structlog.get_logger("clawgate.ssh")

# How much longer than the approval timeout a sign-in may take in all: key exchange,
# the key proof and the rounds around the wait.
LOGIN_GRACE = 60.0
# After end(): how long the user's channels get to take clawgate's last words before
# the connection is dropped regardless.
END_FLUSH_TIMEOUT = 2.0
KEEPALIVE_INTERVAL = 60.0
_MAX_LOGIN = 256
# How long a refused client may stay connected before the door hangs up.
REFUSED_LINGER = 10.0
# Signatures that do not verify, per connection, before the sign-in is refused.
MAX_FAILED_PROOFS = 6


def split_username(username: str) -> tuple[str, str | None]:
    """``claw@openclaw`` -> (``claw``, ``openclaw``); ``claw`` -> (``claw``, None).

    Split at the last "@": a login may itself contain one (``me@corp@route``).
    """
    login, sep, route = username.rpartition("@")
    if not sep:
        return username, None
    return login, route


class _DoorServerConnection(asyncssh.SSHServerConnection):
    """asyncssh's server connection, told what happens after a key proof.

    ``SSHServer.validate_public_key(username, key)`` runs before asyncssh checks the
    signature, so it cannot tell a client that holds the private key from one that only
    knows the public key; this method of the connection sees both and runs the
    signature check first (``super()``). Pinned by tests/ssh/test_key_proof.py.
    """

    _proof_unfinished = False

    async def validate_public_key(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        ok = await super().validate_public_key(username, key_data, msg, signature)
        owner = cast("_UserConnection | None", self.get_owner())
        if owner is None:
            return False  # the connection closed meanwhile
        if msg and not ok:
            # A signature that does not verify (somebody offering a key they do not
            # hold), or a key refused outright: both count towards the limit.
            owner.failed_proof()
            return False
        if not msg:
            # The query stage: PK_OK or not, as the SSHServer decided.
            return ok
        result = await owner.key_proven(decode_ssh_public_key(key_data))
        if result is None:
            self._proof_unfinished = True
            return False
        return result

    async def create_agent_listener(self) -> bool:
        # ``ssh -A``: asyncssh would open a socket for the user's agent on the clawgate
        # host; only a route that allows agent forwarding gets one (its certificate then
        # lets the upstream use it, through SessionRelay).
        owner = cast("_UserConnection | None", self.get_owner())
        if owner is None or not owner.agent_forwarding_allowed:
            return False
        return await super().create_agent_listener()

    def send_userauth_failure(self, partial_success: bool) -> None:
        # A proven key that still needs an approval: "partial success", so the client
        # knows the key was fine and continues with the methods now listed (only
        # keyboard-interactive) instead of offering other keys.
        if self._proof_unfinished:
            self._proof_unfinished = False
            partial_success = True
        super().send_userauth_failure(partial_success)


@dataclass(eq=False)
class _LiveConnection:
    """What the integrator holds of an authenticated connection (SshConnection)."""

    attempt: Attempt
    grant: Grant
    opened: float
    _owner: _UserConnection = field(repr=False)

    async def end(self, message: str) -> None:
        await self._owner.end(message)


class _UserConnection(asyncssh.SSHServer):
    """One user's connection: its sign-in, its channels and its upstream connection."""

    def __init__(self, door: SshDoor) -> None:
        self._door = door
        self._conn: asyncssh.SSHServerConnection | None = None
        self.opened = time.time()
        self._started = time.monotonic()
        self._client = ""
        self._username: str | None = None
        self._login = ""
        self._route: SshRoute | None = None
        self._attempt_id = secrets.token_urlsafe(24)
        self._key: asyncssh.SSHKey | None = None
        self._attempt: Attempt | None = None
        self._approval_url: str | None = None
        self._waited = False
        self._failed_proofs = 0
        self._grant: Grant | None = None
        self._outcome = "no sign-in"
        self._reason = ""
        self._refused = False
        self._live: _LiveConnection | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._relays: set[SessionRelay] = set()
        self._tcp: set[TcpRelaySide] = set()
        self._listeners: list[asyncssh.SSHListener] = []
        self._upstream: asyncssh.SSHClientConnection | None = None
        self._upstream_lock = asyncio.Lock()
        self._ending: str | None = None
        self._closed = asyncio.Event()
        self._linger: asyncio.TimerHandle | None = None

    @property
    def agent_forwarding_allowed(self) -> bool:
        """Signed in, on a route that allows the user's agent to be forwarded."""
        live = self._live
        return live is not None and live.attempt.route.allow_agent_forwarding

    def agent_path(self) -> str | None:
        """The socket of the user's forwarded agent, if ``ssh -A`` asked for one here."""
        conn = self._conn
        return conn.get_agent_path() if conn is not None else None

    # -- the connection ----------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self._client = str(peer[0]) if peer else ""
        self._door._register(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._outcome == "no sign-in" and self._approval_url is not None:
            self._outcome = "abandoned while waiting for approval"
        for relay in list(self._relays):
            relay.close()
        for side in list(self._tcp):
            side.close()
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
        self._door._unregister(self)
        log.info(
            "ssh",
            user=self._grant.user if self._grant else None,
            route=self._route.name if self._route else None,
            login=self._login or None,
            key_fingerprint=self._key.get_fingerprint() if self._key else None,
            principal=self._grant.principal if self._grant else None,
            session=self._grant.session_ref if self._grant else None,
            outcome=self._outcome,
            reason=self._reason or None,
            ended=self._ending,
            client=self._client,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=round(time.monotonic() - self._started, 3),
        )
        self._closed.set()

    # -- sign-in -----------------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        if self._username is not None:
            # asyncssh calls this again when the user name changes mid sign-in; a proof
            # or approval for one name must never carry over to another.
            self._refuse(Refusal("the user name changed during sign-in", "user name changed"))
            return True
        self._username = username
        login, requested = split_username(username)
        self._login = login
        if not login or len(login) > _MAX_LOGIN:
            self._refuse(
                Refusal("no login name given (use ssh LOGIN@ROUTE@HOST)", "empty or long login")
            )
            return True
        try:
            answer = self._door._gate.route(requested)
        except Exception:
            log.exception("ssh_gate_error", call="route")
            answer = Refusal("internal error; try again later", "gate error (route)")
        if isinstance(answer, Refusal):
            self._refuse(answer)
        else:
            self._route = answer
        return True

    def public_key_auth_supported(self) -> bool:
        return not self._refused and self._key is None

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # The query stage (and the first half of the signed request): any key, as long
        # as the route is known and no key has been proven on this connection yet.
        return not self._refused and self._route is not None and self._key is None

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # user certificates are not a way in

    def password_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return not self._refused

    def failed_proof(self) -> None:
        self._failed_proofs += 1
        if self._failed_proofs >= MAX_FAILED_PROOFS:
            # asyncssh has no MaxAuthTries; without this, one connection could make the
            # door verify signatures until the login timeout.
            self._refuse(Refusal("too many keys failed to sign", "failed key proofs"))

    async def key_proven(self, key: asyncssh.SSHKey) -> bool | None:
        """The client signed with ``key``: True signs in, None asks for an approval."""
        route = self._route
        if self._refused or route is None or self._key is not None:
            return False
        self._key = key
        attempt = Attempt(
            attempt_id=self._attempt_id,
            route=route,
            login=self._login,
            key_fingerprint=key.get_fingerprint("sha256"),
            key_openssh=key.export_public_key("openssh").decode("ascii").strip(),
            client_address=self._client,
        )
        self._attempt = attempt
        try:
            known = await self._door._gate.remembered(attempt)
        except Exception:
            log.exception("ssh_gate_error", call="remembered")
            known = Refusal("internal error; try again later", "gate error (remembered)")
        if known is None:
            return None
        if isinstance(known, Refusal):
            self._refuse(known)
            return False
        return self._granted(known, "remembered")

    async def get_kbdint_challenge(
        self, username: str, lang: str, submethods: str
    ) -> KbdIntChallenge:
        if self._refused:
            return False
        attempt = self._attempt
        if attempt is None:
            self._refuse(
                Refusal(
                    "sign in with an SSH key: clawgate binds the approval to it "
                    "(ssh -i ~/.ssh/id_ed25519 ...)",
                    "no key proven before keyboard-interactive",
                )
            )
            return False
        if self._approval_url is None:
            try:
                self._approval_url = await self._door._gate.begin_approval(attempt)
            except Exception:
                log.exception("ssh_gate_error", call="begin_approval")
                self._refuse(Refusal("internal error; try again later", "gate error (begin)"))
                return False
        minutes = max(1, round(self._door._approval_timeout / 60))
        instruction = (
            "clawgate: approve this sign-in in your browser:\n"
            f"  {self._approval_url}\n"
            f"  route {attempt.route.name}, login {attempt.login}, key {attempt.key_fingerprint}\n"
            f"Waiting for the approval (up to {minutes} minute{'s' if minutes != 1 else ''})..."
        )
        # No prompts: OpenSSH prints the instruction and answers at once, and the
        # answer is held (validate_kbdint_response) until the browser has decided.
        return ("", instruction, "", [])

    async def validate_kbdint_response(
        self, username: str, responses: Sequence[str]
    ) -> KbdIntChallenge:
        attempt = self._attempt
        if self._refused or attempt is None or self._approval_url is None:
            return False
        if self._waited:
            # One approval per connection; a client may not wait twice.
            self._refuse(Refusal("the sign-in was not approved", "second wait"))
            return False
        self._waited = True
        timeout = self._door._approval_timeout
        answer: Grant | Refusal
        try:
            # The Gate owns the timeout; this bound only keeps a stuck Gate from
            # holding the connection forever.
            async with asyncio.timeout(timeout + 5.0):
                answer = await self._door._gate.wait_approval(attempt, timeout)
        except TimeoutError:
            answer = Refusal("the sign-in was not approved in time", "approval timeout")
        except Exception:
            log.exception("ssh_gate_error", call="wait_approval")
            answer = Refusal("internal error; try again later", "gate error (wait)")
        if isinstance(answer, Refusal):
            self._refuse(answer)
            return False
        return self._granted(answer, "approved")

    def _granted(self, grant: Grant, how: str) -> bool:
        if not grant.principal or not grant.key_id:
            log.error("ssh_gate_error", call="grant", error="grant without principal or key id")
            self._refuse(Refusal("internal error; try again later", "incomplete grant"))
            return False
        self._grant = grant
        self._outcome = how
        self._reason = grant.reason
        return True

    def auth_completed(self) -> None:
        attempt, grant = self._attempt, self._grant
        if attempt is None or grant is None:
            # Cannot happen: every success path sets both. Fail closed regardless.
            if self._conn is not None:
                self._conn.close()
            return
        stats = self._door.stats
        stats.authenticated += 1
        if self._outcome == "remembered":
            stats.remembered += 1
        self._live = _LiveConnection(attempt, grant, self.opened, self)
        log.info(
            "ssh_signed_in",
            user=grant.user,
            route=attempt.route.name,
            login=attempt.login,
            principal=grant.principal,
            key_fingerprint=attempt.key_fingerprint,
            how=self._outcome,
            client=self._client,
        )

    def _refuse(self, refusal: Refusal) -> None:
        """End the sign-in: show the message, offer no method any more."""
        if self._refused:
            return
        self._refused = True
        self._outcome = "refused"
        self._reason = refusal.reason
        self._door.stats.refused += 1
        log.info(
            "ssh_refused",
            route=self._route.name if self._route else None,
            login=self._login or None,
            key_fingerprint=self._key.get_fingerprint() if self._key else None,
            reason=refusal.reason,
            message=refusal.message,
            client=self._client,
        )
        conn = self._conn
        if conn is not None:
            # A banner reaches the user whichever method was running; OpenSSH prints
            # it on stderr. The next failure then lists no methods, and the client ends.
            with contextlib.suppress(OSError):
                conn.send_auth_banner(f"clawgate: {refusal.message}\n")
            # A client that does not end by itself is dropped soon after: a refused
            # connection holds nothing worth the login timeout.
            self._linger = asyncio.get_running_loop().call_later(
                REFUSED_LINGER,
                conn.disconnect,
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                "clawgate: sign-in refused",
            )

    # -- after sign-in: channels -------------------------------------------------------

    @property
    def live(self) -> _LiveConnection | None:
        return self._live

    def count_in(self, n: int) -> None:
        self.bytes_in += n
        self._door.stats.bytes_in += n

    def count_out(self, n: int) -> None:
        self.bytes_out += n
        self._door.stats.bytes_out += n

    def session_requested(self) -> Awaitable[asyncssh.SSHServerSession[bytes]] | bool:
        if self._live is None or self._ending is not None:
            return False
        return self._open_session()

    async def _open_session(self) -> asyncssh.SSHServerSession[bytes]:
        upstream = await self._get_upstream()
        route = self._live.attempt.route if self._live else None
        assert route is not None
        relay = SessionRelay(
            upstream,
            self,
            route_name=route.name,
            allow_pty=route.allow_pty,
            on_closed=self._relays.discard,
            on_failed=self._session_failed,
        )
        self._relays.add(relay)
        return relay

    def _session_failed(self, reason: str) -> None:
        self._door.stats.upstream_failed += 1
        log.error(
            "ssh_upstream_failed",
            stage="session",
            user=self._grant.user if self._grant else None,
            route=self._route.name if self._route else None,
            error=reason,
        )

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        route = self._route
        if self._live is None or route is None or self._ending is not None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not signed in"
            )
        if not route.allow_port_forwarding:
            log.info(
                "ssh_forwarding_refused",
                route=route.name,
                kind="direct-tcpip",
                user=self._live.grant.user,
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"clawgate: port forwarding is not allowed on route {route.name}",
            )
        return self._open_direct(dest_host, dest_port, orig_host, orig_port)

    async def _open_direct(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        upstream = await self._get_upstream()
        user_side = TcpRelaySide(self, inbound=True)
        _, up = await upstream.create_connection(
            lambda: TcpRelaySide(self, inbound=False), dest_host, dest_port, orig_host, orig_port
        )
        up_side = cast(TcpRelaySide, up)
        self._track(user_side, up_side)
        return user_side

    def server_requested(
        self, listen_host: str, listen_port: int
    ) -> Awaitable[asyncssh.SSHListener | bool] | bool:
        route = self._route
        if self._live is None or route is None or self._ending is not None:
            return False
        if not route.allow_port_forwarding:
            log.info(
                "ssh_forwarding_refused",
                route=route.name,
                kind="tcpip-forward",
                user=self._live.grant.user,
            )
            return False
        return self._listen_upstream(listen_host, listen_port)

    async def _listen_upstream(
        self, listen_host: str, listen_port: int
    ) -> asyncssh.SSHListener | bool:
        try:
            upstream = await self._get_upstream()
        except asyncssh.ChannelOpenError:
            return False
        bound: list[int] = []

        def accept(orig_host: str, orig_port: int) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
            return self._accept_forwarded(
                listen_host, bound[0] if bound else listen_port, orig_host, orig_port
            )

        try:
            listener = await upstream.create_server(accept, listen_host, listen_port)
        except (asyncssh.Error, OSError) as exc:
            log.info(
                "ssh_remote_forward_failed",
                route=self._route.name if self._route else None,
                error=str(exc),
            )
            return False
        bound.append(listener.get_port())
        self._listeners.append(listener)
        return listener

    async def _accept_forwarded(
        self, listen_host: str, listen_port: int, orig_host: str, orig_port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        conn = self._conn
        if conn is None or self._ending is not None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "user connection closed")
        up_side = TcpRelaySide(self, inbound=False)
        _, user = await conn.create_connection(
            lambda: TcpRelaySide(self, inbound=True), listen_host, listen_port, orig_host, orig_port
        )
        self._track(cast(TcpRelaySide, user), up_side)
        return up_side

    def _track(self, user_side: TcpRelaySide, up_side: TcpRelaySide) -> None:
        user_side.link(up_side)
        self._tcp.add(user_side)
        self._tcp.add(up_side)

    async def _get_upstream(self) -> asyncssh.SSHClientConnection:
        """The one upstream connection of this user connection, made on first use."""
        async with self._upstream_lock:
            if self._upstream is not None:
                return self._upstream
            live = self._live
            if live is None or self._ending is not None:
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection ending")
            route = live.attempt.route
            try:
                conn = await connect_upstream(
                    route,
                    live.grant,
                    self._door._ca,
                    known_hosts=self._door._known_hosts,
                    pins=self._door._pins,
                    on_lost=self._upstream_lost,
                )
            except UpstreamError as exc:
                self._door.stats.upstream_failed += 1
                log.error(
                    "ssh_upstream_failed",
                    stage="connect",
                    kind=exc.kind,
                    user=live.grant.user,
                    route=route.name,
                    upstream=f"{route.upstream_host}:{route.upstream_port}",
                    principal=live.grant.principal,
                    error=exc.detail,
                )
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_CONNECT_FAILED, f"clawgate: {exc.user_message}"
                ) from None
            if self._ending is not None or self._conn is None:
                conn.close()
                raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection ending")
            self._upstream = conn
            return conn

    def _upstream_lost(self) -> None:
        # Channels on it close by themselves (their upstream halves are gone); a later
        # channel makes a new upstream connection with a new certificate.
        self._upstream = None

    # -- continuous authorization --------------------------------------------------------

    async def end(self, message: str) -> None:
        """Say why on every open session's stderr, then close upstream and user sides."""
        conn = self._conn
        if self._ending is not None or conn is None:
            await self._wait_closed()
            return
        self._ending = message
        self._door.stats.ended += 1
        log.info(
            "ssh_ending",
            user=self._grant.user if self._grant else None,
            route=self._route.name if self._route else None,
            message=message,
        )
        text = f"\r\nclawgate: {message}\r\n"
        relays = list(self._relays)
        for relay in relays:
            relay.notify(text)
            relay.close()
        for side in list(self._tcp):
            side.close()
        for listener in self._listeners:
            listener.close()
        if self._upstream is not None:
            self._upstream.close()
        if self._live is None:
            # Still signing in (e.g. waiting for an approval): a banner is the only way
            # to say why on the user's terminal.
            with contextlib.suppress(OSError):
                conn.send_auth_banner(f"clawgate: {message}\n")
        if relays:
            # A channel's close goes out after the data queued before it: give the
            # user's client a moment to take the message before the connection is cut.
            waits = [asyncio.ensure_future(relay.wait_closed()) for relay in relays]
            _, pending = await asyncio.wait(waits, timeout=END_FLUSH_TIMEOUT)
            for task in pending:
                task.cancel()
        conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"clawgate: {message}")
        await self._wait_closed()

    async def _wait_closed(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._closed.wait()


class SshDoor:
    """The SSH listener: sign-in through the Gate, sessions relayed to the upstream."""

    def __init__(
        self,
        gate: Gate,
        ca: UserCA,
        *,
        state_dir: Path,
        host_key_files: Sequence[Path] = (),
        known_hosts: Path | None = None,
        approval_timeout: float = 300.0,
    ) -> None:
        if approval_timeout <= 0:
            raise ValueError("approval_timeout must be positive")
        self._gate = gate
        self._ca = ca
        self._state_dir = state_dir
        self._host_key_files = tuple(host_key_files)
        self._known_hosts = known_hosts
        self._approval_timeout = approval_timeout
        self._pins = PinnedHosts(state_dir / PINNED_FILE)
        self._server: asyncio.Server | None = None
        self._all: set[_UserConnection] = set()
        self.stats = SshStats()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); return the bound port."""
        if self._server is not None:
            raise RuntimeError("the SSH door is already started")
        asyncssh_log = logging.getLogger("asyncssh")
        if asyncssh_log.level == logging.NOTSET:
            # asyncssh logs commands, subsystems and environment values at INFO and
            # DEBUG; those may carry secrets. Unless the operator chose a level for it,
            # keep it to warnings whatever the root logger lets through.
            asyncssh_log.setLevel(logging.WARNING)
        if self._known_hosts is not None and not self._known_hosts.is_file():
            raise SshSetupError(f"SSH upstream known_hosts {self._known_hosts}: file not found")
        # Key generation (RSA) and file I/O are slow-ish; keep them off the loop.
        await asyncio.to_thread(ensure_state_dir, self._state_dir)
        keys = await asyncio.to_thread(load_host_keys, self._host_key_files, self._state_dir)
        options = await asyncssh.SSHServerConnectionOptions.construct(
            server_factory=lambda: _UserConnection(self),
            server_host_keys=keys,
            server_version="clawgate",
            # Raw bytes in both directions, no line editing: a relay, not a shell.
            encoding=None,
            line_editor=False,
            allow_scp=False,
            # A forwarded agent is a socket on the clawgate host (a private directory),
            # opened only for routes that allow it (_DoorServerConnection); X11: never.
            agent_forwarding=True,
            x11_forwarding=False,
            public_key_auth=True,
            kbdint_auth=True,
            password_auth=False,
            host_based_auth=False,
            gss_auth=False,
            gss_kex=False,
            login_timeout=self._approval_timeout + LOGIN_GRACE,
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=3,
        )
        loop = asyncio.get_running_loop()

        # What asyncssh.listen() does, with our connection class in place of
        # SSHServerConnection (see _DoorServerConnection for why).
        def conn_factory() -> asyncssh.SSHServerConnection:
            return _DoorServerConnection(loop, options)

        self._server = await loop.create_server(conn_factory, host, port, reuse_address=True)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "ssh_listening",
            address=f"{host}:{bound}",
            host_keys=[key.get_fingerprint() for key in keys],
        )
        return bound

    async def close(self) -> None:
        """Stop listening and end every connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await asyncio.gather(
            *(conn.end("clawgate is shutting down") for conn in list(self._all)),
            return_exceptions=True,
        )
        if server is not None:
            await server.wait_closed()

    def connections(self) -> list[SshConnection]:
        """The live, authenticated user connections."""
        return [conn.live for conn in self._all if conn.live is not None]

    def _register(self, conn: _UserConnection) -> None:
        self._all.add(conn)
        self.stats.connections += 1

    def _unregister(self, conn: _UserConnection) -> None:
        self._all.discard(conn)
