"""Route matching through the running server: hosts, paths, prefixes, regexes, rewrites."""

from __future__ import annotations

from pathlib import Path

from yarl import URL

from tests.support.gate import JSON, base_config, client_session, register_client, running_gate
from tests.support.idp import BOB, TestIdP, login
from tests.support.upstream import Upstream, free_port


async def test_routes_on_one_host_by_path_prefix_and_regex(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port, hosts=("127.0.0.1", "localhost"))
    origin = f"https://127.0.0.1:{port}"
    config = base_config(port, upstream.url, idp=idp)
    staff_only = [{"allow": {"or": [{"groups": {"has": "admins"}}]}}]
    config["routes"] = [
        {"from": origin, "to": upstream.url, "path": "/exact", "allow_public_unauthenticated_access": True},
        {"from": origin, "to": upstream.url, "prefix": "/admin/", "policy": staff_only},
        {"from": origin, "to": upstream.url + "/base", "prefix": "/api/", "prefix_rewrite": "/v2/",
         "allow_any_authenticated_user": True},
        {"from": origin, "to": upstream.url, "regex": "/files/[0-9]+", "allow_any_authenticated_user": True},
        {"from": f"https://localhost:{port}", "to": upstream.url, "allow_public_unauthenticated_access": True,
         "set_request_headers": {"X-Route": "localhost"}},
    ]
    async with running_gate(config, tmp_path) as gate, client_session() as bob:
        async with bob.get(f"{gate.url}/exact", headers=JSON) as r:
            assert r.status == 200  # public
        async with bob.get(f"{gate.url}/exact/more", headers=JSON) as r:
            assert r.status == 404  # exact path only; nothing else on this host matches
        await login(bob, f"{gate.url}/api/items?q=1", BOB.username, BOB.password)
        assert upstream.seen.last()["path"] == "/base/v2/items?q=1"
        async with bob.get(f"{gate.url}/admin/panel", headers=JSON) as r:
            assert r.status == 403  # bob is not in admins
        async with bob.get(f"{gate.url}/files/42", headers=JSON) as r:
            assert r.status == 200
        async with bob.get(f"{gate.url}/files/42x", headers=JSON) as r:
            assert r.status == 404  # regex is anchored
        # The other host, same listener: its own route and headers.
        async with bob.get(f"https://localhost:{port}/anything", headers=JSON) as r:
            assert r.status == 200
            assert (await r.json())["headers"]["X-Route"] == "localhost"
        # A Host no route names: 404, never the first route.
        async with bob.get(f"{gate.url}/exact", headers={"Host": "evil.example", **JSON}) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "no_route"
        # A path that cannot be normalized safely: 400.
        async with bob.get(URL(f"{gate.url}/api/%2e%2e/%2e%2e/x", encoded=True), headers=JSON) as r:
            assert r.status == 400
        count = len(upstream.seen.requests)
        async with bob.get(URL(f"{gate.url}/api/a/../../admin/panel", encoded=True), headers=JSON) as r:
            assert r.status == 403  # normalized to /admin/panel before any rule sees it
        assert len(upstream.seen.requests) == count
