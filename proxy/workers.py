"""``workers: N``: N clawgate processes sharing the listening port (SO_REUSEPORT).

The process started by ``clawgate serve`` becomes a supervisor: it starts N workers
(each a full ``clawgate serve`` with ``_CLAWGATE_WORKER=<index>`` in its environment),
restarts one that dies, and on SIGTERM/SIGINT passes the signal on and waits for them
to drain. The kernel spreads new connections over the workers.

Whatever a lone process would generate at start must be the same in every worker, or a
cookie sealed by one would be refused by the next: the supervisor makes the ephemeral
cookie secret, signing key and self-signed certificate once and hands them to the
workers through the environment (``CLAWGATE_<KEY>``), and points the workers' metrics
at one shared directory so a scrape adds them all up. Worker 0 alone serves the health
and metrics listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from proxy.assertion import generate_signing_key
from proxy.metrics import MULTIPROC_ENV
from proxy.peers import PEERS_ENV
from proxy.session import SessionCodec
from proxy.settings import Settings
from proxy.tls import generate_self_signed

log = structlog.get_logger("clawgate.workers")

WORKER_ENV = "_CLAWGATE_WORKER"
_STARTUP_GRACE = 5.0


def worker_index() -> int | None:
    """This process's worker number, or None when it is not a supervised worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def _shared_environment(settings: Settings, hosts: list[str], private: Path) -> dict[str, str]:
    env = dict(os.environ)
    if not settings.cookie_secret:
        env["CLAWGATE_COOKIE_SECRET"] = SessionCodec.new_secret()
        log.warning(
            "cookie_secret_generated",
            detail="no cookie_secret configured: sessions "
            "end at restart and replicas cannot share them. Set one (clawgate secret).",
        )
    if settings.signing_key is None:
        env["CLAWGATE_SIGNING_KEY"] = generate_signing_key()
        log.warning(
            "signing_key_generated",
            detail="no signing_key configured: the identity "
            "assertion key changes at restart; replicas must share one (clawgate keygen).",
        )
    if not settings.insecure_server and settings.certificate_file is None:
        made = generate_self_signed(hosts)
        cert, key = private / "cert.pem", private / "key.pem"
        cert.write_bytes(made.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(made.key_pem)
        env["CLAWGATE_CERTIFICATE_FILE"] = str(cert)
        env["CLAWGATE_CERTIFICATE_KEY_FILE"] = str(key)
    if settings.metrics_address:
        metrics_dir = private / "metrics"
        metrics_dir.mkdir()
        env[MULTIPROC_ENV] = str(metrics_dir)
    return env


async def supervise(
    config_path: Path,
    settings: Settings,
    hosts: list[str],
    count: int,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Run ``count`` workers until ``stop``; raises OSError if they cannot start."""
    private = Path(tempfile.mkdtemp(prefix="clawgate-workers-"))  # mode 0700
    env = _shared_environment(settings, hosts, private)
    procs: dict[int, asyncio.subprocess.Process] = {}
    started: dict[int, float] = {}
    failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def start(index: int) -> None:
        procs[index] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy.cli",
            "serve",
            "--config",
            str(config_path),
            env={**env, WORKER_ENV: str(index), PEERS_ENV: str(private)},
        )
        started[index] = time.monotonic()
        log.info("worker_started", worker=index, pid=procs[index].pid)

    async def watch(index: int) -> None:
        while not stop.is_set():
            code = await procs[index].wait()
            if stop.is_set():
                return
            _mark_dead(env, procs[index].pid)
            if time.monotonic() - started[index] < _STARTUP_GRACE and code != 0:
                if not failed.done():
                    failed.set_result(f"worker {index} exited with code {code} at start")
                return
            log.error("worker_exited", worker=index, code=code, detail="starting a new one")
            await asyncio.sleep(1.0)
            if not stop.is_set():
                await start(index)

    watchers: list[asyncio.Task[None]] = []
    try:
        for index in range(count):
            await start(index)
        watchers = [asyncio.create_task(watch(i)) for i in range(count)]
        log.info("workers_running", workers=count)
        if ready is not None:
            ready.set()
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        either: set[asyncio.Future[Any]] = {stopped, failed}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if failed.done():
            raise OSError(failed.result())
    finally:
        stop.set()
        for proc in procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = settings.shutdown_timeout + 5.0
        for proc in procs.values():
            try:
                await asyncio.wait_for(proc.wait(), deadline)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in watchers:
            task.cancel()
        shutil.rmtree(private, ignore_errors=True)
        log.info("workers_stopped")


def _mark_dead(env: dict[str, str], pid: int) -> None:
    directory = env.get(MULTIPROC_ENV)
    if directory:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
