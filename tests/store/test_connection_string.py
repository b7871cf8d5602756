"""Reading the Redis connection string: what it names, and errors that keep secrets."""

from __future__ import annotations

import traceback

import pytest

from proxy.store import open_store
from proxy.store._redis import RedisStore, Target, parse_connection_string

SECRET = "Pa55-w0rd-xyz"


@pytest.mark.parametrize(
    ("string", "expected"),
    [
        (
            "redis://127.0.0.1:6380",
            Target(False, (("127.0.0.1", 6380),), None, 0, None, None, {}),
        ),
        (
            f"redis://:{SECRET}@redis.internal:6379/3",
            Target(False, (("redis.internal", 6379),), None, 3, None, SECRET, {}),
        ),
        (
            "redis://clawgate:p%40ss%2Fw%3Ard@redis/",
            Target(False, (("redis", 6379),), None, 0, "clawgate", "p@ss/w:rd", {}),
        ),
        (
            "rediss://[::1]:6390/1?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required",
            Target(
                True,
                (("::1", 6390),),
                None,
                1,
                None,
                None,
                {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"},
            ),
        ),
        (
            "rediss://h:1?ssl_cert_reqs=none&ssl_check_hostname=false&db=2",
            Target(
                True,
                (("h", 1),),
                None,
                2,
                None,
                None,
                {"ssl_cert_reqs": "none", "ssl_check_hostname": False},
            ),
        ),
        (
            f"redis+sentinel://:{SECRET}@s1:26379,s2:26380,s3/mymaster/2",
            Target(
                False,
                (("s1", 26379), ("s2", 26380), ("s3", 26379)),
                "mymaster",
                2,
                None,
                SECRET,
                {},
            ),
        ),
        (
            "rediss+sentinel://u:p@s1:5000/svc?ssl_ca_certs=/ca.pem",
            Target(True, (("s1", 5000),), "svc", 0, "u", "p", {"ssl_ca_certs": "/ca.pem"}),
        ),
        (
            "REDIS://H:7",
            Target(False, (("H", 7),), None, 0, None, None, {}),
        ),
    ],
)
def test_parses(string: str, expected: Target) -> None:
    target = parse_connection_string(string)
    assert target == expected
    assert SECRET not in repr(target)


def test_where_names_hosts_only() -> None:
    target = parse_connection_string(f"redis+sentinel://u:{SECRET}@a:1,b:2/svc")
    assert target.where == "a:1,b:2"


@pytest.mark.parametrize(
    ("string", "complaint"),
    [
        (f"http://:{SECRET}@h:6379", "starts with"),
        (f"redis:/:{SECRET}@h:6379", "starts with"),
        (f"{SECRET}", "starts with"),
        (f"redis://:{SECRET}@h:port", "port"),
        (f"redis://:{SECRET}@h:0", "port"),
        (f"redis://:{SECRET}@h:70000", "port"),
        (f"redis://:{SECRET}@h:-1", "port"),
        (f"redis://:{SECRET}@:6379", "host"),
        (f"redis://:{SECRET}@", "host"),
        (f"redis://:{SECRET}@[::1:6379", "host"),
        (f"redis://:{SECRET}@h a:6379", "host"),
        # A password not percent-encoded: where its pieces land is anyone's guess.
        (f"redis://:{SECRET}/x@h:6379", "host"),
        (f"redis://:{SECRET}#x@h:6379", "fragment"),
        (f"redis://:{SECRET}@h:6379/{SECRET}", "database"),
        (f"redis://:{SECRET}@h:6379/1/2", "path"),
        (f"redis://:{SECRET}@h1:1,h2:2", "several hosts"),
        (f"redis://:{SECRET}@h:6379?{SECRET}=1", "unknown option"),
        (f"redis://:{SECRET}@h:6379?db={SECRET}", "db is not valid"),
        (f"rediss://:{SECRET}@h:6379?ssl_cert_reqs={SECRET}", "ssl_cert_reqs is not valid"),
        (f"rediss://:{SECRET}@h:6379?ssl_check_hostname={SECRET}", "ssl_check_hostname"),
        (f"redis://:{SECRET}@h:6379?ssl_ca_certs=/ca.pem", "needs rediss"),
        (f"redis://:{SECRET}@h:6379?socket_timeout=60", "unknown option"),
        (f"redis+sentinel://:{SECRET}@h:26379", "service_name"),
        (f"redis+sentinel://:{SECRET}@h:26379/", "service_name"),
        (f"redis+sentinel://:{SECRET}@h:26379/svc/{SECRET}", "database"),
        (f"redis+sentinel://:{SECRET}@h:26379,:1/svc", "host"),
    ],
)
def test_errors_never_echo_the_password(string: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as caught:
        parse_connection_string(string)
    text = "".join(traceback.format_exception(caught.value))
    assert SECRET not in text
    assert "Pa55" not in text
    # The same through the store and open_store.
    with pytest.raises(ValueError) as again:
        RedisStore(string, prefix="clawgate:")
    assert SECRET not in "".join(traceback.format_exception(again.value))
    with pytest.raises(ValueError) as once_more:
        open_store("redis", string, prefix="clawgate:")
    assert SECRET not in "".join(traceback.format_exception(once_more.value))


def test_open_store_needs_a_connection_string() -> None:
    with pytest.raises(ValueError, match="connection string"):
        open_store("redis", None, prefix="clawgate:")
    with pytest.raises(ValueError, match="unknown store"):
        open_store("etcd", "x", prefix="clawgate:")
