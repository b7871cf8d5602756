"""The real OpenClaw gateway in trusted-proxy mode, behind a tiny stand-in proxy.

This pins down what clawgate must do for OpenClaw, independently of clawgate itself:

    namespace client 10.213.x.2 ──> stand-in proxy on 10.213.x.1 ──> gateway on 127.0.0.1
                     └───────── forged headers, straight to the gateway on 10.213.x.1 ─────┘

The stand-in proxy (aiohttp, defined here, used only here) adds ``x-pomerium-claim-email`` and
``x-pomerium-jwt-assertion``, overwrites ``X-Forwarded-For`` with the real client address and
connects from loopback with the upstream ``Host`` rewritten, which is what clawgate does in a
same-host deployment. The client runs inside a network namespace because OpenClaw refuses a
forwarded client address that is loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.netns import NetNamespace
from tests.support.openclaw import OpenClawGateway, require_openclaw

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORIGIN = "https://openclaw.example.com"
ALICE = "alice@example.com"
# OpenClaw checks only that the required header is present and non-blank; it never verifies it.
FAKE_ASSERTION = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0ZXN0In0.c2ln"

# Request headers the stand-in proxy passes through; everything else (hop-by-hop, WebSocket key
# material, any client-sent identity or X-Forwarded-*) is dropped or rebuilt.
PASS_THROUGH = {"origin", "user-agent", "accept", "accept-language", "content-type", "cookie"}


class StandInProxy:
    """Just enough of an identity-aware proxy for OpenClaw: HTTP and WebSocket, fixed user."""

    def __init__(self, upstream_port: int, user: str) -> None:
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.user = user
        self.forwarded_for: str | None = None  # override the real client address (bad proxy)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self, host: str) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() in PASS_THROUGH}
        headers["x-pomerium-claim-email"] = self.user
        headers["x-pomerium-jwt-assertion"] = FAKE_ASSERTION
        headers["X-Forwarded-For"] = self.forwarded_for or str(request.remote)
        headers["X-Forwarded-Proto"] = "https"
        headers["X-Forwarded-Host"] = request.host
        return headers  # Host: aiohttp sets it from the upstream URL, i.e. rewritten

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = self._upstream_headers(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            try:
                upstream = await self._session.ws_connect(
                    f"ws://{self.upstream}{request.path_qs}", headers=headers, autoping=False
                )
            except aiohttp.WSServerHandshakeError as exc:
                return web.Response(status=exc.status, text="upstream refused upgrade")
            downstream = web.WebSocketResponse(autoping=False)
            await downstream.prepare(request)
            await _relay(downstream, upstream)
            return downstream
        async with self._session.request(
            request.method,
            f"http://{self.upstream}{request.path_qs}",
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            keep = {"content-type", "content-encoding", "cache-control", "location"}
            return web.Response(
                status=resp.status,
                body=body,
                headers={k: v for k, v in resp.headers.items() if k.lower() in keep},
            )


async def _relay(down: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
    async def pump(src: Any, dst: Any) -> None:
        async for msg in src:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type is aiohttp.WSMsgType.PING:
                await dst.ping(msg.data)
            elif msg.type is aiohttp.WSMsgType.PONG:
                await dst.pong(msg.data)
        await dst.close(code=src.close_code or 1000)

    tasks = [asyncio.create_task(pump(down, up)), asyncio.create_task(pump(up, down))]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# The client, run inside the namespace: one HTTP GET and/or one WebSocket handshake, as JSON.
CLIENT = r"""
import asyncio, json, os
import aiohttp
from tests.support.openclaw import DeviceIdentity, OpenClawHandshakeError, openclaw_handshake

args = json.loads(os.environ["CLAWGATE_CLIENT_ARGS"])

async def main():
    out = {}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        if args.get("http_url"):
            async with s.get(args["http_url"], headers=args["headers"]) as r:
                out["http_status"] = r.status
                out["http_body"] = (await r.text())[:4000]
        if args.get("ws_url"):
            try:
                async with s.ws_connect(args["ws_url"], headers=args["headers"]) as ws:
                    try:
                        out["hello"] = await openclaw_handshake(
                            ws,
                            build_id=args.get("build_id"),
                            device=DeviceIdentity() if args.get("device") else None,
                        )
                    except OpenClawHandshakeError as e:
                        out["error"] = {"code": e.code, "detail": e.detail_code, "message": str(e)}
            except aiohttp.WSServerHandshakeError as e:
                out["upgrade_status"] = e.status
    print(json.dumps(out))

asyncio.run(main())
"""


async def run_client(
    ns: NetNamespace,
    *,
    base: str,
    headers: dict[str, str],
    http: bool = False,
    ws: bool = True,
    build_id: str | None = None,
    device: bool = False,
) -> dict[str, Any]:
    args = {
        "device": device,
        "headers": headers,
        "http_url": f"{base}/" if http else None,
        "ws_url": base.replace("http://", "ws://") + "/" if ws else None,
        "build_id": build_id,
    }
    out = await ns.run_python_async(CLIENT, env={"CLAWGATE_CLIENT_ARGS": json.dumps(args)})
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNamespace]:
    reason = NetNamespace.available()
    if reason is not None:
        pytest.skip(reason)
    with NetNamespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def gateway(netns: NetNamespace) -> Iterator[OpenClawGateway]:
    require_openclaw()
    gw = OpenClawGateway(
        # Also listen on the host end of the veth pair so the namespace can try to bypass the
        # proxy; OpenClaw keeps 127.0.0.1 on the same port, which is where the proxy connects.
        bind_host=netns.host_addr,
        trusted_proxies=["127.0.0.1"],
        allow_loopback=True,
        allow_users=[ALICE],
        identity_scopes={ALICE: ["operator.read"]},
        allowed_origins=[ORIGIN],
        # Browsers present a device key; let the proxy identity approve it (default scopes).
        device_auto_approve=True,
    )
    with gw:
        yield gw


@pytest.fixture
async def proxy(netns: NetNamespace, gateway: OpenClawGateway) -> AsyncIterator[StandInProxy]:
    p = StandInProxy(gateway.port, ALICE)
    await p.start(netns.host_addr)
    try:
        yield p
    finally:
        await p.close()


# -- through the proxy -------------------------------------------------------------------------


async def test_control_ui_page_loads_through_proxy(
    netns: NetNamespace, gateway: OpenClawGateway, proxy: StandInProxy
) -> None:
    out = await run_client(netns, base=proxy.url, headers={}, http=True, ws=False)
    assert out["http_status"] == 200
    assert f'data-openclaw-control-ui-build-id="{gateway.build_id}' in out["http_body"]


async def test_websocket_handshake_through_proxy_names_user(
    netns: NetNamespace, gateway: OpenClawGateway, proxy: StandInProxy
) -> None:
    out = await run_client(
        netns, base=proxy.url, headers={"Origin": ORIGIN}, build_id=gateway.build_id
    )
    hello = out.get("hello")
    assert hello is not None, out
    assert hello["type"] == "hello-ok"
    assert hello["protocol"] == 4
    assert hello["auth"]["method"] == "trusted-proxy"
    assert hello["auth"]["role"] == "operator"
    # Device-less session: self-declared scopes are cleared, identityScopes grants apply.
    assert hello["auth"]["scopes"] == ["operator.read"]
    match = await gateway.await_log(
        r"\[ws\] authenticated user connected conn=(\S+) user=alice@example\.com"
    )
    conn = match.group(1)
    assert f"webchat connected conn={conn} remote=127.0.0.1" in gateway.log_text()


async def test_browser_device_is_auto_approved_for_proxy_user(
    netns: NetNamespace, gateway: OpenClawGateway, proxy: StandInProxy
) -> None:
    out = await run_client(
        netns, base=proxy.url, headers={"Origin": ORIGIN}, build_id=gateway.build_id, device=True
    )
    hello = out.get("hello")
    assert hello is not None, out
    assert hello["auth"]["method"] == "trusted-proxy"
    # Requested read+write, within deviceAutoApprove's default list (which adds questions).
    assert {"operator.read", "operator.write"} <= set(hello["auth"]["scopes"])
    assert "operator.admin" not in hello["auth"]["scopes"]
    await gateway.await_log(
        r"security audit: trusted-proxy operator device auto-approved "
        r"user=alice@example\.com device=[0-9a-f]+ scopes="
    )


async def test_user_outside_allow_users_is_refused(
    netns: NetNamespace, gateway: OpenClawGateway, proxy: StandInProxy
) -> None:
    proxy.user = "bob@example.com"
    out = await run_client(
        netns, base=proxy.url, headers={"Origin": ORIGIN}, build_id=gateway.build_id
    )
    assert "hello" not in out, out
    # Without a trusted identity the Control UI path falls back to device auth, which it lacks.
    assert out["error"]["detail"] == "CONTROL_UI_DEVICE_IDENTITY_REQUIRED", out
    # A real browser (device key) gets the auth failure itself, and the log says why.
    out = await run_client(
        netns, base=proxy.url, headers={"Origin": ORIGIN}, build_id=gateway.build_id, device=True
    )
    assert "hello" not in out, out
    assert out["error"]["detail"] == "AUTH_UNAUTHORIZED", out
    await gateway.await_log(r"\[ws\] unauthorized conn=.* reason=trusted_proxy_user_not_allowed")
    assert "bob@example.com" not in gateway.authenticated_users()


async def test_origin_missing_from_allowed_origins_is_refused(
    netns: NetNamespace, gateway: OpenClawGateway, proxy: StandInProxy
) -> None:
    out = await run_client(
        netns,
        base=proxy.url,
        headers={"Origin": "https://elsewhere.example.com"},
        build_id=gateway.build_id,
    )
    assert "hello" not in out, out
    assert out["error"]["detail"] == "CONTROL_UI_ORIGIN_NOT_ALLOWED", out
    assert "origin not allowed" in out["error"]["message"]


async def test_loopback_forwarded_for_is_refused(
    netns: NetNamespace, gateway: OpenClawGateway, proxy: StandInProxy
) -> None:
    proxy.forwarded_for = "127.0.0.1"
    out = await run_client(netns, base=proxy.url, headers={"Origin": ORIGIN}, http=True)
    assert out["http_status"] == 403
    assert json.loads(out["http_body"])["error"]["type"] == "proxy_attribution_required"
    assert out["upgrade_status"] == 403


# -- bypassing the proxy -----------------------------------------------------------------------


async def test_forged_identity_straight_to_gateway_is_refused(
    netns: NetNamespace, gateway: OpenClawGateway
) -> None:
    forged = {
        "Origin": ORIGIN,
        "x-pomerium-claim-email": ALICE,
        "x-pomerium-jwt-assertion": FAKE_ASSERTION,
    }
    direct = f"http://{netns.host_addr}:{gateway.port}"
    before = gateway.authenticated_users().count(ALICE)

    out = await run_client(netns, base=direct, headers=forged, http=True, build_id=gateway.build_id)
    assert out["http_status"] == 200  # the static UI is public; only the WebSocket carries identity
    assert "hello" not in out, out
    assert out["error"]["detail"] == "CONTROL_UI_DEVICE_IDENTITY_REQUIRED", out

    # With a forwarded-for header too, an untrusted source is refused before any auth.
    spoofed = {**forged, "X-Forwarded-For": "203.0.113.7"}
    out = await run_client(
        netns, base=direct, headers=spoofed, http=True, build_id=gateway.build_id
    )
    assert out["http_status"] == 403
    assert json.loads(out["http_body"])["error"]["type"] == "proxy_attribution_required"
    assert out["upgrade_status"] == 403

    assert gateway.authenticated_users().count(ALICE) == before


def test_deploy_image_pins_the_tested_openclaw() -> None:
    """deploy/openclaw must install exactly the dependency tree these tests ran against."""
    root = Path(__file__).resolve().parents[2]
    tested = json.loads((root / "tests/e2e/openclaw/package-lock.json").read_text())
    deployed = json.loads((root / "deploy/openclaw/package-lock.json").read_text())
    strip = lambda lock: {k: v for k, v in lock["packages"].items() if k}  # noqa: E731
    assert strip(deployed) == strip(tested)
    assert deployed["packages"][""]["dependencies"] == tested["packages"][""]["dependencies"]
