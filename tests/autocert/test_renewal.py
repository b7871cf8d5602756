"""Renewal at two thirds of the lifetime, swapped in while connections stay up; and
what happens when the CA is gone: failures, backoff, the last good certificate, expiry
to the self-signed fallback, recovery."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from proxy.autocert import Autocert
from tests.autocert.conftest import (
    FALLBACK_NAME,
    Responders,
    Start,
    config_for,
    connect,
    events,
    eventually,
    eventually_await,
    served_certificate,
)
from tests.support.pebble import Pebble

# Short enough to see a renewal within a test, long enough for an order (~2 s) to
# finish well inside it on a slow machine.
VALIDITY = 24


@pytest.fixture
async def short_pebble(responders: Responders) -> AsyncIterator[Pebble]:
    async with Pebble(
        http_port=responders.http_port, tls_port=responders.tls_port, validity_seconds=VALIDITY
    ) as made:
        yield made


@pytest.mark.timeout(120)
async def test_renewed_at_two_thirds_and_swapped_under_open_connections(
    tmp_path: Path,
    short_pebble: Pebble,
    responders: Responders,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    autocert = Autocert(config_for(short_pebble, tmp_path / "state"))
    responders.attach(autocert)
    start(autocert, ["a.test"])
    await eventually(lambda: autocert.healthy, 30, "a.test obtained")
    root = await short_pebble.root_pem()

    before = await connect(responders.tls_port, "a.test", root)
    old = before.certificate
    lifetime = old.not_valid_after_utc - old.not_valid_before_utc
    renew_at = old.not_valid_before_utc + lifetime * 2 / 3
    [status] = autocert.status()
    assert status.renew_at == renew_at

    async def renewed() -> bool:
        current = await served_certificate(responders.tls_port, "a.test")
        return current.serial_number != old.serial_number

    # Generous bound: the whole lifetime and then some, polled, not slept.
    await eventually_await(renewed, VALIDITY * 3, "renewed")

    after = await connect(responders.tls_port, "a.test", root)  # verified chain and name
    new = after.certificate
    assert new.serial_number != old.serial_number
    # Not early (the CA's clock is this machine's, with one second of rounding), and
    # before the old one expired.
    assert new.not_valid_before_utc >= renew_at - dt.timedelta(seconds=1)
    assert new.not_valid_before_utc < old.not_valid_after_utc
    [line] = events(logs, "autocert_certificate_renewed", serial=f"{new.serial_number:x}")
    # A live host renews through HTTP-01 first (no challenge certificate on its name),
    # unless Pebble reused the still-valid authorization (it does so at random).
    assert line["challenge"] in ("http-01", "none (authorization still valid)")

    # The connection made before the swap still works, on the old certificate.
    assert await before.echo("still here") == "echo still here"
    assert before.certificate.serial_number == old.serial_number
    assert await after.echo("new") == "echo new"
    await before.close()
    await after.close()
    assert autocert.healthy


@pytest.mark.timeout(120)
async def test_ca_outage_keeps_the_last_good_certificate_until_it_expires(
    tmp_path: Path,
    short_pebble: Pebble,
    responders: Responders,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    autocert = Autocert(config_for(short_pebble, tmp_path / "state"))
    responders.attach(autocert)
    start(autocert, ["a.test"])
    await eventually(lambda: autocert.healthy, 30, "a.test obtained")
    old_root = await short_pebble.root_pem()
    good = await served_certificate(responders.tls_port, "a.test")
    await short_pebble.stop()

    # Renewal comes due while the CA is down: it fails, and says when it tries again.
    await eventually(lambda: events(logs, "autocert_failed"), VALIDITY * 2, "a failure")
    # Checked at once: the certificate has a third of its lifetime (8 s) left.
    assert dt.datetime.now(dt.UTC) < good.not_valid_after_utc
    [status] = autocert.status()
    assert status.last_error == "cannot reach the ACME server (connection failed)"
    assert status.next_attempt is not None
    assert status.not_after == good.not_valid_after_utc
    # The last good certificate is still what is served.
    conn = await connect(responders.tls_port, "a.test", old_root)
    assert conn.certificate.serial_number == good.serial_number
    await conn.close()
    await eventually(lambda: len(events(logs, "autocert_failed")) >= 2, 10, "a retry")
    first, second = events(logs, "autocert_failed")[:2]
    assert first["host"] == "a.test" and first["attempt"] == 1 and second["attempt"] == 2
    assert first["next_attempt"] and "valid until" in first["serving"]

    # Past its expiry it is dropped for the self-signed fallback, with an error.
    await eventually(
        lambda: events(logs, "autocert_certificate_expired"), VALIDITY * 2, "expiry noticed"
    )
    assert not autocert.healthy
    assert autocert.status()[0].not_after is None
    fallback = await served_certificate(responders.tls_port, "a.test")
    assert fallback.subject.rfc4514_string() == "CN=clawgate self-signed"
    assert FALLBACK_NAME in str(fallback.extensions)

    # The CA comes back (having forgotten the account): registered again, obtained.
    await short_pebble.start()
    await eventually(lambda: autocert.healthy, 30, "recovered")
    new_root = await short_pebble.root_pem()
    conn = await connect(responders.tls_port, "a.test", new_root)
    await conn.close()
    assert events(logs, "autocert_account_unknown")
    assert len(events(logs, "autocert_account_registered")) == 2
    [status] = autocert.status()
    assert status.last_error is None and status.next_attempt is None
