"""Start clawgate for a test: in this event loop (fast) or as a real process (signals)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.server import serve
from tests.support.idp import TestIdP
from tests.support.upstream import free_port

COOKIE_SECRET = "8uXG7lJ9t1m1J3lq7h1a0kqB0Wm6o1Jb5zq4Jk2n1xQ="
CLIENT_ID = "clawgate-test"
CLIENT_SECRET = "clawgate-test-secret"


def base_config(
    port: int, upstream_url: str, *, idp: TestIdP | None, **overrides: Any
) -> dict[str, Any]:
    """A config with one route at https://127.0.0.1:<port> -> upstream_url."""
    route: dict[str, Any] = {
        "from": f"https://127.0.0.1:{port}",
        "to": upstream_url,
        "allow_websockets": True,
        "pass_identity_headers": True,
        "policy": [
            {
                "allow": {
                    "or": [
                        {"email": {"is": "alice@example.com"}},
                        {"domain": {"is": "example.com"}},
                    ]
                }
            }
        ],
    }
    route.update(overrides.pop("route", {}))
    config: dict[str, Any] = {
        "address": f"127.0.0.1:{port}",
        "health_address": f"127.0.0.1:{free_port()}",
        "cookie_secret": COOKIE_SECRET,
        # One process unless a test asks for more: GateProcess tests read its pid and RSS.
        "workers": 1,
        "log_level": "debug",
        "log_format": "console",
        "jwt_claims_headers": {"x-pomerium-claim-email": "email", "x-clawgate-groups": "groups"},
        "routes": [route],
    }
    if idp is not None:
        config.update(
            idp_provider_url=idp.issuer,
            idp_client_id=CLIENT_ID,
            idp_client_secret=CLIENT_SECRET,
        )
    config.update(overrides)
    return config


def register_client(
    idp: TestIdP,
    port: int,
    client_id: str = CLIENT_ID,
    secret: str = CLIENT_SECRET,
    hosts: tuple[str, ...] = ("127.0.0.1",),
) -> None:
    idp.add_client(
        client_id,
        secret,
        [f"https://{h}:{port}/.clawgate/callback" for h in hosts],
        [f"https://{h}:{port}/.clawgate/signed_out" for h in hosts],
    )


class Gate:
    """clawgate running inside the test's event loop."""

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        self.config = dict(config)
        self.path = directory / "config.yaml"
        self.port = int(str(self.config["address"]).rsplit(":", 1)[1])
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def write(self, config: Mapping[str, Any] | None = None) -> None:
        if config is not None:
            self.config = dict(config)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config, sort_keys=False))
        os.replace(tmp, self.path)

    async def start(self) -> Gate:
        self.write()
        ready = asyncio.Event()
        self._task = asyncio.create_task(
            serve(self.path, ready=ready, stop=self._stop, install_signals=False)
        )
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=15, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            self._task.result()  # raises the start-up error
        if waiter not in done:
            raise RuntimeError("clawgate did not become ready in 15 s")
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 30)
            self._task = None


@contextlib.asynccontextmanager
async def running_gate(config: Mapping[str, Any], directory: Path) -> AsyncIterator[Gate]:
    gate = await Gate(config, directory).start()
    try:
        yield gate
    finally:
        await gate.stop()


class GateProcess:
    """clawgate as a real ``clawgate serve`` process (for signals and restarts)."""

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        self.config = dict(config)
        self.path = directory / "config.yaml"
        self.log_path = directory / "clawgate.log"
        self.port = int(str(self.config["address"]).rsplit(":", 1)[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> GateProcess:
        self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
        deadline = time.monotonic() + timeout
        workers = int(self.config.get("workers", 1))
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clawgate exited: {self.log_text()[-2000:]}")
            try:
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.1)
                continue
            # With workers, the port answers once the first one listens; tests that count
            # on connections being spread need every worker listening. A loaded machine
            # can start the others a good while later: give them as long again.
            later = time.monotonic() + max(timeout, 30)
            while workers > 1 and self._listening() < workers:
                if time.monotonic() > later or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(
                        f"not every worker listened: {self.log_text()[-2000:]}"
                    )
                time.sleep(0.1)
            return self
        self.stop()  # a process that never became ready must not outlive the test
        raise RuntimeError(f"clawgate process did not listen in time: {self.log_text()[-2000:]}")

    def _listening(self) -> int:
        return sum(
            1
            for line in self.log_text().splitlines()
            if ("listening" in line and "metrics_listening" not in line)
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def client_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A browser-like client: keeps cookies for 127.0.0.1, accepts the self-signed cert."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(ssl=False),
        headers=kwargs.pop("headers", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}),
        **kwargs,
    )


HTML = {"Accept": "text/html,application/xhtml+xml"}
JSON = {"Accept": "application/json"}
