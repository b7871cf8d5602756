"""The test IdP speaks real OIDC: code + PKCE, signed ID tokens, refresh, key rotation, logout,
fault injection. If these fail, every proxy integration test built on it would mislead."""

# The fixtures are imported by name (pytest finds them in module globals), so test parameters
# shadow those imports on purpose.
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import aiohttp
import jwt
import pytest
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]

from .idp import (  # noqa: F401
    ALICE,
    BOB,
    UNVERIFIED,
    TestIdP,
    TestUser,
    cookie_jar,
    fresh_idp,
    idp,
    idp_clean,
    login,
    logout_confirm,
)

CALLBACK = "https://127.0.0.1:1/.clawgate/callback"  # never served: the flow stops at it
SIGNED_OUT = "https://127.0.0.1:1/.clawgate/signed-out"
SCOPE = "openid profile email offline_access"


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=cookie_jar()) as session:
        yield session


def register(idp: TestIdP, client_id: str) -> tuple[str, str]:
    secret = f"{client_id}-secret"
    idp.add_client(client_id, secret, [CALLBACK], [SIGNED_OUT])
    return client_id, secret


async def sign_in(
    browser: aiohttp.ClientSession,
    idp: TestIdP,
    client: tuple[str, str],
    user: TestUser = ALICE,
    scope: str = SCOPE,
) -> tuple[dict[str, Any], str]:
    """Authorization code + PKCE by hand; returns the token response and the nonce sent."""
    verifier = generate_token(64)
    state, nonce = generate_token(24), generate_token(24)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client[0],
            "redirect_uri": CALLBACK,
            "scope": scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    resp = await login(
        browser, f"{idp.issuer}/auth?{query}", user.username, user.password, stop_at=CALLBACK
    )
    assert resp.status in (302, 303), await resp.text()
    params = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert params["state"] == [state]
    assert params["iss"] == [idp.issuer]  # RFC 9207 iss is sent on every authorization response
    tokens = await token_request(
        browser,
        idp,
        client,
        grant_type="authorization_code",
        code=params["code"][0],
        redirect_uri=CALLBACK,
        code_verifier=verifier,
    )
    return tokens, nonce


async def token_request(
    http: aiohttp.ClientSession,
    idp: TestIdP,
    client: tuple[str, str],
    *,
    expect: int = 200,
    **form: str,
) -> dict[str, Any]:
    # client_secret_basic per RFC 6749 2.3.1: form-encode both parts before base64.
    pair = f"{quote_plus(client[0])}:{quote_plus(client[1])}".encode()
    auth = {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
    async with http.post(f"{idp.issuer}/token", data=form, headers=auth) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == expect, body
        return body


async def verify_id_token(
    http: aiohttp.ClientSession, idp: TestIdP, token: str, audience: str
) -> dict[str, Any]:
    async with http.get(idp.jwks_uri) as resp:
        jwks = await resp.json()
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {k["kid"]: k for k in jwks["keys"]}
    assert kid in keys, f"kid {kid} not in the JWKS"
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(keys[kid]).key,
        algorithms=["RS256"],
        audience=audience,
        issuer=idp.issuer,
    )
    return claims


async def test_code_pkce_login_yields_signed_id_token_with_claims(
    idp: TestIdP, browser: aiohttp.ClientSession
) -> None:
    client = register(idp, "smoke-login")
    tokens, nonce = await sign_in(browser, idp, client)

    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "RS256"
    claims = await verify_id_token(browser, idp, tokens["id_token"], client[0])
    assert claims["sub"] == ALICE.sub
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["name"] == ALICE.name
    assert claims["groups"] == ["admins", "staff"]
    assert claims["nonce"] == nonce
    assert claims["exp"] - claims["iat"] == 3600
    assert "offline_access" in tokens["scope"].split()
    assert tokens["refresh_token"]

    async with browser.get(
        f"{idp.issuer}/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    ) as resp:
        userinfo = await resp.json()
    assert userinfo["groups"] == ["admins", "staff"]
    assert userinfo["email"] == "alice@example.com"


async def test_tampered_id_token_fails_verification(
    idp: TestIdP, browser: aiohttp.ClientSession
) -> None:
    client = register(idp, "smoke-tamper")
    tokens, _ = await sign_in(browser, idp, client, user=BOB)
    header, payload, sig = tokens["id_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["admins"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        await verify_id_token(browser, idp, f"{header}.{forged_payload}.{sig}", client[0])


async def test_unverified_user_gets_email_verified_false(
    idp: TestIdP, browser: aiohttp.ClientSession
) -> None:
    client = register(idp, "smoke-unverified")
    tokens, _ = await sign_in(browser, idp, client, user=UNVERIFIED)
    claims = await verify_id_token(browser, idp, tokens["id_token"], client[0])
    assert claims["email"] == "unverified@example.com"
    assert claims["email_verified"] is False


async def test_bad_password_raises_clear_assertion(
    idp: TestIdP, browser: aiohttp.ClientSession
) -> None:
    client = register(idp, "smoke-badpw")
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client[0],
            "redirect_uri": CALLBACK,
            "scope": "openid",
            "code_challenge": create_s256_code_challenge(generate_token(64)),
            "code_challenge_method": "S256",
        }
    )
    with pytest.raises(AssertionError, match="Invalid username or password"):
        await login(browser, f"{idp.issuer}/auth?{query}", ALICE.username, "wrong")


async def test_pkce_is_required(idp: TestIdP, browser: aiohttp.ClientSession) -> None:
    client = register(idp, "smoke-nopkce")
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client[0],
            "redirect_uri": CALLBACK,
            "scope": "openid",
        }
    )
    async with browser.get(f"{idp.issuer}/auth?{query}", allow_redirects=False) as resp:
        location = resp.headers["Location"]
    assert location.startswith(CALLBACK)
    assert parse_qs(urlsplit(location).query)["error"] == ["invalid_request"]


async def test_refresh_rotates_and_reflects_user_changes(
    idp: TestIdP, browser: aiohttp.ClientSession
) -> None:
    client = register(idp, "smoke-refresh")
    carol = TestUser(
        sub="carol",
        username="carol@example.com",
        password="carol-pw",
        email="carol@example.com",
        groups=("staff",),
    )
    idp.add_user(carol)
    tokens, nonce = await sign_in(browser, idp, client, user=carol)

    idp.add_user(TestUser(**{**carol.__dict__, "groups": ("staff", "oncall")}))
    refreshed = await token_request(
        browser, idp, client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    claims = await verify_id_token(browser, idp, refreshed["id_token"], client[0])
    assert claims["groups"] == ["staff", "oncall"]
    assert claims["nonce"] == nonce  # oidc-provider repeats the original nonce on refresh
    assert refreshed["refresh_token"] != tokens["refresh_token"]

    # Reusing a rotated refresh token is treated as theft: the whole grant dies.
    await token_request(
        browser,
        idp,
        client,
        expect=400,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
    )
    gone = await token_request(
        browser,
        idp,
        client,
        expect=400,
        grant_type="refresh_token",
        refresh_token=refreshed["refresh_token"],
    )
    assert gone["error"] == "invalid_grant"


async def test_id_token_ttl_is_adjustable(
    idp_clean: TestIdP, browser: aiohttp.ClientSession
) -> None:
    client = register(idp_clean, "smoke-ttl")
    idp_clean.set_config(id_token_ttl_seconds=5)
    tokens, _ = await sign_in(browser, idp_clean, client)
    claims = await verify_id_token(browser, idp_clean, tokens["id_token"], client[0])
    assert claims["exp"] - claims["iat"] == 5


async def test_logout_ends_the_idp_session(idp: TestIdP, browser: aiohttp.ClientSession) -> None:
    client = register(idp, "smoke-logout")
    tokens, _ = await sign_in(browser, idp, client, user=BOB)
    assert idp.sessions().get(BOB.sub, 0) >= 1
    before = idp.sessions()[BOB.sub]

    query = urlencode(
        {
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": SIGNED_OUT,
            "state": "after-logout",
        }
    )
    resp = await logout_confirm(browser, f"{idp.end_session_endpoint}?{query}", stop_at=SIGNED_OUT)
    assert resp.status == 303
    assert resp.headers["Location"] == f"{SIGNED_OUT}?state=after-logout"
    assert idp.sessions().get(BOB.sub, 0) == before - 1

    # Signing out again with no IdP session left goes through the provider's self-posting form.
    again = await logout_confirm(browser, f"{idp.end_session_endpoint}?{query}", stop_at=SIGNED_OUT)
    assert again.headers["Location"] == f"{SIGNED_OUT}?state=after-logout"

    # Without offline_access the grant would die with the session; with it, refresh survives
    # logout (the proxy must drop its own copy of the refresh token on sign-out).
    await token_request(
        browser, idp, client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )


async def test_revoke_user_kills_refresh(idp: TestIdP, browser: aiohttp.ClientSession) -> None:
    client = register(idp, "smoke-revoke")
    dave = TestUser(sub="dave", username="dave", password="dave-pw", email="dave@example.com")
    idp.add_user(dave)
    tokens, _ = await sign_in(browser, idp, client, user=dave)
    assert idp.revoke_user(dave.sub) > 0
    assert dave.sub not in idp.sessions()
    failed = await token_request(
        browser,
        idp,
        client,
        expect=400,
        grant_type="refresh_token",
        refresh_token=tokens["refresh_token"],
    )
    assert failed["error"] == "invalid_grant"


async def test_fault_injection(idp_clean: TestIdP, browser: aiohttp.ClientSession) -> None:
    idp = idp_clean
    idp.set_failure("down")
    async with browser.get(idp.discovery_url) as resp:
        assert resp.status == 503
    async with browser.get(idp.jwks_uri) as resp:
        assert resp.status == 503

    idp.set_failure("slow", 300, endpoints=["jwks"], count=1)
    started = time.monotonic()
    async with browser.get(idp.jwks_uri) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    async with browser.get(idp.jwks_uri) as resp:  # count=1 used up
        assert resp.status == 200
    assert time.monotonic() - started < 0.3

    idp.set_failure("ok")
    async with browser.get(idp.discovery_url) as resp:
        doc = await resp.json()
    assert doc["issuer"] == idp.issuer
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert idp.stats()["discovery"] == 2


async def test_key_rotation_replaces_kid_and_stop_leaves_nothing(
    fresh_idp: TestIdP, browser: aiohttp.ClientSession
) -> None:
    idp = fresh_idp
    client = register(idp, "smoke-rotate")
    tokens, _ = await sign_in(browser, idp, client)
    old_kid = jwt.get_unverified_header(tokens["id_token"])["kid"]

    new_kid = idp.rotate_keys()
    assert new_kid != old_kid
    async with browser.get(idp.jwks_uri) as resp:
        kids = {k["kid"] for k in (await resp.json())["keys"]}
    assert new_kid in kids
    assert old_kid not in kids
    with pytest.raises(AssertionError, match="not in the JWKS"):
        await verify_id_token(browser, idp, tokens["id_token"], client[0])

    # Sessions and refresh tokens survive rotation; new tokens carry the new kid.
    refreshed = await token_request(
        browser, idp, client, grant_type="refresh_token", refresh_token=tokens["refresh_token"]
    )
    assert jwt.get_unverified_header(refreshed["id_token"])["kid"] == new_kid
    await verify_id_token(browser, idp, refreshed["id_token"], client[0])

    proc = idp._proc
    assert proc is not None
    idp.stop()
    assert proc.poll() is not None
    assert not idp.running


async def test_strict_offline_access_needs_prompt_consent(
    idp_clean: TestIdP, browser: aiohttp.ClientSession
) -> None:
    client = register(idp_clean, "smoke-strict")
    idp_clean.set_config(strict_offline_access=True)
    tokens, _ = await sign_in(browser, idp_clean, client)
    assert "refresh_token" not in tokens
    assert "offline_access" not in tokens["scope"].split()
