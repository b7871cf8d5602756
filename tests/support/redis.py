"""A real ``redis-server`` for the tests: on 127.0.0.1, a free port, its own directory.

Optionally with a password, TLS (a CA and a server certificate made here), data kept
across restarts (append-only file), or as a Sentinel watching another server. Faults
are real: ``stop()`` kills the process, ``pause()`` stops it (SIGSTOP, so connections
stay open and nothing answers), ``restart()`` starts it again on the same port.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import redis.asyncio

from tests.support.certificates import local_certificates
from tests.support.lifecycle import AsyncStartClose
from tests.support.upstream import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
_READY_WITHIN = 10.0


class RedisServer(AsyncStartClose):
    """``async with RedisServer(...) as server:`` runs one redis-server until the end."""

    def __init__(
        self,
        *,
        password: str | None = None,
        tls: bool = False,
        persist: bool = False,
        sentinel_of: tuple[str, RedisServer] | None = None,
    ) -> None:
        self.password = password
        self.tls = tls
        self.persist = persist
        # (service name, master): run as a Sentinel monitoring that master.
        self.sentinel_of = sentinel_of
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="clawgate-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        if tls:
            self.ca_file, self.cert_file, self.key_file = local_certificates(self.dir)

    @property
    def url(self) -> str:
        """The connection string for clawgate's store (the CA file included for TLS)."""
        return self.url_with(self.password)

    def url_with(self, password: str | None, *, user: str = "") -> str:
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}?ssl_ca_certs={self.ca_file}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self.process = subprocess.Popen(
            [REDIS_SERVER, *self._arguments()],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await self._wait_ready()
        return self

    async def stop(self) -> None:
        """Kill it (SIGKILL: no goodbye to clients, nothing saved on the way out)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            await asyncio.to_thread(process.wait)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def client(self) -> redis.asyncio.Redis:
        """An administrative client (the caller closes it)."""
        kwargs: dict[str, Any] = {"password": self.password, "socket_timeout": 5}
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.ca_file))
        return redis.asyncio.Redis(host="127.0.0.1", port=self.port, **kwargs)

    async def command(self, *args: Any) -> Any:
        client = self.client()
        try:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _arguments(self) -> list[str]:
        if self.sentinel_of is not None:
            return [self._sentinel_config(), "--sentinel"]
        args = ["--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir)]
        args += ["--logfile", str(self.dir / "redis.log")]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.cert_file), "--tls-key-file", str(self.key_file)]
            args += ["--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        return args

    def _sentinel_config(self) -> str:
        """Sentinel rewrites its configuration file, so it gets one of its own."""
        assert self.sentinel_of is not None
        service, master = self.sentinel_of
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {self.dir}",
            f"logfile {self.dir / 'sentinel.log'}",
            f"sentinel monitor {service} 127.0.0.1 {master.port} 1",
            f"sentinel down-after-milliseconds {service} 5000",
        ]
        if master.password:
            lines.append(f"sentinel auth-pass {service} {master.password}")
        path = self.dir / "sentinel.conf"
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_WITHIN
        client = self.client()
        if self.sentinel_of is not None:
            client = redis.asyncio.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self._log_tail()}")
                try:
                    if await client.ping():
                        return
                except (redis.RedisError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer: {self._log_tail()}")
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def _log_tail(self) -> str:
        for name in ("redis.log", "sentinel.log"):
            path = self.dir / name
            if path.exists():
                return path.read_text(errors="replace")[-2000:]
        return "(no log)"
