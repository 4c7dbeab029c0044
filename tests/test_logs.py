"""Logging: structlog loads only when a message passes the level; what passes is redacted."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent import logs

SAS = "sv=2025-01-05&sr=c&sp=r&sig=AbCdEf0123456789abcdef0123456789ABCDEFabcd%3D"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = dict(logs._settings)
    yield
    logs._settings.update(saved)
    structlog.reset_defaults()


def test_enabled_messages_reach_stderr_redacted(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(json=True, level="warning")
    log = logs.get_logger(task_id="t1").bind(attempt=2)
    log.info("quiet")
    log.warning("download failed", url=f"https://acct.blob.core.windows.net/c/b?{SAS}")
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines()]
    assert [line["event"] for line in lines] == ["download failed"]
    assert lines[0]["task_id"] == "t1" and lines[0]["attempt"] == 2 and lines[0]["level"] == "warning"
    assert "AbCdEf0123456789" not in err and "sig=" in err


def test_unconfigured_logger_hands_everything_to_structlog(restore_logging: None) -> None:
    logs._settings.update(level=None, pending=False)
    with structlog.testing.capture_logs() as captured:
        logs.get_logger(a=1).debug("hello", b=2)
    assert captured == [{"a": 1, "b": 2, "event": "hello", "log_level": "debug"}]


def test_bad_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level must be one of"):
        logs.configure(level="loud")


@pytest.mark.parametrize(("level", "loaded"), [("warning", False), ("debug", True)])
def test_a_clean_run_does_not_import_structlog(tmp_path: Path, level: str, loaded: bool) -> None:
    """The CLI's start-up stays lean: structlog (and rich, pygments) load only to write a message."""
    task = tmp_path / "t.json"
    task.write_text(json.dumps({"id": "quiet", "commandLine": "true"}))
    code = ("import sys; from agent.cli import main; "
            f"rc = main(['run', {str(task)!r}, '--root', {str(tmp_path / 'root')!r}, '--log-level', {level!r}]); "
            "print('structlog' in sys.modules, 'rich' in sys.modules, rc, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.stderr.splitlines()[-1] == f"{loaded} {loaded} 0", proc.stderr
