"""Building and running the server: apps, listeners, config reload, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from proxy import metrics, pages, revoke_request
from proxy.client_auth import load_private_key
from proxy.connlimit import (
    MAX_FIELD_SIZE,
    MAX_LINE_SIZE,
    Guard,
    GuardedHandler,
    GuardedSite,
    Limits,
    framing_refusal,
)
from proxy.forward import defer_continue
from proxy.front import FRONTS, Front
from proxy.handler import handle
from proxy.logging import configure as configure_logging
from proxy.oidc import OidcClient, OidcError
from proxy.peers import PEERS_ENV, Peers
from proxy.policy_watch import reauthorize_connections
from proxy.readiness import UpstreamProbe, upstream_targets
from proxy.requestid import request_id
from proxy.runtime import REQUEST_ID, ROUTE_NAME, RUNTIME, USER, Runtime
from proxy.settings import (
    ConfigError,
    Settings,
    load_settings,
    parse_listen_address,
    unknown_environment,
)
from proxy.shared_state import SHARED, SharedState
from proxy.snapshot import HSTS, Snapshot, build_snapshot, changed_restart_keys, side_file
from proxy.ssh_gate import loggable_path
from proxy.store import open_store
from proxy.throttle import THROTTLE, Throttle, ip_refusal
from proxy.tls import CertificateStore
from proxy.websocket import GOING_AWAY
from proxy.workers import supervise, worker_index

if TYPE_CHECKING:
    from proxy.autocert import Autocert
    from proxy.ssh import SshDoor

log = structlog.get_logger("clawgate.server")


@web.middleware
async def access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Outermost (and only) middleware: request id, one access-log line, a page for
    anything unexpected; inside it the framing check (proxy/connlimit.py) and the per-IP
    rate limit (proxy/throttle.py), called directly rather than as middlewares of their
    own to save two coroutine layers per request."""
    runtime: Runtime = request.app[RUNTIME]
    rid = request_id(request.headers, runtime.snapshot.settings.xff_num_trusted_hops > 0)
    request[REQUEST_ID] = rid
    # Every log line written while this request runs carries its id (tasks it starts too).
    bound = structlog.contextvars.bind_contextvars(request_id=rid)
    start = time.perf_counter()
    status = 500
    try:
        refused = framing_refusal(request)
        if refused is None:
            refused = ip_refusal(request)
        response = refused if refused is not None else await handler(request)
        status = response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", rid)
            # clawgate's own responses (pages, redirects, JSON): HSTS like proxied ones, and
            # no server version for scanners.
            if runtime.secure:
                response.headers.setdefault("Strict-Transport-Security", HSTS)
            response.headers.setdefault("Server", "clawgate")
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers.setdefault("X-Request-Id", rid)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499
        raise
    except Exception:
        # The trace goes to the log only; the client gets a plain page with the id.
        log.exception("unhandled_error", request_id=rid, path=loggable_path(request.path))
        return pages.error(
            request,
            500,
            "Internal error",
            "Something went wrong in clawgate.",
            error_code="internal_error",
            request_id=rid,
        )
    finally:
        elapsed = time.perf_counter() - start
        route = request.get(ROUTE_NAME)
        log.info(
            "access",
            method=request.method,
            host=request.host,
            path=loggable_path(request.path),
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            user=request.get(USER),
            route=route,
        )
        metrics.observe_request(route, status, elapsed)
        structlog.contextvars.reset_contextvars(**bound)


def build_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[access_log],
        client_max_size=0,
        handler_args={
            "max_field_size": MAX_FIELD_SIZE,
            "max_line_size": MAX_LINE_SIZE,
            # Request bodies are forwarded as received: inflating a Content-Encoding
            # here would send the upstream other bytes than the client's framing said.
            "auto_decompress": False,
        },
    )
    app[RUNTIME] = runtime
    app[THROTTLE] = Throttle()
    # Counts go through the store when it reaches other machines; between the
    # workers of one machine (proxy/peers.py) otherwise.
    app[SHARED] = SharedState(
        runtime,
        app[THROTTLE],
        share_counts=runtime.snapshot.settings.databroker_storage_type != "memory",
    )
    app[FRONTS] = []
    app.router.add_route("*", "/{tail:.*}", handle, expect_handler=defer_continue)

    async def on_shutdown(app: web.Application) -> None:
        runtime.draining = True
        drain = runtime.snapshot.settings.shutdown_timeout
        # Both at once: in-flight responses finish while WebSockets are told to go away.
        await asyncio.gather(
            runtime.registry.close_all(GOING_AWAY, "server shutting down"),
            *(front.shutdown(drain) for front in app[FRONTS]),
        )

    app.on_shutdown.append(on_shutdown)
    return app


ACME_CHALLENGE = "/.well-known/acme-challenge/"


def redirect_app(
    runtime: Runtime, http01: Callable[[str], str | None] | None = None
) -> web.Application:
    """Plain HTTP listener that only sends people to https (and answers /ping, and the
    ACME CA's HTTP-01 challenges when autocert is on: ``http01`` maps a token to its
    key authorization).

    The target is the matching route's own origin (its ``from`` URL), never the port
    clawgate happens to listen on inside a container, and never a host with no route.
    """

    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path == "/ping":
            return web.Response(text="OK")
        if http01 is not None and request.path.startswith(ACME_CHALLENGE):
            answer = http01(request.path[len(ACME_CHALLENGE) :])
            if answer is None:
                return web.Response(status=404, text="no such challenge")
            return web.Response(text=answer, content_type="text/plain")
        name = request.host.lower()
        name = name.rsplit(":", 1)[0] if not name.endswith("]") else name
        for route in runtime.snapshot.routes:
            if route.matcher.matches_host(name, route.matcher.port):
                origin = route.origin
                if route.matcher.is_wildcard:
                    port = route.matcher.port
                    origin = f"https://{name}" + (f":{port}" if port else "")
                return pages.redirect(f"{origin}{request.raw_path}", status=301)
        return pages.error(
            request, 404, "Not found", "No route matches this address.", error_code="no_route"
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def health_app(
    runtime: Runtime, shared: SharedState | None = None, autocert: Autocert | None = None
) -> web.Application:
    probe = UpstreamProbe()

    async def revoke(request: web.Request) -> web.Response:
        """``clawgate sessions revoke`` with the memory store (proxy/revoke_request.py)."""
        settings = runtime.snapshot.settings
        try:
            revocation = revoke_request.read(
                await request.content.read(4097),
                request.headers.get(revoke_request.SIGNATURE_HEADER, ""),
                [s.get_secret_value() for s in settings.cookie_secret],
                int(time.time()),
            )
        except revoke_request.RevokeRequestError as exc:
            log.warning("sessions_revoke_refused", reason=str(exc))
            return web.json_response({"error": str(exc)}, status=403)
        if shared is None:
            return web.json_response({"error": "not serving"}, status=503)
        await shared.sign_out(revocation)
        log.info("sessions_revoked", kind=revocation.kind)
        return web.json_response({"status": "signed out"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = []
        if runtime.oidc is not None and not runtime.oidc.ready:
            try:
                await runtime.oidc.metadata()
            except OidcError as exc:
                problems.append(f"idp: {exc.reason}")
        routes = runtime.snapshot.routes
        problems += await probe.problems(upstream_targets(r.upstream for r in routes))
        if runtime.draining:
            problems.append("draining")
        # A replica without its store still serves the sessions it knows and refuses
        # new sign-ins (their state could be replayed): reported, but not a reason to
        # take every replica out of the load balancer at once.
        store_up = runtime.store.healthy
        # Likewise a certificate the CA has not (re)issued: the last good one, or the
        # self-signed fallback, is still served while autocert retries.
        certificates = autocert_report(autocert)
        degraded = not store_up or (autocert is not None and not autocert.healthy)
        body: dict[str, Any] = {
            "status": "not_ready" if problems else ("degraded" if degraded else "ok"),
            "problems": problems,
            "store": {"backend": runtime.store.backend, "reachable": store_up},
            "config_generation": runtime.reload.in_force_generation,
            "config_on_disk_in_force": runtime.reload.disk_matches,
            "config_error": runtime.reload.last_error,
            "needs_restart": list(runtime.reload.needs_restart),
        }
        if certificates is not None:
            body["autocert"] = certificates
        return web.json_response(body, status=200 if not problems else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post(revoke_request.PATH, revoke)
    return app


def autocert_report(autocert: Autocert | None) -> list[dict[str, Any]] | None:
    """Each autocert host's certificate, for /readyz (times as ISO 8601, UTC)."""
    if autocert is None:
        return None

    def when(value: datetime.datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return [
        {
            "host": status.host,
            "not_after": when(status.not_after),
            "renew_at": when(status.renew_at),
            "last_error": status.last_error,
            "next_attempt": when(status.next_attempt),
        }
        for status in autocert.status()
    ]


def make_oidc(settings: Settings, http: aiohttp.ClientSession) -> OidcClient | None:
    if not settings.idp_provider_url or not settings.idp_client_id:
        return None
    secret = settings.idp_client_secret.get_secret_value() if settings.idp_client_secret else ""
    key_file = settings.idp_client_private_key_file
    return OidcClient(
        http,
        issuer=settings.idp_provider_url,
        client_id=settings.idp_client_id,
        client_secret=secret,
        scopes=settings.idp_scopes,
        request_params=settings.idp_request_params,
        leeway=settings.idp_clock_leeway,
        timeout=settings.idp_timeout,
        auth_method=settings.idp_token_endpoint_auth_method,
        private_key=load_private_key(key_file) if key_file is not None else None,
    )


def instrument_oidc(oidc: OidcClient) -> OidcClient:
    """Count session refreshes (success and failure) without touching the OIDC client."""
    original = oidc.refresh

    async def refresh(*args: Any, **kwargs: Any) -> Any:
        try:
            result = await original(*args, **kwargs)
        except OidcError:
            metrics.session_refresh(False)
            raise
        metrics.session_refresh(True)
        return result

    setattr(oidc, "refresh", refresh)  # noqa: B010 - instance override on purpose
    return oidc


def new_http_client(trace: list[aiohttp.TraceConfig] | None = None) -> aiohttp.ClientSession:
    # DummyCookieJar: a shared jar would replay one user's upstream cookies for another.
    connector = aiohttp.TCPConnector(
        limit=0, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=30
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        trust_env=False,
        trace_configs=trace,
    )


def _hosts_for_cert(snapshot: Snapshot) -> list[str]:
    hosts = {r.matcher.host.lstrip("*.") for r in snapshot.routes} | {"localhost", "127.0.0.1"}
    return sorted(h for h in hosts if h)


class ConfigWatcher:
    """Polls the config file; applies route/policy changes, keeps the last good config."""

    def __init__(
        self,
        runtime: Runtime,
        path: Path,
        interval: float = 1.0,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        self._runtime = runtime
        self._path = path
        self._interval = interval
        self._on_reload = on_reload
        self._digest = self._read_digest()

    def _read_digest(self) -> str | None:
        """The config file's and the files it names that the CLI writes (API keys,
        local users): a change to any of them is a reload."""
        try:
            digest = hashlib.sha256(self._path.read_bytes())
        except OSError:
            return None
        settings = self._runtime.snapshot.settings
        for named in (settings.api_keys_file, settings.htpasswd_file):
            path = side_file(str(self._path), named)
            if path is None:
                continue
            try:
                digest.update(b"\0" + hashlib.sha256(path.read_bytes()).digest())
            except OSError:
                digest.update(b"\0missing")
        return digest.hexdigest()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            seen = self._digest
            await self.check()
            if self._digest != seen:  # the file changed: this was a reload attempt
                state = self._runtime
                metrics.config_reload(state.reload.last_error is None, state.snapshot.generation)

    async def check(self) -> None:
        digest = self._read_digest()
        if digest == self._digest:
            return
        self._digest = digest
        runtime = self._runtime
        old = runtime.snapshot
        try:
            settings, located = load_settings(self._path)
            new = build_snapshot(
                settings, located, str(self._path), keys=old.keys, generation=old.generation + 1
            )
        except ConfigError as exc:
            runtime.reload.disk_matches = False
            runtime.reload.last_error = str(exc)
            log.error(
                "config_reload_failed",
                problems=exc.problems,
                detail="the last good configuration stays in force",
            )
            return
        except Exception as exc:
            runtime.reload.disk_matches = False
            runtime.reload.last_error = f"{self._path}: unreadable ({type(exc).__name__})"
            log.error(
                "config_reload_failed",
                problems=[runtime.reload.last_error],
                detail="the last good configuration stays in force",
            )
            return
        if not new.routes and old.routes:
            # An empty or truncated file (a half-finished write, `> config.yaml`) parses as
            # a config with no routes; taking it would turn every request into a 404.
            runtime.reload.disk_matches = False
            runtime.reload.last_error = f"{self._path}: no routes; refusing to drop them all"
            log.error(
                "config_reload_failed",
                problems=[runtime.reload.last_error],
                detail="the last good configuration stays in force",
            )
            return
        restart = changed_restart_keys(old.settings, new.settings)
        if restart:
            log.warning(
                "config_needs_restart",
                keys=list(restart),
                detail="listener, identity provider and secret changes apply after a restart",
            )
            # Keep everything that cannot change while running as it is.
            new = build_snapshot(
                new.settings.model_copy(update={k: getattr(old.settings, k) for k in restart}),
                located,
                str(self._path),
                keys=old.keys,
                generation=old.generation + 1,
            )
        runtime.snapshot = new
        runtime.reload.in_force_generation = new.generation
        runtime.reload.disk_matches = not restart
        runtime.reload.last_error = None
        runtime.reload.needs_restart = restart
        log.info("config_reloaded", generation=new.generation, routes=len(new.routes))
        if self._on_reload is not None:
            self._on_reload()  # e.g. autocert looks at the route hosts again
        await reauthorize_connections(runtime)


async def serve(
    config_path: Path,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``); then drain and return.

    With ``workers`` above 1 the top-level process (the one that owns the signals)
    supervises that many worker processes instead (proxy/workers.py).
    """
    settings, located = load_settings(config_path)
    configure_logging(settings.log_level, settings.log_format)
    snapshot = build_snapshot(settings, located, str(config_path))
    worker = worker_index()
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=worker)
    elif settings.workers > 1 and install_signals:
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await supervise(
            config_path, settings, _hosts_for_cert(snapshot), settings.workers, stop, ready
        )
        return
    first = worker in (None, 0)  # health and metrics listeners: one per instance
    if snapshot.keys.ephemeral_cookie_secret:
        log.warning(
            "cookie_secret_generated",
            detail="no cookie_secret configured: sessions "
            "end at restart and replicas cannot share them. Set one (clawgate secret).",
        )
    if snapshot.keys.ephemeral_signing_key:
        log.warning(
            "signing_key_generated",
            detail="no signing_key configured: the identity "
            "assertion key changes at restart; replicas must share one (clawgate keygen).",
        )
    if settings.insecure_server:
        log.warning(
            "insecure_server",
            detail="serving plain HTTP: only safe behind a TLS-terminating load balancer",
        )
    if settings.experimental_fast_upstream:
        log.warning(
            "setting_ignored",
            key="experimental_fast_upstream",
            detail="both request paths now use the lean upstream client; the key can be deleted.",
        )
    unknown = unknown_environment(os.environ)
    if unknown:
        log.warning(
            "environment_variables_unknown",
            names=unknown,
            detail="these CLAWGATE_* variables name no setting and are ignored "
            "(a misspelt secret falls back to the file or to a generated value)",
        )
    if settings.ignored_pomerium_keys():
        log.warning(
            "pomerium_keys_ignored",
            keys=settings.ignored_pomerium_keys(),
            detail="these Pomerium keys have no meaning in clawgate (each route host has "
            "its own /.clawgate/callback); they can be deleted",
        )
    # The identity provider gets its own client so its calls can be counted apart.
    idp_http = new_http_client(trace=[metrics.idp_trace()])
    oidc = make_oidc(settings, idp_http)
    runtime = Runtime(snapshot=snapshot, oidc=instrument_oidc(oidc) if oidc is not None else None)
    metrics.CONFIG_GENERATION.set(snapshot.generation)
    peers = _join_peers(runtime)
    runtime.store = open_store(
        settings.databroker_storage_type,
        _secret(settings.databroker_storage_connection_string),
        prefix=settings.databroker_storage_key_prefix,
        shared_dir=runtime.shared_dir,
    )
    shared: SharedState | None = None
    certs = (
        None
        if settings.insecure_server
        else CertificateStore(
            settings.certificate_file, settings.certificate_key_file, _hosts_for_cert(snapshot)
        )
    )
    autocert = None
    if certs is not None and settings.autocert:
        from proxy.certificates import start_autocert

        autocert = start_autocert(runtime, certs.context)
    autocert_wake = asyncio.Event()
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []
    door: SshDoor | None = None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT) if install_signals else ():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        main = web.AppRunner(
            build_app(runtime),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=settings.shutdown_timeout,
            keepalive_timeout=settings.timeout_idle,
        )
        await main.setup()
        runners.append(main)
        host, port = parse_listen_address(settings.address)
        guard = Guard(lambda: connection_limits(runtime))
        app = main.app
        if peers is not None and settings.databroker_storage_type == "memory":
            peers.share_limits(app[THROTTLE])
        shared = app[SHARED]
        await shared.start()

        def front(fallback: Callable[[], GuardedHandler]) -> Front | None:
            if not settings.fast_path:
                return None
            made = Front(
                runtime,
                app[THROTTLE],
                guard,
                fallback,
                scheme="http" if settings.insecure_server else "https",
            )
            app[FRONTS].append(made)
            return made

        site = GuardedSite(
            main,
            host or None,
            port,
            guard=guard,
            front=front,
            ssl_context=certs.context if certs else None,
            reuse_port=settings.workers > 1,
            backlog=1024,
        )
        await site.start()
        bound = _bound_port(site) or port
        log.info(
            "listening",
            address=f"{host or '*'}:{bound}",
            scheme="http" if settings.insecure_server else "https",
            routes=[r.name for r in snapshot.routes],
        )
        if settings.http_redirect_addr:
            r_host, r_port = parse_listen_address(settings.http_redirect_addr)
            redirect = web.AppRunner(
                redirect_app(runtime, autocert.http01 if autocert is not None else None),
                access_log=None,
                handle_signals=False,
            )
            await redirect.setup()
            runners.append(redirect)
            await web.TCPSite(
                redirect, r_host or None, r_port, reuse_port=settings.workers > 1
            ).start()
        if settings.health_address and first:
            h_host, h_port = parse_listen_address(settings.health_address)
            health = web.AppRunner(
                health_app(runtime, shared, autocert), access_log=None, handle_signals=False
            )
            await health.setup()
            runners.append(health)
            await web.TCPSite(health, h_host or None, h_port).start()
        if settings.metrics_address and first:
            m_host, m_port = parse_listen_address(settings.metrics_address)
            exporter = web.AppRunner(metrics.metrics_app(), access_log=None, handle_signals=False)
            await exporter.setup()
            runners.append(exporter)
            await web.TCPSite(exporter, m_host or None, m_port).start()
            log.info("metrics_listening", address=settings.metrics_address)
        if settings.ssh_address and first:
            from proxy.ssh_gate import open_door, report_metrics

            door = await open_door(runtime, str(config_path))
            tasks.append(asyncio.create_task(report_metrics(door)))
        watcher = ConfigWatcher(runtime, config_path, on_reload=autocert_wake.set)
        tasks.append(asyncio.create_task(watcher.run()))
        if autocert is not None:
            from proxy.certificates import autocert_hosts, report_expiry

            def hosts() -> list[str]:  # the snapshot in force at each look
                return autocert_hosts(runtime.snapshot)

            tasks.append(asyncio.create_task(autocert.run(hosts, autocert_wake)))
            tasks.append(asyncio.create_task(report_expiry(autocert)))
        tasks.append(asyncio.create_task(_session_sweeper(runtime, shared)))
        if certs is not None:
            tasks.append(asyncio.create_task(certs.watch()))
        if runtime.oidc is not None:
            tasks.append(asyncio.create_task(_warm_idp(runtime.oidc)))
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting_down", drain_seconds=settings.shutdown_timeout)
    finally:
        runtime.draining = True
        for task in tasks:
            task.cancel()
        if door is not None:
            await door.close()
        for runner in runners:
            await runner.cleanup()
        runtime.links.close()
        await idp_http.close()
        if shared is not None:
            await shared.aclose()
        else:
            await runtime.store.aclose()
        if peers is not None:
            peers.close()
        log.info("stopped")


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _join_peers(runtime: Runtime) -> Peers | None:
    """Supervised workers tell each other about sign-outs and rate-limit admissions
    (proxy/peers.py)."""
    index = worker_index()
    directory = os.environ.get(PEERS_ENV)
    if index is None or not directory:
        return None
    peers = Peers(runtime, Path(directory), index)
    peers.start()
    runtime.shared_dir = Path(directory)
    return peers


def connection_limits(runtime: Runtime) -> Limits:
    """The connection limits of the configuration in force (asked for on every request;
    made with the snapshot)."""
    return runtime.snapshot.limits


def _bound_port(site: web.TCPSite) -> int | None:
    server = site._server  # aiohttp keeps the asyncio server here
    sockets = getattr(server, "sockets", None) or []
    for sock in sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    return None


async def _warm_idp(oidc: OidcClient) -> None:
    """Load discovery at start so the first sign-in is fast; retry quietly until it works."""
    delay = 1.0
    while True:
        try:
            await oidc.metadata()
            log.info("idp_discovery_loaded", issuer=oidc.issuer)
            return
        except OidcError as exc:
            log.warning("idp_discovery_failed", reason=exc.reason, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)


async def _session_sweeper(
    runtime: Runtime, shared: SharedState, interval: float = 1.0, every: int = 5
) -> None:
    """Each ``interval``: open WebSockets against revocations and their verdicts'
    validity, and sign-outs the store missed written again; every ``every`` intervals
    also refresh due sessions and prune."""
    from proxy.policy_watch import sweep_connections, sweep_sessions

    tick = 0
    while True:
        await asyncio.sleep(interval)
        tick += 1
        metrics.STORE_UP.set(1 if runtime.store.healthy else 0)
        try:
            await shared.flush()
            await sweep_connections(runtime)
            if tick % every == 0:
                await sweep_sessions(runtime)
        except Exception:
            log.exception("session_sweep_failed")
