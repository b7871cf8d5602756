"""A small typed face of certbot's ``acme`` library: the calls autocert makes.

Everything here is blocking (``requests`` underneath): callers run each call in a
thread. One :class:`AcmeConversation` per attempt fetches the directory afresh, so a CA
that moved its endpoints or came back after an outage is simply asked again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import requests
from acme import challenges, client, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwa import ES256, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from proxy.autocert._config import AutocertConfig, AutocertError

_USER_AGENT = "clawgate-autocert"
# Per HTTP request to the CA; the whole attempt has its own deadline on top.
_NETWORK_TIMEOUT = 30

ACCOUNT_DOES_NOT_EXIST = "accountDoesNotExist"


class _Ready(challenges.ChallengeResponse):
    """RFC 8555 section 7.5.1: the client says it is ready by POSTing ``{}`` to the
    challenge URL, whatever the challenge type (acme 5 has no TLS-ALPN-01 classes)."""

    typ = "clawgate-ready"

    def __bool__(self) -> bool:
        # acme sends an empty payload (a POST-as-GET, which starts nothing) for a
        # falsy object, and an object without fields is falsy: this one is "{}".
        return True


def new_account_key_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def account_jwk(key_pem: bytes) -> JWK:
    """The account key as a JWK: EC P-256 (ES256) or RSA (RS256).

    Parsed here rather than with ``JWK.load``, which takes anything that is not an
    asymmetric key for an HMAC secret.
    """
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise AutocertError("the stored ACME account key is not a PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return JWKEC(key=key)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return JWKRSA(key=key)
    raise AutocertError("the stored ACME account key is neither EC P-256 nor RSA >= 2048")


def _alg(key: JWK) -> JWASignature:
    return ES256 if isinstance(key, JWKEC) else RS256


class AcmeConversation:
    """A directory fetched from the CA, and a client signing with the account key."""

    def __init__(self, config: AutocertConfig, account_key: JWK) -> None:
        net = client.ClientNetwork(
            key=account_key,
            alg=_alg(account_key),
            user_agent=_USER_AGENT,
            timeout=_NETWORK_TIMEOUT,
        )
        if config.trusted_ca is not None:
            # requests takes a CA bundle path where acme declares a bool; this bundle
            # is then the only trust for the CA's API.
            net.verify_ssl = str(config.trusted_ca)  # type: ignore[assignment]
        self._config = config
        self._net = net
        self.directory = client.ClientV2.get_directory(config.directory_url, net)
        self.client = client.ClientV2(self.directory, net)

    @property
    def external_account_required(self) -> bool:
        return bool(self.client.external_account_required())

    @property
    def has_renewal_info(self) -> bool:
        return "renewalInfo" in self.directory.to_partial_json()

    def use_account(self, uri: str) -> None:
        """Sign with the stored account (its URL is the JWS "kid"); no request."""
        self._net.account = messages.RegistrationResource(body=messages.Registration(), uri=uri)

    def register(self) -> str:
        """Create the account (agreeing to the CA's terms); its URL. An account that
        already exists for this key is the CA's answer too, not an error."""
        config = self._config
        if self.external_account_required and config.eab_key_id is None:
            raise AutocertError(
                "the CA requires external account binding: set the EAB key id and "
                "MAC key it gave you (autocert_eab_key_id, autocert_eab_mac_key)"
            )
        key = self._net.key
        assert key is not None
        # newAccount is signed with the key itself ("jwk"), never an account URL ("kid").
        self._net.account = None
        eab: dict[str, Any] | None = None
        if config.eab_key_id is not None and config.eab_mac_key is not None:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(),
                kid=config.eab_key_id,
                hmac_key=config.eab_mac_key,
                directory=self.directory,
            )
        registration = messages.NewRegistration.from_data(
            email=config.email,
            terms_of_service_agreed=True,
            external_account_binding=eab,
        )
        try:
            regr = self.client.new_account(registration)
        except errors.ConflictError as exc:
            uri = str(exc.location)
            self.use_account(uri)
            return uri
        return str(regr.uri)

    def new_order(self, csr_pem: bytes) -> messages.OrderResource:
        return self.client.new_order(csr_pem)

    def answer(self, challenge: messages.ChallengeBody) -> None:
        # Not ClientV2.answer_challenge: it insists on a Link "up" header in the
        # answer, which RFC 8555 does not require and Pebble does not send. What
        # follows is read from the authorization instead.
        self._net.post(challenge.uri, _Ready(), new_nonce_url=self.directory["newNonce"])

    def poll(self, authz: messages.AuthorizationResource) -> messages.AuthorizationResource:
        updated, _ = self.client.poll(authz)
        return updated

    def finalize(self, order: messages.OrderResource, seconds: float) -> str:
        # acme compares its deadline with naive local time.
        deadline = dt.datetime.now() + dt.timedelta(seconds=seconds)
        done = self.client.finalize_order(order, deadline)
        return str(done.fullchain_pem)

    def renewal_window(self, cert_pem: bytes) -> tuple[dt.datetime | None, dt.datetime]:
        """ARI (RFC 9773): when the CA would like this certificate renewed (None: no
        opinion), and when to ask again. Both in UTC."""
        try:
            renew_at, ask_again = self.client.renewal_time(cert_pem)
        except errors.ARIError as exc:
            return None, _aware(exc.retry_after)
        return (_aware(renew_at) if renew_at is not None else None), _aware(ask_again)


def _aware(value: dt.datetime) -> dt.datetime:
    """acme mixes naive local and aware UTC times; make them aware UTC (a naive
    value is read as local time by astimezone)."""
    return value.astimezone(dt.UTC)


def describe(exc: BaseException) -> str:
    """A one-line reason for logs and status: what went wrong, never a key or a token."""
    if isinstance(exc, AutocertError):
        return str(exc)
    if isinstance(exc, messages.Error):
        kind = (exc.typ or "").rsplit(":", 1)[-1] or "error"
        detail = exc.detail or exc.title or ""
        return f"the CA refused ({kind}): {detail}".rstrip(": ")
    if isinstance(exc, requests.exceptions.SSLError):
        return (
            "the ACME server's TLS certificate is not trusted "
            "(for a private CA set autocert_trusted_ca)"
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "cannot reach the ACME server (connection failed)"
    if isinstance(exc, requests.exceptions.Timeout):
        return "the ACME server did not answer in time"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"request to the ACME server failed: {type(exc).__name__}"
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish the order in time"
    if isinstance(exc, errors.IssuanceError):
        return f"the CA did not issue the certificate: {describe(exc.error)}"
    if isinstance(exc, errors.Error):
        return f"ACME protocol error: {type(exc).__name__}: {exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def account_missing(exc: BaseException) -> bool:
    """The CA no longer knows the stored account (a test CA restarted, or it was
    deactivated): register again with the same key."""
    return isinstance(exc, messages.Error) and exc.code == ACCOUNT_DOES_NOT_EXIST
