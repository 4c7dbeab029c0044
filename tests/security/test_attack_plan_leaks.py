"""Secrets typed where they don't belong: `plan` shows the command line, and must mask them.

A SAS signature or a DSN password in ``commandLine`` is the user's own secret, but `plan` output
goes to terminals, CI logs and tickets; it is masked there as everywhere else (``agent.redact``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest


@pytest.mark.parametrize("container", [False, True])
def test_plan_masks_a_signature_typed_into_the_command_line(agent: Any, container: bool) -> None:
    """A SAS or a DSN password typed into commandLine is masked in `plan`, native or container."""
    task: dict[str, Any] = {
        "id": f"cmdsecret-{int(container)}",
        "commandLine": "curl -o x 'https://acct.blob.core.windows.net/c/b?sv=2024-01-01&sig=PLANTEDSIG123' "
                       "postgres://admin:PLANTEDPW456@db:5432/x"}
    if container:
        task["containerSettings"] = {"imageName": "localtest/busybox:full"}
    path = agent.workdir / f"{task['id']}.json"
    path.write_text(json.dumps(task))
    for output in ("json", "text"):
        rc, _, out = agent("plan", str(path), "--output", output)
        assert rc == 0, out
        assert "PLANTEDSIG123" not in out and "PLANTEDPW456" not in out, out
        assert "REDACTED" in out
