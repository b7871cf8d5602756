"""The state directory: private files, and certificates and the account reused across
restarts without asking the CA again."""

from __future__ import annotations

import json
import stat
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from proxy.autocert import Autocert
from tests.autocert.conftest import (
    MakeAutocert,
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


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_files_are_private_and_reused_after_a_restart(
    tmp_path: Path,
    pebble: Pebble,
    responders: Responders,
    spare: Responders,
    make_autocert: MakeAutocert,
    start: Start,
    logs: list[MutableMapping[str, Any]],
) -> None:
    state = tmp_path / "state"
    first = make_autocert(state)
    responders.attach(first)
    running = start(first, ["a.test"])
    await eventually(lambda: first.healthy, 30, "a.test obtained")
    await running.stop()

    # Every directory 0700, every file 0600, keys included.
    dirs = [state, *(p for p in state.rglob("*") if p.is_dir())]
    files = [p for p in state.rglob("*") if p.is_file()]
    assert {_mode(d) for d in dirs} == {0o700}
    assert {_mode(f) for f in files} == {0o600}
    names = {f.relative_to(state).as_posix() for f in files}
    assert {"certificates/a.test/cert.pem", "certificates/a.test/key.pem"} <= names
    [account_json] = state.glob("accounts/*/account.json")
    assert (account_json.parent / "account.key").exists()
    account_uri = json.loads(account_json.read_text())["uri"]
    assert account_uri.startswith(pebble.directory_url.rsplit("/", 1)[0])
    assert pebble_calls(pebble, "POST /sign-me-up") == 1

    # A restart that needs one more host: the stored account signs the new order (Pebble
    # would refuse an account URL it does not know) and a.test is not ordered again.
    logs.clear()
    second = make_autocert(state)
    responders.attach(second)
    assert {s.host for s in second.status()} == {"a.test"}  # loaded at construction
    running = start(second, ["a.test", "c.test"])
    await eventually(lambda: second.healthy, 30, "c.test obtained")
    await running.stop()
    assert not events(logs, "autocert_account_registered")
    assert not events(logs, "autocert_account_key_created")
    assert [line["host"] for line in events(logs, "autocert_order_created")] == ["c.test"]
    assert json.loads(account_json.read_text())["uri"] == account_uri
    assert pebble_calls(pebble, "POST /sign-me-up") == 1
    assert pebble_calls(pebble, "POST /order-plz") == 2

    # With the CA gone, a new instance serves both stored certificates at once.
    root = await pebble.root_pem()
    await pebble.stop()
    third = Autocert(config_for(pebble, state))
    spare.attach(third)
    for host in ("a.test", "c.test"):
        connection = await connect(spare.tls_port, host, root)
        assert await connection.echo("hi") == "echo hi"
        await connection.close()
    plan = "\n".join(third.plan(["a.test", "c.test"]))
    assert f"account: {account_uri} (stored, reused)" in plan
    # A live host renews through HTTP-01 first; nothing is obtained yet for e.test.
    lines = third.plan(["a.test", "e.test"])
    [a_line] = [line for line in lines if line.startswith("a.test:")]
    assert a_line.startswith(
        "a.test: challenge http-01 (on the plain-HTTP listener), then tls-alpn-01"
    )
    assert "certificate valid until" in a_line
    [e_line] = [line for line in lines if line.startswith("e.test:")]
    assert e_line.startswith("e.test: challenge tls-alpn-01 (on the TLS listener), then http-01")
    assert "no certificate yet" in e_line

    # Running it needs nothing from the CA either: both are valid, nothing fails.
    logs.clear()
    running = start(third, ["a.test", "c.test"])
    await eventually(lambda: third.healthy, 5, "healthy from the disk alone")
    await eventually(lambda: events(logs, "autocert_renewal_info_failed"), 10, "ARI looked")
    assert not events(logs, "autocert_failed")
    assert not events(logs, "autocert_order_created")
    assert all(s.last_error is None for s in third.status())
