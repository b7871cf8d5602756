"""Local demo: test IdP + an upstream + clawgate on https://127.0.0.1:8443.

Run through ``scripts/demo`` (which installs what is needed first). ``--openclaw``
puts the real OpenClaw gateway behind clawgate instead of the small echo upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.assertion import generate_signing_key  # noqa: E402
from proxy.session import SessionCodec  # noqa: E402
from tests.support.idp import DEFAULT_USERS, TestIdP  # noqa: E402
from tests.support.upstream import Upstream, free_port  # noqa: E402

STATE = ROOT / ".cache" / "demo"
CLIENT_ID = "clawgate-demo"
CLIENT_SECRET = "clawgate-demo-secret"  # noqa: S105 - a throwaway local demo client


def _secret(name: str, make: object) -> Path:
    path = STATE / name
    if not path.exists():
        assert callable(make)
        path.write_text(str(make()))
        path.chmod(0o600)
    return path


def write_config(port: int, upstream: str, issuer: str, openclaw: bool) -> Path:
    STATE.mkdir(parents=True, exist_ok=True)
    route: dict[str, object] = {
        "from": f"https://127.0.0.1:{port}",
        "to": upstream,
        "allow_websockets": True,
        "pass_identity_headers": True,
        "policy": [{"allow": {"or": [{"domain": {"is": "example.com"}}]}}],
    }
    config = {
        "address": f"127.0.0.1:{port}",
        "health_address": f"127.0.0.1:{free_port()}",
        "idp_provider_url": issuer,
        "idp_client_id": CLIENT_ID,
        "idp_client_secret": CLIENT_SECRET,
        "cookie_secret_file": str(_secret("cookie_secret", SessionCodec.new_secret)),
        "signing_key_file": str(_secret("signing_key.pem", generate_signing_key)),
        "jwt_claims_headers": {"x-pomerium-claim-email": "email"},
        "log_format": "console",
        "routes": [route],
    }
    path = STATE / "config.yaml"
    path.write_text(
        "# Written by scripts/demo.py for the local demo; edit routes/policy freely.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    path.chmod(0o600)
    return path


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--openclaw", action="store_true",
                        help="put the real OpenClaw gateway behind clawgate (installs ~650 MB once)")
    args = parser.parse_args()

    idp = TestIdP()
    idp.start()
    base = f"https://127.0.0.1:{args.port}"
    idp.add_client(CLIENT_ID, CLIENT_SECRET, [f"{base}/.clawgate/callback"],
                   [f"{base}/.clawgate/signed_out"])
    stack = contextlib.AsyncExitStack()
    stack.callback(idp.stop)
    if args.openclaw:
        from tests.support.openclaw import demo_gateway  # the e2e harness starts it

        upstream_url = await stack.enter_async_context(demo_gateway(base))
    else:
        echo = await Upstream().start()
        stack.push_async_callback(echo.stop)
        upstream_url = echo.url
    config = write_config(args.port, upstream_url, idp.issuer, args.openclaw)
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "clawgate"), "serve", "--config", str(config)], cwd=ROOT
    )
    await asyncio.sleep(1.5)
    users = "\n".join(f"      {u.username:<26} password {u.password}" for u in DEFAULT_USERS)
    print(
        f"""
  clawgate demo is running
    open       {base}/   (self-signed certificate: accept the browser warning)
    upstream   {upstream_url} ({"OpenClaw gateway" if args.openclaw else "echo server"})
    IdP        {idp.issuer}
    config     {config}
    policy     users at example.com are allowed; mallory@evil.test is denied
    test users
{users}
  Ctrl-C stops everything.
""",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    exited = asyncio.create_task(asyncio.to_thread(proc.wait))
    await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait)
    await stack.aclose()
    return proc.returncode or 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(asyncio.run(main()))
