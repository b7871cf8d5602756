"""Operations: Prometheus metrics, /readyz upstream checks, request ids, workers."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
from pathlib import Path

import aiohttp
import yaml
from yarl import URL

from tests.support.gate import (
    JSON,
    GateProcess,
    base_config,
    client_session,
    register_client,
    running_gate,
)
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels or (not labels and "{" not in line):
            return float(line.rsplit(" ", 1)[1])
    return None


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{port}/metrics"
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


async def test_metrics_count_requests_decisions_upstreams_reloads_and_idp(
    idp: TestIdP, tmp_path: Path
) -> None:
    upstream = await Upstream().start()
    port, metrics_port = free_port(), free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, metrics_address=f"127.0.0.1:{metrics_port}")
    try:
        async with running_gate(config, tmp_path) as gate, client_session() as browser:
            # Counters are per process and earlier tests may have run clawgate in this one:
            # route labels are unique to this test, the rest is compared before and after.
            route = f"https://127.0.0.1:{port}"
            before = await scrape(metrics_port)

            def grew(text: str, name: str, **labels: str) -> float:
                return (sample(text, name, **labels) or 0) - (sample(before, name, **labels) or 0)

            async with browser.get(f"{gate.url}/anon", headers=JSON) as resp:
                assert resp.status == 401
            resp = await login(browser, f"{gate.url}/one", ALICE.username, ALICE.password)
            assert resp.status == 200
            async with browser.get(f"{gate.url}/two") as resp:
                assert resp.status == 200

            text = await scrape(metrics_port)
            assert sample(text, "clawgate_http_requests_total", route=route, status="200") >= 2
            assert sample(text, "clawgate_http_requests_total", route=route, status="401") == 1
            assert grew(text, "clawgate_authorization_decisions_total",
                        result="allow", reason="email") == 2
            assert grew(text, "clawgate_authorization_decisions_total",
                        result="deny", reason="anonymous") >= 1
            assert sample(text, "clawgate_upstream_response_seconds_count", route=route) >= 2
            assert sample(text, "clawgate_http_request_duration_seconds_count", route=route) >= 3
            assert grew(text, "clawgate_idp_requests_total", endpoint="token", outcome="ok") == 1
            assert sample(text, "clawgate_idp_requests_total",
                          endpoint="discovery", outcome="ok") >= 1
            assert sample(text, "clawgate_config_generation") == 1
            assert sample(text, "clawgate_websockets_active") == 0
            # No email, cookie or token ever becomes a label.
            assert "alice" not in text and "example.com" not in text

            # A reload that works, then one that does not.
            gate.config["routes"][0]["set_response_headers"] = {"X-Reloaded": "1"}
            gate.write()
            await _until(lambda t: sample(t, "clawgate_config_generation") == 2, metrics_port)
            gate.path.write_text("routes: [ {from: nowhere\n")
            text = await _until(lambda t: grew(t, "clawgate_config_reloads_total",
                                               result="failed") == 1, metrics_port)
            assert grew(text, "clawgate_config_reloads_total", result="ok") == 1

            async with browser.ws_connect(f"{gate.url.replace('https', 'wss')}/ws",
                                          ssl=False) as ws:
                await ws.send_str("hi")
                assert (await ws.receive()).data == "hi"
                text = await scrape(metrics_port)
                assert sample(text, "clawgate_websockets_active") == 1

            await upstream.stop()
            async with browser.get(f"{gate.url}/gone") as resp:
                assert resp.status == 502
            text = await scrape(metrics_port)
            assert sample(text, "clawgate_upstream_errors_total",
                          route=route, reason="upstream_unreachable") == 1
            assert sample(text, "clawgate_websockets_active") == 0
    finally:
        await upstream.stop()


async def _until(check: object, port: int, seconds: float = 8.0) -> str:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        text = await scrape(port)
        if check(text):  # type: ignore[operator]
            return text
        assert asyncio.get_running_loop().time() < deadline, text[-3000:]
        await asyncio.sleep(0.2)


async def test_readyz_checks_upstreams_are_reachable(idp: TestIdP, tmp_path: Path) -> None:
    upstream = await Upstream().start()
    port, health = free_port(), free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, health_address=f"127.0.0.1:{health}")
    dead_port = free_port()
    config["routes"].append({**config["routes"][0], "path": "/dead",
                             "to": f"http://127.0.0.1:{dead_port}"})
    try:
        async with running_gate(config, tmp_path), aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{health}/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503
                assert body["problems"] == [f"upstream 127.0.0.1:{dead_port}: Connection refused"]
            async with http.get(f"http://127.0.0.1:{health}/healthz") as resp:
                assert resp.status == 200
    finally:
        await upstream.stop()

    # All upstreams up: ready.
    upstream = await Upstream().start()
    config = base_config(port, upstream.url, idp=idp, health_address=f"127.0.0.1:{health}")
    try:
        async with running_gate(config, tmp_path), aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{health}/readyz") as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["problems"] == []
            await upstream.stop()
            # The result is cached for a few seconds, then the failure shows.
            async def not_ready() -> bool:
                async with http.get(f"http://127.0.0.1:{health}/readyz") as r:
                    return r.status == 503
            for _ in range(80):
                if await not_ready():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("readyz never noticed the upstream went away")
    finally:
        await upstream.stop()


async def test_request_id_sent_upstream_returned_and_trusted_only_from_a_hop(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    for trusted in (0, 1):
        config = base_config(port, upstream.url, idp=idp, xff_num_trusted_hops=trusted,
                             route={"allow_public_unauthenticated_access": True, "policy": None})
        async with running_gate(config, tmp_path) as gate, client_session() as browser:
            async with browser.get(f"{gate.url}/x", headers={"X-Request-Id": "edge-42"}) as resp:
                assert resp.status == 200
                received = upstream.seen.last()["headers"].items()
                seen = {k.lower(): v for k, v in received}["x-request-id"]
                assert resp.headers["X-Request-Id"] == seen
                if trusted:
                    assert seen == "edge-42"
                else:
                    assert seen != "edge-42" and re.fullmatch(r"[0-9a-f]{16}", seen)
            async with browser.get(f"{gate.url}/.clawgate/nothing-here") as resp:
                assert resp.status == 404
                rid = resp.headers["X-Request-Id"]
                assert rid in await resp.text()  # on the error page too


async def test_workers_share_the_port_sessions_metrics_and_stop_together(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port, metrics_port, health = free_port(), free_port(), free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp, workers=2, log_format="json",
                         log_level="info", metrics_address=f"127.0.0.1:{metrics_port}",
                         health_address=f"127.0.0.1:{health}")
    # No cookie_secret and no certificate: the supervisor must make one of each for both.
    del config["cookie_secret"]
    gate = GateProcess(config, tmp_path)
    await asyncio.to_thread(gate.start)
    try:
        assert gate.proc is not None
        children = await _children(gate.proc.pid, 2)
        assert len(children) == 2
        async with client_session() as browser:
            resp = await login(browser, f"{gate.url}/first", ALICE.username, ALICE.password)
            assert resp.status == 200
            certs = set()
            jar = browser.cookie_jar.filter_cookies(URL(gate.url))
            cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            for i in range(40):
                # A new connection each time, so the kernel spreads them over the workers;
                # the session cookie made by one worker must be good in the other.
                reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=ctx)
                writer.write(f"GET /n{i} HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n"
                             f"Cookie: {cookie}\r\nConnection: close\r\n\r\n".encode())
                answer = await asyncio.wait_for(reader.read(), 10)
                certs.add(writer.get_extra_info("ssl_object").getpeercert(True))
                writer.close()
                assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
            assert len(certs) == 1
        lines = [json.loads(line) for line in gate.log_text().splitlines()
                 if line.startswith("{")]
        served_by = {line.get("worker") for line in lines if line.get("event") == "access"}
        assert served_by == {0, 1}
        # Every line logged while a request ran carries its request id.
        during = [line for line in lines if line.get("event") in ("access", "authorization")]
        assert during and all(re.fullmatch(r"[0-9a-f]{16}", line["request_id"]) for line in during)

        text = await scrape(metrics_port)
        total = sum(float(v) for v in re.findall(
            r'^clawgate_http_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', text, re.M))
        assert total >= 41  # both workers' counts, added up
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{health}/readyz"
        ) as resp:
            assert resp.status == 200
        gate.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(gate.proc.wait, 30)
        assert code == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    finally:
        await asyncio.to_thread(gate.stop)


async def _children(pid: int, want: int) -> list[int]:
    for _ in range(100):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        found = [int(p) for p in text.split()]
        if len(found) >= want:
            return found
        await asyncio.sleep(0.1)
    return found


def test_bench_config_is_a_valid_clawgate_config(tmp_path: Path) -> None:
    """The benchmark's clawgate config and minted session stay in step with the code."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.run import auth_step_us, clawgate_config, mint_cookie

    config = clawgate_config(tmp_path, 8443, 8080, 8081, 1, True, True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    cookie = mint_cookie(path, 8443)
    assert cookie.startswith("__Host-_clawgate")
    assert auth_step_us(path, cookie, 8443)["auth_step_us"] > 0


def test_bench_nginx_configs_are_valid(tmp_path: Path) -> None:
    """The benchmark's nginx upstream (both segment modes) and reference proxy configs
    are accepted by the nginx it runs."""
    import shutil
    import subprocess
    import sys

    import pytest

    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if nginx is None:
        pytest.skip("nginx is not installed (scripts/setup --full installs it)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.run import generate_self_signed, nginx_proxy_conf, nginx_upstream_conf

    cert = generate_self_signed(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert.cert_pem)
    (tmp_path / "key.pem").write_bytes(cert.key_pem)
    confs = {
        "up.conf": nginx_upstream_conf(tmp_path, 18080),
        "split.conf": nginx_upstream_conf(tmp_path, 18080, split=True),
        "proxy.conf": nginx_proxy_conf(tmp_path, 18443, 18080, 18081),
        "proxy2.conf": nginx_proxy_conf(tmp_path, 18443, 18080, 18081, workers=2),
    }
    for name, text in confs.items():
        nopush = "off" if name == "split.conf" else "on"
        assert f"tcp_nopush {nopush};" in text
        (tmp_path / name).write_text(text)
        done = subprocess.run(
            [nginx, "-t", "-q", "-c", str(tmp_path / name)], capture_output=True, text=True
        )
        assert done.returncode == 0, (name, done.stderr)
