"""``clawgate audit``: a security review of a configuration and, with ``--deep``, of the
live deployment. Every finding has a severity and a fix; high-severity findings make
the command exit non-zero, so it can gate a deployment pipeline.

Public surface:

- :class:`Finding`: ``severity`` (``high``/``medium``/``low``), ``key``, ``message``, ``fix``.
- :func:`audit_config`: findings about a loaded snapshot and its file (no network).
- :func:`deep_probe`: findings from probing the running deployment over the network.
- :func:`add_audit_command`: registers ``audit`` on the ``clawgate`` argument parser.

Policies are judged by what they decide, not by their keys: the engine is asked about a
stranger with a verified address nobody listed and about an anonymous request, so a
policy written in any style is judged the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import ssl
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from policy.model import Identity, RequestFacts
from proxy.session import SessionCodec
from proxy.settings import Settings
from proxy.snapshot import Route, Snapshot, side_file
from proxy.tls import certificate_not_after

__all__ = ["Finding", "add_audit_command", "audit_config", "deep_probe"]

SEVERITIES = ("high", "medium", "low")
OPENCLAW_PORT = 18789
CERT_WARN_DAYS = 14
JWKS_PATH = "/.well-known/clawgate/jwks.json"

_STRANGER = Identity(
    sub="clawgate-audit-probe",
    email="probe@audit.invalid",
    email_verified=True,
    groups=frozenset(),
    claims={},
)


@dataclass(frozen=True)
class Finding:
    severity: str
    key: str
    message: str
    fix: str


def _facts(path: str = "/") -> RequestFacts:
    return RequestFacts("GET", path, "203.0.113.9", dt.datetime.now(dt.UTC))


def _is_openclaw(route: Route) -> bool:
    return route.settings.allow_websockets or route.upstream.port == OPENCLAW_PORT


def _secret_findings(settings: Settings, ephemeral: bool) -> list[Finding]:
    if ephemeral:
        return [
            Finding(
                "high",
                "cookie_secret",
                "no cookie_secret is set: one is generated at every start, so every restart "
                "signs everyone out and replicas cannot read each other's cookies",
                "set cookie_secret (or cookie_secret_file) to the output of `clawgate secret`",
            )
        ]
    out = []
    for i, secret in enumerate(settings.cookie_secret):
        raw = SessionCodec.parse_secret(secret.get_secret_value())
        # 32 random bytes have about 28 distinct values; a typed or patterned "secret"
        # (all zeros, repeated words, a counter) has far fewer.
        if len(set(raw)) < 20:
            out.append(
                Finding(
                    "high",
                    f"cookie_secret[{i}]",
                    "the cookie secret is not random (too few distinct bytes): sessions could "
                    "be forged by anyone who guesses it",
                    "replace it with the output of `clawgate secret`",
                )
            )
    return out


def _file_findings(path: Path, settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    inline = [
        k
        for k in ("cookie_secret", "idp_client_secret", "signing_key")
        if f"\n{k}:" in f"\n{text}" and getattr(settings, f"{k}_file") is None
    ]
    if inline and mode & (stat.S_IRWXG | stat.S_IRWXO):
        out.append(
            Finding(
                "high",
                "config file permissions",
                f"{path} holds {', '.join(inline)} and is readable by other users "
                f"(mode {stat.S_IMODE(mode):o})",
                f"chmod 600 {path}, or move the secrets to *_file secret files",
            )
        )
    for key in ("cookie_secret_file", "idp_client_secret_file", "signing_key_file"):
        secret_path = getattr(settings, key)
        if secret_path is None:
            continue
        try:
            secret_mode = Path(secret_path).stat().st_mode
        except OSError:
            continue
        if secret_mode & stat.S_IRWXO:
            out.append(
                Finding(
                    "high",
                    key,
                    f"{secret_path} is readable by every user on the host "
                    f"(mode {stat.S_IMODE(secret_mode):o})",
                    f"chmod 600 {secret_path}",
                )
            )
    return out


def _autocert_findings(snap: Snapshot, now: dt.datetime) -> list[Finding]:
    """Certificates autocert holds on disk (no CA is contacted) and hosts it cannot do."""
    if not snap.settings.autocert:
        return []
    from proxy.autocert import Autocert, refused_hosts
    from proxy.certificates import autocert_config, autocert_hosts

    out: list[Finding] = []
    hosts = autocert_hosts(snap)
    refused = refused_hosts(hosts)
    for host, why in refused.items():
        out.append(
            Finding(
                "medium",
                "autocert",
                f"no certificate can be obtained for {host}: {why}",
                "give that route a certificate_file, or name each host",
            )
        )
    held = {s.host: s for s in Autocert(autocert_config(snap.settings, snap.source)).status()}
    for host in hosts:
        if host in refused:
            continue
        status = held.get(host)
        key = f"autocert ({host})"
        if status is None or status.not_after is None:
            out.append(
                Finding(
                    "medium",
                    key,
                    "no certificate has been obtained yet: browsers see the fallback certificate",
                    "check that ports 443 and/or 80 reach clawgate and see /readyz",
                )
            )
            continue
        left = status.not_after - now
        if left <= dt.timedelta(0):
            out.append(
                Finding(
                    "high",
                    key,
                    f"the certificate expired on {status.not_after:%Y-%m-%d}",
                    "see /readyz and the autocert_failed log lines for why renewal fails",
                )
            )
        elif left < dt.timedelta(days=CERT_WARN_DAYS):
            out.append(
                Finding(
                    "medium",
                    key,
                    f"the certificate expires on {status.not_after:%Y-%m-%d} "
                    f"({left.days} days) and has not been renewed",
                    "see /readyz and the autocert_failed log lines for why renewal fails",
                )
            )
    return out


def _ssh_findings(snap: Snapshot) -> list[Finding]:
    settings = snap.settings
    if settings.ssh_address is None:
        return []
    out: list[Finding] = []
    ca = side_file(snap.source, settings.ssh_user_ca_key_file)
    if ca is not None:
        try:
            mode = ca.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            out.append(
                Finding(
                    "high",
                    "ssh_user_ca_key_file",
                    f"{ca} can be read by other users (mode {stat.S_IMODE(mode):o}): whoever "
                    "reads it can log in to every host that trusts the CA",
                    f"chmod 600 {ca}",
                )
            )
    if settings.ssh_upstream_known_hosts_file is None:
        out.append(
            Finding(
                "low",
                "ssh_upstream_known_hosts_file",
                "the upstream sshd's host key is trusted on first use",
                "set ssh_upstream_known_hosts_file to its known_hosts line(s)",
            )
        )
    for route in snap.ssh_routes:
        key = f"routes[{route.index}] (ssh://{route.name})"
        facts = RequestFacts("SSH", "", "203.0.113.9", dt.datetime.now(dt.UTC), ssh_username="root")
        if route.policy.decide(facts, _STRANGER).allow:
            out.append(
                Finding(
                    "high",
                    key,
                    "any signed-in account of the identity provider gets a shell on the "
                    "OpenClaw host (and may ask for any login, root included)",
                    "list who may use it (allowed_users, a policy) and which logins (ssh_username)",
                )
            )
        forwards = [
            name
            for name, on in (
                ("port", route.settings.ssh_allow_port_forwarding),
                ("agent", route.settings.ssh_allow_agent_forwarding),
                ("X11", route.settings.ssh_allow_x11_forwarding),
            )
            if on
        ]
        if forwards:
            out.append(
                Finding(
                    "low",
                    key,
                    f"{', '.join(forwards)} forwarding is allowed: the upstream network (or "
                    "the user's agent) is reachable through the SSH connection",
                    "turn it off unless it is needed",
                )
            )
    return out


def _route_findings(route: Route) -> list[Finding]:
    out = []
    key = f"routes[{route.index}] ({route.name})"
    public = route.policy.decide(_facts(), None).allow
    stranger = route.policy.decide(_facts(), _STRANGER).allow
    if public and _is_openclaw(route):
        out.append(
            Finding(
                "high",
                key,
                "the OpenClaw route is open to anyone on the network without "
                "signing in: whoever reaches it controls the agent",
                "remove allow_public_unauthenticated_access / accept: true and list who may "
                "use it (allowed_users, allowed_domains or a policy)",
            )
        )
    elif public:
        out.append(
            Finding(
                "low",
                key,
                "the route is public (no sign-in needed)",
                "make sure nothing behind it needs protecting",
            )
        )
    elif stranger and route.settings.allow_websockets:
        out.append(
            Finding(
                "high",
                key,
                "any signed-in account of the identity provider may open "
                "WebSockets here (allow_any_authenticated_user or an equivalent policy); with "
                "a public IdP (Google, GitHub) that is anyone on the internet",
                "restrict the route to listed users, domains or groups",
            )
        )
    elif stranger:
        out.append(
            Finding(
                "medium",
                key,
                "any signed-in account of the identity provider is allowed",
                "restrict the route to listed users, domains or groups",
            )
        )
    if route.settings.allow_unverified_email is True:
        out.append(
            Finding(
                "medium",
                key,
                "allow_unverified_email: an address the IdP has not verified "
                "passes email and domain rules, so anyone can claim someone else's address at "
                "providers that allow sign-up",
                "remove allow_unverified_email unless the IdP verifies every address",
            )
        )
    if route.settings.tls_skip_verify:
        out.append(
            Finding(
                "medium",
                key,
                "tls_skip_verify: the upstream's certificate is not checked",
                "give the upstream a certificate clawgate can verify",
            )
        )
    return out


def audit_config(
    snap: Snapshot, path: Path | None, *, now: dt.datetime | None = None
) -> list[Finding]:
    """Findings about the configuration alone (no network)."""
    settings = snap.settings
    now = now or dt.datetime.now(dt.UTC)
    out = _secret_findings(settings, snap.keys.ephemeral_cookie_secret)
    if snap.keys.ephemeral_signing_key:
        out.append(
            Finding(
                "medium",
                "signing_key",
                "no signing_key is set: the identity assertion key changes at every restart "
                "and differs between replicas, so the upstream cannot pin it",
                "set signing_key (or signing_key_file) to the output of `clawgate keygen`",
            )
        )
    if settings.insecure_server:
        behind_proxy = settings.xff_num_trusted_hops > 0
        out.append(
            Finding(
                "medium" if behind_proxy else "high",
                "insecure_server",
                "clawgate serves plain HTTP: cookies, tokens and OpenClaw traffic cross the "
                "network unencrypted"
                + (" unless the proxy in front terminates TLS" if behind_proxy else ""),
                "remove insecure_server and give clawgate a certificate (or keep it only "
                "behind a TLS-terminating load balancer on a private network)",
            )
        )
    out += _store_findings(settings)
    out += _api_key_findings(settings, snap.source, now)
    out += _autocert_findings(snap, now)
    out += _ssh_findings(snap)
    if settings.certificate_file is not None:
        try:
            not_after = certificate_not_after(settings.certificate_file)
        except (OSError, ValueError):
            out.append(
                Finding(
                    "high",
                    "certificate_file",
                    f"{settings.certificate_file} cannot be read as a PEM certificate",
                    "point certificate_file at the PEM chain",
                )
            )
        else:
            left = not_after - now
            if left <= dt.timedelta(0):
                out.append(
                    Finding(
                        "high",
                        "certificate_file",
                        f"the TLS certificate expired on {not_after:%Y-%m-%d}",
                        "renew it (clawgate reloads renewed files by itself)",
                    )
                )
            elif left < dt.timedelta(days=CERT_WARN_DAYS):
                out.append(
                    Finding(
                        "medium",
                        "certificate_file",
                        f"the TLS certificate expires on {not_after:%Y-%m-%d} ({left.days} days)",
                        "renew it now",
                    )
                )
    limits = settings.rate_limits
    if (
        limits.sign_in_per_ip is None
        and limits.proxy_per_ip is None
        and limits.proxy_per_user is None
    ):
        out.append(
            Finding(
                "medium",
                "rate_limits",
                "rate limiting is off: sign-in and proxied requests "
                "can be sent as fast as a client likes",
                "set rate_limits.sign_in_per_ip (and proxy_per_ip / proxy_per_user)",
            )
        )
    elif limits.sign_in_per_ip is None:
        out.append(
            Finding(
                "low",
                "rate_limits.sign_in_per_ip",
                "sign-in endpoints are not rate limited",
                "set rate_limits.sign_in_per_ip, e.g. {rate: 2, burst: 20}",
            )
        )
    if path is not None:
        out += _file_findings(path, settings)
    for route in snap.routes:
        out += _route_findings(route)
    return sorted(out, key=lambda f: SEVERITIES.index(f.severity))


async def deep_probe(
    snap: Snapshot,
    *,
    base_url: str | None = None,
    upstream_probe: Sequence[str] = (),
    verify_tls: bool = True,
    probe_timeout: float = 5.0,
) -> list[Finding]:
    """Probe the live deployment: unauthenticated requests must be turned away, the JWKS
    must be served, and the upstream must not answer from where this runs.

    ``base_url`` is where to connect (e.g. ``https://127.0.0.1:8443``); each route's own
    host is sent as Host. Without it the route's ``from`` URL is used as is.
    """
    out: list[Finding] = []
    ssl_ctx: ssl.SSLContext | bool = True
    if not verify_tls:
        ssl_ctx = False
    client_timeout = aiohttp.ClientTimeout(total=probe_timeout)
    async with aiohttp.ClientSession(
        timeout=client_timeout, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        for url in upstream_probe:
            try:
                async with http.get(url, allow_redirects=False, ssl=ssl_ctx) as r:
                    status: int | None = r.status
            except (aiohttp.ClientError, TimeoutError, OSError):
                status = None
            if status is not None:
                out.append(
                    Finding(
                        "high",
                        "upstream exposure",
                        f"{url} answered ({status}) without going through clawgate: anyone who "
                        "can reach it bypasses sign-in and policy",
                        "publish only clawgate's port; bind the upstream to a private network "
                        "or loopback (OpenClaw: gateway.bind loopback / no published port)",
                    )
                )
        seen_hosts: set[str] = set()
        for route in snap.routes:
            authority = route.origin.removeprefix("https://")
            if authority in seen_hosts:
                continue
            seen_hosts.add(authority)
            target = (base_url or route.origin).rstrip("/")
            headers = {"Host": authority}
            key = f"routes[{route.index}] ({route.name})"
            probe_path = route.settings.prefix or route.settings.path or "/"
            if not route.public:
                for accept in ("text/html", "application/json"):
                    try:
                        async with http.get(
                            f"{target}{probe_path}",
                            allow_redirects=False,
                            headers={**headers, "Accept": accept},
                            ssl=ssl_ctx,
                        ) as r:
                            status, location = r.status, r.headers.get("Location", "")
                    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                        out.append(
                            Finding(
                                "high",
                                key,
                                f"{target} could not be reached ({type(exc).__name__})",
                                "check that clawgate is running and reachable",
                            )
                        )
                        break
                    idp = (snap.settings.idp_provider_url or "").rstrip("/")
                    redirected = status in (302, 303) and bool(idp) and location.startswith(idp)
                    refused = status in (401, 403)
                    if not (redirected or refused):
                        out.append(
                            Finding(
                                "high",
                                key,
                                f"an unauthenticated request ({accept}) got "
                                f"{status} instead of a sign-in redirect or 401",
                                "check the route's policy and that clawgate is in front",
                            )
                        )
            try:
                async with http.get(f"{target}{JWKS_PATH}", headers=headers, ssl=ssl_ctx) as r:
                    doc: Any = await r.json(content_type=None) if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                doc = None
            keys = doc.get("keys") if isinstance(doc, dict) else None
            if not keys:
                out.append(
                    Finding(
                        "high",
                        "jwks",
                        f"{target}{JWKS_PATH} does not serve the signing keys: "
                        "the upstream cannot verify clawgate's identity assertion",
                        "check that clawgate serves this host",
                    )
                )
            elif (
                not any(k.get("kid") == snap.keys.signer.kid for k in keys if isinstance(k, dict))
                and not snap.keys.ephemeral_signing_key
            ):
                out.append(
                    Finding(
                        "medium",
                        "jwks",
                        "the served JWKS does not contain the configured "
                        "signing key: the running process uses another key",
                        "restart clawgate after changing signing_key",
                    )
                )
    return sorted(out, key=lambda f: SEVERITIES.index(f.severity))


def _print(findings: list[Finding], as_json: bool) -> None:
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=2))
        return
    if not findings:
        print("no findings")
        return
    for f in findings:
        print(f"[{f.severity.upper()}] {f.key}: {f.message}")
        print(f"    fix: {f.fix}")
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    print(f"{counts['high']} high, {counts['medium']} medium, {counts['low']} low")


def cmd_audit(args: argparse.Namespace) -> int:
    from proxy.cli import _config_path, load_or_report

    path = _config_path(args.config)
    snap = load_or_report(args.config)
    if snap is None:
        return 2
    findings = audit_config(snap, path)
    if args.deep:
        findings += asyncio.run(
            deep_probe(
                snap,
                base_url=args.base_url,
                upstream_probe=args.upstream_probe or (),
                verify_tls=not args.insecure,
            )
        )
        findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    _print(findings, args.json)
    return 1 if any(f.severity == "high" for f in findings) else 0


def add_audit_command(sub: Any) -> None:
    p = sub.add_parser("audit", help="review a config (and with --deep the live deployment)")
    p.add_argument("--config", help="config file (default ./config.yaml or $CLAWGATE_CONFIG)")
    p.add_argument(
        "--deep", action="store_true", help="also probe the running deployment over the network"
    )
    p.add_argument(
        "--base-url",
        help="where to connect for --deep, e.g. https://127.0.0.1:8443"
        " (default: each route's own from URL)",
    )
    p.add_argument(
        "--upstream-probe",
        action="append",
        metavar="URL",
        help="an upstream address that must NOT answer from here (repeatable)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="--deep: accept any TLS certificate (self-signed test setups)",
    )
    p.add_argument("--json", action="store_true", help="findings as JSON")
    p.set_defaults(func=cmd_audit)


def _store_findings(settings: Settings) -> list[Finding]:
    """The shared store is where sign-outs live: reachable in the clear, anyone on the
    path could read sign-in state or forge "not signed out"."""
    secret = settings.databroker_storage_connection_string
    if settings.databroker_storage_type != "redis" or secret is None:
        return []
    parts = urlsplit(secret.get_secret_value())
    out: list[Finding] = []
    hosts = [h.rpartition(":")[0] or h for h in parts.netloc.rpartition("@")[2].split(",")]
    remote = [h for h in hosts if h.strip("[]") not in ("localhost", "127.0.0.1", "::1")]
    if not parts.scheme.startswith("rediss") and remote:
        out.append(
            Finding(
                "medium",
                "databroker_storage_connection_string",
                "the Redis store is reached without TLS: sign-outs, sign-in state and "
                "refreshed sessions cross the network in the clear",
                "use rediss:// (or keep Redis on a private network only clawgate reaches)",
            )
        )
    if "@" not in parts.netloc or not parts.password:
        out.append(
            Finding(
                "medium",
                "databroker_storage_connection_string",
                "the Redis store has no password: anything that reaches it can sign users "
                "back in (delete sign-outs) or replay sign-ins",
                "set requirepass (or an ACL user) on Redis and put it in the connection string",
            )
        )
    return out


def _api_key_findings(settings: Settings, source: str, now: dt.datetime) -> list[Finding]:
    """Keys without expiry or older than a year, and a key file others can read."""
    from proxy.apikeys import KeyFileError, key_findings, load_key_file
    from proxy.snapshot import side_file

    path = side_file(source, settings.api_keys_file)
    if path is None:
        return []
    try:
        keys = load_key_file(path)
    except KeyFileError as exc:
        return [Finding("high", "api_keys_file", str(exc), "fix the file (clawgate apikey)")]
    return [Finding(*finding) for finding in key_findings(path, keys, now)]
