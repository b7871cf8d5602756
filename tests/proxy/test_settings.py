"""The configuration file: errors name file, line and key; environment overrides;
secrets from files; nothing unknown or ambiguous is accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.settings import ConfigError, load_settings, parse_duration, parse_settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "8uXG7lJ9t1m1J3lq7h1a0kqB0Wm6o1Jb5zq4Jk2n1xQ="
BASE = "address: 127.0.0.1:8443\nlog_level: info\n"
ROUTE = "routes:\n  - from: https://app.example.com\n    to: http://127.0.0.1:18789\n"


@pytest.fixture(autouse=True)
def no_clawgate_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLAWGATE_* variable in the developer's shell must not change these results."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("CLAWGATE_"):
            monkeypatch.delenv(name)


def problems(text: str, source: str = "cfg.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, source)
    return info.value.problems


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# ---- file:line:key ------------------------------------------------------------------------


def test_unknown_top_level_key_names_file_line_and_key() -> None:
    msg = only_problem(BASE + "cookie_secert: x\n")
    assert msg.startswith("cfg.yaml:3: cookie_secert: unknown key")


def test_unknown_route_key_names_its_path() -> None:
    msg = only_problem(BASE + ROUTE + "    allow_websocket: true\n")
    assert msg.startswith("cfg.yaml:6: routes[0].allow_websocket: unknown key")


def test_bad_value_deep_in_a_route() -> None:
    text = BASE + ROUTE + "  - from: https://b.example.com\n    to: ftp://nope\n"
    msg = only_problem(text)
    assert msg.startswith("cfg.yaml:7: routes[1].to: ")
    assert "http:// or https://" in msg


def test_several_problems_are_all_reported() -> None:
    found = problems(BASE + "colour: red\nworkers: many\ncookie_expire: soon\n")
    assert sorted(p.split(": ")[0] + " " + p.split(": ")[1] for p in found) == [
        "cfg.yaml:3 colour", "cfg.yaml:4 workers", "cfg.yaml:5 cookie_expire",
    ]


@pytest.mark.parametrize("text, line, fragment", [
    (BASE + "log_level: debug\n", 3, "'log_level' appears twice (lines 2 and 3)"),
    (BASE + ROUTE + "    to: http://127.0.0.1:1\n", 6, "'to' appears twice (lines 5 and 6)"),
    (BASE + ROUTE + "    policy:\n      - allow: {or: [{email: {is: a@x}}]}\n"
     "    policy: []\n", 8, "'policy' appears twice"),
])
def test_duplicate_keys_are_refused(text: str, line: int, fragment: str) -> None:
    msg = only_problem(text)
    assert msg.startswith(f"cfg.yaml:{line}: ")
    assert fragment in msg


def test_yaml_syntax_error_has_a_line() -> None:
    msg = only_problem(BASE + "routes: [\n")
    assert msg.startswith("cfg.yaml:4: ")


def test_not_a_mapping() -> None:
    assert only_problem("- a\n- b\n").startswith("cfg.yaml:1: the file must be a mapping")


def test_load_settings_names_the_real_file(tmp_path: Path) -> None:
    path = tmp_path / "clawgate.yaml"
    path.write_text(BASE + "\n\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [
        f"{path}:5: bogus: unknown key (check the spelling; unknown keys are refused so a "
        "typo cannot weaken security)"
    ]
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "missing.yaml")
    assert "missing.yaml" in info.value.problems[0] and "cannot read" in info.value.problems[0]


# ---- environment --------------------------------------------------------------------------


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAWGATE_LOG_LEVEL", "debug")
    monkeypatch.setenv("CLAWGATE_COOKIE_EXPIRE", "1h30m")
    monkeypatch.setenv("CLAWGATE_IDP_SCOPES", "openid email")
    monkeypatch.setenv("CLAWGATE_JWT_CLAIMS_HEADERS", '{"x-email": "email"}')
    monkeypatch.setenv("CLAWGATE_ROUTES",
                       '[{"from": "https://env.example", "to": "http://127.0.0.1:1"}]')
    settings, _ = parse_settings(BASE + "cookie_expire: 5m\n" + ROUTE)
    assert settings.log_level == "debug"
    assert settings.cookie_expire == 5400
    assert settings.idp_scopes == ["openid", "email"]
    assert settings.jwt_claims_headers == {"x-email": "email"}
    assert [r.from_ for r in settings.routes] == ["https://env.example"]


def test_environment_list_of_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    other = "q" * 43 + "="
    monkeypatch.setenv("CLAWGATE_COOKIE_SECRET", f"{SECRET},{other}")
    settings, _ = parse_settings(BASE)
    assert [s.get_secret_value() for s in settings.cookie_secret] == [SECRET, other]


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAWGATE_WORKERS", "many")
    msg = only_problem(BASE)
    assert msg.startswith("environment CLAWGATE_WORKERS: workers: ")
    monkeypatch.setenv("CLAWGATE_WORKERS", "2")
    monkeypatch.setenv("CLAWGATE_ADDRESS", "nonsense")
    assert only_problem(BASE).startswith("environment CLAWGATE_ADDRESS: address: ")


# ---- secrets from files -------------------------------------------------------------------


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "client").write_text("s3cret-value\n")
    (tmp_path / "cookie").write_text(f"{SECRET}\n\n{'q' * 43}=\n")
    settings, _ = parse_settings(
        BASE + f"idp_client_secret_file: {tmp_path / 'client'}\n"
        f"cookie_secret_file: {tmp_path / 'cookie'}\n"
    )
    assert settings.idp_client_secret is not None
    assert settings.idp_client_secret.get_secret_value() == "s3cret-value"
    assert [s.get_secret_value() for s in settings.cookie_secret] == [SECRET, "q" * 43 + "="]
    assert "s3cret" not in repr(settings)


def test_secret_file_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "client").write_text("from-env-file")
    monkeypatch.setenv("CLAWGATE_IDP_CLIENT_SECRET_FILE", str(tmp_path / "client"))
    settings, _ = parse_settings(BASE)
    assert settings.idp_client_secret is not None
    assert settings.idp_client_secret.get_secret_value() == "from-env-file"


def test_unreadable_secret_file_names_its_key_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    msg = only_problem(BASE + f"idp_client_secret_file: {missing}\n")
    assert msg.startswith("cfg.yaml:3: idp_client_secret_file: cannot read ")
    assert str(missing) in msg and "No such file" in msg


def test_secret_and_secret_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "client").write_text("x")
    msg = only_problem(BASE + "idp_client_secret: inline\n"
                       f"idp_client_secret_file: {tmp_path / 'client'}\n")
    assert msg.startswith("cfg.yaml:4: idp_client_secret_file: ")
    assert "not both" in msg
    assert "inline" not in msg  # the value is never repeated


@pytest.mark.parametrize("extra, where", [
    ("certificate_key_file: /k.pem\n", "cfg.yaml:3: certificate_key_file: "),
    ("certificate_file: /c.pem\ncertificate_key_file: /k.pem\ninsecure_server: true\n",
     "cfg.yaml:5: insecure_server: "),
    ("insecure_server: true\ncookie_same_site: none\n", "cfg.yaml:4: cookie_same_site: "),
])
def test_checks_across_keys_name_the_key_at_fault(extra: str, where: str) -> None:
    assert only_problem(BASE + extra).startswith(where)


def test_secret_values_never_appear_in_errors() -> None:
    msg = only_problem(BASE + "idp_client_secret: [1, 2]\n")
    assert msg.startswith("cfg.yaml:3: idp_client_secret: ")
    found = problems(BASE + "cookie_secret: {a: hunter2-cookie}\n")
    assert all("hunter2" not in p for p in found)


# ---- the identity provider's URL ----------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://idp.example.com", "https://idp.example.com/realms/x", "http://127.0.0.1:5556",
    "http://localhost:8080/dex", "http://[::1]:9000", "http://127.0.0.2",
])
def test_issuer_accepted(url: str) -> None:
    settings, _ = parse_settings(BASE + f"idp_provider_url: {url}\n")
    assert settings.idp_provider_url == url


@pytest.mark.parametrize("url", [
    "http://idp.example.com", "http://10.0.0.5:8080", "http://localhost.evil.com",
    "http://127.0.0.1.nip.io", "http://user@127.0.0.1", "ftp://127.0.0.1",
    "https://idp.example.com/?x=1", "https://idp.example.com/#f", "idp.example.com",
])
def test_issuer_refused(url: str) -> None:
    msg = only_problem(BASE + f"idp_provider_url: '{url}'\n")
    assert msg.startswith("cfg.yaml:3: idp_provider_url: ")


# ---- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("30s", 30), ("5m", 300), ("14h", 50400), ("1h30m", 5400), ("500ms", 0.5), ("1.5h", 5400),
    ("2d", 172800), ("0", 0), (90, 90), (0.25, 0.25), ("1m30s", 90),
])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5", "10x", "-5s", "s", "5 s", "1h-30m", "30s5", True,
                                   -1, None, [30]])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_duration_errors_in_the_file() -> None:
    assert only_problem(BASE + "cookie_expire: 14 hours\n").startswith(
        "cfg.yaml:3: cookie_expire: ")
    msg = only_problem(BASE + ROUTE + "    timeout: 5q\n")
    assert msg.startswith("cfg.yaml:6: routes[0].timeout: ")
    settings, _ = parse_settings(BASE + "cookie_expire: 2s\nidp_clock_leeway: 0s\n" + ROUTE
                                 + "    timeout: 1m30s\n")
    assert settings.cookie_expire == 2 and settings.idp_clock_leeway == 0
    assert settings.routes[0].timeout == 90


# ---- clawgate check -----------------------------------------------------------------------


def run_check(
    path: Path, env_extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(path.parent), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "proxy.cli", "check", "--config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
                          check=False)


def test_clawgate_check_reports_file_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        BASE + f"cookie_secret: {SECRET}\n" + ROUTE
        + "    allow_any_authenticated_user: true\n    timeuot: 5s\n"
        + "idp_provider_url: http://idp.example.com\n"
    )
    proc = run_check(path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{path}: INVALID" in proc.stderr
    assert f"{path}:8: routes[0].timeuot: unknown key" in proc.stderr
    assert f"{path}:9: idp_provider_url: the identity provider must use https" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_clawgate_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(
        BASE + f"cookie_secret: {SECRET}\nidp_provider_url: https://idp.example.com\n"
        "idp_client_id: c\nidp_client_secret: s\n" + ROUTE
        + "    allowed_users: [alice@example.com]\n"
    )
    proc = run_check(path)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: OK" in proc.stdout
    assert "routes:   1" in proc.stdout


def test_misspelt_environment_variables_are_named(tmp_path: Path) -> None:
    from proxy.settings import unknown_environment

    environ = {
        "CLAWGATE_COOKIE_SECRET": "x",
        "clawgate_log_level": "info",  # the names are not case-sensitive
        "CLAWGATE_CONFIG": "/etc/clawgate.yaml",
        "CLAWGATE_COOKIE_SECERT": "typo",
        "CLAWGATE_IDP_CLIENT_SECRET_FIEL": "/run/secrets/x",
        "_CLAWGATE_WORKER": "1",  # internal, not a setting
        "HOME": "/root",
    }
    assert unknown_environment(environ) == [
        "CLAWGATE_COOKIE_SECERT",
        "CLAWGATE_IDP_CLIENT_SECRET_FIEL",
    ]
    path = tmp_path / "good.yaml"
    path.write_text(
        BASE + f"cookie_secret: {SECRET}\nidp_provider_url: https://idp.example.com\n"
        "idp_client_id: c\nidp_client_secret: s\n" + ROUTE
        + "    allowed_users: [alice@example.com]\n"
    )
    proc = run_check(path, env_extra={"CLAWGATE_SIGNING_KYE": "secret-value"})
    assert proc.returncode == 0, proc.stderr
    assert "unknown:  CLAWGATE_SIGNING_KYE" in proc.stdout
    assert "secret-value" not in proc.stdout + proc.stderr


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({}, None),  # no cgroup CPU controller visible
        ({"cpu.max": "max 100000\n"}, None),  # v2, unlimited
        ({"cpu.max": "200000 100000\n"}, 2),  # v2: docker run --cpus 2
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 cores: rounded up
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
          "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_default_workers_follow_the_containers_cpu_quota(
    tmp_path: Path, files: dict[str, str], quota: int | None
) -> None:
    import os

    from proxy.settings import MAX_WORKERS, available_cpus

    cores = min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    expected = cores if quota is None else max(1, min(cores, quota))
    assert available_cpus(_cgroup(tmp_path, files)) == expected


def test_default_workers_follow_the_cpu_affinity(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    import os

    from proxy.settings import available_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert available_cpus(tmp_path) == 8
    assert available_cpus(_cgroup(tmp_path, {"cpu.max": "300000 100000"})) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(200)))
    assert available_cpus(tmp_path / "none") == 64  # the workers setting's upper bound
    # The setting's default is that count (this machine's own cgroup decides the cap).
    assert parse_settings(BASE + ROUTE, "cfg.yaml")[0].workers == available_cpus()
