"""Local demo: test IdP + an upstream + clawgate on https://127.0.0.1:8443.

Run through ``scripts/demo`` (which installs what is needed first). ``--openclaw``
puts the real OpenClaw gateway behind clawgate instead of the small echo upstream.

OpenClaw refuses a client whose forwarded address is loopback (it cannot tell a
proxied browser on 127.0.0.1 from any other local process), so with ``--openclaw``
clawgate listens on a non-loopback address of this machine and the browser opens
that: a private 10.213.x.1 on a veth pair when run as root (nothing else can reach
it), otherwise this machine's own primary address, or whatever ``--host`` names.
A browser on this machine then connects from that same address, which the gateway
accepts. The test IdP stays on 127.0.0.1, reachable by that browser as usual.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
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


def primary_ipv4() -> str | None:
    """The address this machine uses towards other hosts (no packet is sent), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects a route
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def pick_openclaw_host(requested: str | None, stack: contextlib.ExitStack) -> str:
    """A non-loopback address for clawgate to listen on; see the module docstring."""
    if requested:
        if ipaddress.ip_address(requested).is_loopback:
            sys.exit(f"--host {requested}: OpenClaw refuses loopback clients; pick another address")
        return requested
    from tests.support.netns import NetNamespace

    if NetNamespace.available() is None:
        ns = stack.enter_context(NetNamespace())  # removed again when the demo stops
        return ns.host_addr
    address = primary_ipv4()
    if address is None:
        sys.exit(
            "scripts/demo --openclaw needs a non-loopback address for clawgate: run it as root "
            "(it then creates a private one) or pass --host <an address of this machine>"
        )
    print(f"  note: clawgate listens on {address}, which other machines may reach; "
          "run as root for a private address instead", file=sys.stderr)
    return address


def write_config(host: str, port: int, upstream: str, issuer: str) -> Path:
    STATE.mkdir(parents=True, exist_ok=True)
    route: dict[str, object] = {
        "from": f"https://{host}:{port}",
        "to": upstream,
        "allow_websockets": True,
        "pass_identity_headers": True,
        "policy": [{"allow": {"or": [{"domain": {"is": "example.com"}}]}}],
    }
    config = {
        "address": f"{host}:{port}",
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


async def wait_listening(proc: subprocess.Popen[bytes], host: str, port: int) -> None:
    """Until clawgate accepts connections (or exits, which is an error)."""
    for _ in range(150):
        if proc.poll() is not None:
            sys.exit(f"clawgate exited with {proc.returncode}; see its output above")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            await asyncio.sleep(0.1)
    sys.exit(f"clawgate is not listening on {host}:{port} after 15 s")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--openclaw", action="store_true",
                        help="put the real OpenClaw gateway behind clawgate "
                             "(installs ~650 MB once)")
    parser.add_argument("--host", default=None,
                        help="with --openclaw: the non-loopback address clawgate listens on "
                             "(default: a private one when root, else this machine's address)")
    args = parser.parse_args()

    async with contextlib.AsyncExitStack() as stack:
        sync_stack = stack.enter_context(contextlib.ExitStack())
        host = pick_openclaw_host(args.host, sync_stack) if args.openclaw else "127.0.0.1"
        idp = stack.enter_context(TestIdP())
        base = f"https://{host}:{args.port}"
        idp.add_client(CLIENT_ID, CLIENT_SECRET, [f"{base}/.clawgate/callback"],
                       [f"{base}/.clawgate/signed_out"])
        if args.openclaw:
            from tests.support.openclaw import demo_gateway  # the e2e harness starts it

            print("  starting the OpenClaw gateway (about 20 s)...", flush=True)
            allowed = [u.email for u in DEFAULT_USERS if u.email.endswith("@example.com")]
            upstream_url = await stack.enter_async_context(
                demo_gateway(base, allow_users=allowed)
            )
        else:
            echo = await Upstream().start()
            stack.push_async_callback(echo.stop)
            upstream_url = echo.url
        config = write_config(host, args.port, upstream_url, idp.issuer)
        proc = subprocess.Popen(  # noqa: S603, ASYNC220 - our own entry point, started once
            [str(ROOT / ".venv" / "bin" / "clawgate"), "serve", "--config", str(config)],
            cwd=ROOT,
        )
        stack.callback(_stop, proc)
        await wait_listening(proc, host, args.port)
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
        waiter.cancel()
        _stop(proc)
        return proc.returncode or 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(asyncio.run(main()))
