"""A failing identity provider is reported as unavailable, never as the user being refused."""

from __future__ import annotations

from pathlib import Path

from tests.support.gate import base_config, client_session, register_client, running_gate
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port


async def test_token_endpoint_5xx_is_a_502_page_and_sign_in_recovers(
    idp_clean: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    idp = idp_clean
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        callback = await login(browser, f"{gate.url}/", ALICE.username, ALICE.password,
                               stop_at=f"{gate.url}/.clawgate/callback")
        idp.set_failure("down", endpoints=["token"])
        async with browser.get(callback.headers["Location"], allow_redirects=False) as r:
            page = await r.text()
            assert r.status == 502
        assert "Sign-in failed" in page and "answered 503" in page
        assert "Traceback" not in page
        idp.set_failure("ok")
        resp = await login(browser, f"{gate.url}/again", ALICE.username, ALICE.password)
        assert resp.status == 200
