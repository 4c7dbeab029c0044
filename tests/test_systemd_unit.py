"""The unit files, checked by systemd itself: `systemd-analyze verify` (any stderr output fails,
test-infra.md section 6), `systemd-analyze security --offline=true` (the exposure score, held at
or below the recorded value), and systemd as PID 1 in a container: a tiny service using
agent.sdnotify is seen READY, and a stalled event loop trips the watchdog and is restarted.

That last test is the harness the `batch-agent serve` tests reuse (tests/infra.py:
SystemdContainer with the agent image, whose /sbin/init is systemd).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from infra import REPO_ROOT, UNITS_IN_CONTAINER, SystemdContainer

UNITS = REPO_ROOT / "systemd"
AGENT = REPO_ROOT / ".venv" / "bin" / "batch-agent"
# `systemd-analyze security --offline=true` on systemd 252 (Debian 12), recorded 2026-12. The
# unit leaves out every hardening option its tasks would inherit (see its comments); a change
# that makes the score worse must be a decision, so the test holds it here.
SECURITY_SCORE = 9.6


def for_analysis(unit: str, tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names a batch-agent that exists here (verify checks
    that the command is executable; /usr/local/bin/batch-agent is where the install puts it)."""
    text = (UNITS / unit).read_text().replace("/usr/local/bin/batch-agent", str(AGENT))
    path = tmp_path / unit
    path.write_text(text)
    return path


def settings(unit: str) -> dict[str, list[str]]:
    """The unit's KEY=VALUE lines (every value of a repeated key), comments dropped."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", ["batch-agent.service", "batch-agent@.service"])
def test_systemd_analyze_verify_is_clean(unit: str, tmp_path: Path) -> None:
    assert AGENT.exists()
    done = subprocess.run(["systemd-analyze", "verify", str(for_analysis(unit, tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")


def test_security_exposure_is_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(for_analysis("batch-agent.service", tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for batch-agent\.service: ([0-9.]+) (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=true: {match[1]} {match[2]}")
    assert float(match[1]) <= SECURITY_SCORE


def test_the_service_unit_matches_the_restart_design() -> None:
    unit = settings("batch-agent.service")
    one = {k: v[-1] for k, v in unit.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["KillMode"] == "process"          # only the agent: the supervisor keeps the tasks
    assert one["Restart"] == "on-failure" and int(one["WatchdogSec"]) > 0
    assert one["LoadCredential"] == "account-key:/etc/batch-agent/account-key"
    assert one["ExecStart"] == "/usr/local/bin/batch-agent serve"   # no key, no secret on argv
    assert one["TasksMax"] == "infinity"
    assert "Delegate" not in unit
    for inherited in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "SystemCallFilter",
                      "CapabilityBoundingSet", "ProtectControlGroups", "RestrictNamespaces"):
        assert inherited not in unit, f"{inherited}= would apply to every task (see the unit's comments)"


# A stand-in for `batch-agent serve` under systemd: READY after start-up, a watchdog pinger on
# the loop, and SIGUSR1 stalls the loop (a blocking call inside it) until the watchdog fires.
SMOKE_PY = """
import asyncio, signal, sys, time
sys.path.insert(0, "/src")
from agent.sdnotify import Notifier

async def main():
    notifier = Notifier.from_environ()
    pinger = asyncio.create_task(notifier.run_watchdog())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: time.sleep(3600))
    print("serving, watchdog every", notifier.watchdog_interval, flush=True)
    notifier.ready("serving")
    await asyncio.Event().wait()

asyncio.run(main())
"""

SMOKE_UNIT = f"""[Unit]
Description=sdnotify smoke service
[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/python3 -I {UNITS_IN_CONTAINER}/smoke.py
WatchdogSec=1
Restart=on-failure
RestartSec=0
KillMode=process
"""


@pytest.mark.timeout(600)  # the first test of a fresh machine builds the Debian image (~50 s)
def test_sdnotify_under_real_systemd_ready_and_watchdog(debian_image: str, docker_client: Any,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    box = SystemdContainer.start(docker_client, debian_image,
                                 {"smoke.service": SMOKE_UNIT, "smoke.py": SMOKE_PY},
                                 mounts={str(REPO_ROOT): "/src"})
    started = time.monotonic() - t0
    try:
        box.systemctl("start", "smoke.service")  # Type=notify: returns once READY=1 arrived
        first = box.show("smoke.service", "ActiveState", "SubState", "StatusText", "NRestarts",
                         "MainPID", "WatchdogUSec")
        assert first == {"ActiveState": "active", "SubState": "running", "StatusText": "serving",
                         "NRestarts": "0", "MainPID": first["MainPID"], "WatchdogUSec": "1s"}
        assert "serving, watchdog every 0.5" in box.journal("smoke.service")

        box.systemctl("kill", "--kill-who=main", "-s", "USR1", "smoke.service")  # stall the loop
        after = box.wait_show("smoke.service", {"NRestarts": "1", "ActiveState": "active",
                                                "SubState": "running"}, timeout=30)
        assert box.show("smoke.service", "MainPID")["MainPID"] != first["MainPID"]
        assert "Watchdog timeout" in box.journal("smoke.service"), box.journal("smoke.service")
        assert after["NRestarts"] == "1"
    finally:
        box.remove()
    with capsys.disabled():
        print(f"\nsystemd container: docker run -> is-system-running in {started:.2f}s")


# Stands in for `batch-agent serve` inside the REAL unit (a drop-in replaces ExecStart only):
# reads the key from systemd's credential directory, starts a detached child the way the agent
# starts its task supervisor, records both pids, and reports through STATUS=.
STANDIN_PY = """
import os, stat, subprocess, sys
sys.path.insert(0, "/src")
from agent.sdnotify import Notifier

notifier = Notifier.from_environ()
key_path = os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "account-key")
mode = stat.S_IMODE(os.stat(key_path).st_mode)
key_ok = open(key_path).read().strip() == "c2VjcmV0LWtleQ==" and not mode & 0o077
child = subprocess.Popen(["sleep", "infinity"], start_new_session=True)
with open("/run/standin.pids", "a") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
notifier.ready(f"key {'ok' if key_ok else 'WRONG'} mode {mode:o} "
               f"config {os.environ['BATCH_AGENT_CONFIG']} "
               f"notify-vars-left {sum(v in os.environ for v in ('NOTIFY_SOCKET', 'WATCHDOG_USEC'))}")
import asyncio
asyncio.run(notifier.run_watchdog())
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kill_mode", ["process", "mixed"])
def test_the_real_unit_credential_and_restart_keep_children(agent_image: str, docker_client: Any,
                                                            kill_mode: str) -> None:
    """batch-agent.service as shipped, in the agent image under systemd: the key arrives through
    LoadCredential (0400, not in the environment), and `systemctl restart` signals the main
    process only (KillMode=process): the child that stands for the task supervisor lives on.
    The same unit with KillMode=mixed (a drop-in) kills it: the reason for the unit's choice."""
    unit = (UNITS / "batch-agent.service").read_text().replace(
        "/usr/local/bin/batch-agent", "/opt/batch-agent/bin/batch-agent")
    box = SystemdContainer.start(docker_client, agent_image,
                                 {"batch-agent.service": unit, "standin.py": STANDIN_PY},
                                 mounts={str(REPO_ROOT): "/src"})
    try:
        box.check("sh", "-c", "install -d -m 0755 /etc/batch-agent"
                              " && install -m 0600 /dev/null /etc/batch-agent/account-key"
                              " && echo c2VjcmV0LWtleQ== > /etc/batch-agent/account-key"
                              " && mkdir -p /etc/systemd/system/batch-agent.service.d"
                              " && printf '[Service]\\nExecStart=\\nExecStart=/usr/bin/python3 -I"
                              f" {UNITS_IN_CONTAINER}/standin.py\\nKillMode={kill_mode}\\n'"
                              " > /etc/systemd/system/batch-agent.service.d/standin.conf"
                              " && systemctl daemon-reload")
        box.systemctl("start", "batch-agent.service")
        shown = box.show("batch-agent.service", "ActiveState", "StatusText", "ExecMainPID")
        assert shown["ActiveState"] == "active"
        assert shown["StatusText"] == ("key ok mode 400 config /etc/batch-agent/agent.toml "
                                       "notify-vars-left 0"), box.journal("batch-agent.service")
        main1, child1 = box.check("cat", "/run/standin.pids").split()

        box.systemctl("restart", "batch-agent.service")
        box.wait_show("batch-agent.service", {"ActiveState": "active"})
        (m1, c1), (main2, _child2) = (line.split() for line in
                                     box.check("cat", "/run/standin.pids").splitlines())
        assert (m1, c1) == (main1, child1) and main2 != main1
        alive = box.exec("sh", "-c", f"kill -0 {child1} && echo alive")[1].strip() == "alive"
        assert alive == (kill_mode == "process")  # process: restart did not touch the child
        assert box.exec("sh", "-c", f"kill -0 {main1}")[0] != 0   # the old main process is gone
    finally:
        box.remove()
