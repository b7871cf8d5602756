"""The certificate manager: which host needs what, when, and who does it.

One :class:`Autocert` per process. Its ``run`` task decides, once a second, which
wanted hosts need a certificate (none yet, renewal due, a failure's backoff over) and
starts one attempt per such host. An attempt takes the host's locks (the shared
store's, when given, then ``flock`` on the state directory), looks at the disk again
(another process may just have done the work), and only then orders.

What the handshake path reads is two dictionaries (certificates by host, pending
TLS-ALPN-01 challenges by host) and the HTTP-01 path one (key authorizations by
token); they are only changed on the event loop.

TLS-ALPN-01 has one cost Python cannot avoid: the SNI callback cannot see which ALPN
protocols a client offers, so while a TLS-ALPN-01 challenge for a host is pending
every handshake naming that host gets the challenge certificate. That is harmless
for a first certificate (there was only the self-signed one to serve) but would break
ordinary clients for a few seconds during a renewal, so renewals of a host that is
being served use HTTP-01 first when it is enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import secrets
import ssl
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import structlog
from acme import crypto_util, messages
from josepy.jwk import JWK

from proxy.autocert import _challenges as challenges
from proxy.autocert._certs import (
    Served,
    check_chain,
    load_stored,
    meta_json,
    new_key_pem,
    served_from_pem,
)
from proxy.autocert._client import (
    AcmeConversation,
    account_jwk,
    account_missing,
    describe,
    new_account_key_pem,
)
from proxy.autocert._config import (
    HTTP_01,
    LETS_ENCRYPT,
    LETS_ENCRYPT_STAGING,
    TLS_ALPN_01,
    AutocertConfig,
    AutocertError,
    normalize_host,
    refusal,
)
from proxy.autocert._storage import (
    StateDir,
    file_lock,
    read_bytes,
    read_json,
    stamp,
    write_private,
)

log = structlog.get_logger("clawgate.autocert")

StoreLock = Callable[[str, float, float], AbstractAsyncContextManager[bool]]

# How often the run loop looks at the hosts (and at once when woken).
_TICK = 1.0
# How often challenges/ is scanned for other processes' challenges; certificates
# other processes wrote are looked for every _CERT_SCAN_EVERY scans.
_CHALLENGE_SCAN = 0.2
_CERT_SCAN_EVERY = 5
# Between publishing a challenge and asking the CA to validate: every other process
# has scanned challenges/ by then, wherever the validation connection lands.
_PUBLISH_GRACE = 1.0
_VALIDATION_TIMEOUT = 90.0
_FINALIZE_TIMEOUT = 90.0
_AUTHZ_POLL = 0.5
# The shared store's lock: held at most this long (an attempt takes far less) and
# waited for this long before the attempt is postponed.
_STORE_LOCK_TTL = 600.0
_STORE_LOCK_WAIT = 30.0
_BUSY_RETRY = 30.0
# How long to wait for another process's flock: far longer than an order takes.
_FILE_LOCK_WAIT = 600.0
# When the CA publishes no renewal information (ARI), ask again after this long.
_ARI_RECHECK = dt.timedelta(hours=6)

_random = secrets.SystemRandom()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


@dataclass(frozen=True)
class HostStatus:
    host: str
    # Of the certificate being served; None when the self-signed fallback is served.
    not_after: dt.datetime | None
    renew_at: dt.datetime | None
    # The last failure, cleared on success.
    last_error: str | None
    # When a failed host is tried again.
    next_attempt: dt.datetime | None


@dataclass
class _HostState:
    failures: int = 0
    last_error: str | None = None
    next_attempt: dt.datetime | None = None
    # What the CA's renewal information (ARI) said about the served certificate.
    ari_serial: int | None = None
    ari_renew_at: dt.datetime | None = None
    ari_check_at: dt.datetime | None = None
    # A stored certificate already reported as unusable (no repeated log lines).
    bad_stamp: tuple[int, int, int] | None = None


class _ChallengeFailed(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


class _SniCallback:
    """``SSLContext.sni_callback``: switch the handshake to a challenge or a host's
    certificate; leave the base context (the self-signed fallback) otherwise."""

    def __init__(self, owner: Autocert, previous: Any) -> None:
        self.owner = owner
        self.previous = previous

    def __call__(
        self, sslobj: ssl.SSLObject, server_name: str | None, base: ssl.SSLContext
    ) -> int | None:
        try:
            if server_name:
                name = server_name.lower()
                chosen = self.owner._board.tls_alpn01.get(name)
                if chosen is None:
                    chosen = self.owner._contexts.get(name)
                if chosen is not None:
                    sslobj.context = chosen
                    return None
        except Exception:
            # A handshake must never fail because of autocert: serve the default.
            return None
        if self.previous is not None:
            result: int | None = self.previous(sslobj, server_name, base)
            return result
        return None


class Autocert:
    """Certificates from an ACME CA for the hosts clawgate serves."""

    def __init__(self, config: AutocertConfig, *, lock: StoreLock | None = None) -> None:
        self._config = config
        self._lock = lock
        self._state = StateDir(config.state_dir, config.directory_url)
        try:
            self._state.prepare()
        except OSError as exc:
            raise AutocertError(
                f"cannot use {config.state_dir} for autocert: {exc.strerror or exc}"
            ) from exc
        self._board = challenges.ChallengeBoard()
        self._served: dict[str, Served] = {}
        # The SNI map: host -> context. Only ever changed on the event loop.
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._hosts: dict[str, _HostState] = {}
        self._wanted: frozenset[str] | None = None
        self._refused: dict[str, str] = {}
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._running = False
        self._account_key_pem = read_bytes(self._state.account_key)
        self._jwk: JWK | None = None
        self._account_uri = self._stored_account_uri()
        for host in self._state.stored_hosts():
            if refusal(host) is not None:
                continue
            state = self._hosts.setdefault(host, _HostState())
            try:
                served = load_stored(self._state, host, self._state.scratch)
            except AutocertError as exc:
                state.bad_stamp = stamp(self._state.cert_file(host))
                log.error("autocert_stored_unusable", host=host, error=str(exc))
                continue
            if served is not None and not self._adopt(host, served, announce=False):
                # Reported once; the disk scan looks again only when the file changes.
                state.bad_stamp = served.stamp

    # -- the request path -------------------------------------------------------------

    def install(self, context: ssl.SSLContext) -> None:
        """Serve ACME certificates (and TLS-ALPN-01 challenges) from ``context``: its
        own certificate stays the default for every other name. An SNI callback the
        context already had is still asked for names autocert does not serve."""
        previous = context.sni_callback
        if isinstance(previous, _SniCallback) and previous.owner is self:
            return
        context.sni_callback = _SniCallback(self, previous)

    def http01(self, token: str) -> str | None:
        """The key authorization for ``GET /.well-known/acme-challenge/<token>``."""
        known = self._board.http01.get(token)
        return known if known is not None else challenges.read_http01(self._state, token)

    # -- what it is doing ---------------------------------------------------------------

    def status(self) -> list[HostStatus]:
        hosts = set(self._wanted or ()) | set(self._served)
        result: list[HostStatus] = []
        for host in sorted(hosts):
            served = self._served.get(host)
            state = self._hosts.get(host) or _HostState()
            result.append(
                HostStatus(
                    host=host,
                    not_after=served.not_after if served else None,
                    renew_at=self._renew_at(host, served) if served else None,
                    last_error=state.last_error,
                    next_attempt=state.next_attempt,
                )
            )
        return result

    @property
    def healthy(self) -> bool:
        """Every wanted host has a valid ACME certificate (False until ``run`` has
        looked at the hosts)."""
        if self._wanted is None:
            return False
        now = _now()
        return all(
            (served := self._served.get(host)) is not None and not served.expired(now)
            for host in self._wanted
        )

    def plan(self, hosts: Iterable[str]) -> list[str]:
        """What autocert would do for ``hosts``, for ``clawgate check``. No network."""
        config = self._config
        known = {LETS_ENCRYPT: " (Let's Encrypt)", LETS_ENCRYPT_STAGING: " (Let's Encrypt staging)"}
        lines = [f"ACME directory: {config.directory_url}{known.get(config.directory_url, '')}"]
        if config.email:
            lines.append(f"account e-mail: {config.email}")
        else:
            lines.append("account e-mail: none (the CA cannot warn before a certificate expires)")
        if self._account_uri:
            lines.append(f"account: {self._account_uri} (stored, reused)")
        else:
            lines.append("account: none stored yet; created (terms of service agreed) at first use")
        if config.eab_key_id:
            lines.append(f"external account binding: key id {config.eab_key_id}")
        if config.trusted_ca:
            lines.append(f"ACME server trusted through: {config.trusted_ca}")
        lines.append(f"state directory: {config.state_dir}")
        now = _now()
        seen: set[str] = set()
        for raw in hosts:
            host = normalize_host(raw)
            if host in seen:
                continue
            seen.add(host)
            why = refusal(host)
            if why is not None:
                lines.append(f"{raw}: refused: {why}; the self-signed fallback is served")
                continue
            served = self._served.get(host)
            live = served is not None and not served.expired(now)
            order = ", then ".join(_challenge_text(kind) for kind in self._challenge_order(live))
            if served is None:
                stored = "no certificate yet (self-signed fallback until one is obtained)"
            elif not live:
                stored = f"stored certificate expired {_iso(served.not_after)}; a new one is due"
            else:
                renew_at = self._renew_at(host, served)
                stored = (
                    f"certificate valid until {_iso(served.not_after)}, "
                    f"renewal from {_iso(renew_at)}"
                )
            lines.append(f"{host}: challenge {order}; {stored}")
        return lines

    # -- the work -----------------------------------------------------------------------

    async def run(self, hosts: Callable[[], Iterable[str]], wake: asyncio.Event) -> None:
        """Keep a certificate for every host ``hosts()`` names, until cancelled."""
        if self._running:
            raise RuntimeError("Autocert.run is already running")
        self._running = True
        watcher = asyncio.create_task(self._watch_disk(), name="autocert-watch")
        try:
            while True:
                wake.clear()
                try:
                    self._tick(hosts)
                except Exception as exc:
                    # The loop must outlive any one bad turn; the next one tries again.
                    log.error("autocert_loop_error", error=describe(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=_TICK)
        finally:
            self._running = False
            tasks = [watcher, *self._inflight.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._inflight.clear()
            self._board.clear_published()

    def _tick(self, hosts: Callable[[], Iterable[str]]) -> None:
        now = _now()
        for host, served in list(self._served.items()):
            if served.expired(now):
                self._drop_expired(host, served)
        wanted = self._read_hosts(hosts)
        for host in sorted(wanted):
            state = self._hosts.setdefault(host, _HostState())
            if host in self._inflight:
                continue
            work: Callable[[str], Any] | None = None
            if self._due(host, now):
                work = self._attempt
            elif self._ari_due(host, state, now):
                work = self._check_renewal_info
            if work is not None:
                task = asyncio.create_task(work(host), name=f"autocert-{host}")
                self._inflight[host] = task
                task.add_done_callback(functools.partial(self._finished, host))

    def _finished(self, host: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(host) is task:
            del self._inflight[host]

    def _read_hosts(self, hosts: Callable[[], Iterable[str]]) -> frozenset[str]:
        try:
            names = list(hosts())
        except Exception as exc:
            log.error("autocert_hosts_failed", error=describe(exc))
            return self._wanted or frozenset()
        wanted: set[str] = set()
        refused: dict[str, str] = {}
        for raw in names:
            host = normalize_host(raw)
            why = refusal(host)
            if why is None:
                wanted.add(host)
            else:
                refused[raw] = why
        for raw, why in refused.items():
            if self._refused.get(raw) != why:
                log.warning("autocert_host_refused", host=raw, reason=why)
        self._refused = refused
        self._wanted = frozenset(wanted)
        return self._wanted

    def _renew_at(self, host: str, served: Served) -> dt.datetime:
        state = self._hosts.get(host)
        renew_at = served.renew_at
        if state is not None and state.ari_serial == served.serial and state.ari_renew_at:
            renew_at = min(renew_at, state.ari_renew_at)
        return renew_at

    def _due(self, host: str, now: dt.datetime) -> bool:
        state = self._hosts.get(host)
        if state is not None and state.next_attempt is not None and now < state.next_attempt:
            return False
        served = self._served.get(host)
        return served is None or now >= self._renew_at(host, served)

    def _ari_due(self, host: str, state: _HostState, now: dt.datetime) -> bool:
        served = self._served.get(host)
        if served is None or self._account_key_pem is None:
            return False
        if state.ari_serial != served.serial:
            return True
        return state.ari_check_at is not None and now >= state.ari_check_at

    async def _attempt(self, host: str) -> None:
        try:
            if self._lock is None:
                await self._attempt_locked(host)
                return
            name = f"autocert:{self._state.account_id}:{host}"
            async with self._lock(name, _STORE_LOCK_TTL, _STORE_LOCK_WAIT) as held:
                if held:
                    await self._attempt_locked(host)
                    return
            # Held elsewhere (or the store is down): whoever holds it writes the
            # certificate where the disk scan finds it; look again later.
            state = self._hosts.setdefault(host, _HostState())
            delay = _random.uniform(_BUSY_RETRY / 2, _BUSY_RETRY)
            state.next_attempt = _now() + dt.timedelta(seconds=delay)
            log.info("autocert_lock_busy", host=host, next_attempt=_iso(state.next_attempt))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(host, exc)

    async def _attempt_locked(self, host: str) -> None:
        async with file_lock(self._state.host_lock(host), _FILE_LOCK_WAIT):
            # Another process may have renewed while this one waited for the lock.
            await self._reload(host)
            served = self._served.get(host)
            if served is not None and _now() < self._renew_at(host, served):
                self._succeeded(host)
                return
            renewing = served is not None
            chain_pem, key_pem, challenge = await self._order(host, renewing)
            new = await asyncio.to_thread(self._save, host, chain_pem, key_pem, challenge)
        self._adopt(host, new, announce=False)
        self._succeeded(host)
        log.info(
            "autocert_certificate_renewed" if renewing else "autocert_certificate_obtained",
            host=host,
            not_after=_iso(new.not_after),
            challenge=challenge,
            serial=f"{new.serial:x}",
        )

    def _save(self, host: str, chain_pem: bytes, key_pem: bytes, challenge: str) -> Served:
        directory = self._config.directory_url
        # Checked before anything is written: a wrong certificate never replaces a good one.
        check_chain(host, chain_pem, key_pem)
        self._state.save_certificate(host, chain_pem, key_pem, meta_json(directory, challenge))
        return served_from_pem(
            host,
            chain_pem,
            key_pem,
            self._state.scratch,
            file_stamp=stamp(self._state.cert_file(host)),
            directory=directory,
        )

    async def _order(self, host: str, renewing: bool) -> tuple[bytes, bytes, str]:
        kinds = self._challenge_order(renewing)
        conversation = await self._conversation()
        failures: list[str] = []
        while kinds:
            try:
                return await self._order_with(conversation, host, kinds)
            except _ChallengeFailed as exc:
                failures.append(str(exc))
                kinds.remove(exc.kind)
                log.warning(
                    "autocert_challenge_failed",
                    host=host,
                    challenge=exc.kind,
                    error=exc.reason,
                    next_challenge=kinds[0] if kinds else None,
                )
        raise AutocertError("validation failed: " + "; ".join(failures))

    def _challenge_order(self, renewing: bool) -> list[str]:
        kinds = list(self._config.enabled_challenges)
        if renewing and HTTP_01 in kinds:
            # See the module docstring: no challenge certificate on a live host.
            kinds.remove(HTTP_01)
            kinds.insert(0, HTTP_01)
        return kinds

    async def _order_with(
        self, conversation: AcmeConversation, host: str, kinds: list[str]
    ) -> tuple[bytes, bytes, str]:
        key_pem = new_key_pem()
        csr_pem = crypto_util.make_csr(key_pem, [host])
        try:
            order = await asyncio.to_thread(conversation.new_order, csr_pem)
        except messages.Error as exc:
            if not account_missing(exc):
                raise
            log.warning("autocert_account_unknown", account=self._account_uri)
            await self._register(conversation, stale=self._account_uri)
            order = await asyncio.to_thread(conversation.new_order, csr_pem)
        log.info("autocert_order_created", host=host, order=order.uri)
        used = "none (authorization still valid)"
        for authz in order.authorizations:
            status = authz.body.status
            if status == messages.STATUS_VALID:
                continue
            if status != messages.STATUS_PENDING:
                raise AutocertError(f"the CA's authorization for {host} is {status.name}")
            challenge, kind = _pick(host, authz, kinds)
            await self._validate(conversation, host, authz, challenge, kind)
            used = kind
        chain = await asyncio.to_thread(conversation.finalize, order, _FINALIZE_TIMEOUT)
        return chain.encode(), key_pem, used

    async def _validate(
        self,
        conversation: AcmeConversation,
        host: str,
        authz: messages.AuthorizationResource,
        challenge: messages.ChallengeBody,
        kind: str,
    ) -> None:
        token = str(challenge.to_partial_json().get("token", ""))
        if not challenges.valid_token(token):
            raise AutocertError("the CA sent a malformed challenge token")
        assert self._jwk is not None
        key_authorization = challenges.key_authorization(token, self._jwk)
        state = self._state
        if kind == HTTP_01:
            await asyncio.to_thread(challenges.publish_http01, state, token, key_authorization)
            self._board.add_http01(token, key_authorization)
        else:
            context = await asyncio.to_thread(
                challenges.publish_tls_alpn01, state, host, key_authorization
            )
            self._board.add_tls_alpn01(host, context)
        try:
            await asyncio.sleep(_PUBLISH_GRACE)
            await asyncio.to_thread(conversation.answer, challenge)
            deadline = time.monotonic() + _VALIDATION_TIMEOUT
            while True:
                await asyncio.sleep(_AUTHZ_POLL)
                authz = await asyncio.to_thread(conversation.poll, authz)
                if authz.body.status != messages.STATUS_PENDING:
                    break
                if time.monotonic() > deadline:
                    raise AutocertError(
                        f"the CA did not validate {kind} within {_VALIDATION_TIMEOUT:.0f} s"
                    )
            if authz.body.status != messages.STATUS_VALID:
                raise _ChallengeFailed(kind, _authz_error(authz))
        finally:
            # Synchronous on purpose: also runs when the task is being cancelled.
            if kind == HTTP_01:
                challenges.withdraw_http01(state, token)
                self._board.remove_http01(token)
            else:
                challenges.withdraw_tls_alpn01(state, host)
                self._board.remove_tls_alpn01(host)

    async def _conversation(self) -> AcmeConversation:
        jwk = await self._account_key()
        conversation = await asyncio.to_thread(AcmeConversation, self._config, jwk)
        if self._account_uri is None:
            await self._register(conversation, stale=None)
        else:
            conversation.use_account(self._account_uri)
        return conversation

    async def _account_key(self) -> JWK:
        if self._account_key_pem is None:
            async with file_lock(self._state.account_lock, _FILE_LOCK_WAIT):
                # Another process may have made it while this one waited.
                key_pem = await asyncio.to_thread(read_bytes, self._state.account_key)
                if key_pem is None:
                    key_pem = new_account_key_pem()
                    await asyncio.to_thread(write_private, self._state.account_key, key_pem)
                    log.info("autocert_account_key_created", directory=self._config.directory_url)
                self._account_key_pem = key_pem
        if self._jwk is None:
            self._jwk = account_jwk(self._account_key_pem)
        return self._jwk

    async def _register(self, conversation: AcmeConversation, stale: str | None) -> None:
        async with file_lock(self._state.account_lock, _FILE_LOCK_WAIT):
            stored = await asyncio.to_thread(self._stored_account_uri)
            if stored is not None and stored != stale:
                # Registered by another process meanwhile.
                conversation.use_account(stored)
                self._account_uri = stored
                return
            uri = await asyncio.to_thread(conversation.register)
            record = {
                "directory": self._config.directory_url,
                "uri": uri,
                "contact": self._config.email,
                "eab_key_id": self._config.eab_key_id,
                "created": _iso(_now()),
            }
            await asyncio.to_thread(write_private, self._state.account_json, _json_bytes(record))
        self._account_uri = uri
        log.info(
            "autocert_account_registered",
            account=uri,
            directory=self._config.directory_url,
            email=self._config.email,
            replaces=stale,
        )

    def _stored_account_uri(self) -> str | None:
        record = read_json(self._state.account_json)
        if record is None or record.get("directory") != self._config.directory_url:
            return None
        uri = record.get("uri")
        return uri if isinstance(uri, str) and uri else None

    async def _check_renewal_info(self, host: str) -> None:
        """Ask the CA's renewal information (ARI) whether to renew early."""
        served = self._served.get(host)
        state = self._hosts.setdefault(host, _HostState())
        if served is None:
            return
        state.ari_serial = served.serial
        state.ari_renew_at = None
        try:
            jwk = await self._account_key()
            conversation = await asyncio.to_thread(AcmeConversation, self._config, jwk)
            if not conversation.has_renewal_info:
                state.ari_check_at = _now() + _ARI_RECHECK
                return
            renew_at, ask_again = await asyncio.to_thread(
                conversation.renewal_window, served.chain_pem
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Only an optimisation: the 2/3 rule stands without it.
            state.ari_check_at = _now() + dt.timedelta(hours=1)
            log.info("autocert_renewal_info_failed", host=host, error=describe(exc))
            return
        state.ari_renew_at = renew_at
        state.ari_check_at = max(ask_again, _now() + dt.timedelta(minutes=1))
        if renew_at is not None and renew_at < served.renew_at:
            log.info("autocert_renewal_info", host=host, renew_at=_iso(renew_at))

    # -- state changes ------------------------------------------------------------------

    def _adopt(self, host: str, served: Served, *, announce: bool) -> bool:
        """Serve ``served`` for ``host`` if it is usable and not older than the current
        one; whether it is served."""
        if served.directory != self._config.directory_url:
            # E.g. a staging certificate after switching to production: get a real one.
            log.info(
                "autocert_stored_from_other_ca",
                host=host,
                directory=served.directory,
                detail="not served; a certificate from the configured CA will be obtained",
            )
            return False
        now = _now()
        if served.expired(now):
            log.error(
                "autocert_certificate_expired",
                host=host,
                not_after=_iso(served.not_after),
                detail="not served; the self-signed fallback is served until a new one",
            )
            return False
        current = self._served.get(host)
        if current is not None and served.not_after < current.not_after:
            return False
        self._served[host] = served
        # New handshakes take the new context; established connections keep theirs.
        self._contexts[host] = served.context
        if announce and (current is None or current.serial != served.serial):
            log.info(
                "autocert_certificate_loaded",
                host=host,
                not_after=_iso(served.not_after),
                serial=f"{served.serial:x}",
            )
        if now < self._renew_at(host, served):
            self._succeeded(host)
        return True

    def _drop_expired(self, host: str, served: Served) -> None:
        self._served.pop(host, None)
        self._contexts.pop(host, None)
        log.error(
            "autocert_certificate_expired",
            host=host,
            not_after=_iso(served.not_after),
            detail="the self-signed fallback is served until a new one is obtained",
        )

    def _succeeded(self, host: str) -> None:
        state = self._hosts.setdefault(host, _HostState())
        state.failures = 0
        state.last_error = None
        state.next_attempt = None

    def _failed(self, host: str, exc: BaseException) -> None:
        state = self._hosts.setdefault(host, _HostState())
        state.failures += 1
        config = self._config
        delay = min(config.retry_max, config.retry_min * 2 ** min(state.failures - 1, 30))
        # Jitter downwards: replicas that failed together do not retry together.
        delay *= _random.uniform(0.75, 1.0)
        state.last_error = describe(exc)
        state.next_attempt = _now() + dt.timedelta(seconds=delay)
        served = self._served.get(host)
        log.error(
            "autocert_failed",
            host=host,
            error=state.last_error,
            attempt=state.failures,
            next_attempt=_iso(state.next_attempt),
            serving=(
                f"the ACME certificate valid until {_iso(served.not_after)}"
                if served
                else "the self-signed fallback"
            ),
        )

    # -- other processes ----------------------------------------------------------------

    async def _watch_disk(self) -> None:
        scans = 0
        while True:
            try:
                published = await asyncio.to_thread(
                    challenges.read_published, self._state, self._board.known_tls_alpn01
                )
                self._board.update(published)
                if scans % _CERT_SCAN_EVERY == 0:
                    await self._scan_certificates()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("autocert_scan_failed", error=describe(exc))
            scans += 1
            await asyncio.sleep(_CHALLENGE_SCAN)

    async def _scan_certificates(self) -> None:
        served_hosts = list(self._served)

        def stamps() -> dict[str, tuple[int, int, int] | None]:
            hosts = set(self._state.stored_hosts()) | set(served_hosts)
            return {host: stamp(self._state.cert_file(host)) for host in hosts}

        for host, file_stamp in (await asyncio.to_thread(stamps)).items():
            # A host this process is working on is re-read under its lock instead.
            if host in self._inflight or file_stamp is None or refusal(host) is not None:
                continue
            served = self._served.get(host)
            if served is not None and served.stamp == file_stamp:
                continue
            await self._reload(host)

    async def _reload(self, host: str) -> None:
        state = self._hosts.setdefault(host, _HostState())
        file_stamp = await asyncio.to_thread(stamp, self._state.cert_file(host))
        served = self._served.get(host)
        if (
            file_stamp is None
            or file_stamp == state.bad_stamp
            or (served is not None and served.stamp == file_stamp)
        ):
            return
        try:
            loaded = await asyncio.to_thread(load_stored, self._state, host, self._state.scratch)
        except AutocertError as exc:
            # Possibly caught mid-replacement: the next change of the file is looked
            # at again; one log line per file.
            state.bad_stamp = file_stamp
            log.warning("autocert_stored_unusable", host=host, error=str(exc))
            return
        if loaded is not None and not self._adopt(host, loaded, announce=True):
            state.bad_stamp = file_stamp


def _pick(
    host: str, authz: messages.AuthorizationResource, kinds: list[str]
) -> tuple[messages.ChallengeBody, str]:
    offered: dict[str, messages.ChallengeBody] = {}
    for challenge in authz.body.challenges:
        kind = str(challenge.to_partial_json().get("type", ""))
        offered.setdefault(kind, challenge)
    for kind in kinds:
        if kind in offered:
            return offered[kind], kind
    raise AutocertError(
        f"the CA offers none of the enabled challenges ({', '.join(kinds)}) for {host}; "
        f"it offers {', '.join(sorted(offered)) or 'none'}"
    )


def _authz_error(authz: messages.AuthorizationResource) -> str:
    for challenge in authz.body.challenges:
        if challenge.error is not None:
            return describe(challenge.error)
    return f"the authorization is {authz.body.status.name}"


def _challenge_text(kind: str) -> str:
    if kind == TLS_ALPN_01:
        return "tls-alpn-01 (on the TLS listener)"
    return "http-01 (on the plain-HTTP listener)"


def _json_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=2).encode()
