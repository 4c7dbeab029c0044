"""agent.api.errors / formats / app edge: Batch error bodies and codes, SpecError -> 400 with the
text `batch-agent validate` prints, the headers on every answer, 500 without a traceback (logged
once), 501 for what a node cannot serve, and the wire formats of durations, times and ETags.
Raw REST (httpx) against a real uvicorn server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from clients import KEY_B64, DemoServer, signed_headers

from agent.api.errors import CODES, ERROR_METADATA, BatchApiError, from_spec_error
from agent.api.formats import UNLIMITED_TEXT, format_duration, format_time, http_date, make_etag, parse_http_date
from agent.errors import Issue, SpecError
from agent.spec.load import load_data

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


# --- pure -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "status"), [
    ("JobNotFound", 404), ("TaskNotFound", 404), ("FileNotFound", 404), ("TaskExists", 409), ("JobExists", 409),
    ("JobBeingDeleted", 409), ("TaskCompleted", 409), ("InvalidPropertyValue", 400),
    ("MissingRequiredProperty", 400), ("InvalidRequestBody", 400), ("RequestBodyTooLarge", 413),
    ("AuthenticationFailed", 403), ("InvalidQueryParameterValue", 400), ("UnsupportedHttpVerb", 405),
    ("FeatureNotSupported", 501), ("InternalError", 500), ("ServerBusy", 503), ("ConditionNotMet", 412),
])
def test_code_table(code: str, status: int) -> None:
    err = BatchApiError(code)
    assert (err.status, CODES[code].status) == (status, status)
    body = err.body(base_url="http://h:1/", request_id="rid")
    assert body["odata.metadata"] == f"http://h:1/{ERROR_METADATA}"
    assert body["code"] == code and "values" not in body
    message = body["message"]
    assert isinstance(message, dict) and message["lang"] == "en-US"
    assert message["value"].startswith(CODES[code].message + "\nRequestId:rid\nTime:")


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        BatchApiError("NoSuchCode")


def spec_failure(data: object, kind: str = "job") -> SpecError:
    with pytest.raises(SpecError) as info:
        load_data(data, kind=kind)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(("data", "kind", "code", "path"), [
    ({"id": "j"}, "job", "MissingRequiredProperty", "poolInfo"),
    ({"id": "t"}, "task", "MissingRequiredProperty", "commandLine"),
    ({"id": "t", "commandLine": "x", "constraints": {"maxTaskRetryCount": "3"}}, "task",
     "InvalidPropertyValue", "constraints.maxTaskRetryCount"),
    ({"id": "t", "commandLine": "x", "comandLine": "y"}, "task", "UnsupportedProperty", "comandLine"),
    ({"value": [{"id": "a", "commandLine": "x"}, {"id": "b"}]}, "collection", "MissingRequiredProperty",
     "value[1].commandLine"),
    ([1, 2], "task", "InvalidRequestBody", None),
])
def test_spec_errors_map_to_batch_codes(data: object, kind: str, code: str, path: str | None) -> None:
    exc = spec_failure(data, kind)
    err = from_spec_error(exc)
    assert (err.status, err.code) == (400, code)
    values = dict(err.values)
    if path:
        assert values["PropertyName"] == path
    assert err.message == SpecError(exc.issues).render()


def test_several_issues_listed_in_values() -> None:
    err = from_spec_error(SpecError([Issue("a", "bad"), Issue("b.c", "required field is missing")]))
    assert err.code == "InvalidPropertyValue"
    assert err.values == (("PropertyName", "a"), ("Reason", "bad"), ("PropertyName", "b.c"),
                          ("Reason", "required field is missing"))
    assert err.message.startswith("2 problems:")


@pytest.mark.parametrize(("value", "text"), [
    (timedelta(0), "PT0S"), (timedelta(days=7), "P7D"), (timedelta(hours=1, minutes=30), "PT1H30M"),
    (timedelta(seconds=90.5), "PT1M30.5S"), (timedelta(days=1, hours=2), "P1DT2H"), (None, UNLIMITED_TEXT),
])
def test_durations_every_client_reads(value: timedelta | None, text: str) -> None:
    assert format_duration(value) == text
    assert format_duration(value) != "P"


def test_times_dates_and_etags() -> None:
    when = datetime(2025, 7, 1, 12, 0, 5, 123456, tzinfo=UTC)
    assert format_time(when) == "2025-07-01T12:00:05.1234560Z"
    assert http_date(when) == "Tue, 01 Jul 2025 12:00:05 GMT"
    assert http_date(when.replace(tzinfo=None)) == "Tue, 01 Jul 2025 12:00:05 GMT"
    assert parse_http_date("Tue, 01 Jul 2025 12:00:05 GMT") == when.replace(microsecond=0)
    assert parse_http_date("Tuesday, 01-Jul-25 12:00:05 GMT") == when.replace(microsecond=0)
    assert parse_http_date("not a date") is None
    tags = [make_etag(when), make_etag(when, 1), make_etag(when + timedelta(microseconds=1))]
    assert all(re.fullmatch(r"0x[0-9A-F]{15}", t) for t in tags) and len(set(tags)) == 3
    # the service's own example, 2016-09-06T07:02:46.0386857Z, has ETag 0x8D3D623CE295629 (same era)
    assert make_etag(datetime(2016, 9, 6, 7, 2, 46, tzinfo=UTC)).startswith("0x8D3D6")


# --- over a real server -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    srv = DemoServer.start(Path(tmp_path_factory.mktemp("api-errors")))
    yield srv
    srv.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def call(http: httpx.Client, server: DemoServer, method: str, path: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    url = f"{server.url}{path}"
    extra = dict(headers or {})
    if body is not None:
        extra.update({"Content-Type": "application/json; odata=minimalmetadata", "Content-Length": str(len(body))})
    return http.request(method, url, content=body, headers=signed_headers(method, url, headers=extra))


def test_not_found_body_and_headers(http: httpx.Client, server: DemoServer) -> None:
    crid = str(uuid.uuid4())
    r = call(http, server, "GET", "/jobs/nope?api-version=2025-06-01", headers={"client-request-id": crid})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json;odata=minimalmetadata"
    assert r.headers["dataserviceversion"] == "3.0"
    assert UUID.fullmatch(r.headers["request-id"])
    assert r.headers["client-request-id"] == crid
    body = r.json()
    assert body["odata.metadata"] == f"{server.url}/{ERROR_METADATA}"
    assert body["code"] == "JobNotFound"
    rid = r.headers["request-id"]
    assert body["message"]["value"].startswith(f"The specified job does not exist.\nRequestId:{rid}")


def test_success_has_the_same_headers(http: httpx.Client, server: DemoServer) -> None:
    r = call(http, server, "GET", "/jobs/job-01?api-version=1", headers={"client-request-id": "abc"})
    assert r.status_code == 200 and r.headers["client-request-id"] == "abc"
    assert r.headers["etag"].startswith("0x") and r.headers["last-modified"].endswith(" GMT")
    assert UUID.fullmatch(r.headers["request-id"]) and r.headers["dataserviceversion"] == "3.0"
    r2 = call(http, server, "GET", "/jobs/job-01?api-version=1", headers={"client-request-id": "a b\x7f"})
    assert "client-request-id" not in r2.headers and r2.headers["request-id"] != r.headers["request-id"]


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nothing/here?api-version=1", 400, "InvalidUri"),
    ("DELETE", "/jobs?api-version=1", 405, "UnsupportedHttpVerb"),
    ("GET", "/pools?api-version=1", 501, "FeatureNotSupported"),
    ("POST", "/pools/p1/resize?api-version=1", 501, "FeatureNotSupported"),
    ("GET", "/pools/p1/nodes/n1/files/x?api-version=1", 501, "FeatureNotSupported"),
    ("PUT", "/jobschedules/s1?api-version=1", 501, "FeatureNotSupported"),
    ("GET", "/certificates(thumbprintAlgorithm=sha1,thumbprint=ab)?api-version=1", 501, "FeatureNotSupported"),
    ("GET", "/jobs?api-version=1&maxresults=0", 400, "OutOfRangeQueryParameterValue"),
    ("GET", "/jobs?api-version=1&%24filter=nosuch%20eq%201", 400, "InvalidQueryParameterValue"),
])
def test_routing_and_query_errors(http: httpx.Client, server: DemoServer, method: str, path: str, status: int,
                                  code: str) -> None:
    r = call(http, server, method, path)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.headers["content-type"] == "application/json;odata=minimalmetadata"


def test_validation_error_is_what_validate_says(http: httpx.Client, server: DemoServer, tmp_path: Path) -> None:
    doc = {"id": "j1", "poolInfo": {}, "priority": "high", "bogus": 1}
    body = json.dumps(doc).encode()
    r = call(http, server, "POST", "/jobs?api-version=1", body=body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["code"] == "InvalidPropertyValue"
    assert {"key": "PropertyName", "value": "priority"} in error["values"]
    assert {"key": "PropertyName", "value": "bogus"} in error["values"]
    path = tmp_path / "job.json"
    path.write_bytes(body)
    cli = subprocess.run([sys.executable, "-m", "agent", "validate", str(path)], capture_output=True, text=True,
                         check=False)
    assert cli.returncode == 2
    said = cli.stderr.strip().removeprefix(f"batch-agent: {path}: ")
    assert error["message"]["value"].split("\nRequestId:")[0] == said


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "InvalidRequestBody"), (b"", "InvalidRequestBody"), (b"\xff\xfe", "InvalidRequestBody"),
    (b'{"id": "j"}', "MissingRequiredProperty"), (b"[]", "InvalidRequestBody"),
])
def test_bad_bodies(http: httpx.Client, server: DemoServer, body: bytes, code: str) -> None:
    r = call(http, server, "POST", "/jobs?api-version=1", body=body)
    assert (r.status_code, r.json()["code"]) == (400, code), r.text


def test_good_body_and_too_large_body(http: httpx.Client, server: DemoServer) -> None:
    r = call(http, server, "POST", "/jobs?api-version=1", body=b'{"id": "j1", "poolInfo": {"poolId": "p"}}')
    assert r.status_code == 201 and r.content == b"" and r.headers["dataserviceid"].endswith("/jobs/j1")
    big = json.dumps({"id": "j", "poolInfo": {}, "metadata": [{"name": "x", "value": "v" * 2_000_000}]}).encode()
    r = call(http, server, "POST", "/jobs?api-version=1", body=big)
    assert (r.status_code, r.json()["code"]) == (413, "RequestBodyTooLarge")


def test_too_large_chunked_body_without_length(http: httpx.Client, server: DemoServer) -> None:
    url = f"{server.url}/jobs?api-version=1"

    def chunks() -> Iterator[bytes]:
        yield b'{"id": "j", "poolInfo": {}, "displayName": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    headers = signed_headers("POST", url, headers={"Content-Type": "application/json"})
    r = http.post(url, content=chunks(), headers=headers)
    assert (r.status_code, r.json()["code"]) == (413, "RequestBodyTooLarge")


def test_unexpected_exception_is_500_logged_once(http: httpx.Client, server: DemoServer) -> None:
    r = call(http, server, "GET", "/boom?api-version=1")
    assert (r.status_code, r.json()["code"]) == (500, "InternalError")
    assert "Traceback" not in r.text and "planted" not in r.text
    rid = r.headers["request-id"]
    # the server is still answering, and the failure was logged exactly once with its request id
    assert call(http, server, "GET", "/jobs/job-00?api-version=1").status_code == 200
    log = server.stop()
    assert log.count(rid) == 1 and "planted failure" in log
    assert "Exception in ASGI application" not in log
    assert KEY_B64 not in log and "SharedKey" not in log
