"""A hostile OpenID provider: discovery, JWKS and an authorization endpoint that behave,
and a token endpoint that answers with whatever ID token the test forges.

It speaks the real protocol over the wire, so clawgate's callback runs exactly as in
production; only the ID token is under the attacker's control.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.upstream import free_port

CLIENT_ID = "clawgate-evil-test"
CLIENT_SECRET = "evil-secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Grant:
    nonce: str
    redirect_uri: str


Forge = Callable[["EvilIdP", Grant], str]


@dataclass
class EvilIdP:
    port: int = field(default_factory=free_port)
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = "k1"
    forge: Forge | None = None
    grants: dict[str, Grant] = field(default_factory=dict)
    nonces: list[str] = field(default_factory=list)
    token_requests: int = 0
    # More JWKS entries beside the signing key (other keys, encryption keys), and
    # whether the signing key's entry names its kid.
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)
    jwk_has_kid: bool = True
    # Set: the token endpoint answers with it instead (status, content type, body).
    token_answer: tuple[int, str, bytes] | None = None
    _runner: web.AppRunner | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def claims(self, grant: Grant, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "alice",
            "email": "alice@example.com",
            "email_verified": True,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
        }
        base.update(changes)
        return {k: v for k, v in base.items() if v is not None}

    def sign(
        self,
        claims: dict[str, Any],
        *,
        headers: dict[str, Any] | None = None,
        key: rsa.RSAPrivateKey | None = None,
    ) -> str:
        return jwt.encode(
            claims, key or self.key, algorithm="RS256", headers={"kid": self.kid, **(headers or {})}
        )

    @staticmethod
    def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
        return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode()) + "."

    @staticmethod
    def hmac_signed(claims: dict[str, Any], secret: bytes, kid: str) -> str:
        signing_input = (
            _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
            + "."
            + _b64(json.dumps(claims).encode())
        )
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(sig)

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/auth",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                }
            )

        async def jwks(request: web.Request) -> web.Response:
            own = self.jwk()
            if not self.jwk_has_kid:
                del own["kid"]
            return web.json_response({"keys": [*self.extra_jwks, own]})

        async def auth(request: web.Request) -> web.Response:
            q = request.query
            code = secrets.token_urlsafe(16)
            self.grants[code] = Grant(nonce=q["nonce"], redirect_uri=q["redirect_uri"])
            self.nonces.append(q["nonce"])
            raise web.HTTPFound(f"{q['redirect_uri']}?code={code}&state={q['state']}")

        async def token(request: web.Request) -> web.Response:
            self.token_requests += 1
            if self.token_answer is not None:
                status, content_type, body = self.token_answer
                return web.Response(status=status, body=body, content_type=content_type)
            form = await request.post()
            grant = self.grants.get(str(form.get("code", "")))
            if grant is None:
                return web.json_response({"error": "invalid_grant"}, status=400)
            assert self.forge is not None
            # Deliberately no single use of codes: the replay defence must be clawgate's own.
            return web.json_response(
                {"id_token": self.forge(self, grant), "token_type": "Bearer", "expires_in": 300}
            )

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        app.router.add_get("/auth", auth)
        app.router.add_post("/token", token)
        return app

    async def start(self) -> EvilIdP:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
