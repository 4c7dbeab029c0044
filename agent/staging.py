"""Resource files in (semantics doc §4): decide what lands where under the working dir, safely.

Owns: turning ``resourceFiles`` into downloads (``httpUrl`` -> one file at ``filePath``;
``storageContainerUrl`` / ``autoStorageContainerName`` [+ ``blobPrefix``] -> list, then every
blob at ``filePath/<full blob name>``, prefix kept, blob "directories" kept), the container URL
and credential of the auto-storage account (from ``StorageConfig``), ``fileMode``, ownership,
bounded concurrency, and the Batch failure value of whatever goes wrong. Must not: run before
the task dir exists, raise for a task's failure (failures are ``FailureInfo`` values), render a
URL other than through ``agent.redact``, or put a byte outside the destination dir. The bytes
themselves are moved by ``agent.blob.BlobTransport`` (retries, Content-MD5, temp file + rename).

No byte outside the working dir. Names are checked first: a blob name (or ``filePath``) with an
empty, ``.`` or ``..`` segment, a leading ``/`` or a NUL is refused (UserError). Paths are then
walked openat-style, never by string: the destination dir is opened by ``agent.nodefs.open_dir``
(no link anywhere in its path), each
sub-directory is created with ``mkdirat`` and opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to
its parent's fd, so a symlink in the way (a link a previous task planted) fails the open with
``ELOOP``/``ENOTDIR`` instead of being followed; an existing symlink as the last component is
refused too (UserError). The transport then writes through ``/proc/self/fd/<dir fd>/<name>``:
the kernel resolves that magic link to the already-verified directory, so its temp file and
``rename`` happen in that directory whatever the path above it has become; ``rename`` replaces
a name, it never writes through an existing link or hard link. (Written by hand: no
well-kept library offers ``openat`` walks for asyncio downloads.)

Choices where Batch is silent (UNCONFIRMED): directories created here get ``fileMode`` plus
``x`` wherever it grants ``r``, and always ``rwx`` for the owner (0770 -> 0770, 0644 -> 0755);
existing directories are left alone. When two entries name the same file, the later one wins.
An ``identityReference`` fails the task (UserError ``TaskFeatureNotSupported``): azure-identity is
not a dependency, and is not installed here, so no token could be obtained.

Overall deadline: listing and downloading a task's resource files together may take at most
``[storage] download_deadline`` seconds (4 h by default); past it the transfers are cancelled and the task fails
with ``ResourceDownloadTimedOut`` (agent >= 1.9.6 ends endlessly-retrying downloads with that
code). Its category is UNCONFIRMED (semantics doc §15 item 10): ServerError here, as for the
other download time-outs (``BlobDownloadTimedOut``, ``ResourceContainerListTimedOut``).
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from agent.blob import (
    BlobError,
    BlobTransport,
    RetryPolicy,
    SharedKey,
    TransportConfig,
    blob_url,
    download_failure,
)
from agent.config import StorageConfig
from agent.lifecycle import Progress, TaskContext
from agent.nodefs import open_dir
from agent.redact import redact_url
from agent.runner import TaskUser
from agent.spec import ResourceFile
from agent.status import FailureInfo, NameValue

RESOURCE_DOWNLOAD_DEADLINE = StorageConfig().download_deadline
"""Seconds all of one task's resource files may take (listing included) before the task fails
with ``ResourceDownloadTimedOut``. A constant because ``agent.config`` has no key for it yet; the
per-read ``[storage] timeout`` and the retries bound each request, this bounds the whole phase
(a server that trickles bytes, or retries that never end). Batch's own value is not documented."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROC_FD = Path("/proc/self/fd")


@dataclass(frozen=True, slots=True)
class Download:
    """One file to fetch: ``url`` carries its SAS and is rendered only through ``redact_url``."""

    url: str
    parts: tuple[str, ...]          # path segments under the destination dir
    mode: int
    credential: SharedKey | None
    size: int | None                # known for listed blobs, not for httpUrl

    @property
    def file_path(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True, slots=True)
class StagingResult:
    files: int
    bytes: int
    seconds: float


class _Stop(Exception):
    """Carries a task failure out of a TaskGroup so the other downloads are cancelled."""

    def __init__(self, failure: FailureInfo) -> None:
        super().__init__(failure.code)
        self.failure = failure


def transport_config(storage: StorageConfig) -> TransportConfig:
    """The transport settings an agent config asks for (shared with ``agent.upload``'s hook)."""
    timeout = max(storage.timeout, 0.001)
    return TransportConfig(concurrency=max(1, storage.concurrency), connect_timeout=min(10.0, timeout),
                           read_timeout=timeout, write_timeout=timeout,
                           block_threshold=storage.block_threshold,
                           retry=RetryPolicy(attempts=max(1, storage.retries), base_delay=storage.backoff))


def attempt_transport(ctx: TaskContext) -> BlobTransport:
    """The one transport of a task attempt, shared by the resource files hook and the output
    files hook (one connection pool; the TLS context is per process). Made on first use and
    closed with the attempt (``ctx.cleanup``, which the task runner always closes)."""
    found: BlobTransport | None = ctx.shared.get("blob_transport")
    if found is None:
        found = ctx.shared["blob_transport"] = BlobTransport(transport_config(ctx.config.storage))
        ctx.cleanup.push_async_callback(found.aclose)
    return found


def _with_detail(failure: FailureInfo, **extra: str) -> FailureInfo:
    return replace(failure, details=failure.details + tuple(NameValue(k, v) for k, v in extra.items()))


def _user_failure(code: str, message: str, file_path: str, **extra: str) -> FailureInfo:
    return FailureInfo.user(code, message, FilePath=file_path, **extra)


def name_problem(name: str) -> str | None:
    """Why a blob name (or ``filePath``) cannot be a path under the destination, or None."""
    if "\0" in name:
        return "it contains a NUL character"
    if name.startswith("/"):
        return "it begins with '/'"
    segments = name.split("/")
    if ".." in segments:
        return "it has a '..' segment and would be written outside the working directory"
    if "." in segments or "" in segments:
        return "it has an empty or '.' segment"
    return None


def dir_mode(file_mode: int) -> int:
    """The mode of a directory created for files of ``file_mode`` (UNCONFIRMED in Batch)."""
    return 0o700 | (file_mode & 0o777) | ((file_mode & 0o444) >> 2)


def auto_storage_container(name: str, storage: StorageConfig) -> tuple[str, SharedKey | None] | None:
    """The URL (and Shared Key) of container ``name`` in the configured auto-storage account."""
    account_url, key, sas, account = storage.account_url, storage.account_key, storage.sas_token, ""
    if storage.connection_string:
        fields = dict(part.split("=", 1) for part in storage.connection_string.split(";") if "=" in part)
        account = fields.get("AccountName", "")
        key = fields.get("AccountKey", key)
        sas = fields.get("SharedAccessSignature", sas)
        account_url = fields.get("BlobEndpoint", "") or (
            f"{fields.get('DefaultEndpointsProtocol', 'https')}://{account}.blob."
            f"{fields.get('EndpointSuffix', 'core.windows.net')}" if account else "")
    if not account_url or not (key or sas):
        return None
    url = f"{account_url.rstrip('/')}/{name}"
    if key:
        if not account:  # path-style endpoints (Azurite, 127.0.0.1) name the account in the path
            parts = urlsplit(account_url)
            host = parts.hostname or ""
            first_path = parts.path.strip("/").split("/")[0]
            path_style = host in ("localhost", "127.0.0.1", "::1") or host.replace(".", "").isdigit()
            account = first_path if path_style and first_path else host.split(".")[0]
        return url, SharedKey(account, key)
    return f"{url}?{sas.lstrip('?')}", None


def identity_note() -> str:
    """Why ``identityReference`` cannot be served here (checked, not assumed)."""
    if importlib.util.find_spec("azure.identity") is None:
        return ("it needs a managed-identity token, and azure-identity is not installed on this node "
                "(batch-agent fetches no identity tokens itself)")
    return "azure-identity is installed, but batch-agent does not use managed identities"


def _source(rf: ResourceFile, index: int, storage: StorageConfig,
            ) -> tuple[str, SharedKey | None] | FailureInfo:
    field = f"resourceFiles[{index}]"
    if rf.identity_reference is not None:
        return FailureInfo.user(
            "TaskFeatureNotSupported",
            f"identityReference (a managed identity of the pool) is not supported here: {identity_note()}. "
            "Give a URL with a SAS instead.",
            FieldName=f"{field}.identityReference")
    if rf.http_url:
        return rf.http_url, None
    if rf.storage_container_url:
        return rf.storage_container_url, None
    name = rf.auto_storage_container_name or ""
    found = auto_storage_container(name, storage)
    if found is None:
        return FailureInfo.user(
            "AutoStorageNotConfigured",
            "autoStorageContainerName needs the auto-storage account in the agent config: set [storage] "
            "connection_string, or account_url with account_key or sas_token.",
            FieldName=f"{field}.autoStorageContainerName", ContainerName=name)
    return found


async def plan_downloads(files: Sequence[ResourceFile], transport: BlobTransport, storage: StorageConfig,
                         ) -> list[Download] | FailureInfo:
    """Every file to fetch, containers listed; a bad name or a listing error is a failure value."""
    out: dict[tuple[str, ...], Download] = {}
    for index, rf in enumerate(files):
        source = _source(rf, index, storage)
        if isinstance(source, FailureInfo):
            return source
        url, credential = source
        base = rf.file_path or ""
        base_parts = tuple(p for p in base.split("/") if p not in ("", "."))
        if ".." in base_parts or base.startswith("/") or (rf.http_url and not base_parts):
            return _user_failure("ResourceFileCreateFailed", "The resource file's filePath must name a path "
                                 "inside the task working directory", base, Url=redact_url(url))
        if rf.http_url:
            out.pop(base_parts, None)
            out[base_parts] = Download(url, base_parts, rf.mode, None, None)
            continue
        try:
            blobs = await transport.list_blobs(url, rf.blob_prefix, credential=credential)
        except BlobError as err:
            return _with_detail(download_failure(err, listing=True, file_path=base), Url=redact_url(url))
        for blob in blobs:
            problem = name_problem(blob.name)
            if problem:
                return _user_failure("ResourceFileCreateFailed", f"The blob name cannot be used as a file "
                                     f"path: {problem}", "/".join((*base_parts, blob.name)),
                                     BlobName=blob.name, Url=redact_url(url))
            parts = (*base_parts, *blob.name.split("/"))
            out.pop(parts, None)
            out[parts] = Download(blob_url(url, blob.name), parts, rf.mode, credential, blob.size)
    return list(out.values())


def _owner(user: TaskUser) -> tuple[int, int] | None:
    if user.uid is None or os.geteuid() != 0:
        return None
    return user.uid, user.gid if user.gid is not None else -1


class _InTheWay(Exception):
    def __init__(self, what: str, path: str) -> None:
        super().__init__(what)
        self.what, self.path = what, path


def _open_parent(dest_dir: Path, parts: Sequence[str], mode: int, owner: tuple[int, int] | None) -> int:
    """An fd of the directory that will hold ``parts[-1]``, creating directories, following no link."""
    fd = open_dir(dest_dir)
    try:
        for i, part in enumerate(parts[:-1]):
            created = False
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
                created = True
            except FileExistsError:
                pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    kind = "a symlink" if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode) else "a file"
                    raise _InTheWay(kind, "/".join(parts[: i + 1])) from exc
                raise
            os.close(fd)
            fd = child
            if created:
                os.fchmod(fd, mode)
                if owner:
                    os.fchown(fd, *owner)
        try:
            if stat.S_ISLNK(os.lstat(parts[-1], dir_fd=fd).st_mode):
                raise _InTheWay("a symlink", "/".join(parts))
        except FileNotFoundError:
            pass
    except BaseException:
        os.close(fd)
        raise
    return fd


async def fetch(item: Download, dest_dir: Path, transport: BlobTransport,
                owner: tuple[int, int] | None, on_bytes: Callable[[int], None] | None = None) -> int | FailureInfo:
    """Download one file into ``dest_dir`` (see the module docstring); bytes written or a failure.
    ``on_bytes``: progress, called with each batch written (from a transfer thread)."""
    url = redact_url(item.url)
    try:
        fd = _open_parent(dest_dir, item.parts, dir_mode(item.mode), owner)
    except _InTheWay as way:
        return _user_failure("ResourceFileCreateFailed", f"A resource file cannot be written: {way.what} is "
                             f"in the way at {way.path!r} (no file is written through a link)",
                             item.file_path, Url=url)
    except OSError as exc:
        code = "DiskFull" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "ResourceDirectoryCreateFailed"
        return FailureInfo.server(code, "A directory for the resource files could not be created on the node",
                                  Message=exc.strerror or str(exc), FilePath=item.file_path, Url=url)
    try:
        leaf = item.parts[-1]
        result = await transport.download(item.url, _PROC_FD / str(fd) / leaf, mode=item.mode,
                                          credential=item.credential, on_bytes=on_bytes)
        if owner:
            os.chown(leaf, *owner, dir_fd=fd, follow_symlinks=False)
        return result.size
    except BlobError as err:
        return _with_detail(download_failure(err, listing=False, file_path=item.file_path), Url=url)
    except OSError as exc:
        code = "DiskFull" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "ResourceFileWriteFailed"
        return FailureInfo.server(code, "A resource file could not be written to the node's disk",
                                  Message=exc.strerror or str(exc), FilePath=item.file_path, Url=url)
    finally:
        os.close(fd)


async def run_bounded(jobs: Sequence[Callable[[], Awaitable[FailureInfo | None]]], limit: int,
                      ) -> FailureInfo | None:
    """Run ``jobs`` at most ``limit`` at a time; the first failure cancels the rest and is returned."""
    sem = asyncio.Semaphore(max(1, limit))

    async def one(job: Callable[[], Awaitable[FailureInfo | None]]) -> None:
        async with sem:
            failure = await job()
        if failure is not None:
            raise _Stop(failure)

    stopped: FailureInfo | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(one(job))
    except* _Stop as stops:
        first = stops.exceptions[0]
        assert isinstance(first, _Stop)
        stopped = first.failure
    return stopped


async def stage_resource_files(files: Sequence[ResourceFile], dest_dir: Path, *, user: TaskUser,
                               transport: BlobTransport, storage: StorageConfig,
                               progress: Progress | None = None,
                               deadline: float | None = RESOURCE_DOWNLOAD_DEADLINE,
                               ) -> StagingResult | FailureInfo:
    """Download every resource file into ``dest_dir`` (the task working dir), or say why not.

    ``deadline``: seconds for the whole phase (None: no limit), see the module docstring.
    """
    started = time.monotonic()
    if not _PROC_FD.is_dir():
        return FailureInfo.server("ResourceFileCreateFailed", "/proc is not mounted; batch-agent needs "
                                  "/proc/self/fd to write resource files safely")
    try:
        async with asyncio.timeout(deadline):
            return await _stage(files, dest_dir, user, transport, storage, progress, started)
    except TimeoutError:
        assert deadline is not None
        return FailureInfo.server(
            "ResourceDownloadTimedOut", "The resource files were not downloaded within the time allowed.",
            Message=f"downloading the task's resource files took longer than {deadline:g} seconds; the "
                    "transfers were cancelled")


async def _stage(files: Sequence[ResourceFile], dest_dir: Path, user: TaskUser, transport: BlobTransport,
                 storage: StorageConfig, progress: Progress | None, started: float,
                 ) -> StagingResult | FailureInfo:
    planned = await plan_downloads(files, transport, storage)
    if isinstance(planned, FailureInfo):
        return planned
    owner = _owner(user)
    moved = [0]
    if progress is not None:
        progress.add(sum(d.size or 0 for d in planned))

    def job(item: Download) -> Callable[[], Awaitable[FailureInfo | None]]:
        async def go() -> FailureInfo | None:
            got = await fetch(item, dest_dir, transport, owner, progress.advance if progress else None)
            if isinstance(got, FailureInfo):
                return got
            moved[0] += got
            if progress is not None and item.size is None:    # an httpUrl: its size is known now
                progress.add(got)
            return None
        return go

    failure = await run_bounded([job(d) for d in planned], storage.concurrency)
    if failure is not None:
        return failure
    return StagingResult(len(planned), moved[0], time.monotonic() - started)
