"""Identity assertion: signing, JWKS, caching and key loading."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from proxy.assertion import (
    AssertionSigner,
    generate_signing_key,
    load_signing_key,
    verify_assertion,
)
from proxy.session import Session

HOST = "claw.example.com"
NOW = 1_700_000_000


def make_session(**overrides: Any) -> Session:
    fields: dict[str, Any] = dict(
        sub="user-1",
        email="ada@example.com",
        email_verified=True,
        groups=["admins", "dev"],
        claims={"name": "Ada Lovelace", "department": "math"},
        host=HOST,
        now=NOW,
        lifetime=3600,
        refresh_at=NOW + 300,
        refresh_token="rt",
        id_token="it",
    )
    fields.update(overrides)
    return Session.create(**fields)


@pytest.fixture(scope="module")
def pem() -> str:
    return generate_signing_key()


@pytest.fixture
def signer(pem: str) -> AssertionSigner:
    return AssertionSigner(load_signing_key(pem), ttl=300)


def decode(token: str, signer: AssertionSigner, audience: str = HOST, now: int = NOW) -> Any:
    # Verify at the signing time: the tokens are minted with a fixed clock in the past.
    return jwt.decode(
        token,
        jwt.PyJWK(signer.jwks()["keys"][0]).key,
        algorithms=["ES256"],
        audience=audience,
        issuer=audience,
        options={"verify_exp": False},
    )


# -- signing and JWKS ------------------------------------------------------------------


def test_claims_and_header(signer: AssertionSigner) -> None:
    s = make_session()
    token = signer.sign(s, audience=HOST, now=NOW)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": signer.kid, "typ": "JWT"}
    claims = decode(token, signer)
    jti = claims.pop("jti")
    assert isinstance(jti, str) and len(jti) >= 16
    assert claims == {
        "iss": HOST,
        "aud": HOST,
        "sub": "user-1",
        "email": "ada@example.com",
        "groups": ["admins", "dev"],
        "name": "Ada Lovelace",
        "iat": NOW,
        "exp": NOW + 300,
    }
    # The session handle and the provider's tokens never reach the upstream.
    payload = token.split(".")[1]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    for secret in (s.sid, s.csrf, "rt", "department"):
        assert secret not in raw


def test_optional_claims_are_omitted(signer: AssertionSigner) -> None:
    token = signer.sign(make_session(email=None, claims={}, groups=[]), audience=HOST, now=NOW)
    claims = decode(token, signer)
    assert "email" not in claims and "name" not in claims
    assert claims["groups"] == []


def test_non_string_name_claim_is_dropped(signer: AssertionSigner) -> None:
    token = signer.sign(make_session(claims={"name": {"x": 1}}), audience=HOST, now=NOW)
    assert "name" not in decode(token, signer)


def test_jwks_document_and_thumbprint(signer: AssertionSigner) -> None:
    doc = signer.jwks()
    assert json.loads(json.dumps(doc)) == doc
    (key,) = doc["keys"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert (key["kty"], key["crv"], key["use"], key["alg"]) == ("EC", "P-256", "sig", "ES256")
    # RFC 7638 section 3.1: members in lexicographic order, no whitespace.
    canonical = '{"crv":"P-256","kty":"EC","x":"' + key["x"] + '","y":"' + key["y"] + '"}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    assert key["kid"] == signer.kid == expected.rstrip(b"=").decode()
    # Mutating the returned document must not change the signer's.
    doc["keys"].clear()
    assert signer.jwks()["keys"]


def test_jwks_public_key_matches_signing_key(pem: str, signer: AssertionSigner) -> None:
    pub = jwt.PyJWK(signer.jwks()["keys"][0]).key
    private = load_signing_key(pem)
    assert pub.public_numbers() == private.public_key().public_numbers()


def test_verify_assertion_accepts_a_fresh_token(signer: AssertionSigner) -> None:
    import time

    now = int(time.time())
    token = signer.sign(make_session(), audience=HOST, now=now)
    claims = verify_assertion(token, signer.jwks(), HOST)
    assert claims["sub"] == "user-1" and claims["aud"] == HOST


def test_verify_assertion_rejects_wrong_audience_expiry_and_key(signer: AssertionSigner) -> None:
    import time

    now = int(time.time())
    token = signer.sign(make_session(), audience=HOST, now=now)
    # iss and aud are both the route host, so either check may fire first.
    with pytest.raises((jwt.InvalidAudienceError, jwt.InvalidIssuerError)):
        verify_assertion(token, signer.jwks(), "other.example.com")
    old = signer.sign(make_session(), audience=HOST, now=now - 3600)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_assertion(old, signer.jwks(), HOST)
    other = AssertionSigner(load_signing_key(generate_signing_key()))
    with pytest.raises(jwt.InvalidTokenError):
        verify_assertion(token, other.jwks(), HOST)
    # Same kid, different key: the signature check must still fail.
    forged = other.jwks()
    forged["keys"][0]["kid"] = signer.kid
    with pytest.raises(jwt.InvalidSignatureError):
        verify_assertion(token, forged, HOST)
    head, body, sig = token.split(".")
    tampered = ".".join([head, body[:-2] + ("AA" if body[-2:] != "AA" else "BB"), sig])
    with pytest.raises(jwt.InvalidTokenError):
        verify_assertion(tampered, signer.jwks(), HOST)


def test_audiences_get_separate_tokens(signer: AssertionSigner) -> None:
    s = make_session(host="")
    a = signer.sign(s, audience="a.example.com", now=NOW)
    b = signer.sign(s, audience="b.example.com", now=NOW)
    assert a != b
    assert decode(b, signer, audience="b.example.com")["iss"] == "b.example.com"


# -- cache -----------------------------------------------------------------------------


def test_cached_token_is_reused_until_80_percent_of_lifetime(signer: AssertionSigner) -> None:
    s = make_session()
    first = signer.sign(s, audience=HOST, now=NOW)
    assert signer.sign(s, audience=HOST, now=NOW + 1) is first
    assert signer.sign(s, audience=HOST, now=NOW + 239) is first  # 0.8 * 300 = 240
    renewed = signer.sign(s, audience=HOST, now=NOW + 240)
    assert renewed != first
    claims = decode(renewed, signer, now=NOW + 240)
    assert (claims["iat"], claims["exp"]) == (NOW + 240, NOW + 540)
    assert signer.sign(s, audience=HOST, now=NOW + 241) is renewed


def test_reused_until_says_when_sign_stops_returning_the_cached_token(
    signer: AssertionSigner,
) -> None:
    s = make_session()
    assert signer.reused_until(s, audience=HOST) == 0  # nothing cached yet
    first = signer.sign(s, audience=HOST, now=NOW)
    until = signer.reused_until(s, audience=HOST)
    assert until == NOW + 240
    assert signer.sign(s, audience=HOST, now=until - 1) is first
    assert signer.sign(s, audience=HOST, now=until) != first
    assert signer.reused_until(s, audience="other.example") == 0
    # The token handed out until then is still valid at that moment.
    assert decode(first, signer, now=until - 1)["exp"] > until


def test_clock_going_backwards_re_signs(signer: AssertionSigner) -> None:
    s = make_session()
    first = signer.sign(s, audience=HOST, now=NOW)
    earlier = signer.sign(s, audience=HOST, now=NOW - 10)
    assert earlier != first
    assert decode(earlier, signer)["iat"] == NOW - 10


def test_changed_identity_with_same_sid_is_not_served_from_cache(
    signer: AssertionSigner,
) -> None:
    s = make_session()
    first = signer.sign(s, audience=HOST, now=NOW)
    refreshed = s.with_refreshed(refresh_at=NOW + 900, groups=["dev"])
    second = signer.sign(refreshed, audience=HOST, now=NOW + 1)
    assert second != first
    assert decode(second, signer)["groups"] == ["dev"]
    # A refresh that changes nothing the token states keeps the cached token.
    same = s.with_refreshed(refresh_at=NOW + 900)
    assert signer.sign(same, audience=HOST, now=NOW + 2) is first


def test_cache_is_bounded(pem: str) -> None:
    signer = AssertionSigner(load_signing_key(pem), cache_size=2)
    sessions = [make_session() for _ in range(3)]
    tokens = [signer.sign(s, audience=HOST, now=NOW) for s in sessions]
    assert len(signer._cache) == 2
    # The oldest was evicted and is signed afresh; the newest is still cached.
    assert signer.sign(sessions[2], audience=HOST, now=NOW) is tokens[2]
    assert signer.sign(sessions[0], audience=HOST, now=NOW) != tokens[0]


def test_signer_rejects_bad_parameters(pem: str) -> None:
    key = load_signing_key(pem)
    with pytest.raises(ValueError):
        AssertionSigner(key, ttl=0)
    with pytest.raises(ValueError):
        AssertionSigner(ec.generate_private_key(ec.SECP384R1()))


# -- key loading -----------------------------------------------------------------------


def test_generated_key_is_p256_pkcs8_pem() -> None:
    text = generate_signing_key()
    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    key = load_signing_key(text)
    assert isinstance(key.curve, ec.SECP256R1)
    assert generate_signing_key() != text


def test_load_accepts_base64_of_pem(pem: str) -> None:
    b64 = base64.b64encode(pem.encode()).decode()
    a, b = load_signing_key(pem), load_signing_key(b64)
    assert a.private_numbers() == b.private_numbers()
    # Line-wrapped and URL-safe spellings, as they appear in YAML and env variables.
    wrapped = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    assert load_signing_key(wrapped).private_numbers() == a.private_numbers()
    url = base64.urlsafe_b64encode(pem.encode()).decode().rstrip("=")
    assert load_signing_key(url).private_numbers() == a.private_numbers()
    assert load_signing_key(f"\n  {pem}\n").private_numbers() == a.private_numbers()


def test_load_accepts_sec1_pem() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert sec1.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert load_signing_key(sec1).private_numbers() == key.private_numbers()


def _pem(key: Any, encryption: Any = None) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption(),
    ).decode()


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: _pem(ec.generate_private_key(ec.SECP384R1())), "P-256"),
        (lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "EC"),
        (lambda: _pem(ed25519.Ed25519PrivateKey.generate()), "EC"),
        (
            lambda: _pem(
                ec.generate_private_key(ec.SECP256R1()),
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "unencrypted",
        ),
    ],
    ids=["p384", "rsa", "ed25519", "encrypted"],
)
def test_load_rejects_wrong_keys(make: Any, needle: str) -> None:
    text = make()
    with pytest.raises(ValueError) as exc:
        load_signing_key(text)
    msg = str(exc.value)
    assert needle in msg
    body = "".join(text.splitlines()[1:-1])
    assert body[:20] not in msg
    with pytest.raises(ValueError):
        load_signing_key(base64.b64encode(text.encode()).decode())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "-----BEGIN PRIVATE KEY-----\nAAAAsecretish\n-----END PRIVATE KEY-----\n",
        base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nnope\n").decode(),
        base64.b64encode(b"just some bytes that are not a pem").decode(),
        "\u00e9\u00e9\u00e9",
    ],
)
def test_load_rejects_garbage_without_echoing_it(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        load_signing_key(text)
    msg = str(exc.value)
    assert "signing key" in msg
    for fragment in ("garbage", "secretish", "nope", text[:16] or "\x00"):
        assert fragment not in msg
