"""Session cookies: encryption, rotation, chunking, cache, sealed tokens, header parsing."""

from __future__ import annotations

import base64
import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy.session import (
    MAX_CHUNKS,
    Session,
    SessionCodec,
    SessionError,
    parse_cookie_header,
)

NAME = "_clawgate"
HOST = "claw.example.com"
NOW = 1_700_000_000


def make_session(**overrides: Any) -> Session:
    fields: dict[str, Any] = dict(
        sub="user-1",
        email="ada@example.com",
        email_verified=True,
        groups=["admins", "dev"],
        claims={"name": "Ada Lovelace"},
        host=HOST,
        now=NOW,
        lifetime=3600,
        refresh_at=NOW + 300,
        refresh_token="rt-secret",
        id_token="id.token.value",
    )
    fields.update(overrides)
    return Session.create(**fields)


def codec(*secrets: bytes, **kw: Any) -> SessionCodec:
    return SessionCodec(list(secrets) or [os.urandom(32)], NAME, **kw)


def as_cookies(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return dict(pairs)


def reason(exc: pytest.ExceptionInfo[SessionError]) -> str:
    return exc.value.reason


# -- round trips -----------------------------------------------------------------------


def test_round_trip_preserves_every_field() -> None:
    c = codec()
    s = make_session()
    pairs = c.encode(s)
    assert [n for n, _ in pairs] == [NAME]
    got = codec_fresh_decode(c, pairs)
    assert got == s
    assert got.groups == ("admins", "dev")
    assert got.claims["name"] == "Ada Lovelace"


def codec_fresh_decode(c: SessionCodec, pairs: list[tuple[str, str]], **kw: Any) -> Session:
    c.clear_cache()
    got = c.decode(as_cookies(pairs), host=kw.get("host", HOST), now=kw.get("now", NOW + 1))
    assert got is not None
    return got


def test_round_trip_with_none_fields_and_unicode() -> None:
    c = codec()
    s = make_session(
        email=None,
        email_verified=None,
        groups=[],
        claims={"name": "Zoë \ud800 名前", "n": [1, 2.5, None, True]},
        refresh_token=None,
        id_token=None,
    )
    assert codec_fresh_decode(c, c.encode(s)) == s


def test_values_are_cookie_safe_and_encryption_is_randomized() -> None:
    c = codec()
    s = make_session()
    (_, v1), (_, v2) = c.encode(s)[0], c.encode(s)[0]
    assert v1 != v2
    assert set(v1) <= set(string.ascii_letters + string.digits + "-_")
    # Nothing readable leaks into the cookie.
    assert "ada" not in v1 and "rt-secret" not in v1


def test_no_cookie_means_no_session() -> None:
    c = codec()
    assert c.decode({}, host=HOST, now=NOW) is None
    assert c.decode({"other": "x"}, host=HOST, now=NOW) is None
    assert c.decode({NAME: ""}, host=HOST, now=NOW) is None
    # A stray chunk without the first cookie is not a session either.
    assert c.decode({f"{NAME}_1": "abc"}, host=HOST, now=NOW) is None


def test_claims_of_decoded_session_are_read_only() -> None:
    c = codec()
    got = codec_fresh_decode(c, c.encode(make_session()))
    with pytest.raises(TypeError):
        got.claims["name"] = "Mallory"  # type: ignore[index]


# -- keys ------------------------------------------------------------------------------


def test_key_rotation_old_secret_still_decodes_new_one_encrypts() -> None:
    old, new = os.urandom(32), os.urandom(32)
    s = make_session()
    before = codec(old).encode(s)
    rotated = codec(new, old)
    assert codec_fresh_decode(rotated, before) == s
    after = rotated.encode(s)
    # The new cookie is under the new key: a codec knowing only the new key reads it,
    # one knowing only the old key does not.
    assert codec_fresh_decode(codec(new), after) == s
    with pytest.raises(SessionError) as exc:
        codec(old).decode(as_cookies(after), host=HOST, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"


def test_wrong_key_is_refused() -> None:
    pairs = codec().encode(make_session())
    with pytest.raises(SessionError) as exc:
        codec().decode(as_cookies(pairs), host=HOST, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"


def test_same_secret_other_cookie_name_is_refused() -> None:
    secret = os.urandom(32)
    ((_, value),) = SessionCodec([secret], "a").encode(make_session())
    with pytest.raises(SessionError) as exc:
        SessionCodec([secret], "b").decode({"b": value}, host=HOST, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"


def test_known_key_id_with_wrong_key_fails_authentication() -> None:
    # Forge a token that names the right key id but was encrypted under another key.
    secret = os.urandom(32)
    c = codec(secret)
    ((_, value),) = c.encode(make_session())
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    ((_, other),) = codec().encode(make_session())
    other_raw = bytearray(base64.urlsafe_b64decode(other + "=" * (-len(other) % 4)))
    other_raw[1:5] = raw[1:5]
    forged = base64.urlsafe_b64encode(bytes(other_raw)).rstrip(b"=").decode()
    with pytest.raises(SessionError) as exc:
        c.decode({NAME: forged}, host=HOST, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"


def test_constructor_rejects_bad_secrets_and_names() -> None:
    with pytest.raises(ValueError):
        SessionCodec([], NAME)
    with pytest.raises(ValueError):
        SessionCodec([b"short"], NAME)
    with pytest.raises(ValueError):
        SessionCodec([os.urandom(32)], "bad name;")
    with pytest.raises(ValueError):
        SessionCodec([os.urandom(32)], NAME, max_chunk=10)


# -- tampering -------------------------------------------------------------------------


def _tampered_raw(value: str, pos: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[pos] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_flipping_any_byte_is_detected() -> None:
    c = codec()
    ((_, value),) = c.encode(make_session(claims={}))
    n = len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    for pos in range(n):
        c.clear_cache()
        with pytest.raises(SessionError) as exc:
            c.decode({NAME: _tampered_raw(value, pos)}, host=HOST, now=NOW)
        assert reason(exc) in {"bad_key_or_tampered", "malformed"}, pos
        if pos >= 5:  # past version + key id, only authentication can catch it
            assert reason(exc) == "bad_key_or_tampered"


def test_tampered_cookie_is_refused_even_after_a_cache_hit() -> None:
    c = codec()
    ((_, value),) = c.encode(make_session())
    assert c.decode({NAME: value}, host=HOST, now=NOW) is not None
    with pytest.raises(SessionError):
        c.decode({NAME: _tampered_raw(value, 30)}, host=HOST, now=NOW)


@pytest.mark.parametrize("cut", [1, 2, 5, 20, 40])
def test_truncated_cookie_is_refused(cut: int) -> None:
    c = codec()
    ((_, value),) = c.encode(make_session())
    with pytest.raises(SessionError) as exc:
        c.decode({NAME: value[:-cut]}, host=HOST, now=NOW)
    assert reason(exc) in {"bad_key_or_tampered", "malformed"}


@pytest.mark.parametrize(
    "value",
    ["x", "not base64!", "AAAA", "A" * 40, "ab=c", "zz.zz", "2.abc", "9.abc", "é" * 50],
)
def test_garbage_cookie_is_refused(value: str) -> None:
    with pytest.raises(SessionError) as exc:
        codec().decode({NAME: value}, host=HOST, now=NOW)
    assert reason(exc) in {"malformed", "bad_key_or_tampered", "chunks_inconsistent"}
    if len(value) >= 3:
        assert value not in str(exc.value)


def test_unknown_version_byte_is_malformed() -> None:
    c = codec()
    ((_, value),) = c.encode(make_session())
    raw = bytearray(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    raw[0] = 2
    with pytest.raises(SessionError) as exc:
        c.decode({NAME: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}, host=HOST, now=NOW)
    assert reason(exc) == "malformed"


def test_oversized_cookie_value_is_refused_cheaply() -> None:
    with pytest.raises(SessionError) as exc:
        codec().decode({NAME: "A" * 5000}, host=HOST, now=NOW)
    assert reason(exc) == "too_large"


def test_error_messages_never_contain_cookie_bytes() -> None:
    c = codec()
    ((_, value),) = c.encode(make_session())
    for bad in (value[:-3], _tampered_raw(value, 40), value + "!"):
        with pytest.raises(SessionError) as exc:
            c.decode({NAME: bad}, host=HOST, now=NOW)
        assert bad[:12] not in str(exc.value)


# -- expiry and host -------------------------------------------------------------------


def test_expired_session_is_refused() -> None:
    c = codec()
    s = make_session(lifetime=60)
    pairs = c.encode(s)
    assert c.decode(as_cookies(pairs), host=HOST, now=NOW + 59) == s
    c.clear_cache()
    with pytest.raises(SessionError) as exc:
        c.decode(as_cookies(pairs), host=HOST, now=NOW + 60)
    assert reason(exc) == "expired"


def test_cache_hit_still_rejects_after_expiry() -> None:
    c = codec()
    pairs = c.encode(make_session(lifetime=60))
    assert c.decode(as_cookies(pairs), host=HOST, now=NOW) is not None  # now cached
    with pytest.raises(SessionError) as exc:
        c.decode(as_cookies(pairs), host=HOST, now=NOW + 61)
    assert reason(exc) == "expired"


def test_cache_hit_still_checks_host() -> None:
    c = codec()
    pairs = c.encode(make_session())
    assert c.decode(as_cookies(pairs), host=HOST, now=NOW) is not None
    with pytest.raises(SessionError) as exc:
        c.decode(as_cookies(pairs), host="evil.example.com", now=NOW)
    assert reason(exc) == "wrong_host"


def test_wrong_host_is_refused_on_a_cold_cache() -> None:
    c = codec()
    pairs = c.encode(make_session())
    with pytest.raises(SessionError) as exc:
        c.decode(as_cookies(pairs), host="other.example.com", now=NOW)
    assert reason(exc) == "wrong_host"


def test_unbound_session_is_accepted_on_any_host() -> None:
    c = codec()
    s = make_session(host="")
    assert not s.host_bound
    pairs = c.encode(s)
    for host in ("a.example.com", "b.example.com"):
        assert c.decode(as_cookies(pairs), host=host, now=NOW) == s


def test_cache_is_bounded() -> None:
    c = codec(cache_size=3)
    all_pairs = [c.encode(make_session()) for _ in range(5)]
    for pairs in all_pairs:
        c.decode(as_cookies(pairs), host=HOST, now=NOW)
    assert len(c._cache) == 3


def test_cache_hit_returns_the_same_object() -> None:
    c = codec()
    pairs = c.encode(make_session())
    first = c.decode(as_cookies(pairs), host=HOST, now=NOW)
    assert c.decode(as_cookies(pairs), host=HOST, now=NOW + 1) is first


# -- session helpers -------------------------------------------------------------------


def test_session_time_helpers_and_refresh() -> None:
    s = make_session(lifetime=3600, refresh_at=NOW + 300)
    assert not s.needs_refresh(NOW + 299)
    assert s.needs_refresh(NOW + 300)
    assert s.needs_refresh(NOW + 250, leeway=60)
    assert not s.is_expired(NOW + 3599)
    assert s.is_expired(NOW + 3600)
    r = s.with_refreshed(refresh_at=NOW + 900, id_token="new.id", groups=["dev"])
    assert (r.refresh_at, r.id_token, r.groups) == (NOW + 900, "new.id", ("dev",))
    assert (r.sid, r.csrf, r.expires_at, r.refresh_token) == (
        s.sid,
        s.csrf,
        s.expires_at,
        "rt-secret",
    )
    assert r.with_refreshed(refresh_at=1, refresh_token=None).refresh_token is None


def test_sessions_get_distinct_random_ids() -> None:
    a, b = make_session(), make_session()
    assert a.sid != b.sid and a.csrf != b.csrf
    assert len(a.sid) >= 20 and len(a.csrf) >= 20


# -- chunking --------------------------------------------------------------------------


def big_session() -> Session:
    return make_session(claims={"blob": os.urandom(3000).hex()})  # 6 KB of claims


def medium_session() -> Session:
    return make_session(claims={"blob": "m" * 2500})


def test_big_session_round_trips_in_chunks() -> None:
    c = codec()
    s = big_session()
    pairs = c.encode(s)
    names = [n for n, _ in pairs]
    assert names == [NAME, f"{NAME}_1", f"{NAME}_2"]
    assert all(len(v) <= 3800 for _, v in pairs)
    assert pairs[0][1].startswith("3.")
    assert codec_fresh_decode(c, pairs) == s
    assert c.decode(as_cookies(pairs), host=HOST, now=NOW) == s  # via cache


def test_chunk_sizes_respect_max_chunk() -> None:
    c = codec(max_chunk=1000)
    s = medium_session()
    pairs = c.encode(s)
    assert len(pairs) == 4
    assert [n for n, _ in pairs] == [NAME] + [f"{NAME}_{i}" for i in range(1, len(pairs))]
    assert all(len(v) <= 1000 for _, v in pairs)
    assert codec_fresh_decode(c, pairs) == s


def test_session_just_under_and_over_the_chunk_limit() -> None:
    c = codec(max_chunk=600)
    for size in range(0, 400, 7):
        s = make_session(claims={"p": "x" * size}, id_token=None, refresh_token=None)
        pairs = c.encode(s)
        assert all(len(v) <= 600 for _, v in pairs)
        assert codec_fresh_decode(c, pairs) == s


def test_reordered_chunks_are_refused() -> None:
    c = codec(max_chunk=1000)
    pairs = c.encode(medium_session())
    cookies = as_cookies(pairs)
    cookies[f"{NAME}_1"], cookies[f"{NAME}_2"] = cookies[f"{NAME}_2"], cookies[f"{NAME}_1"]
    with pytest.raises(SessionError) as exc:
        c.decode(cookies, host=HOST, now=NOW)
    assert reason(exc) in {"bad_key_or_tampered", "malformed"}


def test_missing_chunk_is_refused() -> None:
    c = codec()
    pairs = c.encode(big_session())
    cookies = as_cookies(pairs)
    del cookies[f"{NAME}_1"]
    with pytest.raises(SessionError) as exc:
        c.decode(cookies, host=HOST, now=NOW)
    assert reason(exc) == "chunks_inconsistent"


def test_chunks_from_two_sessions_are_refused() -> None:
    c = codec()
    a = as_cookies(c.encode(big_session()))
    b = as_cookies(c.encode(big_session()))
    for mixed in (
        {**a, f"{NAME}_1": b[f"{NAME}_1"]},
        {**a, f"{NAME}_2": b[f"{NAME}_2"]},
        {**b, NAME: a[NAME]},
    ):
        with pytest.raises(SessionError) as exc:
            c.decode(mixed, host=HOST, now=NOW)
        assert reason(exc) == "bad_key_or_tampered"


def test_forged_chunk_count_is_refused() -> None:
    c = codec(max_chunk=1000)
    cookies = as_cookies(c.encode(medium_session()))
    count = int(cookies[NAME][0])
    # Claim one chunk fewer and drop the last: the bytes are a clean prefix but the count
    # is authenticated, and so is the length.
    cookies[NAME] = f"{count - 1}.{cookies[NAME][2:]}"
    del cookies[f"{NAME}_{count - 1}"]
    with pytest.raises(SessionError) as exc:
        c.decode(cookies, host=HOST, now=NOW)
    # A cut can also leave non-canonical base64 at the end: refused before decryption.
    assert reason(exc) in ("bad_key_or_tampered", "malformed")
    # Joining the parts into one unchunked cookie gives the exact ciphertext, but it was
    # sealed as "2 chunks" and is now presented as one.
    secret = os.urandom(32)
    two = as_cookies(codec(secret, max_chunk=1000).encode(make_session(claims={"p": "x" * 900})))
    assert two[NAME].startswith("2.")
    joined = two[NAME][2:] + two[f"{NAME}_1"]
    with pytest.raises(SessionError) as exc:
        codec(secret).decode({NAME: joined}, host=HOST, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"


def test_stale_extra_chunks_are_ignored_and_listed() -> None:
    c = codec()
    small = c.encode(make_session())
    cookies = as_cookies(small)
    cookies[f"{NAME}_1"] = "leftover"
    cookies[f"{NAME}_3"] = "leftover"
    cookies["unrelated"] = "x"
    cookies[f"{NAME}_x"] = "y"
    cookies[f"{NAME}_{MAX_CHUNKS}"] = "y"
    assert c.decode(cookies, host=HOST, now=NOW) is not None
    assert c.chunk_names(cookies) == [NAME, f"{NAME}_1", f"{NAME}_3"]


def test_oversized_session_is_too_large() -> None:
    c = codec()
    with pytest.raises(SessionError) as exc:
        c.encode(make_session(claims={"blob": os.urandom(20_000).hex()}))
    assert reason(exc) == "too_large"


def test_max_chunks_is_reachable() -> None:
    c = codec(max_chunk=256)
    # Find a payload that fills exactly MAX_CHUNKS cookies.
    for size in range(600, 2000, 10):
        s = make_session(claims={"p": "x" * size}, id_token=None, refresh_token=None)
        try:
            pairs = c.encode(s)
        except SessionError as e:
            assert e.reason == "too_large"
            break
        assert len(pairs) <= MAX_CHUNKS
        last = pairs
    assert len(last) == MAX_CHUNKS
    assert codec_fresh_decode(c, last) is not None


# -- sealed tokens ---------------------------------------------------------------------


def test_seal_unseal_round_trip() -> None:
    c = codec()
    payload = {"state": "s", "nonce": "n", "verifier": "v" * 64, "return": "/a?b=c"}
    token = c.seal("login-state", payload, ttl=600, now=NOW)
    assert "verifier" not in token
    assert c.unseal("login-state", token, now=NOW + 599) == payload


def test_unseal_expired_fails() -> None:
    c = codec()
    token = c.seal("login-state", {"a": 1}, ttl=600, now=NOW)
    with pytest.raises(SessionError) as exc:
        c.unseal("login-state", token, now=NOW + 600)
    assert reason(exc) == "expired"


def test_unseal_wrong_purpose_fails() -> None:
    c = codec()
    token = c.seal("login-state", {"a": 1}, ttl=600, now=NOW)
    with pytest.raises(SessionError) as exc:
        c.unseal("other-thing", token, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"


def test_sealed_token_is_not_a_session_and_vice_versa() -> None:
    c = codec()
    token = c.seal("login-state", {"a": 1}, ttl=600, now=NOW)
    with pytest.raises(SessionError) as exc:
        c.decode({NAME: token}, host=HOST, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"
    ((_, value),) = c.encode(make_session())
    with pytest.raises(SessionError) as exc:
        c.unseal("login-state", value, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"
    with pytest.raises(ValueError):
        c.seal("session", {}, ttl=10, now=NOW)
    with pytest.raises(ValueError):
        c.unseal("session", value, now=NOW)


def test_unseal_tampered_and_foreign_key_fail() -> None:
    c = codec()
    token = c.seal("login-state", {"a": 1}, ttl=600, now=NOW)
    for bad in (_tampered_raw(token, 25), token[:-4], "", "!!!"):
        with pytest.raises(SessionError):
            c.unseal("login-state", bad, now=NOW)
    with pytest.raises(SessionError) as exc:
        codec().unseal("login-state", token, now=NOW)
    assert reason(exc) == "bad_key_or_tampered"


def test_seal_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    token = codec(old).seal("login-state", {"a": 1}, ttl=600, now=NOW)
    assert codec(new, old).unseal("login-state", token, now=NOW) == {"a": 1}


# -- secrets ---------------------------------------------------------------------------


def test_parse_secret_accepts_all_base64_spellings() -> None:
    raw = bytes(range(200, 232))
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    assert "+" in std or "/" in std
    for text in (std, std.rstrip("="), url, url.rstrip("="), f"  {std}\n"):
        assert SessionCodec.parse_secret(text) == raw


def test_new_secret_parses_and_is_random() -> None:
    a, b = SessionCodec.new_secret(), SessionCodec.new_secret()
    assert a != b
    assert len(SessionCodec.parse_secret(a)) == 32


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hunter2",
        base64.b64encode(b"x" * 31).decode(),
        base64.b64encode(b"x" * 33).decode(),
        "ü" * 43,
        "A" * 41,
        "not*base64*at*all" * 3,
    ],
)
def test_parse_secret_errors_do_not_echo_the_value(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        SessionCodec.parse_secret(text)
    msg = str(exc.value)
    assert "32" in msg and "clawgate secret" in msg
    if text.strip():
        assert text.strip() not in msg


# -- cookie header parser --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", {}),
        ("a=b; c=d", {}),
        ("_clawgate=v1", {"_clawgate": "v1"}),
        ("a=b; _clawgate=v1; c=d", {"_clawgate": "v1"}),
        ("a=b;_clawgate=v1;_clawgate_1=v2", {"_clawgate": "v1", "_clawgate_1": "v2"}),
        ("  _clawgate =  v1  ;  ", {"_clawgate": "v1"}),
        ('_clawgate="quoted"', {"_clawgate": "quoted"}),
        ('_clawgate=""', {"_clawgate": ""}),
        ('_clawgate="unterminated', {}),
        ('_clawgate=a"b', {}),
        ("_clawgate", {}),
        ("_clawgate; _clawgate_1=x", {"_clawgate_1": "x"}),
        ("=v; _clawgate=v1", {"_clawgate": "v1"}),
        ("_clawgate=first; _clawgate=second", {"_clawgate": "first"}),
        ("_claw gate=x; _clawgate=ok", {"_clawgate": "ok"}),
        ("_clawgate=a=b==", {"_clawgate": "a=b=="}),
        ("x_clawgate=no", {}),
        (";;;", {}),
        ("_clawgate=2.abc; _clawgate_1=def", {"_clawgate": "2.abc", "_clawgate_1": "def"}),
    ],
)
def test_parse_cookie_header(header: str, expected: dict[str, str]) -> None:
    assert parse_cookie_header(header, "_clawgate") == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_cookie_header_never_raises(header: str) -> None:
    result = parse_cookie_header(header, "_c")
    assert all(k.startswith("_c") for k in result)


def test_parse_cookie_header_round_trips_encoded_pairs() -> None:
    c = codec(max_chunk=1000)
    pairs = c.encode(medium_session())
    header = "; ".join(["theme=dark", *(f"{n}={v}" for n, v in pairs), "z=1"])
    cookies = parse_cookie_header(header, NAME)
    assert cookies == dict(pairs)
    assert c.decode(cookies, host=HOST, now=NOW) is not None


# -- properties ------------------------------------------------------------------------

_PROP_CODEC = SessionCodec([bytes(32)], NAME)
_VALID = dict(_PROP_CODEC.encode(make_session(claims={"blob": "y" * 5000})))

cookie_text = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + '-_.="é\x00 '),
    max_size=200,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([NAME, f"{NAME}_1", f"{NAME}_2", "x"]), cookie_text))
def test_decode_of_arbitrary_cookies_returns_none_or_raises_session_error(
    cookies: dict[str, str],
) -> None:
    try:
        result = _PROP_CODEC.decode(cookies, host=HOST, now=NOW)
    except SessionError:
        return
    assert result is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decode_of_mutated_valid_cookies_never_leaks_other_exceptions(data: st.DataObject) -> None:
    cookies = dict(_VALID)
    name = data.draw(st.sampled_from(sorted(cookies)))
    value = cookies[name]
    pos = data.draw(st.integers(0, len(value) - 1))
    char = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_.="))
    mutated = value[:pos] + char + value[pos + 1 :]
    assume(mutated != value)
    cookies[name] = mutated
    if pos == len(value) - 1:
        # The last base64 character carries ignored padding bits, so some changes there
        # are no-ops; any that is not must still be refused.
        try:
            result = _PROP_CODEC.decode(cookies, host=HOST, now=NOW)
        except SessionError:
            return
        assert result is not None and result.sub == "user-1"
        return
    with pytest.raises(SessionError):
        _PROP_CODEC.decode(cookies, host=HOST, now=NOW)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_unseal_of_arbitrary_text_raises_session_error(token: str) -> None:
    with pytest.raises(SessionError):
        _PROP_CODEC.unseal("login-state", token, now=NOW)


def test_every_single_character_substitution_is_refused() -> None:
    """Including the last character, whose unused low bits base64 decoders ignore."""
    import string as _string
    import time as _time

    codec = SessionCodec([b"k" * 32], "n")
    now = int(_time.time())
    session = Session.create(
        sub="a", email="a@example.com", email_verified=True, groups=["g"], claims={},
        host="h", now=now, lifetime=100, refresh_at=now + 50, refresh_token=None, id_token=None,
    )
    ((_, value),) = codec.encode(session)
    accepted = []
    for i in range(len(value)):
        for ch in _string.ascii_letters + _string.digits + "-_":
            altered = value[:i] + ch + value[i + 1 :]
            if altered == value:
                continue
            codec.clear_cache()
            try:
                codec.decode({"n": altered}, host="h", now=now)
            except SessionError:
                continue
            accepted.append((i, ch))
    assert accepted == []
    assert codec.decode({"n": value}, host="h", now=now) is not None
