"""A container's stdout / stderr into the task's ``stdout.txt`` / ``stderr.txt``, also after a restart.

Owns: opening the two files link-safely (``agent.nodefs``), the pump threads that copy the engine's
streams into them, and closing those streams. Must not: start, stop or remove containers
(``agent.container.runner``).

At start the runner attaches BEFORE ``start`` (``attach(logs, stream, demux)``) and one thread
copies both demuxed streams as they come. After an agent restart that thread is gone, and part of
the output may not have reached the files. The engine's own log (json-file or local driver) is the
source of truth: it holds every byte the container wrote, in order, per stream. ``resume`` reads
it with ``logs(follow=True)``, one stream per call, from the start, skips the bytes the file
already holds, and appends the rest, then follows the live output until the container ends.
Because the pump only ever appended what the engine sent, in order, the file is a prefix of the
engine's stream: skipping its length loses nothing and duplicates nothing, whatever the crash
interrupted (a chunk half written included). ``since=<last timestamp>`` would need a timestamp
persisted per chunk and still split a second's lines ambiguously; byte counts need no extra state.
The existing file is reopened only when it is still what the agent made: a regular file with one
link, owned by the task user; anything else (missing, replaced by a link) is created afresh and
the whole log written to it. Limits: a log driver the engine cannot read back (``none``,
``syslog``, ...) or a rotated json-file log loses what it no longer has.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path
from typing import IO, Any

from agent.nodefs import create_at, create_file, open_dir
from agent.runner import TaskUser

OUTPUT_MODE = 0o640             # as the native runner's logs: the task user and its group


def open_output(path: Path, user: TaskUser) -> IO[bytes]:
    """A fresh log file, never an object a task planted at ``path`` (see ``agent.nodefs``)."""
    owner = (user.uid, user.gid if user.gid is not None else -1) if user.uid is not None else None
    return open(create_at(path, OUTPUT_MODE, owner), "wb")


def reopen_output(path: Path, uid: int | None, gid: int | None) -> tuple[IO[bytes], int]:
    """(the file open for appending, the bytes it already holds); a fresh file (0) unless the one at
    ``path`` is still the agent's: regular, one link, owned by ``uid`` (the agent's own if None)."""
    owner = (uid, -1 if gid is None else gid) if uid is not None else None
    parent = open_dir(path.parent)
    try:
        try:
            fd = os.open(path.name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError:
            fd = -1
        if fd >= 0:
            info = os.fstat(fd)
            expected = os.geteuid() if uid is None else uid
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_uid == expected:
                return open(fd, "ab"), info.st_size
            os.close(fd)
        return open(create_file(parent, path.name, OUTPUT_MODE, owner), "wb"), 0
    finally:
        os.close(parent)


def pump_demuxed(stream: Any, out: IO[bytes], err: IO[bytes], errors: list[BaseException]) -> None:
    """Copy the demuxed attach stream to the two files, chunk by chunk, until it ends."""
    try:
        for chunk_out, chunk_err in stream:
            if chunk_out:
                out.write(chunk_out)
                out.flush()
            if chunk_err:
                err.write(chunk_err)
                err.flush()
    except Exception as exc:  # reported by wait(); the thread must not die silently
        errors.append(exc)
    finally:
        out.close()
        err.close()


def pump_one(stream: Any, out: IO[bytes], skip: int, errors: list[BaseException]) -> None:
    """Copy one stream of ``logs(follow=True)`` to ``out`` after its first ``skip`` bytes."""
    try:
        for chunk in stream:
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            if chunk:
                out.write(chunk)
                out.flush()
    except Exception as exc:  # reported by wait()
        errors.append(exc)
    finally:
        out.close()


def resume(client: Any, container_id: str, paths: tuple[Path, Path], uid: int | None, gid: int | None,
           errors: list[BaseException]) -> tuple[list[Any], list[threading.Thread]]:
    """Follow the container's stdout and stderr from the engine's log into the two files (module
    doc); returns the streams (to close) and the started pump threads (to join)."""
    streams: list[Any] = []
    threads: list[threading.Thread] = []
    try:
        for name, path in zip(("stdout", "stderr"), paths, strict=True):
            out, skip = reopen_output(path, uid, gid)
            try:
                stream = client.api.logs(container_id, stdout=name == "stdout", stderr=name == "stderr",
                                         stream=True, follow=True)
            except BaseException:
                out.close()
                raise
            streams.append(stream)
            threads.append(threading.Thread(target=pump_one, args=(stream, out, skip, errors), daemon=True,
                                            name=f"batch-agent-logs-{container_id[:12]}-{name}"))
    except BaseException:
        close_streams(streams, threads)
        raise
    for thread in threads:
        thread.start()
    return streams, threads


def close_streams(streams: list[Any], threads: list[threading.Thread]) -> None:
    """Close the engine streams for good. ``CancellableStream.close`` shuts the socket down (which
    unblocks a reader) but leaves the response holding its file descriptor, so the response is
    closed as well (a private attribute of docker-py: there is no public way)."""
    busy = any(t.is_alive() for t in threads)
    for stream in streams:
        if busy:
            with contextlib.suppress(Exception):
                stream.close()
        response = getattr(stream, "_response", None)
        if response is not None:
            with contextlib.suppress(OSError, ValueError):
                response.close()
    streams.clear()
