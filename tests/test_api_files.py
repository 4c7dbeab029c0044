"""Task file routes over raw REST against a real server: list (recursive, filter, paging), GET with
ranges (also while the task writes), HEAD headers, DELETE; and the attack: a task plants links,
a FIFO and a link on the path to root-only files, and the root agent never reads through them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_kit import ApiServer, serving, sh

pytestmark = pytest.mark.timeout(120)
SECRET = "TOPSECRET-root-only"


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root-only directory with a root-only file: what a planted link points at."""
    d = tmp_path_factory.mktemp("vault")
    d.chmod(0o700)
    (d / "shadow").write_text(SECRET)
    (d / "shadow").chmod(0o600)
    return d


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, vault: Path) -> Iterator[ApiServer]:
    with serving("api-files", tmp_path_factory.mktemp("api-files"), page_cap=2) as server:
        server.call("POST", "/jobs", json_body={"id": "fj", "poolInfo": {"poolId": "p"}})
        script = (f"ln -s {vault}/shadow x; ln -s {vault} vlink; ln -s / rootlink; mkfifo pipe; "
                  "mkdir -p sub/deeper; echo 0123456789 > sub/deeper/ten.txt; echo hi > sub/hi.txt; "
                  "head -c 6000000 /dev/urandom > big; sha256sum big > big.sum; echo abcdefghij; echo err >&2")
        server.call("POST", "/jobs/fj/tasks", json_body={"id": "files", "commandLine": sh(script)})
        server.wait_task("fj", "files")
        yield server


def error(r: Any) -> tuple[int, str]:
    return r.status_code, r.json()["code"]


def listing(api: ApiServer, **params: str) -> list[dict[str, Any]]:
    """Every entry, page by page through odata.nextLink (the server's page cap is 2)."""
    out, url = [], api.url_of("/jobs/fj/tasks/files/files", params)
    while url:
        body = api.call("GET", "", url=url).json()
        assert len(body["value"]) <= 2
        out += body["value"]
        url = body.get("odata.nextLink")
    return out


def names(api: ApiServer, **params: str) -> list[str]:
    return [f["name"] for f in listing(api, **params)]


def test_list_plain_recursive_filtered(api: ApiServer) -> None:
    top = names(api)
    assert {"stdout.txt", "stderr.txt", "wd"} <= set(top) and not any("/" in n for n in top)
    deep = names(api, recursive="true")
    assert {"wd/sub/deeper/ten.txt", "wd/sub/hi.txt", "wd/x", "wd/vlink", "wd/rootlink", "wd/pipe"} <= set(deep)
    assert not [n for n in deep if n.startswith(("wd/vlink/", "wd/rootlink/"))]      # links are not entered
    entries = {f["name"]: f for f in listing(api, recursive="true", **{"$filter": "startswith(name, 'wd/sub/')"})}
    assert set(entries) == {"wd/sub/deeper", "wd/sub/deeper/ten.txt", "wd/sub/hi.txt"}
    assert entries["wd/sub/deeper/ten.txt"]["properties"]["contentLength"] == "11"
    assert entries["wd/sub/deeper"]["isDirectory"] is True
    assert entries["wd/sub/hi.txt"]["url"] == f"{api.url}/jobs/fj/tasks/files/files/wd/sub/hi.txt"
    link = next(f for f in api.call("GET", "/jobs/fj/tasks/files/files", params={
        "recursive": "true", "$filter": "name eq 'wd/x'"}).json()["value"])
    assert link["properties"]["contentLength"] == "0" and link["isDirectory"] is False


def test_get_ranges_and_head(api: ApiServer) -> None:
    path = "/jobs/fj/tasks/files/files/stdout.txt"
    assert api.call("GET", path).content == b"abcdefghij\n"
    assert api.call("GET", path, headers={"ocp-range": "bytes=0-3"}).content == b"abcd"
    r = api.call("GET", path, headers={"Range": "bytes=8-"})
    assert r.status_code == 200 and r.content == b"ij\n" and r.headers["Content-Length"] == "3"
    assert api.call("GET", path, headers={"ocp-range": "bytes=-2"}).content == b"j\n"
    assert api.call("GET", path, headers={"ocp-range": "bytes=5-1000"}).content == b"fghij\n"
    assert error(api.call("GET", path, headers={"ocp-range": "bytes=11-20"})) == (416, "InvalidRange")
    assert error(api.call("GET", path, headers={"ocp-range": "lines=1-2"})) == (416, "InvalidRange")
    nested = api.call("GET", "/jobs/fj/tasks/files/files/wd%2Fsub%2Fdeeper%2Ften.txt")    # the SDKs' quoting
    assert nested.content == b"0123456789\n"
    head = api.call("HEAD", "/jobs/fj/tasks/files/files/wd/sub/deeper/ten.txt")
    assert head.status_code == 200 and head.content == b""
    raw = [v for k, v in head.headers.multi_items() if k.lower() == "content-length"]
    assert raw == ["11"]
    assert head.headers["ocp-batch-file-isdirectory"] == "false"
    assert head.headers["ocp-batch-file-mode"].startswith("100")
    assert head.headers["ocp-batch-file-url"].endswith("/files/wd/sub/deeper/ten.txt")
    assert head.headers["ocp-creation-time"].endswith("GMT") and head.headers["Last-Modified"].endswith("GMT")
    d = api.call("HEAD", "/jobs/fj/tasks/files/files/wd/sub")
    assert d.status_code == 200 and d.headers["ocp-batch-file-isdirectory"] == "true"
    since = head.headers["Last-Modified"]
    assert api.call("GET", "/jobs/fj/tasks/files/files/wd/sub/hi.txt",
                    headers={"If-Modified-Since": since}).status_code == 304
    assert error(api.call("GET", "/jobs/fj/tasks/files/files/wd/sub")) == (404, "FileNotFound")
    assert error(api.call("GET", "/jobs/fj/tasks/files/files/wd/none.txt")) == (404, "FileNotFound")
    assert error(api.call("GET", "/jobs/fj/tasks/nope/files")) == (404, "TaskNotFound")


def test_large_file_streams_whole_and_ranged(api: ApiServer) -> None:
    import hashlib

    whole = api.call("GET", "/jobs/fj/tasks/files/files/wd/big")
    assert whole.status_code == 200 and len(whole.content) == 6_000_000
    expected = api.call("GET", "/jobs/fj/tasks/files/files/wd/big.sum").text.split()[0]
    assert hashlib.sha256(whole.content).hexdigest() == expected
    part = api.call("GET", "/jobs/fj/tasks/files/files/wd/big", headers={"ocp-range": "bytes=1000-5500999"})
    assert part.content == whole.content[1000:5501000]


def test_attack_links_fifo_and_escapes_never_read(api: ApiServer, vault: Path) -> None:
    base = "/jobs/fj/tasks/files/files/"
    for path in ("wd/x", "wd/vlink/shadow", "wd/rootlink/etc/passwd", "wd%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
                 "%2Fetc%2Fpasswd", "..%2F..%2F..", "wd/pipe"):
        for method in ("GET", "HEAD"):
            started = time.monotonic()
            r = api.call(method, base + path)
            assert r.status_code == 404, (method, path, r.status_code)
            assert SECRET.encode() not in r.content and b"root:" not in r.content
            assert time.monotonic() - started < 5                 # a FIFO is never opened for reading
    assert api.call("DELETE", base + "wd/vlink/shadow").status_code == 404
    assert api.call("DELETE", base + "wd/x").status_code == 200           # the link goes, not its target
    assert (vault / "shadow").read_text() == SECRET
    assert error(api.call("GET", base + "wd/x")) == (404, "FileNotFound")


def test_delete_and_files_of_a_running_task(api: ApiServer, vault: Path) -> None:
    base = "/jobs/fj/tasks/files/files/"
    assert error(api.call("DELETE", base + "wd/sub")) == (409, "OperationInvalidForCurrentState")
    assert api.call("DELETE", base + "wd/sub", params={"recursive": "true"}).status_code == 200
    assert error(api.call("GET", base + "wd/sub/hi.txt")) == (404, "FileNotFound")
    # stdout.txt grows while the task runs; each GET sees what is there now
    api.call("POST", "/jobs/fj/tasks", json_body={
        "id": "grow", "commandLine": sh("echo first; while [ ! -e go ]; do sleep 0.02; done; echo second")})
    assert api.wait_file("fj", "grow", "stdout.txt", "first") == b"first\n"
    assert api.call("GET", "/jobs/fj/tasks/grow").json()["state"] == "running"
    assert int(api.call("HEAD", "/jobs/fj/tasks/grow/files/stdout.txt").headers["Content-Length"]) == 6
    assert api.service is not None
    wd = api.service.core.layout.task("fj", "grow").wd
    fd = os.open(wd / "go", os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_EXCL, 0o644)
    os.close(fd)
    api.wait_task("fj", "grow")
    assert api.call("GET", "/jobs/fj/tasks/grow/files/stdout.txt").content == b"first\nsecond\n"
    # a task that has not run has no files yet
    api.call("POST", "/jobs", json_body={"id": "idle", "poolInfo": {"poolId": "p"}})
    api.call("POST", "/jobs/idle/disable", json_body={"disableTasks": "wait"})
    api.call("POST", "/jobs/idle/tasks", json_body={"id": "waiting", "commandLine": "/bin/true"})
    assert error(api.call("GET", "/jobs/idle/tasks/waiting/files")) == (409, "TaskFilesUnavailable")
    assert error(api.call("GET", "/jobs/idle/tasks/waiting/files/stdout.txt")) == (409, "TaskFilesUnavailable")
