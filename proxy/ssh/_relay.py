"""Channel relays between the user's connection and the upstream connection.

Bytes go through as they come (``encoding=None``), and never pile up: when one side's
send buffer passes asyncssh's high-water mark, reading from the other side pauses until
it drains, so the SSH windows of both connections carry the backpressure end to end.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Protocol

import asyncssh
import structlog

log = structlog.get_logger("clawgate.ssh")

# Environment variables a user may pass to the upstream (the upstream's AcceptEnv
# still decides); anything else could change how the login shell or sshd behaves.
_SAFE_ENV = re.compile(rb"\A(?:LANG|LANGUAGE|LC_[A-Z_]+|TZ|COLORTERM)\Z")
_MAX_ENV_VALUE = 256


def safe_env(env: Mapping[bytes, bytes]) -> dict[bytes | str, bytes | str]:
    """The allowlisted part of the environment a client asked for."""
    safe: dict[bytes | str, bytes | str] = {
        k: v
        for k, v in env.items()
        if _SAFE_ENV.match(k) and len(v) <= _MAX_ENV_VALUE and b"\0" not in v
    }
    return safe


class Meter(Protocol):
    """The user connection as its relays see it: where they count the bytes they move,
    and the socket of the user's forwarded agent (None unless `ssh -A` on a route that
    allows it)."""

    def count_in(self, n: int) -> None: ...

    def count_out(self, n: int) -> None: ...

    def agent_path(self) -> str | None: ...


class SessionRelay(asyncssh.SSHServerSession[bytes]):
    """One user session channel (shell, exec, subsystem) and its upstream twin.

    The user side is accepted at once; the upstream channel is opened when the user
    asks for a shell, command or subsystem, with the pty and environment asked for
    before. Until it is open, reading from the user is paused (data waits in the SSH
    window, not here, but for at most one packet).
    """

    def __init__(
        self,
        upstream: asyncssh.SSHClientConnection,
        meter: Meter,
        *,
        route_name: str,
        allow_pty: bool,
        on_closed: Callable[[SessionRelay], None],
        on_failed: Callable[[str], None],
    ) -> None:
        self._upstream = upstream
        self._meter = meter
        self._route_name = route_name
        self._allow_pty = allow_pty
        self._on_closed = on_closed
        self._on_failed = on_failed
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._up: asyncssh.SSHClientChannel[bytes] | None = None
        self._ready = False
        self._up_backpressure = False
        self._eof_pending = False
        self._early: list[tuple[bytes, int | None]] = []
        self._pty: tuple[str, tuple[int, int, int, int], Mapping[int, int]] | None = None
        self._size: tuple[int, int, int, int] | None = None
        self._command: str | None = None
        self._subsystem: str | None = None
        self._exit_status: int | None = None
        self._exit_signal: tuple[str, bool, str, str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- user side ---------------------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Mapping[int, int]
    ) -> bool:
        if not self._allow_pty:
            log.info("ssh_pty_refused", route=self._route_name)
            return False
        self._pty = (term_type, term_size, dict(term_modes))
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._open_upstream())

    async def _open_upstream(self) -> None:
        chan = self._chan
        assert chan is not None
        env = safe_env(chan.get_environment_bytes())
        # ``ssh -A`` on a route that allows it: the upstream session asks for agent
        # forwarding, and the agent channels it opens go to the user's agent socket.
        # asyncssh asks for it on every session of a connection whose agent path is
        # set, and has no public way to set it after connecting.
        agent = self._meter.agent_path()
        if agent is not None:
            self._upstream._agent_forward_path = agent
        try:
            if self._pty is not None:
                term_type, term_size, term_modes = self._pty
                await self._upstream.create_session(
                    lambda: _UpstreamSessionSide(self),
                    command=self._command,
                    subsystem=self._subsystem,
                    env=env,
                    request_pty="force",
                    term_type=term_type,
                    term_size=term_size,
                    term_modes=term_modes,
                    encoding=None,
                    x11_forwarding=False,
                )
            else:
                await self._upstream.create_session(
                    lambda: _UpstreamSessionSide(self),
                    command=self._command,
                    subsystem=self._subsystem,
                    env=env,
                    request_pty=False,
                    encoding=None,
                    x11_forwarding=False,
                )
        except Exception as exc:
            if self._closed:
                return  # the user closed the channel meanwhile: nothing failed
            if isinstance(exc, asyncssh.Error):
                reason = exc.reason
            elif isinstance(exc, OSError):
                reason = str(exc)
            else:
                # Not expected; fail closed all the same, with the trace in the log.
                log.exception("ssh_relay_error", route=self._route_name)
                reason = "internal error"
            self._on_failed(reason)
            if not chan.is_closing():
                chan.write_stderr(
                    f"clawgate: the upstream refused the session on route {self._route_name}: "
                    f"{reason}\r\n".encode()
                )
            chan.close()
            return
        if self._closed:
            self._close_up()
            return
        up = self._up
        assert up is not None
        if self._size is not None:
            up.change_terminal_size(*self._size)
        self._ready = True
        early, self._early = self._early, []
        for data, datatype in early:
            self.data_received(data, datatype)
        if self._eof_pending:
            up.write_eof()
        self._resume_user()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if not self._ready:
            # asyncssh resumes reading right after session_started(), before the
            # upstream channel exists: hold this one packet and pause, so the rest
            # waits in the SSH window rather than here.
            self._early.append((data, datatype))
            if self._chan is not None:
                self._chan.pause_reading()
            return
        up = self._up
        if up is None or up.is_closing():
            return
        self._meter.count_in(len(data))
        up.write(data, datatype)

    def eof_received(self) -> bool:
        if self._ready and self._up is not None:
            self._up.write_eof()
        else:
            self._eof_pending = True
        # Keep the channel half-open: the upstream may still have output to send.
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        self._size = (width, height, pixwidth, pixheight)
        if self._ready and self._up is not None:
            self._up.change_terminal_size(width, height, pixwidth, pixheight)

    def break_received(self, msec: int) -> bool:
        if not (self._ready and self._up is not None):
            return False
        self._up.send_break(msec)
        return True

    def signal_received(self, signal: str) -> None:
        if self._ready and self._up is not None:
            self._up.send_signal(signal)

    def pause_writing(self) -> None:
        # The user reads slower than the upstream writes: stop reading the upstream.
        if self._up is not None:
            self._up.pause_reading()

    def resume_writing(self) -> None:
        if self._up is not None:
            self._up.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._close_up()
        self._on_closed(self)

    # -- what the door does ------------------------------------------------------------

    def notify(self, text: str) -> None:
        """Write a line of clawgate's own to the user's stderr (e.g. why it ends)."""
        chan = self._chan
        if chan is not None and not chan.is_closing():
            chan.write_stderr(text.encode("utf-8", "replace"))

    async def wait_closed(self) -> None:
        if self._chan is not None:
            await self._chan.wait_closed()

    def close(self) -> None:
        """Close the user's channel (after what was written to it) and the upstream's."""
        self._closed = True
        self._close_up()
        if self._chan is not None:
            self._chan.close()

    def _close_up(self) -> None:
        if self._up is not None:
            self._up.close()

    def _resume_user(self) -> None:
        if self._chan is not None and self._ready and not self._up_backpressure:
            self._chan.resume_reading()

    # -- called by the upstream side ---------------------------------------------------

    def up_connection_made(self, up: asyncssh.SSHClientChannel[bytes]) -> None:
        self._up = up

    def up_data(self, data: bytes, datatype: int | None) -> None:
        chan = self._chan
        if chan is None or chan.is_closing():
            return
        self._meter.count_out(len(data))
        chan.write(data, datatype)

    def up_eof(self) -> None:
        if self._chan is not None and not self._chan.is_closing():
            self._chan.write_eof()

    def up_exit_status(self, status: int) -> None:
        self._exit_status = status

    def up_exit_signal(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._exit_signal = (signal, core_dumped, msg, lang)

    def up_pause(self) -> None:
        self._up_backpressure = True
        if self._chan is not None:
            self._chan.pause_reading()

    def up_resume(self) -> None:
        self._up_backpressure = False
        self._resume_user()

    def up_closed(self) -> None:
        """The upstream closed its channel: pass on how the command ended, then close."""
        chan = self._chan
        if chan is None or self._closed:
            return
        # The exit status comes from the upstream's close, not its exit-status request:
        # sshd may send that before the last output, and exit() closes the channel.
        if self._exit_status is not None:
            chan.exit(self._exit_status)
        elif self._exit_signal is not None:
            chan.exit_with_signal(*self._exit_signal)
        else:
            chan.close()


class _UpstreamSessionSide(asyncssh.SSHClientSession[bytes]):
    """The upstream end of a session relay: everything goes to the SessionRelay."""

    def __init__(self, relay: SessionRelay) -> None:
        self._relay = relay

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._relay.up_connection_made(chan)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self._relay.up_data(data, datatype)

    def eof_received(self) -> bool:
        self._relay.up_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self._relay.up_exit_status(status)

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._relay.up_exit_signal(signal, core_dumped, msg, lang)

    def pause_writing(self) -> None:
        self._relay.up_pause()

    def resume_writing(self) -> None:
        self._relay.up_resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.up_closed()


class TcpRelaySide(asyncssh.SSHTCPSession[bytes]):
    """One end of a forwarded TCP channel pair; ``peer`` is the other end.

    Each side starts paused until both channels are open, so nothing arrives with
    nowhere to go. ``inbound`` says which way this side's received bytes count.
    """

    def __init__(self, meter: Meter, *, inbound: bool) -> None:
        self._meter = meter
        self._inbound = inbound
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.peer: TcpRelaySide | None = None

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan
        chan.pause_reading()
        self._maybe_start()

    def link(self, peer: TcpRelaySide) -> None:
        self.peer = peer
        peer.peer = self
        self._maybe_start()

    def _maybe_start(self) -> None:
        peer = self.peer
        if self.chan is not None and peer is not None and peer.chan is not None:
            self.chan.resume_reading()
            peer.chan.resume_reading()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        peer = self.peer
        if peer is None or peer.chan is None or peer.chan.is_closing():
            return
        if self._inbound:
            self._meter.count_in(len(data))
        else:
            self._meter.count_out(len(data))
        peer.chan.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.chan is not None and not peer.chan.is_closing():
            peer.chan.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.chan is not None:
            peer.chan.close()

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()
