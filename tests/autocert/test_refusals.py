"""What autocert will not do, and what it tells ``clawgate check``. No CA needed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from proxy.autocert import (
    LETS_ENCRYPT,
    LETS_ENCRYPT_STAGING,
    Autocert,
    AutocertConfig,
    refused_hosts,
)
from tests.autocert.conftest import events

pytestmark = pytest.mark.timeout(30)


def test_wildcards_ips_and_single_labels_are_refused_with_a_reason() -> None:
    refused = refused_hosts(
        [
            "*.example.com",
            "192.0.2.7",
            "2001:db8::1",
            "[::1]",
            "localhost",
            "intranet",
            "app.example.com:443",
            "bad..example.com",
            "-bad.example.com",
            "a_b.example.com",
            "bücher.example",
            "app.example.com",
            "Mixed.Case.Example.",
            "x" * 64 + ".example.com",
        ]
    )
    assert refused["*.example.com"] == "a wildcard needs DNS-01, which autocert does not offer"
    for ip in ("192.0.2.7", "2001:db8::1", "[::1]"):
        assert refused[ip] == "an IP address: autocert only gets certificates for DNS names"
    for name in ("localhost", "intranet"):
        assert "without a dot" in refused[name]
    for bad in ("app.example.com:443", "bad..example.com", "-bad.example.com", "a_b.example.com"):
        assert refused[bad].startswith("not a valid DNS name")
    assert refused["x" * 64 + ".example.com"].startswith("not a valid DNS name")
    assert (
        refused["bücher.example"]
        == "an internationalized name: write it as 'xn--bcher-kva.example'"
    )
    assert "app.example.com" not in refused
    assert "Mixed.Case.Example." not in refused


def test_plan_names_the_directory_hosts_challenges_and_refusals(tmp_path: Path) -> None:
    autocert = Autocert(
        AutocertConfig(
            directory_url=LETS_ENCRYPT_STAGING,
            state_dir=tmp_path / "state",
            email="ops@example.com",
            eab_key_id="kid-7",
            eab_mac_key="c2VjcmV0LW1hYy1rZXktdGhhdC1tdXN0LW5vdC1sZWFr",
            http01=False,
        )
    )
    lines = autocert.plan(["app.example.com", "*.example.com", "10.0.0.1", "APP.example.com"])
    text = "\n".join(lines)
    assert lines[0] == f"ACME directory: {LETS_ENCRYPT_STAGING} (Let's Encrypt staging)"
    assert "account e-mail: ops@example.com" in lines
    assert "account: none stored yet" in text
    assert "external account binding: key id kid-7" in lines
    assert "c2VjcmV0" not in text  # the MAC key never appears
    # HTTP-01 is off: TLS-ALPN-01 is the only challenge offered.
    assert (
        "app.example.com: challenge tls-alpn-01 (on the TLS listener); no certificate yet "
        "(self-signed fallback until one is obtained)"
    ) in lines
    assert [line for line in lines if line.startswith("app.example.com")] == [
        line for line in lines if "app.example.com" in line.lower()
    ]  # the same host twice is one line
    assert "*.example.com: refused: a wildcard needs DNS-01" in text
    assert "10.0.0.1: refused: an IP address" in text

    both = Autocert(AutocertConfig(directory_url=LETS_ENCRYPT, state_dir=tmp_path / "two"))
    [line] = [x for x in both.plan(["app.example.com"]) if x.startswith("app.")]
    assert "tls-alpn-01 (on the TLS listener), then http-01 (on the plain-HTTP listener)" in line
    assert "none (the CA cannot warn before a certificate expires)" in "\n".join(both.plan([]))


def test_bad_configurations_fail_at_once(tmp_path: Path) -> None:
    def config(**values: Any) -> AutocertConfig:
        return AutocertConfig(**{"directory_url": LETS_ENCRYPT, "state_dir": tmp_path, **values})

    with pytest.raises(ValueError, match="no challenge it can answer"):
        config(http01=False, tls_alpn01=False)
    with pytest.raises(ValueError, match="no challenge it can answer"):
        config(http01=False, challenges=("http-01",))
    with pytest.raises(ValueError, match="unknown ACME challenge type"):
        config(challenges=("dns-01",))
    with pytest.raises(ValueError, match="https://"):
        config(directory_url="http://acme.example/directory")
    with pytest.raises(ValueError, match="both the key id and the MAC key"):
        config(eab_key_id="kid")
    with pytest.raises(ValueError, match="not base64url") as caught:
        config(eab_key_id="kid", eab_mac_key="not base64 at all!")
    assert "at all" not in str(caught.value)
    assert "secret-mac" not in repr(config(eab_key_id="k", eab_mac_key="secret-mac"))
    with pytest.raises(ValueError, match="e-mail"):
        config(email="not an address")
    assert config(http01=False).enabled_challenges == ("tls-alpn-01",)
    assert config(challenges=("http-01", "tls-alpn-01")).enabled_challenges == (
        "http-01",
        "tls-alpn-01",
    )


async def test_refused_hosts_are_logged_and_never_ordered(
    tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    # An unreachable CA: any attempt to order would show up as a failure.
    autocert = Autocert(
        AutocertConfig(directory_url="https://127.0.0.1:9/dir", state_dir=tmp_path / "state")
    )
    assert not autocert.healthy  # nothing looked at yet
    wake = asyncio.Event()
    task = asyncio.create_task(autocert.run(lambda: ["*.example.com", "localhost"], wake))
    try:
        await asyncio.sleep(0.3)
        wake.set()
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert {line["host"] for line in events(logs, "autocert_host_refused")} == {
        "*.example.com",
        "localhost",
    }
    # Logged once each, though looked at twice.
    assert len(events(logs, "autocert_host_refused")) == 2
    assert not events(logs, "autocert_failed")
    assert autocert.status() == []
    assert autocert.healthy  # no host autocert is responsible for
