"""The configuration in force, compiled: routes, policies, keys.

A :class:`Snapshot` is immutable. Reloading builds a new one and the server swaps
one reference, so a request always sees one consistent configuration. Keys and
listeners are fixed at start: a reload that changes them is reported as needing a
restart and keeps the running ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from yarl import URL

from policy.engine import Policy
from policy.parse import PolicyError, compile_route_policy
from policy.routes import RouteMatcher, RouteTable, parse_from
from proxy.apikeys import ApiKey, KeyFileError, KeyIndex, load_key_file
from proxy.assertion import AssertionSigner, generate_signing_key, load_signing_key
from proxy.connlimit import Limits, limits_for
from proxy.localusers import PasswordFileError, Verifier, load_htpasswd
from proxy.session import SessionCodec
from proxy.settings import ConfigError, RouteSettings, Settings, describe, load_settings
from proxy.yamlsource import LocatedYaml

log = structlog.get_logger("clawgate.config")

# Response headers on every proxied response unless a route overrides them.
SECURITY_HEADERS = {
    "X-Frame-Options": "SAMEORIGIN",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}
HSTS = "max-age=31536000; includeSubDomains"
# Listener and secret keys: a running process cannot change these on reload.
RESTART_KEYS = (
    "address",
    "http_redirect_addr",
    "certificate_file",
    "certificate_key_file",
    "insecure_server",
    "health_address",
    "metrics_address",
    "workers",
    "fast_path",
    "idp_provider_url",
    "idp_client_id",
    "idp_client_secret",
    "idp_token_endpoint_auth_method",
    "idp_client_private_key_file",
    "cookie_secret",
    "cookie_name",
    "cookie_domain",
    "signing_key",
    # The store is opened once, at start (proxy/store/).
    "databroker_storage_type",
    "databroker_storage_connection_string",
    "databroker_storage_key_prefix",
    "data_dir",
    # The ACME client and its account are made at start (proxy/autocert/); route hosts
    # added by a reload are still obtained without a restart.
    "autocert",
    "autocert_dir",
    "autocert_ca",
    "autocert_use_staging",
    "autocert_email",
    "autocert_trusted_ca",
    "autocert_eab_key_id",
    "autocert_eab_mac_key",
    # The SSH door's listener and keys (proxy/ssh/); its routes and policies reload.
    "ssh_address",
    "ssh_host_key_files",
    "ssh_user_ca_key_file",
    "ssh_upstream_known_hosts_file",
    "ssh_approval_timeout",
)


@dataclass(frozen=True)
class Route:
    index: int
    name: str
    settings: RouteSettings
    matcher: RouteMatcher
    policy: Policy
    upstream: URL
    public: bool
    origin: str
    allowed_origins: frozenset[str]
    request_headers: Mapping[str, str]
    remove_headers: frozenset[str]
    response_headers: Mapping[str, str]
    timeout: float | None
    idle_timeout: float | None
    pass_identity: bool


@dataclass(frozen=True)
class SshRouteConfig:
    """A compiled ``from: ssh://NAME`` route: the SSH door's (proxy/ssh_gate.py)."""

    index: int
    name: str
    settings: RouteSettings
    policy: Policy
    upstream_host: str
    upstream_port: int


@dataclass(frozen=True)
class Keys:
    """Secrets fixed for the life of the process."""

    codec: SessionCodec
    signer: AssertionSigner
    cookie_name: str
    ephemeral_cookie_secret: bool
    ephemeral_signing_key: bool


@dataclass(frozen=True)
class Snapshot:
    settings: Settings
    source: str
    generation: int
    routes: tuple[Route, ...]
    table: RouteTable[Route]
    hosts: RouteTable[str]
    keys: Keys
    identity_headers: frozenset[str]
    limits: Limits
    pending_restart: tuple[str, ...] = field(default=())
    # API keys and local users in force (proxy/apikeys/, proxy/localusers/), read with
    # the config and again whenever their files change (proxy/server.py ConfigWatcher).
    api_keys: KeyIndex = field(default_factory=lambda: KeyIndex(()))
    # The hashes of the keys in force: a key session whose hash is gone is refused.
    api_key_hashes: frozenset[str] = frozenset()
    local_users: Verifier | None = None
    ssh_routes: tuple[SshRouteConfig, ...] = ()


def side_file(source: str, path: Path | None) -> Path | None:
    """A file the config names, relative to the config file's directory."""
    if path is None or path.is_absolute():
        return path
    return Path(source).parent / path


def _restart_value(settings: Settings, key: str) -> str:
    value: Any = getattr(settings, key)
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    elif isinstance(value, list):
        value = [v.get_secret_value() if hasattr(v, "get_secret_value") else v for v in value]
    # Hashed so secrets are never held in the snapshot as comparable plain text.
    return hashlib.sha256(repr(value).encode()).hexdigest()


def changed_restart_keys(old: Settings, new: Settings) -> tuple[str, ...]:
    """Keys whose change a running process cannot apply."""
    return tuple(k for k in RESTART_KEYS if _restart_value(old, k) != _restart_value(new, k))


def build_keys(settings: Settings) -> Keys:
    """Session codec and assertion signer; generated (with a warning) when not configured."""
    problems: list[str] = []
    secrets: list[bytes] = []
    for i, secret in enumerate(settings.cookie_secret):
        try:
            secrets.append(SessionCodec.parse_secret(secret.get_secret_value()))
        except ValueError as exc:
            problems.append(f"cookie_secret[{i}]: {exc}")
    ephemeral_secret = not settings.cookie_secret
    if ephemeral_secret:
        secrets = [SessionCodec.parse_secret(SessionCodec.new_secret())]
    key_text = settings.signing_key.get_secret_value() if settings.signing_key else None
    ephemeral_key = key_text is None
    try:
        key = load_signing_key(key_text or generate_signing_key())
    except ValueError as exc:
        problems.append(f"signing_key: {exc}")
        key = load_signing_key(generate_signing_key())
    if problems:
        raise ConfigError(problems)
    cookie_name = effective_cookie_name(settings)
    return Keys(
        codec=SessionCodec(secrets, cookie_name),
        signer=AssertionSigner(key),
        cookie_name=cookie_name,
        ephemeral_cookie_secret=ephemeral_secret,
        ephemeral_signing_key=ephemeral_key,
    )


def effective_cookie_name(settings: Settings) -> str:
    # __Host- makes the browser refuse the cookie unless Secure, Path=/ and host-only,
    # so a sibling subdomain cannot plant or shadow it.
    if settings.cookie_domain is None and not settings.insecure_server:
        return f"__Host-{settings.cookie_name}"
    return settings.cookie_name


def build_snapshot(
    settings: Settings,
    located: LocatedYaml | None,
    source: str,
    *,
    keys: Keys | None = None,
    generation: int = 1,
) -> Snapshot:
    """Compile ``settings``; :class:`ConfigError` names file, line and key of each problem."""
    problems: list[str] = []
    routes: list[Route] = []
    ssh_routes: list[SshRouteConfig] = []
    for index, rs in enumerate(settings.routes):
        try:
            if rs.is_ssh:
                ssh_routes.append(_compile_ssh_route(index, rs))
                continue
            routes.append(_compile_route(index, rs, settings))
        except PolicyError as exc:
            problems.append(describe(source, located, ("routes", index, *exc.loc), exc.message))
        except ValueError as exc:
            problems.append(describe(source, located, ("routes", index, "from"), str(exc)))
    # Local users alone need no identity provider; named at all, it must be complete.
    idp_wanted = settings.htpasswd_file is None or settings.idp_provider_url is not None
    if settings.needs_idp() and settings.routes and idp_wanted:
        for key in ("idp_provider_url", "idp_client_id"):
            if not getattr(settings, key):
                problems.append(
                    describe(source, located, (key,), "required when a route needs sign-in")
                )
        secretless = settings.idp_client_private_key_file is not None
        if settings.idp_client_secret is None and not secretless:
            problems.append(
                describe(
                    source,
                    located,
                    ("idp_client_secret",),
                    "required (or idp_client_secret_file, or env CLAWGATE_IDP_CLIENT_SECRET; "
                    "or idp_client_private_key_file for private_key_jwt)",
                )
            )
    api_keys: list[ApiKey] = []
    local_users: Verifier | None = None
    try:
        key_file = side_file(source, settings.api_keys_file)
        if key_file is not None:
            api_keys = load_key_file(key_file)
    except KeyFileError as exc:
        problems.append(str(exc))
    if settings.ssh_address is not None:
        problems += _ssh_file_problems(settings, located, source)
    try:
        password_file = side_file(source, settings.htpasswd_file)
        if password_file is not None:
            local_users = Verifier(load_htpasswd(password_file))
    except PasswordFileError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    if keys is None:
        keys = build_keys(settings)
    names = {settings.jwt_assertion_header.lower(), "x-pomerium-jwt-assertion"}
    names.update(h.lower() for h in settings.jwt_claims_headers)
    hosts = RouteTable((RouteMatcher(r.matcher.host, r.matcher.port), r.name) for r in routes)
    return Snapshot(
        settings=settings,
        source=source,
        generation=generation,
        routes=tuple(routes),
        table=RouteTable((r.matcher, r) for r in routes),
        hosts=hosts,
        keys=keys,
        identity_headers=frozenset(names),
        limits=limits_for(settings),
        api_keys=KeyIndex(api_keys),
        api_key_hashes=frozenset(k.key_hash for k in api_keys),
        local_users=local_users,
        ssh_routes=tuple(ssh_routes),
    )


def _compile_route(index: int, rs: RouteSettings, settings: Settings) -> Route:
    matcher = RouteMatcher.create(rs.from_, path=rs.path, prefix=rs.prefix, regex=rs.regex)
    host, port = parse_from(rs.from_)
    origin = f"https://{host}" + (f":{port}" if port else "")
    policy = compile_route_policy(rs.policy_source())
    response_headers = dict(SECURITY_HEADERS)
    if not settings.insecure_server:
        response_headers["Strict-Transport-Security"] = HSTS
    response_headers.update(rs.set_response_headers)
    timeout = rs.timeout
    if timeout is None and not rs.allow_websockets:
        timeout = settings.default_upstream_timeout
    return Route(
        index=index,
        name=rs.name or f"{rs.from_}{rs.path or rs.prefix or rs.regex or ''}",
        settings=rs,
        matcher=matcher,
        policy=policy,
        upstream=URL(rs.to),
        public=rs.allow_public_unauthenticated_access is True,
        origin=origin,
        allowed_origins=frozenset({origin, *rs.allowed_origins}),
        request_headers=dict(rs.set_request_headers),
        remove_headers=frozenset(h.lower() for h in rs.remove_request_headers),
        response_headers={k: v for k, v in response_headers.items() if v != ""},
        timeout=timeout or None,
        idle_timeout=rs.idle_timeout or None,
        pass_identity=settings.pass_identity_headers
        if rs.pass_identity_headers is None
        else rs.pass_identity_headers,
    )


def _ssh_file_problems(settings: Settings, located: LocatedYaml | None, source: str) -> list[str]:
    """The SSH door's key files, read now so that check (and a start) name a bad one."""
    from proxy.ssh import SshSetupError, UserCA, read_host_key

    problems = []
    ca_file = side_file(source, settings.ssh_user_ca_key_file)
    if ca_file is not None:
        try:
            UserCA.load(ca_file)
        except SshSetupError as exc:
            problems.append(describe(source, located, ("ssh_user_ca_key_file",), str(exc)))
    for index, named in enumerate(settings.ssh_host_key_files):
        path = side_file(source, named)
        assert path is not None
        try:
            read_host_key(path)
        except SshSetupError as exc:
            loc = ("ssh_host_key_files", index)
            problems.append(describe(source, located, loc, str(exc)))
    known = side_file(source, settings.ssh_upstream_known_hosts_file)
    if known is not None and not known.is_file():
        problems.append(
            describe(
                source,
                located,
                ("ssh_upstream_known_hosts_file",),
                f"{known}: not a readable known_hosts file",
            )
        )
    return problems


def _compile_ssh_route(index: int, rs: RouteSettings) -> SshRouteConfig:
    upstream = URL(rs.to)
    return SshRouteConfig(
        index=index,
        name=rs.from_.removeprefix("ssh://"),
        settings=rs,
        policy=compile_route_policy(rs.policy_source()),
        upstream_host=upstream.host or "",
        upstream_port=upstream.port or 22,
    )


def load_snapshot(path: str | Path, *, keys: Keys | None = None, generation: int = 1) -> Snapshot:
    settings, located = load_settings(path)
    return build_snapshot(settings, located, str(path), keys=keys, generation=generation)
