"""The real OpenID Connect provider the integration tests sign in against.

`TestIdP` runs ``tests/idp/server.mjs`` (oidc-provider on Node) on 127.0.0.1 with an ephemeral
port and drives its test-only admin API. `login` and `logout_confirm` walk a browser-like
redirect chain through the IdP's HTML pages with a plain aiohttp session.

Usage::

    with TestIdP() as idp:            # or: async with TestIdP() as idp / the `idp` fixture
        idp.add_client("clawgate", "secret", ["https://127.0.0.1:8443/.clawgate/callback"])
        idp.issuer                    # "http://127.0.0.1:<port>"

Admin calls are synchronous (tiny loopback requests to another process), so they are safe to use
from async tests too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from ssl import SSLContext
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest

from tests.support.lifecycle import StartStop

IDP_DIR = Path(__file__).resolve().parent.parent / "idp"
SERVER_SCRIPT = IDP_DIR / "server.mjs"
READY_TIMEOUT = 30.0
NPM_TIMEOUT = 300.0


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a pytest test class despite the name

    sub: str
    username: str
    password: str
    email: str
    email_verified: bool = True
    name: str = ""
    groups: tuple[str, ...] = ()
    extra_claims: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = list(self.groups)
        data["extra_claims"] = dict(self.extra_claims)
        data["name"] = self.name or self.username
        return data


ALICE = TestUser(
    sub="alice",
    username="alice@example.com",
    password="alice-password",
    email="alice@example.com",
    name="Alice Admin",
    groups=("admins", "staff"),
)
BOB = TestUser(
    sub="bob",
    username="bob@example.com",
    password="bob-password",
    email="bob@example.com",
    name="Bob Staff",
    groups=("staff",),
)
MALLORY = TestUser(
    sub="mallory",
    username="mallory@evil.test",
    password="mallory-password",
    email="mallory@evil.test",
    name="Mallory",
    groups=(),
)
UNVERIFIED = TestUser(
    sub="unverified",
    username="unverified@example.com",
    password="unverified-password",
    email="unverified@example.com",
    email_verified=False,
    name="Una Verified",
    groups=("staff",),
)
DEFAULT_USERS: tuple[TestUser, ...] = (ALICE, BOB, MALLORY, UNVERIFIED)

FailureMode = Literal["ok", "down", "slow"]


class IdPError(RuntimeError):
    """The IdP process did not start, or an admin call failed."""


def ensure_node_modules() -> None:
    """Run `npm ci` in tests/idp once; a file lock keeps parallel test runs from colliding."""
    marker = IDP_DIR / "node_modules" / "oidc-provider" / "package.json"
    if marker.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise IdPError("npm not found on PATH; it is needed once to install tests/idp")
    lock_path = Path(tempfile.gettempdir()) / "clawgate-test-idp-npm.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.exists():  # another process installed it while we waited
                return
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=IDP_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
            if proc.returncode != 0 or not marker.exists():
                raise IdPError(f"npm ci in {IDP_DIR} failed:\n{proc.stdout}\n{proc.stderr}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class TestIdP(StartStop):
    """One oidc-provider process on 127.0.0.1; see the module docstring."""

    __test__ = False

    def __init__(
        self,
        *,
        users: Iterable[TestUser] = DEFAULT_USERS,
        clients: Iterable[Mapping[str, Any]] = (),
        port: int = 0,
        id_token_ttl_seconds: int = 3600,
        access_token_ttl_seconds: int = 3600,
        refresh_token_ttl_seconds: int = 14 * 24 * 3600,
        rotate_refresh_tokens: bool = True,
        strict_offline_access: bool = False,
        refresh: bool = True,
        node: str = "node",
    ) -> None:
        self._config: dict[str, Any] = {
            "port": port,
            "users": [u.to_json() for u in users],
            "clients": [dict(c) for c in clients],
            "id_token_ttl_seconds": id_token_ttl_seconds,
            "access_token_ttl_seconds": access_token_ttl_seconds,
            "refresh_token_ttl_seconds": refresh_token_ttl_seconds,
            "rotate_refresh_tokens": rotate_refresh_tokens,
            "strict_offline_access": strict_offline_access,
            "refresh": refresh,
            "exit_on_stdin_close": True,
        }
        self._node = node
        self._proc: subprocess.Popen[str] | None = None
        self._config_dir: tempfile.TemporaryDirectory[str] | None = None
        self._stderr_path: Path | None = None
        self._stdout_thread: threading.Thread | None = None
        self._issuer: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise IdPError("TestIdP is not running")
        return self._issuer

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def end_session_endpoint(self) -> str:
        return f"{self.issuer}/session/end"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> TestIdP:
        if self._proc is not None:
            raise IdPError("TestIdP already started")
        ensure_node_modules()
        self._config_dir = tempfile.TemporaryDirectory(prefix="clawgate-idp-")
        cfg = Path(self._config_dir.name) / "config.json"
        cfg.write_text(json.dumps(self._config))
        self._stderr_path = Path(self._config_dir.name) / "stderr.log"
        ready = threading.Event()
        found: list[str] = []
        with open(self._stderr_path, "w") as stderr:
            self._proc = subprocess.Popen(
                [self._node, str(SERVER_SCRIPT), str(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=IDP_DIR,
                start_new_session=True,  # a Ctrl-C aimed at pytest is ours to forward
            )

        def pump(stream: Any) -> None:
            # Drain stdout for the whole process life so it can never block on a full pipe.
            for line in stream:
                if not found and line.startswith("READY "):
                    found.append(line.split(" ", 1)[1].strip())
                    ready.set()
            ready.set()

        self._stdout_thread = threading.Thread(target=pump, args=(self._proc.stdout,), daemon=True)
        self._stdout_thread.start()
        if not ready.wait(READY_TIMEOUT) or not found:
            tail = self.stderr_tail()
            self.stop()
            raise IdPError(f"test IdP did not become ready within {READY_TIMEOUT}s:\n{tail}")
        self._issuer = found[0]
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self._issuer = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._stdout_thread is not None:
            self._stdout_thread.join(5)
            self._stdout_thread = None
        if self._config_dir is not None:
            self._config_dir.cleanup()
            self._config_dir = None
            self._stderr_path = None

    def stderr_tail(self, limit: int = 4000) -> str:
        """The server's recent stderr (useful in assertion messages)."""
        if self._stderr_path is None or not self._stderr_path.exists():
            return ""
        return self._stderr_path.read_text(errors="replace")[-limit:]

    # -- admin API ---------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.issuer}/__admin/{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise IdPError(f"admin {method} {path} -> {err.code}: {detail}") from None

    def add_client(
        self,
        client_id: str,
        client_secret: str | None,
        redirect_uris: Sequence[str],
        post_logout_redirect_uris: Sequence[str] = (),
        **metadata: Any,
    ) -> None:
        """Add or replace a client. Extra OIDC client metadata passes through as keyword args
        (e.g. ``token_endpoint_auth_method="client_secret_post"``,
        ``id_token_signed_response_alg="ES256"``). No secret means a public client."""
        client: dict[str, Any] = {
            "client_id": client_id,
            "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris),
            **metadata,
        }
        if client_secret is not None:
            client["client_secret"] = client_secret
        self._admin("POST", "clients", client)

    def add_user(self, user: TestUser) -> None:
        """Add or replace a user; claim changes show up in tokens issued afterwards."""
        self._admin("POST", "users", user.to_json())

    def rotate_keys(self, *, keep_old: bool = False) -> str:
        """New signing keys (RS256 + ES256); the old ones leave the JWKS unless keep_old.
        Returns the new RS256 kid."""
        return str(self._admin("POST", "rotate-keys", {"keep_old": keep_old})["kid"])

    def set_failure(
        self,
        mode: FailureMode,
        delay_ms: int = 0,
        *,
        endpoints: Sequence[str] = ("discovery", "jwks", "token"),
        count: int | None = None,
    ) -> None:
        """Make endpoints answer 503 ("down") or wait delay_ms first ("slow"); "ok" heals.
        endpoints: discovery, jwks, token, userinfo, authorization, end_session, revocation.
        count: only that many affected requests, then back to ok."""
        body: dict[str, Any] = {"mode": mode, "delay_ms": delay_ms, "endpoints": list(endpoints)}
        if count is not None:
            body["count"] = count
        self._admin("POST", "fail", body)

    def sessions(self) -> dict[str, int]:
        """Live IdP sessions per signed-in user (sub -> count); users with none are absent."""
        return {str(k): int(v) for k, v in self._admin("GET", "sessions")["sessions"].items()}

    def revoke_user(self, sub: str) -> int:
        """End every session, grant and token of a user (refresh then fails). Returns count."""
        return int(self._admin("POST", "revoke", {"sub": sub})["removed"])

    def set_config(
        self,
        *,
        id_token_ttl_seconds: int | None = None,
        access_token_ttl_seconds: int | None = None,
        refresh_token_ttl_seconds: int | None = None,
        rotate_refresh_tokens: bool | None = None,
        strict_offline_access: bool | None = None,
    ) -> dict[str, Any]:
        """Change token lifetimes and refresh behaviour for tokens issued from now on."""
        body = {
            k: v
            for k, v in {
                "id_token_ttl_seconds": id_token_ttl_seconds,
                "access_token_ttl_seconds": access_token_ttl_seconds,
                "refresh_token_ttl_seconds": refresh_token_ttl_seconds,
                "rotate_refresh_tokens": rotate_refresh_tokens,
                "strict_offline_access": strict_offline_access,
            }.items()
            if v is not None
        }
        return dict(self._admin("POST", "config", body))

    def stats(self) -> dict[str, int]:
        """Requests seen per endpoint since start or the last reset (admin calls not counted)."""
        return {str(k): int(v) for k, v in self._admin("GET", "stats").items()}

    def reset(self) -> None:
        """Undo set_failure/set_config and zero stats; keys, users, clients and sessions stay."""
        self._admin("POST", "reset", {})


# -- pytest fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def idp() -> Iterator[TestIdP]:
    """One IdP for the whole run. Tests that break it (faults, TTLs) get `reset()` afterwards
    from `idp_clean`, or use `fresh_idp` when they rotate keys or need an empty session store."""
    with TestIdP() as server:
        yield server


@pytest.fixture
def idp_clean(idp: TestIdP) -> Iterator[TestIdP]:
    """The shared IdP with runtime tweaks undone before and after the test."""
    idp.reset()
    yield idp
    idp.reset()


@pytest.fixture
def fresh_idp() -> Iterator[TestIdP]:
    """A private IdP for this test only (about a second to start)."""
    with TestIdP() as server:
        yield server


# -- browser-like sign-in ------------------------------------------------------------------------

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass
class _Form:
    attrs: dict[str, str]
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (type, name, value)
    buttons: list[tuple[str, str]] = field(default_factory=list)  # (name, value)


class _PageParser(HTMLParser):
    """Collects forms, the title and the IdP's error text from one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.title = ""
        self.error = ""
        self._in_title = False
        self._error_depth = 0
        self._open_form: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "title":
            self._in_title = True
        if self._error_depth:
            self._error_depth += 1
        elif a.get("id") == "idp-error":
            self._error_depth = 1
        if tag == "form":
            self._open_form = _Form(a)
            self.forms.append(self._open_form)
        elif tag == "input" and self._open_form is not None and a.get("name"):
            self._open_form.fields.append((a.get("type", "text"), a["name"], a.get("value", "")))
        elif tag == "button" and self._open_form is not None and a.get("name"):
            self._open_form.buttons.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag == "form":
            self._open_form = None
        if self._error_depth:
            self._error_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._error_depth:
            self.error += data


def _parse(html: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser


async def _drive(
    session: aiohttp.ClientSession,
    start_url: str,
    credentials: tuple[str, str] | None,
    ssl: SSLContext | bool,
    max_hops: int,
    stop_at: str | None,
) -> aiohttp.ClientResponse:
    url, method = start_url, "GET"
    data: dict[str, str] | None = None
    submitted_login = False
    for _ in range(max_hops):
        is_https = urlsplit(url).scheme == "https"
        resp = await session.request(
            method, url, data=data, allow_redirects=False, ssl=ssl if is_https else True
        )
        location = resp.headers.get("Location")
        if resp.status in REDIRECT_STATUSES and location:
            resp.release()
            if stop_at is not None and urljoin(url, location).startswith(stop_at):
                return resp
            url = urljoin(url, location)
            if resp.status not in (307, 308):
                method, data = "GET", None
            continue
        if "html" not in resp.headers.get("Content-Type", ""):
            return resp
        page = _parse(await resp.text())  # the body stays cached for the caller
        forms = {f.attrs.get("id", ""): f for f in page.forms}
        action_base = str(resp.url)

        if "idp-login" in forms:
            if page.error and submitted_login:
                raise AssertionError(
                    f"IdP rejected the sign-in of {credentials[0] if credentials else None!r}: "
                    f"{page.error.strip()}"
                )
            if credentials is None:
                raise AssertionError(f"IdP asks for a sign-in at {url} but no credentials given")
            form = forms["idp-login"]
            url = urljoin(action_base, form.attrs.get("action", ""))
            method = "POST"
            data = {"username": credentials[0], "password": credentials[1]}
            submitted_login = True
            continue
        if "op.logoutForm" in forms:
            form = forms["op.logoutForm"]
            url = urljoin(action_base, form.attrs.get("action", ""))
            method = "POST"
            data = {n: v for t, n, v in form.fields if t == "hidden"}
            data["logout"] = "yes"
            continue
        if page.title.strip() == "Submitting Callback" and len(page.forms) == 1:
            # oidc-provider's self-submitting form (form_post response mode, or logout without
            # a session): a browser posts it on load.
            form = page.forms[0]
            url = urljoin(action_base, form.attrs.get("action", ""))
            method = "POST"
            data = {n: v for t, n, v in form.fields if t == "hidden"}
            continue
        if page.error and "Error - test IdP" in page.title:
            raise AssertionError(f"IdP error page at {url} ({resp.status}): {page.error.strip()}")
        return resp
    raise AssertionError(f"more than {max_hops} hops starting at {start_url}; last was {url}")


async def login(
    session: aiohttp.ClientSession,
    start_url: str,
    username: str,
    password: str,
    *,
    ssl: SSLContext | bool = False,
    max_hops: int = 15,
    stop_at: str | None = None,
) -> aiohttp.ClientResponse:
    """Sign in like a browser: follow redirects from start_url, fill the IdP login form, and
    return the first response that is neither a redirect nor an IdP page (its body is already
    read and cached, so `await resp.text()` still works).

    stop_at: a URL prefix; a redirect whose target starts with it is returned unfollowed (to
    read the authorization code from `Location` without serving the redirect_uri).
    ssl: applies to https hops only (False accepts the proxy's self-signed certificate).
    The session needs ``aiohttp.CookieJar(unsafe=True)`` to keep cookies for 127.0.0.1.
    Raises AssertionError when the IdP rejects the credentials or shows an error page."""
    return await _drive(session, start_url, (username, password), ssl, max_hops, stop_at)


async def logout_confirm(
    session: aiohttp.ClientSession,
    start_url: str,
    *,
    ssl: SSLContext | bool = False,
    max_hops: int = 15,
    stop_at: str | None = None,
) -> aiohttp.ClientResponse:
    """Follow a sign-out from start_url (the proxy's logout URL or the IdP end_session URL),
    confirm the IdP's "sign out?" form, and return the first non-IdP, non-redirect response
    (usually the post_logout_redirect_uri page; pass stop_at to get that redirect instead).
    Raises AssertionError on a login form."""
    return await _drive(session, start_url, None, ssl, max_hops, stop_at)


def cookie_jar() -> aiohttp.CookieJar:
    """A cookie jar that keeps cookies for IP-address hosts such as 127.0.0.1."""
    return aiohttp.CookieJar(unsafe=True)


__all__ = [
    "ALICE",
    "BOB",
    "DEFAULT_USERS",
    "IDP_DIR",
    "MALLORY",
    "UNVERIFIED",
    "IdPError",
    "TestIdP",
    "TestUser",
    "cookie_jar",
    "ensure_node_modules",
    "fresh_idp",
    "idp",
    "idp_clean",
    "login",
    "logout_confirm",
]
