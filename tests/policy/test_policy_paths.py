"""Path normalization: canonical spelling, refusal of ambiguous paths, no prefix bypasses."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policy.model import RequestFacts
from policy.parse import compile_route_policy
from policy.paths import UnsafePathError, normalize_path
from tests.policy.policy_fixtures import NOON_MONDAY

NORMALIZED = [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/admin/../x", "/x"),
    ("/a/%2e%2e/admin", "/admin"),
    ("/a/%2E./admin", "/admin"),
    ("/a/.%2e/admin", "/admin"),
    ("/a/%2e/admin", "/a/admin"),
    ("//admin", "/admin"),
    ("///admin//users", "/admin/users"),
    ("/Admin", "/Admin"),
    ("/%61dmin", "/admin"),
    ("/%7euser", "/~user"),
    ("/a%2db%5fc", "/a-b_c"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/a%20b", "/a%20b"),
    ("/a/./b/.", "/a/b/"),
    ("/a/b/", "/a/b/"),
    ("/a/b//", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/a/b/%2e", "/a/b/"),
    ("/a;b/c", "/a;b/c"),
    ("/a|b", "/a%7Cb"),
    ("/a{b}^", "/a%7Bb%7D%5E"),
    ("/%25", "/%25"),
    ("/%252e%252e/x", "/%252e%252e/x"),
    ("/x/:@!$&'()*+,=", "/x/:@!$&'()*+,="),
    ("/.well-known/x", "/.well-known/x"),
    ("/a/..b/c..", "/a/..b/c.."),
]

UNSAFE = [
    "",
    "a/b",
    "*",
    "http://x/a",
    "/..",
    "/%2e%2e/",
    "/a/../..",
    "/a/%2E%2E/%2e%2e/x",
    "/admin%2fx",
    "/admin%2Fx",
    "/a%5cb",
    "/a\\b",
    "/a%00b",
    "/a\x00b",
    "/a\tb",
    "/a\nb",
    "/a%7f",
    "/a%1F",
    "/a%zz",
    "/a%",
    "/a%4",
    "/a b",
    "/a?b",
    "/a#b",
    "/café",
    "/a/..;/admin",
    "/a/.;x/b",
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZED)
def test_normalized(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected
    assert normalize_path(expected) == expected


@pytest.mark.parametrize("raw", UNSAFE)
def test_unsafe(raw: str) -> None:
    with pytest.raises(UnsafePathError):
        normalize_path(raw)


def test_unsafe_path_error_is_value_error() -> None:
    assert issubclass(UnsafePathError, ValueError)


# ---------------------------------------------------------------- properties

PIECES = [
    "admin",
    "Admin",
    "ADMIN",
    "adm",
    "%61dmin",
    "%41dmin",
    "x",
    "",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2e.",
    "...",
    "..;",
    ";x",
    "%2f",
    "%2F",
    "%5c",
    "\\",
    "%",
    "%zz",
    "%25",
    "%252e",
    "a%20b",
    "%C3%A9",
    "~",
    "|",
]
segment = st.one_of(
    st.sampled_from(PIECES),
    st.text(alphabet="adminADMIN.%2eEf5c/\\;~-_|", max_size=5),
)
raw_paths = st.builds(
    lambda lead, segs: lead + "/".join(segs),
    st.sampled_from(["/", "//", "/./", "/%2e/", "", "x/"]),
    st.lists(segment, max_size=7),
)


def upstream_view(raw: str) -> str:
    """How a lenient upstream might read a raw path: decode every escape (slashes included),
    treat backslash as slash, resolve dot segments (clamped at the root), collapse slashes."""
    decoded = unquote(raw, errors="replace").replace("\\", "/")
    stack: list[str] = []
    for seg in decoded.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if stack:
                stack.pop()
            continue
        stack.append(seg)
    return "/" + "/".join(stack)


def under_admin(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


DENY_ADMIN = compile_route_policy(
    {
        "policy": [
            {"allow": {"or": [{"accept": True}]}},
            {"deny": {"or": [{"http_path": {"starts_with": "/admin"}}]}},
        ]
    }
)
_ALLOWED_OUT = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-F]{2})*")


@settings(max_examples=600, deadline=None)
@given(raw_paths)
@example("/admin/../x")
@example("/x/%2e%2e/admin")
@example("//admin")
def test_normalize_is_idempotent_and_canonical(raw: str) -> None:
    try:
        once = normalize_path(raw)
    except UnsafePathError:
        return
    assert normalize_path(once) == once
    assert once.startswith("/")
    assert "//" not in once
    segments = once.split("/")[1:]
    assert "." not in segments
    assert ".." not in segments
    assert _ALLOWED_OUT.fullmatch(once), once


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=20))
def test_normalize_on_arbitrary_text(raw: str) -> None:
    try:
        once = normalize_path(raw)
    except UnsafePathError:
        return
    assert normalize_path(once) == once
    assert _ALLOWED_OUT.fullmatch(once), once


@settings(max_examples=800, deadline=None)
@given(raw_paths)
@example("/x/..%2fadmin")
@example("/x/%2e%2e/admin/")
@example("/%61dmin")
@example("/x/..;/admin")
def test_no_prefix_deny_bypass(raw: str) -> None:
    """A path that a lenient upstream would read as /admin... is refused or denied."""
    try:
        path = normalize_path(raw)
    except UnsafePathError:
        return
    # The normalized path means the same thing to the upstream as the raw one did ...
    assert upstream_view(path) == upstream_view(raw)
    decision = DENY_ADMIN.decide(RequestFacts("GET", path, "192.0.2.1", NOON_MONDAY), None)
    # ... so if the upstream would serve /admin, the policy saw /admin too and denied it.
    if under_admin(upstream_view(raw)):
        assert under_admin(path)
        assert not decision.allow
    assert decision.allow is not path.startswith("/admin")
