"""Property tests: the cookie decoder, the config and policy loaders and the path
normalizer end every input in a result or their own clean error.

The same checks back the atheris targets in fuzz/ (see docs/security.md) for long,
coverage-guided runs on demand; here hypothesis explores them on every test run.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.targets import (
    CODEC,
    COOKIE,
    check_config_text,
    check_cookie_header,
    check_path,
    check_route_policy,
    check_session_roundtrip,
)
from proxy.session import Session
from proxy.settings import ConfigError, load_settings

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

b64ish = st.text(alphabet=string.ascii_letters + string.digits + "-_.=\"; ,", max_size=600)
cookie_names = st.sampled_from([COOKIE, *(f"{COOKIE}_{i}" for i in range(1, 9)), "other",
                                f" {COOKIE}", f"{COOKIE}_login_x"])


@FAST
@given(st.lists(st.tuples(cookie_names, b64ish), max_size=10), st.text(max_size=50))
def test_cookie_headers_never_decode_to_a_session(pairs: list[tuple[str, str]],
                                                  junk: str) -> None:
    header = "; ".join(f"{k}={v}" for k, v in pairs) + junk
    check_cookie_header(header)


@FAST
@given(st.text(max_size=2000))
def test_arbitrary_cookie_text(header: str) -> None:
    check_cookie_header(header)


@FAST
@given(st.data())
def test_real_cookies_mutated_never_decode(data: st.DataObject) -> None:
    session = Session.create(sub="s", email="a@example.com", email_verified=True,
                             groups=data.draw(st.lists(st.text(max_size=40), max_size=150)),
                             claims={}, host="127.0.0.1:8443", now=1_700_000_000,
                             lifetime=3600, refresh_at=1_700_003_600, refresh_token=None,
                             id_token=None)
    check_session_roundtrip(session, "127.0.0.1:8443")
    pairs = dict(CODEC.encode(session))
    name = data.draw(st.sampled_from(sorted(pairs)))
    value = pairs[name]
    pos = data.draw(st.integers(0, len(value) - 1))
    mutated = data.draw(st.sampled_from([
        value[:pos], value[:pos] + value[pos + 1:],
        value[:pos] + ("A" if value[pos] != "A" else "B") + value[pos + 1:],
    ]))
    header = "; ".join(f"{k}={mutated if k == name else v}" for k, v in pairs.items())
    check_cookie_header(header)


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(
    allow_nan=False), st.text(max_size=30))
json_like = st.recursive(yaml_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
    max_leaves=25)
policy_words = st.sampled_from([
    "allow", "deny", "and", "or", "not", "nor", "email", "domain", "user", "groups", "claim",
    "claim/groups", "http_path", "http_method", "source_ip", "accept", "reject", "is",
    "starts_with", "ends_with", "contains", "has", "in", "authenticated_user", "date",
    "day_of_week", "time_of_day", "after", "before", "policy", "allowed_users",
    "allowed_domains", "allow_any_authenticated_user", "allow_public_unauthenticated_access",
    "allow_unverified_email", "allowed_idp_claims",
])
policy_like = st.recursive(
    st.one_of(yaml_scalars, policy_words),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(policy_words, kids, max_size=3)),
    max_leaves=30)


@FAST
@given(policy_like)
def test_route_policies_compile_or_fail_cleanly(route: object) -> None:
    check_route_policy(route)


@FAST
@given(json_like)
def test_arbitrary_route_mappings(route: object) -> None:
    check_route_policy(route)


config_keys = st.sampled_from([
    "address", "routes", "cookie_secret", "cookie_expire", "timeout_read", "rate_limits",
    "idp_provider_url", "idp_client_id", "idp_client_secret", "insecure_server",
    "max_connections_per_ip", "xff_num_trusted_hops", "jwt_claims_headers", "signing_key",
    "from", "to", "policy", "prefix", "regex", "allow_websockets", "set_response_headers",
    "sign_in_per_ip", "rate", "burst", "workers", "log_level", "unknown_key",
])
config_like = st.dictionaries(config_keys, st.recursive(
    yaml_scalars, lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(config_keys, kids, max_size=4)),
    max_leaves=20), max_size=8)


@FAST
@given(config_like)
def test_structured_configs_load_or_fail_cleanly(doc: dict[str, object]) -> None:
    import json

    check_config_text(json.dumps(doc))  # JSON is YAML


@FAST
@given(st.text(max_size=400))
def test_arbitrary_config_text(text: str) -> None:
    check_config_text(text)


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"log_level: info\naddress: \xff\xfe\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert f"{path}:2: the file is not UTF-8 text" in str(exc.value)


path_alphabet = st.sampled_from([
    *"/.%;\\?#:@!$&'()*+,=~-_aAzZ09 \t\x00\x7f\u00e9",
    "%2e", "%2E", "%2f", "%2F", "%5c", "%00", "%25", "%C0%AE", "..", "//", "%", "%g1"])


@settings(max_examples=600, deadline=None)
@given(st.lists(path_alphabet, max_size=30))
def test_path_normalizer_structured(parts: list[str]) -> None:
    check_path("/" + "".join(parts))


@FAST
@given(st.text(max_size=200))
def test_path_normalizer_arbitrary(raw: str) -> None:
    check_path(raw)
