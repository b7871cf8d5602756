"""Route matching: which route of the configuration a request belongs to.

A route is selected by the ``Host`` header, then optionally by the (normalized) path. The first
route in file order that matches wins. Host names compare case-insensitively; a ``from`` of
``https://*.example.com`` matches exactly one extra leftmost label (``a.example.com``, not
``example.com`` nor ``a.b.example.com``), like a TLS wildcard certificate.

Ports: a ``from`` without a port matches a ``Host`` without a port or with ``:443``; a ``from``
with a port matches only a ``Host`` carrying that same port. A ``Host`` header that is not a
plain host name or IP literal (empty, with ``/``, ``@``, spaces, a bad port...) never matches.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from policy.paths import UnsafePathError, normalize_path

__all__ = ["RouteMatcher", "RouteTable", "parse_from", "parse_host_header", "rewrite_path"]

T = TypeVar("T")

DEFAULT_PORT = 443
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _ascii_lower(value: str) -> str:
    # str.lower() maps some non-ASCII letters onto ASCII ones (KELVIN SIGN -> "k"); only
    # ASCII is folded so a look-alike name can never compare equal to a configured one.
    return value.lower() if value.isascii() else value


def _valid_dns_name(host: str) -> bool:
    if not host or len(host) > 253 or not host.isascii():
        return False
    return all(_LABEL.fullmatch(label) for label in host.split("."))


def _canonical_host(host: str, *, allow_wildcard: bool) -> str | None:
    """Lower-cased host name or canonical IP text, or ``None`` when it is not valid."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            return None
    host = _ascii_lower(host)
    if allow_wildcard and host.startswith("*."):
        return host if _valid_dns_name(host[2:]) else None
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    return host if _valid_dns_name(host) else None


def _parse_port(text: str) -> int | None:
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def parse_from(url: str) -> tuple[str, int | None]:
    """Parse a route's ``from`` URL into ``(host, port)``.

    Only ``https://host[:port]`` (optionally with a trailing ``/``) is accepted; the host may
    be ``*.`` followed by a domain. A port of 443 is the default and is returned as ``None``.
    Raises :class:`ValueError` with a message naming the problem.
    """
    if not isinstance(url, str):
        raise ValueError("from must be a string URL like https://app.example.com")
    if any(ch.isspace() for ch in url):
        raise ValueError(f"from {url!r} contains whitespace")
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ValueError(f"from {url!r} must use the https scheme")
    if "@" in parts.netloc:
        raise ValueError(f"from {url!r} must not contain user information")
    if parts.path not in ("", "/"):
        raise ValueError(f"from {url!r} must not contain a path (use path/prefix/regex)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"from {url!r} must not contain a query or fragment")
    host_text, port_text = _split_host_port(parts.netloc)
    if host_text is None:
        raise ValueError(f"from {url!r} has no valid host")
    host = _canonical_host(host_text, allow_wildcard=True)
    if host is None:
        raise ValueError(f"from {url!r} has an invalid host {host_text!r}")
    port: int | None = None
    if port_text is not None:
        port = _parse_port(port_text)
        if port is None:
            raise ValueError(f"from {url!r} has an invalid port {port_text!r}")
    return host, (None if port == DEFAULT_PORT else port)


def _split_host_port(netloc: str) -> tuple[str | None, str | None]:
    if not netloc:
        return None, None
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            return None, None
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            return None, None
        return host, rest[1:]
    host, sep, port = netloc.partition(":")
    if not host or ":" in port:
        return None, None
    return host, (port if sep else None)


def parse_host_header(value: str) -> tuple[str, int | None] | None:
    """Parse a ``Host`` header into ``(host, port)``; ``None`` when it is not valid.

    A port of 443 is returned as ``None`` so it compares equal to a ``from`` without a port.
    Wildcards are never valid here.
    """
    if not value or len(value) > 300:
        return None
    host_text, port_text = _split_host_port(value)
    if host_text is None:
        return None
    host = _canonical_host(host_text, allow_wildcard=False)
    if host is None:
        return None
    port: int | None = None
    if port_text is not None:
        port = _parse_port(port_text)
        if port is None:
            return None
    return host, (None if port == DEFAULT_PORT else port)


def _check_route_path(kind: str, value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"{kind} {value!r} must start with '/'")
    try:
        canonical = normalize_path(value)
    except UnsafePathError as exc:
        raise ValueError(f"{kind} {value!r} is not a valid path: {exc}") from None
    if canonical != value:
        # Requests are normalized before matching, so a non-canonical value could never match.
        raise ValueError(f"{kind} {value!r} is not normalized; write {canonical!r}")


@dataclass(frozen=True, slots=True)
class RouteMatcher:
    """Matches a request by host (exact or ``*.`` wildcard), port, then at most one of
    ``path`` (exact), ``prefix`` (plain string prefix) or ``regex`` (anchored at both ends)."""

    host: str
    port: int | None = None
    path: str | None = None
    prefix: str | None = None
    regex: str | None = None
    _compiled: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Validation lives here (not only in create) so a directly constructed matcher can
        # never silently ignore its regex or carry a host that no request could match.
        if _canonical_host(self.host, allow_wildcard=True) != self.host and not (
            ":" in self.host
            and _canonical_host(f"[{self.host}]", allow_wildcard=False) == self.host
        ):
            raise ValueError(f"host {self.host!r} is not a canonical lower-case host name")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")
        if self.port == DEFAULT_PORT:
            raise ValueError("port 443 is the default; use None")
        given = [
            name
            for name, value in (("path", self.path), ("prefix", self.prefix), ("regex", self.regex))
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"use at most one of path, prefix, regex (got {', '.join(given)})")
        for name in given:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        if self.path is not None:
            _check_route_path("path", self.path)
        if self.prefix is not None:
            _check_route_path("prefix", self.prefix)
        if self.regex is not None:
            try:
                compiled = re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex {self.regex!r} is invalid: {exc}") from None
            object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def create(
        cls,
        from_url: str,
        *,
        path: str | None = None,
        prefix: str | None = None,
        regex: str | None = None,
    ) -> RouteMatcher:
        """Build a matcher from a route's ``from`` URL and path options; raises ``ValueError``."""
        host, port = parse_from(from_url)
        return cls(host, port, path=path, prefix=prefix, regex=regex)

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*.")

    def matches_host(self, host: str, port: int | None) -> bool:
        """``host``/``port`` as returned by :func:`parse_host_header`."""
        if port != self.port:
            return False
        if self.is_wildcard:
            label, dot, parent = host.partition(".")
            return bool(label) and bool(dot) and parent == self.host[2:]
        return host == self.host

    def matches_path(self, path: str) -> bool:
        """``path`` must be normalized (see :func:`policy.paths.normalize_path`)."""
        if self.path is not None:
            return path == self.path
        if self.prefix is not None:
            return path.startswith(self.prefix)
        if self._compiled is not None:
            return self._compiled.fullmatch(path) is not None
        return True

    def matches(self, host_header: str, path: str) -> bool:
        parsed = parse_host_header(host_header)
        if parsed is None:
            return False
        return self.matches_host(*parsed) and self.matches_path(path)


class RouteTable(Generic[T]):
    """Routes in file order; :meth:`match` returns the value of the first matching route.

    Routes are indexed by host so a lookup only looks at routes for that host (and its
    wildcard parent), keeping the cost independent of the total number of routes.
    """

    __slots__ = ("_exact", "_wild")

    def __init__(self, routes: Iterable[tuple[RouteMatcher, T]]) -> None:
        self._exact: dict[tuple[str, int | None], list[tuple[int, RouteMatcher, T]]] = {}
        self._wild: dict[tuple[str, int | None], list[tuple[int, RouteMatcher, T]]] = {}
        for index, (matcher, value) in enumerate(routes):
            if matcher.is_wildcard:
                key = (matcher.host[2:], matcher.port)
                self._wild.setdefault(key, []).append((index, matcher, value))
            else:
                self._exact.setdefault((matcher.host, matcher.port), []).append(
                    (index, matcher, value)
                )

    def match(self, host_header: str, path: str) -> T | None:
        """Value of the first route matching the ``Host`` header and normalized path."""
        parsed = parse_host_header(host_header)
        if parsed is None:
            return None
        host, port = parsed
        exact = self._exact.get((host, port), [])
        label, dot, parent = host.partition(".")
        wild = self._wild.get((parent, port), []) if label and dot else []
        # File order across exact and wildcard routes; merging only when both exist.
        candidates: Iterable[tuple[int, RouteMatcher, T]] = (
            heapq.merge(exact, wild, key=lambda entry: entry[0])
            if exact and wild
            else exact or wild
        )
        for _, matcher, value in candidates:
            if matcher.matches_path(path):
                return value
        return None


def rewrite_path(path: str, prefix: str, prefix_rewrite: str) -> str:
    """Replace the matched ``prefix`` of ``path`` by ``prefix_rewrite``.

    Raises :class:`ValueError` when ``path`` does not start with ``prefix``. The result always
    starts with a single ``/`` (a ``//`` start would read as a scheme-relative URL to some
    upstreams), and a slash is not doubled where the two parts meet.
    """
    if not path.startswith(prefix):
        raise ValueError(f"path does not start with prefix {prefix!r}")
    rest = path[len(prefix) :]
    if prefix_rewrite.endswith("/") and rest.startswith("/"):
        rest = rest[1:]
    result = prefix_rewrite + rest
    if not result.startswith("/"):
        result = "/" + result
    while result.startswith("//"):
        result = result[1:]
    return result
