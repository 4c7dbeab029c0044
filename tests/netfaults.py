"""Small real failure sources shared by the storage tests: a listener that never answers, a
port nothing listens on, a tiny tmpfs that fills up, and the SAS signature to search for."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path


def sig_of(sas: str) -> str:
    """The signature of a SAS URL: the secret every artifact is searched for."""
    return sas.split("sig=")[1].split("&")[0]


@contextlib.contextmanager
def silent_listener(path: str = "") -> Iterator[str]:
    """A TCP listener that never accepts: connects succeed, no answer ever comes (timeouts).
    Yields its URL with ``path`` appended."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}{path}"


def closed_port() -> str:
    """The URL of a local port nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def tiny_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "64k") mounted at ``mount`` (created), for full-disk tests.
    Needs root, which CI has: fails the test, never skips it."""
    import pytest

    mount.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests must run as root (CI does): they mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the full-disk test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
