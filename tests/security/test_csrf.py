"""Cross-site request forgery against clawgate's own state-changing endpoint, sign-out.

Another site can make a browser GET a URL (an <img>, a link) or POST a form; neither may
end the user's session. Only a same-origin POST carrying the session's CSRF token does.
"""

from __future__ import annotations

from pathlib import Path

from tests.security.helpers import gate_for, signed_in_browser
from tests.support.gate import HTML, JSON
from tests.support.idp import ALICE, TestIdP
from tests.support.upstream import Upstream


async def test_sign_out_forgeries_do_not_sign_out(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate, signed_in_browser(gate, ALICE) as browser:
        url = f"{gate.url}/.clawgate/sign_out"
        async with browser.get(f"{gate.url}/.clawgate/user") as r:
            csrf = (await r.json())["csrf"]
        cross_site = {
            "Origin": "https://evil.example",
            "Referer": "https://evil.example/x",
            "Sec-Fetch-Site": "cross-site",
        }
        async with browser.get(url, headers={**HTML, **cross_site}, allow_redirects=False) as r:
            page = await r.text()
            assert r.status == 200 and "Sign out?" in page
            assert "Set-Cookie" not in r.headers
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        forgeries = [
            ({}, {}),  # no token at all
            ({"csrf": "x" * len(csrf)}, {}),  # a guessed token
            ({"csrf": csrf}, {"Origin": "https://evil.example"}),  # right token, wrong site
            ({"csrf": csrf}, {"Origin": f"http://127.0.0.1:{gate.port}"}),
            ({"csrf": ""}, {"X-Clawgate-Csrf": ""}),
        ]
        for form, headers in forgeries:
            async with browser.post(
                url, data=form, headers={**JSON, **headers}, allow_redirects=False
            ) as r:
                assert r.status == 403, (form, headers)
                assert "Set-Cookie" not in r.headers
        async with browser.put(url, data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 405
        async with browser.get(f"{gate.url}/.clawgate/user") as r:
            assert r.status == 200, "the session must survive every forgery"
        # The real thing works: same-origin POST with the token.
        async with browser.post(
            url, data={"csrf": csrf}, headers={"Origin": gate.url}, allow_redirects=False
        ) as r:
            assert r.status == 302
        async with browser.get(f"{gate.url}/.clawgate/user", headers=JSON) as r:
            assert r.status == 401
