"""Task file routes (batch-api-routes.md §4): list (optionally recursive), get (byte ranges, also
while the task runs), properties (HEAD), delete.

Security, the reason this module looks the way it does: the agent is root and a task owns its
task directory, so it can plant a symbolic link (``wd/x -> /etc/shadow``), a FIFO, or swap a
directory for a link between two calls. Every object here is therefore reached through
``agent.nodefs``: the task directory is opened with no link on its path from ``/``, and every
file below it with ``open_beneath`` (``openat2`` ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``), so a
link anywhere on the path is refused (404 ``FileNotFound``), a ``..`` or an absolute path never
leaves the directory (404), and what is read is the object opened, whatever its name becomes.
A file is opened ``O_NONBLOCK`` and read only when ``fstat`` says it is a regular file (a FIFO
would hang the reader). A listing reports a link as its own name and ``lstat`` only, and never
descends into it; depth and entry counts are bounded so a hostile tree cannot exhaust the agent.

Wire details the clients need (sdk-compat.md §3, §4a): the GET answers 200 with the selected
bytes (``ocp-range`` or ``Range``: ``bytes=a-b``, ``a-``, ``-n``; no 206, which no client
accepts; 416 ``InvalidRange`` past the end); HEAD answers exactly one ``Content-Length`` (the
file's size) and the ``ocp-creation-time``, ``ocp-batch-file-isdirectory``,
``ocp-batch-file-url``, ``ocp-batch-file-mode`` headers; ``contentLength`` in a listing is a
string. Filesystem calls run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from agent.api.app import base_url, empty_response, json_response, metadata_url, request_url
from agent.api.errors import BatchApiError
from agent.api.formats import format_time, http_date, make_etag
from agent.api.odata import filterable, parse_list_query
from agent.api.routes.common import check_conditions, context, endpoint, get_task
from agent.api.routes.render import task_url
from agent.nodefs import DIR_FLAGS, open_beneath, open_dir, remove_entry
from agent.store import TaskRecord

FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
MAX_DEPTH = 32
MAX_ENTRIES = 50_000
READ_WHOLE = 4 * 1024 * 1024          # ranges up to this are read at once; larger ones streamed
CHUNK = 256 * 1024
FILE_FILTERS = {"name": filterable("string", "startswith", "eq")}
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_GONE = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


def _not_found(path: str, why: str = "no such file in the task directory") -> BatchApiError:
    return BatchApiError("FileNotFound", values=(("FilePath", path[:256]), ("Reason", why)))


def relative(file_path: str) -> str:
    """The request's ``{filePath}`` as a clean relative path (``\\`` taken as ``/``); else 404."""
    text = file_path.replace("\\", "/")
    if text.startswith("/") or "\x00" in text:
        raise _not_found(file_path, "a file path is relative to the task directory")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise _not_found(file_path, "a file path may not contain '..'")
    return "/".join(parts)


def _open_task_dir(request: Request, task: TaskRecord) -> int:
    layout = context(request).service.core.layout
    dirs = layout.task(task.job_id, task.id)
    root = open_dir(layout.root)
    try:
        return open_beneath(root, dirs.relative)
    finally:
        os.close(root)


async def _task_dir(request: Request) -> tuple[TaskRecord, int]:
    task = await get_task(request, request.path_params["jobId"], request.path_params["taskId"])
    try:
        return task, await asyncio.to_thread(_open_task_dir, request, task)
    except OSError:
        code = "TaskFilesCleanedup" if task.state == "completed" else "TaskFilesUnavailable"
        raise BatchApiError(code, values=(("Reason", f"task {task.id!r} has no files on this node now"),)) from None


def _url(request: Request, task: TaskRecord, name: str) -> str:
    return f"{task_url(base_url(request), task.job_id, task.id)}/files/{quote(name, safe='/')}"


def _time(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


# --- list -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    st: os.stat_result


def _walk(fd: int, prefix: str, recursive: bool, depth: int, out: list[Entry]) -> None:
    with os.scandir(fd) as it:
        for entry in it:
            if len(out) >= MAX_ENTRIES:
                return
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            name = prefix + entry.name
            out.append(Entry(name, st))
            if recursive and stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                try:
                    child = os.open(entry.name, DIR_FLAGS, dir_fd=fd)   # O_NOFOLLOW: a link is not entered
                except OSError:
                    continue
                try:
                    _walk(child, name + "/", recursive, depth + 1, out)
                finally:
                    os.close(child)


def _entries(fd: int, recursive: bool) -> list[Entry]:
    out: list[Entry] = []
    try:
        _walk(fd, "", recursive, 0, out)
    finally:
        os.close(fd)
    return out


def _properties(st: os.stat_result) -> dict[str, str | None]:
    regular = stat.S_ISREG(st.st_mode)
    return {"creationTime": format_time(_time(st.st_ctime)), "lastModified": format_time(_time(st.st_mtime)),
            "contentLength": str(st.st_size if regular else 0), "contentType": "application/octet-stream",
            "fileMode": f"{st.st_mode:o}"}


@endpoint
async def list_files(request: Request) -> Response:
    query = parse_list_query(request_url(request), request.query_params, filters=FILE_FILTERS)
    recursive = request.query_params.get("recursive", "false").lower() == "true"
    task, fd = await _task_dir(request)
    entries = await asyncio.to_thread(_entries, fd, recursive)
    items = ({"name": e.name, "url": _url(request, task, e.name), "isDirectory": stat.S_ISDIR(e.st.st_mode),
              "properties": _properties(e.st)} for e in sorted(entries, key=lambda e: e.name))
    page = query.page(items, key=lambda i: str(i["name"]), cap=request.state.api_settings.page_cap)
    return json_response(page.body(metadata_url(request, "files")))


# --- get / head -------------------------------------------------------------------------------

def _open_file(task_fd: int, rel: str) -> tuple[int, os.stat_result]:
    try:
        fd = open_beneath(task_fd, rel, FILE_FLAGS)
    finally:
        os.close(task_fd)
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise OSError(errno.ENOENT, "not a regular file")
    return fd, st


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive of ``bytes=a-b`` / ``a-`` / ``-n``; None for the whole file."""
    if header is None or not header.strip():
        return None
    m = _RANGE.match(header)
    if m is None or (not m.group(1) and not m.group(2)):
        raise BatchApiError("InvalidRange", values=(("Reason", "use one range: bytes=start-end"),))
    if not m.group(1):
        start, end = max(0, size - int(m.group(2))), size - 1
    else:
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if start >= size or end < start:
        raise BatchApiError("InvalidRange", values=(("Reason", f"the file holds {size} bytes"),))
    return start, end


def _headers(request: Request, task: TaskRecord, rel: str, st: os.stat_result, length: int) -> dict[str, str]:
    modified = _time(st.st_mtime)
    return {"Content-Length": str(length), "Content-Type": "application/octet-stream",
            "ETag": make_etag(modified), "Last-Modified": http_date(modified),
            "ocp-creation-time": http_date(_time(st.st_ctime)),
            "ocp-batch-file-isdirectory": "true" if stat.S_ISDIR(st.st_mode) else "false",
            "ocp-batch-file-url": _url(request, task, rel), "ocp-batch-file-mode": f"{st.st_mode:o}"}


def _read(fd: int, start: int, length: int) -> bytes:
    chunks = []
    while length > 0:
        data = os.pread(fd, min(length, CHUNK), start)
        if not data:
            break
        chunks.append(data)
        start += len(data)
        length -= len(data)
    return b"".join(chunks)


async def _stream(fd: int, start: int, length: int) -> AsyncIterator[bytes]:
    try:
        while length > 0:
            data = await asyncio.to_thread(os.pread, fd, min(length, CHUNK), start)
            if not data:          # the file shrank: pad so the promised length is kept
                data = b"\0" * min(length, CHUNK)
            yield data
            start += len(data)
            length -= len(data)
    finally:
        os.close(fd)


@endpoint
async def get_file(request: Request) -> Response:
    rel = relative(request.path_params["filePath"])
    task, task_fd = await _task_dir(request)
    try:
        fd, st = await asyncio.to_thread(_open_file, task_fd, rel)
    except OSError as exc:
        if exc.errno in _GONE:
            raise _not_found(rel) from None
        raise
    head = request.method == "HEAD"
    try:
        modified = _time(st.st_mtime)
        early = check_conditions(request, make_etag(modified), modified, read=True)
        if early is not None:
            return early
        if stat.S_ISDIR(st.st_mode):
            if not head:
                raise _not_found(rel, "the path is a directory; list it with .../files?recursive=true")
            return Response(b"", headers=_headers(request, task, rel, st, 0))
        if head:
            return Response(b"", headers=_headers(request, task, rel, st, st.st_size))
        wanted = request.headers.get("ocp-range") or request.headers.get("range")
        span = byte_range(wanted, st.st_size)
        start, end = span if span is not None else (0, st.st_size - 1)
        length = max(0, end - start + 1)
        headers = _headers(request, task, rel, st, length)
        if length <= READ_WHOLE:
            data = await asyncio.to_thread(_read, fd, start, length)
            data = data + b"\0" * (length - len(data))
            return Response(data, headers=headers)
        owned, fd = fd, -1
        return StreamingResponse(_stream(owned, start, length), headers=headers)
    finally:
        if fd >= 0:
            os.close(fd)


# --- delete -----------------------------------------------------------------------------------

def _delete(task_fd: int, rel: str, recursive: bool) -> None:
    parent_rel, _, name = rel.rpartition("/")
    try:
        parent = open_beneath(task_fd, parent_rel)
    finally:
        os.close(task_fd)
    try:
        st = os.lstat(name, dir_fd=parent)
        if stat.S_ISDIR(st.st_mode) and not recursive:
            os.rmdir(name, dir_fd=parent)
        else:
            remove_entry(parent, name)
    finally:
        os.close(parent)


@endpoint
async def delete_file(request: Request) -> Response:
    rel = relative(request.path_params["filePath"])
    recursive = request.query_params.get("recursive", "false").lower() == "true"
    _, task_fd = await _task_dir(request)
    try:
        await asyncio.to_thread(_delete, task_fd, rel, recursive)
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            raise BatchApiError("OperationInvalidForCurrentState", values=(
                ("Reason", "the directory is not empty; delete it with recursive=true"),)) from None
        if exc.errno in _GONE:
            raise _not_found(rel) from None
        raise
    return empty_response(200)


def routes() -> list[BaseRoute]:
    files = "/jobs/{jobId}/tasks/{taskId}/files"
    return [
        Route(files, list_files, methods=["GET"]),
        Route(files + "/{filePath:path}", get_file, methods=["GET", "HEAD"]),
        Route(files + "/{filePath:path}", delete_file, methods=["DELETE"]),
    ]
