"""External account binding against a Pebble that requires it."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from proxy.autocert import Autocert
from tests.autocert.conftest import (
    Responders,
    Start,
    config_for,
    connect,
    events,
    eventually,
    pebble_calls,
)
from tests.support.pebble import Pebble

pytestmark = pytest.mark.timeout(60)

KEY_ID = "kid-1"
MAC_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@pytest.fixture
async def eab_pebble(responders: Responders) -> AsyncIterator[Pebble]:
    async with Pebble(
        http_port=responders.http_port,
        tls_port=responders.tls_port,
        eab_keys={KEY_ID: MAC_KEY},
    ) as made:
        yield made


async def test_account_with_external_binding(
    tmp_path: Path,
    eab_pebble: Pebble,
    responders: Responders,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    # Without the binding: refused before anything is sent, with a clear reason.
    unbound = Autocert(config_for(eab_pebble, tmp_path / "unbound"))
    start(unbound, ["a.test"])
    await eventually(lambda: events(logs, "autocert_failed", host="a.test"), 10, "refused")
    [status] = unbound.status()
    assert status.last_error is not None
    assert "requires external account binding" in status.last_error
    assert "autocert_eab_key_id" in status.last_error
    assert status.next_attempt is not None and status.not_after is None
    assert pebble_calls(eab_pebble, "POST /sign-me-up") == 0

    # A wrong MAC key: the CA's refusal is reported, the key is not.
    wrong = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    bad = Autocert(config_for(eab_pebble, tmp_path / "bad", eab_key_id=KEY_ID, eab_mac_key=wrong))
    start(bad, ["b.test"])
    await eventually(lambda: events(logs, "autocert_failed", host="b.test"), 10, "refused")
    [status] = bad.status()
    assert status.last_error is not None and status.last_error.startswith("the CA refused")
    assert pebble_calls(eab_pebble, "POST /sign-me-up") >= 1
    assert not any(wrong in str(line) or MAC_KEY in str(line) for line in logs)

    # With it: the account is made and a certificate issued.
    bound = Autocert(
        config_for(eab_pebble, tmp_path / "bound", eab_key_id=KEY_ID, eab_mac_key=MAC_KEY)
    )
    responders.attach(bound)
    start(bound, ["c.test"])
    await eventually(lambda: bound.healthy, 30, "c.test obtained")
    [account_json] = (tmp_path / "bound").glob("accounts/*/account.json")
    record = json.loads(account_json.read_text())
    assert record["eab_key_id"] == KEY_ID
    assert MAC_KEY not in account_json.read_text()
    conn = await connect(responders.tls_port, "c.test", await eab_pebble.root_pem())
    await conn.close()
    assert not any(MAC_KEY in str(line) for line in logs)
