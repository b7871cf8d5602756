"""ID token verification in ``proxy.oidc.OidcClient`` against a small fake provider whose
tokens the tests sign themselves: every way a token can be wrong is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.oidc import OidcClient, OidcError

CLIENT_ID = "clawgate-unit"
NONCE = "n-0123456789abcdef"


@dataclass
class Key:
    kid: str
    private: Any

    @property
    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(
            self.private, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        doc: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        doc.update(kid=self.kid, use="sig")
        return doc

    @property
    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "k1": Key("k1", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "k2": Key("k2", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": Key("ec", ec.generate_private_key(ec.SECP256R1())),
    }


@dataclass
class FakeProvider:
    """Discovery, JWKS and a token endpoint that hands out whatever ``id_token`` is set."""

    issuer: str = ""
    jwks: list[dict[str, Any]] = field(default_factory=list)
    id_token: str = ""
    hits: dict[str, int] = field(default_factory=dict)
    # Set: a userinfo endpoint answering with (content type, body).
    userinfo: tuple[str, bytes] | None = None

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            self._hit("discovery")
            doc = {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/auth",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
            }
            if self.userinfo is not None:
                doc["userinfo_endpoint"] = f"{self.issuer}/userinfo"
            return web.json_response(doc)

        async def userinfo(request: web.Request) -> web.Response:
            self._hit("userinfo")
            assert self.userinfo is not None
            assert request.headers["Authorization"] == "Bearer at"
            content_type, body = self.userinfo
            return web.Response(body=body, content_type=content_type)

        async def jwks(request: web.Request) -> web.Response:
            self._hit("jwks")
            return web.json_response({"keys": self.jwks})

        async def token(request: web.Request) -> web.Response:
            self._hit("token")
            return web.json_response({"access_token": "at", "token_type": "Bearer",
                                      "expires_in": 300, "id_token": self.id_token})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        app.router.add_post("/token", token)
        app.router.add_get("/userinfo", userinfo)
        return app

    def _hit(self, name: str) -> None:
        self.hits[name] = self.hits.get(name, 0) + 1


@pytest.fixture
async def provider(keys: dict[str, Key]) -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(jwks=[keys["k1"].jwk])
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.issuer = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def client(provider: FakeProvider) -> AsyncIterator[OidcClient]:
    async with aiohttp.ClientSession() as http:
        yield OidcClient(http, issuer=provider.issuer, client_id=CLIENT_ID, client_secret="s3cret",
                         scopes=["openid"], request_params={}, leeway=5, timeout=5)


def claims(provider: FakeProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "alice",
                           "email": "alice@example.com", "iat": now, "exp": now + 300,
                           "nonce": NONCE}
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def sign(key: Key, payload: dict[str, Any], alg: str = "RS256", kid: str | None = "") -> str:
    headers = {"kid": key.kid if kid == "" else kid} if kid is not None else {}
    return jwt.encode(payload, key.private, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], mac_key: bytes | None) -> str:
    """A token pyjwt would refuse to produce: alg none, or HMAC keyed with public bytes."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = b"" if mac_key is None else hmac.new(mac_key, signing_input.encode(),
                                               hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


async def rejected(client: OidcClient, token: str, nonce: str | None = NONCE) -> OidcError:
    with pytest.raises(OidcError) as info:
        await client.verify_id_token(token, nonce=nonce)
    assert "Traceback" not in info.value.message
    return info.value


async def test_good_token_is_accepted(client: OidcClient, provider: FakeProvider,
                                      keys: dict[str, Key]) -> None:
    verified = await client.verify_id_token(sign(keys["k1"], claims(provider)), nonce=NONCE)
    assert verified["sub"] == "alice" and verified["email"] == "alice@example.com"


@pytest.mark.parametrize("changes", [
    {"aud": "someone-else"},
    {"aud": ["someone-else", "another"]},
    {"iss": "https://evil.example"},
    {"iss": "http://127.0.0.1:1"},
    {"exp": int(time.time()) - 60},
    {"iat": int(time.time()) + 600},
    {"nbf": int(time.time()) + 600},
    {"exp": None},
    {"iat": None},
    {"sub": None},
    {"aud": None},
    {"iss": None},
])
async def test_bad_claims_are_refused(client: OidcClient, provider: FakeProvider,
                                      keys: dict[str, Key], changes: dict[str, Any]) -> None:
    error = await rejected(client, sign(keys["k1"], claims(provider, **changes)))
    assert error.reason == "bad_id_token"


async def test_leeway_is_honoured_but_not_more(client: OidcClient, provider: FakeProvider,
                                               keys: dict[str, Key]) -> None:
    now = int(time.time())
    # Within the 5 s leeway: a provider clock a little ahead or a token just expired is fine.
    await client.verify_id_token(sign(keys["k1"], claims(provider, iat=now + 3)), nonce=NONCE)
    await client.verify_id_token(sign(keys["k1"], claims(provider, exp=now - 3)), nonce=NONCE)
    await rejected(client, sign(keys["k1"], claims(provider, iat=now + 30)))
    await rejected(client, sign(keys["k1"], claims(provider, exp=now - 30)))


async def test_several_audiences_need_azp(client: OidcClient, provider: FakeProvider,
                                          keys: dict[str, Key]) -> None:
    both = [CLIENT_ID, "other-client"]
    error = await rejected(client, sign(keys["k1"], claims(provider, aud=both)))
    assert "azp" in error.message
    ok = await client.verify_id_token(
        sign(keys["k1"], claims(provider, aud=both, azp=CLIENT_ID)), nonce=NONCE)
    assert ok["sub"] == "alice"


async def test_nonce_must_match(client: OidcClient, provider: FakeProvider,
                                keys: dict[str, Key]) -> None:
    for payload in (claims(provider, nonce="another-sign-in"), claims(provider, nonce=None),
                    claims(provider, nonce=12345)):
        error = await rejected(client, sign(keys["k1"], payload))
        assert error.reason == "nonce_mismatch"
    # Refresh (no nonce expected) does not care.
    assert (await client.verify_id_token(sign(keys["k1"], claims(provider, nonce=None)),
                                         nonce=None))["sub"] == "alice"


async def test_alg_none_and_hmac_with_the_public_key_are_refused(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key]
) -> None:
    payload = claims(provider)
    assert (await client.verify_id_token(sign(keys["k1"], payload), nonce=NONCE))  # keys loaded
    for alg in ("none", "None", "NONE"):
        await rejected(client, forge({"alg": alg, "kid": "k1", "typ": "JWT"}, payload, None))
    for pem in (keys["k1"].public_pem, json.dumps(keys["k1"].jwk).encode()):
        token = forge({"alg": "HS256", "kid": "k1", "typ": "JWT"}, payload, pem)
        error = await rejected(client, token)
        assert error.reason == "alg_not_allowed"


async def test_bad_signature_and_key_mismatch_are_refused(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key]
) -> None:
    payload = claims(provider)
    # Signed by another key while claiming to be k1.
    await rejected(client, sign(keys["k2"], payload, kid="k1"))
    # A valid token with one payload byte changed.
    head, body, sig = sign(keys["k1"], payload).split(".")
    altered = json.loads(base64.urlsafe_b64decode(body + "=="))
    altered["sub"] = "mallory"
    await rejected(client, f"{head}.{b64(json.dumps(altered).encode())}.{sig}")
    # An EC algorithm named on an RSA key.
    await rejected(client, sign(keys["ec"], payload, alg="ES256", kid="k1"))
    await rejected(client, "not-a-jwt")


async def test_unknown_kid_refetches_once_after_rotation(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key]
) -> None:
    await client.verify_id_token(sign(keys["k1"], claims(provider)), nonce=NONCE)
    assert provider.hits["jwks"] == 1
    provider.jwks = [keys["k2"].jwk]  # the provider rotates
    verified = await client.verify_id_token(sign(keys["k2"], claims(provider)), nonce=NONCE)
    assert verified["sub"] == "alice"
    assert provider.hits["jwks"] == 2
    # The retired key is gone from the cache too.
    await rejected(client, sign(keys["k1"], claims(provider)))
    assert provider.hits["jwks"] == 3
    # A kid the provider does not have: one fetch, then refused from memory.
    for _ in range(5):
        error = await rejected(client, sign(keys["k1"], claims(provider), kid="nope"))
        assert error.reason == "unknown_signing_key"
    assert provider.hits["jwks"] == 4


async def test_code_exchange_checks_the_nonce(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key]
) -> None:
    provider.id_token = sign(keys["k1"], claims(provider))
    result = await client.exchange_code("code", redirect_uri="https://gate/cb",
                                        code_verifier="v" * 43, nonce=NONCE)
    assert result.claims["sub"] == "alice"
    assert result.expires_at <= int(time.time()) + 300
    provider.id_token = sign(keys["k1"], claims(provider, nonce=None))
    with pytest.raises(OidcError) as info:
        await client.exchange_code("code", redirect_uri="https://gate/cb",
                                   code_verifier="v" * 43, nonce=NONCE)
    assert info.value.reason == "nonce_mismatch"
    provider.id_token = sign(keys["k1"], claims(provider, aud="other"))
    with pytest.raises(OidcError) as info:
        await client.exchange_code("code", redirect_uri="https://gate/cb",
                                   code_verifier="v" * 43, nonce=NONCE)
    assert info.value.reason == "bad_id_token"


# --- signed userinfo (OpenID Connect Core 5.3.2) ----------------------------------------


async def sign_in_with_userinfo(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key], userinfo: str
) -> dict[str, Any]:
    provider.id_token = sign(keys["k1"], claims(provider, email=None))
    provider.userinfo = ("application/jwt", userinfo.encode())
    result = await client.exchange_code("c", redirect_uri="https://x/cb", code_verifier="v" * 43,
                                        nonce=NONCE)
    return result.claims


def userinfo_claims(provider: FakeProvider, **changes: Any) -> dict[str, Any]:
    out = {"iss": provider.issuer, "aud": CLIENT_ID, "sub": "alice",
           "email": "alice@userinfo.example"}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


async def test_signed_userinfo_is_verified_and_used(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key]
) -> None:
    got = await sign_in_with_userinfo(client, provider, keys,
                                      sign(keys["k1"], userinfo_claims(provider)))
    assert got["email"] == "alice@userinfo.example"
    assert provider.hits["userinfo"] == 1


@pytest.mark.parametrize(("changes", "reason"), [
    ({"aud": "another-client"}, "bad_userinfo"),
    ({"iss": "https://evil.example"}, "bad_userinfo"),
    ({"aud": None}, "bad_userinfo"),
])
async def test_signed_userinfo_for_someone_else_fails_the_sign_in(
    changes: dict[str, Any], reason: str, client: OidcClient, provider: FakeProvider,
    keys: dict[str, Key],
) -> None:
    with pytest.raises(OidcError) as info:
        await sign_in_with_userinfo(client, provider, keys,
                                    sign(keys["k1"], userinfo_claims(provider, **changes)))
    assert info.value.reason == reason


async def test_signed_userinfo_forged_or_unsigned_fails_the_sign_in(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key]
) -> None:
    stranger = Key("k1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(OidcError) as info:
        await sign_in_with_userinfo(client, provider, keys,
                                    sign(stranger, userinfo_claims(provider)))
    assert info.value.reason == "bad_userinfo"
    with pytest.raises(OidcError) as info:
        await sign_in_with_userinfo(
            client, provider, keys,
            forge({"alg": "none", "kid": "k1"}, userinfo_claims(provider), None))
    assert info.value.reason == "alg_not_allowed"


async def test_userinfo_of_another_subject_is_not_used(
    client: OidcClient, provider: FakeProvider, keys: dict[str, Key]
) -> None:
    got = await sign_in_with_userinfo(client, provider, keys,
                                      sign(keys["k1"], userinfo_claims(provider, sub="mallory")))
    assert "email" not in got and got["sub"] == "alice"
