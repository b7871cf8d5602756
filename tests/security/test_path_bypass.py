"""Policy bypass through path spelling: dot segments, encodings, slashes, parameters.

Two deployments are attacked: a route whose policy denies ``/admin`` by path, and a host
whose ``/admin`` prefix is a separate route to a separate upstream. For every spelling,
either clawgate refuses it, or what the upstream receives does not mean ``/admin`` even
to an upstream that percent-decodes and resolves dot segments itself.

Paths are case-sensitive (as in Pomerium): ``/ADMIN`` reaches the upstream unchanged.
An upstream that matches paths case-insensitively needs its policy written for that;
docs/security.md says so, and the test pins the behaviour.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import unquote

from tests.security.helpers import bare_client, gate_for, raw_exchange, status_of
from tests.support.gate import base_config, register_client, running_gate
from tests.support.idp import TestIdP
from tests.support.upstream import Upstream, free_port

ADMIN_FORMS = [
    "/admin",
    "/admin/",
    "/admin/users",
    "//admin",
    "///admin/users",
    "/./admin",
    "/x/../admin",
    "/x/./../admin/",
    "/x/%2e%2e/admin",
    "/x/%2E%2E/admin",
    "/%2e/admin",
    "/x/.%2e/admin",
    "/x/%2e./admin",
    "/%61dmin",
    "/adm%69n/users",
    "/%41dmin",
    "/admin%2fusers",
    "/admin%2Fusers",
    "/x%2f..%2fadmin",
    "/x/..%2fadmin",
    "/admin;x=1",
    "/admin..;/",
    "/..;/admin",
    "/x/..;/admin",
    "/x/;/../admin",
    "/admin%00",
    "/admin%20",
    "/admin%09",
    "/admin\\",
    "/x\\..\\admin",
    "/%5cadmin",
    "/x/%5c../admin",
    "/admin#x",
    "/admin?x=1",
    "/x/..",
    "/x/../../admin",
    "/../admin",
    "/%2e%2e/admin",
    "/%252e%252e/admin",
    "/%2561dmin",
    "/%C0%AE%C0%AE/admin",
    "/admin/%2e%2e/admin",
    "/a/b/../../admin/",
    "/admin%23",
    "/admin%3f",
    "/.admin/../admin",
]
CASE_FORMS = ["/ADMIN", "/Admin/users", "/aDmIn"]


def upstream_would_read(path: str) -> str:
    """How a lenient upstream might interpret a path: decode once, resolve dot segments."""
    decoded = unquote(path.split("?", 1)[0])
    resolved = posixpath.normpath(decoded.replace("\\", "/"))
    return resolved.replace("//", "/")


def means_admin(path: str) -> bool:
    seen = upstream_would_read(path)
    return seen == "/admin" or seen.startswith("/admin/")


async def probe(port: int, path: str) -> int | None:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
    reply = await raw_exchange(port, (request + "Connection: close\r\n\r\n").encode("latin-1"))
    return status_of(reply)


async def test_path_policy_cannot_be_bypassed(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    policy = [
        {"allow": {"or": [{"accept": True}]}},
        {"deny": {"or": [{"http_path": {"starts_with": "/admin"}}]}},
    ]
    async with gate_for(upstream, tmp_path, idp, route={"policy": policy}) as gate:
        for form in ADMIN_FORMS:
            upstream.seen.requests.clear()
            status = await probe(gate.port, form)
            assert status is not None and (status in (400, 401, 403, 404) or status < 300), form
            for seen in upstream.seen.requests:
                assert not means_admin(seen["path"]), (form, seen["path"])
        upstream.seen.requests.clear()
        for form in CASE_FORMS:
            assert await probe(gate.port, form) == 200
        assert [r["path"] for r in upstream.seen.requests] == CASE_FORMS
        # Controls: the policy does allow other paths, and denies the plain spelling.
        async with bare_client() as client:
            async with client.get(f"{gate.url}/administrators-guide") as r:
                assert r.status == 401  # "/admin" prefix: a string prefix, as written
            async with client.get(f"{gate.url}/public/x") as r:
                assert r.status == 200


async def test_admin_route_cannot_be_reached_through_the_public_route(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    admin = await Upstream().start()
    try:
        port = free_port()
        register_client(idp, port)
        config = base_config(port, upstream.url, idp=idp)
        config["routes"] = [
            {
                "from": f"https://127.0.0.1:{port}",
                "to": admin.url,
                "prefix": "/admin",
                "policy": [{"allow": {"or": [{"reject": True}]}}],
            },
            {
                "from": f"https://127.0.0.1:{port}",
                "to": upstream.url,
                "allow_public_unauthenticated_access": True,
            },
        ]
        async with running_gate(config, tmp_path) as gate:
            for form in ADMIN_FORMS:
                upstream.seen.requests.clear()
                await probe(gate.port, form)
                for seen in upstream.seen.requests:
                    assert not means_admin(seen["path"]), (form, seen["path"])
            assert admin.seen.requests == []
            assert await probe(gate.port, "/elsewhere") == 200  # control
    finally:
        await admin.stop()
