"""Open redirects: whatever a sign-in, callback or sign-out is asked to return to, the
browser ends up on the same host, never on another site or a script URL.

Each form goes through the whole sign-in with the real IdP (silent after the first
login), and the callback's final Location is checked the way a browser resolves it:
tabs and newlines stripped, backslashes read as slashes.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import pytest

from tests.security.helpers import gate_for, raw_exchange, status_of
from tests.support.gate import HTML, Gate, client_session
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream

EVIL = "evil.example"
# Dozens of sign-ins from one address in a second: more than the default allows.
NO_SIGN_IN_LIMIT = {"sign_in_per_ip": None}
FORMS = [
    f"//{EVIL}",
    f"///{EVIL}",
    f"/\\{EVIL}",
    f"\\\\{EVIL}",
    f"\\/{EVIL}",
    f"https:{EVIL}",
    f"https:/{EVIL}",
    f"https://{EVIL}/",
    f"http://{EVIL}",
    f"HTTPS://{EVIL}",
    f"%2f%2f{EVIL}",
    f"/%2f{EVIL}",
    f"/%2F%2F{EVIL}",
    f"%5c%5c{EVIL}",
    f"/%5c{EVIL}",
    f"/\t/{EVIL}",
    f"/\n/{EVIL}",
    f"/\r\n/{EVIL}",
    f"/%09/{EVIL}",
    f"/%0a/{EVIL}",
    "/%0d%0aSet-Cookie:%20x=1",
    f" //{EVIL}",
    f"\t//{EVIL}",
    f"//{EVIL}@127.0.0.1/",
    f"/@{EVIL}",
    f"@{EVIL}",
    f"{EVIL}",
    "//%65vil.example",
    f"/%2e%2e//{EVIL}",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "/javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    f"\u3002{EVIL}",
    f"\uff0f\uff0f{EVIL}",
    "/" + "a" * 5000,
]


def browser_resolves(base: str, location: str) -> tuple[str, str]:
    """(netloc, scheme) a browser would navigate to for ``location`` (WHATWG URL rules:
    ASCII tab/newline removed, backslash is a slash for special schemes)."""
    cleaned = location.strip(" \x00").replace("\t", "").replace("\n", "").replace("\r", "")
    cleaned = cleaned.replace("\\", "/")
    target = urlsplit(urljoin(base, cleaned))
    return target.netloc, target.scheme


def assert_same_host(gate: Gate, location: str) -> None:
    netloc, scheme = browser_resolves(gate.url + "/", location)
    assert (netloc, scheme) == (f"127.0.0.1:{gate.port}", "https"), location
    assert location.startswith("/") and not location.startswith("//"), location
    assert not any(c in location for c in "\\\t\r\n"), location


async def test_sign_in_return_targets_stay_on_host(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with (
        gate_for(upstream, tmp_path, idp, rate_limits=NO_SIGN_IN_LIMIT) as gate,
        client_session() as browser,
    ):
        await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
        callback = f"{gate.url}/.clawgate/callback"
        for form in FORMS:
            start = f"{gate.url}/.clawgate/sign_in?redirect_uri={quote(form, safe='')}"
            resp = await login(browser, start, ALICE.username, ALICE.password, stop_at=callback)
            url = resp.headers["Location"]
            # The callback URL may not carry its own return target: it comes sealed.
            url += f"&redirect_uri={quote('https://' + EVIL)}&return_to=//{EVIL}"
            async with browser.get(url, allow_redirects=False) as r:
                assert r.status == 302, (form, await r.text())
                location = r.headers["Location"]
            assert_same_host(gate, location)
            if form.startswith("/a"):
                assert location == "/"  # too long to be a real return target


async def test_anonymous_request_paths_never_redirect_off_host(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate, client_session() as browser:
        for raw in (
            f"//{EVIL}/",
            f"//{EVIL}/%2e%2e",
            f"/x?next=//{EVIL}",
            f"/%2f%2f{EVIL}",
            f"/.//{EVIL}",
            f"/x/..//{EVIL}",
        ):
            async with browser.get(f"{gate.url}{raw}", headers=HTML, allow_redirects=False) as r:
                if r.status == 400:
                    continue
                assert r.status == 302, raw
                assert r.headers["Location"].startswith(idp.issuer)
            resp = await login(
                browser,
                f"{gate.url}{raw}",
                ALICE.username,
                ALICE.password,
                stop_at=f"{gate.url}/.clawgate/callback",
            )
            async with browser.get(resp.headers["Location"], allow_redirects=False) as r:
                assert_same_host(gate, r.headers["Location"])
            browser.cookie_jar.clear(lambda c: c.key.startswith("__Host-_clawgate"))


async def test_sign_out_ignores_return_targets(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate, client_session() as browser:
        await login(browser, f"{gate.url}/", ALICE.username, ALICE.password)
        evil_params = (
            f"redirect_uri=https://{EVIL}&post_logout_redirect_uri=https://{EVIL}"
            f"&return_to=//{EVIL}"
        )
        async with browser.get(
            f"{gate.url}/.clawgate/sign_out?{evil_params}", allow_redirects=False
        ) as r:
            assert r.status == 200 and "Location" not in r.headers
        async with browser.get(f"{gate.url}/.clawgate/user") as r:
            csrf = (await r.json())["csrf"]
        async with browser.post(
            f"{gate.url}/.clawgate/sign_out?{evil_params}",
            data={"csrf": csrf, "redirect_uri": f"https://{EVIL}"},
            headers={"Origin": gate.url},
            allow_redirects=False,
        ) as r:
            assert r.status == 302
            location = r.headers["Location"]
        target = urlsplit(location)
        assert EVIL not in target.netloc
        if location.startswith(idp.issuer):  # RP-initiated logout at the IdP
            back = parse_qs(target.query)["post_logout_redirect_uri"]
            assert back == [f"{gate.url}/.clawgate/signed_out"]
        else:
            assert_same_host(gate, location)


@pytest.mark.parametrize(
    "host",
    [
        EVIL,
        f"127.0.0.1@{EVIL}",
        f"{EVIL}/x",
        f"{EVIL}\\x",
        f"a b.{EVIL}",
        f"{EVIL}:443",
        "127.0.0.1.evil.example",
    ],
)
async def test_http_redirect_listener_only_sends_to_route_origins(
    upstream: Upstream, tmp_path: Path, host: str
) -> None:
    from tests.support.upstream import free_port

    plain = free_port()
    async with gate_for(
        upstream,
        tmp_path,
        None,
        http_redirect_addr=f"127.0.0.1:{plain}",
        route={"allow_public_unauthenticated_access": True, "policy": None},
    ) as gate:
        hostile = await raw_exchange(
            plain,
            f"GET /p HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
            tls=False,
        )
        assert status_of(hostile) in (400, 404), hostile[:300]
        assert b"\r\nLocation:" not in hostile.split(b"\r\n\r\n")[0]
        own = await raw_exchange(
            plain,
            f"GET //{EVIL}/p?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(),
            tls=False,
        )
        head = own.split(b"\r\n\r\n")[0].decode("latin-1")
        assert status_of(own) == 301, head
        location = next(
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("location:")
        )
        assert browser_resolves(gate.url, location) == (f"127.0.0.1:{gate.port}", "https")
