"""The configuration file: one YAML document, Pomerium-compatible key names.

Sources, strongest first: ``CLAWGATE_<KEY>`` environment variables, then the YAML
file. Every secret may instead be read from a file named by ``<key>_file``.
Unknown keys are errors (a typo must never silently weaken security), and every
error names the file, line and key it is about.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from policy.parse import format_loc
from proxy.yamlsource import Loc, LocatedYaml, YamlError, load_located

ENV_PREFIX = "CLAWGATE_"
MAX_WORKERS = 64
DEFAULT_SCOPES = ("openid", "profile", "email", "offline_access")


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

    ``os.cpu_count()`` counts the host's cores; in a container started with
    ``--cpus 2`` on a large host that would start dozens of workers sharing two cores'
    worth of time (more memory, more context switches, nothing gained). The quota is
    rounded up: 1.5 cores gets two workers.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, quota)
    return max(1, min(cores, MAX_WORKERS))


def _cgroup_quota(root: Path) -> int | None:
    """Whole cores allowed by the cgroup v2 ``cpu.max`` or v1 CFS quota; None if none."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() == "max":
            return None
        return -(-int(quota) // int(period))
    except (OSError, ValueError):
        pass
    for directory in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota_us = int((root / directory / "cpu.cfs_quota_us").read_text())
            period_us = int((root / directory / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota_us <= 0 or period_us <= 0:
            return None
        return -(-quota_us // period_us)
    return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Go-style durations as Pomerium writes them (``30s``, ``14h``, ``1h30m``) -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 14h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 5m or 14h")
    text = value.strip()
    if text == "0":
        return 0.0
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 14h, 1h30m)")
    return total


def parse_listen_address(value: str) -> tuple[str, int]:
    """``:443`` / ``0.0.0.0:443`` / ``[::1]:8443`` -> (host, port); empty host = all."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r}: expected [ipv6]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r}: expected host:port or :port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


_SSH_ROUTE_NAME = re.compile(r"^ssh://[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SSH_UPSTREAM = re.compile(r"^ssh://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?/?$")


def default_data_dir() -> Path:
    """Where state lives unless ``data_dir`` says: ``$XDG_DATA_HOME/clawgate``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "clawgate"


def _duration_or_none(value: object) -> float | None:
    return None if value is None else parse_duration(value)


class RouteSettings(BaseModel):
    """One entry of ``routes:``. Policy keys are kept raw; ``policy/`` compiles them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    from_: str = Field(alias="from")
    to: str
    name: str | None = None
    path: str | None = None
    prefix: str | None = None
    regex: str | None = None
    prefix_rewrite: str | None = None
    allow_websockets: bool = False
    preserve_host_header: bool = False
    pass_identity_headers: bool | None = None  # None: the global pass_identity_headers
    set_request_headers: dict[str, str] = Field(default_factory=dict)
    remove_request_headers: list[str] = Field(default_factory=list)
    set_response_headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = None
    idle_timeout: float | None = None
    tls_skip_verify: bool = False
    allowed_origins: list[str] = Field(default_factory=list)
    # Credentials other than the session cookie, each off unless the route says so, so
    # that no existing route is opened by surprise: API keys (Authorization: Bearer
    # cgk_...) and local users' Basic auth (proxy/apikeys/, proxy/localusers/).
    allow_api_keys: bool = False
    allow_basic_auth: bool = False
    # SSH routes (``from: ssh://NAME``, ``to: ssh://host:22``; proxy/ssh/): the login on
    # the upstream (the certificate's principal) is the one the user asked for, unless
    # fixed here or taken from an identity claim; what the certificate permits beyond a
    # shell is off unless the route says so.
    ssh_principal: str | None = None
    ssh_principal_claim: str | None = None
    ssh_allow_pty: bool = True
    ssh_allow_port_forwarding: bool = False
    ssh_allow_agent_forwarding: bool = False
    ssh_allow_x11_forwarding: bool = False
    # Policy: validated and compiled by policy.parse.compile_route_policy.
    policy: Any = None
    allowed_users: Any = None
    allowed_domains: Any = None
    allowed_idp_claims: Any = None
    allow_public_unauthenticated_access: Any = None
    allow_any_authenticated_user: Any = None
    allow_unverified_email: Any = None

    _check_timeouts = field_validator("timeout", "idle_timeout", mode="before")(_duration_or_none)

    @field_validator("to")
    @classmethod
    def _upstream_url(cls, value: str) -> str:
        if value.startswith("ssh://"):
            if not _SSH_UPSTREAM.match(value):
                raise ValueError(f"{value!r}: expected ssh://host or ssh://host:port")
            return value
        if not re.match(r"^https?://[^/?#\s]+(/[^\s?#]*)?$", value):
            raise ValueError(f"{value!r}: expected an http:// or https:// URL")
        return value

    @property
    def is_ssh(self) -> bool:
        return self.from_.startswith("ssh://")

    @model_validator(mode="after")
    def _one_path_matcher(self) -> RouteSettings:
        given = [k for k in ("path", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"use at most one of path, prefix and regex (got {given})")
        if self.is_ssh:
            if not _SSH_ROUTE_NAME.match(self.from_):
                raise KeyedValueError(
                    "from", f"{self.from_!r}: expected ssh://NAME (letters, digits, . _ -)"
                )
            if not self.to.startswith("ssh://"):
                raise KeyedValueError("to", "an ssh:// route goes to an ssh:// upstream")
            http_only = [
                k
                for k in ("path", "prefix", "regex", "prefix_rewrite")
                if getattr(self, k) is not None
            ]
            if http_only or self.allow_websockets or self.allow_api_keys or self.allow_basic_auth:
                named = http_only + [
                    k
                    for k in ("allow_websockets", "allow_api_keys", "allow_basic_auth")
                    if getattr(self, k)
                ]
                raise KeyedValueError(named[0], f"{named[0]} has no meaning on an ssh:// route")
            if self.ssh_principal is not None and self.ssh_principal_claim is not None:
                raise KeyedValueError(
                    "ssh_principal_claim", "set ssh_principal or ssh_principal_claim, not both"
                )
        elif self.to.startswith("ssh://"):
            raise KeyedValueError("to", "an ssh:// upstream needs a route from ssh://NAME")
        return self

    def policy_source(self) -> dict[str, Any]:
        """The route's policy keys as written, for ``policy.parse``."""
        keys = (
            "policy",
            "allowed_users",
            "allowed_domains",
            "allowed_idp_claims",
            "allow_public_unauthenticated_access",
            "allow_any_authenticated_user",
            "allow_unverified_email",
        )
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class RateLimit(BaseModel):
    """Token bucket: ``rate`` requests per second with ``burst`` in reserve."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimits(BaseModel):
    """Per client IP and per user, separately for sign-in endpoints and proxied traffic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sign_in_per_ip: RateLimit | None = RateLimit(rate=2.0, burst=20)
    proxy_per_ip: RateLimit | None = None
    proxy_per_user: RateLimit | None = None


class KeyedValueError(ValueError):
    """A check that sees the whole document but is about one key, so the error can
    name that key's line rather than the top of the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Settings(BaseSettings):
    """The whole configuration in force."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        case_sensitive=False,
    )

    # Listeners and TLS
    address: str = ":443"
    http_redirect_addr: str | None = None
    certificate_file: Path | None = None
    certificate_key_file: Path | None = None
    insecure_server: bool = False
    health_address: str | None = "127.0.0.1:28080"
    metrics_address: str | None = None
    # One process per core by default; sign-outs and refreshes are shared (proxy/peers.py).
    workers: int = Field(default_factory=available_cpus, ge=1, le=MAX_WORKERS)
    timeout_read: float = 30.0
    timeout_write: float = 0.0
    timeout_idle: float = 300.0
    timeout_header: float = 10.0
    shutdown_timeout: float = 10.0
    max_connections_per_ip: int = Field(default=256, ge=1)
    xff_num_trusted_hops: int = Field(default=0, ge=0)
    default_upstream_timeout: float = 30.0
    # Accepted so older files load; no effect (the front's upstream client replaced it).
    experimental_fast_upstream: bool = False
    # Ordinary proxied requests served by proxy/front.py, the rest by aiohttp.
    fast_path: bool = True

    # Identity provider
    idp_provider_url: str | None = None
    idp_client_id: str | None = None
    idp_client_secret: SecretStr | None = None
    idp_client_secret_file: Path | None = None
    # How clawgate authenticates at the token endpoint (proxy/client_auth.py); unset:
    # private_key_jwt with a key file, else what the provider lists.
    idp_token_endpoint_auth_method: (
        Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] | None
    ) = None
    idp_client_private_key_file: Path | None = None
    idp_scopes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_SCOPES))
    idp_request_params: dict[str, str] = Field(default_factory=dict)
    idp_groups_claim: str = "groups"
    idp_clock_leeway: float = 60.0
    idp_timeout: float = 10.0

    # Session cookie
    # NoDecode: from the environment these are plain strings (comma-separated), not JSON.
    cookie_secret: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    cookie_secret_file: Path | None = None
    cookie_name: str = "_clawgate"
    cookie_expire: float = 14 * 3600.0
    cookie_same_site: Literal["lax", "strict", "none"] = "lax"
    cookie_domain: str | None = None
    cookie_http_only: bool = True

    # Identity assertion to the upstream
    signing_key: SecretStr | None = None
    signing_key_file: Path | None = None
    jwt_claims_headers: dict[str, str] = Field(default_factory=dict)
    pass_identity_headers: bool = False  # the default for routes that do not say
    jwt_assertion_header: str = "X-Pomerium-Jwt-Assertion"

    # Operations
    log_level: Literal["debug", "info", "warning", "warn", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    rate_limits: RateLimits = Field(default_factory=RateLimits)

    # Service accounts and local users (proxy/apikeys/, proxy/localusers/): files the
    # CLI writes (`clawgate apikey`, `clawgate passwd`), re-read when they change.
    api_keys_file: Path | None = None
    htpasswd_file: Path | None = None
    # Groups of local users, by user name (the policy's ``groups`` criterion).
    htpasswd_groups: dict[str, list[str]] = Field(default_factory=dict)

    # Shared state (proxy/store/): sign-outs, single-use sign-in state, refresh locks and
    # rate-limit counts. ``memory``: this process group alone; ``redis``: every replica
    # that names the same Redis and key prefix.
    databroker_storage_type: Literal["memory", "redis"] = "memory"
    databroker_storage_connection_string: SecretStr | None = None
    databroker_storage_connection_string_file: Path | None = None
    databroker_storage_key_prefix: str = Field(
        default="clawgate:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9:_.-]+$"
    )

    # State kept on disk across restarts (ACME account and certificates, SSH host keys):
    # default $XDG_DATA_HOME/clawgate (in the container image: /data).
    data_dir: Path | None = None

    # Certificates from an ACME CA (proxy/autocert/), Pomerium's keys.
    autocert: bool = False
    autocert_dir: Path | None = None  # default <data_dir>/autocert
    autocert_ca: str | None = None  # directory URL; default Let's Encrypt production
    autocert_use_staging: bool = False
    autocert_email: str | None = None
    autocert_trusted_ca: Path | None = None
    autocert_eab_key_id: str | None = None
    autocert_eab_mac_key: SecretStr | None = None
    autocert_eab_mac_key_file: Path | None = None

    # The SSH door (proxy/ssh/): off unless ssh_address is set.
    ssh_address: str | None = None
    ssh_host_key_files: list[Path] = Field(default_factory=list)  # default: made in data_dir
    ssh_user_ca_key_file: Path | None = None
    # The upstream sshd's host keys (known_hosts format); without it the first key seen
    # is pinned in data_dir and a changed key is refused.
    ssh_upstream_known_hosts_file: Path | None = None
    # How long an SSH sign-in waits for its approval in the browser.
    ssh_approval_timeout: float = Field(default=300.0, gt=0)

    routes: list[RouteSettings] = Field(default_factory=list)

    # Pomerium keys with no meaning in one process; accepted so a Pomerium config.yaml
    # loads unchanged, and reported at start (see docs/migrating-from-pomerium.md).
    authenticate_service_url: str | None = None
    authenticate_callback_path: str | None = None
    idp_provider: str | None = None
    shared_secret: SecretStr | None = None
    shared_secret_file: Path | None = None

    _durations = field_validator(
        "timeout_read",
        "timeout_write",
        "timeout_idle",
        "timeout_header",
        "shutdown_timeout",
        "default_upstream_timeout",
        "idp_clock_leeway",
        "idp_timeout",
        "cookie_expire",
        "ssh_approval_timeout",
        mode="before",
    )(parse_duration)

    @field_validator("log_level", "log_format", "cookie_same_site", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("idp_scopes", mode="before")
    @classmethod
    def _scopes(cls, value: object) -> object:
        if isinstance(value, str):
            return [s for s in re.split(r"[\s,]+", value) if s]
        return value

    @field_validator("jwt_claims_headers", mode="before")
    @classmethod
    def _claims_headers(cls, value: object) -> object:
        """Pomerium also takes a list of claims: ``email,groups`` -> X-Pomerium-Claim-Email..."""
        if isinstance(value, str):
            value = [v for v in re.split(r"[\s,]+", value) if v]
        if isinstance(value, list):
            return {f"x-pomerium-claim-{str(c).replace('_', '-').lower()}": str(c) for c in value}
        return value

    @field_validator("idp_provider")
    @classmethod
    def _provider(cls, value: str | None) -> str | None:
        if value is not None and value.lower() == "github":
            raise ValueError(
                "GitHub does not speak OpenID Connect; clawgate needs an OIDC provider "
                "(idp_provider_url with /.well-known/openid-configuration)"
            )
        return value

    @field_validator("cookie_secret", mode="before")
    @classmethod
    def _secret_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v for v in re.split(r"[\s,]+", value) if v]
        return value

    @field_validator(
        "address", "http_redirect_addr", "health_address", "metrics_address", "ssh_address"
    )
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None and value != "":
            parse_listen_address(value)
        return value or None

    @field_validator("idp_provider_url")
    @classmethod
    def _issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = re.match(r"^(https?)://([^/?#@\s]+)(/[^?#\s]*)?$", value)
        if not match:
            raise ValueError(f"{value!r} is not an http(s) URL without query or fragment")
        if match.group(1) == "http" and not _is_loopback_authority(match.group(2)):
            raise ValueError(
                "the identity provider must use https (plain http is allowed only on a "
                "loopback address, for local testing)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """``<key>_file`` reads the secret from a file (Docker/Kubernetes secrets)."""
        if not isinstance(data, dict):
            return data
        for key in (
            "idp_client_secret",
            "cookie_secret",
            "signing_key",
            "databroker_storage_connection_string",
            "autocert_eab_mac_key",
        ):
            path = data.get(f"{key}_file")
            if path is None:
                continue
            if data.get(key) not in (None, "", []):
                raise KeyedValueError(f"{key}_file", f"set either {key} or {key}_file, not both")
            try:
                content = Path(path).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise KeyedValueError(f"{key}_file", f"{path} is not UTF-8 text") from None
            except OSError as exc:
                raise KeyedValueError(
                    f"{key}_file", f"cannot read {path}: {exc.strerror}"
                ) from None
            if key == "cookie_secret":
                data[key] = [line.strip() for line in content.splitlines() if line.strip()]
            elif key == "signing_key":
                data[key] = content.strip()
            else:
                data[key] = content.strip()
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if (self.certificate_file is None) != (self.certificate_key_file is None):
            given = "certificate_file" if self.certificate_file else "certificate_key_file"
            raise KeyedValueError(given, "certificate_file and certificate_key_file go together")
        if self.insecure_server and self.certificate_file is not None:
            raise KeyedValueError(
                "insecure_server", "insecure_server serves plain HTTP: drop the certificate files"
            )
        if self.cookie_same_site == "none" and self.insecure_server:
            raise KeyedValueError(
                "cookie_same_site", "none needs Secure cookies (not insecure_server)"
            )
        method = self.idp_token_endpoint_auth_method
        if method == "private_key_jwt" and self.idp_client_private_key_file is None:
            raise KeyedValueError(
                "idp_token_endpoint_auth_method",
                "private_key_jwt needs idp_client_private_key_file (a PEM private key)",
            )
        if self.idp_client_private_key_file is not None:
            if method not in (None, "private_key_jwt"):
                raise KeyedValueError(
                    "idp_client_private_key_file",
                    f"only private_key_jwt uses a key; idp_token_endpoint_auth_method is {method}",
                )
            from proxy.client_auth import ClientAuthError, load_private_key

            try:
                load_private_key(self.idp_client_private_key_file)
            except ClientAuthError as exc:
                raise KeyedValueError("idp_client_private_key_file", str(exc)) from None
        connection = self.databroker_storage_connection_string
        if self.databroker_storage_type == "redis":
            if connection is None:
                raise KeyedValueError(
                    "databroker_storage_connection_string",
                    "databroker_storage_type redis needs a connection string "
                    "(redis://, rediss:// or redis+sentinel://), or its _file",
                )
            scheme = connection.get_secret_value().partition("://")[0].lower()
            if scheme not in ("redis", "rediss", "redis+sentinel", "rediss+sentinel"):
                raise KeyedValueError(
                    "databroker_storage_connection_string",
                    "must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://",
                )
        elif connection is not None:
            raise KeyedValueError(
                "databroker_storage_connection_string",
                "set databroker_storage_type: redis to use it (the memory store has none)",
            )
        self._check_autocert()
        self._check_ssh()
        return self

    def _check_autocert(self) -> None:
        if (self.autocert_eab_key_id is None) != (self.autocert_eab_mac_key is None):
            given = "autocert_eab_key_id" if self.autocert_eab_key_id else "autocert_eab_mac_key"
            raise KeyedValueError(given, "autocert_eab_key_id and autocert_eab_mac_key go together")
        if self.autocert_ca is not None:
            match = re.match(r"^(https?)://([^/?#@\s]+)(/[^?#\s]*)?$", self.autocert_ca)
            if not match:
                raise KeyedValueError("autocert_ca", "expected the ACME directory's https URL")
            if match.group(1) == "http" and not _is_loopback_authority(match.group(2)):
                raise KeyedValueError(
                    "autocert_ca", "the ACME directory must use https (http only on loopback)"
                )
            if self.autocert_use_staging:
                raise KeyedValueError(
                    "autocert_use_staging", "autocert_ca names the directory: drop one of them"
                )
        if self.autocert and self.insecure_server:
            raise KeyedValueError(
                "autocert", "autocert needs TLS: drop insecure_server (or autocert)"
            )
        if self.autocert_trusted_ca is not None and not self.autocert_trusted_ca.is_file():
            raise KeyedValueError(
                "autocert_trusted_ca", f"{self.autocert_trusted_ca} is not a readable file"
            )

    def _check_ssh(self) -> None:
        ssh_routes = [r for r in self.routes if r.is_ssh]
        if self.ssh_address is None:
            if ssh_routes:
                raise KeyedValueError(
                    "routes", "ssh:// routes need ssh_address (the SSH door's listener)"
                )
            return
        if self.ssh_user_ca_key_file is None:
            raise KeyedValueError(
                "ssh_address",
                "the SSH door needs ssh_user_ca_key_file (make one: clawgate ssh-ca init)",
            )
        if not ssh_routes:
            raise KeyedValueError("ssh_address", "the SSH door needs a route from ssh://NAME")
        if not any(not r.is_ssh for r in self.routes):
            raise KeyedValueError(
                "ssh_address",
                "SSH sign-in is approved in the browser: add an https:// route for it",
            )
        names = [r.from_ for r in ssh_routes]
        if len(set(names)) != len(names):
            raise KeyedValueError("routes", "two ssh:// routes have the same name")

    def data_path(self) -> Path:
        return self.data_dir if self.data_dir is not None else default_data_dir()

    def autocert_path(self) -> Path:
        return self.autocert_dir if self.autocert_dir is not None else self.data_path() / "autocert"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Init kwargs carry the YAML document; the environment overrides it.
        return (env_settings, init_settings)

    def ignored_pomerium_keys(self) -> list[str]:
        keys = (
            "authenticate_service_url",
            "authenticate_callback_path",
            "idp_provider",
            "shared_secret",
            "shared_secret_file",
        )
        return [k for k in keys if getattr(self, k) is not None]

    def needs_idp(self) -> bool:
        return any(r.allow_public_unauthenticated_access is not True for r in self.routes)

    def http_routes(self) -> list[RouteSettings]:
        return [r for r in self.routes if not r.is_ssh]

    def ssh_routes(self) -> list[RouteSettings]:
        return [r for r in self.routes if r.is_ssh]


def _is_loopback_authority(authority: str) -> bool:
    host = authority
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        host = host.rpartition(":")[0] if ":" in host else host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConfigError(Exception):
    """A configuration problem, pinned to file, line and key where possible."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def describe(source: str, located: LocatedYaml | None, loc: Loc, message: str) -> str:
    """``config.yaml:12: routes[0].policy[0].allow.or[1]: unknown criterion 'emial'``."""
    key = format_loc(loc) if loc else ""
    env = _env_name(loc)
    if env is not None:
        return f"environment {env}: {key}: {message}"
    line = located.line_of(loc) if located is not None else None
    where = f"{source}:{line}" if line is not None else source
    return f"{where}: {key or '(top level)'}: {message}"


def _env_name(loc: Loc) -> str | None:
    if not loc or not isinstance(loc[0], str):
        return None
    name = ENV_PREFIX + loc[0].upper()
    return name if name in os.environ else None


# Variables with the prefix that are not settings but are read by clawgate all the same.
_OTHER_VARIABLES = frozenset({"CLAWGATE_CONFIG"})


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """``CLAWGATE_*`` variables that name no setting: a typo there leaves the setting
    (perhaps a secret) to the file or its default, silently. Names only, never values."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | _OTHER_VARIABLES
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )


def load_settings(path: str | Path) -> tuple[Settings, LocatedYaml]:
    """Read, parse and validate the file at ``path``; :class:`ConfigError` on any defect."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read the configuration: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        line = Path(path).read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{source}:{line}: the file is not UTF-8 text"]) from None
    return parse_settings(text, source)


def parse_settings(text: str, source: str = "<config>") -> tuple[Settings, LocatedYaml]:
    try:
        located = load_located(text)
    except YamlError as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise ConfigError([f"{where}: {exc.message}"]) from None
    data = located.data
    if not isinstance(data, Mapping):
        raise ConfigError([f"{source}:1: the file must be a mapping of keys to values"])
    try:
        settings = Settings(**{str(k): v for k, v in data.items()})
    except ValidationError as exc:
        raise ConfigError(
            [describe(source, located, _error_loc(err), _message(err)) for err in exc.errors()]
        ) from None
    return settings, located


def _error_loc(err: Mapping[str, Any]) -> Loc:
    # Whole-model checks report at the top level; a KeyedValueError knows its key.
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, KeyedValueError):
        # Raised by the whole document's check (loc empty) or by one route's (its index).
        return (*_clean_loc(err["loc"]), cause.key)
    return _clean_loc(err["loc"])


def _clean_loc(loc: tuple[int | str, ...]) -> Loc:
    # pydantic adds union-branch names (e.g. 'str', 'list[...]') to locations.
    return tuple(p for p in loc if isinstance(p, int) or not _is_type_tag(p))


def _is_type_tag(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "dict", "list"} or "[" in part


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        return (
            "unknown key (check the spelling; unknown keys are refused so a typo "
            "cannot weaken security)"
        )
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")
