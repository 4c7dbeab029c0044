"""agent.upload: output files out (§7) against real Azurite, real sockets and real users.

No mocks. The task dir lives in a world-traversable temp dir so that a nonadmin task user (root
runs only) can reach it, as on a node. Backoff waits are off.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from netfaults import sig_of, silent_listener

from agent.blob import BlobTransport
from agent.config import StorageConfig
from agent.redact import redact_url
from agent.runner import TaskUser
from agent.spec import OutputFile
from agent.staging import transport_config
from agent.status import ErrorCategory, FailureInfo
from agent.upload import UploadResult, condition_matches, upload_outputs

pytestmark = pytest.mark.timeout(60)
FAST = StorageConfig(retries=2, backoff=0.0, timeout=5.0)
ME = TaskUser("agent", None, None)
IS_ROOT = os.geteuid() == 0


def out(pattern: str, url: str, path: str | None = None, condition: str = "taskcompletion",
        headers: dict[str, str] | None = None, **container: Any) -> OutputFile:
    dest: dict[str, Any] = {"containerUrl": url, **container}
    if path is not None:
        dest["path"] = path
    if headers:
        dest["uploadHeaders"] = [{"name": k, "value": v} for k, v in headers.items()]
    return OutputFile.model_validate({"filePattern": pattern, "destination": {"container": dest},
                                      "uploadOptions": {"uploadCondition": condition}})


class Task:
    """A task dir with stdout/stderr and a working dir, in a dir any user may traverse."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "task"
        self.wd = self.dir / "wd"
        self.wd.mkdir(parents=True)
        (self.dir / "stdout.txt").write_bytes(b"out\n")
        (self.dir / "stderr.txt").write_bytes(b"err\n")

    def write(self, rel: str, data: bytes) -> Path:
        path = self.wd / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    @property
    def out_log(self) -> str:
        return (self.dir / "fileuploadout.txt").read_text()

    @property
    def err_log(self) -> str:
        return (self.dir / "fileuploaderr.txt").read_text()


@pytest.fixture
def task() -> Iterator[Task]:
    base = Path(tempfile.mkdtemp(prefix="batch-agent-upload-"))
    os.chmod(base, 0o755)
    try:
        yield Task(base)
    finally:
        shutil.rmtree(base)


async def upload(outputs: list[OutputFile], task: Task, exit_code: int = 0, env: dict[str, str] | None = None,
                 user: TaskUser = ME, storage: StorageConfig = FAST, progress: Any = None,
                 ) -> UploadResult | FailureInfo:
    async with BlobTransport(transport_config(storage)) as transport:
        return await upload_outputs(outputs, exit_code=exit_code, wd=task.wd, task_dir=task.dir,
                                    env=env or {}, user=user, transport=transport, concurrency=4,
                                    progress=progress)


def failed(result: UploadResult | FailureInfo) -> FailureInfo:
    assert isinstance(result, FailureInfo), result
    return result


@pytest.mark.parametrize(("condition", "code", "expected"), [
    ("tasksuccess", 0, True), ("tasksuccess", 1, False), ("taskfailure", 0, False), ("taskfailure", -9, True),
    ("taskcompletion", 0, True), ("taskcompletion", 3, True),
])
def test_condition_matches(condition: str, code: int, expected: bool) -> None:
    assert condition_matches(condition, code) is expected


# --- naming, variables, headers, logs -------------------------------------------------------------

@pytest.mark.azurite
async def test_blob_naming_and_logs(azurite: Any, task: Task) -> None:
    name, sas = azurite.container(permission="rcwl")
    task.write("output.txt", b"literal")
    task.write("a.dat", b"a")
    task.write("x/y/b.dat", b"b")
    task.write(".hidden.dat", b"dot")
    task.write("results/r1.csv", b"r1")
    outputs = [out("output.txt", sas, path="task1/output.txt"), out("**/*.dat", sas, path="out"),
               out("../std*.txt", sas, path="mytask"), out("$OUTDIR/*.csv", sas),
               out("output.txt", sas), out("missing.txt", sas, path="never")]
    result = await upload(outputs, task, env={"OUTDIR": "results"})
    assert isinstance(result, UploadResult) and result.files == 7
    assert sorted(azurite.list(name)) == ["mytask/stderr.txt", "mytask/stdout.txt", "out/a.dat",
                                          "out/x/y/b.dat", "output.txt", "r1.csv", "task1/output.txt"]
    assert azurite.download(name, "out/x/y/b.dat") == b"b"
    log = task.out_log
    lines = log.splitlines()
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z System default encoding=utf-8, filesystem encoding=utf-8, "
                    r"default locale encoding=", lines[0])
    assert (f"[Resolved mapping - base_path: {task.dir}, full_pattern: {task.dir}/std*.txt, "
            f"original_pattern: ../std*.txt,  destination: mytask]") in log
    assert f"full_pattern: {task.wd}/results/*.csv, original_pattern: $OUTDIR/*.csv" in log
    assert f"Uploading all files matching pattern {task.wd}/**/*.dat" in log
    assert f"Uploading file: {task.wd}/x/y/b.dat to container: " in log and "blob: out/x/y/b.dat" in log
    assert f"Upload of {task.wd}/x/y/b.dat done in " in log
    assert f"No file matches pattern {task.wd}/missing.txt" in log      # not an error (UNCONFIRMED)
    assert lines[-1].endswith("Done uploading, exiting...")
    assert task.err_log == ""
    assert sig_of(sas) not in log and "sig=REDACTED" in log


@pytest.mark.azurite
async def test_upload_headers_become_properties_and_metadata(azurite: Any, task: Task) -> None:
    name, sas = azurite.container(permission="cw")
    task.write("page.html.gz", b"\x1f\x8b fake")
    headers = {"Content-Type": "text/html", "cache-control": "no-cache", "Content-Encoding": "gzip",
               "Content-Language": "de", "Content-Disposition": "attachment", "x-ms-meta-owner": "batch"}
    assert isinstance(await upload([out("page.html.gz", sas, headers=headers)], task), UploadResult)
    props = azurite.properties(name, "page.html.gz")
    settings = props.content_settings
    assert (settings.content_type, settings.cache_control, settings.content_encoding,
            settings.content_language, settings.content_disposition) == (
        "text/html", "no-cache", "gzip", "de", "attachment")
    assert props.metadata == {"owner": "batch"}


@pytest.mark.azurite
@pytest.mark.parametrize(("exit_code", "expected"), [(0, ["always.txt", "ok.txt"]),
                                                     (2, ["always.txt", "bad.txt"])])
async def test_upload_condition_picks_entries(azurite: Any, task: Task, exit_code: int,
                                              expected: list[str]) -> None:
    name, sas = azurite.container(permission="cw")
    task.write("f.txt", b"f")
    outputs = [out("f.txt", sas, path="ok.txt", condition="tasksuccess"),
               out("f.txt", sas, path="bad.txt", condition="taskfailure"),
               out("f.txt", sas, path="always.txt", condition="taskcompletion")]
    result = await upload(outputs, task, exit_code=exit_code)
    assert isinstance(result, UploadResult) and result.files == 2
    assert sorted(azurite.list(name)) == expected
    assert "does not match exit code" in task.out_log


@pytest.mark.azurite
async def test_no_entry_chosen_still_writes_logs(azurite: Any, task: Task) -> None:
    _, sas = azurite.container(permission="cw")
    result = await upload([out("f.txt", sas, condition="taskfailure")], task, exit_code=0)
    assert isinstance(result, UploadResult) and result.files == 0
    assert "Done uploading, exiting..." in task.out_log and task.err_log == ""


@pytest.mark.azurite
async def test_progress_and_existing_blobs_overwritten(azurite: Any, task: Task) -> None:
    name, sas = azurite.container(permission="cw")
    azurite.upload(name, "f.txt", b"old")
    task.write("f.txt", b"new content")

    class Recorder:
        total = done = 0

        def add(self, total_bytes: int) -> None:
            self.total += total_bytes

        def advance(self, n: int) -> None:
            self.done += n

    progress = Recorder()
    assert isinstance(await upload([out("f.txt", sas)], task, progress=progress), UploadResult)
    assert azurite.download(name, "f.txt") == b"new content"
    assert progress.total == progress.done == len(b"new content")


@pytest.mark.azurite
async def test_log_files_replace_planted_links(azurite: Any, task: Task, tmp_path: Path) -> None:
    _, sas = azurite.container(permission="cw")
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    (task.dir / "fileuploadout.txt").symlink_to(victim)
    os.link(victim, task.dir / "fileuploaderr.txt")
    task.write("f.txt", b"f")
    assert isinstance(await upload([out("f.txt", sas)], task), UploadResult)
    assert victim.read_bytes() == b"keep me"
    assert not (task.dir / "fileuploadout.txt").is_symlink() and "Done uploading" in task.out_log


# --- failures (§7.5) ------------------------------------------------------------------------------

def err_json(task: Task) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(task.err_log)
    return data


@pytest.mark.azurite
@pytest.mark.parametrize("why", ["read-only SAS", "expired SAS"])
async def test_denied_upload(azurite: Any, task: Task, why: str) -> None:
    if why == "expired SAS":
        _, sas = azurite.container(permission="rcwl", expiry=datetime.now(UTC) - timedelta(minutes=1))
    else:
        _, sas = azurite.container(permission="rl")
    task.write("f.txt", b"f")
    failure = failed(await upload([out("*.txt", sas, path="p")], task))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadAccessDenied")
    report = err_json(task)
    assert report["code"] == "AuthenticationFailed" and report["user_error"] is True
    assert report["pattern"] == "*.txt" and report["file"] == str(task.wd / "f.txt")
    assert report["destination"] == redact_url(sas) and "sig=REDACTED" in redact_url(sas)
    everything = task.out_log + task.err_log + json.dumps(failure.to_json())
    assert sig_of(sas) not in everything and "Done uploading" not in task.out_log


@pytest.mark.azurite
async def test_missing_container(azurite: Any, task: Task) -> None:
    name, sas = azurite.container(permission="cw")
    BlobServiceClient.from_connection_string(azurite.connection_string).delete_container(name)
    task.write("f.txt", b"f")
    failure = failed(await upload([out("f.txt", sas)], task))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadContainerNotFound")
    assert err_json(task)["code"] == "ContainerNotFound"


@pytest.mark.azurite
async def test_conflict_and_precondition(azurite: Any, task: Task) -> None:
    name, sas = azurite.container(permission="rcw")
    azurite.upload(name, "f.txt", b"exists")
    task.write("f.txt", b"f")
    failure = failed(await upload([out("f.txt", sas, headers={"If-None-Match": "*"})], task))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadConflict")
    assert err_json(task)["code"] == "Conflict"
    failure = failed(await upload([out("f.txt", sas, headers={"If-Match": '"0x0"'})], task))
    assert (failure.category, failure.code) == (ErrorCategory.SERVER, "FileUploadMiscError")
    assert err_json(task)["code"] == "PreconditionFailed"
    assert azurite.download(name, "f.txt") == b"exists"


async def test_timeout_and_unreachable(task: Task) -> None:
    task.write("f.txt", b"f")
    quick = StorageConfig(retries=2, backoff=0.0, timeout=0.3)
    with silent_listener("/c?sv=1&sig=SILENTSECRET") as url:
        failure = failed(await upload([out("f.txt", url)], task, storage=quick))
    assert (failure.category, failure.code) == (ErrorCategory.SERVER, "FileUploadTimedOut")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}/c?sig=REFUSEDSECRET"
    failure = failed(await upload([out("f.txt", refused)], task, storage=quick))
    assert (failure.category, failure.code) == (ErrorCategory.SERVER, "FileUploadMiscError")
    report = err_json(task)
    assert report["user_error"] is False and "REFUSEDSECRET" not in task.err_log + task.out_log


async def test_identity_reference_and_reserved_header_fail_before_any_upload(task: Task) -> None:
    task.write("f.txt", b"f")
    url = "http://127.0.0.1:9/c?sig=NEVERCONTACTED"
    failure = failed(await upload([out("f.txt", url, identityReference={"resourceId": "/id"})], task))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadAccessDenied")
    assert "not supported here" in failure.message and "azure-identity" in failure.message
    failure = failed(await upload([out("f.txt", url, headers={"Content-Length": "1"})], task))
    assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadMiscError")
    assert err_json(task)["file"] is None and "NEVERCONTACTED" not in task.err_log


# --- the task user's rights (root only) ---------------------------------------------------------

@pytest.fixture
def nobody() -> TaskUser:
    if not IS_ROOT:
        pytest.fail("this test must run as root (CI does): files are read with the task user's rights "
                    "through the setuid helper")
    entry = pwd.getpwnam("nobody")
    return TaskUser("nobody", entry.pw_uid, entry.pw_gid, (entry.pw_gid,))


def give(path: Path, user: TaskUser) -> None:
    assert user.uid is not None and user.gid is not None
    for p in (path, *path.rglob("*")):
        os.chown(p, user.uid, user.gid, follow_symlinks=False)


@pytest.mark.root
@pytest.mark.azurite
@pytest.mark.parametrize("planted", ["symlink to a root-only file", "root-only file in wd",
                                     "absolute pattern"])
async def test_files_the_task_user_cannot_read_are_not_uploaded(azurite: Any, task: Task, nobody: TaskUser,
                                                                tmp_path: Path, planted: str) -> None:
    name, sas = azurite.container(permission="cwl")
    secret = tmp_path / "root-only.txt"            # under root's 0700 pytest dir, and mode 0600
    secret.write_bytes(b"ROOT SECRET")
    os.chmod(secret, 0o600)
    task.write("ok.txt", b"mine")
    give(task.dir, nobody)
    pattern = "*.txt"
    if planted == "symlink to a root-only file":
        (task.wd / "leak.txt").symlink_to(secret)
        os.chown(task.wd / "leak.txt", nobody.uid or 0, nobody.gid or 0, follow_symlinks=False)
    elif planted == "root-only file in wd":
        task.write("leak.txt", b"ROOT SECRET")
        os.chmod(task.wd / "leak.txt", 0o600)       # root's, as an elevated process would leave it
    else:
        pattern = str(secret)
    result = await upload([out(pattern, sas)], task, user=nobody)
    if planted == "root-only file in wd":           # the task user sees the name, not the contents
        failure = failed(result)
        assert (failure.category, failure.code) == (ErrorCategory.USER, "FileUploadMiscError")
        assert "task user's rights" in failure.message
        report = err_json(task)
        assert report["user_error"] is True and report["file"] == str(task.wd / "leak.txt")
    else:       # matched as the task user: a target it cannot reach is like one that does not exist
        assert isinstance(result, UploadResult) and result.files == (1 if planted.startswith("symlink") else 0)
        assert task.err_log == "" and "Uploading file: " + str(secret) not in task.out_log
    assert "leak.txt" not in azurite.list(name) and "root-only.txt" not in azurite.list(name)
    assert all(azurite.download(name, b) != b"ROOT SECRET" for b in azurite.list(name))
    for log in ("fileuploadout.txt", "fileuploaderr.txt"):
        st = (task.dir / log).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (nobody.uid, 0o644)


@pytest.mark.root
@pytest.mark.azurite
async def test_task_user_reads_its_own_files_through_the_helper(azurite: Any, task: Task, nobody: TaskUser,
                                                               ) -> None:
    name, sas = azurite.container(permission="cwl")
    task.write("ok.txt", b"mine")
    task.write("sub/two.txt", b"two")
    (task.wd / "link.txt").symlink_to(task.wd / "ok.txt")
    give(task.dir, nobody)
    result = await upload([out("**/*.txt", sas, path="o")], task, user=nobody)
    assert isinstance(result, UploadResult) and result.files == 3
    assert sorted(azurite.list(name)) == ["o/link.txt", "o/ok.txt", "o/sub/two.txt"]
    assert azurite.download(name, "o/link.txt") == b"mine"
