"""Route matching: from URLs, Host headers, ports, wildcards, path/prefix/regex, order."""

from __future__ import annotations

import pytest

from policy.routes import (
    RouteMatcher,
    RouteTable,
    parse_from,
    parse_host_header,
    rewrite_path,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://app.example.com", ("app.example.com", None)),
        ("https://App.Example.COM/", ("app.example.com", None)),
        ("HTTPS://app.example.com", ("app.example.com", None)),
        ("https://app.example.com:443", ("app.example.com", None)),
        ("https://app.example.com:8443", ("app.example.com", 8443)),
        ("https://*.example.com", ("*.example.com", None)),
        ("https://*.localhost:8443", ("*.localhost", 8443)),
        ("https://127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("https://[::1]:8443", ("::1", 8443)),
        ("https://localhost", ("localhost", None)),
    ],
)
def test_parse_from(url: str, expected: tuple[str, int | None]) -> None:
    assert parse_from(url) == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://app.example.com", "https scheme"),
        ("app.example.com", "https scheme"),
        ("https://user@app.example.com", "user information"),
        ("https://user:pw@app.example.com", "user information"),
        ("https://app.example.com/path", "must not contain a path"),
        ("https://app.example.com?x=1", "query"),
        ("https://app.example.com#f", "query or fragment"),
        ("https://app.example.com:0", "invalid port"),
        ("https://app.example.com:65536", "invalid port"),
        ("https://app.example.com:http", "invalid port"),
        ("https://", "no valid host"),
        ("https://app_x.example.com", "invalid host"),
        ("https://a.*.example.com", "invalid host"),
        ("https://*example.com", "invalid host"),
        ("https://app .example.com", "whitespace"),
        ("https://-bad.example.com", "invalid host"),
    ],
)
def test_parse_from_errors(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_from(url)


def test_parse_from_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="string URL"):
        parse_from(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("app.example.com", ("app.example.com", None)),
        ("APP.example.com:443", ("app.example.com", None)),
        ("app.example.com:8443", ("app.example.com", 8443)),
        ("[::1]:8443", ("::1", 8443)),
        ("[0:0::1]", ("::1", None)),
        ("", None),
        ("app.example.com/x", None),
        ("user@app.example.com", None),
        ("app example.com", None),
        (" app.example.com", None),
        ("app.example.com:", None),
        ("app.example.com:99999", None),
        ("app.example.com:-1", None),
        ("app.example.com:1:2", None),
        ("[::1", None),
        ("*.example.com", None),
        ("app.example.com.", None),
        ("app.ex\u212aample.com", None),
    ],
)
def test_parse_host_header(header: str, expected: tuple[str, int | None] | None) -> None:
    assert parse_host_header(header) == expected


def test_ports() -> None:
    plain = RouteMatcher.create("https://app.example.com")
    assert plain.matches("app.example.com", "/")
    assert plain.matches("app.example.com:443", "/")
    assert not plain.matches("app.example.com:8443", "/")
    custom = RouteMatcher.create("https://app.example.com:8443")
    assert custom.matches("app.example.com:8443", "/")
    assert not custom.matches("app.example.com", "/")
    assert not custom.matches("app.example.com:443", "/")


def test_wildcard_is_one_label() -> None:
    wild = RouteMatcher.create("https://*.example.com")
    assert wild.matches("a.example.com", "/")
    assert wild.matches("A.EXAMPLE.com:443", "/")
    assert not wild.matches("example.com", "/")
    assert not wild.matches("a.b.example.com", "/")
    assert not wild.matches("aexample.com", "/")
    assert not wild.matches("a.example.com.evil.net", "/")


@pytest.mark.parametrize(
    ("kind", "value", "path", "expected"),
    [
        ("path", "/health", "/health", True),
        ("path", "/health", "/health/", False),
        ("path", "/health", "/Health", False),
        ("prefix", "/api/", "/api/v1", True),
        ("prefix", "/api/", "/api", False),
        ("prefix", "/api", "/apix", True),  # plain string prefix, like Pomerium and Envoy
        ("regex", "/api/v[0-9]+", "/api/v12", True),
        ("regex", "/api/v[0-9]+", "/api/v1/x", False),
        ("regex", "/api/v[0-9]+", "/x/api/v1", False),
        ("regex", "/(a|b)", "/b", True),
    ],
)
def test_path_matching(kind: str, value: str, path: str, expected: bool) -> None:
    matcher = RouteMatcher.create("https://app.example.com", **{kind: value})
    assert matcher.matches("app.example.com", path) is expected


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"path": "/a", "prefix": "/b"}, "at most one"),
        ({"prefix": "/a", "regex": "/b"}, "at most one"),
        ({"regex": "("}, "invalid"),
        ({"prefix": "api/"}, "start with '/'"),
        ({"prefix": "/a/../b"}, "not normalized"),
        ({"path": "/%61"}, "write '/a'"),
        ({"path": ""}, "non-empty"),
    ],
)
def test_matcher_errors(options: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        RouteMatcher.create("https://app.example.com", **options)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="invalid"):
        RouteMatcher("app.example.com", regex="(")
    with pytest.raises(ValueError, match="canonical"):
        RouteMatcher("App.example.com")
    with pytest.raises(ValueError, match="default"):
        RouteMatcher("app.example.com", 443)
    assert RouteMatcher("app.example.com", regex="/x").matches("app.example.com", "/x")
    assert not RouteMatcher("app.example.com", regex="/x").matches("app.example.com", "/y")


def test_table_first_match_in_file_order() -> None:
    table: RouteTable[str] = RouteTable(
        [
            (RouteMatcher.create("https://app.example.com", prefix="/api/"), "api"),
            (RouteMatcher.create("https://*.example.com", prefix="/api/v2/"), "wild-v2"),
            (RouteMatcher.create("https://app.example.com"), "app"),
            (RouteMatcher.create("https://*.example.com"), "wild"),
            (RouteMatcher.create("https://app.example.com:8443"), "app-8443"),
            (RouteMatcher.create("https://other.test", path="/only"), "only"),
        ]
    )
    assert table.match("app.example.com", "/api/v2/x") == "api"
    assert table.match("app.example.com", "/") == "app"
    assert table.match("b.example.com", "/api/v2/x") == "wild-v2"
    assert table.match("b.example.com", "/") == "wild"
    assert table.match("app.example.com:8443", "/") == "app-8443"
    assert table.match("app.example.com:9443", "/") is None
    assert table.match("other.test", "/only") == "only"
    assert table.match("other.test", "/else") is None
    assert table.match("unknown.test", "/") is None
    assert table.match("app.example.com/evil", "/") is None
    assert table.match("", "/") is None


def test_wildcard_before_exact_wins_when_first() -> None:
    table: RouteTable[int] = RouteTable(
        [
            (RouteMatcher.create("https://*.example.com"), 1),
            (RouteMatcher.create("https://app.example.com"), 2),
        ]
    )
    assert table.match("app.example.com", "/") == 1


@pytest.mark.parametrize(
    ("path", "prefix", "rewrite", "expected"),
    [
        ("/app/x", "/app", "/", "/x"),
        ("/app/x", "/app/", "/", "/x"),
        ("/app/x", "/app/", "/v1/", "/v1/x"),
        ("/app/x", "/app", "/v1", "/v1/x"),
        ("/app", "/app", "/", "/"),
        ("/app", "/app", "", "/"),
        ("/app/x", "/app/", "", "/x"),
        ("/app//x", "/app/", "/", "/x"),
    ],
)
def test_rewrite_path(path: str, prefix: str, rewrite: str, expected: str) -> None:
    assert rewrite_path(path, prefix, rewrite) == expected


def test_rewrite_path_needs_matching_prefix() -> None:
    with pytest.raises(ValueError, match="does not start"):
        rewrite_path("/other", "/app", "/")
