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
Downloads are written from the event-loop thread in 1 MiB batches (page-cache writes; a stalled
disk would stall the loop: move writes to a thread if that is ever measured to matter). Upload
reads go through ``asyncio.to_thread`` in 4 MiB pieces.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import os
import random
import secrets
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import httpx
import structlog

from agent.redact import redact_text, redact_url
from agent.status import FailureInfo

__all__ = [
    "BlobError", "BlobItem", "BlobTransport", "DownloadItem", "DownloadResult", "ErrorKind",
    "RetryPolicy", "SharedKey", "TransportConfig", "UploadItem", "backoff_delay", "blob_headers",
    "blob_url", "download_failure", "parse_sas_expiry", "upload_failure",
]

log = structlog.get_logger(__name__)
T = TypeVar("T")
ErrorKind = Literal["not_found", "access_denied", "container_not_found", "conflict", "precondition",
                    "timeout", "disk_full", "local_io", "misc"]
Source = Path | int | BinaryIO

API_VERSION = "2023-11-03"
MiB = 1024 * 1024
_CHUNK = 4 * MiB            # upload body pieces; Put Blob needs Content-Length, so no chunked bodies
_WRITE_BATCH = 1 * MiB
_MAX_BLOCKS = 50_000
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


async def _pread_stream(fd: int, offset: int, length: int) -> AsyncIterator[bytes]:
    end = offset + length
    while offset < end:
        data = await asyncio.to_thread(os.pread, fd, min(_CHUNK, end - offset), offset)
        if not data:
            raise OSError(errno.EIO, "file shrank while it was being uploaded")
        offset += len(data)
        yield data


class BlobTransport:
    """One pooled ``httpx.AsyncClient`` for blob and HTTP transfers. Use as an async context manager."""

    def __init__(self, config: TransportConfig | None = None) -> None:
        self.config = cfg = config or TransportConfig()
        self._client = httpx.AsyncClient(
            http1=True, http2=False, verify=cfg.verify,
            timeout=httpx.Timeout(connect=cfg.connect_timeout, read=cfg.read_timeout,
                                  write=cfg.write_timeout, pool=None),   # callers bound concurrency
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
            headers={"x-ms-version": API_VERSION, "User-Agent": "batch-agent"},
        )

    async def __aenter__(self) -> BlobTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _retrying(self, fn: Callable[[], Awaitable[T]]) -> T:
        policy = self.config.retry
        attempt = 1
        while True:
            try:
                return await fn()
            except BlobError as err:
                if not err.transient or attempt >= policy.attempts:
                    raise
                delay = backoff_delay(policy, attempt, err.retry_after)
                log.warning("blob request retry", url=err.url_redacted, status=err.status, kind=err.kind,
                            attempt=attempt, delay=round(delay, 3))
                attempt += 1
                await asyncio.sleep(delay)

    async def _request(self, op: str, method: str, url: str, *, credential: SharedKey | None,
                       headers: Mapping[str, str] | None = None, body: Callable[[], AsyncIterator[bytes]]
                       | bytes | None = None, ok: Sequence[int] = (200, 201, 202), listing: bool = False,
                       ) -> httpx.Response:
        """One request with retries; the response body is read. Raises BlobError unless ``ok``."""
        auth = _SharedKeyAuth(credential) if credential else None

        async def attempt() -> httpx.Response:
            content = body() if callable(body) else body
            try:
                resp = await self._client.request(method, url, headers=headers, content=content, auth=auth)
            except OSError as exc:
                raise _local_error(op, url, exc) from exc
            except httpx.HTTPError as exc:
                raise _transport_error(op, url, exc) from exc
            if resp.status_code not in ok:
                raise _http_error(op, url, resp, resp.content, listing=listing)
            return resp

        return await self._retrying(attempt)

    async def list_blobs(self, container_url: str, prefix: str | None = None, *, credential: SharedKey
                         | None = None, max_results: int | None = None) -> list[BlobItem]:
        """Every blob in the container whose name starts with ``prefix``, following NextMarker."""
        items: list[BlobItem] = []
        marker: str | None = None
        while True:
            url = _with_query(container_url, {
                "restype": "container", "comp": "list", "prefix": prefix or None, "marker": marker,
                "maxresults": str(max_results) if max_results else None})
            resp = await self._request("list blobs", "GET", url, credential=credential, ok=(200,),
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
                       credential: SharedKey | None = None) -> DownloadResult:
        """Stream ``url`` (any HTTP(S) URL) into ``dest`` atomically; verify Content-MD5 if given.

        Bytes are stored exactly as served (``Accept-Encoding: identity``, no decompression).
        Missing parent directories are created.
        """
        auth = _SharedKeyAuth(credential) if credential else None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _local_error("download", url, exc) from exc

        async def attempt() -> DownloadResult:
            tmp = dest.parent / f".{dest.name}.part-{secrets.token_hex(6)}"
            try:
                result = await self._download_once(url, tmp, auth)
                if mode is not None:
                    os.chmod(tmp, mode)
                os.replace(tmp, dest)
                return result
            except OSError as exc:
                raise _local_error("download", url, exc) from exc
            finally:
                tmp.unlink(missing_ok=True)

        return await self._retrying(attempt)

    async def _download_once(self, url: str, tmp: Path, auth: httpx.Auth | None) -> DownloadResult:
        req = self._client.build_request("GET", url, headers={"Accept-Encoding": "identity"})
        try:
            resp = await self._client.send(req, stream=True, auth=auth, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise _transport_error("download", url, exc) from exc
        try:
            if resp.status_code != 200:
                body = b""
                async for chunk in resp.aiter_raw():
                    body += chunk
                    if len(body) > 65536:
                        break
                raise _http_error("download", url, resp, body)
            expected = resp.headers.get("content-md5") or resp.headers.get("x-ms-blob-content-md5")
            md5 = hashlib.md5(usedforsecurity=False) if expected else None
            size = 0
            with open(tmp, "xb") as f:                # O_EXCL: never through a planted link
                buf = bytearray()
                async for chunk in resp.aiter_raw():
                    buf += chunk
                    if len(buf) >= _WRITE_BATCH:
                        f.write(buf)
                        if md5:
                            md5.update(buf)
                        size += len(buf)
                        buf.clear()
                f.write(buf)
                if md5:
                    md5.update(buf)
                size += len(buf)
        except httpx.HTTPError as exc:
            raise _transport_error("download", url, exc) from exc
        finally:
            await resp.aclose()
        if md5 and expected and base64.b64encode(md5.digest()).decode() != expected.strip():
            raise BlobError("misc", f"download failed: Content-MD5 mismatch (service says {expected}, "
                            f"received {base64.b64encode(md5.digest()).decode()})", url=url)
        return DownloadResult(size, md5 is not None)

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
                await self._request("put blob", "PUT", url, credential=credential, ok=(201,),
                                    headers={**props, "x-ms-blob-type": "BlockBlob",
                                             "Content-Length": str(size)},
                                    body=lambda: _pread_stream(fd, 0, size))
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

        async def put(i: int) -> None:
            offset = i * block
            length = min(block, size - offset)
            await self._request("put block", "PUT", _with_query(url, {"comp": "block", "blockid": ids[i]}),
                                credential=credential, ok=(201,),
                                headers={**per_block, "Content-Length": str(length)},
                                body=lambda: _pread_stream(fd, offset, length))

        await _bounded([partial(put, i) for i in range(len(ids))], self.config.block_concurrency)
        xml = "".join(f"<Latest>{i}</Latest>" for i in ids)
        body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{xml}</BlockList>'.encode()
        await self._request("put block list", "PUT", _with_query(url, {"comp": "blocklist"}),
                            credential=credential, ok=(201,), headers=props, body=body)

    async def exists(self, url: str, *, credential: SharedKey | None = None) -> bool:
        """HEAD a blob (or any URL): True on 2xx, False on 404, BlobError otherwise."""
        try:
            await self._request("head", "HEAD", url, credential=credential, ok=(200,))
        except BlobError as err:
            if err.kind in ("not_found", "container_not_found"):
                return False
            raise
        return True

    async def container_writable(self, container_url: str, *, credential: SharedKey | None = None) -> bool:
        """Pre-flight: Put a zero-byte probe blob, then delete it. False if the write is denied.

        Needs write (to create) and delete permission. Without delete the probe blob
        ``.batch-agent-probe-<uuid>`` stays behind and the container still counts as writable.
        Other failures (container missing, timeouts) raise BlobError.
        """
        url = blob_url(container_url, f".batch-agent-probe-{uuid.uuid4().hex}")
        try:
            await self._request("probe put", "PUT", url, credential=credential, ok=(201,),
                                headers={"x-ms-blob-type": "BlockBlob"}, body=b"")
        except BlobError as err:
            if err.kind == "access_denied":
                return False
            raise
        try:
            await self._request("probe delete", "DELETE", url, credential=credential, ok=(202,))
        except BlobError as err:
            log.info("blob probe left behind", url=err.url_redacted, kind=err.kind)
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
