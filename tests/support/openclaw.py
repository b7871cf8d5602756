"""The real OpenClaw gateway for end-to-end tests, and a minimal client for its WebSocket.

`OpenClawGateway` writes an ``openclaw.json`` for trusted-proxy mode into a private temporary
state directory, starts ``openclaw gateway run`` with the pinned Node 24 on 127.0.0.1 and waits
for ``/readyz``. The gateway and Node come from ``tests/e2e/openclaw/install.sh`` (cached; the
first run downloads about 250 MB from the npm registry and takes under a minute).

    with OpenClawGateway(allow_users=["alice@example.com"],
                         allowed_origins=["https://openclaw.example.com"]) as gw:
        gw.url                      # "http://127.0.0.1:<port>"
        gw.authenticated_users()    # users named by the gateway's "authenticated user connected"

    async with OpenClawGateway(...) as gw: ...   # same, startup off the event loop

`openclaw_handshake(ws, build_id=...)` speaks the first exchange of the gateway protocol
(protocol 4) the way the Control UI does without a device identity: it waits for the
``connect.challenge`` event, sends the ``connect`` request and returns the ``hello-ok`` payload,
or raises `OpenClawHandshakeError` with the gateway's error code and detail code.

If Node 24 / OpenClaw cannot be installed (no npm, no registry, unsupported platform)
`require_openclaw()` skips the test with the installer's reason; with ``CLAWGATE_E2E_REQUIRE=1``
it fails instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.lifecycle import StartStop

__all__ = [
    "CONTROL_UI_CLIENT_ID",
    "PROTOCOL_VERSION",
    "DeviceIdentity",
    "OpenClawGateway",
    "OpenClawHandshakeError",
    "OpenClawInstall",
    "OpenClawUnavailable",
    "demo_gateway",
    "ensure_openclaw_installed",
    "openclaw_handshake",
    "require_openclaw",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "tests" / "e2e" / "openclaw" / "install.sh"

#: Gateway protocol spoken by openclaw 2026.9.x (``minProtocol``/``maxProtocol`` of ``connect``).
PROTOCOL_VERSION = 4
#: Client id the bundled Control UI sends; the gateway gives it the device-less trusted-proxy path.
CONTROL_UI_CLIENT_ID = "openclaw-control-ui"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_USER_CONNECTED = re.compile(r"\[ws\] authenticated user connected conn=\S+ user=(\S+)")


class OpenClawUnavailable(RuntimeError):
    """The pinned Node 24 / OpenClaw could not be installed on this machine."""


class OpenClawHandshakeError(RuntimeError):
    """The gateway refused the ``connect`` request or closed the socket first."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        detail_code: str | None = None,
        frame: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.detail_code = detail_code
        self.frame = dict(frame or {})


# -- installation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenClawInstall:
    node: Path
    entry: Path  # .../node_modules/openclaw/openclaw.mjs

    @property
    def package_dir(self) -> Path:
        return self.entry.parent

    @property
    def version(self) -> str:
        return str(json.loads((self.package_dir / "package.json").read_text())["version"])

    @property
    def build_id(self) -> str:
        """The id the gateway expects in ``connect.params.client.buildId`` from its own UI."""
        info = json.loads((self.package_dir / "dist" / "build-info.json").read_text())
        return str(info["buildId"])


@lru_cache(maxsize=1)
def ensure_openclaw_installed() -> OpenClawInstall:
    """Run the (idempotent, cached) installer once per process; raise `OpenClawUnavailable`."""
    try:
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OpenClawUnavailable(f"install.sh could not run: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise OpenClawUnavailable(f"install.sh exited {proc.returncode}:\n{tail}")
    found = dict(
        line.split("=", 1)
        for line in proc.stdout.splitlines()
        if line.startswith(("node=", "openclaw="))
    )
    try:
        return OpenClawInstall(node=Path(found["node"]), entry=Path(found["openclaw"]))
    except KeyError as exc:
        raise OpenClawUnavailable(f"install.sh printed no {exc.args[0]}= line") from exc


def require_openclaw() -> OpenClawInstall:
    """The install, or a visible pytest skip (a failure under ``CLAWGATE_E2E_REQUIRE=1``)."""
    import pytest  # only tests call this; the module stays importable without pytest

    try:
        return ensure_openclaw_installed()
    except OpenClawUnavailable as exc:
        if os.environ.get("CLAWGATE_E2E_REQUIRE") == "1":
            pytest.fail(f"OpenClaw gateway required but unavailable: {exc}")
        pytest.skip(f"OpenClaw gateway unavailable: {exc}")


# -- the gateway process -----------------------------------------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OpenClawGateway(StartStop):
    """One ``openclaw gateway run`` in trusted-proxy mode; see the module docstring.

    ``bind_host`` additionally exposes the gateway on that IPv4 address (OpenClaw's ``custom``
    bind, which always keeps 127.0.0.1 on the same port too); leave it ``None`` for loopback only.
    ``device_auto_approve``: ``None`` leaves the key out, ``True`` enables it with OpenClaw's
    default scopes, a sequence enables it with exactly those scopes.
    ``extra_config`` is merged (one level deep per top-level key) over the generated config.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        bind_host: str | None = None,
        trusted_proxies: Sequence[str] = ("127.0.0.1",),
        user_header: str = "x-pomerium-claim-email",
        required_headers: Sequence[str] = ("x-pomerium-jwt-assertion",),
        allow_users: Sequence[str] = (),
        allow_loopback: bool = True,
        identity_scopes: Mapping[str, Sequence[str]] | None = None,
        allowed_origins: Sequence[str] = (),
        device_auto_approve: bool | Sequence[str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        self.install = require_openclaw()
        self.bind_host = bind_host
        self.port = port or _free_port()
        self.ready_timeout = ready_timeout
        self.config = self._build_config(
            trusted_proxies=trusted_proxies,
            user_header=user_header,
            required_headers=required_headers,
            allow_users=allow_users,
            allow_loopback=allow_loopback,
            identity_scopes=identity_scopes,
            allowed_origins=allowed_origins,
            device_auto_approve=device_auto_approve,
            extra_config=extra_config or {},
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds: float | None = None

    # public surface ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def build_id(self) -> str:
        return self.install.build_id

    @property
    def state_dir(self) -> Path:
        return self._root / "home" / ".openclaw"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "openclaw.json"

    @property
    def log_path(self) -> Path:
        """The gateway's console output (what an operator sees), ANSI colours included."""
        return self._root / "gateway.log"

    @property
    def file_log_path(self) -> Path:
        """OpenClaw's own JSON-lines log file (``logging.file``)."""
        return self._root / "openclaw-file.log"

    def log_text(self) -> str:
        """Console log so far, colour codes stripped."""
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def authenticated_users(self) -> list[str]:
        """Users named by ``[ws] authenticated user connected conn=<id> user=<user>``, in order."""
        return _USER_CONNECTED.findall(self.log_text())

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Block until ``pattern`` (a regex) appears in the console log."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = rx.search(self.log_text())
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in gateway log:\n{self._log_tail()}")
            time.sleep(0.1)

    async def await_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """`wait_for_log` without blocking the event loop."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = rx.search(self.log_text())
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"{pattern!r} not in gateway log:\n{self._log_tail()}")
            await asyncio.sleep(0.1)

    def start(self) -> OpenClawGateway:
        if self._proc is not None:
            raise RuntimeError("gateway already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="clawgate-openclaw-")
        self.state_dir.mkdir(parents=True)
        # Per-instance log file: the default (/tmp/openclaw/openclaw-<date>.log) is shared.
        self.config.setdefault("logging", {})["file"] = str(self.file_log_path)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        log = self.log_path.open("wb")
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                [
                    str(self.install.node),
                    str(self.install.entry),
                    "gateway",
                    "run",
                    "--port",
                    str(self.port),
                ],
                cwd=self._root,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: the gateway spawns helpers (its spawn broker) that must die
                # with it.
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the gateway's process group, SIGKILL after ``timeout``; return its exit code.

        The temporary state directory is kept until the object is garbage collected so a failing
        test can still read `log_text()` after stopping.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(timeout=10)
        finally:
            # Helpers left in the group after the gateway exited.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    # internals --------------------------------------------------------------------------------

    @property
    def _root(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("gateway not started")
        return Path(self._tmp.name)

    def _build_config(
        self,
        *,
        trusted_proxies: Sequence[str],
        user_header: str,
        required_headers: Sequence[str],
        allow_users: Sequence[str],
        allow_loopback: bool,
        identity_scopes: Mapping[str, Sequence[str]] | None,
        allowed_origins: Sequence[str],
        device_auto_approve: bool | Sequence[str] | None,
        extra_config: Mapping[str, Any],
    ) -> dict[str, Any]:
        trusted_proxy: dict[str, Any] = {
            "userHeader": user_header,
            "requiredHeaders": list(required_headers),
            "allowUsers": list(allow_users),
            "allowLoopback": allow_loopback,
        }
        if device_auto_approve is True:
            trusted_proxy["deviceAutoApprove"] = {"enabled": True}
        elif device_auto_approve is False:
            trusted_proxy["deviceAutoApprove"] = {"enabled": False}
        elif device_auto_approve is not None:
            trusted_proxy["deviceAutoApprove"] = {
                "enabled": True,
                "scopes": list(device_auto_approve),
            }
        auth: dict[str, Any] = {"mode": "trusted-proxy", "trustedProxy": trusted_proxy}
        if identity_scopes:
            auth["identityScopes"] = {k: list(v) for k, v in identity_scopes.items()}
        gateway: dict[str, Any] = {
            "mode": "local",
            "port": self.port,
            "trustedProxies": list(trusted_proxies),
            "auth": auth,
            "controlUi": {"allowedOrigins": list(allowed_origins)},
        }
        if self.bind_host is None:
            gateway["bind"] = "loopback"
        else:
            gateway["bind"] = "custom"
            gateway["customBindHost"] = self.bind_host
        config: dict[str, Any] = {
            "gateway": gateway,
            # No network beyond the test's own hosts: no model catalogue refresh, no update check.
            "models": {"catalogRefresh": {"enabled": False}},
            "update": {"checkOnStart": False},
        }
        for key, value in extra_config.items():
            if isinstance(value, Mapping) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return config

    def _env(self) -> dict[str, str]:
        # A clean environment: nothing from the developer's shell (API keys, OPENCLAW_* of a real
        # install) leaks into the gateway under test.
        home = self._root / "home"
        return {
            "PATH": f"{self.install.node.parent}:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(self._root),
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
            "OPENCLAW_STATE_DIR": str(self.state_dir),
            "OPENCLAW_CONFIG_PATH": str(self.config_path),
            "OPENCLAW_SKIP_CHANNELS": "1",
            "OPENCLAW_DISABLE_BONJOUR": "1",
            "OPENCLAW_NO_AUTO_UPDATE": "1",
        }

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        url = f"{self.url}/readyz"
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"openclaw gateway exited {code} before ready:\n{self._log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(url, timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"openclaw gateway not ready on {url} after {self.ready_timeout}s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.25)

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# -- the local demo ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def demo_gateway(
    origin: str,
    *,
    allow_users: Sequence[str] = (),
    port: int | None = None,
) -> AsyncIterator[str]:
    """The real gateway for ``scripts/demo --openclaw``; yields its URL for clawgate's ``to``.

    Same-host layout: the gateway listens on 127.0.0.1 only and trusts clawgate there
    (``trustedProxies: ["127.0.0.1"]``, ``allowLoopback: true``), ``origin`` is clawgate's
    public origin (the one browser origin allowed to open the Control UI socket), and the
    browser's device identity is approved from the proxied identity (``deviceAutoApprove``).
    ``allow_users`` empty lets in every user clawgate's policy lets through.

    OpenClaw refuses a client whose forwarded address is loopback, so ``origin`` must not be
    ``https://127.0.0.1:...``: the browser has to reach clawgate on a non-loopback address
    (see docs/openclaw.md, "Trying it on one machine"). Raises `OpenClawUnavailable` when
    Node 24 / OpenClaw cannot be installed.
    """
    ensure_openclaw_installed()  # a clear error here, never a pytest skip
    gateway = OpenClawGateway(
        port=port,
        trusted_proxies=["127.0.0.1"],
        allow_loopback=True,
        allow_users=allow_users,
        allowed_origins=[origin],
        device_auto_approve=True,
    )
    async with gateway:
        yield gateway.url


# -- the WebSocket protocol --------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DeviceIdentity:
    """The Ed25519 device key a browser keeps for the Control UI (``device`` in ``connect``).

    Wire form, as the gateway verifies it: ``id`` is the hex SHA-256 of the raw 32-byte public
    key, ``publicKey`` the raw key in unpadded base64url, ``signature`` the unpadded base64url
    Ed25519 signature over the v3 payload ``v3|<id>|<client id>|<client mode>|<role>|
    <scopes, comma-joined>|<signedAt>|<token>|<nonce>|<platform>|<device family>`` (one line),
    where ``signedAt`` is the challenge's ``ts`` and ``nonce`` its ``nonce``.
    """

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self._key = key or Ed25519PrivateKey.generate()
        raw = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = _b64url(raw)
        self.device_id = hashlib.sha256(raw).hexdigest()

    def connect_field(
        self,
        *,
        client: Mapping[str, Any],
        role: str,
        scopes: Sequence[str],
        nonce: str,
        signed_at: int,
        token: str = "",
    ) -> dict[str, Any]:
        payload = "|".join(
            [
                "v3",
                self.device_id,
                str(client["id"]),
                str(client["mode"]),
                role,
                ",".join(scopes),
                str(signed_at),
                token,
                nonce,
                str(client.get("platform", "")).strip().lower(),
                str(client.get("deviceFamily", "")).strip().lower(),
            ]
        )
        return {
            "id": self.device_id,
            "publicKey": self.public_key,
            "signature": _b64url(self._key.sign(payload.encode())),
            "signedAt": signed_at,
            "nonce": nonce,
        }


async def _next_json(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    if msg.type is aiohttp.WSMsgType.TEXT:
        frame = json.loads(msg.data)
        if not isinstance(frame, dict):
            raise OpenClawHandshakeError(f"non-object frame: {msg.data[:200]!r}")
        return frame
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
        raise OpenClawHandshakeError(
            f"gateway closed the socket (code {ws.close_code}, reason {msg.extra!r})",
            code="CLOSED",
        )
    raise OpenClawHandshakeError(f"unexpected WebSocket message {msg.type!r}")


async def openclaw_handshake(
    ws: aiohttp.ClientWebSocketResponse,
    *,
    build_id: str | None = None,
    client_id: str = CONTROL_UI_CLIENT_ID,
    client_mode: str = "webchat",
    role: str = "operator",
    scopes: Sequence[str] = ("operator.read", "operator.write"),
    device: DeviceIdentity | None = None,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Complete the gateway handshake on an open socket and return the ``hello-ok`` payload.

    Wire format (JSON text frames):

    1. gateway -> ``{"type":"event","event":"connect.challenge","payload":{"nonce","ts",...}}``
    2. client  -> ``{"type":"req","id","method":"connect","params":{minProtocol, maxProtocol,
       client{id,version,platform,mode,buildId}, role, scopes, caps, userAgent, locale}}``
    3. gateway -> ``{"type":"res","id","ok":true,"payload":{"type":"hello-ok","protocol",
       "server","features","snapshot","policy","auth":{"method","role","scopes"}}}``
       or ``{"type":"res","id","ok":false,"error":{"code","message","details":{"code"}}}``.

    ``build_id`` must equal the gateway's own build id when the Control UI client id is used and
    the ``Origin`` host equals the request ``Host`` (the gateway then insists the page came from
    its own build); behind a proxy that rewrites ``Host`` it is not checked, but sending it is
    always right. Without ``device`` (a browser with no WebCrypto) a trusted-proxy session gets
    only the scopes from ``gateway.auth.identityScopes`` (self-declared ``scopes`` are cleared);
    with ``device`` (what real browsers send) the gateway applies device pairing.
    """
    first = await _next_json(ws, timeout)
    if first.get("type") != "event" or first.get("event") != "connect.challenge":
        raise OpenClawHandshakeError(f"expected connect.challenge, got {first!r}", frame=first)
    client: dict[str, Any] = {
        "id": client_id,
        "version": "control-ui" if client_id == CONTROL_UI_CLIENT_ID else "clawgate-tests",
        "platform": "web",
        "mode": client_mode,
    }
    if build_id:
        client["buildId"] = build_id
    params: dict[str, Any] = {
        "minProtocol": PROTOCOL_VERSION,
        "maxProtocol": PROTOCOL_VERSION,
        "client": client,
        "role": role,
        "scopes": list(scopes),
        "caps": [],
        "userAgent": "clawgate-e2e",
        "locale": "en-US",
    }
    if device is not None:
        challenge = first.get("payload") or {}
        params["device"] = device.connect_field(
            client=client,
            role=role,
            scopes=scopes,
            nonce=str(challenge.get("nonce", "")),
            signed_at=int(challenge.get("ts", 0)),
        )
    req_id = str(uuid.uuid4())
    await ws.send_str(
        json.dumps({"type": "req", "id": req_id, "method": "connect", "params": params})
    )
    deadline = time.monotonic() + timeout
    while True:
        frame = await _next_json(ws, max(0.1, deadline - time.monotonic()))
        if frame.get("type") != "res" or frame.get("id") != req_id:
            continue  # events (ticks, presence) may interleave
        if frame.get("ok") is True:
            payload = frame.get("payload")
            if not isinstance(payload, dict) or payload.get("type") != "hello-ok":
                raise OpenClawHandshakeError(
                    f"ok response without hello-ok: {frame!r}", frame=frame
                )
            return payload
        error = frame.get("error") or {}
        details = error.get("details") or {}
        raise OpenClawHandshakeError(
            str(error.get("message", "connect refused")),
            code=error.get("code"),
            detail_code=details.get("code") if isinstance(details, dict) else None,
            frame=frame,
        )
