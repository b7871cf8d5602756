"""Listeners: TLS with certificate files, the HTTP->HTTPS redirect, insecure_server, health."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from proxy.tls import generate_self_signed
from tests.support.gate import base_config, running_gate
from tests.support.upstream import Upstream, free_port


async def test_certificate_files_redirect_listener_and_tls_floor(
    upstream: Upstream, tmp_path: Path
) -> None:
    made = generate_self_signed(["127.0.0.1", "localhost"])
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(made.cert_pem)
    key.write_bytes(made.key_pem)
    port, redirect_port = free_port(), free_port()
    config = base_config(
        port, upstream.url, idp=None,
        certificate_file=str(cert), certificate_key_file=str(key),
        http_redirect_addr=f"127.0.0.1:{redirect_port}",
        route={"policy": None, "allow_public_unauthenticated_access": True},
    )
    async with running_gate(config, tmp_path) as gate:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{gate.url}/hello", ssl=trusting) as r:
                assert r.status == 200  # the configured certificate verifies
                assert r.headers["Strict-Transport-Security"].startswith("max-age=")
                assert r.headers["X-Frame-Options"] == "SAMEORIGIN"
                assert r.headers["X-Content-Type-Options"] == "nosniff"
            async with client.get(f"http://127.0.0.1:{redirect_port}/a/b?c=1",
                                  allow_redirects=False) as r:
                assert r.status == 301
                assert r.headers["Location"] == f"https://127.0.0.1:{port}/a/b?c=1"
            async with client.get(f"http://127.0.0.1:{redirect_port}/x",
                                  headers={"Host": "evil.example"}, allow_redirects=False) as r:
                assert r.status == 404  # never a redirect to a host with no route
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.check_hostname = False
            old.verify_mode = ssl.CERT_NONE
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so only the server can be the one refusing
            try:
                async with client.get(f"{gate.url}/hello", ssl=old) as r:
                    raise AssertionError(f"TLS 1.1 was accepted ({r.status})")
            except aiohttp.ClientError:
                pass  # refused: TLS 1.2 is the floor


async def test_insecure_server_serves_plain_http_without_secure_cookie_prefix(
    upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    config = base_config(port, upstream.url, idp=None, insecure_server=True,
                         route={"policy": None, "allow_public_unauthenticated_access": True})
    async with running_gate(config, tmp_path) as gate, aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{gate.port}/hello") as r:
            assert r.status == 200
            assert "Strict-Transport-Security" not in r.headers
            seen = await r.json()
        assert seen["headers"]["X-Forwarded-Proto"] == "http"
        health = config["health_address"]
        async with client.get(f"http://{health}/healthz") as r:
            assert r.status == 200
        async with client.get(f"http://{health}/readyz") as r:
            assert r.status == 200
            assert (await r.json())["config_generation"] == 1


async def test_behind_a_trusted_tls_load_balancer(upstream: Upstream, tmp_path: Path) -> None:
    port = free_port()
    config = base_config(port, upstream.url, idp=None, insecure_server=True,
                         xff_num_trusted_hops=1,
                         route={"policy": None, "allow_public_unauthenticated_access": True})
    async with running_gate(config, tmp_path) as gate, aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{gate.port}/x", headers={
            "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9, 198.51.100.7",
        }) as r:
            seen = await r.json()
        # One trusted hop: the balancer's view of the client, and the scheme it terminated.
        assert seen["headers"]["X-Forwarded-Proto"] == "https"
        assert seen["headers"]["X-Forwarded-For"] == "198.51.100.7"
