"""The clawgate command line: check, secret, keygen, policy explain/test."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from proxy.assertion import load_signing_key

CONFIG = """\
idp_provider_url: https://idp.example.com
idp_client_id: clawgate
idp_client_secret: s3cret
routes:
  - from: https://openclaw.example.com
    to: http://openclaw-gateway:18789
    prefix: /admin/
    policy:
      - allow: {and: [{groups: {has: admins}}]}
  - from: https://openclaw.example.com
    to: http://openclaw-gateway:18789
    allow_websockets: true
    policy:
      - allow:
          or:
            - email: {is: alice@example.com}
            - domain: {is: example.com}
        deny:
          or:
            - http_path: {starts_with: /secret}
"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args], capture_output=True, text=True, timeout=60,
        cwd=cwd or Path(__file__).resolve().parents[2],
    )


def test_secret_and_keygen() -> None:
    secret = run("secret").stdout.strip()
    assert len(base64.b64decode(secret)) == 32
    pem = run("keygen").stdout
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert load_signing_key(pem).curve.name == "secp256r1"


def test_check_ok_and_error_with_line(tmp_path: Path) -> None:
    good = tmp_path / "config.yaml"
    good.write_text(CONFIG)
    result = run("check", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "routes:   2" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("- domain:", "- domian:"))
    result = run("check", "--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:17: routes[1].policy[0].allow.or[1].domian" in result.stderr


def test_policy_explain(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    allow = run("policy", "explain", "--config", str(config), "--email", "bob@example.com",
                "GET", "https://openclaw.example.com/chat")
    assert allow.returncode == 0
    assert allow.stdout.startswith("ALLOW")
    assert "domain is example.com" in allow.stdout
    assert "holds until: no time rule applies" in allow.stdout
    deny = run("policy", "explain", "--config", str(config), "--email", "bob@example.com",
               "GET", "https://openclaw.example.com/x/../secret/k")
    assert deny.returncode == 1
    assert deny.stdout.startswith("DENY") and "http_path starts_with /secret" in deny.stdout
    admin = run("policy", "explain", "--config", str(config), "--email", "bob@example.com",
                "--groups", "admins,staff", "GET", "https://openclaw.example.com/admin/x")
    assert admin.returncode == 0 and "/admin/" in admin.stdout


def test_policy_test_table(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    table = tmp_path / "cases.yaml"
    table.write_text(
        "- {method: GET, url: 'https://openclaw.example.com/', email: alice@example.com, expect: allow}\n"
        "- {method: GET, url: 'https://openclaw.example.com/admin/x', email: bob@example.com, expect: deny}\n"
        "- {method: GET, url: 'https://openclaw.example.com/', expect: deny}\n"
    )
    result = run("policy", "test", "--config", str(config), str(table))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 0 failed" in result.stdout
    table.write_text(table.read_text() + "- {method: GET, url: 'https://openclaw.example.com/', "
                     "email: eve@evil.test, expect: allow}\n")
    result = run("policy", "test", "--config", str(config), str(table))
    assert result.returncode == 1
    assert f"FAIL {table}:4" in result.stdout
    table.write_text("- {method: GET, url: 'https://openclaw.example.com/', expct: allow}\n")
    result = run("policy", "test", "--config", str(config), str(table))
    assert result.returncode == 2 and ":1:" in result.stderr


def test_probe_needs_every_url_to_answer_2xx() -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert run("probe", "--url", f"{base}/ok").returncode == 0
        assert run("probe", "--url", f"{base}/ok", "--url", f"{base}/down").returncode == 1
        assert run("probe", "--url", "http://127.0.0.1:1/").returncode == 1
    finally:
        server.shutdown()


def test_check_names_the_store_without_its_password(tmp_path: Path) -> None:
    memory = tmp_path / "memory.yaml"
    memory.write_text(CONFIG)
    assert "store:    memory" in run("check", "--config", str(memory)).stdout
    secret = tmp_path / "redis_url"
    secret.write_text("rediss://:s3cr3t-pw@redis.internal:6380/2\n")
    shared = tmp_path / "redis.yaml"
    shared.write_text(CONFIG + "databroker_storage_type: redis\n"
                      f"databroker_storage_connection_string_file: {secret}\n")
    result = run("check", "--config", str(shared))
    assert result.returncode == 0, result.stderr
    assert "store:    redis rediss://redis.internal:6380/2, key prefix 'clawgate:'" in result.stdout
    assert "s3cr3t" not in result.stdout + result.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(CONFIG + "databroker_storage_type: redis\n")
    result = run("check", "--config", str(wrong))
    assert result.returncode == 2
    assert "databroker_storage_connection_string" in result.stderr
