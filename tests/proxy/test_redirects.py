"""Open redirects: whatever ``redirect_uri`` says, sign-in only ever returns to this host."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from proxy.endpoints import safe_return_path
from tests.support.gate import base_config, client_session, register_client, running_gate
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port

HOSTILE = [
    "//evil.com",
    "/\\evil.com",
    "\\\\evil.com",
    "https://evil.com",
    "https:evil.com",
    "%2f%2fevil.com",
    "/%2fevil.com",
    "/%2F%2Fevil.com",
    "/\t/evil.com",
    "/%09/evil.com",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "/%5cevil.com",
    "/%5Cevil.com",
    "///evil.com",
    "\x00/evil.com",
    "/\r\nSet-Cookie: x=1",
    "/%0d%0aSet-Cookie:%20x=1",
    "evil.com",
    " /ok",
    "",
    "/" + "a" * 3000,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_safe_return_path_refuses(value: str) -> None:
    assert safe_return_path(value) == "/"


@pytest.mark.parametrize("value", [
    "/", "/app", "/app/page?x=1&y=//evil.com", "/a%20b", "/%252f%252fevil.com", "/#frag",
    "/.well-known/x", "/é",
])
def test_safe_return_path_keeps_same_host_paths(value: str) -> None:
    assert safe_return_path(value) == value


def test_safe_return_path_of_nothing() -> None:
    assert safe_return_path(None) == "/"


async def test_sign_in_never_returns_to_another_host(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    # Many sign-ins in a row from one address: lift the sign-in rate limit for this test.
    config = base_config(port, upstream.url, idp=idp, rate_limits={"sign_in_per_ip": None})
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        start = f"{gate.url}/.clawgate/sign_in?redirect_uri="
        # A control, so this test can tell "always /" from "sends the user back".
        resp = await login(browser, start + quote("/ok/path?x=1", safe=""),
                           ALICE.username, ALICE.password)
        assert str(resp.url) == f"{gate.url}/ok/path?x=1"
        payloads = [
            "//evil.com", "/\\evil.com", "https://evil.com", "https:evil.com", "%2f%2fevil.com",
            "/%2fevil.com", "/\t/evil.com", "javascript:alert(1)", "/%5cevil.com",
        ]
        # Each payload both as typed into the address bar and percent-encoded once more
        # (so the server receives it literally).
        raw_forms = [p.replace("\t", "%09").replace("\\", "%5C") for p in payloads]
        for query in [*raw_forms, *(quote(p, safe="") for p in payloads)]:
            upstream.seen.requests.clear()
            resp = await login(browser, start + query, ALICE.username, ALICE.password)
            final = urlsplit(str(resp.url))
            where = (final.scheme, final.netloc, final.path)
            assert where == ("https", f"127.0.0.1:{port}", "/"), (query, str(resp.url))
            assert resp.status == 200
            assert upstream.seen.last()["path"] == "/"
