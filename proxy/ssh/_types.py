"""What the SSH door and its integrator say to each other.

The door knows SSH; the integrator knows identities, approvals and policy. They meet at
the `Gate` protocol: the door asks it which route a user name names, whether a proven
key is already remembered for an approved session, and for a browser approval; the
integrator later ends live connections through `SshConnection.end` (continuous
authorization). Everything here is plain data so both sides can be tested apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SshSetupError(Exception):
    """A key file or directory the door needs is missing, unreadable or malformed.

    The message names the file and the reason; it never contains key material.
    """


@dataclass(frozen=True)
class SshRoute:
    """One SSH destination behind the door, and what users may do on it."""

    name: str
    upstream_host: str
    upstream_port: int
    allow_pty: bool = True
    allow_port_forwarding: bool = False
    allow_agent_forwarding: bool = False
    allow_x11_forwarding: bool = False


@dataclass(frozen=True)
class Attempt:
    """What a user asked for on one connection; shown on the approval page.

    Built only once the client has proven it holds the private key of
    ``key_openssh`` (it signed this connection's session id with it).
    """

    attempt_id: str  # random, unguessable, one per connection: treat it as a secret
    route: SshRoute
    login: str  # the login the user asked for (the ssh_username policy criterion)
    key_fingerprint: str  # SHA256:...
    key_openssh: str  # the public key line, without comment
    client_address: str


@dataclass(frozen=True)
class Grant:
    """An approved, policy-allowed attempt: who the user is and whom to log in as."""

    user: str  # e-mail (or sub), for logs and the certificate key id
    session_ref: str  # a non-secret reference to the clawgate session
    principal: str  # the login on the upstream (mapped by the integrator)
    key_id: str  # the certificate key id, e.g. "clawgate:alice@example.com:session=ab12cd34"
    reason: str  # the policy decision's reason, for the log


@dataclass(frozen=True)
class Refusal:
    """A refused attempt: ``message`` goes to the user's terminal, ``reason`` to the log."""

    message: str  # e.g. "not allowed by policy for route openclaw"
    reason: str


class Gate(Protocol):
    """The integrator's side of the door: routes, remembered keys, approvals."""

    def route(self, requested: str | None) -> SshRoute | Refusal:
        """The route a user name names (the part after its last "@"), or None for none."""
        ...

    async def remembered(self, attempt: Attempt) -> Grant | Refusal | None:
        """A grant when this proven key belongs to an approved session on the route.

        None: not known, the door asks for a browser approval. A Refusal ends the
        sign-in (e.g. the session is known but the policy now denies the route).
        """
        ...

    async def begin_approval(self, attempt: Attempt) -> str:
        """Register the attempt for approval; return the sign-in URL to show the user."""
        ...

    # The timeout is part of the contract (the Gate answers with a Refusal when it
    # passes), not a cancellation the caller could apply from outside.
    async def wait_approval(self, attempt: Attempt, timeout: float) -> Grant | Refusal:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the browser's answer (a Refusal on expiry)."""
        ...


class SshConnection(Protocol):
    """A live, authenticated user connection, as the integrator sees it."""

    @property
    def attempt(self) -> Attempt: ...

    @property
    def grant(self) -> Grant: ...

    @property
    def opened(self) -> float:
        """When the connection was accepted (time.time())."""
        ...

    async def end(self, message: str) -> None:
        """Tell the user why on every open session's stderr, then close both sides."""
        ...


@dataclass
class SshStats:
    """Counters since the door started; the integrator exports them as metrics.

    Plain integers written from the event loop only, so reading them needs no lock.
    """

    connections: int = 0  # TCP connections accepted
    authenticated: int = 0  # sign-ins that ended in a grant (remembered or approved)
    remembered: int = 0  # of those, granted without a new approval
    refused: int = 0  # sign-ins refused (route, policy, expired approval, key problems)
    upstream_failed: int = 0  # upstream connections that could not be made
    ended: int = 0  # connections clawgate ended (end(), close())
    bytes_in: int = 0  # user -> upstream, channel payload
    bytes_out: int = 0  # upstream -> user, channel payload
