"""agent.blob against real Azurite (SAS, Shared Key, public access) and a real fault-injecting
HTTP server on 127.0.0.1:0. No mocks; backoff waits are off (``base_delay=0``)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import random
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import structlog
from azure.storage.blob import BlobServiceClient, ContentSettings
from netfaults import tiny_tmpfs

from agent.blob import (
    BlobError,
    BlobTransport,
    DownloadItem,
    RetryPolicy,
    SharedKey,
    TransportConfig,
    UploadItem,
    backoff_delay,
    blob_headers,
    blob_url,
    download_failure,
    parse_sas_expiry,
    upload_failure,
)
from agent.status import ErrorCategory

pytestmark = pytest.mark.timeout(60)
FAST = TransportConfig(retry=RetryPolicy(attempts=4, base_delay=0))


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*") if ".part-" in p.name]


@pytest.fixture
async def transport() -> AsyncIterator[BlobTransport]:
    async with BlobTransport(FAST) as t:
        yield t


@pytest.fixture
def sdk(azurite: Any) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string)


# --- a fault-injecting HTTP/1.1 server ------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    declared_length: int | None = None       # send this Content-Length, then cut the connection


RESET = Reply(status=-1)     # RST the connection after reading the request
HANG = Reply(status=-2)      # read the request, never answer


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class FaultServer:
    """Answers requests with a script of replies, then ``default``; records every request."""

    def __init__(self, replies: tuple[Reply, ...], default: Reply) -> None:
        self.replies = list(replies)
        self.default = default
        self.seen: list[Seen] = []
        self.url = ""
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in head[1:] if x)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append(Seen(method, target, headers, body))
                reply = self.replies.pop(0) if self.replies else self.default
                if reply is HANG:
                    await asyncio.Event().wait()
                sock = writer.get_extra_info("socket")
                if reply is RESET or reply.declared_length is not None:
                    if reply.declared_length is not None:
                        writer.write(self._render(reply, method) + reply.body)
                        await writer.drain()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                writer.write(self._render(reply, method) + (b"" if method == "HEAD" else reply.body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    @staticmethod
    def _render(reply: Reply, method: str) -> bytes:
        length = reply.declared_length if reply.declared_length is not None else len(reply.body)
        lines = [f"HTTP/1.1 {reply.status} X", f"Content-Length: {length}",
                 *(f"{k}: {v}" for k, v in reply.headers.items()), "", ""]
        return "\r\n".join(lines).encode()


MakeServer = Callable[..., Awaitable[FaultServer]]


@pytest.fixture
async def fault_server() -> AsyncIterator[MakeServer]:
    servers: list[FaultServer] = []

    async def make(*replies: Reply, default: Reply = Reply(500)) -> FaultServer:
        server = FaultServer(replies, default)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


# --- pure helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("https://a.blob.core.windows.net/c?sv=2022&se=2026-01-02T03:04:05Z&sig=x",
     datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("https://a/c?se=2026-01-02T03%3A04%3A05Z&sig=x", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("https://a/c?se=2026-01-02", datetime(2026, 1, 2, tzinfo=UTC)),
    ("https://a/c?se=2026-01-02T05:04:05%2B02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("https://a/c?sv=2022&sig=x", None),
    ("https://a/c", None),
    ("https://a/c?se=tomorrow", None),
])
def test_parse_sas_expiry(url: str, expected: datetime | None) -> None:
    assert parse_sas_expiry(url) == expected


@pytest.mark.parametrize(("container", "name", "expected"), [
    ("https://a/c?sv=1&sig=a%2Bb", "x.txt", "https://a/c/x.txt?sv=1&sig=a%2Bb"),
    ("https://a/c/", "d e/ü#?%.txt", "https://a/c/d%20e/%C3%BC%23%3F%25.txt"),
    ("http://127.0.0.1:10000/acct/c", "a//b", "http://127.0.0.1:10000/acct/c/a//b"),
])
def test_blob_url_encodes_each_segment(container: str, name: str, expected: str) -> None:
    assert blob_url(container, name) == expected


def test_blob_headers_map_standard_names_and_pass_x_ms() -> None:
    assert blob_headers({"Content-Type": "text/csv", "CACHE-CONTROL": "no-cache", "content-encoding": "gzip",
                         "Content-Language": "de", "Content-Disposition": "attachment", "Content-MD5": "AA==",
                         "x-ms-meta-Owner": "me", "X-MS-Blob-Content-Type": "a/b", "If-None-Match": "*"}) == {
        "x-ms-blob-content-type": "a/b", "x-ms-blob-cache-control": "no-cache",
        "x-ms-blob-content-encoding": "gzip", "x-ms-blob-content-language": "de",
        "x-ms-blob-content-disposition": "attachment", "x-ms-blob-content-md5": "AA==",
        "x-ms-meta-owner": "me", "if-none-match": "*"}


@pytest.mark.parametrize("name", ["Content-Length", "x-ms-blob-type", "Authorization", "X-MS-Version"])
def test_blob_headers_refuse_reserved(name: str) -> None:
    with pytest.raises(ValueError, match="set by the agent"):
        blob_headers({name: "1"})


@pytest.mark.parametrize(("policy", "attempt", "retry_after", "low", "high"), [
    (RetryPolicy(base_delay=0), 3, 100.0, 0.0, 0.0),            # the testing switch ignores Retry-After too
    (RetryPolicy(base_delay=1, max_delay=30), 1, None, 0.0, 1.0),
    (RetryPolicy(base_delay=1, max_delay=30), 4, None, 0.0, 8.0),
    (RetryPolicy(base_delay=1, max_delay=5), 10, None, 0.0, 5.0),
    (RetryPolicy(base_delay=1, max_delay=30), 1, 7.0, 7.0, 7.0),   # Retry-After is a floor
    (RetryPolicy(base_delay=1, max_delay=30), 1, 900.0, 30.0, 30.0),  # ... capped by max_delay
])
def test_backoff_delay(policy: RetryPolicy, attempt: int, retry_after: float | None,
                       low: float, high: float) -> None:
    rng = random.Random(7)
    for _ in range(50):
        assert low <= backoff_delay(policy, attempt, retry_after, rng) <= high


# --- Azurite: listing -----------------------------------------------------------------------------

@pytest.mark.azurite
async def test_list_prefix_and_pagination(azurite: Any, transport: BlobTransport) -> None:
    name, sas = azurite.container()
    blobs = {f"in/{i:02d}.txt": f"data {i}".encode() for i in range(7)} | {"out/x.txt": b"x", "inx": b"y"}
    for blob, data in blobs.items():
        azurite.upload(name, blob, data)
    paged = await transport.list_blobs(sas, "in/", max_results=2)        # 4 pages
    assert [b.name for b in paged] == sorted(b for b in blobs if b.startswith("in/"))
    assert all(b.size == len(blobs[b.name]) and b.content_md5 == md5_b64(blobs[b.name]) for b in paged)
    assert [b.name for b in await transport.list_blobs(sas, "in")] == [*(b.name for b in paged), "inx"]
    assert len(await transport.list_blobs(sas, None, max_results=3)) == len(blobs)
    assert await transport.list_blobs(sas, "nothing/") == []


async def test_list_follows_next_marker_and_keeps_sas(fault_server: MakeServer,
                                                      transport: BlobTransport) -> None:
    def page(names: list[str], marker: str) -> Reply:
        xml = "".join(f"<Blob><Name>{n}</Name><Properties><Content-Length>3</Content-Length>"
                      f"</Properties></Blob>" for n in names)
        return Reply(200, f"<?xml version='1.0'?><EnumerationResults><Blobs>{xml}</Blobs>"
                          f"<NextMarker>{marker}</NextMarker></EnumerationResults>".encode())
    server = await fault_server(page(["a/1", "a/2"], "m+2"), page(["a%203"], ""))
    items = await transport.list_blobs(f"{server.url}/c?sv=1&sig=a%2Bb%3D", "a/")
    assert [(i.name, i.size, i.content_md5) for i in items] == [("a/1", 3, None), ("a/2", 3, None),
                                                                 ("a%203", 3, None)]
    queries = [parse_qs(urlsplit(s.target).query) for s in server.seen]
    assert [q.get("marker") for q in queries] == [None, ["m+2"]]
    assert all(q["sig"] == ["a+b="] and q["prefix"] == ["a/"] and q["comp"] == ["list"] for q in queries)


# --- Azurite: download ----------------------------------------------------------------------------

@pytest.mark.azurite
async def test_download_verifies_md5_sets_mode_and_leaves_no_temp(azurite: Any, transport: BlobTransport,
                                                                  tmp_path: Path) -> None:
    name, sas = azurite.container()
    data = os.urandom(300_000)
    azurite.upload(name, "dir/data.bin", data)
    dest = tmp_path / "wd" / "sub" / "data.bin"
    result = await transport.download(blob_url(sas, "dir/data.bin"), dest, mode=0o640)
    assert result.size == len(data) and result.md5_checked
    assert dest.read_bytes() == data
    assert dest.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path) == []


@pytest.mark.azurite
async def test_download_through_a_directory_fd(azurite: Any, transport: BlobTransport,
                                               tmp_path: Path) -> None:
    name, sas = azurite.container()
    azurite.upload(name, "x.txt", b"via dirfd")
    (tmp_path / "wd").mkdir()
    fd = os.open(tmp_path / "wd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        await transport.download(blob_url(sas, "x.txt"), Path(f"/proc/self/fd/{fd}/x.txt"), mode=0o750)
    finally:
        os.close(fd)
    assert (tmp_path / "wd" / "x.txt").read_bytes() == b"via dirfd"
    assert (tmp_path / "wd" / "x.txt").stat().st_mode & 0o777 == 0o750
    assert leftovers(tmp_path) == []


@pytest.mark.azurite
async def test_download_rejects_wrong_stored_md5(azurite: Any, sdk: BlobServiceClient,
                                                 transport: BlobTransport, tmp_path: Path) -> None:
    name, sas = azurite.container()
    azurite.upload(name, "f.bin", b"real content")
    sdk.get_blob_client(name, "f.bin").set_http_headers(
        ContentSettings(content_md5=bytearray(hashlib.md5(b"other").digest())))
    with pytest.raises(BlobError, match="Content-MD5 mismatch") as info:
        await transport.download(blob_url(sas, "f.bin"), tmp_path / "f.bin")
    assert info.value.kind == "misc"
    assert download_failure(info.value, listing=False).code == "BlobDownloadMiscError"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.azurite
async def test_download_missing_blob(azurite: Any, transport: BlobTransport, tmp_path: Path) -> None:
    _, sas = azurite.container()
    with pytest.raises(BlobError) as info:
        await transport.download(blob_url(sas, "missing.txt"), tmp_path / "m.txt")
    err = info.value
    assert (err.kind, err.status, err.code) == ("not_found", 404, "BlobNotFound")
    failure = download_failure(err, listing=False, file_path="m.txt")
    assert (failure.category, failure.code) == (ErrorCategory.USER, "BlobNotFound")
    assert failure.message == "One of the specified Azure Blob(s) is not found."
    assert [d.name for d in failure.details] == ["Message", "FilePath"]
    assert list(tmp_path.iterdir()) == []
    assert await transport.exists(blob_url(sas, "missing.txt")) is False


@pytest.mark.azurite
async def test_missing_container(azurite: Any, sdk: BlobServiceClient, transport: BlobTransport,
                                 tmp_path: Path) -> None:
    name, sas = azurite.container()
    sdk.delete_container(name)
    with pytest.raises(BlobError) as listing:
        await transport.list_blobs(sas, None)
    assert (listing.value.kind, listing.value.code) == ("container_not_found", "ContainerNotFound")
    assert download_failure(listing.value, listing=True).code == "ResourceContainerNotFound"
    with pytest.raises(BlobError) as download:
        await transport.download(blob_url(sas, "a.txt"), tmp_path / "a.txt")
    assert download.value.kind == "container_not_found"
    assert download_failure(download.value, listing=False).code == "BlobNotFound"
    src = tmp_path / "up.txt"
    src.write_bytes(b"x")
    with pytest.raises(BlobError) as upload:
        await transport.upload(sas, "up.txt", src)
    assert upload.value.kind == "container_not_found"
    failure = upload_failure(upload.value)
    assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadContainerNotFound")
    with pytest.raises(BlobError, match="ContainerNotFound"):
        await transport.container_writable(sas)


@pytest.mark.azurite
async def test_read_only_sas_cannot_write(azurite: Any, transport: BlobTransport, tmp_path: Path) -> None:
    _, sas = azurite.container(permission="rl")
    src = tmp_path / "out.txt"
    src.write_bytes(b"result")
    with pytest.raises(BlobError) as info:
        await transport.upload(sas, "out.txt", src)
    assert (info.value.kind, info.value.status) == ("access_denied", 403)
    failure = upload_failure(info.value)
    assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadAccessDenied")
    assert await transport.container_writable(sas) is False
    assert await transport.list_blobs(sas) == []


@pytest.mark.azurite
async def test_listing_without_list_permission(azurite: Any, transport: BlobTransport) -> None:
    _, sas = azurite.container(permission="r")
    with pytest.raises(BlobError) as info:
        await transport.list_blobs(sas)
    assert info.value.kind == "access_denied"
    failure = download_failure(info.value, listing=True)
    assert (failure.category, failure.code) == (ErrorCategory.USER, "ResourceContainerAccessDenied")


@pytest.mark.azurite
async def test_local_write_failure(azurite: Any, transport: BlobTransport, tmp_path: Path) -> None:
    name, sas = azurite.container()
    azurite.upload(name, "a.txt", b"a")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BlobError) as info:
        await transport.download(blob_url(sas, "a.txt"), tmp_path / "file" / "a.txt")
    assert info.value.kind == "local_io"
    assert download_failure(info.value, listing=False).code == "ResourceFileWriteFailed"


@pytest.mark.root
@pytest.mark.azurite
async def test_disk_full(azurite: Any, transport: BlobTransport, tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "small", "256k") as small:
        name, sas = azurite.container()
        azurite.upload(name, "big.bin", os.urandom(1024 * 1024))
        with pytest.raises(BlobError) as info:
            await transport.download(blob_url(sas, "big.bin"), small / "big.bin")
        assert info.value.kind == "disk_full"
        failure = download_failure(info.value, listing=False)
        assert (failure.category, failure.code) == (ErrorCategory.SERVER, "DiskFull")
        assert list(small.iterdir()) == []


# --- Azurite: upload ------------------------------------------------------------------------------

@pytest.mark.azurite
async def test_upload_with_headers_sets_properties(azurite: Any, transport: BlobTransport,
                                                   tmp_path: Path) -> None:
    name, sas = azurite.container()
    src = tmp_path / "report.csv"
    src.write_bytes(b"a,b\n1,2\n")
    sent = await transport.upload(sas, "results/run 1/report ü.csv", src, headers={
        "Content-Type": "text/csv", "cache-control": "no-cache", "Content-Disposition": "attachment",
        "Content-Language": "en", "x-ms-meta-Owner": "batch"})
    assert sent == src.stat().st_size
    assert azurite.list(name, "results/") == ["results/run 1/report ü.csv"]
    assert azurite.download(name, "results/run 1/report ü.csv") == src.read_bytes()
    props = azurite.properties(name, "results/run 1/report ü.csv")
    settings = props.content_settings
    assert (settings.content_type, settings.cache_control, settings.content_disposition,
            settings.content_language) == ("text/csv", "no-cache", "attachment", "en")
    assert props.metadata == {"owner": "batch"}


@pytest.mark.azurite
async def test_upload_from_fd_and_open_file_overwrites(azurite: Any, transport: BlobTransport,
                                                       tmp_path: Path) -> None:
    name, sas = azurite.container()
    src = tmp_path / "stdout.txt"
    src.write_bytes(b"first")
    fd = os.open(src, os.O_RDONLY)
    try:
        await transport.upload(sas, "stdout.txt", fd)
    finally:
        os.close(fd)
    src.write_bytes(b"second version")
    with src.open("rb") as f:
        await transport.upload(sas, "stdout.txt", f)
    assert azurite.download(name, "stdout.txt") == b"second version"


@pytest.mark.azurite
async def test_large_upload_goes_in_blocks(azurite: Any, sdk: BlobServiceClient, tmp_path: Path) -> None:
    name, sas = azurite.container()
    data = os.urandom(1_300_000)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    config = TransportConfig(block_threshold=1024 * 1024, block_size=256 * 1024, block_concurrency=3,
                             retry=FAST.retry)
    async with BlobTransport(config) as t:
        assert await t.upload(sas, "big/blob.bin", src, headers={"Content-Type": "application/x-big",
                                                                 "x-ms-meta-k": "v"}) == len(data)
    committed, _ = sdk.get_blob_client(name, "big/blob.bin").get_block_list("committed")
    assert [b.size for b in committed] == [262_144] * 4 + [len(data) - 4 * 262_144]
    assert azurite.download(name, "big/blob.bin") == data
    props = azurite.properties(name, "big/blob.bin")
    assert (props.content_settings.content_type, props.metadata) == ("application/x-big", {"k": "v"})


@pytest.mark.azurite
async def test_container_writable_probe(azurite: Any, transport: BlobTransport) -> None:
    name, sas = azurite.container(permission="racwdl")
    assert await transport.container_writable(sas) is True
    assert azurite.list(name) == []                               # the probe was deleted
    write_only, sas_w = azurite.container(permission="cw")
    assert await transport.container_writable(sas_w) is True       # delete denied: write still OK
    assert azurite.list(write_only) == []                          # and nothing was written


@pytest.mark.azurite
async def test_many_round_trip(azurite: Any, transport: BlobTransport, tmp_path: Path) -> None:
    _, sas = azurite.container()
    files = []
    for i in range(12):
        path = tmp_path / "up" / f"f{i}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(f"file {i}".encode() * (i + 1))
        files.append(path)
    sizes = await transport.upload_many([UploadItem(sas, f"many/{p.name}", p) for p in files], concurrency=4)
    assert sizes == [p.stat().st_size for p in files]
    items = await transport.list_blobs(sas, "many/")
    results = await transport.download_many(
        [DownloadItem(blob_url(sas, i.name), tmp_path / "down" / i.name) for i in items], concurrency=4)
    assert all(r.md5_checked for r in results)
    assert all((tmp_path / "down" / "many" / p.name).read_bytes() == p.read_bytes() for p in files)


# --- Azurite: Shared Key and public access --------------------------------------------------------

@pytest.mark.azurite
async def test_shared_key_list_download_upload(azurite: Any, transport: BlobTransport,
                                               tmp_path: Path) -> None:
    name, _ = azurite.container()
    container = f"{azurite.blob_url}/{name}"
    key = SharedKey(azurite.account, azurite.key)
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(50_000))
    await transport.upload(container, "d/ä b+c.bin", src, credential=key, headers={"x-ms-meta-a": "1"})
    listed = await transport.list_blobs(container, "d/", credential=key, max_results=1)
    assert [(b.name, b.size) for b in listed] == [("d/ä b+c.bin", 50_000)]
    url = blob_url(container, "d/ä b+c.bin")
    result = await transport.download(url, tmp_path / "out.bin", credential=key)
    assert result.md5_checked and (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    assert await transport.exists(url, credential=key)
    assert await transport.container_writable(container, credential=key)
    assert azurite.properties(name, "d/ä b+c.bin").metadata == {"a": "1"}

    async with BlobTransport(TransportConfig(block_threshold=40_000, block_size=16_384,
                                             retry=FAST.retry)) as blocks:
        await blocks.upload(container, "d/blocks.bin", src, credential=key)
    assert azurite.download(name, "d/blocks.bin") == src.read_bytes()

    wrong = SharedKey(azurite.account, base64.b64encode(b"not the key").decode())
    with pytest.raises(BlobError) as info:
        await transport.list_blobs(container, credential=wrong)
    assert (info.value.kind, info.value.status) == ("access_denied", 403)
    assert azurite.key not in str(info.value) and "not the key" not in repr(wrong)


@pytest.mark.azurite
async def test_public_container_needs_no_query(azurite: Any, sdk: BlobServiceClient,
                                               transport: BlobTransport, tmp_path: Path) -> None:
    name, _ = azurite.container()
    sdk.get_container_client(name).set_container_access_policy(signed_identifiers={},
                                                               public_access="container")
    azurite.upload(name, "pub/a.txt", b"public")
    container = f"{azurite.blob_url}/{name}"
    assert [b.name for b in await transport.list_blobs(container, "pub/")] == ["pub/a.txt"]
    await transport.download(blob_url(container, "pub/a.txt"), tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_bytes() == b"public"


# --- redaction ------------------------------------------------------------------------------------

@pytest.mark.azurite
async def test_sas_signature_never_in_errors_or_logs(azurite: Any, transport: BlobTransport,
                                                     fault_server: MakeServer, tmp_path: Path) -> None:
    _, sas = azurite.container(permission="rl")
    raw_sig = re.search(r"sig=([^&]+)", sas)[1]          # type: ignore[index]  # the SAS has a sig
    secrets = {raw_sig, unquote(raw_sig), "PLANTED"}
    forged = re.sub(r"sig=[^&]+", "sig=PLANTEDsecret0123%2B456789abcdef%3D", sas)
    src = tmp_path / "f.txt"
    src.write_bytes(b"x")
    server = await fault_server(default=Reply(503))
    errors: list[BlobError] = []
    with structlog.testing.capture_logs() as logs:
        for call in (lambda: transport.download(blob_url(sas, "missing"), tmp_path / "m"),
                     lambda: transport.upload(sas, "f.txt", src),
                     lambda: transport.list_blobs(forged),
                     lambda: transport.download(f"{server.url}/f?sv=1&sig=PLANTED1", tmp_path / "s"),
                     lambda: transport.download("http://127.0.0.1:1/f?sig=PLANTED2", tmp_path / "r")):
            with pytest.raises(BlobError) as info:
                await call()
            errors.append(info.value)
    assert [e.kind for e in errors] == ["not_found", "access_denied", "access_denied", "misc", "misc"]
    assert len(logs) >= 3 * 2                                    # retries of the 503 and the refused port
    rendered = [str(e) for e in errors] + [e.url_redacted for e in errors] + [json.dumps(logs, default=str)]
    rendered += [json.dumps(f(e).to_json()) for e in errors
                 for f in (upload_failure, lambda x: download_failure(x, listing=True))]
    for text in rendered:
        assert not any(secret in text for secret in secrets), text
    assert all("sig=REDACTED" in e.url_redacted for e in errors)


# --- retries and faults against a local HTTP server -----------------------------------------------

async def test_503_twice_then_served(fault_server: MakeServer, transport: BlobTransport,
                                     tmp_path: Path) -> None:
    data = os.urandom(100_000)
    busy = Reply(503, headers={"Retry-After": "120"})
    server = await fault_server(busy, busy, Reply(200, data, {"Content-MD5": md5_b64(data)}))
    result = await transport.download(f"{server.url}/files/a.bin?token=t", tmp_path / "a.bin", mode=0o600)
    assert (result.size, result.md5_checked) == (len(data), True)
    assert (tmp_path / "a.bin").read_bytes() == data
    assert [s.method for s in server.seen] == ["GET"] * 3
    assert server.seen[0].headers["accept-encoding"] == "identity"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("status", "kind"), [(400, "misc"), (401, "access_denied"), (403, "access_denied"),
                                              (404, "not_found"), (409, "conflict"), (412, "precondition")])
async def test_client_errors_are_not_retried(fault_server: MakeServer, transport: BlobTransport,
                                             tmp_path: Path, status: int, kind: str) -> None:
    server = await fault_server(default=Reply(status))
    with pytest.raises(BlobError) as info:
        await transport.download(f"{server.url}/x", tmp_path / "x")
    assert (info.value.kind, info.value.status, len(server.seen)) == (kind, status, 1)


async def test_transient_errors_exhaust_attempts(fault_server: MakeServer, transport: BlobTransport,
                                                 tmp_path: Path) -> None:
    server = await fault_server(Reply(500), Reply(429), Reply(502), default=Reply(504))
    with pytest.raises(BlobError) as info:
        await transport.download(f"{server.url}/x", tmp_path / "x")
    assert (info.value.kind, info.value.status, len(server.seen)) == ("timeout", 504, FAST.retry.attempts)
    assert download_failure(info.value, listing=False).code == "BlobDownloadTimedOut"


async def test_connection_reset_and_truncated_body_are_retried(
        fault_server: MakeServer, transport: BlobTransport, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    server = await fault_server(RESET, Reply(200, data[:50_000], declared_length=len(data)), Reply(200, data))
    result = await transport.download(f"{server.url}/f", tmp_path / "f")
    assert (result.size, len(server.seen)) == (len(data), 3)
    assert (tmp_path / "f").read_bytes() == data
    assert leftovers(tmp_path) == []


async def test_read_timeout(fault_server: MakeServer, tmp_path: Path) -> None:
    server = await fault_server(default=HANG)
    config = TransportConfig(read_timeout=0.2, retry=RetryPolicy(attempts=2, base_delay=0))
    async with BlobTransport(config) as t:
        with pytest.raises(BlobError) as info:
            await t.download(f"{server.url}/slow", tmp_path / "slow")
    assert (info.value.kind, len(server.seen)) == ("timeout", 2)
    failure = download_failure(info.value, listing=False)
    assert (failure.category, failure.code) == (ErrorCategory.SERVER, "BlobDownloadTimedOut")
    assert upload_failure(info.value).code == "FileUploadTimedOut"


async def test_connection_refused_is_misc(transport: BlobTransport, tmp_path: Path) -> None:
    with pytest.raises(BlobError) as info:
        await transport.download("http://127.0.0.1:1/nothing", tmp_path / "n")
    assert (info.value.kind, info.value.status, info.value.transient) == ("misc", None, True)
    assert download_failure(info.value, listing=False).code == "BlobDownloadMiscError"
    assert upload_failure(info.value).code == "FileUploadMiscError"


async def test_upload_retry_resends_whole_body_with_content_length(fault_server: MakeServer,
                                                                   transport: BlobTransport,
                                                                   tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)           # more than one 4 MiB body piece
    src = tmp_path / "o.bin"
    src.write_bytes(data)
    server = await fault_server(Reply(500), Reply(201))
    await transport.upload(f"{server.url}/acct/c?sv=1&sig=s", "out dir/o.bin", src,
                           headers={"content-type": "x/y"})
    assert len(server.seen) == 2
    for seen in server.seen:
        assert (seen.method, seen.body) == ("PUT", data)
        assert seen.target == "/acct/c/out%20dir/o.bin?sv=1&sig=s"
        assert seen.headers["content-length"] == str(len(data)) and "transfer-encoding" not in seen.headers
        assert seen.headers["x-ms-blob-type"] == "BlockBlob"
        assert seen.headers["x-ms-blob-content-type"] == "x/y"


async def test_bytes_stored_as_served_and_redirects_followed(
        fault_server: MakeServer, transport: BlobTransport, tmp_path: Path) -> None:
    packed = gzip.compress(b"hello " * 1000)
    server = await fault_server(Reply(302, headers={"Location": "/real.gz"}),
                                Reply(200, packed, {"Content-Encoding": "gzip"}))
    await transport.download(f"{server.url}/release.gz", tmp_path / "r.gz")
    assert (tmp_path / "r.gz").read_bytes() == packed
    assert [s.target for s in server.seen] == ["/release.gz", "/real.gz"]


async def test_md5_mismatch_from_plain_server_is_not_retried(
        fault_server: MakeServer, transport: BlobTransport, tmp_path: Path) -> None:
    server = await fault_server(default=Reply(200, b"payload", {"Content-MD5": md5_b64(b"other")}))
    with pytest.raises(BlobError, match="Content-MD5 mismatch"):
        await transport.download(f"{server.url}/p", tmp_path / "p")
    assert len(server.seen) == 1 and list(tmp_path.iterdir()) == []


async def test_download_many_first_error_cancels_the_rest(fault_server: MakeServer,
                                                          tmp_path: Path) -> None:
    hanging = await fault_server(default=HANG)
    missing = await fault_server(default=Reply(404))
    async with BlobTransport(TransportConfig(read_timeout=50, retry=FAST.retry)) as t:
        with pytest.raises(BlobError) as info:
            await t.download_many([DownloadItem(f"{hanging.url}/a", tmp_path / "a"),
                                   DownloadItem(f"{hanging.url}/b", tmp_path / "b"),
                                   DownloadItem(f"{missing.url}/c", tmp_path / "c")], concurrency=3)
    assert info.value.kind == "not_found"
    # Each request runs in a worker thread: a hanging download may be cancelled before it was sent.
    assert len(hanging.seen) <= 2 and leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []
