"""Output files out (semantics doc §7): match, name, upload, and log like the node agent.

Owns: choosing the ``outputFiles`` entries whose ``uploadCondition`` fits the exit code,
resolving each ``filePattern`` with the TASK's environment, naming blobs (``agent.patterns``),
uploading with bounded concurrency through ``agent.blob.BlobTransport`` (which retries transient
errors), ``fileuploadout.txt`` / ``fileuploaderr.txt`` in the task dir, and the ``FileUpload*``
failure value (§7.5). Must not: raise for a task's failure, render a URL except through
``agent.redact`` (the logs never hold a SAS signature), or read a file the task user could not.

Reading with the task user's rights: matching (the glob walk and every ``stat``) and opening go
through ``agent.userfiles.TaskFiles``, which does both as the task user when the agent is root and
the task ran as another, non-elevated user. A pattern thus never lists a file the task user could
not, in ``fileuploadout.txt`` or in ``failureInfo``, and never uploads one.

Log files are made by ``agent.nodefs.create_file`` in the task dir (opened with no link on its
path): the old name is unlinked and a new file created ``O_EXCL | O_NOFOLLOW``, so a link or hard
link the task planted there is replaced, never written through; owned by the task user, mode 0644.

Choices where Batch is silent (UNCONFIRMED): a pattern that matches nothing (literal or not) is
logged, not an error; an unreadable file fails the upload (UserError, ``FileUploadMiscError``);
the first failure stops the remaining uploads; upload logs are written whenever the task has
``outputFiles``, even if no condition matched, and ``fileuploaderr.txt`` is then empty; its JSON
carries UPLOADER's ``code`` (by HTTP status) plus a ``message`` field.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import locale
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from agent import nodefs
from agent.blob import BlobError, BlobTransport, blob_headers, upload_failure
from agent.lifecycle import Progress
from agent.patterns import MatchedFile, ResolvedPattern, blob_name, resolve_pattern
from agent.redact import redact_text, redact_url
from agent.runner import TaskUser
from agent.spec import OutputFile
from agent.status import ErrorCategory, FailureInfo, NameValue
from agent.userfiles import TaskFiles

# UPLOADER's fileuploaderr.txt codes, by HTTP status (§7.4).
_ERR_CODES = {400: "InternalError", 500: "InternalError", 503: "InternalError",
              401: "AuthenticationFailed", 403: "AuthenticationFailed", 404: "ContainerNotFound",
              409: "Conflict", 412: "PreconditionFailed"}


@dataclass(frozen=True, slots=True)
class UploadResult:
    files: int
    bytes: int
    seconds: float


def condition_matches(condition: str, exit_code: int) -> bool:
    """``uploadCondition`` against the process exit code (§7.1)."""
    return {"tasksuccess": exit_code == 0, "taskfailure": exit_code != 0}.get(condition, True)


class UploadLog:
    """``fileuploadout.txt`` (timestamped lines) and ``fileuploaderr.txt`` (JSON on failure)."""

    def __init__(self, task_dir: Path, owner: tuple[int, int] | None) -> None:
        self._dir = nodefs.open_dir(task_dir)
        self._owner = owner
        self._out = self._create("fileuploadout.txt")

    def _create(self, name: str) -> int:
        return nodefs.create_file(self._dir, name, 0o644, self._owner)

    def line(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        os.write(self._out, f"{stamp} {redact_text(message)}\n".encode(errors="surrogateescape"))

    def close(self, error: Mapping[str, object] | None) -> None:
        try:
            fd = self._create("fileuploaderr.txt")
            try:
                if error is not None:
                    os.write(fd, (redact_text(json.dumps(error)) + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass                    # the result does not depend on the log; the failure value stands
        finally:
            os.close(self._out)
            os.close(self._dir)


@dataclass(frozen=True, slots=True)
class _Item:
    output: OutputFile
    resolved: ResolvedPattern
    match: MatchedFile
    blob: str


@dataclass(frozen=True, slots=True)
class _Failed:
    failure: FailureInfo
    report: dict[str, object]          # the fileuploaderr.txt object


def _failed(failure: FailureInfo, err: BlobError | None, pattern: str, file: str | None,
            container_url: str) -> _Failed:
    code = _ERR_CODES.get(err.status or 0, "UnknownError") if err is not None else "UnknownError"
    return _Failed(failure, {"code": code, "user_error": failure.category == ErrorCategory.USER,
                             "pattern": pattern, "file": file, "destination": redact_url(container_url),
                             "message": failure.message})


async def upload_outputs(outputs: Sequence[OutputFile], *, exit_code: int, wd: Path, task_dir: Path,
                         env: Mapping[str, str], user: TaskUser, transport: BlobTransport, concurrency: int,
                         progress: Progress | None = None) -> UploadResult | FailureInfo:
    """Upload the output files of an attempt that exited with ``exit_code``; log as Batch does."""
    started = time.monotonic()
    owner = (user.uid, user.gid if user.gid is not None else -1) \
        if user.uid is not None and os.geteuid() == 0 else None
    try:
        log = UploadLog(task_dir, owner)
    except OSError as exc:          # e.g. a task process keeps re-planting a link at the log's name
        return _local_failure("The upload log could not be created in the task directory", exc)
    error: dict[str, object] | None = None
    try:
        log.line(f"System default encoding={sys.getdefaultencoding()}, filesystem encoding="
                 f"{sys.getfilesystemencoding()}, "
                 f"default locale encoding={locale.getpreferredencoding(False)}")
        try:
            result = await _upload(outputs, exit_code, wd, env, user, transport, concurrency, progress, log)
        except OSError as exc:      # the helper could not start; not a task's fault
            failure = _local_failure("Output files could not be read on the node", exc)
            result = _failed(failure, None, "", None, "")
        if isinstance(result, _Failed):
            error = result.report
            log.line(f"Upload failed: {result.failure.code}: {result.failure.message}")
            return result.failure
        log.line("Done uploading, exiting...")
        return UploadResult(result[0], result[1], time.monotonic() - started)
    finally:
        log.close(error)


async def _upload(outputs: Sequence[OutputFile], exit_code: int, wd: Path, env: Mapping[str, str],
                  user: TaskUser, transport: BlobTransport, concurrency: int, progress: Progress | None,
                  log: UploadLog) -> tuple[int, int] | _Failed:
    chosen = [o for o in outputs if condition_matches(o.upload_options.upload_condition, exit_code)]
    for skipped in (o for o in outputs if o not in chosen):
        log.line(f"Skipping pattern {skipped.file_pattern}: uploadCondition "
                 f"{skipped.upload_options.upload_condition} does not match exit code {exit_code}")
    headers: dict[int, dict[str, str]] = {}
    for i, out in enumerate(chosen):
        dest = out.destination.container
        found = _destination_problem(out)
        if found is not None:
            return _failed(found, None, out.file_pattern, None, dest.container_url)
        headers[i] = {h.name: h.value or "" for h in dest.upload_headers or ()}
    resolved = [resolve_pattern(o.file_pattern, wd, env) for o in chosen]
    log.line("Resolved mappings: [" + ", ".join(
        f"[Resolved mapping - base_path: {r.base_path}, full_pattern: {r.full_pattern}, original_pattern: "
        f"{r.original},  destination: {o.destination.container.path or ''}]"
        for r, o in zip(resolved, chosen, strict=True)) + "]")
    async with TaskFiles(user) as files:
        items: list[tuple[int, _Item]] = []
        for i, (out, res) in enumerate(zip(chosen, resolved, strict=True)):
            log.line(f"Uploading all files matching pattern {res.full_pattern}")
            matches = await files.match(res)
            if not matches:
                log.line(f"No file matches pattern {res.full_pattern}")
            items += [(i, _Item(out, res, m, blob_name(res, m, out.destination.container.path))) for m in matches]
        return await _upload_items(items, headers, files, transport, concurrency, progress, log)


async def _upload_items(items: Sequence[tuple[int, _Item]], headers: Mapping[int, Mapping[str, str]],
                        files: TaskFiles, transport: BlobTransport, concurrency: int, progress: Progress | None,
                        log: UploadLog) -> tuple[int, int] | _Failed:
    totals = [0, 0]
    failed: list[_Failed] = []
    sem = asyncio.Semaphore(max(1, concurrency))

    async def go(opener: TaskFiles, i: int, item: _Item) -> None:
        async with sem:
            got = await _one(item, headers[i], opener, transport, log)
        if isinstance(got, _Failed):
            failed.append(got)
            raise _Stop                 # leaves the TaskGroup: the uploads still running are cancelled
        totals[0] += 1
        totals[1] += got
        if progress is not None:
            progress.add(got)
            progress.advance(got)

    try:
        async with asyncio.TaskGroup() as group:
            for i, item in items:
                group.create_task(go(files, i, item))
    except* _Stop:
        pass
    if failed:
        return failed[0]
    return totals[0], totals[1]


def _local_failure(message: str, exc: OSError) -> FailureInfo:
    return FailureInfo.server("FileUploadMiscError", message, Message=redact_text(exc.strerror or str(exc)))


def identity_note() -> str:
    """Why ``identityReference`` cannot be served here (checked, not assumed)."""
    if importlib.util.find_spec("azure.identity") is None:
        return ("it needs a managed-identity token, and azure-identity is not installed on this node "
                "(batch-agent fetches no identity tokens itself)")
    return "azure-identity is installed, but batch-agent does not use managed identities"


def _destination_problem(out: OutputFile) -> FailureInfo | None:
    dest = out.destination.container
    if dest.identity_reference is not None:
        return FailureInfo.user(
            "FileUploadAccessDenied", "identityReference (a managed identity of the pool) is not supported "
            f"here: {identity_note()}. Give a container URL with a SAS that allows writes.",
            Pattern=out.file_pattern, ContainerUrl=redact_url(dest.container_url))
    try:
        blob_headers({h.name: h.value or "" for h in dest.upload_headers or ()})
    except ValueError as exc:
        return FailureInfo.user("FileUploadMiscError", "An uploadHeaders entry cannot be used",
                                Message=str(exc), Pattern=out.file_pattern)
    return None


async def _one(item: _Item, headers: Mapping[str, str], opener: TaskFiles, transport: BlobTransport,
               log: UploadLog) -> int | _Failed:
    dest = item.output.destination.container
    path = str(item.match.path)
    started = time.monotonic()
    log.line(f"Uploading file: {path} to container: {redact_url(dest.container_url)} blob: {item.blob}")
    try:
        fd = await opener.open(item.match.path)
    except OSError as exc:
        failure = FailureInfo.user("FileUploadMiscError", "An output file could not be read with the task "
                                   "user's rights", Message=exc.strerror or str(exc), FilePath=path,
                                   Pattern=item.output.file_pattern)
        return _failed(failure, None, item.output.file_pattern, path, dest.container_url)
    try:
        size = await transport.upload(dest.container_url, item.blob, fd, headers=headers)
    except BlobError as err:
        base = upload_failure(err, file_path=path)
        failure = replace(base, details=(*base.details,
                                         NameValue("ContainerUrl", redact_url(dest.container_url))))
        return _failed(failure, err, item.output.file_pattern, path, dest.container_url)
    finally:
        os.close(fd)
    log.line(f"Upload of {path} done in {time.monotonic() - started:.3f}s ({size} bytes)")
    return size


class _Stop(Exception):
    """The first failure: ends the TaskGroup of uploads."""
