"""The end-to-end stack: the real OpenClaw gateway behind clawgate, a client in a namespace.

::

    namespace 10.213.x.2                host (root namespace)
    ────────────────────                ──────────────────────────────────────────────────────
    client / Chromium ──https──> clawgate 10.213.x.1:<port> ──> tap 127.0.0.1 ──> gateway 127.0.0.1
    127.0.0.1:<idp> relay ─────> relay 10.213.x.1:<idp> ──────> test IdP 127.0.0.1:<idp>
                      └─forged headers, straight to the gateway on 10.213.x.1:<gw>─┘

Why each piece:

* The client must not be loopback: OpenClaw refuses an ``X-Forwarded-For`` that names a loopback
  address, and clawgate writes the real peer address there. A network namespace joined by a veth
  pair (`tests.support.netns`) gives the client 10.213.x.2.
* clawgate listens on the host end of the pair and forwards to the gateway over loopback, the
  same-host layout: ``trustedProxies: ["127.0.0.1"]`` plus ``allowLoopback: true``.
* The test IdP listens on 127.0.0.1 and clawgate only accepts an ``http`` issuer on loopback, so
  two TCP relays (`tests.support.relay`) make ``http://127.0.0.1:<idp>`` reach the same IdP from
  inside the namespace. Nothing about the IdP or clawgate's issuer rule changes.
* A recording relay ("tap") between clawgate and the gateway keeps every request head that
  reached the gateway, so a test can prove that a denied user's request never arrived.

The stack is built once for the whole ``tests/e2e`` package (one gateway start, 15-17 s) and
shared by the modules that need it. clawgate runs in a thread with its own event loop so the
fixtures are synchronous and any test, sync or async, can use them.

Skips: not root or no iproute2, or OpenClaw cannot be installed. With ``CLAWGATE_E2E_REQUIRE=1``
(CI) each of those is a failure instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.idp import TestIdP
from tests.support.netns import NetNamespace
from tests.support.openclaw import OpenClawGateway, require_openclaw
from tests.support.relay import RelayProcess, RelayThread

ALICE = "alice@example.com"
BOB = "bob@example.com"
# The API key's principal (proxy/service_identity.py), as the gateway sees it.
SERVICE = "apikey:ci-bot"
CLIENT_ID = "clawgate-e2e"
CLIENT_SECRET = "clawgate-e2e-secret"
COOKIE_SECRET = "8uXG7lJ9t1m1J3lq7h1a0kqB0Wm6o1Jb5zq4Jk2n1xQ="
ROOT = Path(__file__).resolve().parents[2]


def e2e_unavailable(reason: str) -> None:
    """Skip with ``reason``; fail instead under ``CLAWGATE_E2E_REQUIRE=1`` (CI)."""
    if os.environ.get("CLAWGATE_E2E_REQUIRE") == "1":
        pytest.fail(f"end-to-end prerequisite missing (CLAWGATE_E2E_REQUIRE=1): {reason}")
    pytest.skip(reason)


def free_port_on(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ClawgateThread:
    """``proxy.server.serve`` on its own event loop in a thread (clawgate's real server)."""

    def __init__(self, config: Mapping[str, Any], directory: Path) -> None:
        self.config = dict(config)
        self.path = directory / "clawgate.yaml"
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="clawgate", daemon=True)

    def start(self, timeout: float = 20.0) -> ClawgateThread:
        self.path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"clawgate did not become ready in {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"clawgate failed to start: {self._error!r}") from self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        from proxy.server import serve  # the server under test

        async def main() -> None:
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.create_task(
                serve(self.path, ready=ready, stop=self._stop, install_signals=False)
            )
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            self._started.set()
            waiter.cancel()
            await task

        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()
            self._loop.close()


@dataclass
class OpenClawStack:
    """Everything a test needs to reach the gateway through clawgate from the namespace."""

    ns: NetNamespace
    idp: TestIdP
    gateway: OpenClawGateway
    tap: RelayThread
    gate: ClawgateThread
    origin: str  # https://10.213.x.1:<port>, the one origin the gateway allows

    @property
    def direct_gateway_url(self) -> str:
        """The gateway on the host end of the veth pair, bypassing clawgate."""
        return f"http://{self.ns.host_addr}:{self.gateway.port}"

    def users_at_gateway(self) -> list[str]:
        """``x-pomerium-claim-email`` of every request that reached the gateway, in order."""
        return [r.header("x-pomerium-claim-email") or "" for r in self.tap.requests()]

    def run_in_namespace(
        self, source: str, args: Mapping[str, Any], *, timeout: float = 90
    ) -> dict[str, Any]:
        """Run a Python client inside the namespace; it reads ``CLAWGATE_CLIENT_ARGS`` (JSON)
        and prints one JSON object as its last line."""
        out = self.ns.run_python(
            source, timeout=timeout, env={"CLAWGATE_CLIENT_ARGS": json.dumps(dict(args))}
        )
        lines = out.strip().splitlines()
        if not lines:
            raise AssertionError("namespace client printed nothing")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def run_script_in_namespace(
        self, script: Path, args: Mapping[str, Any], *, timeout: float = 120
    ) -> dict[str, Any]:
        """`run_in_namespace` for a script file (``python SCRIPT '<json args>'``)."""
        proc = self.ns.run(
            [sys.executable, str(script), json.dumps(dict(args))],
            timeout=timeout,
            env={"PYTHONPATH": str(ROOT)},
        )
        lines = proc.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"{script.name} printed nothing:\n{proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result


@pytest.fixture(scope="package")
def netns() -> Iterator[NetNamespace]:
    reason = NetNamespace.available()
    if reason is not None:
        e2e_unavailable(reason)
    with NetNamespace() as ns:
        yield ns


@pytest.fixture(scope="package")
def openclaw_stack(netns: NetNamespace, idp: TestIdP) -> Iterator[OpenClawStack]:
    require_openclaw()
    ns = netns
    port = free_port_on(ns.host_addr)
    origin = f"https://{ns.host_addr}:{port}"
    idp_port = int(idp.issuer.rsplit(":", 1)[1])
    idp.add_client(
        CLIENT_ID,
        CLIENT_SECRET,
        [f"{origin}/.clawgate/callback"],
        [f"{origin}/.clawgate/signed_out"],
    )
    with contextlib.ExitStack() as stack:
        # The IdP, reachable as http://127.0.0.1:<idp port> from inside the namespace too.
        stack.enter_context(RelayThread(ns.host_addr, idp_port, "127.0.0.1", idp_port))
        inner = RelayProcess(ns.command([]), "127.0.0.1", idp_port, ns.host_addr, idp_port)
        stack.callback(inner.stop)
        inner.start()

        gateway = OpenClawGateway(
            # Also on the host end of the pair, so a test can try to go around clawgate.
            bind_host=ns.host_addr,
            trusted_proxies=["127.0.0.1"],
            allow_loopback=True,
            allow_users=[ALICE, SERVICE],
            identity_scopes={ALICE: ["operator.read"], SERVICE: ["operator.read"]},
            allowed_origins=[origin],
            # Browsers present a device key: let the proxied identity approve it.
            device_auto_approve=True,
        )
        stack.enter_context(gateway)
        tap = stack.enter_context(
            RelayThread("127.0.0.1", 0, "127.0.0.1", gateway.port, record=True)
        )

        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clawgate-e2e-")))
        config: dict[str, Any] = {
            "address": f"{ns.host_addr}:{port}",
            "health_address": f"127.0.0.1:{free_port_on('127.0.0.1')}",
            "idp_provider_url": idp.issuer,
            "idp_client_id": CLIENT_ID,
            "idp_client_secret": CLIENT_SECRET,
            "cookie_secret": COOKIE_SECRET,
            "log_level": "info",
            "log_format": "console",
            "jwt_claims_headers": {"x-pomerium-claim-email": "email"},
            # A service account for scripts: `clawgate apikey create` writes the file.
            "api_keys_file": str(workdir / "api_keys.yaml"),
            "routes": [
                {
                    "from": origin,
                    "to": f"http://127.0.0.1:{tap.port}",
                    "allow_websockets": True,
                    "pass_identity_headers": True,
                    "preserve_host_header": False,
                    "allow_api_keys": True,
                    "policy": [
                        {
                            "allow": {
                                "or": [
                                    {"email": {"is": ALICE}},
                                    {"email": {"is": BOB}},
                                    {"user": {"is": SERVICE}},
                                ]
                            }
                        }
                    ],
                }
            ],
        }
        gate = ClawgateThread(config, workdir).start()
        stack.callback(gate.stop)
        yield OpenClawStack(ns=ns, idp=idp, gateway=gateway, tap=tap, gate=gate, origin=origin)
