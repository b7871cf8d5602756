"""A throwaway network namespace joined to the host by a veth pair.

End-to-end tests need a client whose address is *not* loopback: the OpenClaw gateway refuses a
forwarded client address that names loopback, and refuses identity headers from a source it does
not trust. A namespace gives the test such a client without touching any real network:

    host  (root namespace)  veth ``<name>h``  10.213.<subnet>.1/30   <- servers the test starts
    ns    ``<name>``        veth ``<name>n``  10.213.<subnet>.2/30   <- the "remote" client

The namespace has no default route, so code running inside it can reach only the host end
address (and its own loopback). Nothing here routes or NATs beyond the pair.

Usage::

    with NetNamespace() as ns:                  # needs root and iproute2
        ns.host_addr, ns.ns_addr                # "10.213.57.1", "10.213.57.2"
        ns.run(["curl", f"http://{ns.host_addr}:8080/"])
        out = ns.run_python("print(1 + 1)")     # the project's interpreter, inside the namespace

`NetNamespace.available()` says why namespaces cannot be used here (not root, no ``ip``), or
``None`` when they can; callers turn that into a visible ``pytest.skip``.

The subnet's third octet is picked at random among free ones (``CLAWGATE_NETNS_OCTETS`` may name
a range such as ``200-239``) so parallel runs do not collide; a fixed ``subnet=`` is honoured.
Cleanup runs on ``__exit__``, on ``close()``, and at interpreter exit for anything left behind,
even when the test failed halfway through setup.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["NetNamespace", "NetNamespaceError"]

_PREFIX = "10.213"
_DEFAULT_OCTETS = range(1, 255)
_live: weakref.WeakSet[NetNamespace] = weakref.WeakSet()


class NetNamespaceError(RuntimeError):
    """An ``ip`` command failed; the message carries its stderr."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetNamespaceError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def _octet_range() -> range:
    raw = os.environ.get("CLAWGATE_NETNS_OCTETS", "").strip()
    if not raw:
        return _DEFAULT_OCTETS
    lo, _, hi = raw.partition("-")
    first, last = int(lo), int(hi or lo)
    if not 0 <= first <= last <= 255:
        raise ValueError(f"CLAWGATE_NETNS_OCTETS must be N or N-M within 0-255, got {raw!r}")
    return range(first, last + 1)


def _used_octets() -> set[int]:
    """Third octets of 10.213.x.y addresses already present in the root namespace."""
    out = _ip("-o", "-4", "addr", "show", check=False).stdout
    used: set[int] = set()
    for line in out.splitlines():
        for token in line.split():
            if token.startswith(_PREFIX + "."):
                with contextlib.suppress(ValueError, IndexError):
                    used.add(int(token.split(".")[2]))
    return used


class NetNamespace:
    """One namespace plus veth pair; see the module docstring."""

    def __init__(self, subnet: int | None = None, name: str | None = None) -> None:
        # Interface names are limited to 15 bytes: "cgw" + 8 hex + one suffix letter.
        self.name = name or f"cgw{secrets.token_hex(4)}"
        if len(self.name) > 14:
            raise ValueError("namespace name must be at most 14 characters (veth suffix)")
        self.host_if = f"{self.name}h"
        self.ns_if = f"{self.name}n"
        self._subnet = subnet
        self.host_addr = ""
        self.ns_addr = ""
        self._created_ns = False
        self._created_link = False

    # -- availability ---------------------------------------------------------------------------

    @staticmethod
    def available() -> str | None:
        """Why namespaces cannot be used on this machine, or ``None`` if they can."""
        if sys.platform != "linux":
            return "network namespaces need Linux"
        if os.geteuid() != 0:
            return "creating network namespaces needs root"
        if shutil.which("ip") is None:
            return "iproute2 ('ip') is not installed"
        return None

    # -- lifecycle ------------------------------------------------------------------------------

    def create(self) -> NetNamespace:
        reason = self.available()
        if reason is not None:
            raise NetNamespaceError(reason)
        octet = self._subnet if self._subnet is not None else self._pick_octet()
        network = ipaddress.ip_network(f"{_PREFIX}.{octet}.0/30")
        host, peer = list(network.hosts())
        self.host_addr, self.ns_addr = str(host), str(peer)
        _live.add(self)
        try:
            _ip("netns", "add", self.name)
            self._created_ns = True
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._created_link = True
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            self._ns_ip("addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            self._ns_ip("link", "set", self.ns_if, "up")
            self._ns_ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove the veth pair and the namespace; safe to call more than once."""
        if self._created_link:
            # Deleting either end deletes the pair; the host end is the one we can always see.
            _ip("link", "del", self.host_if, check=False)
            self._created_link = False
        if self._created_ns:
            _ip("netns", "del", self.name, check=False)
            self._created_ns = False
        _live.discard(self)

    def __enter__(self) -> NetNamespace:
        return self.create()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running things inside ------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace (for Popen or asyncio)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and capture its output."""
        proc = subprocess.run(
            self.command(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else {**os.environ, **env},
            input=input,
        )
        if check and proc.returncode != 0:
            raise NetNamespaceError(
                f"{' '.join(argv)} in {self.name} exited {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def run_python(
        self, source: str, *, timeout: float = 60, env: Mapping[str, str] | None = None
    ) -> str:
        """Run ``source`` with the project's interpreter inside the namespace; return stdout.

        The repository root is put on ``PYTHONPATH`` so the snippet can import ``tests.support``.
        """
        root = str(Path(__file__).resolve().parents[2])
        merged = {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        merged.update(env or {})
        return self.run([sys.executable, "-c", source], timeout=timeout, env=merged).stdout

    async def run_python_async(
        self, source: str, *, timeout: float = 60, env: Mapping[str, str] | None = None
    ) -> str:
        """`run_python` without blocking the event loop (for servers running in the same loop)."""
        root = str(Path(__file__).resolve().parents[2])
        merged = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            **(env or {}),
        }
        proc = await asyncio.create_subprocess_exec(
            *self.command([sys.executable, "-c", source]),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=merged,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise NetNamespaceError(
                f"python snippet in {self.name} exited {proc.returncode}:\n"
                f"{out.decode(errors='replace')}\n{err.decode(errors='replace')}"
            )
        return out.decode()

    # -- internals ------------------------------------------------------------------------------

    def _ns_ip(self, *args: str) -> None:
        _ip("-n", self.name, *args)

    def _pick_octet(self) -> int:
        free = [o for o in _octet_range() if o not in _used_octets()]
        if not free:
            raise NetNamespaceError(f"no free {_PREFIX}.x.0/30 subnet in {_octet_range()}")
        return random.choice(free)


@atexit.register
def _cleanup_leftovers() -> None:
    for ns in list(_live):
        with contextlib.suppress(Exception):
            ns.close()
