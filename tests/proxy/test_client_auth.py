"""Token endpoint authentication against the real provider (oidc-provider): each method
clawgate offers signs in with a client registered for exactly that method (the
provider refuses any other), and what the provider lists is honoured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.client_auth import ClientAuth, ClientAuthError, load_private_key
from tests.support.gate import base_config, client_session, running_gate
from tests.support.idp import ALICE, TestIdP, login
from tests.support.upstream import Upstream, free_port


def write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return path


def public_jwks(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {"keys": [jwk]}


@pytest.mark.parametrize("method", ["client_secret_post", "private_key_jwt-RSA",
                                    "private_key_jwt-EC", "client_secret_basic"])
async def test_each_method_signs_in_with_the_real_provider(
    method: str, idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    client_id = f"clawgate-{method}"
    overrides: dict[str, Any] = {"idp_client_id": client_id}
    metadata: dict[str, Any] = {}
    secret: str | None = "s3cret-for-" + method
    if method.startswith("private_key_jwt"):
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
               if method.endswith("RSA") else ec.generate_private_key(ec.SECP256R1()))
        metadata = {"token_endpoint_auth_method": "private_key_jwt", "jwks": public_jwks(key)}
        overrides["idp_client_private_key_file"] = str(write_key(tmp_path / "client.pem", key))
        overrides["idp_token_endpoint_auth_method"] = "private_key_jwt"
        secret = None  # no shared secret at all
    else:
        metadata = {"token_endpoint_auth_method": method}
        overrides["idp_token_endpoint_auth_method"] = method
        overrides["idp_client_secret"] = secret
    idp.add_client(client_id, secret, [f"https://127.0.0.1:{port}/.clawgate/callback"],
                   **metadata)
    config = base_config(port, upstream.url, idp=idp, **overrides)
    if secret is None:
        config.pop("idp_client_secret", None)
    async with running_gate(config, tmp_path) as gate, client_session() as browser:
        page = await login(browser, f"{gate.url}/hello", ALICE.username, ALICE.password)
        assert page.status == 200, await page.text()
        assert upstream.seen.last()["path"] == "/hello"


def test_the_providers_list_is_honoured(tmp_path: Path) -> None:
    auth = ClientAuth("c", "s")
    assert auth.choose(None) == "client_secret_basic"
    assert auth.choose(("client_secret_post", "private_key_jwt")) == "client_secret_post"
    with pytest.raises(ClientAuthError, match="does not accept client_secret_basic"):
        auth.choose(("private_key_jwt",))
    with pytest.raises(ClientAuthError, match="does not accept client_secret_post"):
        ClientAuth("c", "s", "client_secret_post").choose(("client_secret_basic",))
    key = load_private_key(write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1())))
    with_key = ClientAuth("c", "", None, key)
    assert with_key.choose(None) == "private_key_jwt"
    body, headers = with_key.apply("private_key_jwt", "grant_type=x", "https://idp/token", 1000)
    assert headers == {} and "client_assertion=" in body and "client_secret" not in body
    assertion = body.split("client_assertion=")[1].split("&")[0]
    claims = jwt.decode(assertion, key.public_key(), algorithms=["ES256"],
                        audience="https://idp/token", options={"verify_exp": False})
    assert claims["iss"] == claims["sub"] == "c" and claims["exp"] - claims["iat"] == 60


def test_bad_key_files_are_named(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    for path, says in [
        (write_key(tmp_path / "small.pem", small), "2048 bits"),
        (tmp_path / "missing.pem", "cannot read"),
    ]:
        with pytest.raises(ClientAuthError, match=says):
            load_private_key(path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ClientAuthError, match="not an unencrypted PEM private key"):
        load_private_key(garbage)


def test_settings_name_what_is_wrong(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from proxy.settings import Settings

    with pytest.raises(ValidationError, match="private_key_jwt needs idp_client_private_key_file"):
        Settings(idp_token_endpoint_auth_method="private_key_jwt")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("nope")
    with pytest.raises(ValidationError, match="not an unencrypted PEM private key"):
        Settings(idp_client_private_key_file=garbage)
    key = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValidationError, match="only private_key_jwt uses a key"):
        Settings(idp_client_private_key_file=key, idp_token_endpoint_auth_method="client_secret_post")
    assert Settings(idp_client_private_key_file=key).idp_client_private_key_file == key
