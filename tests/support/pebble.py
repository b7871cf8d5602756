"""A real Pebble (Let's Encrypt's test ACME CA) for the autocert tests.

Everything listens on 127.0.0.1 on free ports. ``pebble-challtestsrv`` runs only as
Pebble's DNS server and answers every name with 127.0.0.1, so Pebble's validation
connections for ``a.test`` and friends land on the ports the test's own challenge
responders listen on (``http_port`` for HTTP-01, ``tls_port`` for TLS-ALPN-01).

Pebble's API needs a certificate of its own: a small CA and a server certificate for
127.0.0.1/localhost are made here (``ca_file`` is what clients trust to talk to it).
The certificates Pebble *issues* chain to a root it makes afresh at every start,
``root_pem()`` fetches it from the management port. ``stop()`` kills Pebble (every
account, order and root is forgotten, as with a real CA one cannot reach) and
``start()`` brings it back on the same ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

from tests.support.certificates import local_certificates
from tests.support.lifecycle import AsyncStartClose
from tests.support.upstream import free_port

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"
_READY_WITHIN = 15.0


class Pebble(AsyncStartClose):
    """``async with Pebble(http_port=..., tls_port=...) as pebble:`` runs Pebble and its
    DNS until the end of the block."""

    def __init__(
        self,
        *,
        http_port: int,
        tls_port: int,
        validity_seconds: int | None = None,
        eab_keys: dict[str, str] | None = None,
    ) -> None:
        self.http_port = http_port
        self.tls_port = tls_port
        self.validity_seconds = validity_seconds
        # key id -> base64url HMAC key; when given, accounts need external binding.
        self.eab_keys = eab_keys
        self.port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port()
        self.dns_management_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="clawgate-pebble-"))
        self.ca_file, self._cert_file, self._key_file = local_certificates(self.dir, prefix="api-")
        self.log_file = self.dir / "pebble.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.dns: subprocess.Popen[bytes] | None = None

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def log_text(self) -> str:
        """Everything Pebble printed, across restarts."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self) -> Self:
        if self.dns is None or self.dns.poll() is not None:
            self.dns = subprocess.Popen(
                [
                    CHALLTESTSRV,
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{self.dns_management_port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        config = self.dir / "pebble-config.json"
        config.write_text(json.dumps({"pebble": self._config()}))
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            # Every order proves control afresh, so renewals exercise the challenges too.
            "PEBBLE_AUTHZREUSE": "0",
        }
        log = self.log_file.open("ab")
        try:
            self.process = subprocess.Popen(
                [PEBBLE, "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        await self._wait_ready()
        return self

    async def stop(self) -> None:
        """Kill Pebble (its DNS keeps running); it forgets everything."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)

    async def close(self) -> None:
        await self.stop()
        dns, self.dns = self.dns, None
        if dns is not None and dns.poll() is None:
            dns.kill()
            await asyncio.to_thread(dns.wait)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def root_pem(self) -> str:
        """The root the certificates Pebble issues chain to (new at every start)."""
        return await asyncio.to_thread(self._get, "/roots/0")

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self._cert_file),
            "privateKey": str(self._key_file),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab_keys is not None,
        }
        if self.eab_keys is not None:
            config["externalAccountMACKeys"] = self.eab_keys
        if self.validity_seconds is not None:
            config["certificateValidityPeriod"] = self.validity_seconds
        return config

    def _get(self, path: str) -> str:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.management_port}{path}"
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return str(response.read().decode())

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_WITHIN
        context = ssl.create_default_context(cafile=str(self.ca_file))

        def directory() -> bool:
            try:
                with urllib.request.urlopen(self.directory_url, context=context, timeout=2):
                    return True
            except OSError:
                return False

        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"pebble exited: {self.log_text()[-2000:]}")
            if await asyncio.to_thread(directory):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pebble did not answer: {self.log_text()[-2000:]}")
            await asyncio.sleep(0.05)
