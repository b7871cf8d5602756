"""The Kubernetes manifests in deploy/kubernetes/, checked without a cluster.

Three layers, each able to fail on its own:

* every manifest (and the Secret template) is validated against the Kubernetes API's
  JSON schemas bundled by the PyPI package ``kubernetes-validate``, in their *strict*
  variant (``additionalProperties: false`` on every object, so an unknown or misspelt
  field is an error), for the oldest Kubernetes release these files support and for
  the newest the package knows. Those schemas accept ``null`` for every field; a null
  is refused here separately;
* ``kubectl kustomize`` renders the kustomization (it refuses unknown keys in
  kustomization.yaml) and must yield exactly these manifests;
* the properties docs/deploy.md promises are asserted on the parsed documents, and the
  clawgate configuration in the ConfigMap is loaded with clawgate's own loader (the one
  ``clawgate check`` uses), with dummy secrets where the pod would have them.

Each validator is also shown broken documents, so one that accepts anything fails.
Missing tools are failures, never skips.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import json5
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
SECRET_TEMPLATE = K8S_DIR / "secret.example.yaml"
DOCKERFILE = ROOT / "Dockerfile"
CONFIG_EXAMPLE = ROOT / "config.example.yaml"
OPENCLAW_DIR = ROOT / "deploy" / "openclaw"

# The oldest Kubernetes minor these manifests are written for (policy/v1 PDB,
# topologySpreadConstraints, seccompProfile and Pod Security Admission are all GA).
OLDEST_KUBERNETES = "1.28"
NAMESPACE = "clawgate"
CLAWGATE_IMAGE = "ghcr.io/clawgate/clawgate"
GATEWAY_PORT = 18789
REDIS_PORT = 6379
# The sshd sidecar in the gateway's pod (the upstream of the ssh:// route), and the
# SSH door clawgate listens on (ssh_address).
SSH_UPSTREAM_PORT = 2222
SSH_DOOR_PORT = 2200
SSH_SIDECAR = "openclaw-ssh"
# Services that select another workload's pods than their own name says.
SERVICE_WORKLOAD = {"openclaw-ssh": "openclaw-gateway"}
TOOL_TIMEOUT = 120
# Keys whose value on Kubernetes differs from config.example.yaml (Compose), and why.
KUBERNETES_SPECIFIC_KEYS = {
    "certificate_file",  # the TLS Secret's tls.crt
    "certificate_key_file",  # and tls.key
    "health_address",  # all interfaces, for the kubelet's probes
}
# What the supervisor adds to shutdown_timeout before it kills its workers
# (proxy/workers.py).
SUPERVISOR_GRACE_SECONDS = 5.0
# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
NAMESPACED_KINDS = {
    "ConfigMap",
    "Deployment",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "StatefulSet",
}

Doc = dict[str, Any]


# --------------------------------------------------------------------------- helpers


def load_docs(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def kustomization() -> Doc:
    (doc,) = load_docs(KUSTOMIZATION)
    return doc


def resource_files() -> list[Path]:
    return [K8S_DIR / name for name in kustomization()["resources"]]


def load_manifests() -> list[Doc]:
    docs: list[Doc] = []
    for path in resource_files():
        docs.extend(load_docs(path))
    return docs


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def only_container(workload: Doc) -> Doc:
    (container,) = pod_spec(workload)["containers"]
    assert not pod_spec(workload).get("initContainers")
    container_doc: Doc = container
    return container_doc


def named_container(workload: Doc, name: str) -> Doc:
    hits = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(hits) == 1, f"expected one container {name}, found {len(hits)}"
    container: Doc = hits[0]
    return container


def ssh_routes(config: Doc) -> list[Doc]:
    return [r for r in config["routes"] if str(r["from"]).startswith("ssh://")]


def http_routes(config: Doc) -> list[Doc]:
    return [r for r in config["routes"] if not str(r["from"]).startswith("ssh://")]


def volumes_by_name(workload: Doc) -> dict[str, Doc]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}


def mounts_by_path(workload: Doc, container: Doc) -> dict[str, tuple[Doc, Doc]]:
    """mountPath -> (the volumeMount, the volume it mounts)."""
    volumes = volumes_by_name(workload)
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container.get("volumeMounts", [])}


def container_port(container: Doc, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert len(named) == 1, f"no container port named {port!r}"
    number: int = named[0]
    return number


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def nulls(value: Any, path: str = "") -> Iterator[str]:
    """Paths of null values: the bundled schemas accept null for every field, but a
    null in a manifest is always a mistake (a key left without its value)."""
    if value is None:
        yield path or "(document)"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from nulls(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from nulls(item, f"{path}[{index}]")


def parse_quantity(value: str | int | float) -> float:
    """Kubernetes resource quantities: 250m, 2, 512Mi, 2Gi, 1G."""
    text = str(value)
    suffixes = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }  # fmt: skip
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", text)
    assert match, f"not a quantity: {value!r}"
    number, suffix = match.groups()
    assert suffix == "" or suffix in suffixes, f"unknown quantity suffix in {value!r}"
    return float(number) * suffixes.get(suffix, 1.0)


def image_ref(image: str) -> tuple[str, str]:
    """(repository, tag) of an image reference; the tag is '' when there is none."""
    name, _, _digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = name.rpartition(":")
        return repo, tag
    return name, ""


def listen_port(address: str) -> int:
    return int(address.rpartition(":")[2])


def listen_host(address: str) -> str:
    return address.rpartition(":")[0]


def validator() -> ModuleType:
    try:
        import kubernetes_validate  # type: ignore[import-untyped]
    except ImportError:
        pytest.fail(
            "kubernetes-validate not installed: `.venv/bin/pip install kubernetes-validate` "
            "(PyPI; it bundles the Kubernetes JSON schemas, no network needed)"
        )
    module: ModuleType = kubernetes_validate
    return module


def versions() -> list[str]:
    latest = validator().latest_version()
    major_minor = ".".join(latest.split(".")[:2])
    return [OLDEST_KUBERNETES, major_minor]


def schema_problems(doc: Doc, version: str) -> list[str]:
    """Everything wrong with one document under the strict schema of ``version``."""
    kv = validator()
    problems = [f"{path}: null value" for path in nulls(doc)]
    try:
        checked = kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top level)"
        problems.append(f"{where}: {exc.message}")
    except kv.SchemaNotFoundError as exc:
        problems.append(exc.message)
    else:
        # The package falls back to an older schema for a version it lacks.
        assert checked == version, f"validated against {checked}, not {version}"
    return problems


def find_kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl not found (`kubectl kustomize` needs no cluster): install it, e.g. "
            "Debian's kubernetes-client package"
        )
    return found


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


def write_self_signed(cert_path: Path, key_path: Path, host: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def dockerfile_env(path: Path) -> dict[str, str]:
    """ENV assignments of a Dockerfile (continuations joined, comments dropped)."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    env: dict[str, str] = {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def manifests() -> list[Doc]:
    return load_manifests()


@pytest.fixture(scope="module")
def secrets_template() -> list[Doc]:
    return load_docs(SECRET_TEMPLATE)


@pytest.fixture(scope="module")
def clawgate(manifests: list[Doc]) -> Doc:
    return find(manifests, "Deployment", "clawgate")


@pytest.fixture(scope="module")
def gateway(manifests: list[Doc]) -> Doc:
    return find(manifests, "Deployment", "openclaw-gateway")


@pytest.fixture(scope="module")
def redis(manifests: list[Doc]) -> Doc:
    return find(manifests, "StatefulSet", "redis")


def configmap_config_text(manifests: list[Doc]) -> str:
    text: str = find(manifests, "ConfigMap", "clawgate-config")["data"]["config.yaml"]
    return text


@pytest.fixture(scope="module")
def config(manifests: list[Doc]) -> Doc:
    doc = yaml.safe_load(configmap_config_text(manifests))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    import os

    for name in list(os.environ):
        if name.startswith("CLAWGATE_"):
            monkeypatch.delenv(name)
    yield monkeypatch


def template_secret(secrets_template: list[Doc], name: str) -> dict[str, str]:
    (secret,) = [s for s in secrets_template if s["metadata"]["name"] == name]
    data: dict[str, str] = secret["stringData"]
    return data


# --------------------------------------------------------------------------- layout


def test_kustomization_lists_every_manifest_once() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in K8S_DIR.iterdir() if p.suffix in (".yaml", ".yml")}
    # The Secret template is the one manifest deliberately left out (see its header).
    assert set(listed) == on_disk - {KUSTOMIZATION.name, SECRET_TEMPLATE.name}


def test_one_resource_per_file() -> None:
    for path in resource_files():
        docs = load_docs(path)
        assert len(docs) == 1, f"{path.name}: {len(docs)} documents"
        (doc,) = docs
        # File names say what is inside: <component>-<kind>.yaml.
        assert path.stem.endswith(doc["kind"].lower()), path.name
        assert "namespace" not in doc["metadata"], f"{path.name}: the kustomization sets it"


def test_namespace_enforces_the_restricted_pod_security_standard(manifests: list[Doc]) -> None:
    namespace = find(manifests, "Namespace", NAMESPACE)
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert kustomization()["namespace"] == NAMESPACE


def test_every_resource_is_labelled_as_part_of_clawgate(
    manifests: list[Doc], secrets_template: list[Doc]
) -> None:
    for doc in [*manifests, *secrets_template]:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "clawgate", doc["metadata"]["name"]


# --------------------------------------------------------------------------- schemas


def all_documents() -> list[tuple[str, Doc]]:
    docs = [(p.name, d) for p in resource_files() for d in load_docs(p)]
    docs += [(SECRET_TEMPLATE.name, d) for d in load_docs(SECRET_TEMPLATE)]
    return docs


@pytest.mark.parametrize("version", versions())
@pytest.mark.parametrize(
    "name,doc",
    all_documents(),
    ids=[f"{name}:{doc['metadata']['name']}" for name, doc in all_documents()],
)
def test_manifest_matches_the_kubernetes_schema(name: str, doc: Doc, version: str) -> None:
    problems = schema_problems(doc, version)
    assert not problems, f"{name} against Kubernetes {version}:\n" + "\n".join(problems)


def _container(doc: Doc) -> Doc:
    container: Doc = doc["spec"]["template"]["spec"]["containers"][0]
    return container


BREAKAGES: dict[str, tuple[str, Callable[[Doc], None]]] = {
    # Each: which manifest, and what goes wrong in it.
    "unknown-field": (
        "clawgate-deployment.yaml",
        lambda d: d["spec"].update({"replicaCount": 2}),
    ),
    "misspelt-key": (
        "clawgate-deployment.yaml",
        lambda d: d["spec"]["template"]["spec"]["securityContext"].update({"runAsNonroot": True}),
    ),
    "misspelt-probe": (
        "clawgate-deployment.yaml",
        lambda d: _container(d).update({"readinessprobe": _container(d).pop("readinessProbe")}),
    ),
    "wrong-type": (
        "clawgate-deployment.yaml",
        lambda d: d["spec"].update({"replicas": "2"}),
    ),
    "wrong-nested-type": (
        "clawgate-deployment.yaml",
        lambda d: _container(d)["securityContext"]["capabilities"].update({"drop": "ALL"}),
    ),
    "wrong-port-type": (
        "openclaw-gateway-networkpolicy.yaml",
        lambda d: d["spec"]["ingress"][0]["ports"][0].update({"port": [GATEWAY_PORT]}),
    ),
    "unknown-metadata-key": (
        "clawgate-service.yaml",
        lambda d: d["metadata"].update({"lables": {"a": "b"}}),
    ),
    "configmap-value-not-a-string": (
        "clawgate-configmap.yaml",
        lambda d: d["data"].update({"replicas": 2}),
    ),
    "null-value": (
        "clawgate-deployment.yaml",
        lambda d: d["spec"].update({"replicas": None}),
    ),
    "unknown-api-version": (
        "clawgate-poddisruptionbudget.yaml",
        lambda d: d.update({"apiVersion": "policy/v1beta9"}),
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_schema_check_rejects_broken_manifests(breakage: str) -> None:
    filename, breaker = BREAKAGES[breakage]
    (doc,) = load_docs(K8S_DIR / filename)
    assert not schema_problems(doc, OLDEST_KUBERNETES), "the unbroken manifest must pass"
    broken = copy.deepcopy(doc)
    breaker(broken)
    for version in versions():
        assert schema_problems(broken, version), f"{breakage} accepted for {version}"


def test_schema_check_is_the_strict_one() -> None:
    # The non-strict schemas accept unknown fields: make sure those are not in use.
    (doc,) = load_docs(K8S_DIR / "clawgate-service.yaml")
    doc["spec"]["sessionAffinityy"] = "None"
    kv = validator()
    kv.validate(doc, OLDEST_KUBERNETES, strict=False)  # what a lax check would say
    assert schema_problems(doc, OLDEST_KUBERNETES)


# --------------------------------------------------------------------------- kustomize


def test_kustomize_renders_exactly_these_manifests(manifests: list[Doc]) -> None:
    result = subprocess.run(
        [find_kubectl(), "kustomize", str(K8S_DIR)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d is not None]
    expected = copy.deepcopy(manifests)
    for doc in expected:
        if doc["kind"] in NAMESPACED_KINDS:
            doc["metadata"]["namespace"] = NAMESPACE

    def key(doc: Doc) -> tuple[str, str]:
        return (doc["kind"], doc["metadata"]["name"])

    assert sorted(rendered, key=key) == sorted(expected, key=key)


def test_kustomize_refuses_a_broken_kustomization(tmp_path: Path) -> None:
    staged = tmp_path / "kubernetes"
    shutil.copytree(K8S_DIR, staged)
    text = (staged / KUSTOMIZATION.name).read_text(encoding="utf-8")
    (staged / KUSTOMIZATION.name).write_text(text.replace("\nresources:", "\nresourses:", 1))
    result = subprocess.run(
        [find_kubectl(), "kustomize", str(staged)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
    )
    assert result.returncode != 0
    assert "resourses" in result.stderr


# --------------------------------------------------------------------------- pods


def test_pods_meet_the_restricted_pod_security_standard(manifests: list[Doc]) -> None:
    assert {w["metadata"]["name"] for w in workloads(manifests)} == {
        "clawgate",
        "openclaw-gateway",
        "redis",
    }
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert spec.get(host, False) is False, f"{name}: {host}"
        assert spec["automountServiceAccountToken"] is False, name
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["runAsUser"] > 0 and pod_sc["runAsGroup"] > 0, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUME_TYPES, f"{name}: volume {volume['name']}: {kinds}"
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc.get("privileged", False) is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc.get("runAsNonRoot", True) is True, where
            assert sc.get("runAsUser", pod_sc["runAsUser"]) > 0, where
            assert sc.get("seccompProfile", {"type": "RuntimeDefault"}) == {
                "type": "RuntimeDefault"
            }, where
            assert all("hostPort" not in p for p in container.get("ports", [])), where


def test_pods_have_resource_requests_and_limits(manifests: list[Doc]) -> None:
    for workload in workloads(manifests):
        for container in pod_spec(workload)["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = parse_quantity(resources["requests"][resource])
                limit = parse_quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{where}: {resource} {request} > {limit}"


def test_images_are_pinned(manifests: list[Doc]) -> None:
    for workload in workloads(manifests):
        for container in pod_spec(workload)["containers"]:
            _, tag = image_ref(container["image"])
            assert tag and tag != "latest", container["image"]
            assert container["imagePullPolicy"] == "IfNotPresent"


def test_selectors_match_their_own_pods_only(manifests: list[Doc]) -> None:
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workloads(manifests)}
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        selector = workload["spec"]["selector"]
        assert {n for n, labels in pods.items() if selector_matches(selector, labels)} == {name}
    services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}
    for name, service in services.items():
        selector = {"matchLabels": service["spec"]["selector"]}
        expected = SERVICE_WORKLOAD.get(name, name)
        selected = {n for n, labels in pods.items() if selector_matches(selector, labels)}
        assert selected == {expected}, name


# --------------------------------------------------------------------------- clawgate


def test_clawgate_runs_several_replicas_on_different_nodes(clawgate: Doc) -> None:
    spec = clawgate["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = pod_labels(clawgate)
    pod = pod_spec(clawgate)
    per_node = [
        c
        for c in pod.get("topologySpreadConstraints", [])
        if c["topologyKey"] == "kubernetes.io/hostname"
        and c["whenUnsatisfiable"] == "DoNotSchedule"
        and c["maxSkew"] == 1
        and selector_matches(c["labelSelector"], labels)
    ]
    anti = [
        term
        for term in pod.get("affinity", {})
        .get("podAntiAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", [])
        if term["topologyKey"] == "kubernetes.io/hostname"
        and selector_matches(term["labelSelector"], labels)
    ]
    assert per_node or anti, "nothing keeps the replicas on different nodes"


def test_clawgate_image_and_command(clawgate: Doc) -> None:
    container = only_container(clawgate)
    repo, _ = image_ref(container["image"])
    assert repo == CLAWGATE_IMAGE
    # The image's ENTRYPOINT is `clawgate`; the arguments are `clawgate serve --config`.
    assert "command" not in container
    entrypoint = re.search(r"^ENTRYPOINT\s+(.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert entrypoint and json.loads(entrypoint.group(1)) == ["clawgate"]
    from proxy.cli import build_parser

    args = build_parser().parse_args(container["args"])
    assert args.command == "serve"
    mounts = mounts_by_path(clawgate, container)
    config_dir = str(PurePosixPath(args.config).parent)
    mount, volume = mounts[config_dir]
    assert volume["configMap"]["name"] == "clawgate-config"
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    assert PurePosixPath(args.config).name == "config.yaml"
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("CLAWGATE_CONFIG") == args.config


def test_clawgate_environment_names_only_real_settings(clawgate: Doc) -> None:
    from proxy.settings import unknown_environment

    env = {e["name"]: "x" for e in only_container(clawgate).get("env", [])}
    assert unknown_environment(env) == []
    # Secrets are files, never environment values.
    assert not [e for e in only_container(clawgate).get("env", []) if "valueFrom" in e]


def test_clawgate_runs_as_the_image_user(clawgate: Doc) -> None:
    user = re.findall(r"^USER\s+(\d+):(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    uid, gid = (int(v) for v in user[-1])
    sc = pod_spec(clawgate)["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (uid, gid, gid)


def test_clawgate_probes_hit_the_health_listener(clawgate: Doc, config: Doc) -> None:
    container = only_container(clawgate)
    # Inside the pod the health listener must listen beyond loopback, or the kubelet
    # (connecting to the pod's address) cannot reach it.
    host = listen_host(config["health_address"])
    assert host in ("", "0.0.0.0", "[::]"), config["health_address"]
    health_port = listen_port(config["health_address"])
    paths = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in paths.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == health_port, probe
        assert get.get("scheme", "HTTP") == "HTTP", probe


def test_clawgate_ports_match_the_config(clawgate: Doc, config: Doc) -> None:
    container = only_container(clawgate)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "https": listen_port(config["address"]),
        "http": listen_port(config["http_redirect_addr"]),
        "health": listen_port(config["health_address"]),
        "ssh": listen_port(config["ssh_address"]),
    }
    # Unprivileged: binding them needs no capability.
    assert all(port >= 1024 for port in ports.values())


def test_clawgate_grace_period_outlasts_its_shutdown(clawgate: Doc, config: Doc) -> None:
    from proxy.settings import parse_duration

    container = only_container(clawgate)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    pause = float(pre_stop[1])
    drain = parse_duration(config["shutdown_timeout"])
    grace = pod_spec(clawgate)["terminationGracePeriodSeconds"]
    assert grace > pause + drain + SUPERVISOR_GRACE_SECONDS
    assert grace > drain


def test_clawgate_mounts(clawgate: Doc) -> None:
    container = only_container(clawgate)
    mounts = mounts_by_path(clawgate, container)
    for path, (mount, volume) in mounts.items():
        if "emptyDir" not in volume:
            assert mount.get("readOnly") is True, path
    # Worker coordination files need a writable /tmp under a read-only root.
    _, tmp = mounts["/tmp"]
    assert "emptyDir" in tmp
    assert parse_quantity(tmp["emptyDir"]["sizeLimit"]) <= 64 * 2**20
    # data_dir (the SSH door's state directory) is writable, and nothing in it has to
    # outlive the pod: the keys come from the Secret.
    writable = {path for path, (_, volume) in mounts.items() if "emptyDir" in volume}
    assert writable == {"/tmp", "/data"}


def test_every_file_key_points_into_a_mounted_secret(
    clawgate: Doc, config: Doc, secrets_template: list[Doc]
) -> None:
    container = only_container(clawgate)
    mounts = mounts_by_path(clawgate, container)
    file_keys = {k: v for k, v in config.items() if k.endswith("_file")}
    assert set(file_keys) >= {
        "cookie_secret_file",
        "signing_key_file",
        "idp_client_secret_file",
        "databroker_storage_connection_string_file",
        "certificate_file",
        "certificate_key_file",
        "ssh_user_ca_key_file",
        "ssh_upstream_known_hosts_file",
    }
    # Lists of files count too: every replica's SSH host key comes from the Secret.
    assert config["ssh_host_key_files"]
    for index, path in enumerate(config["ssh_host_key_files"]):
        file_keys[f"ssh_host_key_files[{index}]"] = path
    for key, path in file_keys.items():
        where = PurePosixPath(path)
        assert str(where.parent) in mounts, f"{key}: {path} is in no mounted volume"
        mount, volume = mounts[str(where.parent)]
        assert "secret" in volume, f"{key}: {path} is not in a Secret volume"
        assert mount.get("readOnly") is True
        secret = volume["secret"]
        keys = template_secret(secrets_template, secret["secretName"])
        items = {i["path"]: i["key"] for i in secret.get("items", [])} or {k: k for k in keys}
        assert where.name in items, f"{key}: {where.name} is not projected from the Secret"
        assert items[where.name] in keys, f"{key}: the Secret template has no {items[where.name]}"
        assert secret.get("optional") is not True
    # The secrets themselves are never values in the ConfigMap.
    for key in ("cookie_secret", "signing_key", "idp_client_secret", "shared_secret",
                "databroker_storage_connection_string"):  # fmt: skip
        assert key not in config


def test_clawgate_ssh_door(config: Doc, manifests: list[Doc]) -> None:
    """The SSH door on every replica: the same host key and User CA from the Secret,
    the sidecar's host key known up front, data_dir writable."""
    assert listen_port(config["ssh_address"]) == SSH_DOOR_PORT
    assert config["data_dir"] == "/data"
    (route,) = ssh_routes(config)
    upstream = urlsplit(route["to"])
    assert upstream.scheme == "ssh"
    assert (upstream.hostname, upstream.port) == (SSH_SIDECAR, SSH_UPSTREAM_PORT)
    # Only "claw", for the people the https route admits.
    (rule,) = route["policy"]
    clauses = rule["allow"]["and"]
    assert {"ssh_username": {"is": "claw"}} in clauses
    (http,) = http_routes(config)
    emails = sorted(c["email"]["is"] for c in http["policy"][0]["allow"]["or"])
    others = [c for c in clauses if "or" in c]
    assert [sorted(c["email"]["is"] for c in o["or"]) for o in others] == [emails]
    for key in ("ssh_allow_port_forwarding", "ssh_allow_agent_forwarding",
                "ssh_allow_x11_forwarding"):  # fmt: skip
        assert route.get(key, False) is False, key


def test_clawgate_uses_the_shared_redis_store(config: Doc, manifests: list[Doc]) -> None:
    assert config["databroker_storage_type"] == "redis"
    assert "databroker_storage_connection_string_file" in config
    assert re.fullmatch(r"[A-Za-z0-9:_.-]+", config["databroker_storage_key_prefix"])
    # Replicas may share secrets only if they are the same: from one Secret, not generated.
    assert "cookie_secret_file" in config and "signing_key_file" in config


def test_clawgate_service(manifests: list[Doc], clawgate: Doc, config: Doc) -> None:
    service = find(manifests, "Service", "clawgate")
    spec = service["spec"]
    assert spec["type"] == "LoadBalancer"
    # The client's own address reaches clawgate (rate limits, X-Forwarded-For).
    assert spec["externalTrafficPolicy"] == "Local"
    container = only_container(clawgate)
    ports = {p["port"]: container_port(container, p["targetPort"]) for p in spec["ports"]}
    assert ports == {
        443: listen_port(config["address"]),
        80: listen_port(config["http_redirect_addr"]),
        SSH_DOOR_PORT: listen_port(config["ssh_address"]),
    }
    assert all(p["protocol"] == "TCP" for p in spec["ports"])
    # The health listener is for the kubelet, not for clients.
    for other in of_kind(manifests, "Service"):
        for port in other["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target != "health" and target != listen_port(config["health_address"])


def test_only_clawgate_is_exposed_outside_the_cluster(manifests: list[Doc]) -> None:
    for service in of_kind(manifests, "Service"):
        if service["metadata"]["name"] == "clawgate":
            continue
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
        assert "externalIPs" not in service["spec"]


def test_clawgate_disruption_budget(manifests: list[Doc], clawgate: Doc) -> None:
    pdb = find(manifests, "PodDisruptionBudget", "clawgate")
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]
    assert selector_matches(pdb["spec"]["selector"], pod_labels(clawgate))
    assert clawgate["spec"]["replicas"] > pdb["spec"]["minAvailable"]


# --------------------------------------------------------------------------- config


def test_configmap_config_follows_config_example(config: Doc) -> None:
    """Everything config.example.yaml (the Compose deployment) sets, the Kubernetes
    configuration sets the same way, unless Kubernetes needs otherwise."""
    example = yaml.safe_load(CONFIG_EXAMPLE.read_text(encoding="utf-8"))
    for key, value in example.items():
        assert key in config, f"{key} is in config.example.yaml but not in the ConfigMap"
        if key == "routes":
            # The SSH door is on here and commented out there: the https routes agree.
            assert http_routes(config) == value, "routes differ from config.example.yaml"
        elif key not in KUBERNETES_SPECIFIC_KEYS:
            assert config[key] == value, f"{key} differs from config.example.yaml"


def write_ssh_key(path: Path) -> str:
    """An unencrypted OpenSSH Ed25519 private key at ``path``; returns its public line."""
    from tests.deploy.test_deploy_files import write_ssh_key as write_with_pub

    return write_with_pub(path)


def _dummy_secret(key: str, tmp: Path, template: Mapping[str, str]) -> str | None:
    if key in ("ssh_user_ca_key", "ssh_host_key"):
        scratch = tmp / f"dummy-{key}"
        write_ssh_key(scratch)
        return scratch.read_text(encoding="ascii")
    if key == "ssh_upstream_known_hosts":
        host = template[key].split()[0]
        return f"{host} {write_ssh_key(tmp / 'dummy-sidecar-host-key')}\n"
    if key == "cookie_secret":
        return base64.b64encode(bytes(range(32))).decode() + "\n"
    if key == "signing_key":
        return write_ec_key(tmp / "signing_key.pem")
    if key == "idp_client_secret":
        return "dummy-client-secret"
    if key == "redis_url":
        return template["redis_url"].replace(template["redis_password"], "dummy-password")
    if key == "redis_password":
        return "dummy-password"
    return None


def test_configmap_config_loads_with_clawgates_loader(
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    manifests: list[Doc],
    clawgate: Doc,
    secrets_template: list[Doc],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ConfigMap's file, with the Secret volumes replaced by dummy files under
    tmp_path, passes the loader and ``clawgate check``: every key is real."""
    from proxy.cli import main
    from proxy.snapshot import load_snapshot

    text = configmap_config_text(manifests)
    container = only_container(clawgate)
    template = template_secret(secrets_template, "clawgate-secrets")
    for path, (_, volume) in mounts_by_path(clawgate, container).items():
        if "secret" not in volume:
            continue
        local = tmp_path / path.lstrip("/")
        local.mkdir(parents=True)
        for item in volume["secret"]["items"]:
            content = _dummy_secret(item["key"], tmp_path, template)
            if content is not None:
                (local / item["path"]).write_text(content, encoding="utf-8")
        if volume["secret"]["secretName"] == "clawgate-tls":
            write_self_signed(local / "tls.crt", local / "tls.key", "openclaw.example.com")
        text = text.replace(f"{path}/", f"{local}/")
    rewritten = yaml.safe_load(text)
    for key, value in rewritten.items():
        if key.endswith("_file"):
            assert Path(value).is_file() and Path(value).is_relative_to(tmp_path), key
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text, encoding="utf-8")

    snapshot = load_snapshot(config_file)
    settings = snapshot.settings
    assert settings.databroker_storage_type == "redis"
    assert settings.databroker_storage_connection_string is not None
    url = urlsplit(settings.databroker_storage_connection_string.get_secret_value())
    assert url.password == "dummy-password"
    assert not snapshot.keys.ephemeral_cookie_secret
    assert not snapshot.keys.ephemeral_signing_key
    assert settings.idp_client_secret is not None
    assert settings.idp_client_secret.get_secret_value() == "dummy-client-secret"
    assert settings.ssh_address == f":{SSH_DOOR_PORT}"
    assert [r.from_ for r in settings.ssh_routes()] == ["ssh://openclaw"]
    assert len(settings.ssh_host_key_files) == 1

    assert main(["check", "--config", str(config_file)]) == 0
    out = capsys.readouterr().out
    assert f"{config_file}: OK" in out
    assert "GENERATED AT START" not in out
    assert f"ssh://openclaw -> ssh://{SSH_SIDECAR}:{SSH_UPSTREAM_PORT}" in out


def test_route_reaches_the_gateway_service(manifests: list[Doc], config: Doc, gateway: Doc) -> None:
    (route,) = http_routes(config)
    upstream = urlsplit(route["to"])
    service = find(manifests, "Service", upstream.hostname or "")
    (port,) = service["spec"]["ports"]
    assert upstream.port == port["port"] == GATEWAY_PORT
    container = named_container(gateway, "openclaw-gateway")
    assert container_port(container, port["targetPort"]) == GATEWAY_PORT


def test_ssh_route_reaches_the_sidecar(manifests: list[Doc], config: Doc, gateway: Doc) -> None:
    (route,) = ssh_routes(config)
    upstream = urlsplit(route["to"])
    service = find(manifests, "Service", upstream.hostname or "")
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert upstream.port == port["port"] == SSH_UPSTREAM_PORT
    sidecar = named_container(gateway, SSH_SIDECAR)
    assert container_port(sidecar, port["targetPort"]) == SSH_UPSTREAM_PORT


# --------------------------------------------------------------------------- secrets


def test_secret_template_holds_only_placeholders(secrets_template: list[Doc]) -> None:
    assert {s["metadata"]["name"] for s in secrets_template} == {
        "clawgate-secrets",
        "clawgate-tls",
        "openclaw-ssh",
    }
    for secret in secrets_template:
        assert secret["metadata"]["namespace"] == NAMESPACE
        assert "data" not in secret, "base64 data hides what is in it: stringData only"
        for key, value in secret["stringData"].items():
            assert "REPLACE_ME" in value, f"{key}: not a placeholder"
    text = SECRET_TEMPLATE.read_text(encoding="utf-8")
    assert "BEGIN" not in text
    assert not re.search(r"[A-Za-z0-9+/]{40,}={0,2}", text)
    tls = next(s for s in secrets_template if s["metadata"]["name"] == "clawgate-tls")
    assert tls["type"] == "kubernetes.io/tls"
    assert set(tls["stringData"]) == {"tls.crt", "tls.key"}


def test_secret_template_covers_every_mounted_key(
    manifests: list[Doc], secrets_template: list[Doc]
) -> None:
    used: dict[str, set[str]] = {}
    for workload in workloads(manifests):
        for volume in volumes_by_name(workload).values():
            if "secret" in volume:
                secret = volume["secret"]
                keys = {i["key"] for i in secret["items"]}
                used.setdefault(secret["secretName"], set()).update(keys)
    assert set(used) == {s["metadata"]["name"] for s in secrets_template}
    for name, keys in used.items():
        # Every key mounted exists; every key in the template is mounted somewhere.
        assert keys == set(template_secret(secrets_template, name)), name


def test_known_hosts_template_names_the_ssh_upstream(
    config: Doc, secrets_template: list[Doc]
) -> None:
    # known_hosts writes a non-default port as [host]:port; the line must name exactly
    # the route's upstream, or clawgate refuses the sidecar's key.
    (route,) = ssh_routes(config)
    upstream = urlsplit(route["to"])
    line = template_secret(secrets_template, "clawgate-secrets")["ssh_upstream_known_hosts"]
    assert line.split()[0] == f"[{upstream.hostname}]:{upstream.port}"


def test_redis_url_names_the_redis_service_with_its_password(
    manifests: list[Doc], secrets_template: list[Doc]
) -> None:
    template = template_secret(secrets_template, "clawgate-secrets")
    url = urlsplit(template["redis_url"])
    assert url.scheme == "redis"
    assert url.password == template["redis_password"]
    service = find(manifests, "Service", url.hostname or "")
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"] == REDIS_PORT


# --------------------------------------------------------------------------- Redis


def test_redis_takes_its_password_from_the_secret(redis: Doc) -> None:
    container = only_container(redis)
    assert redis["spec"]["replicas"] == 1
    repo, tag = image_ref(container["image"])
    assert repo == "redis" and tag.split(".")[0] == "7"
    assert "env" not in container and "envFrom" not in container
    mounts = mounts_by_path(redis, container)
    mount, volume = mounts["/run/secrets/redis"]
    assert mount.get("readOnly") is True
    assert volume["secret"]["secretName"] == "clawgate-secrets"
    assert [i["key"] for i in volume["secret"]["items"]] == ["redis_password"]
    script = "\n".join(container["command"] + container["args"])
    assert "requirepass $(cat /run/secrets/redis/redis_password)" in script
    # No persistence: nothing survives a restart, nothing is written to disk.
    assert 'save ""' in script and "appendonly no" in script
    assert "maxmemory-policy noeviction" in script
    assert "volumeClaimTemplates" not in redis["spec"]
    assert container_port(container, container["livenessProbe"]["tcpSocket"]["port"]) == REDIS_PORT


# --------------------------------------------------------------------------- gateway


def test_gateway_mirrors_the_compose_service(gateway: Doc) -> None:
    assert [c["name"] for c in pod_spec(gateway)["containers"]] == [
        "openclaw-gateway",
        SSH_SIDECAR,
    ]
    assert not pod_spec(gateway).get("initContainers")
    container = named_container(gateway, "openclaw-gateway")
    env = dockerfile_env(OPENCLAW_DIR / "Dockerfile")
    mounts = mounts_by_path(gateway, container)
    config_path = PurePosixPath(env["OPENCLAW_CONFIG_PATH"])
    _, config_volume = mounts[str(config_path.parent)]
    assert config_volume["configMap"]["name"] == "openclaw-gateway-config"
    _, state = mounts[env["OPENCLAW_STATE_DIR"]]
    assert state["persistentVolumeClaim"]["claimName"] == "openclaw-state"
    _, tmp = mounts["/tmp"]
    assert "emptyDir" in tmp
    # One instance on a ReadWriteOnce volume: never two at once, even during an update.
    assert gateway["spec"]["replicas"] == 1
    assert gateway["spec"]["strategy"] == {"type": "Recreate"}
    package = json.loads((OPENCLAW_DIR / "package.json").read_text())
    _, tag = image_ref(container["image"])
    assert tag == package["dependencies"]["openclaw"]
    assert pod_spec(gateway)["securityContext"]["runAsUser"] == 1000  # the image's "node"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert container_port(container, get["port"]) == GATEWAY_PORT


def _openclaw_configs(manifests: list[Doc]) -> tuple[Doc, Doc]:
    text = find(manifests, "ConfigMap", "openclaw-gateway-config")["data"]["openclaw.json"]
    kubernetes = json5.loads(text)
    compose = json5.loads((OPENCLAW_DIR / "openclaw.json").read_text(encoding="utf-8"))
    return kubernetes, compose


def test_gateway_config_matches_compose_but_for_trusted_proxies(manifests: list[Doc]) -> None:
    kubernetes, compose = _openclaw_configs(manifests)
    kubernetes["gateway"].pop("trustedProxies")
    compose["gateway"].pop("trustedProxies")
    assert kubernetes == compose


def test_gateway_trusts_clawgate(manifests: list[Doc], config: Doc) -> None:
    kubernetes, _ = _openclaw_configs(manifests)
    gateway = kubernetes["gateway"]
    assert gateway["port"] == GATEWAY_PORT
    assert gateway["auth"]["mode"] == "trusted-proxy"
    assert gateway["auth"]["trustedProxy"]["allowLoopback"] is False
    user_header = gateway["auth"]["trustedProxy"]["userHeader"].lower()
    assert user_header in {h.lower() for h in config["jwt_claims_headers"]}
    assert config["routes"][0]["from"] in gateway["controlUi"]["allowedOrigins"]
    assert gateway["controlUi"].get("dangerouslyAllowHostHeaderOriginFallback") is not True
    # A pod range, never "anything": the NetworkPolicy narrows it to clawgate's pods.
    for entry in gateway["trustedProxies"]:
        network = ipaddress.ip_network(entry, strict=True)
        assert network.is_private and not network.is_loopback, entry
        assert network.prefixlen >= 8, entry


# --------------------------------------------------------------------------- sshd sidecar


def test_ssh_sidecar_mirrors_the_compose_service(gateway: Doc) -> None:
    """The sshd sidecar is the Compose service openclaw-ssh: the image's "ssh" target,
    run by its own CMD, unprivileged, on the gateway's state, with the User CA's public
    line at the path sshd_config names and its host key from a Secret."""
    sidecar = named_container(gateway, SSH_SIDECAR)
    gateway_container = named_container(gateway, "openclaw-gateway")
    env = dockerfile_env(OPENCLAW_DIR / "Dockerfile")
    repo, tag = image_ref(sidecar["image"])
    assert repo.endswith("/clawgate-openclaw-ssh")
    assert tag == image_ref(gateway_container["image"])[1]
    # The image's CMD (openclaw-sshd -> /usr/sbin/sshd -D -e).
    assert "command" not in sidecar and "args" not in sidecar
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {"ssh": SSH_UPSTREAM_PORT}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container_port(sidecar, sidecar[probe]["tcpSocket"]["port"]) == SSH_UPSTREAM_PORT
    # uid 1000, the login "claw" and the owner of the state volume; no capability.
    assert "runAsUser" not in sidecar["securityContext"]
    assert pod_spec(gateway)["securityContext"]["runAsUser"] == 1000
    mounts = mounts_by_path(gateway, sidecar)
    gateway_mounts = mounts_by_path(gateway, gateway_container)
    config_dir = str(PurePosixPath(env["OPENCLAW_CONFIG_PATH"]).parent)
    for shared in (env["OPENCLAW_STATE_DIR"], config_dir, "/tmp/openclaw"):
        assert mounts[shared][1] == gateway_mounts[shared][1], shared
    host_key_mount, host_key = mounts["/var/lib/openclaw-ssh"]
    assert host_key_mount.get("readOnly") is True
    assert host_key["secret"]["secretName"] == "openclaw-ssh"
    ca_mount, ca = mounts["/etc/ssh/clawgate_user_ca.pub"]
    assert ca["secret"]["secretName"] == "openclaw-ssh"
    assert ca_mount["subPath"] == "clawgate_user_ca.pub" and ca_mount.get("readOnly") is True
    items = {i["path"] for i in host_key["secret"]["items"]}
    assert items == {"ssh_host_ed25519_key", "clawgate_user_ca.pub"}
    # The gateway container never sees the sshd's host key.
    assert "/var/lib/openclaw-ssh" not in gateway_mounts
    assert "emptyDir" in mounts["/tmp"][1]


def test_ssh_sidecar_paths_match_sshd_config(gateway: Doc) -> None:
    from tests.deploy.test_openclaw_ssh import sshd_directives

    directives = sshd_directives()
    sidecar = named_container(gateway, SSH_SIDECAR)
    mounts = mounts_by_path(gateway, sidecar)
    assert directives["TrustedUserCAKeys"] in mounts
    assert str(PurePosixPath(directives["HostKey"]).parent) in mounts
    assert int(directives["Port"]) == SSH_UPSTREAM_PORT


# --------------------------------------------------------------------------- NetworkPolicy


def ingress_problems(
    policies: list[Doc],
    target: Mapping[str, str],
    port: int | Collection[int],
    allowed: Mapping[str, str],
    others: Sequence[Mapping[str, str]],
) -> list[str]:
    """Why pods labelled ``target`` could be reached by anything but pods labelled
    ``allowed`` (never by pods labelled like any of ``others``), or on a port other than
    ``port`` (one, or the set of them). NetworkPolicies add up: every policy selecting
    the target counts."""
    ports_allowed = {port} if isinstance(port, int) else set(port)
    problems: list[str] = []
    selecting = [p for p in policies if selector_matches(p["spec"]["podSelector"], target)]
    if not selecting:
        return ["no NetworkPolicy selects these pods: everything may connect"]
    isolating = [p for p in selecting if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not isolating:
        problems.append("no selecting policy has policyType Ingress")
    for policy in isolating:
        name = policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if not peers:
                problems.append(f"{name}: a rule without `from` admits every source")
                continue
            for peer in peers:
                if set(peer) != {"podSelector"}:
                    problems.append(f"{name}: peer {peer} is not only a podSelector")
                    continue
                selector = peer["podSelector"]
                if not selector_matches(selector, allowed):
                    problems.append(f"{name}: peer {selector} does not select clawgate")
                if any(selector_matches(selector, o) for o in others):
                    problems.append(f"{name}: peer {selector} selects pods besides clawgate")
            ports = rule.get("ports")
            if not ports:
                problems.append(f"{name}: a rule without `ports` admits every port")
                continue
            for entry in ports:
                if entry.get("protocol", "TCP") != "TCP" or entry.get("port") not in ports_allowed:
                    problems.append(f"{name}: port {entry} is not TCP {sorted(ports_allowed)}")
                if "endPort" in entry:
                    problems.append(f"{name}: port range {entry}")
    return problems


def _policy_case(
    manifests: list[Doc], target: str
) -> tuple[dict[str, str], dict[str, str], list[dict[str, str]]]:
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workloads(manifests)}
    others = [labels for name, labels in pods.items() if name != "clawgate"]
    return pods[target], pods["clawgate"], others


# What each NetworkPolicy lets clawgate reach: pods and one port. The gateway's pod has
# two (the gateway and the sshd sidecar), each with its own policy.
POLICY_PORTS = {
    "openclaw-gateway-from-clawgate-only": ("openclaw-gateway", GATEWAY_PORT),
    "openclaw-ssh-from-clawgate-only": ("openclaw-gateway", SSH_UPSTREAM_PORT),
    "redis-from-clawgate-only": ("redis", REDIS_PORT),
}


@pytest.mark.parametrize(
    "target,ports",
    [("openclaw-gateway", {GATEWAY_PORT, SSH_UPSTREAM_PORT}), ("redis", {REDIS_PORT})],
)
def test_only_clawgate_reaches(manifests: list[Doc], target: str, ports: set[int]) -> None:
    target_labels, allowed, others = _policy_case(manifests, target)
    policies = of_kind(manifests, "NetworkPolicy")
    assert ingress_problems(policies, target_labels, ports, allowed, others) == []
    # Each port has its own policy, named for what it does, and allows that port only.
    own = [p for p in policies if selector_matches(p["spec"]["podSelector"], target_labels)]
    assert {p["metadata"]["name"]: POLICY_PORTS[p["metadata"]["name"]] for p in own} == {
        name: spec for name, spec in POLICY_PORTS.items() if spec[0] == target
    }
    for policy in own:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        _, port = POLICY_PORTS[policy["metadata"]["name"]]
        assert ingress_problems([policy], target_labels, port, allowed, others) == []
    # Every port the pods' containers open is covered by a policy: no more, no less.
    (workload,) = [w for w in workloads(manifests) if pod_labels(w) == target_labels]
    opened = {p["containerPort"] for c in pod_spec(workload)["containers"] for p in c["ports"]}
    assert opened == ports


POLICY_BREAKAGES: dict[str, Callable[[Doc], None]] = {
    "any-pod": lambda p: p["spec"]["ingress"][0]["from"][0].update({"podSelector": {}}),
    "any-namespace": lambda p: p["spec"]["ingress"][0]["from"][0].update({"namespaceSelector": {}}),
    "ip-block": lambda p: p["spec"]["ingress"][0]["from"].append(
        {"ipBlock": {"cidr": "0.0.0.0/0"}}
    ),
    "no-from": lambda p: p["spec"]["ingress"][0].pop("from"),
    "no-ports": lambda p: p["spec"]["ingress"][0].pop("ports"),
    "other-port": lambda p: p["spec"]["ingress"][0]["ports"][0].update({"port": 8080}),
    "wrong-pods-selected": lambda p: p["spec"].update(
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "something-else"}}}
    ),
    "egress-only": lambda p: p["spec"].update({"policyTypes": ["Egress"]}),
    "gateway-admitted": lambda p: p["spec"]["ingress"][0]["from"].append(
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "openclaw-gateway"}}}
    ),
}


@pytest.mark.parametrize("policy", sorted(POLICY_PORTS))
@pytest.mark.parametrize("breakage", sorted(POLICY_BREAKAGES))
def test_network_policy_check_rejects_wider_policies(
    manifests: list[Doc], breakage: str, policy: str
) -> None:
    target, port = POLICY_PORTS[policy]
    target_labels, allowed, others = _policy_case(manifests, target)
    broken = copy.deepcopy(of_kind(manifests, "NetworkPolicy"))
    own = next(p for p in broken if p["metadata"]["name"] == policy)
    assert not ingress_problems([own], target_labels, port, allowed, others)
    POLICY_BREAKAGES[breakage](own)
    assert ingress_problems([own], target_labels, port, allowed, others)


def test_network_policy_check_counts_every_policy(manifests: list[Doc]) -> None:
    # A second, permissive policy selecting the gateway widens access; it must be seen.
    target_labels, allowed, others = _policy_case(manifests, "openclaw-gateway")
    ports = {GATEWAY_PORT, SSH_UPSTREAM_PORT}
    extra = {
        "metadata": {"name": "allow-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
    }
    policies = of_kind(manifests, "NetworkPolicy")
    assert not ingress_problems(policies, target_labels, ports, allowed, others)
    assert ingress_problems([*policies, extra], target_labels, ports, allowed, others)
    # Each policy alone opens its own port only: the SSH policy does not open 18789.
    ssh_only = [p for p in policies if p["metadata"]["name"] == "openclaw-ssh-from-clawgate-only"]
    assert ingress_problems(ssh_only, target_labels, GATEWAY_PORT, allowed, others)
