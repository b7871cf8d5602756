"""The "replicas" profile of docker-compose.yaml: two clawgate replicas sharing Redis.

Checked without a container engine, like tests/deploy/test_deploy_files.py (whose
schema check covers the whole file, this profile included): what the profile adds, that
it leaves the default services as they were, that a real Compose implementation
resolves it, and that the replicas' environment turns clawgate's Redis store on with
the same config.yaml the single clawgate uses.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy_files import (
    COMPOSE_FILE,
    CONFIG_EXAMPLE,
    DATA_DIR,
    DATA_MOUNT,
    SSH_DOOR_PORT,
    TOOL_TIMEOUT,
    compose_command,
    compose_schema_validator,
    listen_port,
    load_yaml,
    stage_deployment,
    write_ec_key,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

PROFILE = "replicas"
REPLICAS = ("clawgate-replica-1", "clawgate-replica-2")
PROFILE_SERVICES = {*REPLICAS, "redis"}
DEFAULT_SERVICES = {"clawgate", "openclaw-gateway", "openclaw-ssh"}
STORE_NETWORK = "store"
REDIS_URL_SECRET = "/run/secrets/redis_url"
# What every replica shares with the single clawgate, unchanged.
SAME_AS_CLAWGATE = (
    "image",
    "build",
    "restart",
    "read_only",
    "cap_drop",
    "security_opt",
    "tmpfs",
    "pids_limit",
    "user",
    "env_file",
    "volumes",
    "healthcheck",
    "logging",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE_FILE)
    assert isinstance(doc, dict)
    return doc


def svc(compose: dict[str, Any], name: str) -> dict[str, Any]:
    service = compose["services"][name]
    assert isinstance(service, dict)
    return service


# --------------------------------------------------------------------------- profile


def test_profile_holds_exactly_the_replicas_and_redis(compose: dict[str, Any]) -> None:
    profiled = {name for name, s in compose["services"].items() if "profiles" in s}
    assert profiled == PROFILE_SERVICES
    for name in PROFILE_SERVICES:
        assert svc(compose, name)["profiles"] == [PROFILE]
    assert set(compose["services"]) == PROFILE_SERVICES | DEFAULT_SERVICES


def test_default_services_are_untouched_by_the_profile(compose: dict[str, Any]) -> None:
    gate = svc(compose, "clawgate")
    assert not any(k.startswith("CLAWGATE_DATABROKER") for k in gate["environment"])
    assert "redis_url" not in gate["secrets"]
    assert set(gate["networks"]) == {"public", "internal"}
    assert set(svc(compose, "openclaw-gateway")["networks"]) == {"internal"}
    assert set(svc(compose, "openclaw-ssh")["networks"]) == {"internal"}
    for name in DEFAULT_SERVICES:
        depends = svc(compose, name).get("depends_on", {})
        assert not set(depends) & PROFILE_SERVICES, f"{name} would pull in the profile"


def test_replicas_are_the_single_clawgate_with_a_redis_store(compose: dict[str, Any]) -> None:
    gate = svc(compose, "clawgate")
    for name in REPLICAS:
        replica = svc(compose, name)
        for key in SAME_AS_CLAWGATE:
            assert replica[key] == gate[key], f"{name}: {key} differs from clawgate"
        env = replica["environment"]
        # Everything the single clawgate is told, plus the store.
        assert {k: v for k, v in env.items() if k in gate["environment"]} == gate["environment"]
        assert env["CLAWGATE_DATABROKER_STORAGE_TYPE"] == "redis"
        path = env["CLAWGATE_DATABROKER_STORAGE_CONNECTION_STRING_FILE"]
        assert path == REDIS_URL_SECRET
        assert PurePosixPath(path).name in replica["secrets"]
        assert "file" in compose["secrets"][PurePosixPath(path).name]
        assert set(gate["secrets"]) <= set(replica["secrets"])
        # The connection string (it holds the password) is never an environment value.
        assert "CLAWGATE_DATABROKER_STORAGE_CONNECTION_STRING" not in env
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        assert replica["depends_on"]["openclaw-gateway"]["condition"] == "service_healthy"


def test_replicas_addresses_and_ports(compose: dict[str, Any]) -> None:
    gate = svc(compose, "clawgate")
    config = load_yaml(CONFIG_EXAMPLE)
    subnets = [
        ipaddress.ip_network(c["subnet"]) for c in compose["networks"]["internal"]["ipam"]["config"]
    ]
    addresses = {gate["networks"]["internal"]["ipv4_address"]}
    published = {str(p).partition(":")[0] for p in gate["ports"]}
    for name in REPLICAS:
        replica = svc(compose, name)
        assert set(replica["networks"]) == {"public", "internal", STORE_NETWORK}
        address = replica["networks"]["internal"]["ipv4_address"]
        assert address not in addresses, f"{name}: {address} is taken"
        assert any(ipaddress.ip_address(address) in s for s in subnets)
        addresses.add(address)
        targets = []
        for entry in replica["ports"]:
            host, _, container = str(entry).partition(":")
            assert host not in published, f"{name}: host port {host} is taken"
            targets.append(int(container))
            published.add(host)
        # HTTPS and the SSH door, each once, on a host port of its own.
        assert sorted(targets) == sorted([listen_port(config["address"]), SSH_DOOR_PORT])


def test_docs_name_the_addresses_openclaw_must_trust(compose: dict[str, Any]) -> None:
    # deploy/openclaw/openclaw.json trusts the single clawgate only; the docs tell the
    # operator which addresses to add for the replicas.
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for name in REPLICAS:
        assert svc(compose, name)["networks"]["internal"]["ipv4_address"] in text
    assert f"--profile {PROFILE}" in text


# --------------------------------------------------------------------------- Redis


def test_redis_is_not_exposed(compose: dict[str, Any]) -> None:
    redis = svc(compose, "redis")
    assert "ports" not in redis
    assert set(redis["networks"]) == {STORE_NETWORK}
    assert compose["networks"][STORE_NETWORK]["internal"] is True
    on_store = {n for n, s in compose["services"].items() if STORE_NETWORK in s.get("networks", {})}
    assert on_store == {*REPLICAS, "redis"}


def test_redis_takes_its_password_from_a_secret(compose: dict[str, Any]) -> None:
    redis = svc(compose, "redis")
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1][0] == "7"
    assert "environment" not in redis and "env_file" not in redis
    assert redis["secrets"] == ["redis_password"]
    assert "file" in compose["secrets"]["redis_password"]
    script = "\n".join(redis["command"])
    # $$ is Compose's escape for a literal $: the shell expands it, not Compose.
    assert "requirepass $$(cat /run/secrets/redis_password)" in script
    assert 'save ""' in script and "appendonly no" in script
    assert "maxmemory-policy noeviction" in script
    assert "$$(cat /run/secrets/redis_password)" in json.dumps(redis["healthcheck"]["test"])


@pytest.mark.parametrize("name", sorted(PROFILE_SERVICES))
def test_profile_service_hardening(compose: dict[str, Any], name: str) -> None:
    service = svc(compose, name)
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"]
    assert "cap_add" not in service
    assert "no-new-privileges:true" in service["security_opt"]
    assert any(str(t).split(":")[0] == "/tmp" for t in service["tmpfs"])
    assert service["restart"] == "unless-stopped"
    assert int(str(service["user"]).split(":")[0]) > 0
    for risky in ("privileged", "network_mode", "pid", "ipc", "devices", "userns_mode"):
        assert risky not in service, f"{name}: {risky} is set"
    check = service["healthcheck"]
    assert check.get("disable") is not True and check["test"][0] in ("CMD", "CMD-SHELL")
    for volume in service.get("volumes", []):
        # The replicas share clawgate's data_dir (one SSH host key, one set of ACME
        # certificates, file locks); everything else is read-only.
        assert str(volume).endswith(":ro") or str(volume) == DATA_MOUNT, volume


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["services"]["clawgate-replica-1"].update({"profile": ["replicas"]}),
        lambda d: d["services"]["redis"].update({"profiles": "replicas"}),
        lambda d: d["networks"]["store"].update({"internal": "yes"}),
    ],
    ids=["misspelled-key", "wrong-type", "wrong-network-type"],
)
def test_compose_schema_rejects_a_broken_profile(compose: dict[str, Any], breakage: Any) -> None:
    doc = copy.deepcopy(compose)
    assert not list(compose_schema_validator().iter_errors(doc))
    breakage(doc)
    assert list(compose_schema_validator().iter_errors(doc))


def _stage_with_redis_secrets(tmp_path: Path) -> Path:
    compose_file = stage_deployment(tmp_path)
    (tmp_path / "secrets" / "redis_password").write_text("dummy-password")
    (tmp_path / "secrets" / "redis_url").write_text("redis://:dummy-password@redis:6379/0")
    return compose_file


def test_compose_implementation_accepts_the_profile(tmp_path: Path) -> None:
    command = compose_command()
    compose_file = _stage_with_redis_secrets(tmp_path)
    result = subprocess.run(
        [*command, "-f", str(compose_file), "--profile", PROFILE, "config"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == PROFILE_SERVICES | DEFAULT_SERVICES
    for name in REPLICAS:
        env = resolved["services"][name]["environment"]
        assert env["CLAWGATE_DATABROKER_STORAGE_TYPE"] == "redis"
    assert "ports" not in resolved["services"]["redis"]
    assert resolved["networks"][STORE_NETWORK]["internal"] is True

    # The same tool must refuse a broken profile, or the pass above proves nothing.
    broken = tmp_path / "broken.yaml"
    text = compose_file.read_text()
    assert text.count('profiles: ["replicas"]') >= 2
    broken.write_text(text.replace('profiles: ["replicas"]', 'profile: ["replicas"]', 1))
    refused = subprocess.run(
        [*command, "-f", str(broken), "--profile", PROFILE, "config"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "profile" in refused.stderr + refused.stdout


# --------------------------------------------------------------------------- settings


def _service_settings(
    compose: dict[str, Any], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Settings as the service's container would load them: its environment, with
    /run/secrets/ pointing at dummy files, over config.example.yaml."""
    import os

    from proxy.settings import load_settings

    for variable in list(os.environ):
        if variable.startswith("CLAWGATE_"):
            monkeypatch.delenv(variable)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "cookie_secret").write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    (secrets / "idp_client_secret").write_text("dummy-client-secret")
    write_ec_key(secrets / "signing_key")
    (secrets / "redis_url").write_text("redis://:dummy-password@redis:6379/0\n")
    (secrets / "ssh_user_ca_key").write_text("not read unless ssh_address is set\n")
    for variable, value in svc(compose, name)["environment"].items():
        if str(value).startswith("/run/secrets/"):
            value = str(secrets / PurePosixPath(value).name)
        monkeypatch.setenv(variable, str(value))
    settings, _ = load_settings(CONFIG_EXAMPLE)
    return settings


@pytest.mark.parametrize("name", REPLICAS)
def test_replica_environment_turns_the_redis_store_on(
    compose: dict[str, Any], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _service_settings(compose, name, tmp_path, monkeypatch)
    assert settings.databroker_storage_type == "redis"
    assert settings.databroker_storage_connection_string is not None
    url = settings.databroker_storage_connection_string.get_secret_value()
    assert url == "redis://:dummy-password@redis:6379/0"
    assert settings.databroker_storage_key_prefix == "clawgate:"
    # The same state directory and SSH User CA as the single clawgate.
    assert settings.data_dir == Path(DATA_DIR)
    assert settings.ssh_user_ca_key_file is not None
    assert settings.ssh_user_ca_key_file.name == "ssh_user_ca_key"


def test_single_clawgate_keeps_the_memory_store(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _service_settings(compose, "clawgate", tmp_path, monkeypatch)
    assert settings.databroker_storage_type == "memory"
    assert settings.databroker_storage_connection_string is None
    assert settings.data_dir == Path(DATA_DIR)
    # config.example.yaml leaves the SSH door off: the CA key file is named, unused.
    assert settings.ssh_address is None
    assert settings.ssh_user_ca_key_file is not None
