"""/.clawgate/verify: every field is checked against what the test upstream actually
received for the same user and browser."""

from __future__ import annotations

import shlex
from pathlib import Path

from proxy.assertion import verify_assertion
from tests.support.gate import (
    HTML,
    JSON,
    base_config,
    client_session,
    register_client,
    running_gate,
)
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port

# What differs between two requests by design.
PER_REQUEST = {"x-request-id", "x-pomerium-jwt-assertion"}


async def test_verify_shows_what_the_upstream_receives(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
        extra = {"X-Custom": "kept", **JSON}
        async with browser.get(f"{gate.url}/.clawgate/verify", headers=extra) as r:
            assert r.status == 200
            shown = await r.json()
        async with browser.get(f"{gate.url}/", headers=extra) as r:
            assert r.status == 200
        seen = upstream.seen.last()
        received = {k.lower(): v for k, v in seen["headers"].items()}
        listed = {k.lower(): v for k, v in shown["headers"]}
        # The same header set, names and values, but for what is fresh per request.
        assert set(listed) == set(received), (set(listed) ^ set(received))
        for name, value in listed.items():
            if name not in PER_REQUEST:
                assert received[name] == value, name
        assert shown["decision"]["allow"] is True
        assert shown["decision"]["reason"].startswith("allow")
        assert shown["upstream_url"] == f"{upstream.url}/"
        assert shown["identity_headers"]["x-pomerium-claim-email"] == "alice@example.com"
        assert received["x-pomerium-claim-email"] == "alice@example.com"
        assertion = shown["assertion"]
        assert assertion["checks"] == {"signature": True, "iss": True, "aud": True, "exp": True,
                                       "all": True}
        assert assertion["claims"]["email"] == "alice@example.com"
        # The assertion shown verifies as the upstream's did, against the JWKS.
        async with browser.get(f"{gate.url}/.well-known/clawgate/jwks.json") as r:
            jwks = await r.json()
        token = listed["x-pomerium-jwt-assertion"]
        audience = f"127.0.0.1:{port}"
        assert verify_assertion(token, jwks, audience)["sub"] == ALICE.sub
        assert verify_assertion(received["x-pomerium-jwt-assertion"], jwks, audience)["sub"] \
            == ALICE.sub
        # curl reproduces the request: every header shown, to the upstream URL.
        words = shlex.split(shown["curl"])
        assert words[0] == "curl" and words[-1] == shown["upstream_url"]
        sent = [words[i + 1] for i, w in enumerate(words) if w == "-H"]
        assert "x-pomerium-claim-email: alice@example.com" in [s.lower() for s in sent]
        assert "X-Custom: kept" in sent
        # Nobody's cookie of clawgate's own in what goes upstream, or on the page.
        assert "__Host-_clawgate" not in shown["curl"]
        # HTML for browsers, linked from /.clawgate/.
        async with browser.get(f"{gate.url}/.clawgate/verify", headers=HTML) as r:
            page = await r.text()
            assert r.status == 200 and "What the upstream receives" in page
            assert "signature</code>: pass" in page
        async with browser.get(f"{gate.url}/.clawgate/", headers=HTML) as r:
            assert "/.clawgate/verify" in await r.text()


async def test_verify_needs_a_session(upstream: Upstream, idp: TestIdP, tmp_path: Path) -> None:
    port = free_port()
    register_client(idp, port)
    async with running_gate(base_config(port, upstream.url, idp=idp), tmp_path) as gate, \
            client_session() as browser:
        async with browser.get(f"{gate.url}/.clawgate/verify", headers=JSON) as r:
            assert r.status == 401
        async with browser.get(f"{gate.url}/.clawgate/verify", headers=HTML,
                               allow_redirects=False) as r:
            assert r.status == 302
            assert "/.clawgate/sign_in?redirect_uri=/.clawgate/verify" in r.headers["Location"]
