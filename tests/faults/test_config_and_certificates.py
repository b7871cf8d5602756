"""The files clawgate runs from change under it: a config replaced by garbage or deleted
keeps the last good config in force; rotated certificate files are picked up by new
connections without a restart."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from pathlib import Path

from proxy.tls import generate_self_signed
from tests.security.helpers import bare_client, insecure_tls
from tests.support.gate import base_config, running_gate
from tests.support.upstream import Upstream, free_port

PUBLIC = {"allow_public_unauthenticated_access": True, "policy": None}


async def eventually(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.2)


async def test_broken_or_missing_config_keeps_the_last_good_one(
    upstream: Upstream, tmp_path: Path
) -> None:
    config = base_config(free_port(), upstream.url, idp=None, route=PUBLIC)
    health = f"http://{config['health_address']}"
    async with running_gate(config, tmp_path) as gate, bare_client() as client:
        async def ready() -> dict:  # type: ignore[type-arg]
            async with client.get(f"{health}/readyz") as r:
                return await r.json()  # type: ignore[no-any-return]

        async def serves() -> bool:
            async with client.get(f"{gate.url}/x") as r:
                return r.status == 200

        for breakage in ("garbage", "deleted", "empty"):
            if breakage == "garbage":
                gate.path.write_bytes(b"\x00\xff{{{ not: [yaml")
            elif breakage == "empty":
                gate.path.write_text("")
            else:
                gate.path.unlink()

            async def noticed() -> bool:
                return (await ready())["config_on_disk_in_force"] is False

            await eventually(noticed)
            assert await serves(), breakage  # the last good config still routes
            gate.write(config)

            async def healed() -> bool:
                return (await ready())["config_on_disk_in_force"] is True

            await eventually(healed)
        # A good change still applies after all that.
        changed = {**config, "routes": [{**config["routes"][0], "set_response_headers": {
            "X-Reloaded": "yes"}}]}
        gate.write(changed)

        async def reloaded() -> bool:
            async with client.get(f"{gate.url}/x") as r:
                return r.headers.get("X-Reloaded") == "yes"

        await eventually(reloaded)


def write_pair(cert: Path, key: Path) -> str:
    made = generate_self_signed(["127.0.0.1"])
    for path, data in ((cert, made.cert_pem), (key, made.key_pem)):
        tmp = path.with_suffix(".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(made.cert_pem.decode())).hexdigest()


async def served_fingerprint(port: int) -> str:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=insecure_tls())
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return hashlib.sha256(der).hexdigest()


async def test_rotated_certificate_is_used_by_new_connections(
    upstream: Upstream, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    first = write_pair(cert, key)
    config = base_config(free_port(), upstream.url, idp=None, route=PUBLIC,
                         certificate_file=str(cert), certificate_key_file=str(key))
    async with running_gate(config, tmp_path) as gate:
        assert await served_fingerprint(gate.port) == first
        # A connection opened before the rotation keeps working afterwards.
        reader, writer = await asyncio.open_connection("127.0.0.1", gate.port, ssl=insecure_tls())
        await asyncio.sleep(1.1)  # a distinct mtime even on coarse file systems
        second = write_pair(cert, key)

        async def rotated() -> bool:
            return await served_fingerprint(gate.port) == second

        await eventually(rotated, timeout=8)
        writer.write(f"GET /old HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert (await reader.read()).startswith(b"HTTP/1.1 200")
        # A half-written renewal (garbage key) is not loaded; the good pair stays.
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n")
        await asyncio.sleep(2.5)
        assert await served_fingerprint(gate.port) == second
        async with bare_client() as client, client.get(f"{gate.url}/after") as r:
            assert r.status == 200
