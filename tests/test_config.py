"""agent.config: the TOML file, BATCH_AGENT_* variables and flags, in that order of precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import agent.config as config_module
from agent.config import AgentConfig, load_config, read_key_file
from agent.errors import ConfigError
from agent.layout import DEFAULT_ROOT

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "agent.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")  # this machine's own
    cfg = load_config(environ={})
    assert cfg.source == "defaults" and cfg.node.root == DEFAULT_ROOT
    assert cfg.tasks.kill_grace == 10.0 and cfg.tasks.default_job_id == "local"
    assert cfg.node.node_id.startswith("local-")


def test_shipped_default_file_equals_the_defaults() -> None:
    cfg = load_config(REPO / "config" / "agent.toml", environ={})
    defaults = AgentConfig()
    assert cfg.node == type(defaults.node)(node_id=cfg.node.node_id, **{
        k: getattr(defaults.node, k)
        for k in ("root", "account_name", "account_url", "pool_id", "is_dedicated", "system_path",
                  "reserved_disk_bytes", "os_reserved_disk_bytes", "task_slots_per_node", "start_task")})
    assert (cfg.tasks, cfg.storage, cfg.docker, cfg.api) == (defaults.tasks, defaults.storage, defaults.docker,
                                                            defaults.api)


def test_every_section_parses(tmp_path: Path) -> None:
    path = write(tmp_path, """
[node]
root = "/srv/node"
account_name = "acct"
account_url = "https://acct.eastus.batch.azure.com/"
pool_id = "pool"
node_id = "n1"
is_dedicated = false
system_path = "/usr/bin:/bin"
reserved_disk_bytes = 5
os_reserved_disk_bytes = 6

[tasks]
kill_grace = 0.05
default_job_id = "j"
create_users = false
pool_nonadmin_user = "u"
task_user_prefix = "p_"
user_group = "g"
use_cgroups = false
wall_clock_failure_code = "MaxWallClockTimeExceeded"

[storage]
connection_string = "UseDevelopmentStorage=true"
account_url = "http://127.0.0.1:10000/devstoreaccount1"
account_key = "k"
sas_token = "s"
concurrency = 2
retries = 0
backoff = 0
timeout = "PT30S"
block_threshold = 1024
download_deadline = "PT10M"

[docker]
stop_grace = "PT1M"
network = "none"
pull_attempts = 2
pull_backoff = 0
""")
    cfg = load_config(path, environ={})
    assert cfg.source == str(path)
    assert cfg.node.root == Path("/srv/node") and cfg.node.node_id == "n1" and cfg.node.is_dedicated is False
    assert cfg.node.reserved_disk_bytes == 5 and cfg.node.system_path == "/usr/bin:/bin"
    assert cfg.tasks.kill_grace == 0.05 and cfg.tasks.create_users is False
    assert cfg.tasks.wall_clock_failure_code == "MaxWallClockTimeExceeded"
    assert cfg.storage.backoff == 0.0 and isinstance(cfg.storage.backoff, float)
    assert cfg.storage.timeout == 30.0 and cfg.storage.retries == 0 and cfg.storage.block_threshold == 1024
    assert cfg.docker.stop_grace == 60.0 and cfg.docker.network == "none"
    assert cfg.storage.download_deadline == 600.0
    assert cfg.docker.pull_attempts == 2 and cfg.docker.pull_backoff == 0.0


@pytest.mark.parametrize(("value", "seconds"), [
    ("3", 3.0), ("0.25", 0.25), ('"PT10S"', 10.0), ('"PT1M30S"', 90.0), ('"PT0.05S"', 0.05), ('"P"', 0.0),
    ('"PT01M00S"', 60.0),
], ids=["int", "float", "PT10S", "PT1M30S", "fraction", "bare-P", "padded"])
def test_kill_grace_seconds_or_duration(tmp_path: Path, value: str, seconds: float) -> None:
    cfg = load_config(write(tmp_path, f"[tasks]\nkill_grace = {value}\n"), environ={})
    assert cfg.tasks.kill_grace == seconds


PRECEDENCE: list[tuple[str, bool, str | None, Path | None, str]] = [
    # (id, file sets root, BATCH_AGENT_ROOT, --root, expected root)
    ("default", False, None, None, str(DEFAULT_ROOT)),
    ("file", True, None, None, "/from/file"),
    ("env-beats-file", True, "/from/env", None, "/from/env"),
    ("env-without-file", False, "/from/env", None, "/from/env"),
    ("flag-beats-env-and-file", True, "/from/env", Path("/from/flag"), "/from/flag"),
    ("flag-beats-file", True, None, Path("/from/flag"), "/from/flag"),
    ("empty-env-ignored", True, "", None, "/from/file"),
]


@pytest.mark.parametrize(("in_file", "env_root", "flag", "expected"), [p[1:] for p in PRECEDENCE],
                         ids=[p[0] for p in PRECEDENCE])
def test_root_precedence(tmp_path: Path, in_file: bool, env_root: str | None, flag: Path | None,
                         expected: str) -> None:
    path = write(tmp_path, '[node]\nroot = "/from/file"\n' if in_file else "[node]\npool_id = 'p'\n")
    environ = {"BATCH_AGENT_ROOT": env_root} if env_root is not None else {}
    assert load_config(path, environ=environ, root=flag).node.root == Path(expected)


def test_config_file_from_environment(tmp_path: Path) -> None:
    env_file = write(tmp_path, '[node]\npool_id = "from-env-file"\n', "env.toml")
    flag_file = write(tmp_path, '[node]\npool_id = "from-flag-file"\n', "flag.toml")
    environ = {"BATCH_AGENT_CONFIG": str(env_file)}
    assert load_config(environ=environ).node.pool_id == "from-env-file"
    assert load_config(flag_file, environ=environ).node.pool_id == "from-flag-file"


def test_relative_root_made_absolute(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[node]\nroot = "rel/root"\n'), environ={})
    assert cfg.node.root.is_absolute() and cfg.node.root == Path.cwd() / "rel" / "root"
    assert load_config(write(tmp_path, ""), environ={}, root=Path("x")).node.root == Path.cwd() / "x"


def test_load_config_creates_nothing(tmp_path: Path) -> None:
    load_config(write(tmp_path, '[node]\nroot = "/nonexistent/batch-agent-test-root"\n'), environ={})
    assert not Path("/nonexistent/batch-agent-test-root").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["agent.toml"]


ERRORS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (id, toml, expected [(issue path, message fragment)])
    ("unknown-section", "[nodes]\nroot = '/x'\n",
     [("nodes", "unknown section; allowed: node, tasks, storage, docker")]),
    ("unknown-key", "[tasks]\nkill_grase = 1\n", [("tasks.kill_grase", "unknown key; allowed: kill_grace")]),
    ("top-level-key", "root = '/x'\n", [("root", "unknown section")]),
    ("path-not-string", "[node]\nroot = 5\n", [("node.root", "non-empty path string")]),
    ("path-empty", "[node]\nroot = ''\n", [("node.root", "non-empty path string")]),
    ("bool-as-string", "[node]\nis_dedicated = 'yes'\n", [("node.is_dedicated", "must be true or false")]),
    ("int-as-float", "[node]\nreserved_disk_bytes = 1.5\n", [("node.reserved_disk_bytes", "must be a whole number")]),
    ("int-as-bool", "[storage]\nretries = true\n", [("storage.retries", "must be a whole number")]),
    ("str-as-int", "[node]\npool_id = 5\n", [("node.pool_id", "must be a string")]),
    ("float-as-bool", "[tasks]\nkill_grace = true\n",
     [("tasks.kill_grace", "number of seconds or an ISO 8601")]),
    ("float-as-list", "[docker]\nstop_grace = [1]\n",
     [("docker.stop_grace", "number of seconds or an ISO 8601")]),
    ("bad-duration", "[tasks]\nkill_grace = '10s'\n", [("tasks.kill_grace", "not an ISO 8601 duration")]),
    ("negative-grace", "[tasks]\nkill_grace = -1\n", [("tasks.kill_grace", "must be between 0 and 3600, got -1.0")]),
    ("unlimited-grace", "[docker]\nstop_grace = 'P10675199DT2H48M5.4775807S'\n",
     [("docker.stop_grace", "must be a finite time")]),
    ("zero-concurrency", "[storage]\nconcurrency = 0\n", [("storage.concurrency", "between 1 and 256, got 0")]),
    ("huge-concurrency", "[storage]\nconcurrency = 100000\n", [("storage.concurrency", "between 1 and 256")]),
    ("zero-pull-attempts", "[docker]\npull_attempts = 0\n", [("docker.pull_attempts", "between 1 and 20")]),
    ("negative-retries", "[storage]\nretries = -2\n", [("storage.retries", "between 0 and 100")]),
    ("zero-timeout", "[storage]\ntimeout = 0\n", [("storage.timeout", "at least 1")]),
    ("zero-blocks", "[storage]\nblock_threshold = 0\n", [("storage.block_threshold", "at least 1, got 0")]),
    ("negative-disk", "[node]\nreserved_disk_bytes = -5\n", [("node.reserved_disk_bytes", "at least 0")]),
    ("several", "[tasks]\nkill_grace = 'x'\nnope = 1\n[docker]\nnetwork = 1\n[extra]\n",
     [("tasks.kill_grace", "ISO 8601"), ("tasks.nope", "unknown key"), ("docker.network", "must be a string"),
      ("extra", "unknown section")]),
]


@pytest.mark.parametrize(("text", "expected"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_config_errors_name_the_key(tmp_path: Path, text: str, expected: list[tuple[str, str]]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    issues = info.value.issues
    assert sorted(i.path for i in issues) == sorted(p for p, _ in expected)
    for where, fragment in expected:
        assert any(i.path == where and fragment in i.message for i in issues), (where, issues)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("[node\n", "cannot read config file"),
    ("[node]\nroot = \n", "cannot read config file"),
], ids=["bad-table", "bad-value"])
def test_invalid_toml(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text), environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; fix --config or BATCH_AGENT_CONFIG"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(environ={"BATCH_AGENT_CONFIG": str(tmp_path / "nope.toml")})


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg: Any = load_config(write(tmp_path, ""), environ={})
    with pytest.raises(AttributeError):
        cfg.node.root = Path("/x")


KEY = "c2VjcmV0LWtleS1ub3QtdG8tYmUtc2hvd24="
SECRETS: list[tuple[str, str, str]] = [
    # (id, [storage] lines, what the message names)
    ("account-key", f'account_url = "http://127.0.0.1:10000/a"\naccount_key = "{KEY}"\n', "storage.account_key"),
    ("sas-token", f'account_url = "http://127.0.0.1:10000/a"\nsas_token = "sv=1&sig={KEY}"\n', "storage.sas_token"),
    ("connection-string-key", f'connection_string = "AccountName=a;AccountKey={KEY};BlobEndpoint=http://x/"\n',
     "storage.connection_string (AccountKey)"),
    ("connection-string-sas", f'connection_string = "BlobEndpoint=http://x/;SharedAccessSignature=sv=1&sig={KEY}"\n',
     "storage.connection_string (SharedAccessSignature)"),
]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o620], ids=lambda m: f"{m:04o}")
@pytest.mark.parametrize(("lines", "what"), [s[1:] for s in SECRETS], ids=[s[0] for s in SECRETS])
def test_secret_config_open_to_others_is_refused(tmp_path: Path, lines: str, what: str, mode: int) -> None:
    path = write(tmp_path, "[storage]\n" + lines, mode=mode)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message and what in message and f"chmod 600 {path}" in message
    assert f"mode {mode:04o}" in message and KEY not in message


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=lambda m: f"{m:04o}")
@pytest.mark.parametrize("lines", [s[1] for s in SECRETS], ids=[s[0] for s in SECRETS])
def test_private_secret_config_loads(tmp_path: Path, lines: str, mode: int) -> None:
    assert load_config(write(tmp_path, "[storage]\n" + lines, mode=mode), environ={}).source


@pytest.mark.parametrize("text", [
    "[node]\npool_id = 'p'\n", "[storage]\nconnection_string = 'UseDevelopmentStorage=true'\n",
    "[storage]\naccount_key = ''\nsas_token = ''\nconcurrency = 2\n",
    "[storage]\naccount_url = 'https://a.blob.core.windows.net/'\n",
], ids=["no-storage", "dev-storage", "empty-secrets", "identity-url-only"])
def test_config_without_secrets_may_be_world_readable(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text, mode=0o644), environ={}).source


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_secret_config_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[storage]\n" + SECRETS[0][1])
    os.chown(path, 65534, 65534)                 # nobody: may rewrite it (and its mode) at will
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "owned by uid 65534" in str(info.value) and "storage.account_key" in str(info.value)
    assert KEY not in str(info.value)


def test_cli_refuses_a_world_readable_secret_config(tmp_path: Path) -> None:
    config = write(tmp_path, "[storage]\n" + SECRETS[2][1], mode=0o644)
    task = tmp_path / "t.json"
    task.write_text('{"id": "t", "commandLine": "true"}')
    proc = subprocess.run([sys.executable, "-m", "agent", "plan", str(task), "--config", str(config),
                           "--root", str(tmp_path / "root")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and KEY not in proc.stdout + proc.stderr
    assert f"chmod 600 {config}" in proc.stderr and "storage.connection_string (AccountKey)" in proc.stderr
    config.chmod(0o600)
    ok = subprocess.run([sys.executable, "-m", "agent", "plan", str(task), "--config", str(config),
                         "--root", str(tmp_path / "root")], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_api_section_and_service_keys(tmp_path: Path) -> None:
    path = write(tmp_path, """
[node]
task_slots_per_node = 4
start_task = "/etc/batch-agent/start-task.json"

[api]
listen = "0.0.0.0:9000"
account_name = "acct"
account_key_file = "/etc/batch-agent/account-key"
max_clock_skew = "PT5M"
public_url = "http://10.0.0.4:9000"
""")
    cfg = load_config(path, environ={})
    assert cfg.node.task_slots_per_node == 4 and cfg.node.start_task.endswith("start-task.json")
    assert cfg.api.listen == "0.0.0.0:9000" and cfg.api.account_name == "acct"
    assert cfg.api.max_clock_skew == 300.0 and cfg.api.public_url == "http://10.0.0.4:9000"


@pytest.mark.parametrize(("text", "path"), [
    ("[node]\ntask_slots_per_node = 0\n", "node.task_slots_per_node"),
    ("[node]\ntask_slots_per_node = 257\n", "node.task_slots_per_node"),
    ("[api]\nmax_clock_skew = -1\n", "api.max_clock_skew"),
    ("[api]\naccount_key = 'abc'\n", "api.account_key"),
])
def test_service_keys_out_of_range(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert path in info.value.render()


def test_key_file_checks(tmp_path: Path) -> None:
    good = write(tmp_path, "a2V5\n", name="key", mode=0o400)
    assert read_key_file(good) == "a2V5"
    for mode in (0o644, 0o604, 0o660):
        good.chmod(mode)
        with pytest.raises(ConfigError, match="chmod 600") as info:
            read_key_file(good)
        assert "a2V5" not in str(info.value)
    good.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(ConfigError, match="symlink"):
        read_key_file(link)
    with pytest.raises(ConfigError, match="does not exist"):
        read_key_file(tmp_path / "missing")
    os.chown(good, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        read_key_file(good)
