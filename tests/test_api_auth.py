"""agent.api.auth: Shared Key as the clients sign (fixed vectors from sdk-compat.md §3), the date
window, the documented variants, keys, task tokens and their scope; then the same over a real
uvicorn server (unsigned 401, Bearer tokens scoped to their job, no secret in the server log)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from clients import ACCOUNT, KEY_B64, TOKEN_SECRET, DemoServer, signed_headers

from agent.api.auth import (
    AccountKey,
    Authenticator,
    HmacTaskTokens,
    Principal,
    SharedKeyVerifier,
    SignedRequest,
    check_scope,
    sign,
    string_to_sign,
)
from agent.api.errors import BatchApiError
from agent.errors import ConfigError

KEY = base64.b64decode(KEY_B64)
VECTOR_DATE = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
OCP = "Tue, 01 Jul 2025 12:00:00 GMT"

# (request, the string azure-batch 15.1.0 signed, its signature): captured by sdk_probe/testvector.py
VECTORS = [
    (SignedRequest("POST", "/jobs/job1/tasks", "api-version=2025-06-01", {
        "content-type": "application/json; odata=minimalmetadata", "content-length": "54",
        "client-request-id": "00000000-0000-0000-0000-000000000001", "ocp-date": OCP,
        "accept": "*/*", "user-agent": "azsdk-python-batch/15.1.0"}),
     "POST\n\n\n54\n\napplication/json; odata=minimalmetadata\n\n\n\n\n\n\nocp-date:Tue, 01 Jul 2025 12:00:00 GMT\n"
     "/devaccount/jobs/job1/tasks\napi-version:2025-06-01",
     "m3yUZwpqy12tJkrzQnhsBChsAmlRNP9kklIBaJQkl20="),
    (SignedRequest("GET", "/jobs/job1/tasks/task1", "api-version=2025-06-01", {
        "accept": "application/json", "client-request-id": "00000000-0000-0000-0000-000000000002",
        "ocp-date": OCP}),
     "GET\n\n\n\n\n\n\n\n\n\n\n\nocp-date:Tue, 01 Jul 2025 12:00:00 GMT\n/devaccount/jobs/job1/tasks/task1\n"
     "api-version:2025-06-01",
     "HxabcOp5Hl1zndfLBxdbonB+Txh3rgsKzL0qyHhDAIE="),
    (SignedRequest("GET", "/jobs/job1/tasks/task1", "api-version=2025-06-01&timeOut=10", {
        "accept": "application/json", "client-request-id": "00000000-0000-0000-0000-000000000003",
        "ocp-date": OCP}),
     "GET\n\n\n\n\n\n\n\n\n\n\n\nocp-date:Tue, 01 Jul 2025 12:00:00 GMT\n/devaccount/jobs/job1/tasks/task1\n"
     "api-version:2025-06-01\ntimeOut:10",
     "syx+qd57AgSVjFPxOszEZs/zj5QgujlD5S1f3tV2+eQ="),
]


def verifier(now: datetime = VECTOR_DATE, **kw: object) -> SharedKeyVerifier:
    return SharedKeyVerifier([AccountKey.from_base64(ACCOUNT, KEY_B64)], clock=lambda: now, **kw)  # type: ignore[arg-type]


def failure(fn: object, *args: object) -> BatchApiError:
    with pytest.raises(BatchApiError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize(("req", "expected", "signature"), VECTORS)
def test_sdk_vectors_string_and_signature(req: SignedRequest, expected: str, signature: str) -> None:
    assert string_to_sign(req, ACCOUNT) == expected
    assert sign(KEY, expected) == signature
    assert verifier().verify(req, f"{ACCOUNT}:{signature}") == Principal("account", account=ACCOUNT)


def test_date_window_is_15_minutes_either_side() -> None:
    req, _, sig = VECTORS[1]
    for offset in (timedelta(minutes=-14, seconds=-59), timedelta(minutes=14, seconds=59)):
        verifier(VECTOR_DATE + offset).verify(req, f"{ACCOUNT}:{sig}")
    for offset in (timedelta(minutes=16), timedelta(minutes=-16)):
        err = failure(verifier(VECTOR_DATE + offset).verify, req, f"{ACCOUNT}:{sig}")
        assert (err.status, err.code) == (403, "AuthenticationFailed")
        assert "too old" in dict(err.values)["AuthenticationErrorDetail"]
    # the window is configurable; None turns it off (old fixed-date vectors)
    verifier(VECTOR_DATE + timedelta(days=900), max_skew=None).verify(req, f"{ACCOUNT}:{sig}")
    verifier(VECTOR_DATE + timedelta(minutes=50), max_skew=timedelta(hours=1)).verify(req, f"{ACCOUNT}:{sig}")


def test_date_header_used_without_ocp_date_and_required() -> None:
    headers = {"date": OCP}
    req = SignedRequest("GET", "/jobs", "api-version=x", headers)
    verifier().verify(req, f"{ACCOUNT}:{sign(KEY, string_to_sign(req, ACCOUNT))}")
    bare = SignedRequest("GET", "/jobs", "", {})
    err = failure(verifier().verify, bare, f"{ACCOUNT}:{sign(KEY, string_to_sign(bare, ACCOUNT))}")
    assert (err.status, err.code) == (403, "AuthenticationFailed")
    junk = SignedRequest("GET", "/jobs", "", {"ocp-date": "yesterday"})
    assert failure(verifier().verify, junk, f"{ACCOUNT}:x").code == "AuthenticationFailed"


def test_wrong_key_unknown_account_and_malformed_header() -> None:
    req, expected, _ = VECTORS[0]
    other = sign(b"k" * 32, expected)
    for credentials in (f"{ACCOUNT}:{other}", f"someone:{sign(KEY, expected)}", f"{ACCOUNT}:"[:-1] + ":AAAA"):
        err = failure(verifier().verify, req, credentials)
        assert (err.status, err.code) == (403, "AuthenticationFailed")
        assert other not in str(err.values) and expected not in str(err.values)
    for credentials in ("no-colon", ":sig", f"{ACCOUNT}:"):
        err = failure(verifier().verify, req, credentials)
        assert (err.status, err.code) == (400, "InvalidAuthenticationInfo")


def test_documented_variants_verify() -> None:
    """Lower-cased query names with every value (docs / Java), a zero length signed empty (storage
    rule), the account lower-cased: all accepted; the clients' own rule stays the first one tried."""
    req = SignedRequest("POST", "/jobs/j/tasks/t/terminate", "api-version=1&timeout=20&a=2&a=1",
                        {"content-length": "0", "ocp-date": OCP, "date": OCP})
    docs = ("POST\n\n\n\n\n\n\n\n\n\n\n\nocp-date:" + OCP + "\n/devaccount/jobs/j/tasks/t/terminate"
            "\na:1,2\napi-version:1\ntimeout:20")
    assert string_to_sign(req, "DevAccount", docs_rule=True, zero_length_empty=True) == docs
    v = verifier()
    for text in (docs, string_to_sign(req, ACCOUNT), string_to_sign(req, ACCOUNT, zero_length_empty=True)):
        v.verify(req, f"{ACCOUNT}:{sign(KEY, text)}")
    # a body-less POST that sent no Content-Length is signed as "0" (what requests then sends)
    bare = SignedRequest("POST", "/jobs/j/disable", "", {"ocp-date": OCP})
    assert string_to_sign(bare, ACCOUNT).startswith("POST\n\n\n0\n")
    assert string_to_sign(SignedRequest("HEAD", "/x", "", {"ocp-date": OCP}), ACCOUNT).startswith("HEAD\n\n\n\n")


def test_path_signed_as_sent_and_query_decoded() -> None:
    req = SignedRequest("GET", "/jobs/a%20b/tasks", "%24filter=state%20eq%20%27active%27&maxresults=5&empty=",
                        {"ocp-date": OCP, "x-other": "ignored", "ocp-b": "2", "ocp-a": "1"})
    text = string_to_sign(req, ACCOUNT)
    assert text.endswith("ocp-a:1\nocp-b:2\nocp-date:" + OCP + "\n/devaccount/jobs/a%20b/tasks"
                         "\n$filter:state eq 'active'\nmaxresults:5")
    verifier().verify(req, f"{ACCOUNT}:{sign(KEY, text)}")


def test_account_key_parsing_never_echoes_the_key() -> None:
    assert repr(AccountKey.from_base64(ACCOUNT, KEY_B64)).count(KEY_B64) == 0
    assert AccountKey.from_base64(ACCOUNT, f" {KEY_B64[:20]}\n{KEY_B64[20:]} ").key == KEY
    for bad in ("not base64!!", "QUJD", KEY_B64[:-2] + "*="):
        with pytest.raises(ConfigError) as info:
            AccountKey.from_base64(ACCOUNT, bad, source="--account-key")
        assert bad not in str(info.value) and "--account-key" in str(info.value)
    with pytest.raises(ConfigError):
        AccountKey.from_base64("", KEY_B64)


def test_authenticator_schemes() -> None:
    auth = Authenticator(verifier(), HmacTaskTokens(TOKEN_SECRET))
    err = failure(auth.authenticate, SignedRequest("GET", "/jobs", "", {}))
    assert (err.status, err.code) == (401, "AuthenticationFailed")
    err = failure(auth.authenticate, SignedRequest("GET", "/jobs", "", {"authorization": "Basic dTpw"}))
    assert (err.status, err.code) == (400, "InvalidAuthenticationInfo")
    no_tokens = Authenticator(verifier())
    err = failure(no_tokens.authenticate, SignedRequest("GET", "/jobs", "", {"authorization": "Bearer x"}))
    assert err.code == "InvalidAuthenticationInfo"


# --- task tokens ------------------------------------------------------------------------------

def test_task_token_round_trip_and_tampering() -> None:
    now = [VECTOR_DATE]
    tokens = HmacTaskTokens(TOKEN_SECRET, clock=lambda: now[0])
    token = tokens.issue("Job-A", "task-1", lifetime=timedelta(hours=1))
    assert token.startswith("bat1.") and "Job-A" not in token
    assert tokens.verify_token(token) == Principal("task", job_id="Job-A", task_id="task-1")
    prefix, payload, mac = token.split(".")
    forged_payload = base64.urlsafe_b64encode(b'{"job":"other","task":"t","iat":1,"exp":null}').rstrip(b"=").decode()
    for bad in (f"{prefix}.{forged_payload}.{mac}", f"{prefix}.{payload}.{mac[:-2]}AA", f"bat2.{payload}.{mac}",
                "garbage", HmacTaskTokens(b"s" * 32).issue("Job-A", "task-1")):
        err = failure(tokens.verify_token, bad)
        assert (err.status, err.code) == (403, "AuthenticationFailed")
    now[0] += timedelta(hours=1)
    assert "expired" in dict(failure(tokens.verify_token, token).values)["AuthenticationErrorDetail"]
    with pytest.raises(ConfigError):
        HmacTaskTokens(b"short")


def test_task_token_liveness_hook() -> None:
    ended = {("j", "done")}
    tokens = HmacTaskTokens(TOKEN_SECRET, is_live=lambda c: (c.job_id, c.task_id) not in ended)
    tokens.verify_token(tokens.issue("j", "running"))
    assert failure(tokens.verify_token, tokens.issue("j", "done")).code == "AuthenticationFailed"


@pytest.mark.parametrize(("path", "allowed"), [
    ("/jobs/job-a", True), ("/jobs/JOB-A/tasks", True), ("/jobs/job-a/addtaskcollection", True),
    ("/jobs/job%2Da/tasks/t/files/x", True), ("/jobs/job-b/tasks", False), ("/jobs", False),
    ("/jobs/", False), ("/pools/p", False), ("/jobs-a", False),
])
def test_scope_of_a_task_token(path: str, allowed: bool) -> None:
    task = Principal("task", job_id="job-a", task_id="t")
    check_scope(Principal("account", account=ACCOUNT), path)
    if allowed:
        check_scope(task, path)
    else:
        err = failure(check_scope, task, path)
        assert (err.status, err.code) == (403, "InsufficientAccountPermissions")


# --- over a real server -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    srv = DemoServer.start(Path(tmp_path_factory.mktemp("api-auth")))
    yield srv
    srv.stop()


def test_unsigned_wrong_and_signed_over_http(server: DemoServer) -> None:
    url = f"{server.url}/jobs/job-00?api-version=2025-06-01"
    with httpx.Client(timeout=10) as http:
        r = http.get(url)
        assert r.status_code == 401 and r.json()["code"] == "AuthenticationFailed"
        assert "SharedKey" in r.headers["www-authenticate"]
        r = http.get(url, headers=signed_headers("GET", url, key_b64=base64.b64encode(b"w" * 32).decode()))
        assert r.status_code == 403 and r.json()["code"] == "AuthenticationFailed"
        stale = datetime.now(UTC) - timedelta(minutes=20)
        r = http.get(url, headers=signed_headers("GET", url, ocp_date=stale))
        assert r.status_code == 403 and "too old" in r.json()["values"][0]["value"]
        r = http.get(url, headers=signed_headers("GET", url))
        assert r.status_code == 200 and r.json()["id"] == "job-00"


def test_bearer_token_only_for_its_own_job(server: DemoServer) -> None:
    token = HmacTaskTokens(TOKEN_SECRET).issue("job-04", "t1")
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{server.url}/jobs/job-04/tasks?api-version=1", headers=auth).status_code == 200
        assert http.get(f"{server.url}/jobs/JOB-04?api-version=1", headers=auth).status_code == 200
        for method, path in (("GET", "/jobs/job-05/tasks"), ("GET", "/jobs"), ("POST", "/jobs"),
                             ("GET", "/pools/p")):
            r = http.request(method, f"{server.url}{path}?api-version=1", headers=auth, content=b"{}")
            assert (r.status_code, r.json()["code"]) == (403, "InsufficientAccountPermissions"), path
        r = http.get(f"{server.url}/jobs/job-04?api-version=1", headers={"Authorization": f"Bearer {token}x"})
        assert (r.status_code, r.json()["code"]) == (403, "AuthenticationFailed")
    log = server.stop()
    for secret in (token, KEY_B64, token.split(".")[2]):
        assert secret not in log
