"""The connection from clawgate to the upstream sshd, one per user connection.

It authenticates with a fresh ephemeral key and a certificate signed on the spot, and
nothing else: no agent, no config files, no ~/.ssh of the clawgate process. The upstream
host key is checked before anything is sent under the certificate's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncssh

from proxy.ssh._ca import CERT_LIFETIME, CertExtensions, UserCA
from proxy.ssh._hostkeys import PinnedHosts
from proxy.ssh._types import Grant, SshRoute, SshSetupError

CONNECT_TIMEOUT = 15.0
# Keepalives on the upstream connection: a dead upstream is noticed within ~90 s.
KEEPALIVE_INTERVAL = 30.0


class UpstreamError(Exception):
    """The upstream connection failed: ``user_message`` for the terminal, ``detail`` for logs."""

    def __init__(self, user_message: str, detail: str, *, kind: str) -> None:
        super().__init__(detail)
        self.user_message = user_message
        self.detail = detail
        self.kind = kind


class _UpstreamClient(asyncssh.SSHClient):
    """Host key trust on first use (when no known_hosts file is configured)."""

    def __init__(self, first_use: bool, on_lost: Callable[[], None]) -> None:
        self._first_use = first_use
        self._on_lost = on_lost

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        # Called only for keys not already trusted (pinned or in known_hosts). With no
        # pin yet the key is accepted here and pinned once the handshake has proven the
        # upstream holds it; with a pin, or a known_hosts file, anything else is refused.
        return self._first_use

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()


async def connect_upstream(
    route: SshRoute,
    grant: Grant,
    ca: UserCA,
    *,
    known_hosts: Path | None,
    pins: PinnedHosts,
    on_lost: Callable[[], None],
) -> asyncssh.SSHClientConnection:
    """An authenticated upstream connection for ``grant`` on ``route``, or UpstreamError."""
    host, port = route.upstream_host, route.upstream_port
    trusted: (
        asyncssh.SSHKnownHosts
        | tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]
    )
    if known_hosts is not None:
        try:
            trusted = asyncssh.read_known_hosts(str(known_hosts))
        except (OSError, ValueError) as exc:
            raise UpstreamError(
                f"clawgate cannot check the upstream's host key for route {route.name}",
                f"known_hosts {known_hosts}: {exc}",
                kind="known_hosts",
            ) from None
        first_use = False
    else:
        try:
            pinned = pins.pinned(host, port)
        except SshSetupError as exc:
            raise UpstreamError(
                f"clawgate cannot check the upstream's host key for route {route.name}",
                str(exc),
                kind="known_hosts",
            ) from None
        # (trusted keys, trusted CA keys, revoked keys): asyncssh then also offers only
        # the pinned keys' algorithms, so the upstream shows the key that was pinned.
        trusted = (pinned, [], [])
        first_use = not pinned

    key = asyncssh.generate_private_key("ssh-ed25519")
    cert = ca.sign(
        key,
        principal=grant.principal,
        key_id=grant.key_id,
        lifetime=CERT_LIFETIME,
        extensions=CertExtensions.for_route(route),
    )
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                host,
                port,
                username=grant.principal,
                client_factory=lambda: _UpstreamClient(first_use, on_lost),
                known_hosts=trusted,
                client_keys=[(key, cert)],
                # Nothing from the clawgate host's own SSH setup may take part.
                config=None,
                agent_path=None,
                agent_forwarding=False,
                x11_forwarding=False,
                password_auth=False,
                kbdint_auth=False,
                gss_auth=False,
                gss_kex=False,
                host_based_auth=False,
                preferred_auth="publickey",
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=3,
            ),
            timeout=CONNECT_TIMEOUT,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        if first_use:
            # Not expected (first use accepts any key), but fail closed all the same.
            raise UpstreamError(
                f"clawgate could not verify the upstream's host key for route {route.name}",
                str(exc),
                kind="host_key",
            ) from None
        where = f"known_hosts file {known_hosts}" if known_hosts else f"pinned in {pins.path}"
        raise UpstreamError(
            f"the upstream's host key for route {route.name} is not the one clawgate "
            "trusts; refusing to connect (tell your administrator)",
            f"host key of {host}:{port} not {where}: {exc.reason}",
            kind="host_key",
        ) from None
    except asyncssh.KeyExchangeFailed as exc:
        if first_use:
            raise UpstreamError(
                f"clawgate cannot reach the upstream for route {route.name}",
                f"upstream {host}:{port}: key exchange failed: {exc.reason}",
                kind="connect",
            ) from None
        # Only the pinned key's algorithms are offered: an upstream that has no such
        # key any more fails here rather than with a key mismatch.
        raise UpstreamError(
            f"the upstream's host key for route {route.name} is not the one clawgate "
            "trusts; refusing to connect (tell your administrator)",
            f"upstream {host}:{port} offers no host key of the pinned type: {exc.reason}",
            kind="host_key",
        ) from None
    except asyncssh.PermissionDenied as exc:
        raise UpstreamError(
            f"the upstream refused clawgate's certificate for route {route.name} "
            f"(login {grant.principal})",
            f"upstream {host}:{port} refused the certificate: {exc.reason}",
            kind="auth",
        ) from None
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        detail = exc.reason if isinstance(exc, asyncssh.Error) else str(exc) or type(exc).__name__
        raise UpstreamError(
            f"clawgate cannot reach the upstream for route {route.name}",
            f"upstream {host}:{port}: {detail}",
            kind="connect",
        ) from None

    if first_use:
        server_key = conn.get_server_host_key()
        try:
            matches = server_key is not None and pins.pin(host, port, server_key)
        except (SshSetupError, OSError) as exc:
            conn.close()
            raise UpstreamError(
                f"clawgate could not record the upstream's host key for route {route.name}",
                f"pinning {host}:{port} in {pins.path}: {exc}",
                kind="host_key",
            ) from None
        if not matches:
            # Another connection pinned a different key between our read and now.
            conn.close()
            raise UpstreamError(
                f"the upstream's host key for route {route.name} is not the one clawgate "
                "trusts; refusing to connect (tell your administrator)",
                f"host key of {host}:{port} differs from the one pinned meanwhile in {pins.path}",
                kind="host_key",
            )
    return conn
