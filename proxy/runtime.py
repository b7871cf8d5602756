"""What one running clawgate process shares between requests.

The snapshot reference is the only thing that changes at run time (config reload);
handlers read it once per request.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy.oidc import OidcClient
from proxy.session import Session
from proxy.snapshot import Snapshot
from proxy.store import Revocation, Store, open_store
from proxy.upstream_link import LinkPool
from proxy.websocket import ConnectionRegistry

# Session ids of API-key sessions (proxy/service_identity.py): this and the key's hash.
KEY_SESSION = "k:"


@dataclass
class ReloadStatus:
    """What the health endpoints and metrics say about the config on disk."""

    in_force_generation: int = 1
    disk_matches: bool = True
    last_error: str | None = None
    needs_restart: tuple[str, ...] = ()


@dataclass
class Runtime:
    snapshot: Snapshot
    oidc: OidcClient | None
    registry: ConnectionRegistry = field(default_factory=ConnectionRegistry)
    # Keep-alive upstream connections, for both request paths (proxy/upstream_link.py);
    # WebSocket upgrades connect on their own (proxy/wsrelay.py).
    links: LinkPool = field(default_factory=LinkPool)
    reload: ReloadStatus = field(default_factory=ReloadStatus)
    started: float = field(default_factory=time.time)
    draining: bool = False
    # Signed-out session ids until their cookies would have expired anyway: a copy of a
    # signed-out cookie must not keep working on this instance.
    revoked: dict[str, int] = field(default_factory=dict)
    # Users signed out everywhere (by email or subject; "" is everyone): every session
    # of theirs issued at or before ``not_before`` is refused, until ``until``.
    not_before: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The provider's sessions logged out through the back channel, until when.
    provider_sessions: dict[str, int] = field(default_factory=dict)
    # Where sign-outs and other shared state go (proxy/store/); this instance's view of
    # it is ``revoked`` and ``not_before``, which requests read without waiting.
    store: Store = field(default_factory=lambda: open_store("memory", None, prefix=""))

    # Private directory shared with sibling workers (refresh hand-over), or None.
    shared_dir: Path | None = None
    # Called with every sign-out made here (proxy/peers.py tells sibling workers).
    revoke_hooks: list[Callable[[Revocation], None]] = field(default_factory=list)
    # Re-decide connections held open outside the WebSocket registry (the SSH door,
    # proxy/ssh_gate.py): called whenever the WebSockets are re-checked
    # (proxy/policy_watch.py), i.e. on a sign-out, a reload and every sweep.
    reauthorizers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def revoke(self, revocation: Revocation, *, broadcast: bool = True) -> None:
        """A sign-out made here (or, ``broadcast`` False, told by a sibling worker)."""
        self.apply(revocation)
        if broadcast:
            for hook in self.revoke_hooks:
                hook(revocation)

    def refuses(self, session: Session) -> bool:
        """Whether a sign-out seen by this instance covers ``session``: the one check
        every path and every cached verdict makes before using a session."""
        if session.sid in self.revoked:
            return True
        if session.sid.startswith(KEY_SESSION) and (
            session.sid[len(KEY_SESSION) :] not in self.snapshot.api_key_hashes
        ):
            return True  # an API key no longer in api_keys_file
        if session.provider_sid is not None and session.provider_sid in self.provider_sessions:
            return True
        marks = self.not_before
        if not marks:
            return False
        for key in ("", session.sub, session.email):
            mark = marks.get(key) if key is not None else None
            if mark is not None and session.issued_at <= mark[0]:
                return True
        return False

    def apply(self, revocation: Revocation) -> None:
        """Take a sign-out into this instance's view (idempotent, in any order)."""
        if revocation.kind == "session":
            sid = revocation.subject
            self.revoked[sid] = max(self.revoked.get(sid, 0), revocation.until)
            return
        if revocation.kind == "provider_session":
            psid = revocation.subject
            self.provider_sessions[psid] = max(
                self.provider_sessions.get(psid, 0), revocation.until
            )
            return
        key = revocation.subject if revocation.kind == "user" else ""
        old = self.not_before.get(key, (0, 0))
        self.not_before[key] = (
            max(old[0], revocation.not_before),
            max(old[1], revocation.until),
        )

    def prune_revoked(self, now: int) -> None:
        for sid in [s for s, until in self.revoked.items() if until <= now]:
            del self.revoked[sid]
        for key in [k for k, (_, until) in self.not_before.items() if until <= now]:
            del self.not_before[key]
        for psid in [p for p, until in self.provider_sessions.items() if until <= now]:
            del self.provider_sessions[psid]

    @property
    def secure(self) -> bool:
        return not self.snapshot.settings.insecure_server


def client_ip(request: web.BaseRequest, trusted_hops: int) -> str:
    """The client's address: the peer, or with ``xff_num_trusted_hops`` N, the address
    the N-th trusted proxy saw (counted from the right of X-Forwarded-For)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    address = peer[0] if isinstance(peer, tuple) and peer else "0.0.0.0"  # noqa: S104
    if trusted_hops <= 0:
        return str(address)
    forwarded = request.headers.getall("X-Forwarded-For", ())
    return forwarded_client(str(address), forwarded, trusted_hops)


def forwarded_client(address: str, forwarded_for: Iterable[str], trusted_hops: int) -> str:
    """The address the ``trusted_hops``-th proxy from the right saw, else ``address``."""
    hops = [h.strip() for v in forwarded_for for h in v.split(",")]
    hops = [h for h in hops if h]
    if len(hops) < trusted_hops:
        return address
    candidate = hops[-trusted_hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return address


RUNTIME = web.AppKey("runtime", Runtime)
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE_NAME = web.RequestKey("route", str)
USER = web.RequestKey("user", str)
