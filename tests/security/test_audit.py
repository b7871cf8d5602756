"""``clawgate audit``: each weakness it knows is reported with a severity and a fix, a
sound config passes, and ``--deep`` probes a running deployment."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.assertion import generate_signing_key
from proxy.audit import audit_config
from proxy.cli import main
from proxy.session import SessionCodec
from proxy.snapshot import load_snapshot
from proxy.tls import generate_self_signed
from tests.support.gate import base_config, register_client, running_gate
from tests.support.idp import TestIdP
from tests.support.upstream import Upstream, free_port


def write(tmp_path: Path, config: dict[str, Any], mode: int = 0o600) -> Path:
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(mode)
    return path


def certs(tmp_path: Path, days: int) -> dict[str, str]:
    made = generate_self_signed(["127.0.0.1"], days=days)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(made.cert_pem)
    key.write_bytes(made.key_pem)
    key.chmod(0o600)
    return {"certificate_file": str(cert), "certificate_key_file": str(key)}


def audit(*args: str) -> tuple[int, list[dict[str, str]]]:
    # Not capsys: a gate started in the same test binds its logger to the stream in
    # place at start, and capsys closes that stream when the test ends.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["audit", "--json", *args])
    return code, json.loads(out.getvalue())


def sound_config(tmp_path: Path) -> dict[str, Any]:
    key_file = tmp_path / "signing.pem"
    key_file.write_text(generate_signing_key())
    key_file.chmod(0o600)
    return {
        "address": "127.0.0.1:8443",
        "cookie_secret": SessionCodec.new_secret(),
        "signing_key_file": str(key_file),
        "idp_provider_url": "https://idp.example.com",
        "idp_client_id": "clawgate",
        "idp_client_secret": "s3cret",
        **certs(tmp_path, days=90),
        "routes": [
            {
                "from": "https://openclaw.example.com",
                "to": "http://127.0.0.1:18789",
                "allow_websockets": True,
                "allowed_users": ["alice@example.com"],
            }
        ],
    }


def test_sound_config_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, findings = audit("--config", str(write(tmp_path, sound_config(tmp_path))))
    assert code == 0, findings
    assert [f for f in findings if f["severity"] in ("high", "medium")] == []


def test_every_known_weakness_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "address": "127.0.0.1:8080",
        "insecure_server": True,
        "idp_provider_url": "https://idp.example.com",
        "idp_client_id": "clawgate",
        "idp_client_secret": "s3cret",
        "rate_limits": {"sign_in_per_ip": None},
        "routes": [
            {
                "from": "https://openclaw.example.com",
                "to": "http://127.0.0.1:18789",
                "allow_websockets": True,
                "allow_any_authenticated_user": True,
            },
            {
                "from": "https://open.example.com",
                "to": "http://10.0.0.5:18789",
                "allow_public_unauthenticated_access": True,
            },
            {
                "from": "https://docs.example.com",
                "to": "https://10.0.0.6",
                "allowed_domains": ["example.com"],
                "allow_unverified_email": True,
                "tls_skip_verify": True,
            },
        ],
    }
    code, findings = audit("--config", str(write(tmp_path, config, mode=0o644)))
    assert code == 1
    by_key = {(f["key"].split(" ")[0], f["severity"]) for f in findings}
    assert ("cookie_secret", "high") in by_key
    assert ("signing_key", "medium") in by_key
    assert ("insecure_server", "high") in by_key
    assert ("routes[0]", "high") in by_key  # any authenticated user on a WebSocket route
    assert ("routes[1]", "high") in by_key  # OpenClaw open to the public
    assert ("routes[2]", "medium") in by_key  # unverified email, tls_skip_verify
    assert ("config", "high") in by_key  # 0644 with an inline client secret
    assert ("rate_limits", "medium") in by_key
    assert all(f["fix"] for f in findings)
    text_code = main(["audit", "--config", str(tmp_path / "audit.yaml")])
    text = capsys.readouterr().out
    assert text_code == 1 and "[HIGH]" in text and "fix:" in text


def test_weak_secret_and_expiring_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = sound_config(tmp_path)
    config["cookie_secret"] = base64.b64encode(b"password" * 4).decode()
    config.update(certs(tmp_path, days=5))
    code, findings = audit("--config", str(write(tmp_path, config)))
    assert code == 1
    assert {"cookie_secret[0]", "certificate_file"} <= {f["key"] for f in findings}
    config["cookie_secret"] = SessionCodec.new_secret()
    path = write(tmp_path, config)
    expired = audit_config(
        load_snapshot(path), path, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    )
    assert [(f.key, f.severity) for f in expired if f.severity == "high"] == [
        ("certificate_file", "high")
    ]


def test_invalid_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routes: [{from: nope}]\n")
    assert main(["audit", "--config", str(path)]) == 2


async def test_deep_probe_of_a_running_deployment(
    idp: TestIdP, upstream: Upstream, tmp_path: Path
) -> None:
    port = free_port()
    register_client(idp, port)
    config = base_config(port, upstream.url, idp=idp)
    async with running_gate(config, tmp_path) as gate:
        os.chmod(gate.path, 0o600)
        closed = f"http://127.0.0.1:{free_port()}/"
        args = ["--config", str(gate.path), "--deep", "--insecure", "--base-url", gate.url]
        code, findings = await asyncio.to_thread(audit, *args, "--upstream-probe", closed)
        deep = [
            f
            for f in findings
            if f["key"] in ("upstream exposure", "jwks") or "unauthenticated" in f["message"]
        ]
        assert deep == [], deep
        # The test upstream listens where the audit runs: exposed, a high finding.
        code, findings = await asyncio.to_thread(
            audit, *args, "--upstream-probe", upstream.url + "/"
        )
        assert code == 1
        assert [f["severity"] for f in findings if f["key"] == "upstream exposure"] == ["high"]
        # clawgate answering without sign-in where the config says it must not (an old
        # process, a different config, something else on the port): the probe notices.
        private = write(tmp_path, gate.config)
        gate.write(
            {
                **gate.config,
                "routes": [
                    {**gate.config["routes"][0], "policy": [{"allow": {"or": [{"accept": True}]}}]}
                ],
            }
        )
        await asyncio.sleep(1.5)  # the running gate picks up the public policy
        code, findings = await asyncio.to_thread(
            audit, "--config", str(private), "--deep", "--insecure", "--base-url", gate.url
        )
        assert code == 1
        assert any(
            "unauthenticated request" in f["message"] and f["severity"] == "high" for f in findings
        ), findings


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rediss://:pw@redis.internal:6380/0", set()),
        ("redis://:pw@127.0.0.1:6379", set()),
        ("redis://:pw@redis.internal:6379", {"without TLS"}),
        ("rediss://redis.internal:6380", {"no password"}),
        ("redis://redis.internal:6379", {"without TLS", "no password"}),
        ("redis+sentinel://:pw@s1:26379,127.0.0.1:26379/main", {"without TLS"}),
    ],
)
def test_shared_store_connection(tmp_path: Path, url: str, expected: set[str]) -> None:
    config = sound_config(tmp_path) | {
        "databroker_storage_type": "redis",
        "databroker_storage_connection_string": url,
    }
    _, findings = audit("--config", str(write(tmp_path, config)))
    store = [f for f in findings if f["key"] == "databroker_storage_connection_string"]
    said = {marker for marker in ("without TLS", "no password")
            for f in store if marker in f["message"]}
    assert said == expected, store
    assert all("pw" not in json.dumps(f) for f in findings)  # never the password


def test_api_key_findings(tmp_path: Path) -> None:
    keys = tmp_path / "api_keys.yaml"
    config = sound_config(tmp_path) | {"api_keys_file": str(keys)}
    config_path = write(tmp_path, config)
    created = main(["apikey", "create", "forever", "--config", str(config_path)])
    assert created == 0
    keys.chmod(0o644)
    _, findings = audit("--config", str(config_path))
    about = {(f["severity"], f["key"]) for f in findings}
    assert ("medium", "apikey:forever") in about  # no expiry
    assert ("high", "api_keys_file") in about  # readable by others
