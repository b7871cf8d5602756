"""clawgate end-to-end benchmark: one command, a few minutes, loopback only.

Run from the repository root::

    .venv/bin/python bench/run.py                 # full run (about 6 minutes)
    .venv/bin/python bench/run.py --quick         # 3 s per load run, smaller transfers
    .venv/bin/python bench/run.py --json out.json # also write the results as JSON

It starts, all on 127.0.0.1:
- a fast upstream: nginx (Debian package) serving a 1 KB body (head and body in one
  segment, as the gateway's Node sends them) and a sparse 1 GB file, plus a bare
  WebSocket echo / upload sink (bench/servers.py);
- nginx as a TLS reverse proxy, 1 worker, upstream keep-alive pool (the reference);
- an aiohttp server over TLS answering by itself (the bar clawgate is held to);
- clawgate itself (``python -m proxy.cli serve``) with a realistic policy, and a real
  signed-in session minted with clawgate's own SessionCodec and cookie_secret.

Loads: wrk (Debian package) for HTTP, bench/wsload.py for WebSockets, curl for the
1 GB transfers. The auth step is timed in-process. Needs nginx, wrk and curl on PATH
(``scripts/setup --full`` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.auth_step_bench import per_call_us  # noqa: E402
from bench.proc import cpu_seconds, family_rss_kb  # noqa: E402
from policy.model import RequestFacts  # noqa: E402
from proxy.identity import to_identity  # noqa: E402
from proxy.session import Session, parse_cookie_header  # noqa: E402
from proxy.settings import load_settings  # noqa: E402
from proxy.snapshot import build_snapshot  # noqa: E402
from proxy.tls import generate_self_signed  # noqa: E402

PY = sys.executable
USER_EMAIL = "ada@corp7.example"  # not listed: allowed through a group listed last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> float:
    """Seconds until ``port`` accepts a TCP connection."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.perf_counter() - start
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class RssSampler:
    """Peak RSS of a process tree, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = family_rss_kb(pid)
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, ValueError):
                self.peak = max(self.peak, family_rss_kb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Bench:
    tmp: Path
    seconds: float
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, args: list[str], name: str, **kw: Any) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


# --- nginx -----------------------------------------------------------------------------

# sendfile with tcp_nopush, as Debian's own nginx.conf has it: a response's head and a
# small body leave in one segment, as they do from the gateway (Node's http writes them
# with one writev). With sendfile alone nginx sends the head and then the body, two
# segments per 1 KB response, and every proxy in front pays for the second: one more
# delivery and, the second being a push, an immediate ACK when it reads them
# (`--split-upstream` measures that).
_NGINX_COMMON = """
user root;
worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 20000; }}
http {{
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
  access_log off;
  keepalive_requests 1000000;
  sendfile on;
  tcp_nopush {nopush};
  {body}
}}
"""


def nginx_upstream_conf(tmp: Path, port: int, split: bool = False) -> str:
    body = f"""
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {tmp}/www;
    location / {{ default_type text/plain; }}
  }}"""
    return _NGINX_COMMON.format(tmp=tmp, name="nginx-upstream", body=body, workers=1,
                                nopush="off" if split else "on")


def nginx_proxy_conf(tmp: Path, port: int, upstream: int, ws_upstream: int,
                     workers: int = 1) -> str:
    body = f"""
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  server {{
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {tmp}/cert.pem;
    ssl_certificate_key {tmp}/key.pem;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location /ws {{
      proxy_pass http://127.0.0.1:{ws_upstream};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
    }}
  }}"""
    name = "nginx-proxy" if workers == 1 else f"nginx-proxy-w{workers}"
    return _NGINX_COMMON.format(tmp=tmp, name=name, body=body, workers=workers, nopush="on")


# --- clawgate ----------------------------------------------------------------------------


def policy_lists() -> dict[str, Any]:
    """A few hundred emails, domains and groups, as an organisation would list them."""
    emails = [f"user{i}@corp{i % 13}.example" for i in range(300)]
    domains = [f"dept{i}.example.org" for i in range(200)]
    groups = [f"team-{i}" for i in range(200)]
    return {
        "allowed_users": emails,
        "policy": [
            {"allow": {"or": [*({"domain": {"is": d}} for d in domains),
                              *({"groups": {"has": g}} for g in groups)]}},
            {"deny": {"or": [{"http_path": {"starts_with": "/admin"}}]}},
        ],
    }


def clawgate_config(tmp: Path, port: int, upstream: int, ws_upstream: int, workers: int,
                    metrics: bool, fast: bool) -> dict[str, Any]:
    origin = f"https://127.0.0.1:{port}"
    common: dict[str, Any] = {"from": origin, "pass_identity_headers": True, **policy_lists()}
    config: dict[str, Any] = {
        "address": f"127.0.0.1:{port}",
        "certificate_file": str(tmp / "cert.pem"),
        "certificate_key_file": str(tmp / "key.pem"),
        "health_address": f"127.0.0.1:{free_port()}",
        "cookie_secret": "8uXG7lJ9t1m1J3lq7h1a0kqB0Wm6o1Jb5zq4Jk2n1xQ=",
        "log_level": "info",
        "log_format": "json",
        "workers": workers,
        # Every load connection comes from 127.0.0.1: the per-IP cap would stop the
        # idle WebSocket test at its default of 256.
        "max_connections_per_ip": 50_000,
        "idp_provider_url": f"http://127.0.0.1:{ws_upstream}",
        "idp_client_id": "bench",
        "idp_client_secret": "bench-secret",
        "jwt_claims_headers": {"X-Pomerium-Claim-Email": "email"},
        "routes": [
            {**common, "prefix": "/ws", "to": f"http://127.0.0.1:{ws_upstream}",
             "allow_websockets": True},
            {**common, "prefix": "/upload", "to": f"http://127.0.0.1:{ws_upstream}"},
            {**common, "to": f"http://127.0.0.1:{upstream}"},
        ],
    }
    if metrics:
        config["metrics_address"] = f"127.0.0.1:{free_port()}"
    # fast_path: the front (proxy/front.py); off, every request takes the full handler.
    config["fast_path"] = fast
    return config


def mint_cookie(config_path: Path, port: int) -> str:
    """A real signed-in session, sealed with the configured cookie_secret."""
    settings, located = load_settings(config_path)
    snap = build_snapshot(settings, located, str(config_path))
    now = int(time.time())
    session = Session.create(
        sub="248289761001", email=USER_EMAIL, email_verified=True,
        groups=["staff", "team-199"], claims={"name": "Bench User"},
        host=f"127.0.0.1:{port}", now=now, lifetime=8 * 3600, refresh_at=now + 3600,
        refresh_token="r" * 200, id_token="i" * 300,
    )
    pairs = snap.keys.codec.encode(session)
    return "; ".join(f"{n}={v}" for n, v in pairs)


def auth_step_us(config_path: Path, cookie: str, port: int) -> dict[str, float]:
    """Cookie decode (cache hit) + policy decision + identity assertion, in-process."""
    settings, located = load_settings(config_path)
    snap = build_snapshot(settings, located, str(config_path))
    route = snap.routes[-1]
    codec, signer, name = snap.keys.codec, snap.keys.signer, snap.keys.cookie_name
    header = f"_ga=GA1.2.3456.7890; theme=dark; {cookie}"
    host = f"127.0.0.1:{port}"

    def step() -> object:
        now = int(time.time())
        session = codec.decode(parse_cookie_header(header, name), host=host, now=now)
        assert session is not None
        identity = to_identity(session)
        facts = RequestFacts("GET", "/", "127.0.0.1", datetime.now(UTC))
        decision = route.policy.decide(facts, identity)
        assert decision.allow, decision.reason
        return signer.sign(session, audience=host, now=now)

    step()
    return {"auth_step_us": per_call_us(step, 0.5)}


# --- load generators ---------------------------------------------------------------------

_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, seconds: float, cookie: str | None = None, conns: int = 64,
        pid: int | None = None) -> dict[str, Any]:
    """wrk's numbers, plus the server's CPU time per request when ``pid`` is given.

    On a shared machine requests/s moves with the neighbours' load; CPU per request
    does much less, so it is the steadier figure for before/after comparisons."""
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds:g}s", "--latency", url]
    if cookie:
        cmd[1:1] = ["-H", f"Cookie: {cookie}"]
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "rps": round(rps, 1),
        "p50_us": round(_us(lat["50"]), 1),
        "p99_us": round(_us(lat["99"]), 1),
        "cpu_us_per_req": round(cpu / total * 1e6, 1) if pid and total else None,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def wsload(mode: str, url: str, cookie: str | None, watch: dict[str, int] | None = None,
           **kw: Any) -> list[str]:
    cmd = [PY, str(ROOT / "bench/wsload.py"), mode, "--url", url]
    if cookie:
        cmd += ["--cookie", cookie]
    for name, pid in (watch or {}).items():
        cmd += ["--watch", f"{name}={pid}"]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def curl_speed(args: list[str], cookie: str) -> tuple[float, int]:
    out = subprocess.run(
        ["curl", "-sk", "-o", "/dev/null", *(["-H", f"Cookie: {cookie}"] if cookie else []),
         "-w", "%{http_code} %{speed_download} %{speed_upload}", *args],
        capture_output=True, text=True, timeout=300,
    ).stdout.split()
    code, down, up = int(out[0]), float(out[1]), float(out[2])
    return max(down, up) / 1e6, code


# --- the run -----------------------------------------------------------------------------


@contextlib.contextmanager
def environment(args: argparse.Namespace) -> Iterator[Bench]:
    for tool in ("nginx", "wrk", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} not found (scripts/setup --full installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="clawgate-bench-"))
    bench = Bench(tmp, args.seconds)
    try:
        yield bench
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


def start_clawgate(bench: Bench, name: str, config: dict[str, Any], port: int
                   ) -> tuple[subprocess.Popen[bytes], Path, float]:
    path = bench.tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.perf_counter()
    proc = bench.spawn([PY, "-m", "proxy.cli", "serve", "--config", str(path)], name)
    wait_port(port, proc)
    # Listening is not enough with several workers: wait until every one answers.
    ready = time.perf_counter() - started
    return proc, path, ready


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "settings": {"seconds": args.seconds, "runs": args.runs, "connections": 64,
                     "ws_connections": 50,
                     "ws_message_bytes": 100, "fast_path": args.fast,
                     "metrics": args.metrics, "split_upstream": args.split_upstream},
        "http": {}, "ws": {},
    }
    with environment(args) as bench:
        tmp = bench.tmp
        cert = generate_self_signed(["127.0.0.1", "localhost"])
        (tmp / "cert.pem").write_bytes(cert.cert_pem)
        (tmp / "key.pem").write_bytes(cert.key_pem)
        (tmp / "www").mkdir()
        (tmp / "www/index.html").write_bytes(b"x" * 1024)
        big_mb = args.stream_mb
        with open(tmp / "www/big", "wb") as f:
            f.truncate(big_mb * 1024 * 1024)  # sparse: costs no disk
        up_port, ws_port, ng_port, self_port, cg_port, pipe_port = (
            free_port() for _ in range(6))

        (tmp / "up.conf").write_text(nginx_upstream_conf(tmp, up_port, args.split_upstream))
        (tmp / "proxy.conf").write_text(nginx_proxy_conf(tmp, ng_port, up_port, ws_port))
        pids = {
            "nginx-upstream": bench.spawn(
                ["nginx", "-p", str(tmp), "-c", str(tmp / "up.conf")], "nginx-upstream").pid,
            "nginx-proxy": bench.spawn(
                ["nginx", "-p", str(tmp), "-c", str(tmp / "proxy.conf")], "nginx-proxy").pid,
            "ws-upstream": bench.spawn(
                [PY, str(ROOT / "bench/servers.py"), "upstream", "--port", str(ws_port)],
                "ws-upstream").pid,
            "self": bench.spawn(
                [PY, str(ROOT / "bench/servers.py"), "self", "--port", str(self_port),
                 "--cert", str(tmp / "cert.pem"), "--key", str(tmp / "key.pem")], "self").pid,
            "pipe": bench.spawn(
                [PY, str(ROOT / "bench/servers.py"), "pipe", "--port", str(pipe_port),
                 "--cert", str(tmp / "cert.pem"), "--key", str(tmp / "key.pem"),
                 "--upstream", str(up_port)], "pipe").pid,
        }
        # The reference with as many workers as each clawgate worker count measured:
        # whether the machine has room for a second worker shows there first.
        ng_workers: dict[int, int] = {}
        for workers in args.workers:
            if workers > 1 and not args.serve:
                ng_workers[workers] = free_port()
                name = f"nginx-proxy-w{workers}"
                (tmp / f"{name}.conf").write_text(nginx_proxy_conf(
                    tmp, ng_workers[workers], up_port, ws_port, workers=workers))
                pids[name] = bench.spawn(
                    ["nginx", "-p", str(tmp), "-c", str(tmp / f"{name}.conf")], name).pid
        for port in (up_port, ws_port, ng_port, self_port, pipe_port, *ng_workers.values()):
            wait_port(port, None)

        def clawgate(workers: int) -> tuple[subprocess.Popen[bytes], Path, float]:
            config = clawgate_config(tmp, cg_port, up_port, ws_port, workers,
                                     args.metrics, args.fast)
            return start_clawgate(bench, f"clawgate-w{workers}", config, cg_port)

        def other_path() -> tuple[subprocess.Popen[bytes], int, str]:
            """clawgate on the request path this run does not measure for HTTP."""
            port = free_port()
            config = clawgate_config(tmp, port, up_port, ws_port, 1, args.metrics,
                                     not args.fast)
            started, path, _ = start_clawgate(bench, "clawgate-other-path", config, port)
            return started, port, mint_cookie(path, port)

        proc, cfg_path, startup = clawgate(1)
        results["startup_s"] = round(startup, 3)
        cookie = mint_cookie(cfg_path, cg_port)
        check = subprocess.run(
            ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
             "-H", f"Cookie: {cookie}", f"https://127.0.0.1:{cg_port}/"],
            capture_output=True, text=True, timeout=10,
        ).stdout
        if check != "200 1024":
            raise SystemExit(f"clawgate did not serve the signed-in request: {check!r} "
                             f"(log: {tmp}/clawgate-w1.log)")
        results.update(auth_step_us(cfg_path, cookie, cg_port))
        if args.serve:
            # For profiling by hand: everything stays up for a while, nothing is measured.
            (tmp / "cookie.txt").write_text(cookie)
            print(json.dumps({"direct": up_port, "ws_upstream": ws_port, "nginx": ng_port,
                              "aiohttp_self": self_port, "clawgate": cg_port,
                              "clawgate_pid": proc.pid, "cookie_file": str(tmp / "cookie.txt")}),
                  flush=True)
            time.sleep(args.serve)
            return results

        # The same clawgate with log_level: warning, beside it: what the two info lines
        # per request (decision and access) cost. Reported, not held to the target.
        quiet_port = free_port()
        quiet_config = clawgate_config(tmp, quiet_port, up_port, ws_port, 1,
                                       args.metrics, args.fast)
        quiet_config["log_level"] = "warning"
        quiet, quiet_path, _ = start_clawgate(bench, "clawgate-quiet", quiet_config, quiet_port)
        quiet_cookie = mint_cookie(quiet_path, quiet_port)

        secs = args.seconds
        http = results["http"]
        runs = max(1, args.runs)
        print(f"HTTP, wrk 2 threads, 64 connections, {secs:g} s each, {runs} round(s)",
              flush=True)
        targets = (
            ("direct", f"http://127.0.0.1:{up_port}/", None, pids["nginx-upstream"]),
            ("nginx", f"https://127.0.0.1:{ng_port}/", None, pids["nginx-proxy"]),
            ("python_pipe", f"https://127.0.0.1:{pipe_port}/", None, pids["pipe"]),
            # The bar right before clawgate: the target is their ratio, and the machine
            # drifts less between neighbouring runs.
            ("aiohttp_self", f"https://127.0.0.1:{self_port}/", None, pids["self"]),
            ("clawgate_w1", f"https://127.0.0.1:{cg_port}/", cookie, proc.pid),
            ("clawgate_w1_warning_logs", f"https://127.0.0.1:{quiet_port}/", quiet_cookie,
             quiet.pid),
        )
        # Rounds run every target in turn, so a slow spell on a shared machine touches
        # all of them alike; each target's median round is what is reported.
        seen: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in targets}
        for round_no in range(runs):
            for label, url, ck, pid in targets:
                spy = None
                if args.profile and label == "clawgate_w1" and round_no == 0:
                    spy = profile(proc.pid, secs, args.profile)
                seen[label].append(wrk(url, secs, ck, pid=pid))
                if spy is not None:
                    spy.wait(30)
                    print(top_frames(args.profile / "clawgate_w1.txt"), flush=True)
                print(f"  {label:14} {seen[label][-1]}", flush=True)
        bench.stop(quiet)
        for label, rows in seen.items():
            http[label] = median_run(rows)
        if runs > 1:
            results["rounds"] = {
                "clawgate_w1/aiohttp_self": [
                    round(c["rps"] / a["rps"], 3)
                    for c, a in zip(seen["clawgate_w1"], seen["aiohttp_self"], strict=True)
                ],
            }

        ws = results["ws"]
        if not args.skip_ws:
            print(f"WebSocket echo, 50 connections, 100 B, {secs:g} s each, {runs} round(s)",
                  flush=True)
            # nginx relays the same echo over TLS: what a proxy in C reaches on this
            # machine, where client, proxy and echo server share the cores.
            # The other request path beside it: both end in the same relay once the
            # handshakes are done, so their figures should differ only by noise.
            other, other_port, other_cookie = other_path()
            ws_targets = (
                ("direct", f"ws://127.0.0.1:{ws_port}/ws", None, None),
                ("nginx", f"wss://127.0.0.1:{ng_port}/ws", pids["nginx-proxy"], None),
                ("clawgate", f"wss://127.0.0.1:{cg_port}/ws", proc.pid, cookie),
                (OTHER_PATH[args.fast], f"wss://127.0.0.1:{other_port}/ws", other.pid,
                 other_cookie),
            )
            ws_seen: dict[str, list[dict[str, Any]]] = {label: [] for label, *_ in ws_targets}
            for _ in range(runs):
                for label, url, proxy_pid, ws_cookie in ws_targets:
                    watch = {"echo": pids["ws-upstream"]}
                    if proxy_pid is not None:
                        watch["proxy"] = proxy_pid
                    out = subprocess.run(
                        wsload("echo", url, ws_cookie,
                               watch=watch, seconds=secs, conns=50),
                        capture_output=True, text=True, timeout=secs + 60,
                    )
                    if out.returncode != 0:
                        raise SystemExit(f"wsload failed: {out.stderr[-2000:]}")
                    ws_seen[label].append(json.loads(out.stdout))
                    print(f"  ws {label:10} {ws_seen[label][-1]}", flush=True)
            for label, rows in ws_seen.items():
                ws[label] = median_run(rows, key="round_trips_per_s")
                ws[label]["rounds"] = [round(row["round_trips_per_s"]) for row in rows]
            bench.stop(other)

        if not args.skip_stream:
            # The first read of the sparse file makes the kernel build its page cache
            # (about 3 s of system time per GB here), which would land on whichever
            # download came first: read it once before anything is timed.
            with open(tmp / "www/big", "rb") as big:
                while big.read(1 << 22):
                    pass
            # The same file straight from the upstream, plain HTTP: what the machine's
            # curl and nginx reach without a TLS proxy between them.
            direct_down, direct_code = curl_speed([f"http://127.0.0.1:{up_port}/big"], "")
            results["stream_download_direct"] = {
                "mb": big_mb, "mb_per_s": round(direct_down, 1), "status": direct_code}
            with RssSampler(proc.pid) as sampler:
                down, code = curl_speed([f"https://127.0.0.1:{cg_port}/big"], cookie)
            results["stream_download"] = {
                "mb": big_mb, "mb_per_s": round(down, 1), "status": code,
                "rss_growth_mb": round((sampler.peak - sampler.base) / 1024, 1)}
            with RssSampler(proc.pid) as sampler:
                upload, code = curl_speed(
                    ["-T", str(tmp / "www/big"), f"https://127.0.0.1:{cg_port}/upload"], cookie)
            results["stream_upload"] = {
                "mb": big_mb, "mb_per_s": round(upload, 1), "status": code,
                "rss_growth_mb": round((sampler.peak - sampler.base) / 1024, 1)}
            print(f"  stream {results['stream_download']} {results['stream_upload']}", flush=True)

        if args.idle_ws:
            # Each proxied WebSocket holds two descriptors in clawgate (client and
            # upstream). Where one process may not hold that many, the connections are
            # spread over as many workers as it takes (SO_REUSEPORT), so the test still
            # opens the count asked for; their RSS is summed.
            per_process = (fd_hard_limit() - 256) // 2
            idle_workers = max(1, -(-args.idle_ws // max(1, per_process - 1024)))
            idle_proc = proc
            if idle_workers > 1:
                bench.stop(proc)
                idle_proc, _, _ = clawgate(idle_workers)
                time.sleep(1.0)  # every worker listening
            results["ws_idle"] = idle_websockets(
                bench, idle_proc.pid, cg_port, cookie, args.idle_ws, idle_workers)
            if idle_proc is not proc:
                bench.stop(idle_proc)
            print(f"  idle ws {results['ws_idle']}", flush=True)
            # The same count through the other request path: an upgrade it admitted
            # must cost no more once it is relayed.
            other_port = free_port()
            other_config = clawgate_config(tmp, other_port, up_port, ws_port, idle_workers,
                                           args.metrics, not args.fast)
            other, other_cfg, _ = start_clawgate(bench, "clawgate-other-idle", other_config,
                                                 other_port)
            time.sleep(1.0)  # every worker listening
            results["ws_idle_other_path"] = idle_websockets(
                bench, other.pid, other_port, mint_cookie(other_cfg, other_port),
                args.idle_ws, idle_workers)
            results["ws_idle_other_path"]["path"] = OTHER_PATH[args.fast]
            bench.stop(other)
            print(f"  idle ws ({OTHER_PATH[args.fast]}) {results['ws_idle_other_path']}",
                  flush=True)
        bench.stop(proc)

        for workers in args.workers:
            if workers == 1:
                continue
            proc, _, startup_n = clawgate(workers)
            time.sleep(1.0)  # let every worker bind and warm up
            pairs: dict[str, list[dict[str, Any]]] = {
                f"nginx_w{workers}": [], f"clawgate_w{workers}": []}
            for _ in range(runs):
                pairs[f"nginx_w{workers}"].append(
                    wrk(f"https://127.0.0.1:{ng_workers[workers]}/", secs,
                        pid=pids[f"nginx-proxy-w{workers}"]))
                pairs[f"clawgate_w{workers}"].append(
                    wrk(f"https://127.0.0.1:{cg_port}/", secs, cookie, pid=proc.pid))
            for label, rows in pairs.items():
                http[label] = median_run(rows)
                print(f"  {label:14} {http[label]}", flush=True)
            http[f"clawgate_w{workers}"]["startup_s"] = round(startup_n, 3)
            bench.stop(proc)
    if not args.serve:
        summarize(results)
    return results


def median_run(rows: list[dict[str, Any]], key: str = "rps") -> dict[str, Any]:
    """The run with the median ``key`` (the lower middle one for an even count); for
    requests/s, with every run's figure alongside."""
    ordered = sorted(rows, key=lambda row: row[key])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if key == "rps" and len(rows) > 1:
        chosen["rps_runs"] = [row["rps"] for row in rows]
    return chosen


def profile(pid: int, seconds: float, directory: Path) -> subprocess.Popen[bytes]:
    """py-spy (sampling, from outside) on clawgate while the load runs."""
    directory.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds) - 1)), "-r", "250",
         "--nonblocking", "--format", "raw", "-o", str(directory / "clawgate_w1.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def top_frames(collapsed: Path, n: int = 25) -> str:
    """Self and inclusive share of samples per function, from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count
    lines = [f"py-spy: {total} samples; top {n} by own time (own% / incl%)"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"  {100 * count / total:5.1f}% {100 * incl[frame] / total:5.1f}%  {frame}")
    return "\n".join(lines)


def fd_hard_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def idle_websockets(bench: Bench, pid: int, port: int, cookie: str, count: int,
                    workers: int) -> dict[str, Any]:
    hard = fd_hard_limit()
    # The load client holds one descriptor per connection, each clawgate worker two per
    # connection it was given: the most that fits everywhere.
    count = min(count, hard - 256, workers * (hard - 256) // 2)
    time.sleep(0.5)
    base = family_rss_kb(pid)
    client = subprocess.Popen(
        wsload("idle", f"wss://127.0.0.1:{port}/ws", cookie, count=count, concurrency=64),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert client.stdout is not None and client.stdin is not None
    started = time.perf_counter()
    line = client.stdout.readline().split()
    opened = int(line[1]) if len(line) > 1 else 0
    failed = int(line[2]) if len(line) > 2 else count
    open_s = time.perf_counter() - started
    time.sleep(2.0)  # let buffers settle
    held = family_rss_kb(pid)
    client.stdin.write("\n")
    client.stdin.flush()
    client.wait(60)
    per = (held - base) / opened if opened else 0.0
    return {"requested": count, "opened": opened, "failed": failed, "open_s": round(open_s, 1),
            "rss_base_mb": round(base / 1024, 1), "rss_held_mb": round(held / 1024, 1),
            "kb_per_connection": round(per, 1), "fd_hard_limit": hard, "workers": workers}


# The label of the other request path's WebSocket figures, by whether the run's
# clawgate uses the front (fast_path).
OTHER_PATH = {True: "clawgate_handler", False: "clawgate_front"}


def summarize(r: dict[str, Any]) -> None:
    http = r["http"]
    print()
    print(f"{'HTTP (1 KB body)':28} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}")
    for label, row in http.items():
        cpu = row.get("cpu_us_per_req")
        print(f"{label:28} {row['rps']:10.0f} {row['p50_us'] / 1000:8.2f} "
              f"{row['p99_us'] / 1000:8.2f} {cpu if cpu is not None else '-':>11}"
              + (f"  non-2xx {row['non_2xx']}" if row["non_2xx"] else ""))
    ratios: dict[str, float] = {}
    for label in [k for k in http if k.startswith("clawgate")]:
        if "aiohttp_self" in http:
            ratios[f"{label}/aiohttp_self"] = round(
                http[label]["rps"] / http["aiohttp_self"]["rps"], 3)
        if "nginx" in http:
            ratios[f"{label}/nginx"] = round(http[label]["rps"] / http["nginx"]["rps"], 3)
        if "python_pipe" in http:
            ratios[f"{label}/python_pipe"] = round(
                http[label]["rps"] / http["python_pipe"]["rps"], 3)
    for label in [k for k in http if k.startswith("clawgate")]:
        base, mine = http.get("aiohttp_self", {}).get("cpu_us_per_req"), http[label].get(
            "cpu_us_per_req")
        if base and mine:
            ratios[f"{label}/aiohttp_self (by CPU per request)"] = round(base / mine, 3)
    if "clawgate_w1" in http:
        for label in [k for k in http if re.fullmatch(r"clawgate_w\d+", k) and k != "clawgate_w1"]:
            ratios[f"{label}/clawgate_w1"] = round(
                http[label]["rps"] / http["clawgate_w1"]["rps"], 3)
            reference = "nginx_w" + label.removeprefix("clawgate_w")
            if reference in http and "nginx" in http:
                ratios[f"{reference}/nginx (the reference's own scaling)"] = round(
                    http[reference]["rps"] / http["nginx"]["rps"], 3)
    r["ratios"] = ratios
    for k, v in ratios.items():
        print(f"  {k:40} {v:6.3f}")
    for k, values in r.get("rounds", {}).items():
        print(f"  {k} per round: {', '.join(f'{v:.3f}' for v in values)}")
    ws = r.get("ws", {})
    if ws:
        print()
        print(f"{'WebSocket echo (50 x 100 B)':28} {'rt/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'CPU us per round trip: proxy':>29} {'echo':>6} {'client':>7} {'ceiling':>9}")
        cpus = r["machine"]["cpus"] or 1
        for label, row in ws.items():
            per = row.get("cpu_us_per_round_trip", {})
            # Every process of the run shares the machine's cores: round trips/s cannot
            # exceed cores / (CPU per round trip of all of them together).
            total = sum(per.values())
            row["cpu_ceiling_rt_per_s"] = round(cpus / total * 1e6) if total else None
            print(f"{label:28} {row['round_trips_per_s']:10.0f} {row['p50_us'] / 1000:8.2f} "
                  f"{row['p99_us'] / 1000:8.2f} {per.get('proxy', '-'):>29} "
                  f"{per.get('echo', '-'):>6} {per.get('client', '-'):>7} "
                  f"{row['cpu_ceiling_rt_per_s'] or '-':>9}")
    if "direct" in ws and "clawgate" in ws:
        d, c = ws["direct"], ws["clawgate"]
        r["ws_summary"] = {
            "ratio": round(c["round_trips_per_s"] / d["round_trips_per_s"], 3),
            "added_p50_us": round(c["p50_us"] - d["p50_us"], 1),
            "added_p99_us": round(c["p99_us"] - d["p99_us"], 1),
        }
        if "nginx" in ws:
            n = ws["nginx"]
            r["ws_summary"]["nginx_ratio"] = round(
                n["round_trips_per_s"] / d["round_trips_per_s"], 3)
            r["ws_summary"]["clawgate/nginx"] = round(
                c["round_trips_per_s"] / n["round_trips_per_s"], 3)
        for label in OTHER_PATH.values():
            if label in ws:
                r["ws_summary"][f"{label}/clawgate"] = round(
                    ws[label]["round_trips_per_s"] / c["round_trips_per_s"], 3)
                print(f"  {label}/clawgate {r['ws_summary'][f'{label}/clawgate']:.3f} "
                      "(the other request path, same relay)")
        print(f"  clawgate/direct {r['ws_summary']['ratio']:.3f}"
              + (f", nginx/direct {r['ws_summary']['nginx_ratio']:.3f}, clawgate/nginx "
                 f"{r['ws_summary']['clawgate/nginx']:.3f}" if "nginx" in ws else "")
              + f"; clawgate added p50 {r['ws_summary']['added_p50_us'] / 1000:.2f} ms, "
              f"p99 {r['ws_summary']['added_p99_us'] / 1000:.2f} ms")
    if "ws_idle" in r:
        i = r["ws_idle"]
        spread = f" over {i['workers']} workers" if i.get("workers", 1) > 1 else ""
        print(f"Idle WebSockets: {i['opened']} open{spread}, "
              f"{i['kb_per_connection']} KB RSS each")
    if "ws_idle_other_path" in r:
        i = r["ws_idle_other_path"]
        spread = f" over {i['workers']} workers" if i.get("workers", 1) > 1 else ""
        print(f"Idle WebSockets through {i['path']}: {i['opened']} open{spread}, "
              f"{i['kb_per_connection']} KB RSS each")
    for key in ("stream_download_direct", "stream_download", "stream_upload"):
        if key in r:
            s = r[key]
            if s["status"] != 200:  # a refused or cut transfer has no speed worth printing
                print(f"{key}: FAILED with HTTP {s['status']} (see the clawgate log)")
                continue
            growth = f", RSS growth {s['rss_growth_mb']} MB" if "rss_growth_mb" in s else ""
            print(f"{key}: {s['mb']} MB at {s['mb_per_s']} MB/s{growth}")
    print(f"Auth step (in-process): {r['auth_step_us']:.1f} us; start-up {r['startup_s']} s")


def raise_fd_limit(want: int) -> None:
    """Each proxied WebSocket holds two descriptors in clawgate: raise the descriptor
    limit the benchmark's processes inherit to ``want`` where allowed (root may raise the
    hard limit too), so the idle test can open the 10,000 connections it asks for."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _terminated(*_: object) -> None:
    # Once: a second SIGTERM (timeout(1) forwards its own) must not cut the clean-up short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load run")
    parser.add_argument("--quick", action="store_true",
                        help="3 s runs, 1 round, 256 MB transfers, 2,000 idle WebSockets")
    parser.add_argument("--runs", type=int, default=3,
                        help="HTTP rounds; each figure is the median round (default 3)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--idle-ws", type=int, default=10_000)
    parser.add_argument("--stream-mb", type=int, default=1024)
    parser.add_argument("--skip-ws", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false",
                        help="run clawgate without its metrics listener")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                        help="fast_path, the front (default on); --no-fast measures the "
                             "full handler path")
    parser.add_argument("--profile", type=Path,
                        help="py-spy clawgate (1 worker) during its HTTP run; stacks go here")
    parser.add_argument("--serve", type=float, default=0, metavar="SECONDS",
                        help="start everything, print the ports, wait, stop (no measurements)")
    parser.add_argument("--split-upstream", action="store_true",
                        help="the upstream sends a small response's head and body as two "
                             "segments (nginx's sendfile without tcp_nopush)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 3.0)
        args.runs = 1
        args.stream_mb = min(args.stream_mb, 256)
        args.idle_ws = min(args.idle_ws, 2000)
    args.workers = [int(w) for w in args.workers.split(",") if w]
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so nginx, the helper servers and
    # clawgate are stopped by environment() instead of being left running.
    signal.signal(signal.SIGTERM, _terminated)
    raise_fd_limit(2 * args.idle_ws + 1024)
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
