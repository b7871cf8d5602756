"""OpenID Connect relying party: discovery, authorize, code exchange, refresh, sign-out.

The protocol pieces (authorize URL, PKCE, token request bodies) come from authlib;
ID tokens are verified with pyjwt against the provider's JWKS. All HTTP goes through
the one aiohttp client session the server owns.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from yarl import URL

from proxy.client_auth import ClientAuth, ClientAuthError, PrivateKey

log = structlog.get_logger("clawgate.oidc")

# Asymmetric algorithms only: "none" and HMAC (which would let anyone holding the
# public key forge tokens) are never accepted.
_ALGS_BY_KTY = {
    "RSA": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
    "EC": ["ES256", "ES384", "ES512"],
    "OKP": ["EdDSA"],
}
_ALLOWED_ALGS = frozenset(alg for algs in _ALGS_BY_KTY.values() for alg in algs)
_METADATA_TTL = 3600.0
_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# A logout token is acted on within this many seconds of its iat (its jti is kept
# that long, so it cannot be replayed later either).
LOGOUT_TOKEN_MAX_AGE = 300
_JWKS_MIN_REFETCH = 10.0


class OidcError(Exception):
    """Sign-in failed. ``reason`` is for logs and metrics; ``message`` is safe to show."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class LogoutToken:
    """What a verified back-channel logout token asks: the provider session ``sid``
    (preferred) or every session of the user ``sub`` to end."""

    sub: str | None
    sid: str | None
    jti: str


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    end_session_endpoint: str | None
    # None when the provider lists none (then client_secret_basic, the spec's default).
    token_endpoint_auth_methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SignInResult:
    """What the provider told us about the user, verified."""

    claims: dict[str, Any]
    id_token: str | None
    refresh_token: str | None
    expires_at: int


@dataclass(frozen=True)
class AuthorizeRequest:
    url: str
    state: str
    nonce: str
    code_verifier: str


class OidcClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        scopes: Sequence[str],
        request_params: Mapping[str, str],
        leeway: float,
        timeout: float,
        auth_method: str | None = None,
        private_key: PrivateKey | None = None,
    ) -> None:
        self._http = http
        self.issuer = issuer.rstrip("/")
        self._client_id = client_id
        self._auth = ClientAuth(client_id, client_secret, auth_method, private_key)
        self._scopes = " ".join(scopes)
        self._request_params = dict(request_params)
        self._leeway = leeway
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._metadata: ProviderMetadata | None = None
        self._metadata_at = 0.0
        # Signing keys by kid (or "#<index>" when the provider gives none), each with
        # the "alg" its JWK names, if any.
        self._jwks: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        self._jwks_at = 0.0
        self._missing_kids: dict[tuple[str | None, str], float] = {}
        self._lock = asyncio.Lock()
        self._jwks_lock = asyncio.Lock()

    @property
    def leeway(self) -> float:
        """Clock skew allowed on the provider's token times (``idp_clock_leeway``)."""
        return self._leeway

    @property
    def ready(self) -> bool:
        return self._metadata is not None

    # ---- discovery and keys -------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        now = time.monotonic()
        if self._metadata is not None and now - self._metadata_at < _METADATA_TTL:
            return self._metadata
        async with self._lock:
            if self._metadata is not None and time.monotonic() - self._metadata_at < _METADATA_TTL:
                return self._metadata
            try:
                doc = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
                meta = _parse_metadata(doc, self.issuer)
            except OidcError:
                if self._metadata is not None:
                    # A provider hiccup must not end sign-ins that the cached document serves.
                    log.warning("idp_discovery_refresh_failed", issuer=self.issuer)
                    self._metadata_at = time.monotonic() - _METADATA_TTL + 60
                    return self._metadata
                raise
            self._metadata = meta
            self._metadata_at = time.monotonic()
            return meta

    async def _key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        key, problem = self._find_key(kid, alg)
        if key is not None:
            return key
        # Unknown kid (or no single key for this alg): the provider has most likely just
        # rotated its keys, so refetch at once (a time-based throttle would fail every
        # sign-in right after a rotation). Concurrent verifications share one fetch, and
        # a miss still there afterwards is remembered for a while, so repeated bad
        # tokens cannot turn into a stream of fetches.
        loaded_at = self._jwks_at
        wanted = (kid, alg)
        async with self._jwks_lock:
            key, problem = self._find_key(kid, alg)
            if key is not None:
                return key
            missed = self._missing_kids.get(wanted)
            fresh = self._jwks_at != loaded_at  # another task refetched while we waited
            if not fresh and (missed is None or time.monotonic() - missed >= _JWKS_MIN_REFETCH):
                await self._load_jwks()
                key, problem = self._find_key(kid, alg)
                if key is not None:
                    self._missing_kids.pop(wanted, None)
                    return key
                if len(self._missing_kids) >= 64:
                    self._missing_kids.clear()
                self._missing_kids[wanted] = time.monotonic()
        if problem == "ambiguous_signing_key":
            raise OidcError(
                problem,
                f"the ID token names no key (kid) and the provider has several {alg} keys",
            )
        if problem == "alg_not_allowed":
            raise OidcError(problem, f"the ID token's key is not for {alg}")
        raise OidcError(problem, "the ID token is signed with an unknown key")

    def _find_key(self, kid: str | None, alg: str) -> tuple[jwt.PyJWK | None, str]:
        """The key for a token: by kid when it names one; else the one signing key whose
        type (and "alg", if its JWK says) fits the token's alg. With the reason when none."""
        if kid is not None:
            found = self._jwks.get(kid)
            if found is None:
                return None, "unknown_signing_key"
            if found[1] not in (None, alg):
                return None, "alg_not_allowed"  # the key is for another algorithm
            return found[0], ""
        fits = [
            key
            for key, key_alg in self._jwks.values()
            if alg in _ALGS_BY_KTY.get(str(key.key_type), ()) and key_alg in (None, alg)
        ]
        if len(fits) == 1:
            return fits[0], ""
        return None, "ambiguous_signing_key" if fits else "unknown_signing_key"

    async def _load_jwks(self) -> None:
        meta = await self.metadata()
        doc = await self._get_json(meta.jwks_uri)
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for i, raw in enumerate(doc.get("keys", []) if isinstance(doc, dict) else []):
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue  # encryption keys are never used to verify
            alg = raw.get("alg")
            if alg is not None and alg not in _ALLOWED_ALGS:
                continue  # an encryption or symmetric key without "use"
            try:
                key = jwt.PyJWK(raw)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # keys we cannot use (unknown kty/alg) are skipped, not fatal
            keys[str(raw.get("kid", f"#{i}"))] = (key, alg if isinstance(alg, str) else None)
        self._jwks = keys
        self._jwks_at = time.monotonic()

    async def _get_json(self, url: str) -> Any:
        try:
            async with self._http.get(url, timeout=self._timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise OidcError(
                        "idp_http_error", f"the identity provider answered {resp.status}"
                    )
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise OidcError(
                "idp_unreachable",
                f"the identity provider could not be reached ({type(exc).__name__})",
            ) from None

    # ---- authorization code flow -----------------------------------------

    async def authorize(self, redirect_uri: str) -> AuthorizeRequest:
        meta = await self.metadata()
        state = generate_token(32)
        nonce = generate_token(32)
        verifier = generate_token(64)
        url = prepare_grant_uri(
            meta.authorization_endpoint,
            self._client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=self._scopes,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
            **self._request_params,
        )
        return AuthorizeRequest(url=url, state=state, nonce=nonce, code_verifier=verifier)

    async def exchange_code(
        self, code: str, *, redirect_uri: str, code_verifier: str, nonce: str
    ) -> SignInResult:
        body = prepare_token_request(
            "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=code_verifier
        )
        tokens = await self._token_request(body)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("no_id_token", "the identity provider returned no ID token")
        claims = await self.verify_id_token(id_token, nonce=nonce)
        return await self._result(tokens, claims, id_token, previous_refresh=None)

    async def refresh(self, refresh_token: str, previous_id_token: str | None) -> SignInResult:
        body = prepare_token_request("refresh_token", refresh_token=refresh_token)
        tokens = await self._token_request(body)
        id_token = tokens.get("id_token")
        if isinstance(id_token, str):
            claims = await self.verify_id_token(id_token, nonce=None)
        else:
            claims = {}
            id_token = previous_id_token
        return await self._result(tokens, claims, id_token, previous_refresh=refresh_token)

    async def _result(
        self,
        tokens: Mapping[str, Any],
        claims: dict[str, Any],
        id_token: str | None,
        previous_refresh: str | None,
    ) -> SignInResult:
        merged = dict(claims)
        access_token = tokens.get("access_token")
        if isinstance(access_token, str):
            info = await self._userinfo(access_token)
            sub = merged.get("sub")
            if info and (sub is None or info.get("sub") == sub):
                # ID-token claims win; userinfo only fills what the token left out.
                for key, value in info.items():
                    merged.setdefault(key, value)
            elif info:
                # OpenID Connect Core 5.3.2: another subject's answer is not used at all.
                log.warning("idp_userinfo_ignored", reason="subject_mismatch")
        if "sub" not in merged:
            raise OidcError("no_subject", "the identity provider did not say who signed in")
        now = int(time.time())
        expiry: list[int] = []
        if isinstance(claims.get("exp"), int):
            expiry.append(int(claims["exp"]))
        expires_in = tokens.get("expires_in")
        if isinstance(expires_in, int | float) and expires_in > 0:
            expiry.append(now + int(expires_in))
        refresh = tokens.get("refresh_token")
        return SignInResult(
            claims=merged,
            id_token=id_token,
            refresh_token=refresh if isinstance(refresh, str) else previous_refresh,
            expires_at=min(expiry) if expiry else now + 3600,
        )

    async def _token_request(self, body: str) -> dict[str, Any]:
        meta = await self.metadata()
        try:
            method = self._auth.choose(meta.token_endpoint_auth_methods)
        except ClientAuthError as exc:
            raise OidcError("client_auth_method", str(exc)) from None
        body, auth_headers = self._auth.apply(method, body, meta.token_endpoint, int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            **auth_headers,
        }
        try:
            async with self._http.post(
                meta.token_endpoint,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if status >= 500:
                    # The provider is failing, not refusing: say "unavailable", not "denied".
                    raise OidcError(
                        "idp_unreachable",
                        f"the identity provider's token endpoint answered {status}",
                    )
                content_type = resp.content_type
                answer = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(
                "idp_unreachable",
                f"the identity provider's token endpoint failed ({type(exc).__name__})",
            ) from None
        try:
            payload = json.loads(answer)
        except (ValueError, UnicodeDecodeError):
            # An answer, but not the JSON RFC 6749 5.2 requires (an HTML error page, say):
            # a refusal all the same, not an unreachable provider.
            raise OidcError(
                "token_error",
                f"the identity provider refused the token request ({status}, "
                f"{content_type or 'no content type'}, not JSON)",
            ) from None
        if status != 200 or not isinstance(payload, dict):
            err = payload.get("error") if isinstance(payload, dict) else None
            detail = str(err)[:64] if err is not None else status
            raise OidcError(
                "token_error", f"the identity provider refused the token request ({detail})"
            )
        return payload

    async def _userinfo(self, access_token: str) -> dict[str, Any]:
        """The userinfo claims: JSON, or a JWT (``application/jwt``, signed userinfo),
        verified like an ID token. Unreachable or refused: none (the ID token's stand);
        a signed answer that does not verify fails the sign-in."""
        meta = await self.metadata()
        if meta.userinfo_endpoint is None:
            return {}
        try:
            async with self._http.get(
                meta.userinfo_endpoint,
                headers={
                    "Authorization": f"Bearer {access_token}",
                    "Accept": "application/json, application/jwt",
                },
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    log.warning("idp_userinfo_failed", status=resp.status)
                    return {}
                content_type = resp.content_type
                answer = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            log.warning("idp_userinfo_failed", status=None)
            return {}
        if content_type == "application/jwt":
            return await self._verify_signed_userinfo(answer.decode("ascii", "replace").strip())
        try:
            info = json.loads(answer)
        except (ValueError, UnicodeDecodeError):
            log.warning("idp_userinfo_failed", status=200, detail="not JSON")
            return {}
        return info if isinstance(info, dict) else {}

    async def _verify_signed_userinfo(self, token: str) -> dict[str, Any]:
        """OpenID Connect Core 5.3.2: signed by the provider's keys, for this client;
        ``sub`` is compared with the ID token's by the caller."""
        return await self._verify_provider_jwt(
            token, "the signed userinfo", "bad_userinfo", ["sub", "iss", "aud"]
        )

    async def _verify_provider_jwt(
        self, token: str, what: str, reason: str, required: list[str]
    ) -> dict[str, Any]:
        """The checks every JWT from the provider gets (ID token, signed userinfo,
        logout token): an asymmetric ``alg`` (``none`` and HMAC are refused before any
        key is looked at), the key by ``kid`` or by ``alg``, the signature, ``iss`` and
        ``aud`` (this client), the times with the leeway, and ``required`` claims.
        Failures are ``reason`` (or ``alg_not_allowed``), saying ``what`` it was."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise OidcError(reason, f"{what} is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ALLOWED_ALGS:
            raise OidcError(
                "alg_not_allowed", f"{what} is signed with {str(alg)[:20]!r}, which is not accepted"
            )
        kid = header.get("kid")
        key = await self._key_for(kid if isinstance(kid, str) else None, alg)
        if alg not in _ALGS_BY_KTY.get(str(key.key_type), []):
            raise OidcError(
                "alg_not_allowed", f"{what}'s {alg} does not fit its {key.key_type} key"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self._client_id,
                issuer=self.issuer if self._metadata is None else self._metadata.issuer,
                leeway=self._leeway,
                options={"require": required},
            )
        except jwt.PyJWTError as exc:
            raise OidcError(reason, f"{what} was rejected ({type(exc).__name__})") from None
        return claims

    # ---- ID token ---------------------------------------------------------

    async def verify_id_token(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        claims = await self._verify_provider_jwt(
            id_token, "the ID token", "bad_id_token", ["exp", "iat", "iss", "aud", "sub"]
        )
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self._client_id:
            raise OidcError("bad_id_token", "the ID token is meant for another client (azp)")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
                raise OidcError("nonce_mismatch", "the ID token does not belong to this sign-in")
        return claims

    async def verify_logout_token(self, token: str) -> LogoutToken:
        """OpenID Connect Back-Channel Logout 1.0, 2.6: signed by the provider, for this
        client, recent, carrying the logout event, naming a session (``sid``) or a user
        (``sub``), and no nonce. The caller makes ``jti`` single-use."""
        claims = await self._verify_provider_jwt(
            token, "the logout token", "bad_logout_token", ["iss", "aud", "iat", "jti", "events"]
        )
        if time.time() - int(claims["iat"]) > LOGOUT_TOKEN_MAX_AGE + self._leeway:
            raise OidcError("bad_logout_token", "the logout token is too old")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(events.get(_LOGOUT_EVENT), dict):
            raise OidcError("bad_logout_token", "the logout token carries no logout event")
        if "nonce" in claims:
            raise OidcError("bad_logout_token", "a logout token must not carry a nonce")
        sub, sid, jti = claims.get("sub"), claims.get("sid"), claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 255:
            raise OidcError("bad_logout_token", "the logout token's jti is not usable")
        if not (isinstance(sub, str) and sub) and not (isinstance(sid, str) and sid):
            raise OidcError("bad_logout_token", "the logout token names neither sid nor sub")
        return LogoutToken(
            sub=sub if isinstance(sub, str) and sub else None,
            sid=sid if isinstance(sid, str) and sid else None,
            jti=jti,
        )

    async def end_session_url(
        self, id_token_hint: str | None, post_logout_redirect_uri: str
    ) -> str | None:
        try:
            meta = await self.metadata()
        except OidcError:
            return None
        if meta.end_session_endpoint is None:
            return None
        query = {"post_logout_redirect_uri": post_logout_redirect_uri, "client_id": self._client_id}
        if id_token_hint:
            query["id_token_hint"] = id_token_hint
        return str(URL(meta.end_session_endpoint).update_query(query))


def _parse_metadata(doc: Any, issuer: str) -> ProviderMetadata:
    if not isinstance(doc, dict):
        raise OidcError("bad_discovery", "the discovery document is not a JSON object")
    if str(doc.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise OidcError("bad_discovery", "the discovery document names a different issuer")

    def need(key: str) -> str:
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise OidcError("bad_discovery", f"the discovery document has no {key}")
        return value

    def maybe(key: str) -> str | None:
        value = doc.get(key)
        return value if isinstance(value, str) and value else None

    return ProviderMetadata(
        issuer=str(doc["issuer"]),
        authorization_endpoint=need("authorization_endpoint"),
        token_endpoint=need("token_endpoint"),
        jwks_uri=need("jwks_uri"),
        userinfo_endpoint=maybe("userinfo_endpoint"),
        end_session_endpoint=maybe("end_session_endpoint"),
        token_endpoint_auth_methods=_strings(doc.get("token_endpoint_auth_methods_supported")),
    )


def _strings(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(v for v in value if isinstance(v, str))
