"""agent.staging: resource files in (§4) against real Azurite and real local sockets.

No mocks. Timeouts and connection failures come from real sockets on 127.0.0.1 (a listener that
never accepts, a port nobody listens on); concurrency is measured by a real HTTP server that
holds requests until the expected number is in flight. Backoff waits are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netfaults import closed_port, sig_of, silent_listener, tiny_tmpfs

from agent.blob import BlobError, BlobTransport, blob_url
from agent.compose import node_identity
from agent.config import AgentConfig, NodeConfig, StorageConfig, TaskConfig
from agent.hooks.outputs import OutputFilesHook
from agent.hooks.resources import ResourceFilesHook
from agent.hooks.taskdir import TaskDirHook
from agent.lifecycle import TaskContext
from agent.process import ProcessRunner
from agent.runner import TaskUser
from agent.spec import ResourceFile, TaskSpec
from agent.staging import (
    StagingResult,
    auto_storage_container,
    dir_mode,
    name_problem,
    stage_resource_files,
    transport_config,
)
from agent.status import ErrorCategory, FailureInfo
from agent.taskrunner import TaskRunner

pytestmark = pytest.mark.timeout(60)
FAST = StorageConfig(retries=2, backoff=0.0, timeout=5.0, concurrency=4)
ME = TaskUser("agent", None, None)
IS_ROOT = os.geteuid() == 0


def rf(**fields: Any) -> ResourceFile:
    return ResourceFile.model_validate(fields)


@pytest.fixture
def wd(tmp_path: Path) -> Path:
    path = tmp_path / "task" / "wd"
    path.mkdir(parents=True)
    return path


async def stage(files: list[ResourceFile], wd: Path, storage: StorageConfig = FAST, user: TaskUser = ME,
                progress: Any = None) -> StagingResult | FailureInfo:
    async with BlobTransport(transport_config(storage)) as transport:
        return await stage_resource_files(files, wd, user=user, transport=transport, storage=storage,
                                          progress=progress)


def failed(result: StagingResult | FailureInfo) -> FailureInfo:
    assert isinstance(result, FailureInfo), result
    return result


def details(failure: FailureInfo) -> dict[str, str]:
    return {d.name: d.value for d in failure.details}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class GateServer:
    """HTTP/1.1 server answering GET /<name> with ``name`` as body, releasing requests in groups
    of ``group`` (or when ``total`` have come): the peak of requests in flight is measured."""

    group: int
    total: int
    in_flight: int = 0
    peak: int = 0
    seen: int = 0
    url: str = ""
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            self.in_flight += 1
            self.seen += 1
            self.peak = max(self.peak, self.in_flight)
            if self.in_flight >= self.group or self.seen >= self.total:
                self._release.set()
            release = self._release
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 10)   # a safety net, not a wait for time
            if self._release is release and release.is_set():
                self._release = asyncio.Event()
            self.in_flight -= 1
            body = path.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()


@pytest.fixture
async def gate_server() -> AsyncIterator[Any]:
    servers: list[asyncio.Server] = []

    async def make(group: int, total: int) -> GateServer:
        gate = GateServer(group, total)

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await gate.handle(reader, writer)
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        gate.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return gate

    yield make
    for server in servers:
        server.close()
        await server.wait_closed()


# --- pure helpers ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "bad"), [
    ("a.txt", False), ("dir/sub/a.txt", False), ("..a/b..", False), ("a b/ü.txt", False),
    ("../evil.txt", True), ("a/../../evil.txt", True), ("a/..", True), ("/abs.txt", True),
    ("a//b.txt", True), ("a/./b", True), ("dir/", True), ("a\0b", True),
])
def test_name_problem(name: str, bad: bool) -> None:
    assert (name_problem(name) is not None) is bad


@pytest.mark.parametrize(("file_mode", "expected"), [(0o770, 0o770), (0o644, 0o755), (0o600, 0o700),
                                                     (0o400, 0o700), (0o777, 0o777), (0o640, 0o750)])
def test_dir_mode(file_mode: int, expected: int) -> None:
    assert dir_mode(file_mode) == expected


def test_auto_storage_container_forms() -> None:
    key = "a2V5"
    conn = StorageConfig(connection_string="DefaultEndpointsProtocol=https;AccountName=acct;"
                                           f"AccountKey={key};EndpointSuffix=core.windows.net")
    url, cred = auto_storage_container("data", conn) or ("", None)
    assert url == "https://acct.blob.core.windows.net/data" and cred and cred.account == "acct"
    azurite = StorageConfig(account_url="http://127.0.0.1:10000/devstoreaccount1", account_key=key)
    url, cred = auto_storage_container("c", azurite) or ("", None)
    assert url == "http://127.0.0.1:10000/devstoreaccount1/c" and cred and cred.account == "devstoreaccount1"
    sas = StorageConfig(account_url="https://acct.blob.core.windows.net/", sas_token="?sv=1&sig=abc")
    assert auto_storage_container("c", sas) == ("https://acct.blob.core.windows.net/c?sv=1&sig=abc", None)
    with_sas = StorageConfig(connection_string="BlobEndpoint=https://x.example/;SharedAccessSignature=sv=1&sig=s")
    assert auto_storage_container("c", with_sas) == ("https://x.example/c?sv=1&sig=s", None)
    assert auto_storage_container("c", StorageConfig()) is None
    assert auto_storage_container("c", StorageConfig(account_url="https://a.blob.core.windows.net")) is None


# --- sources ---------------------------------------------------------------------------------------

@pytest.mark.azurite
async def test_http_url_lands_at_file_path_with_default_mode(azurite: Any, wd: Path) -> None:
    name, sas = azurite.container(permission="r")
    azurite.upload(name, "in/data.bin", b"x" * 70_000)
    result = await stage([rf(httpUrl=blob_url(sas, "in/data.bin"), filePath="deep/er/data.bin")], wd)
    assert isinstance(result, StagingResult) and (result.files, result.bytes) == (1, 70_000)
    assert tree(wd) == {"deep/er/data.bin": b"x" * 70_000}
    assert (wd / "deep/er/data.bin").stat().st_mode & 0o777 == 0o770
    assert (wd / "deep").stat().st_mode & 0o777 == 0o770
    assert not [p for p in wd.rglob("*") if ".part-" in p.name]


@pytest.mark.azurite
async def test_container_with_prefix_keeps_full_blob_names(azurite: Any, wd: Path) -> None:
    name, sas = azurite.container(permission="rl")
    blobs = {"in/a.txt": b"a", "in/sub/b.txt": b"b", "input.txt": b"i", "other/c.txt": b"c"}
    for blob, data in blobs.items():
        azurite.upload(name, blob, data)
    result = await stage([rf(storageContainerUrl=sas, blobPrefix="in", filePath="data")], wd)
    assert isinstance(result, StagingResult) and result.files == 3
    assert tree(wd) == {"data/in/a.txt": b"a", "data/in/sub/b.txt": b"b", "data/input.txt": b"i"}


@pytest.mark.azurite
async def test_container_without_file_path_goes_to_wd_and_later_entry_wins(azurite: Any, wd: Path) -> None:
    name, sas = azurite.container(permission="rl")
    azurite.upload(name, "x/a.txt", b"from container")
    other, other_sas = azurite.container(permission="r")
    azurite.upload(other, "a.txt", b"from http")
    files = [rf(storageContainerUrl=sas), rf(httpUrl=blob_url(other_sas, "a.txt"), filePath="x/a.txt")]
    assert isinstance(await stage(files, wd), StagingResult)
    assert tree(wd) == {"x/a.txt": b"from http"}


@pytest.mark.azurite
@pytest.mark.parametrize("form", ["connection_string", "account_key", "sas_token"])
async def test_auto_storage_container_name(azurite: Any, wd: Path, form: str) -> None:
    name, sas = azurite.container(permission="rl")
    azurite.upload(name, "job/in.txt", b"auto")
    storage = {
        "connection_string": StorageConfig(connection_string=azurite.connection_string),
        "account_key": StorageConfig(account_url=azurite.blob_url, account_key=azurite.key),
        "sas_token": StorageConfig(account_url=azurite.blob_url, sas_token=sas.split("?", 1)[1]),
    }[form]
    storage = StorageConfig(**{**{f: getattr(FAST, f) for f in ("retries", "backoff", "timeout")},
                               **{f: getattr(storage, f) for f in ("connection_string", "account_url",
                                                                   "account_key", "sas_token")}})
    result = await stage([rf(autoStorageContainerName=name, filePath="auto")], wd, storage)
    assert isinstance(result, StagingResult), result
    assert tree(wd) == {"auto/job/in.txt": b"auto"}


async def test_auto_storage_not_configured(wd: Path) -> None:
    failure = failed(await stage([rf(autoStorageContainerName="c")], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "AutoStorageNotConfigured")
    assert "connection_string" in failure.message


async def test_identity_reference_is_not_supported(wd: Path) -> None:
    url = closed_port() + "/c"        # nothing is contacted: it would fail otherwise
    failure = failed(await stage([rf(storageContainerUrl=url, identityReference={"resourceId": "/x"})], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "TaskFeatureNotSupported")
    assert "not supported here" in failure.message and "azure-identity" in failure.message
    assert details(failure)["FieldName"] == "resourceFiles[0].identityReference"
    assert tree(wd) == {}


@pytest.mark.azurite
async def test_file_mode_applies_to_files_and_new_dirs(azurite: Any, wd: Path) -> None:
    name, sas = azurite.container(permission="rl")
    azurite.upload(name, "d/e/f.txt", b"f")
    (wd / "d").mkdir(mode=0o700)
    os.chmod(wd / "d", 0o700)
    assert isinstance(await stage([rf(storageContainerUrl=sas, fileMode="0644")], wd), StagingResult)
    assert (wd / "d/e/f.txt").stat().st_mode & 0o777 == 0o644
    assert (wd / "d/e").stat().st_mode & 0o777 == 0o755
    assert (wd / "d").stat().st_mode & 0o777 == 0o700       # existing dirs are left alone


@pytest.mark.azurite
async def test_progress_adds_and_advances_every_byte(azurite: Any, wd: Path) -> None:
    name, sas = azurite.container(permission="rl")
    for i in range(5):
        azurite.upload(name, f"p/{i}.bin", b"z" * (1000 * (i + 1)))

    class Recorder:
        def __init__(self) -> None:
            self.total = self.done = 0

        def add(self, total_bytes: int) -> None:
            self.total += total_bytes

        def advance(self, n: int) -> None:
            self.done += n

    progress = Recorder()
    files = [rf(storageContainerUrl=sas), rf(httpUrl=blob_url(sas, "p/0.bin"), filePath="copy.bin")]
    result = await stage(files, wd, progress=progress)
    assert isinstance(result, StagingResult)
    assert progress.total == progress.done == result.bytes == 16_000


class Steps:
    """A progress sink that keeps every call (transfer threads call it)."""

    def __init__(self) -> None:
        self.adds: list[int] = []
        self.steps: list[int] = []

    def add(self, total_bytes: int) -> None:
        self.adds.append(total_bytes)

    def advance(self, n: int) -> None:
        self.steps.append(n)


@pytest.mark.azurite
async def test_progress_moves_while_a_large_file_downloads(azurite: Any, wd: Path) -> None:
    name, sas = azurite.container(permission="rl")
    azurite.upload(name, "big.bin", os.urandom(5 * 1024 * 1024 + 3))
    progress = Steps()
    result = await stage([rf(storageContainerUrl=sas)], wd, progress=progress)
    assert isinstance(result, StagingResult)
    assert sum(progress.adds) == sum(progress.steps) == 5 * 1024 * 1024 + 3
    assert len(progress.steps) >= 5 and all(n > 0 for n in progress.steps)   # batches, not one jump at the end


async def test_progress_takes_back_the_bytes_of_a_failed_try(wd: Path) -> None:
    """A body cut short is retried: the bytes of the failed try are taken back, so the bar ends exact."""
    body = os.urandom(3 * 1024 * 1024)
    tries = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        tries[0] += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body[: 2 * 1024 * 1024 + 5] if tries[0] == 1 else body)   # the first try is cut
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/f"
    progress = Steps()
    try:
        result = await stage([rf(httpUrl=url, filePath="f")], wd, progress=progress)
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(result, StagingResult) and tries[0] == 2
    assert (wd / "f").read_bytes() == body
    assert any(n < 0 for n in progress.steps)                    # the cut try was taken back
    assert sum(progress.steps) == sum(progress.adds) == len(body)


async def test_concurrency_is_bounded_by_config(gate_server: Any, wd: Path) -> None:
    gate = await gate_server(group=3, total=12)
    files = [rf(httpUrl=f"{gate.url}/f{i}", filePath=f"f{i}") for i in range(12)]
    storage = StorageConfig(retries=1, backoff=0.0, timeout=20.0, concurrency=3)
    assert isinstance(await stage(files, wd, storage), StagingResult)
    assert gate.peak == 3
    assert tree(wd) == {f"f{i}": f"/f{i}".encode() for i in range(12)}


# --- failures (§4.2) ----------------------------------------------------------------------------

@pytest.mark.azurite
async def test_missing_blob_is_blob_not_found(azurite: Any, wd: Path) -> None:
    _, sas = azurite.container(permission="r")
    failure = failed(await stage([rf(httpUrl=blob_url(sas, "nope.txt"), filePath="n.txt")], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "BlobNotFound")
    info = details(failure)
    assert info["FilePath"] == "n.txt" and "sig=REDACTED" in info["Url"]
    assert sig_of(sas) not in json.dumps(failure.to_json())
    assert tree(wd) == {}


@pytest.mark.azurite
@pytest.mark.parametrize("why", ["no read permission", "expired"])
async def test_denied_blob_is_blob_access_denied(azurite: Any, wd: Path, why: str) -> None:
    from datetime import UTC, datetime, timedelta
    if why == "expired":
        name, sas = azurite.container(permission="r", expiry=datetime.now(UTC) - timedelta(minutes=5))
    else:
        name, sas = azurite.container(permission="l")
    azurite.upload(name, "a.txt", b"a")
    failure = failed(await stage([rf(httpUrl=blob_url(sas, "a.txt"), filePath="a.txt")], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "BlobAccessDenied")
    assert sig_of(sas) not in json.dumps(failure.to_json())


@pytest.mark.azurite
async def test_missing_container_is_resource_container_not_found(azurite: Any, wd: Path) -> None:
    from azure.storage.blob import BlobServiceClient
    name, sas = azurite.container(permission="rl")
    BlobServiceClient.from_connection_string(azurite.connection_string).delete_container(name)
    failure = failed(await stage([rf(storageContainerUrl=sas, filePath="x")], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "ResourceContainerNotFound")
    assert details(failure)["FilePath"] == "x"


@pytest.mark.azurite
async def test_container_without_list_permission_is_access_denied(azurite: Any, wd: Path) -> None:
    _, sas = azurite.container(permission="r")
    failure = failed(await stage([rf(storageContainerUrl=sas)], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "ResourceContainerAccessDenied")


async def test_timeouts_and_misc_errors(wd: Path) -> None:
    quick = StorageConfig(retries=2, backoff=0.0, timeout=0.3)
    with silent_listener() as url:
        download = failed(await stage([rf(httpUrl=f"{url}/f", filePath="f")], wd, quick))
        listing = failed(await stage([rf(storageContainerUrl=f"{url}/c")], wd, quick))
    assert (download.category, download.code) == (ErrorCategory.SERVER, "BlobDownloadTimedOut")
    assert (listing.category, listing.code) == (ErrorCategory.SERVER, "ResourceContainerListTimedOut")
    refused = closed_port()
    download = failed(await stage([rf(httpUrl=f"{refused}/f", filePath="f")], wd, quick))
    listing = failed(await stage([rf(storageContainerUrl=f"{refused}/c")], wd, quick))
    assert (download.category, download.code) == (ErrorCategory.SERVER, "BlobDownloadMiscError")
    assert (listing.category, listing.code) == (ErrorCategory.SERVER, "ResourceContainerListMiscError")
    assert tree(wd) == {}


# --- nothing outside wd ---------------------------------------------------------------------------

def put_raw(sas: str, encoded_name: str, data: bytes) -> None:
    """Create a blob whose name the SDK would normalise (``..``, leading ``/``): raw REST."""
    import httpx
    base, query = sas.split("?", 1)
    resp = httpx.put(f"{base}/{encoded_name}?{query}", content=data, headers={"x-ms-blob-type": "BlockBlob"})
    assert resp.status_code == 201, resp.text


@pytest.mark.azurite
@pytest.mark.parametrize(("encoded", "name"), [("%2E%2E/evil.txt", "../evil.txt"),
                                               ("a/%2E%2E/%2E%2E/evil.txt", "a/../../evil.txt"),
                                               ("%2Fabs.txt", "/abs.txt")])
async def test_escaping_blob_names_are_refused(azurite: Any, tmp_path: Path, wd: Path, encoded: str,
                                               name: str) -> None:
    container, sas = azurite.container()
    azurite.upload(container, "fine.txt", b"fine")
    put_raw(sas, encoded, b"evil")
    assert name in azurite.list(container)
    before = tree(tmp_path)
    failure = failed(await stage([rf(storageContainerUrl=sas, filePath="in")], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "ResourceFileCreateFailed")
    assert details(failure)["BlobName"] == name
    assert tree(tmp_path) == before                  # nothing written, not even the good blob


@pytest.mark.azurite
async def test_symlinked_directory_in_the_way_is_refused(azurite: Any, tmp_path: Path, wd: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (wd / "data").symlink_to(outside)                       # planted by an earlier task
    container, sas = azurite.container(permission="rl")
    azurite.upload(container, "data/x.txt", b"x")
    failure = failed(await stage([rf(storageContainerUrl=sas)], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "ResourceFileCreateFailed")
    assert "symlink" in failure.message and "'data'" in failure.message
    assert list(outside.iterdir()) == []


@pytest.mark.azurite
async def test_symlink_as_the_file_is_refused(azurite: Any, tmp_path: Path, wd: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_bytes(b"precious")
    (wd / "sub").mkdir()
    (wd / "sub" / "f.txt").symlink_to(target)
    container, sas = azurite.container(permission="r")
    azurite.upload(container, "f.txt", b"overwrite?")
    failure = failed(await stage([rf(httpUrl=blob_url(sas, "f.txt"), filePath="sub/f.txt")], wd))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "ResourceFileCreateFailed")
    assert target.read_bytes() == b"precious" and (wd / "sub" / "f.txt").is_symlink()


@pytest.mark.azurite
async def test_file_in_the_way_of_a_directory(azurite: Any, wd: Path) -> None:
    container, sas = azurite.container(permission="r")
    azurite.upload(container, "f.txt", b"f")
    (wd / "a").write_bytes(b"a file")
    failure = failed(await stage([rf(httpUrl=blob_url(sas, "f.txt"), filePath="a/f.txt")], wd))
    assert failure.code == "ResourceFileCreateFailed" and "a file is in the way" in failure.message


# --- root only: ownership and a full disk --------------------------------------------------------

@pytest.mark.root
@pytest.mark.azurite
async def test_files_and_new_dirs_belong_to_the_task_user(azurite: Any, wd: Path) -> None:
    if not IS_ROOT:
        pytest.fail("this test must run as root (CI does): files are given to the task user 'nobody'")
    nobody = pwd.getpwnam("nobody")
    user = TaskUser("nobody", nobody.pw_uid, nobody.pw_gid, (nobody.pw_gid,))
    container, sas = azurite.container(permission="rl")
    azurite.upload(container, "a/b/c.txt", b"c")
    (wd / "a").mkdir()                                      # exists, root's: left alone
    assert isinstance(await stage([rf(storageContainerUrl=sas, filePath="in")], wd, user=user), StagingResult)
    for rel in ("in", "in/a", "in/a/b", "in/a/b/c.txt"):
        st = (wd / rel).stat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), rel
    assert (wd / "a").stat().st_uid == 0


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    with tiny_tmpfs(tmp_path / "tiny", "64k") as mount:
        yield mount


@pytest.mark.root
@pytest.mark.azurite
async def test_full_disk_is_disk_full(azurite: Any, tiny_disk: Path) -> None:
    container, sas = azurite.container(permission="r")
    azurite.upload(container, "big.bin", os.urandom(1024 * 1024))
    failure = failed(await stage([rf(httpUrl=blob_url(sas, "big.bin"), filePath="big.bin")], tiny_disk))
    assert (failure.category, failure.code) == (ErrorCategory.SERVER, "DiskFull")
    assert details(failure)["FilePath"] == "big.bin"
    assert list(tiny_disk.iterdir()) == []


# --- the overall deadline (ResourceDownloadTimedOut) ------------------------------------------------

@contextlib.asynccontextmanager
async def trickle_server() -> AsyncIterator[str]:
    """Answers every GET with 200 and a 1 GB Content-Length, then sends one byte every 20 ms for
    ever: no read ever times out and no retry ever happens, the download just never ends."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.02)          # the server's pace, not a wait in the test
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def staged_within(files: list[ResourceFile], wd: Path, deadline: float) -> FailureInfo:
    storage = StorageConfig(retries=1000, backoff=0.0, timeout=30.0, concurrency=4)
    async with BlobTransport(transport_config(storage)) as transport:
        return failed(await stage_resource_files(files, wd, user=ME, transport=transport, storage=storage,
                                                 deadline=deadline))


async def test_a_download_that_never_ends_fails_at_the_deadline(wd: Path) -> None:
    loop = asyncio.get_running_loop()
    async with trickle_server() as url:
        started = loop.time()
        failure = await staged_within([rf(httpUrl=f"{url}/big", filePath="big"),
                                       rf(httpUrl=f"{url}/other", filePath="d/other")], wd, 0.5)
        took = loop.time() - started
    assert (failure.category, failure.code) == (ErrorCategory.SERVER, "ResourceDownloadTimedOut")
    assert "0.5 seconds" in details(failure)["Message"]
    assert 0.5 <= took < 5, took                        # the 30 s read timeout played no part
    assert not [p for p in wd.rglob("*") if p.is_file()]   # temp files removed before the hook returns


async def test_a_server_that_never_answers_fails_at_the_deadline(wd: Path) -> None:
    loop = asyncio.get_running_loop()
    with silent_listener() as url:
        started = loop.time()
        failure = await staged_within([rf(httpUrl=f"{url}/f", filePath="f")], wd, 0.3)
        took = loop.time() - started
        listing = await staged_within([rf(storageContainerUrl=f"{url}/c")], wd, 0.3)
    assert failure.code == listing.code == "ResourceDownloadTimedOut"
    assert took < 5, took
    assert tree(wd) == {}


async def test_the_task_runner_applies_the_configured_deadline(node_root: Path) -> None:
    """[storage] download_deadline reaches the hook: the task fails ResourceDownloadTimedOut, never runs."""
    config = AgentConfig(node=NodeConfig(root=node_root), tasks=TaskConfig(create_users=False, use_cgroups=False),
                         storage=StorageConfig(retries=1000, backoff=0.0, timeout=30.0, download_deadline=1.0))
    runners = {"process": ProcessRunner(use_cgroups=False)}
    runner = TaskRunner(config=config, node=node_identity(config), runners=runners,
                        prestart=[TaskDirHook(), ResourceFilesHook()], exited=[], resolve_user=lambda *_: ME)
    async with trickle_server() as url:
        spec = TaskSpec.model_validate({"id": "slow", "commandLine": "touch ran",
                                        "resourceFiles": [{"httpUrl": f"{url}/big", "filePath": "big"}]})
        outcome = await runner.run(spec, job_id="job")
    info = outcome.status.execution_info
    assert info.exit_code is None and info.failure_info is not None
    assert info.failure_info.code == "ResourceDownloadTimedOut" and "1 seconds" in details(info.failure_info)["Message"]
    assert not (node_root / "workitems/job/job-1/slow/wd/ran").exists()


# --- one transport per task attempt, shared with the output files hook ----------------------------

class _Spy:
    """A prestart hook after the resource files hook: keeps the attempt's context, may fail."""

    name = "spy"
    handles: frozenset[str] = frozenset()

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.contexts: list[TaskContext] = []

    async def prestart(self, ctx: TaskContext) -> FailureInfo | None:
        self.contexts.append(ctx)
        return FailureInfo.user("PlantedFailure", "a later prestart hook failed") if self.fail else None


@pytest.mark.azurite
@pytest.mark.parametrize(("fail", "command", "attempts"), [(False, "cat a.txt", 1), (False, "false", 2),
                                                          (True, "cat a.txt", 1)],
                         ids=["ran", "retried", "later-hook-failed"])
async def test_one_transport_per_attempt_shared_then_closed(azurite: Any, node_root: Path, fail: bool, command: str,
                                                            attempts: int) -> None:
    """Resource and output files share the attempt's transport; it is closed when the attempt ends,
    also when a later prestart hook fails and neither the process nor the exited hooks run."""
    name, sas = azurite.container(permission="rl")
    azurite.upload(name, "a.txt", b"a")
    out_name, out_sas = azurite.container(permission="racwl")
    config = AgentConfig(node=NodeConfig(root=node_root), storage=FAST,
                         tasks=TaskConfig(create_users=False, use_cgroups=False))
    spy = _Spy(fail)
    runners = {"process": ProcessRunner(use_cgroups=False)}
    runner = TaskRunner(config=config, node=node_identity(config), runners=runners,
                        prestart=[TaskDirHook(), ResourceFilesHook(), spy], exited=[OutputFilesHook()],
                        resolve_user=lambda *_: ME)
    spec = TaskSpec.model_validate({
        "id": "shared", "commandLine": command, "resourceFiles": [{"storageContainerUrl": sas}],
        "outputFiles": [{"filePattern": "a.txt", "destination": {"container": {"containerUrl": out_sas}},
                         "uploadOptions": {"uploadCondition": "taskCompletion"}}],
        "constraints": {"maxTaskRetryCount": 1}})
    outcome = await runner.run(spec, job_id="job")
    assert [c.attempt for c in spy.contexts] == list(range(attempts))
    transports = [c.shared["blob_transport"] for c in spy.contexts]
    assert len({id(t) for t in transports}) == attempts                 # one per attempt
    for closed in transports:
        with pytest.raises(BlobError, match="closed"):
            await closed.list_blobs(sas)
    info = outcome.status.execution_info
    if fail:    # a pre-processing error is not retried
        assert info.failure_info is not None and info.failure_info.code == "PlantedFailure"
    else:       # the same transport uploaded, after every attempt
        assert info.exit_code == (0 if attempts == 1 else 1) and azurite.list(out_name) == ["a.txt"]
