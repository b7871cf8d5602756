"""Obtaining certificates from a real Pebble through both challenge types."""

from __future__ import annotations

import ssl
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.autocert.conftest import (
    FALLBACK_NAME,
    MakeAutocert,
    Responders,
    Start,
    connect,
    events,
    eventually,
    served_certificate,
)
from tests.support.pebble import Pebble

pytestmark = pytest.mark.timeout(60)


def _dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


async def test_two_hosts_one_through_each_challenge(
    tmp_path: Path,
    pebble: Pebble,
    responders: Responders,
    make_autocert: MakeAutocert,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    # One instance may only answer TLS-ALPN-01, the other only HTTP-01: each host can
    # only have been validated through its own challenge type.
    alpn = make_autocert(tmp_path / "alpn", challenges=("tls-alpn-01",))
    http = make_autocert(tmp_path / "http", challenges=("http-01",))
    responders.attach(alpn)
    responders.attach(http)
    start(alpn, ["a.test"])
    start(http, ["b.test"])

    await eventually(lambda: alpn.healthy and http.healthy, 30, "both certificates")

    root = await pebble.root_pem()
    for host in ("a.test", "b.test"):
        # Verified against Pebble's root only, hostname included.
        connection = await connect(responders.tls_port, host, root)
        assert _dns_names(connection.certificate) == [host]
        assert await connection.echo("hello") == "echo hello"
        await connection.close()
    [a_line] = events(logs, "autocert_certificate_obtained", host="a.test")
    [b_line] = events(logs, "autocert_certificate_obtained", host="b.test")
    assert a_line["challenge"] == "tls-alpn-01"
    assert b_line["challenge"] == "http-01"
    # HTTP-01 really went over the HTTP listener, and only for b.test's instance.
    assert responders.http01_requests

    # A name autocert does not serve gets the base context's self-signed certificate,
    # which a client trusting the CA's root refuses.
    fallback = await served_certificate(responders.tls_port, "other.test")
    assert _dns_names(fallback) == [FALLBACK_NAME]
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(responders.tls_port, "other.test", root)

    # Nothing pending is left behind, in memory or on the disk.
    for autocert, state in ((alpn, tmp_path / "alpn"), (http, tmp_path / "http")):
        assert autocert.http01("anything") is None
        assert not list((state / "challenges").rglob("*.*"))
    status = {s.host: s for s in alpn.status() + http.status()}
    assert status["a.test"].last_error is None and status["a.test"].not_after is not None
    assert status["b.test"].renew_at is not None and status["b.test"].next_attempt is None


async def test_falls_back_to_http01_when_tls_alpn01_fails(
    tmp_path: Path,
    pebble: Pebble,
    responders: Responders,
    make_autocert: MakeAutocert,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    # TLS-ALPN-01 first, but the TLS listener does not carry this instance's SNI
    # callback: Pebble's TLS-ALPN-01 validation fails and HTTP-01 must take over.
    autocert = make_autocert(tmp_path / "state")
    responders.attach(autocert, tls=False)
    start(autocert, ["c.test"])

    await eventually(lambda: autocert.healthy, 40, "certificate through the fallback")

    [failed] = events(logs, "autocert_challenge_failed", host="c.test")
    assert failed["challenge"] == "tls-alpn-01"
    assert failed["next_challenge"] == "http-01"
    [obtained] = events(logs, "autocert_certificate_obtained", host="c.test")
    assert obtained["challenge"] == "http-01"
    assert not events(logs, "autocert_failed")
