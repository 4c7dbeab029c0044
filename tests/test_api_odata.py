"""agent.api.odata: $filter (table-driven, valid and refused), $select, maxresults, paging and an
odata.nextLink that a client can sign and follow as sent (raw REST against a real server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from clients import JOB_COUNT, PAGE_CAP, DemoServer, signed_headers

from agent.api.errors import BatchApiError
from agent.api.odata import (
    decode_token,
    encode_token,
    filterable,
    parse_filter,
    parse_list_query,
    parse_maxresults,
    parse_select,
    project,
)

TASK_FILTERS = {
    "id": filterable("string", "eq", "ne", "gt", "ge", "lt", "le", "startswith"),
    "state": filterable("string", "eq", "ne"),
    "executionInfo/exitCode": filterable("int"),
    "executionInfo/result": filterable("string", "eq", "ne"),
    "stateTransitionTime": filterable("datetime"),
    "isDone": filterable("bool", "eq", "ne"),
}


def task(i: int, state: str, exit_code: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": f"render-{i}", "state": state, "isDone": state == "completed",
                           "stateTransitionTime": f"2025-07-01T12:0{i}:00.0000000Z"}
    if exit_code is not None:
        out["executionInfo"] = {"exitCode": exit_code, "result": "success" if exit_code == 0 else "failure"}
    return out


TASKS = [task(0, "active"), task(1, "running"), task(2, "completed", 0), task(3, "completed", 2),
         task(4, "completed", -1), task(5, "Preparing")]


@pytest.mark.parametrize(("text", "ids"), [
    ("state eq 'completed'", [2, 3, 4]),
    ("state eq 'COMPLETED'", [2, 3, 4]),
    ("state eq 'preparing'", [5]),
    ("state ne 'completed'", [0, 1, 5]),
    ("state eq 'active' or state eq 'running'", [0, 1]),
    ("(state eq 'running') and startswith(id, 'render')", [1]),
    ("state eq 'completed' and (executionInfo/exitCode lt 0 or executionInfo/exitCode gt 0)", [3, 4]),
    ("(executionInfo/exitCode lt 0) or (executionInfo/exitCode gt 0)", [3, 4]),
    ("executionInfo/result eq 'success'", [2]),
    ("not (state eq 'completed')", [0, 1, 5]),
    ("stateTransitionTime gt DateTime'2025-07-01T12:03:00Z'", [4, 5]),
    ("stateTransitionTime le DateTime'Tue, 01 Jul 2025 12:01:00 GMT'", [0, 1]),
    ("id eq 'render-3'", [3]),
    ("id ge 'render-4'", [4, 5]),
    ("isDone eq true", [2, 3, 4]),
    ("  state   eq   'active'  ", [0]),
    ("startswith(id, 'nope')", []),
])
def test_filter_matches(text: str, ids: list[int]) -> None:
    expr = parse_filter(text, TASK_FILTERS)
    assert expr is not None
    assert [i for i, t in enumerate(TASKS) if expr.matches(t)] == ids


def test_quote_escape_in_literals() -> None:
    expr = parse_filter("id eq 'it''s'", {"id": filterable("string")})
    assert expr is not None and expr.matches({"id": "it's"}) and not expr.matches({"id": "its"})


@pytest.mark.parametrize(("text", "reason"), [
    ("State eq 'active'", "cannot be filtered on"),
    ("state gt 'active'", "does not support gt"),
    ("state eq active", "takes a quoted string"),
    ("state eq 'active' and", "expected a property name or operator, found the end"),
    ("(state eq 'active'", "expected ')', found the end"),
    ("state eq 'active')", "unexpected ')'"),
    ("state like 'a'", "is not an operator"),
    ("executionInfo/exitCode eq '1'", "takes an integer"),
    ("stateTransitionTime gt DateTime'soon'", "is not a date"),
    ("state eq 'active' ; drop", "unexpected text"),
    ("startswith(state, 'a')", "does not support startswith"),
])
def test_filter_refused(text: str, reason: str) -> None:
    with pytest.raises(BatchApiError) as info:
        parse_filter(text, TASK_FILTERS)
    err = info.value
    assert (err.status, err.code) == (400, "InvalidQueryParameterValue")
    values = dict(err.values)
    assert values["QueryParameterName"] == "$filter" and values["QueryParameterValue"] == text
    assert reason in values["Reason"], values["Reason"]


def test_filter_size_and_depth_are_bounded() -> None:
    deep = "(" * 40 + "state eq 'active'" + ")" * 40
    for text, reason in ((deep, "nested deeper"), ("not " * 40 + "state eq 'a'", "nested deeper"),
                         ("state eq '" + "a" * 5000 + "'", "longer than")):
        with pytest.raises(BatchApiError) as info:
            parse_filter(text, TASK_FILTERS)
        assert reason in dict(info.value.values)["Reason"]
    assert parse_filter("(" * 10 + "state eq 'active'" + ")" * 10, TASK_FILTERS) is not None


def test_blank_filter_is_none() -> None:
    assert parse_filter(None, TASK_FILTERS) is None and parse_filter("  ", TASK_FILTERS) is None


def test_select_and_project() -> None:
    assert parse_select("id, state ,", {"id", "state"}) == ("id", "state")
    assert parse_select(None) is None
    with pytest.raises(BatchApiError) as info:
        parse_select("id,nope", {"id"})
    assert info.value.code == "InvalidQueryParameterValue"
    item = {"odata.metadata": "m", "id": "a", "state": "s", "executionInfo": {"exitCode": 0}}
    assert project(item, ("id",)) == {"odata.metadata": "m", "id": "a"}
    assert project(item, None) == item


@pytest.mark.parametrize(("text", "value", "code"), [
    (None, 1000, None), ("", 1000, None), ("1", 1, None), ("1000", 1000, None),
    ("0", None, "OutOfRangeQueryParameterValue"), ("1001", None, "OutOfRangeQueryParameterValue"),
    ("ten", None, "InvalidQueryParameterValue"), ("-5", None, "OutOfRangeQueryParameterValue"),
])
def test_maxresults(text: str | None, value: int | None, code: str | None) -> None:
    if code is None:
        assert parse_maxresults(text) == value
    else:
        with pytest.raises(BatchApiError) as info:
            parse_maxresults(text)
        assert info.value.code == code


def test_paging_walks_every_item_once() -> None:
    items = [{"id": f"t{i:03d}", "state": "active" if i % 3 else "completed"} for i in range(50)]
    url = "http://node:8080/jobs/j/tasks?api-version=2025-06-01&%24filter=state%20eq%20%27active%27&maxresults=7"
    seen: list[str] = []
    pages = 0
    while url:
        parts = urlsplit(url)
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        query = parse_list_query(url, params, filters=TASK_FILTERS, select={"id", "state"})
        page = query.page(items, key=lambda t: t["id"], cap=1000)
        assert len(page.items) <= 7
        seen += [t["id"] for t in page.items]
        pages += 1
        url = page.next_link or ""
        if url:
            link = urlsplit(url)
            assert (link.scheme, link.netloc, link.path) == ("http", "node:8080", "/jobs/j/tasks")
            kept = parse_qs(link.query)
            assert kept["$filter"] == ["state eq 'active'"] and kept["maxresults"] == ["7"]
    assert seen == [t["id"] for t in items if t["state"] == "active"]
    assert pages == 5  # 33 active items, 7 per page


def test_server_cap_and_tokens() -> None:
    query = parse_list_query("http://n/jobs", {})
    page = query.page([{"id": str(i)} for i in range(5)], key=lambda t: t["id"], cap=2)
    assert [t["id"] for t in page.items] == ["0", "1"] and page.next_link is not None
    assert "$skiptoken=" in page.next_link
    assert decode_token(encode_token("job/ü 1")) == "job/ü 1"
    with pytest.raises(BatchApiError):
        decode_token("@@@")
    with pytest.raises(BatchApiError) as info:
        parse_list_query("http://n/x", {"$filter": "a eq 1"})
    assert info.value.code == "UnsupportedQueryParameter"
    body = page.body("http://n/$metadata#jobs")
    assert list(body) == ["odata.metadata", "value", "odata.nextLink"]


# --- over a real server -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    srv = DemoServer.start(Path(tmp_path_factory.mktemp("api-odata")))
    yield srv
    srv.stop()


def test_next_link_second_page_verifies(server: DemoServer) -> None:
    """Follow odata.nextLink signing its query exactly as sent (what every client does)."""
    url: str | None = (f"{server.url}/jobs?api-version=2025-06-01&%24filter=state%20eq%20%27active%27"
                       "%20or%20startswith(id%2C%20%27job-1%27)&%24select=id,state&maxresults=4")
    ids: list[str] = []
    pages = 0
    with httpx.Client(timeout=10) as http:
        while url:
            r = http.get(url, headers=signed_headers("GET", url))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["odata.metadata"] == f"{server.url}/$metadata#jobs"
            assert all(set(j) == {"id", "state"} for j in body["value"])
            ids += [j["id"] for j in body["value"]]
            pages += 1
            url = body.get("odata.nextLink")
    wanted = [f"job-{i:02d}" for i in range(JOB_COUNT) if i % 2 == 0 or 10 <= i <= 19]
    assert ids == wanted and pages == -(-len(wanted) // 4)


def test_server_page_cap_applies_without_maxresults(server: DemoServer) -> None:
    url = f"{server.url}/jobs?api-version=1"
    with httpx.Client(timeout=10) as http:
        body = http.get(url, headers=signed_headers("GET", url)).json()
    assert len(body["value"]) == PAGE_CAP and "$skiptoken=" in body["odata.nextLink"]
