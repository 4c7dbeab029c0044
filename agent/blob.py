"""Blob Storage transport: list, download, upload and probe over raw REST (httpx, HTTP/1.1).

Owns every byte batch-agent moves to and from storage: resource files in (``httpUrl`` of any
HTTP(S) server, ``storageContainerUrl``, ``autoStorageContainerName`` with Shared Key) and output
files out (Put Blob, or Put Block + Put Block List above a threshold). It also owns retries of
transient failures and the ``BlobError`` -> Batch ``FailureInfo`` tables (semantics doc §4.2, §7.5).
It does not decide what to download or where (``agent.staging`` / ``agent.upload`` do), and
callers bound concurrency themselves; ``download_many`` / ``upload_many`` are small helpers.

Why raw REST and not azure-storage-blob: measured on the target machine (test-infra.md §4), a
streamed GET and a single Put Blob over httpx ran about 2x the SDK's default throughput, and
``httpUrl`` downloads need a plain HTTP client anyway. The protocol surface used is small: List
Blobs, Get/Head/Put/Delete Blob, Put Block, Put Block List, and Shared Key signing.

Secrets: URLs reach messages and logs only through ``agent.redact``; a SharedKey never does.
Every request runs in one of the transport's worker threads on a synchronous ``httpx.Client``
(see ``BlobTransport`` for why): downloads are written to the temp file's fd in 1 MiB batches,
uploads read with ``os.pread`` in 4 MiB pieces, and the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import hashlib
import hmac
import os
import queue
import random
import secrets
import socket
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import httpx

from agent.logs import get_logger
from agent.redact import redact_text, redact_url
from agent.status import FailureInfo

__all__ = [
    "BlobError", "BlobItem", "BlobTransport", "DownloadItem", "DownloadResult", "ErrorKind",
    "RetryPolicy", "SharedKey", "TransportConfig", "UploadItem", "backoff_delay", "blob_headers",
    "blob_url", "download_failure", "parse_sas_expiry", "upload_failure",
]

T = TypeVar("T")
ErrorKind = Literal["not_found", "access_denied", "container_not_found", "conflict", "precondition",
                    "timeout", "disk_full", "local_io", "misc"]
Source = Path | int | BinaryIO

API_VERSION = "2023-11-03"
MiB = 1024 * 1024
_CHUNK = 4 * MiB            # upload body pieces; Put Blob needs Content-Length, so no chunked bodies
_WRITE_BATCH = 1 * MiB
_PIPELINE_MIN = 16 * MiB   # bodies above this are hashed and written on a second thread
_MAX_BLOCKS = 50_000
_CLOSE_GRACE = 5.0      # seconds aclose waits for cancelled calls to clean up
_IDLE_EXIT = 60.0       # seconds an idle worker thread lives
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Standard names in uploadHeaders that Put Blob stores as blob properties (names are case-insensitive).
_PROPERTY_HEADERS = {
    "content-type": "x-ms-blob-content-type", "cache-control": "x-ms-blob-cache-control",
    "content-encoding": "x-ms-blob-content-encoding", "content-language": "x-ms-blob-content-language",
    "content-disposition": "x-ms-blob-content-disposition", "content-md5": "x-ms-blob-content-md5",
}
_RESERVED = frozenset({"authorization", "content-length", "host", "transfer-encoding", "x-ms-date",
                       "x-ms-version", "x-ms-blob-type", "x-ms-client-request-id"})


class BlobError(Exception):
    """A storage or HTTP operation failed; ``kind`` says how, the message is already redacted."""

    def __init__(self, kind: ErrorKind, message: str, *, url: str = "", status: int | None = None,
                 code: str | None = None, transient: bool = False, retry_after: float | None = None) -> None:
        self.kind: ErrorKind = kind
        self.status = status
        self.code = code                       # Azure error code (x-ms-error-code), when one came back
        self.url_redacted = redact_url(url) if url else ""
        self.transient = transient
        self.retry_after = retry_after
        text = redact_text(message)
        super().__init__(f"{text} ({self.url_redacted})" if self.url_redacted else text)


@dataclass(frozen=True, slots=True)
class SharedKey:
    """A storage account name and key, for Shared Key auth (``autoStorageContainerName``)."""

    account: str
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter. ``base_delay=0`` turns every wait off (tests)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0      # also caps a server's Retry-After


@dataclass(frozen=True, slots=True)
class TransportConfig:
    concurrency: int = 8                   # connection pool size
    connect_timeout: float = 10.0
    read_timeout: float = 60.0             # per socket read, not per transfer
    write_timeout: float = 60.0
    block_threshold: int = 256 * MiB       # files larger than this go up as blocks
    block_size: int = 8 * MiB
    block_concurrency: int = 4             # Put Block calls in flight per blob
    retry: RetryPolicy = RetryPolicy()
    verify: bool | str = True              # TLS verification, or a CA bundle path


@dataclass(frozen=True, slots=True)
class BlobItem:
    name: str
    size: int
    content_md5: str | None                # base64, as the service reports it


@dataclass(frozen=True, slots=True)
class DownloadResult:
    size: int
    md5_checked: bool


@dataclass(frozen=True, slots=True)
class DownloadItem:
    url: str
    dest: Path
    mode: int | None = None
    credential: SharedKey | None = None


@dataclass(frozen=True, slots=True)
class UploadItem:
    container_url: str
    blob_name: str
    src: Source
    headers: Mapping[str, str] = field(default_factory=dict)
    credential: SharedKey | None = None


def backoff_delay(policy: RetryPolicy, attempt: int, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based); honours a capped Retry-After."""
    if policy.base_delay <= 0:
        return 0.0
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    delay = (rng or random).uniform(0, ceiling)
    return min(policy.max_delay, max(delay, retry_after or 0.0))


def parse_sas_expiry(url: str) -> datetime | None:
    """The SAS expiry (``se``) of ``url`` as an aware UTC datetime, or None if absent/unreadable."""
    values = [v for k, v in parse_qsl(urlsplit(url).query) if k == "se"]
    if not values:
        return None
    text = values[0].strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def blob_url(container_url: str, blob_name: str) -> str:
    """The URL of ``blob_name`` in a container: each path segment percent-encoded, the SAS kept."""
    parts = urlsplit(container_url)
    path = parts.path.rstrip("/") + "/" + quote(blob_name, safe="/")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def blob_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Map user ``uploadHeaders`` onto Put Blob headers; raises ValueError for a reserved name."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.strip().lower()
        if low in _RESERVED:
            raise ValueError(f"upload header {name!r} is set by the agent and cannot be given")
        out[_PROPERTY_HEADERS.get(low, low)] = value
    return out


def _with_query(url: str, params: Mapping[str, str | None]) -> str:
    extra = urlencode({k: v for k, v in params.items() if v is not None}, quote_via=quote)
    parts = urlsplit(url)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


class _SharedKeyAuth(httpx.Auth):
    """Shared Key (Blob flavour, version >= 2015-02-21) request signing."""

    _SIGNED = ("content-encoding", "content-language", "content-length", "content-md5", "content-type",
               "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")

    def __init__(self, credential: SharedKey) -> None:
        self._account = credential.account
        self._key = base64.b64decode(credential.key)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["x-ms-date"] = formatdate(usegmt=True)
        sig = hmac.new(self._key, _string_to_sign(request, self._account).encode(), hashlib.sha256)
        request.headers["Authorization"] = (
            f"SharedKey {self._account}:{base64.b64encode(sig.digest()).decode()}")
        yield request


def _string_to_sign(request: httpx.Request, account: str) -> str:
    """The Shared Key string-to-sign: fixed headers, sorted x-ms-* headers, canonical resource."""
    h = request.headers
    fixed = [h.get(name, "") for name in _SharedKeyAuth._SIGNED]
    if fixed[2] == "0":
        fixed[2] = ""                                  # a zero Content-Length signs as empty
    ms = sorted((k.lower(), " ".join(v.split())) for k, v in h.items() if k.lower().startswith("x-ms-"))
    resource = f"/{account}{request.url.raw_path.split(b'?')[0].decode()}"
    params: dict[str, list[str]] = {}
    for k, v in parse_qsl(request.url.query.decode(), keep_blank_values=True):
        params.setdefault(k.lower(), []).append(v)
    resource += "".join(f"\n{k}:{','.join(sorted(v))}" for k, v in sorted(params.items()))
    return "\n".join([request.method, *fixed, *(f"{k}:{v}" for k, v in ms), resource])


def _http_error(op: str, url: str, resp: httpx.Response, body: bytes, *, listing: bool = False) -> BlobError:
    code = resp.headers.get("x-ms-error-code")
    detail = ""
    if body.lstrip().startswith(b"<"):
        try:
            root = ET.fromstring(body)
            code = code or root.findtext("Code")
            detail = (root.findtext("Message") or "").split("\n")[0]
        except ET.ParseError:
            pass
    status = resp.status_code
    kind: ErrorKind = "misc"
    if status == 404:
        kind = "container_not_found" if listing or code == "ContainerNotFound" else "not_found"
    elif status in (401, 403):
        kind = "access_denied"
    elif status == 409:
        kind = "conflict"
    elif status == 412:
        kind = "precondition"
    elif status in (408, 504) or code == "OperationTimedOut":
        kind = "timeout"
    retry_after: float | None = None
    if (value := resp.headers.get("retry-after")) is not None:
        try:
            retry_after = float(value)
        except ValueError:
            try:
                retry_after = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError):
                retry_after = None
    message = f"{op} failed: HTTP {status} {code or resp.reason_phrase}" + (f": {detail}" if detail else "")
    return BlobError(kind, message, url=url, status=status, code=code,
                     transient=status in _RETRY_STATUS, retry_after=retry_after)


def _local_error(op: str, url: str, exc: OSError) -> BlobError:
    kind: ErrorKind = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "local_io"
    return BlobError(kind, f"{op} failed: local file error: {exc.strerror or exc}", url=url)


def _transport_error(op: str, url: str, exc: Exception) -> BlobError:
    if isinstance(exc, httpx.TimeoutException):
        return BlobError("timeout", f"{op} timed out ({type(exc).__name__})", url=url, transient=True)
    transient = isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError)
    return BlobError("misc", f"{op} failed: {type(exc).__name__}: {exc}", url=url, transient=transient)


def _fd_of(src: Source) -> tuple[int, bool]:
    """A readable fd for ``src`` and whether we opened it (and must close it)."""
    if isinstance(src, Path):
        return os.open(src, os.O_RDONLY | os.O_CLOEXEC), True
    return (src if isinstance(src, int) else src.fileno()), False


def _pread_stream(fd: int, offset: int, length: int, stop: _Call) -> Iterator[bytes]:
    end = offset + length
    while offset < end:
        if stop.is_set():
            raise _Cancelled
        data = os.pread(fd, min(_CHUNK, end - offset), offset)
        if not data:
            raise OSError(errno.EIO, "file shrank while it was being uploaded")
        offset += len(data)
        yield data


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Cancelled(Exception):
    """The awaiting coroutine was cancelled (or the transport closed): the worker thread stops."""


class _Call:
    """One request's stop flag, shared by the coroutine that awaits it and the thread that runs it.

    While a download streams, the call also holds that connection's socket: cancelling shuts the
    socket down, which wakes a thread blocked in a read at once (a trickling or stalled server
    would otherwise hold it until the read timeout). Outside a stream no socket is held, so a
    connection back in the pool is never touched.
    """

    __slots__ = ("_flag", "_lock", "_sock", "finished", "writing")

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.finished = threading.Event()
        self.writing = False            # a download's temp file may exist

    def is_set(self) -> bool:
        return self._flag.is_set()

    def wait(self, seconds: float) -> bool:
        return self._flag.wait(seconds)

    def cancel(self) -> None:
        self._flag.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
        if sock is not None and self._flag.is_set():
            self.cancel()

    def detach(self) -> None:
        with self._lock:
            self._sock = None


class _Workers:
    """Up to ``size`` daemon threads that run calls from a queue and hand results to the loop.

    Written by hand instead of ``ThreadPoolExecutor``: its threads are joined at interpreter exit,
    so one thread blocked in a socket read of an abandoned (cancelled) call would hold the
    agent's exit up to the read timeout. Daemon threads do not.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._threads = 0
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            while self._threads < self._size:
                threading.Thread(target=self._work, name=f"blob-{self._threads}", daemon=True).start()
                self._threads += 1
            self._jobs.put(job)                 # under the lock: an exiting idle thread sees it

    def _work(self) -> None:
        """Run jobs until told to stop, or until idle for ``_IDLE_EXIT`` seconds (a transport
        nobody closed then holds no thread)."""
        while True:
            try:
                job = self._jobs.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if not self._jobs.empty():
                        continue
                    self._threads -= 1
                return
            if job is None:
                return
            job()

    def stop(self) -> None:
        with self._lock:
            for _ in range(self._threads):
                self._jobs.put(None)
            self._threads = 0


class _Sink:
    """Hashes and writes 1 MiB batches to ``fd``: inline, or on a helper thread fed by a queue."""

    def __init__(self, fd: int, md5: Any, *, threaded: bool) -> None:
        self._fd, self._md5 = fd, md5
        self.size = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytearray | None] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=8)        # at most 8 MiB waiting: a slow disk slows the GET
            self._thread = threading.Thread(target=self._drain, name="blob-sink", daemon=True)
            self._thread.start()

    def _write(self, buf: bytearray) -> None:
        if self._md5 is not None:
            self._md5.update(buf)
        _write_all(self._fd, buf)
        self.size += len(buf)

    def _drain(self) -> None:
        assert self._queue is not None
        while (buf := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(buf)
                except BaseException as exc:  # re-raised in the receiving thread
                    self._error = exc

    def put(self, buf: bytearray) -> None:
        if self._error is not None:
            raise self._error
        if self._queue is None:
            self._write(buf)
        else:
            self._queue.put(buf)

    def finish(self) -> int:
        self.close()
        if self._error is not None:
            raise self._error
        return self.size

    def close(self) -> None:
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


def _settle(fut: asyncio.Future[T], result: T | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)  # type: ignore[arg-type]  # result is a T whenever exc is None


@functools.cache
def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """One TLS context per ``verify`` setting for the whole process, built the way httpx builds
    its own: loading the CA bundle costs tens of milliseconds, and a context is safe to share."""
    return httpx.create_ssl_context(verify=verify)


class BlobTransport:
    """One pooled synchronous ``httpx.Client`` driven from ``concurrency`` worker threads.

    Every request runs in a worker thread (its retries and backoff waits too) and the coroutine
    API awaits it; a cancelled coroutine sets the call's stop flag, which the thread checks
    between body pieces and during backoff, so a cancelled transfer ends at the next piece (a
    thread blocked in a socket read ends at the read timeout). Why threads: measured on the
    target machine, the async client's per-chunk overhead held a 200 MiB download at 0.77x of a
    plain streamed GET and 1000 small files at 0.93x of the best baseline; the same client
    code run synchronously in threads does not pay it (bench/bench_storage.py). Use as an async
    context manager.
    """

    def __init__(self, config: TransportConfig | None = None) -> None:
        self.config = cfg = config or TransportConfig()
        workers = max(1, cfg.concurrency)
        self._client = httpx.Client(
            http1=True, http2=False, verify=_ssl_context(cfg.verify),
            timeout=httpx.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout,
                                  write=cfg.write_timeout, pool=None),   # one worker, one connection
            limits=httpx.Limits(max_connections=workers, max_keepalive_connections=workers),
            headers={"x-ms-version": API_VERSION, "User-Agent": "batch-agent"},
        )
        self._workers = _Workers(workers)
        self._calls: set[_Call] = set()
        self._closed = False

    async def __aenter__(self) -> BlobTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel every call still running, give the downloads among them ``_CLOSE_GRACE`` seconds to
        remove their temp files, then close the connections. Idempotent.

        A call still waiting for response headers has no temp file; its thread is abandoned and
        ends at the read timeout (a daemon thread: it holds nothing up)."""
        if self._closed:
            return
        self._closed = True
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        calls = [call for call in calls if call.writing]

        def settle() -> None:
            deadline = time.monotonic() + _CLOSE_GRACE
            for call in calls:
                call.finished.wait(max(0.0, deadline - time.monotonic()))

        if calls:
            await asyncio.to_thread(settle)
        self._workers.stop()
        self._client.close()

    async def _call(self, fn: Callable[[_Call], T]) -> T:
        """Run ``fn(call)`` in a worker thread; cancelling the coroutine cancels ``call``."""
        if self._closed:
            raise BlobError("misc", "the blob transport is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        call = _Call()
        self._calls.add(call)

        def job() -> None:
            result: T | None = None
            error: BaseException | None = None
            try:
                result = fn(call)             # always run: it may own resources (a dir fd)
            except BaseException as exc:      # handed to the awaiting coroutine
                error = exc
            finally:
                self._calls.discard(call)     # kept until here, so aclose sees abandoned calls
                call.finished.set()
            with contextlib.suppress(RuntimeError):        # the loop may be gone (abandoned call)
                loop.call_soon_threadsafe(_settle, fut, result, error)

        self._workers.submit(job)
        try:
            return await fut
        except asyncio.CancelledError:
            call.cancel()
            raise

    def _retrying(self, fn: Callable[[], T], stop: _Call) -> T:
        policy = self.config.retry
        attempt = 1
        while True:
            if stop.is_set():
                raise _Cancelled
            try:
                return fn()
            except BlobError as err:
                if stop.is_set():
                    raise _Cancelled from None  # the error came from cancelling, most likely
                if not err.transient or attempt >= policy.attempts:
                    raise
                delay = backoff_delay(policy, attempt, err.retry_after)
                get_logger().warning("blob request retry", url=err.url_redacted, status=err.status, kind=err.kind,
                            attempt=attempt, delay=round(delay, 3))
                attempt += 1
                if stop.wait(delay):
                    raise _Cancelled from None

    def _request(self, op: str, method: str, url: str, stop: _Call, *,
                 credential: SharedKey | None, headers: Mapping[str, str] | None = None,
                 body: Callable[[], Iterator[bytes]] | bytes | None = None, ok: Sequence[int] = (200, 201, 202),
                 listing: bool = False) -> httpx.Response:
        """One request with retries (in a worker thread); the body is read. BlobError unless ``ok``."""
        auth = _SharedKeyAuth(credential) if credential else None

        def attempt() -> httpx.Response:
            content = body() if callable(body) else body
            try:
                resp = self._client.request(method, url, headers=headers, content=content, auth=auth)
            except OSError as exc:
                raise _local_error(op, url, exc) from exc
            except httpx.HTTPError as exc:
                raise _transport_error(op, url, exc) from exc
            if resp.status_code not in ok:
                raise _http_error(op, url, resp, resp.content, listing=listing)
            return resp

        return self._retrying(attempt, stop)

    async def list_blobs(self, container_url: str, prefix: str | None = None, *, credential: SharedKey
                         | None = None, max_results: int | None = None) -> list[BlobItem]:
        """Every blob in the container whose name starts with ``prefix``, following NextMarker."""
        return await self._call(partial(self._list_sync, container_url, prefix, credential, max_results))

    def _list_sync(self, container_url: str, prefix: str | None, credential: SharedKey | None,
                   max_results: int | None, stop: _Call) -> list[BlobItem]:
        items: list[BlobItem] = []
        marker: str | None = None
        while True:
            url = _with_query(container_url, {
                "restype": "container", "comp": "list", "prefix": prefix or None, "marker": marker,
                "maxresults": str(max_results) if max_results else None})
            resp = self._request("list blobs", "GET", url, stop, credential=credential, ok=(200,),
                                 listing=True)
            try:
                root = ET.fromstring(resp.content)
            except ET.ParseError as exc:
                raise BlobError("misc", f"list blobs: unreadable XML: {exc}", url=container_url) from exc
            for blob in root.iterfind("Blobs/Blob"):
                name_el = blob.find("Name")
                name = (name_el.text or "") if name_el is not None else ""
                if name_el is not None and name_el.get("Encoded") == "true":
                    name = unquote(name)
                items.append(BlobItem(name, int(blob.findtext("Properties/Content-Length") or 0),
                                      blob.findtext("Properties/Content-MD5") or None))
            marker = root.findtext("NextMarker") or None
            if not marker:
                return items

    async def download(self, url: str, dest: Path, *, mode: int | None = None,
                       credential: SharedKey | None = None,
                       on_bytes: Callable[[int], None] | None = None) -> DownloadResult:
        """Stream ``url`` (any HTTP(S) URL) into ``dest`` atomically; verify Content-MD5 if given.

        Bytes are stored exactly as served (``Accept-Encoding: identity``, no decompression).
        Missing parent directories are created. ``on_bytes`` (progress) is called from a worker
        thread with each batch written, and with minus an attempt's count when it is retried.
        """
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # The worker thread gets its own fd of the directory, opened here while the caller's
            # path (often /proc/self/fd/<caller's fd>) is valid: a cancelled caller may close its
            # fd while the thread is still cleaning up, and the number could then be reused.
            dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise _local_error("download", url, exc) from exc
        if self._closed:
            os.close(dir_fd)
        return await self._call(partial(self._download_sync, url, dir_fd, dest.name, mode, credential, on_bytes))

    def _download_sync(self, url: str, dir_fd: int, name: str, mode: int | None, credential: SharedKey | None,
                       on_bytes: Callable[[int], None] | None, stop: _Call) -> DownloadResult:
        """Download into ``name`` in ``dir_fd`` (closed at the end) through a temp file."""
        auth = _SharedKeyAuth(credential) if credential else None

        def attempt() -> DownloadResult:
            tmp = f".{name}.part-{secrets.token_hex(6)}"
            counted = [0]

            def count(n: int) -> None:
                counted[0] += n
                if on_bytes is not None:
                    on_bytes(n)
            try:
                result = self._download_once(url, dir_fd, tmp, auth, stop, count)
                if mode is not None:
                    os.chmod(tmp, mode, dir_fd=dir_fd)
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                counted[0] = 0
                return result
            except OSError as exc:
                raise _local_error("download", url, exc) from exc
            finally:
                if counted[0] and on_bytes is not None:    # this attempt's bytes are thrown away
                    on_bytes(-counted[0])
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                stop.writing = False

        try:
            return self._retrying(attempt, stop)
        finally:
            os.close(dir_fd)

    def _download_once(self, url: str, dir_fd: int, tmp: str, auth: httpx.Auth | None,
                       stop: _Call, count: Callable[[int], None]) -> DownloadResult:
        try:
            with self._client.stream("GET", url, headers={"Accept-Encoding": "identity"}, auth=auth,
                                     follow_redirects=True) as resp:
                if resp.status_code != 200:
                    body = b""
                    for chunk in resp.iter_raw():
                        body += chunk
                        if len(body) > 65536:
                            break
                    raise _http_error("download", url, resp, body)
                expected = resp.headers.get("content-md5") or resp.headers.get("x-ms-blob-content-md5")
                md5 = hashlib.md5(usedforsecurity=False) if expected else None
                stop.writing = True             # until the attempt has removed its temp file
                stream = resp.extensions.get("network_stream")
                stop.attach(stream.get_extra_info("socket") if stream is not None else None)
                try:
                    size = self._write_body(resp, dir_fd, tmp, md5, stop, count)
                finally:
                    stop.detach()
        except httpx.HTTPError as exc:
            raise _transport_error("download", url, exc) from exc
        if md5 and expected and base64.b64encode(md5.digest()).decode() != expected.strip():
            raise BlobError("misc", f"download failed: Content-MD5 mismatch (service says {expected}, "
                            f"received {base64.b64encode(md5.digest()).decode()})", url=url)
        return DownloadResult(size, md5 is not None)

    @staticmethod
    def _write_body(resp: httpx.Response, dir_fd: int, tmp: str, md5: Any, stop: _Call,
                    count: Callable[[int], None]) -> int:
        """Write the body to a new ``tmp`` (O_EXCL: never through a planted link) in 1 MiB batches.

        A body above ``_PIPELINE_MIN`` with an MD5 to check is hashed and written by a second
        thread while this one keeps receiving: hashing inline cost about a quarter of a 200 MiB
        download's time on the target machine (MD5 runs ~400 MB/s there, and releases the GIL)."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
        sink = _Sink(fd, md5, threaded=md5 is not None and
                     int(resp.headers.get("content-length") or 0) > _PIPELINE_MIN)
        try:
            buf = bytearray()
            for chunk in resp.iter_raw():
                if stop.is_set():
                    raise _Cancelled
                buf += chunk
                if len(buf) >= _WRITE_BATCH:
                    sink.put(buf)
                    count(len(buf))
                    buf = bytearray()
            sink.put(buf)
            size = sink.finish()
            count(len(buf))
            return size
        finally:
            sink.close()
            os.close(fd)

    async def upload(self, container_url: str, blob_name: str, src: Source, *,
                     headers: Mapping[str, str] | None = None, credential: SharedKey | None = None) -> int:
        """Upload a file (path, fd or open binary file, read from offset 0) as a block blob.

        ``headers`` are Batch ``uploadHeaders`` (see ``blob_headers``). Returns the bytes sent.
        Existing blobs are overwritten unless a conditional header says otherwise.
        """
        url = blob_url(container_url, blob_name)
        try:
            props = blob_headers(headers or {})
        except ValueError as exc:
            raise BlobError("misc", f"upload failed: {exc}", url=url) from exc
        try:
            fd, owned = _fd_of(src)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise _local_error("upload", url, exc) from exc
        try:
            if size <= self.config.block_threshold:
                await self._call(lambda stop: self._request(
                    "put blob", "PUT", url, stop, credential=credential, ok=(201,),
                    headers={**props, "x-ms-blob-type": "BlockBlob", "Content-Length": str(size)},
                    body=lambda: _pread_stream(fd, 0, size, stop)))
            else:
                await self._put_blocks(url, fd, size, props, credential)
            return size
        finally:
            if owned:
                os.close(fd)

    async def _put_blocks(self, url: str, fd: int, size: int, props: Mapping[str, str],
                          credential: SharedKey | None) -> None:
        block = max(self.config.block_size, -(-size // _MAX_BLOCKS))
        ids = [base64.b64encode(f"batch-agent-{i:08d}".encode()).decode() for i in range(-(-size // block))]
        per_block = {k: v for k, v in props.items() if k.startswith("x-ms-encryption-")}

        def put(i: int, stop: _Call) -> None:
            offset = i * block
            length = min(block, size - offset)
            self._request("put block", "PUT", _with_query(url, {"comp": "block", "blockid": ids[i]}), stop,
                          credential=credential, ok=(201,), headers={**per_block, "Content-Length": str(length)},
                          body=lambda: _pread_stream(fd, offset, length, stop))

        await _bounded([partial(self._call, partial(put, i)) for i in range(len(ids))],
                       self.config.block_concurrency)
        xml = "".join(f"<Latest>{i}</Latest>" for i in ids)
        body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{xml}</BlockList>'.encode()
        await self._call(lambda stop: self._request(
            "put block list", "PUT", _with_query(url, {"comp": "blocklist"}), stop, credential=credential,
            ok=(201,), headers=props, body=body))

    async def exists(self, url: str, *, credential: SharedKey | None = None) -> bool:
        """HEAD a blob (or any URL): True on 2xx, False on 404, BlobError otherwise."""
        try:
            await self._call(lambda stop: self._request("head", "HEAD", url, stop, credential=credential,
                                                        ok=(200,)))
        except BlobError as err:
            if err.kind in ("not_found", "container_not_found"):
                return False
            raise
        return True

    async def container_writable(self, container_url: str, *, credential: SharedKey | None = None) -> bool:
        """Pre-flight: may this container take uploads (SAS ``w``)? Leaves nothing behind.

        A Put Block List of an empty list to a fresh ``.batch-agent-probe-<uuid>`` name, on condition
        ``If-Match: *`` (the blob must exist; it does not). The service checks the SAS before the
        condition: authorised, the answer is 412 ConditionNotMet (or 404 BlobNotFound) and nothing
        is written, not even an uncommitted block (a Put Block would leave one, listed under
        ``include=uncommittedblobs`` until the service collects it after a week); denied, 403, and
        False. Put Block List needs ``w``, as block uploads and overwrites do (``c`` alone lets a
        single Put Blob create a new blob but not this). A server that ignored the condition and
        made an empty blob gets it deleted. Other failures (container missing, timeouts) raise.
        """
        url = blob_url(container_url, f".batch-agent-probe-{uuid.uuid4().hex}")
        body = b'<?xml version="1.0" encoding="utf-8"?><BlockList></BlockList>'
        try:
            await self._call(lambda stop: self._request(
                "write probe", "PUT", _with_query(url, {"comp": "blocklist"}), stop, credential=credential,
                ok=(201,), headers={"If-Match": "*"}, body=body))
        except BlobError as err:
            if err.kind == "access_denied":
                return False
            if err.kind in ("precondition", "not_found"):
                return True
            raise
        try:
            await self._call(lambda stop: self._request("probe delete", "DELETE", url, stop,
                                                        credential=credential, ok=(202,)))
        except BlobError as err:
            get_logger().info("blob probe left behind", url=err.url_redacted, kind=err.kind)
        return True

    async def download_many(self, items: Iterable[DownloadItem], concurrency: int) -> list[DownloadResult]:
        """Download all items, at most ``concurrency`` at a time; the first error cancels the rest."""
        return await _bounded([partial(self.download, it.url, it.dest, mode=it.mode, credential=it.credential)
                               for it in items], concurrency)

    async def upload_many(self, items: Iterable[UploadItem], concurrency: int) -> list[int]:
        """Upload all items, at most ``concurrency`` at a time; the first error cancels the rest."""
        return await _bounded([partial(self.upload, it.container_url, it.blob_name, it.src,
                                       headers=it.headers, credential=it.credential) for it in items],
                              concurrency)


async def _bounded(jobs: Sequence[Callable[[], Awaitable[T]]], concurrency: int) -> list[T]:
    sem = asyncio.Semaphore(max(1, concurrency))
    results: dict[int, T] = {}

    async def run(i: int, job: Callable[[], Awaitable[T]]) -> None:
        async with sem:
            results[i] = await job()

    try:
        async with asyncio.TaskGroup() as tg:
            for i, job in enumerate(jobs):
                tg.create_task(run(i, job))
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [results[i] for i in range(len(jobs))]


# --- Batch failure codes (semantics doc §4.2 resource files, §7.5 output files) -------------------

_DOWNLOAD = {"not_found": "BlobNotFound", "container_not_found": "BlobNotFound",
             "access_denied": "BlobAccessDenied", "timeout": "BlobDownloadTimedOut"}
_LIST = {"not_found": "ResourceContainerNotFound", "container_not_found": "ResourceContainerNotFound",
         "access_denied": "ResourceContainerAccessDenied", "timeout": "ResourceContainerListTimedOut"}
_LOCAL = {"disk_full": "DiskFull", "local_io": "ResourceFileWriteFailed"}
_UPLOAD = {"access_denied": "FileUploadAccessDenied", "container_not_found": "FileUploadContainerNotFound",
           "not_found": "FileUploadContainerNotFound", "conflict": "FileUploadConflict",
           "timeout": "FileUploadTimedOut"}
_BLOBS, _CONTAINERS, _UP = ("one of the specified Azure Blob(s)", "one of the specified Azure container(s)",
                            "while attempting to upload an output file")
_USER_CODES = frozenset({"BlobNotFound", "BlobAccessDenied", "ResourceContainerNotFound",
                         "ResourceContainerAccessDenied", "FileUploadAccessDenied",
                         "FileUploadContainerNotFound", "FileUploadConflict"})
_MESSAGES = {
    "BlobNotFound": "One of the specified Azure Blob(s) is not found.",
    "BlobAccessDenied": f"Access for {_BLOBS} is denied.",
    "BlobDownloadTimedOut": f"The download of {_BLOBS} timed out.",
    "BlobDownloadMiscError": f"Miscellaneous error encountered while downloading {_BLOBS}.",
    "ResourceContainerNotFound": "One of the specified Azure container(s) was not found.",
    "ResourceContainerAccessDenied": f"Access for {_CONTAINERS} is denied.",
    "ResourceContainerListTimedOut": f"Listing {_CONTAINERS} timed out.",
    "ResourceContainerListMiscError": f"Miscellaneous error encountered while listing {_CONTAINERS}.",
    "DiskFull": "There is not enough disk space on the node to download the resource files.",
    "ResourceFileWriteFailed": "A resource file could not be written to the node's disk.",
    "FileUploadAccessDenied": f"Access for {_CONTAINERS} is denied {_UP}.",
    "FileUploadContainerNotFound": f"One of the specified Azure container(s) was not found {_UP}.",
    "FileUploadConflict": f"A conflict occurred {_UP}.",
    "FileUploadTimedOut": f"A timeout occurred {_UP}.",
    "FileUploadMiscError": f"Miscellaneous error encountered {_UP}.",
}


def _failure(code: str, err: BlobError, file_path: str | None) -> FailureInfo:
    details = {"Message": str(err)}      # BlobError messages are built from redacted text only
    if file_path is not None:
        details["FilePath"] = file_path
    return (FailureInfo.user if code in _USER_CODES else FailureInfo.server)(code, _MESSAGES[code], **details)


def download_failure(err: BlobError, *, listing: bool, file_path: str | None = None) -> FailureInfo:
    """The Batch failure for a resource-file error; ``listing``: it came from listing a container."""
    if err.kind in _LOCAL:
        return _failure(_LOCAL[err.kind], err, file_path)
    if listing:
        return _failure(_LIST.get(err.kind, "ResourceContainerListMiscError"), err, file_path)
    return _failure(_DOWNLOAD.get(err.kind, "BlobDownloadMiscError"), err, file_path)


def upload_failure(err: BlobError, *, file_path: str | None = None) -> FailureInfo:
    """The Batch failure for an output-file upload error (412 and local errors are misc)."""
    return _failure(_UPLOAD.get(err.kind, "FileUploadMiscError"), err, file_path)
