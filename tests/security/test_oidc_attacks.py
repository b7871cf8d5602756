"""Forged ID tokens and misused callbacks, through clawgate's real sign-in callback.

A hostile provider (tests/security/evil_idp.py) hands clawgate whatever ID token the test
forges; every forgery must end on a clean error page without a session cookie and
without reaching the upstream. A control case with an honest token proves the harness
would let a good sign-in through.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.security.evil_idp import CLIENT_ID, CLIENT_SECRET, EvilIdP, Grant
from tests.security.helpers import COOKIE, bare_client, cookie_header, gate_for
from tests.support.gate import HTML, Gate, base_config, client_session, running_gate
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port


@pytest.fixture
async def evil() -> AsyncIterator[EvilIdP]:
    server = await EvilIdP().start()
    yield server
    await server.stop()


@pytest.fixture
async def evil_gate(evil: EvilIdP, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gate]:
    port = free_port()
    config = base_config(
        port,
        upstream.url,
        idp=None,
        idp_provider_url=evil.issuer,
        idp_client_id=CLIENT_ID,
        idp_client_secret=CLIENT_SECRET,
        idp_scopes=["openid", "email"],
        idp_clock_leeway="60s",
    )
    async with running_gate(config, tmp_path) as gate:
        yield gate


def has_session(browser: aiohttp.ClientSession) -> bool:
    return any(c.key == COOKIE and c.value for c in browser.cookie_jar)


async def attempt(gate: Gate) -> tuple[int, str, bool]:
    """One browser sign-in through the evil provider: (final status, body, got a session)."""
    async with (
        client_session() as browser,
        browser.get(f"{gate.url}/.clawgate/sign_in?redirect_uri=/landed", headers=HTML) as r,
    ):
        return r.status, await r.text(), has_session(browser)


def hs256_confusion(secret: Callable[[EvilIdP], bytes]) -> Callable[[EvilIdP, Grant], str]:
    return lambda idp, g: idp.hmac_signed(idp.claims(g), secret(idp), idp.kid)


STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NOW = int(time.time())
FORGERIES: dict[str, Callable[[EvilIdP, Grant], str]] = {
    "alg none": lambda idp, g: idp.unsigned(idp.claims(g), {"alg": "none", "kid": idp.kid}),
    "alg none, no kid": lambda idp, g: idp.unsigned(idp.claims(g), {"alg": "none"}),
    "alg None spelled oddly": lambda idp, g: idp.unsigned(idp.claims(g), {"alg": "nOnE"}),
    "HS256 keyed with the public key PEM": hs256_confusion(lambda idp: idp.public_pem),
    "HS256 keyed with the JWK JSON": hs256_confusion(lambda idp: json.dumps(idp.jwk()).encode()),
    "HS256 keyed with the modulus": hs256_confusion(
        lambda idp: base64.urlsafe_b64decode(idp.jwk()["n"] + "==")
    ),
    "signed by another key, same kid": lambda idp, g: idp.sign(idp.claims(g), key=STRANGER),
    "unknown kid": lambda idp, g: idp.sign(idp.claims(g), headers={"kid": "nope"}, key=STRANGER),
    "signature stripped": lambda idp, g: idp.sign(idp.claims(g)).rsplit(".", 1)[0] + ".",
    "payload swapped after signing": lambda idp, g: ".".join(
        [
            idp.sign(idp.claims(g)).split(".")[0],
            base64.urlsafe_b64encode(json.dumps(idp.claims(g, sub="root")).encode())
            .rstrip(b"=")
            .decode(),
            idp.sign(idp.claims(g)).split(".")[2],
        ]
    ),
    "wrong issuer": lambda idp, g: idp.sign(idp.claims(g, iss="https://evil.example")),
    "issuer with trailing slash": lambda idp, g: idp.sign(idp.claims(g, iss=idp.issuer + "/")),
    "wrong audience": lambda idp, g: idp.sign(idp.claims(g, aud="another-client")),
    "audience list without us": lambda idp, g: idp.sign(idp.claims(g, aud=["a", "b"])),
    "several audiences, azp another client": lambda idp, g: idp.sign(
        idp.claims(g, aud=[CLIENT_ID, "other"], azp="other")
    ),
    "expired beyond leeway": lambda idp, g: idp.sign(
        idp.claims(g, iat=NOW - 7200, exp=int(time.time()) - 120)
    ),
    "issued in the future beyond leeway": lambda idp, g: idp.sign(
        idp.claims(g, iat=int(time.time()) + 3600, exp=int(time.time()) + 7200)
    ),
    "not valid before a future time": lambda idp, g: idp.sign(
        idp.claims(g, nbf=int(time.time()) + 3600)
    ),
    "no exp": lambda idp, g: idp.sign(idp.claims(g, exp=None)),
    "no iat": lambda idp, g: idp.sign(idp.claims(g, iat=None)),
    "no sub": lambda idp, g: idp.sign(idp.claims(g, sub=None)),
    "missing nonce": lambda idp, g: idp.sign(idp.claims(g, nonce=None)),
    "wrong nonce": lambda idp, g: idp.sign(idp.claims(g, nonce="x" * 43)),
    "not a JWT": lambda idp, g: "not-a-token",
    "JWE-shaped": lambda idp, g: "a.b.c.d.e",
}


async def test_honest_token_signs_in(evil: EvilIdP, evil_gate: Gate, upstream: Upstream) -> None:
    evil.forge = lambda idp, g: idp.sign(idp.claims(g))
    status, body, session = await attempt(evil_gate)
    assert status == 200 and session, body
    assert upstream.seen.last()["path"] == "/landed"


@pytest.mark.parametrize("name", sorted(FORGERIES))
async def test_forged_id_token_is_refused(
    name: str, evil: EvilIdP, evil_gate: Gate, upstream: Upstream
) -> None:
    evil.forge = FORGERIES[name]
    status, body, session = await attempt(evil_gate)
    assert status == 401, (name, status, body[:300])
    assert "Sign-in failed" in body
    assert "Traceback" not in body and 'File "' not in body
    assert not session
    assert upstream.seen.requests == []
    assert evil.token_requests == 1


async def test_replayed_nonce_is_refused(
    evil: EvilIdP, evil_gate: Gate, upstream: Upstream
) -> None:
    evil.forge = lambda idp, g: idp.sign(idp.claims(g))
    assert (await attempt(evil_gate))[0] == 200
    first_nonce = evil.nonces[0]
    # A valid token minted for the first sign-in, replayed into a second one.
    evil.forge = lambda idp, g: idp.sign(idp.claims(g, nonce=first_nonce))
    upstream.seen.requests.clear()
    status, body, session = await attempt(evil_gate)
    assert status == 401 and not session, body
    assert upstream.seen.requests == []


async def _callback_and_login_cookie(gate: Gate) -> tuple[str, str]:
    async with client_session() as browser:
        async with browser.get(
            f"{gate.url}/.clawgate/sign_in", headers=HTML, allow_redirects=False
        ) as r:
            to_idp = r.headers["Location"]
        async with browser.get(to_idp, allow_redirects=False) as r:
            callback = r.headers["Location"]
        login_cookie = cookie_header(
            {c.key: c.value for c in browser.cookie_jar if c.key.startswith(f"{COOKIE}_login_")}
        )
    return callback, login_cookie


async def test_replayed_and_mismatched_state_are_refused(
    evil: EvilIdP, evil_gate: Gate, upstream: Upstream
) -> None:
    # The evil provider redeems a code any number of times, so only clawgate stands between
    # a copied callback URL (plus login cookie) and a second session.
    evil.forge = lambda idp, g: idp.sign(idp.claims(g))
    callback, login_cookie = await _callback_and_login_cookie(evil_gate)
    other_callback, other_cookie = await _callback_and_login_cookie(evil_gate)
    async with bare_client() as client:

        async def call(url: str, cookie: str) -> aiohttp.ClientResponse:
            async with client.get(
                url, headers={**HTML, "Cookie": cookie}, allow_redirects=False
            ) as r:
                await r.read()
                return r

        # State of attempt A with the login cookie of attempt B, and the reverse.
        assert (await call(callback, other_cookie)).status == 400
        assert (await call(other_callback, login_cookie)).status == 400
        # State altered by one character.
        state = callback.split("state=")[1]
        altered = callback.replace(state, state[:-1] + ("A" if state[-1] != "A" else "B"))
        assert (await call(altered, login_cookie)).status == 400
        first = await call(callback, login_cookie)
        assert first.status == 302 and f"{COOKIE}=" in first.headers.get("Set-Cookie", "")
        replay = await call(callback, login_cookie)
        assert replay.status == 400, "a used state must not sign in twice"
        set_cookie = replay.headers.get("Set-Cookie", "").replace(f'{COOKIE}=""', "")
        assert f"{COOKIE}=" not in set_cookie
    assert evil.token_requests == 1


async def test_code_issued_to_another_client_is_refused(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    async with gate_for(upstream, tmp_path, idp) as gate, client_session() as browser:
        other_redirect = f"https://127.0.0.1:{gate.port}/other-app/callback"
        idp.add_client("other-app", "other-secret", [other_redirect])
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        resp = await login(
            browser,
            f"{idp.issuer}/auth?"
            + urlencode(
                {
                    "client_id": "other-app",
                    "response_type": "code",
                    "redirect_uri": other_redirect,
                    "scope": "openid email",
                    "state": "s" * 20,
                    "nonce": "n" * 20,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
            ),
            ALICE.username,
            ALICE.password,
            stop_at=other_redirect,
        )
        foreign_code = resp.headers["Location"].split("code=")[1].split("&")[0]
        # A genuine clawgate sign-in attempt (state + login cookie), fed the foreign code.
        async with browser.get(
            f"{gate.url}/.clawgate/sign_in", headers=HTML, allow_redirects=False
        ) as r:
            state = r.headers["Location"].split("state=")[1].split("&")[0]
        async with browser.get(
            f"{gate.url}/.clawgate/callback?code={foreign_code}&state={state}",
            headers=HTML,
            allow_redirects=False,
        ) as r:
            body = await r.text()
            assert r.status == 401, body
            assert "Sign-in failed" in body and "Traceback" not in body
        assert not has_session(browser)
        assert upstream.seen.requests == []


async def test_idp_error_and_no_login_in_progress(
    evil: EvilIdP, evil_gate: Gate, upstream: Upstream
) -> None:
    async with bare_client() as client:
        cb = f"{evil_gate.url}/.clawgate/callback"
        query = urlencode(
            {
                "error": "access_denied",
                "state": "S" * 43,
                "error_description": "<script>alert(1)</script>\r\nSet-Cookie: x=1",
            }
        )
        async with client.get(f"{cb}?{query}", headers=HTML) as r:
            body = await r.text()
            assert r.status == 401
            assert "<script>" not in body and "&lt;script&gt;" in body
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert "x=1" not in r.headers.get("Set-Cookie", "")
        for url in (f"{cb}?code=abc&state={'S' * 43}", f"{cb}?code=abc", cb):
            async with client.get(url, headers=HTML) as r:
                body = await r.text()
                assert r.status == 400 and "Traceback" not in body
    assert evil.token_requests == 0
    assert upstream.seen.requests == []


# --- key choice, refusals said precisely (OpenID Connect RP conformance) -----------------

EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    algorithm: Any = (
        jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    return {**json.loads(algorithm.to_jwk(key.public_key())), **extra}


def kidless(idp: EvilIdP, g: Grant) -> str:
    return jwt.encode(idp.claims(g), idp.key, algorithm="RS256")


class Recorded:
    """Stands in for the callback's logger: what it was told, line by line."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def say(event: str, **fields: Any) -> None:
            self.lines.append({"event": event, "level": level, **fields})

        return say


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    from proxy import endpoints

    recorded = Recorded()
    monkeypatch.setattr(endpoints, "log", recorded)
    return recorded.lines


def reasons(logs: list[dict[str, Any]]) -> list[str]:
    return [x.get("reason", "") for x in logs if x.get("event") == "sign_in_failed"]


async def test_a_token_without_kid_is_verified_with_the_one_key_that_fits(
    evil: EvilIdP, evil_gate: Gate
) -> None:
    """One RSA and one EC signing key, and encryption keys: the RS256 token without a
    kid can only be the RSA signing key's."""
    evil.jwk_has_kid = False
    evil.extra_jwks = [
        public_jwk(EC_KEY, kid="ec-1", use="sig", alg="ES256"),
        public_jwk(OTHER_RSA, kid="enc-1", use="enc", alg="RSA-OAEP"),
        public_jwk(OTHER_RSA, kid="enc-2", alg="RSA-OAEP-256"),  # "enc" by its alg alone
    ]
    evil.forge = kidless
    status, body, session = await attempt(evil_gate)
    assert status == 200 and session, body


async def test_a_token_without_kid_among_several_fitting_keys_is_refused(
    evil: EvilIdP, evil_gate: Gate, logs: list[dict[str, Any]]
) -> None:
    evil.extra_jwks = [public_jwk(OTHER_RSA, kid="rsa-2", use="sig")]
    evil.forge = kidless
    status, body, session = await attempt(evil_gate)
    assert status == 401 and not session, body
    assert reasons(logs) == ["ambiguous_signing_key"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("alg none", "alg_not_allowed"),
        ("alg none, no kid", "alg_not_allowed"),
        ("alg None spelled oddly", "alg_not_allowed"),
        ("HS256 keyed with the public key PEM", "alg_not_allowed"),
        ("unknown kid", "unknown_signing_key"),
    ],
)
async def test_refusals_name_what_happened(
    name: str, reason: str, evil: EvilIdP, evil_gate: Gate, logs: list[dict[str, Any]]
) -> None:
    evil.forge = FORGERIES[name]
    status, _, _ = await attempt(evil_gate)
    assert status == 401
    assert reasons(logs) == [reason]
    failed = next(x for x in logs if x.get("event") == "sign_in_failed")
    assert failed["detail"]  # what the page says, in the log too
    assert "eyJ" not in json.dumps(failed, default=str)  # never a token


@pytest.mark.parametrize(
    ("answer", "status", "reason"),
    [
        ((400, "text/html", b"<html><body>Bad Request</body></html>"), 401, "token_error"),
        ((401, "text/plain", b"unauthorized"), 401, "token_error"),
        ((400, "application/json", b'{"error": "invalid_grant"}'), 401, "token_error"),
        ((503, "text/html", b"<html>down</html>"), 502, "idp_unreachable"),
    ],
)
async def test_token_endpoint_errors(
    answer: tuple[int, str, bytes],
    status: int,
    reason: str,
    evil: EvilIdP,
    evil_gate: Gate,
    logs: list[dict[str, Any]],
) -> None:
    """A refusal in HTML is still a refusal (401), not an unreachable provider; a 5xx is."""
    evil.token_answer = answer
    got, body, session = await attempt(evil_gate)
    assert got == status and not session, body
    assert reasons(logs) == [reason]


async def test_aggregated_and_distributed_claims_never_reach_the_session(
    evil: EvilIdP, evil_gate: Gate, upstream: Upstream
) -> None:
    evil.forge = lambda idp, g: idp.sign(idp.claims(
        g,
        _claim_names={"groups": "src1"},
        _claim_sources={"src1": {"endpoint": "https://claims.example/", "access_token": "AT-123"}},
    ))
    async with client_session() as browser:
        async with browser.get(f"{evil_gate.url}/.clawgate/sign_in?redirect_uri=/landed",
                               headers=HTML) as r:
            assert r.status == 200
        async with browser.get(f"{evil_gate.url}/.clawgate/user",
                               headers={"Accept": "application/json"}) as r:
            user = await r.text()
    assert "AT-123" not in user and "_claim_sources" not in user
    sent = json.dumps(upstream.seen.last()["headers"])
    assert "AT-123" not in sent and "claim_sources" not in sent


# --- back-channel logout tokens ----------------------------------------------------------

LOGOUT_EVENT = {"http://schemas.openid.net/event/backchannel-logout": {}}


def logout_claims(idp: EvilIdP, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "iss": idp.issuer, "aud": CLIENT_ID, "iat": int(time.time()),
        "jti": secrets.token_urlsafe(12), "events": LOGOUT_EVENT, "sid": "provider-session-1",
    }
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


async def post_logout(gate: Gate, token: str) -> tuple[int, dict[str, Any]]:
    async with bare_client() as client, client.post(
        f"{gate.url}/.clawgate/backchannel_logout", data={"logout_token": token}
    ) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body


async def signed_in_with_provider_sid(evil: EvilIdP, gate: Gate, sid: str) -> str:
    evil.forge = lambda idp, g: idp.sign(idp.claims(g, sid=sid))
    async with client_session() as browser:
        async with browser.get(f"{gate.url}/.clawgate/sign_in?redirect_uri=/x",
                               headers=HTML) as r:
            assert r.status == 200
        return cookie_header({c.key: c.value for c in browser.cookie_jar
                              if c.key.startswith(COOKIE) and "_login_" not in c.key})


async def session_status(gate: Gate, cookie: str) -> int:
    async with bare_client() as client, client.get(
        f"{gate.url}/x", headers={"Cookie": cookie, "Accept": "application/json"}
    ) as r:
        return r.status


LOGOUT_FORGERIES: dict[str, Callable[[EvilIdP], str]] = {
    "signed by another key": lambda idp: idp.sign(logout_claims(idp), key=STRANGER),
    "alg none": lambda idp: idp.unsigned(logout_claims(idp), {"alg": "none", "kid": idp.kid}),
    "wrong audience": lambda idp: idp.sign(logout_claims(idp, aud="another-client")),
    "wrong issuer": lambda idp: idp.sign(logout_claims(idp, iss="https://evil.example")),
    "carries a nonce": lambda idp: idp.sign(logout_claims(idp, nonce="n" * 20)),
    "no logout event": lambda idp: idp.sign(logout_claims(idp, events={"other": {}})),
    "no jti": lambda idp: idp.sign(logout_claims(idp, jti=None)),
    "no iat": lambda idp: idp.sign(logout_claims(idp, iat=None)),
    "issued an hour ago": lambda idp: idp.sign(logout_claims(idp, iat=int(time.time()) - 3600)),
    "names neither sid nor sub": lambda idp: idp.sign(logout_claims(idp, sid=None)),
    "an ID token instead": lambda idp: idp.sign(idp.claims(Grant("n", "r"), sid="x")),
}


@pytest.mark.parametrize("name", sorted(LOGOUT_FORGERIES))
async def test_logout_tokens_that_are_refused(
    name: str, evil: EvilIdP, evil_gate: Gate
) -> None:
    cookie = await signed_in_with_provider_sid(evil, evil_gate, "provider-session-1")
    status, body = await post_logout(evil_gate, LOGOUT_FORGERIES[name](evil))
    assert status == 400 and body["error"] == "invalid_request", (name, body)
    assert await session_status(evil_gate, cookie) == 200  # nothing was signed out


async def test_a_logout_token_ends_its_provider_session_once(
    evil: EvilIdP, evil_gate: Gate
) -> None:
    mine = await signed_in_with_provider_sid(evil, evil_gate, "provider-session-1")
    other = await signed_in_with_provider_sid(evil, evil_gate, "provider-session-2")
    token = evil.sign(logout_claims(evil), headers={"typ": "logout+jwt"})
    assert (await post_logout(evil_gate, token))[0] == 200
    assert await session_status(evil_gate, mine) == 401
    assert await session_status(evil_gate, other) == 200  # another provider session
    status, body = await post_logout(evil_gate, token)  # replayed
    assert status == 400 and "used already" in body["error_description"]


async def test_a_logout_token_with_only_sub_ends_every_session_of_the_user(
    evil: EvilIdP, evil_gate: Gate
) -> None:
    first = await signed_in_with_provider_sid(evil, evil_gate, "provider-session-1")
    second = await signed_in_with_provider_sid(evil, evil_gate, "provider-session-2")
    await asyncio.sleep(1.05)  # the mark covers sessions issued up to its second
    token = evil.sign(logout_claims(evil, sid=None, sub="alice"))
    assert (await post_logout(evil_gate, token))[0] == 200
    assert await session_status(evil_gate, first) == 401
    assert await session_status(evil_gate, second) == 401
