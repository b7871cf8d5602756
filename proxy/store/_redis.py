"""The ``redis`` store: shared state for every replica naming the same Redis and prefix.

Key layout (``P`` is the prefix, e.g. ``clawgate:``; several deployments can share one
Redis under different prefixes):

- ``P revocations``: sorted set of the revocations recorded, member the revocation as
  compact JSON, score its ``until``; those past it are pruned every minute and never
  delivered.
- ``P revocation:index``: hash, ``["kind","subject"]`` -> that kind and subject's member
  of the set, so that a newer revocation replaces the older one (one script changes
  both, keeping the later ``not_before`` and ``until``).
- ``P events``: stream, one entry (field ``r``, the member) per revocation recorded, for
  live delivery; capped at about 10000 entries.
- ``P admitted``: pub/sub channel, what each replica admitted under the rate limits.
- ``P once:<key>``, ``P kv:<key>``, ``P lock:<name>``: single-use keys, kept values and
  locks, each expiring by itself.

Each replica follows the stream in a background task. On (re)connecting it notes where
the stream ends, then loads the set, then reads the stream from the noted point: a
revocation recorded while it was away comes from the set, one recorded while it loads
comes (again) from the stream, and none is missed.

Redis is never waited on for long: sockets time out after a second, every public call
has a deadline, and any failure is a :class:`StoreError` that names the server by
host and port only (never the password or the connection string).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, get_args
from urllib.parse import parse_qsl, quote, unquote

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.store import (
    CountsHandler,
    Revocation,
    RevocationHandler,
    RevocationKind,
    StoreError,
)

log = structlog.get_logger("clawgate.store")

CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 1.0
# A whole public call, one reconnection included.
DEADLINE = 1.5
# How long the follower waits for new events per read: how soon it notices aclose()
# or a dead server.
BLOCK = 1.0
RETRY_FIRST = 0.1
RETRY_MAX = 1.0
STREAM_MAX = 10000
PRUNE_EVERY = 60.0
_READ_COUNT = 500

# What a report from another replica may hold at most (an honest one holds what one
# replica admitted in a fraction of a second, far less).
_MAX_MESSAGE = 4 * 1024 * 1024
_MAX_SCOPES = 16
_MAX_SCOPE_CHARS = 64
_MAX_KEY_CHARS = 4096
_MAX_COUNT = 1_000_000

_KINDS: frozenset[str] = frozenset(get_args(RevocationKind))

# KEYS: set, index, stream. ARGV: index field, member, stream cap. Returns the member
# recorded: the newer revocation, widened by the older one of the same kind and subject.
_RECORD = """
local member = ARGV[2]
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  redis.call('ZREM', KEYS[1], old)
  local was, new = cjson.decode(old), cjson.decode(member)
  if was['not_before'] > new['not_before'] or was['until'] > new['until'] then
    new['not_before'] = math.max(was['not_before'], new['not_before'])
    new['until'] = math.max(was['until'], new['until'])
    member = cjson.encode(new)
  end
end
redis.call('ZADD', KEYS[1], cjson.decode(member)['until'], member)
redis.call('HSET', KEYS[2], ARGV[1], member)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'r', member)
return member
"""

# KEYS: set, index. ARGV: now. Drops the past revocations and their index entries.
_PRUNE = """
local pruned = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if pruned > 0 then
  local index = redis.call('HGETALL', KEYS[2])
  for i = 1, #index, 2 do
    if not redis.call('ZSCORE', KEYS[1], index[i + 1]) then
      redis.call('HDEL', KEYS[2], index[i])
    end
  end
end
return pruned
"""

_FAILURES = (RedisError, OSError, TimeoutError)


class RedisStore:
    """:class:`proxy.store.Store` on one Redis (directly or through Sentinel)."""

    def __init__(self, connection_string: str, *, prefix: str) -> None:
        self._target = parse_connection_string(connection_string)
        self._prefix = prefix
        self._instance = secrets.token_hex(8)
        self._sentinel, self._redis = _client(self._target, COMMAND_TIMEOUT, retries=1)
        # Blocking reads need a socket timeout beyond their block, and no retry: the
        # follower reconnects by itself, and says so through ``healthy``.
        _, self._follower = _client(
            self._target, BLOCK + COMMAND_TIMEOUT, retries=0, sentinel=self._sentinel
        )
        self._record = self._redis.register_script(_RECORD)
        self._prune = self._follower.register_script(_PRUNE)
        self._on_revocation: RevocationHandler | None = None
        self._on_counts: CountsHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._healthy = False
        self._said_down = False
        self._closed = False

    @property
    def backend(self) -> str:
        return "redis"

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def start(self, on_revocation: RevocationHandler, on_counts: CountsHandler) -> None:
        if self._tasks or self._closed:
            return
        self._on_revocation, self._on_counts = on_revocation, on_counts
        self._tasks = [
            asyncio.create_task(self._follow_revocations(), name="store-revocations"),
            asyncio.create_task(self._follow_counts(), name="store-counts"),
        ]

    async def revoke(self, revocation: Revocation) -> None:
        keys = [self._key("revocations"), self._key("revocation:index"), self._key("events")]
        index = _compact([revocation.kind, revocation.subject])
        async with self._deadline("revoke"):
            member = await self._record(keys=keys, args=[index, _encode(revocation), STREAM_MAX])
        # At once here; the stream brings it to every replica, this one again.
        self._deliver(member)

    async def revocations(self) -> list[Revocation]:
        async with self._deadline("revocations"):
            members = await self._in_force(self._redis)
        return [r for r in map(_decode, members) if r is not None]

    async def charge(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        # Reports lost make limits lenient, never strict: not worth waiting on a
        # server known to be down.
        if not self._healthy:
            return
        message = _counts_message(self._instance, counts)
        if message is None:
            return
        with contextlib.suppress(*_FAILURES):
            async with asyncio.timeout(DEADLINE):
                await self._redis.publish(self._key("admitted"), message)

    async def consume_once(self, key: str, ttl: float) -> bool:
        async with self._deadline("consume_once"):
            first = await self._redis.set(self._key(f"once:{key}"), b"1", nx=True, px=_ms(ttl))
        return bool(first)

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        async with self._deadline("put"):
            await self._redis.set(self._key(f"kv:{key}"), value, px=_ms(ttl))

    async def get(self, key: str) -> bytes | None:
        async with self._deadline("get"):
            value = await self._redis.get(self._key(f"kv:{key}"))
        return value if isinstance(value, bytes) else None

    def lock(self, name: str, ttl: float, wait: float) -> AbstractAsyncContextManager[bool]:
        return self._hold(name, ttl, wait)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending, self._tasks = set(self._tasks), []
        while pending:
            # Again until they are done: redis-py can lose a cancellation (its
            # asyncio.wait_for, on Python 3.11, when a send completes as it lands).
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        self._healthy = False
        clients = [self._redis, self._follower]
        if self._sentinel is not None:
            clients += self._sentinel.sentinels
        for client in clients:
            with contextlib.suppress(*_FAILURES):
                await client.aclose()

    # -- the follower of revocations

    async def _follow_revocations(self) -> None:
        delay = RETRY_FIRST
        while not self._closed:
            try:
                await self._catch_up_and_follow()
            except _FAILURES as exc:
                if self._healthy:
                    delay = RETRY_FIRST
                self._healthy = False
                if not self._said_down:
                    self._said_down = True
                    log.warning(
                        "store_unreachable", redis=self._target.where, error=self._describe(exc)
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _catch_up_and_follow(self) -> None:
        redis = self._follower
        async with asyncio.timeout(DEADLINE * 2):
            last = await redis.xrevrange(self._key("events"), count=1)
            cursor = last[0][0] if last and last[0][0] else "0-0"
            members = await self._in_force(redis)
        for member in members:
            self._deliver(member)
        self._healthy, self._said_down = True, False
        log.info("store_connected", redis=self._target.where)
        pruned = time.monotonic()
        while not self._closed:
            if time.monotonic() - pruned >= PRUNE_EVERY:
                pruned = time.monotonic()
                async with asyncio.timeout(DEADLINE):
                    keys = [self._key("revocations"), self._key("revocation:index")]
                    await self._prune(keys=keys, args=[time.time()])
            async with asyncio.timeout(BLOCK + DEADLINE):
                # RESP2: [[stream, [(id, {field: value}), ...]]], or None when idle.
                reply: Any = await redis.xread(
                    {self._key("events"): cursor}, count=_READ_COUNT, block=int(BLOCK * 1000)
                )
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    cursor = entry_id
                    if b"r" in fields:
                        self._deliver(fields[b"r"])

    async def _in_force(self, redis: Redis) -> list[bytes]:
        members = await redis.zrangebyscore(self._key("revocations"), f"({time.time()}", "+inf")
        return [m for m in members if isinstance(m, bytes)]

    def _deliver(self, member: object) -> None:
        revocation = _decode(member)
        if revocation is None:
            log.warning("store_revocation_ignored", reason="malformed")
            return
        if revocation.until <= time.time() or self._on_revocation is None:
            return
        try:
            self._on_revocation(revocation)
        except Exception:
            log.exception("store_handler_failed", handler="on_revocation")

    # -- the subscriber to counts

    async def _follow_counts(self) -> None:
        delay = RETRY_FIRST
        while not self._closed:
            pubsub = self._follower.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(DEADLINE):
                    await pubsub.subscribe(self._key("admitted"))
                delay = RETRY_FIRST
                while not self._closed:
                    message = await pubsub.get_message(timeout=BLOCK)
                    if message is not None and message.get("type") == "message":
                        self._receive_counts(message.get("data"))
            except _FAILURES:
                pass  # the revocation follower says when the server is unreachable
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _receive_counts(self, data: object) -> None:
        try:
            sender, counts = _parse_counts(data)
        except ValueError as exc:
            log.warning("store_message_ignored", channel=self._key("admitted"), reason=str(exc))
            return
        if sender == self._instance or self._on_counts is None:
            return
        for scope, by_key in counts.items():
            try:
                self._on_counts(scope, by_key)
            except Exception:
                log.exception("store_handler_failed", handler="on_counts")

    # -- plumbing

    def _key(self, name: str) -> str:
        return self._prefix + name

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(DEADLINE):
                yield
        except _FAILURES as exc:
            raise StoreError(
                f"redis at {self._target.where}: {what} failed: {self._describe(exc)}"
            ) from None

    @contextlib.asynccontextmanager
    async def _hold(self, name: str, ttl: float, wait: float) -> AsyncIterator[bool]:
        lock = self._redis.lock(
            self._key(f"lock:{name}"),
            timeout=max(ttl, 0.001),  # none would be a lock that never expires
            sleep=0.05,
            blocking_timeout=wait,
            thread_local=False,
        )
        try:
            async with asyncio.timeout(wait + DEADLINE):
                held = await lock.acquire()
        except _FAILURES:
            held = False
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            # Losing a release costs at most ``ttl``: the key expires by itself.
            with contextlib.suppress(*_FAILURES):
                async with asyncio.timeout(DEADLINE):
                    await lock.release()

    def _describe(self, exc: BaseException) -> str:
        text = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else "")
        for secret in self._target.secrets():
            text = text.replace(secret, "***")
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- connection strings

_SCHEMES: dict[str, tuple[bool, bool]] = {  # scheme: (TLS, through Sentinel)
    "redis": (False, False),
    "rediss": (True, False),
    "redis+sentinel": (False, True),
    "rediss+sentinel": (True, True),
}
_HOST = re.compile(r"[A-Za-z0-9._-]+")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+")


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError


def _cert_reqs(value: str) -> str:
    if value not in ("none", "optional", "required"):
        raise ValueError
    return value


def _natural(value: str) -> int:
    if not value.isdigit():
        raise ValueError
    return int(value)


# The query parameters understood (as redis.asyncio.from_url reads them); timeouts are
# not among them: the store's deadlines are what keeps requests from hanging.
_OPTIONS: dict[str, Callable[[str], object]] = {
    "db": _natural,
    "client_name": str,
    "health_check_interval": _natural,
    "max_connections": _natural,
    "socket_keepalive": _boolean,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_check_hostname": _boolean,
}


@dataclass(frozen=True)
class Target:
    """Where a connection string points, and how to connect."""

    tls: bool
    hosts: tuple[tuple[str, int], ...]
    service: str | None  # the Sentinel service name; None: hosts[0] is the server
    db: int
    username: str | None
    password: str | None = field(repr=False)
    options: Mapping[str, object] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.hosts)

    def secrets(self) -> Iterator[str]:
        if self.password:
            yield self.password
            yield quote(self.password, safe="")


def parse_connection_string(connection_string: str) -> Target:
    """``redis://[[user]:password@]host:port[/db]``, ``rediss://`` (TLS), and
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`` (or
    ``rediss+sentinel://``). Errors say what is wrong without quoting the string, any
    part of which may be a misplaced piece of the password."""
    scheme, sep, rest = connection_string.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(
            "a redis connection string starts with redis://, rediss://, "
            "redis+sentinel:// or rediss+sentinel://"
        )
    tls, sentinel = _SCHEMES[scheme.lower()]
    if "#" in rest:
        raise ValueError("a redis connection string has no #fragment (percent-encode '#')")
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, at, hostlist = authority.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    hosts = tuple(_host_port(part, 26379 if sentinel else 6379) for part in hostlist.split(","))
    if len(hosts) > 1 and not sentinel:
        raise ValueError("only redis+sentinel:// connection strings name several hosts")
    segments = [unquote(s) for s in path.split("/")] if path else []
    if segments and not segments[-1]:
        segments.pop()  # a trailing slash
    service = None
    if sentinel:
        if not segments or not segments[0]:
            raise ValueError("a redis+sentinel:// connection string needs /service_name")
        service = segments.pop(0)
    if len(segments) > 1:
        raise ValueError("a redis connection string's path is at most /db")
    options = _options(query, tls)
    db = options.pop("db", None)  # as with from_url, the query's wins over the path's
    if not isinstance(db, int):
        try:
            db = _natural(segments[0]) if segments else 0
        except ValueError:
            raise ValueError("a redis connection string's database must be a number") from None
    return Target(tls, hosts, service, db, username, password, options)


def _host_port(part: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6 address][:port]``."""
    if part.startswith("["):
        host, bracket, rest = part[1:].partition("]")
        pattern, (colon, port) = _IPV6, (rest[:1], rest[1:])
        well_formed = bool(bracket) and colon in ("", ":")
    else:
        host, _, port = part.partition(":")
        pattern, well_formed = _HOST, True
    if not well_formed or not pattern.fullmatch(host):
        raise ValueError(
            "a redis connection string's host is missing or malformed "
            "(percent-encode special characters in the user name and password)"
        )
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("a redis connection string's port must be a number from 1 to 65535")
    return host, int(port)


def _options(query: str, tls: bool) -> dict[str, object]:
    options: dict[str, object] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parse = _OPTIONS.get(name)
        if parse is None:
            known = ", ".join(_OPTIONS)
            raise ValueError(f"a redis connection string has an unknown option (known: {known})")
        if name.startswith("ssl_") and not tls:
            raise ValueError(f"the redis connection string's {name} needs rediss://")
        try:
            options[name] = parse(value)
        except ValueError:
            raise ValueError(f"the redis connection string's {name} is not valid") from None
    return options


def _client(
    target: Target, read_timeout: float, *, retries: int, sentinel: Sentinel | None = None
) -> tuple[Sentinel | None, Redis]:
    """A client (and the Sentinel it goes through, if any) with the store's timeouts."""
    common: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": read_timeout,
        "retry": Retry(NoBackoff(), retries),
        # The reply shapes this module reads (and servers or proxies without HELLO).
        "protocol": 2,
        **target.options,
    }
    if target.tls:
        common["ssl"] = True
    auth: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }
    if target.service is None:
        host, port = target.hosts[0]
        return None, Redis(host=host, port=port, **auth, **common)
    if sentinel is None:
        # Sentinels get the same TLS settings, not the credentials: those are the
        # server's (a sentinel with no password refuses AUTH).
        on_sentinels = {k: v for k, v in common.items() if k != "max_connections"}
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=on_sentinels)
    return sentinel, sentinel.master_for(target.service, **auth, **common)


# -- what is stored and published


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _encode(revocation: Revocation) -> str:
    return _compact(
        {
            "kind": revocation.kind,
            "subject": revocation.subject,
            "not_before": revocation.not_before,
            "until": revocation.until,
        }
    )


def _decode(member: object) -> Revocation | None:
    if not isinstance(member, bytes | str):
        return None
    try:
        doc = json.loads(member)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    kind, subject = doc.get("kind"), doc.get("subject")
    not_before, until = _whole(doc.get("not_before")), _whole(doc.get("until"))
    if kind not in _KINDS or not isinstance(subject, str) or None in (not_before, until):
        return None
    return Revocation(kind, subject, int(not_before or 0), int(until or 0))


def _whole(value: object) -> int | None:
    """An integer, also as Lua's cjson may write it back (a float with no fraction)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _counts_message(instance: str, counts: Mapping[str, Mapping[str, int]]) -> bytes | None:
    """What :func:`_parse_counts` accepts: entries it would refuse are left out here, so
    that one odd key does not cost the whole report."""
    checked = {
        scope: {
            key: n
            for key, n in by_key.items()
            if len(key) <= _MAX_KEY_CHARS and 0 < n <= _MAX_COUNT
        }
        for scope, by_key in counts.items()
        if len(scope) <= _MAX_SCOPE_CHARS
    }
    checked = {scope: by_key for scope, by_key in checked.items() if by_key}
    if not checked or len(checked) > _MAX_SCOPES:
        return None
    message = _compact({"from": instance, "counts": checked}).encode()
    return message if len(message) <= _MAX_MESSAGE else None


def _parse_counts(data: object) -> tuple[str, dict[str, dict[str, int]]]:
    """``(sender, {scope: {key: count}})`` of a report, checked whole: one bad entry
    and none of it is charged."""
    if not isinstance(data, bytes) or len(data) > _MAX_MESSAGE:
        raise ValueError("not a report")
    doc = json.loads(data)  # its errors are ValueErrors
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    sender, counts = doc.get("from"), doc.get("counts")
    if not isinstance(sender, str) or not isinstance(counts, dict) or len(counts) > _MAX_SCOPES:
        raise ValueError("no sender or counts")
    for scope, by_key in counts.items():
        if len(scope) > _MAX_SCOPE_CHARS or not isinstance(by_key, dict):
            raise ValueError("bad scope")
        for key, n in by_key.items():
            if len(key) > _MAX_KEY_CHARS or type(n) is not int or not 0 < n <= _MAX_COUNT:
                raise ValueError("bad count")
    return sender, counts


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
