"""The real Azure Batch clients (installed by scripts/clients.sh) and a demo local-API server.

``ensure_clients()`` runs ``scripts/clients.sh`` once per session (idempotent: under a second
when the venvs exist, ~2 minutes cold) and returns where the three clients live:

    Clients.sdk15   python of the azure-batch 15.1.0 venv
    Clients.sdk14   python of the azure-batch 14.2.0 (msrest) venv
    Clients.az      the az executable of the azure-cli 2.91.0 venv (azure-batch 15.0.0b1)

``DemoServer.start(tmp)`` runs ``agent.api.app.create_app`` under uvicorn in a child process on
a socket the parent bound on 127.0.0.1:0 (so the port is known and connections queue before the
child accepts: nothing to wait for). Its routes exist only to prove the shared edge:

    GET  /jobs                  23 fixed jobs (job-00 .. job-22; even ones active), $filter on
                                id/state, $select, maxresults, pages of at most 10 (page_cap)
    GET  /jobs/{jobId}          one of them, else 404 JobNotFound
    POST /jobs                  body validated by agent.spec (400 with the JSON path), else 201
    GET  /jobs/{jobId}/tasks    an empty list (a task token's own job)
    GET  /boom                  raises: 500 InternalError

Run as ``python tests/clients.py serve --fd N --account A --key-file F --token-secret-file S``.
The child's stderr (its logs, JSON, debug level) goes to a file the tests read.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CLIENTS_SH = REPO_ROOT / "scripts" / "clients.sh"
CLIENTS_TIMEOUT_S = 900

ACCOUNT = "devaccount"
KEY_B64 = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
TOKEN_SECRET = b"t" * 32
JOB_COUNT = 23
PAGE_CAP = 10


class ClientsError(Exception):
    """scripts/clients.sh failed; the message carries its output."""


@dataclass(frozen=True, slots=True)
class Clients:
    sdk15: Path
    sdk14: Path
    az: Path
    install_seconds: float


_clients: Clients | ClientsError | None = None


def ensure_clients() -> Clients:
    """Install (or find) the three clients once per process."""
    global _clients
    if _clients is None:
        import time

        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(CLIENTS_SH)], capture_output=True, text=True,
                              timeout=CLIENTS_TIMEOUT_S, check=False)
        where = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
        if proc.returncode != 0 or not {"sdk15", "sdk14", "azcli"} <= set(where):
            _clients = ClientsError(f"scripts/clients.sh exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        else:
            _clients = Clients(Path(where["sdk15"]) / "bin" / "python", Path(where["sdk14"]) / "bin" / "python",
                               Path(where["azcli"]) / "bin" / "az", time.monotonic() - t0)
    if isinstance(_clients, ClientsError):
        raise _clients
    return _clients


def signed_headers(method: str, url: str, *, key_b64: str = KEY_B64, account: str = ACCOUNT,
                   headers: dict[str, str] | None = None, ocp_date: datetime | None = None) -> dict[str, str]:
    """Headers (with ``ocp-date`` and a SharedKey ``Authorization``) for a raw httpx request to ``url``.

    Signs the path and query exactly as httpx will send them, with the module under test's
    ``string_to_sign`` (the real clients check that function independently).
    """
    import httpx

    from agent.api.auth import SignedRequest, sign, string_to_sign
    from agent.api.formats import http_date

    out = {"ocp-date": http_date(ocp_date or datetime.now(UTC)), **(headers or {})}
    raw = httpx.URL(url).raw_path.decode()
    path, _, query = raw.partition("?")
    req = SignedRequest(method, path, query, {k.lower(): v for k, v in out.items()})
    out["Authorization"] = f"SharedKey {account}:{sign(base64.b64decode(key_b64), string_to_sign(req, account))}"
    return out


# --- the demo server --------------------------------------------------------------------------

@dataclass
class DemoServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, tmp: Path) -> DemoServer:
        tmp.mkdir(parents=True, exist_ok=True)
        key_file = tmp / "account.key"
        key_file.write_text(KEY_B64)
        secret_file = tmp / "token.secret"
        secret_file.write_bytes(TOKEN_SECRET)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        log = tmp / "server.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, __file__, "serve", "--fd", str(sock.fileno()), "--account", ACCOUNT,
                 "--key-file", str(key_file), "--token-secret-file", str(secret_file)],
                pass_fds=[sock.fileno()], stdout=err, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        sock.close()  # the child holds its own copy
        return cls(f"http://127.0.0.1:{port}", proc, log)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.log.read_text(errors="replace")


def demo_jobs(base: str) -> list[dict[str, Any]]:
    from agent.api.formats import UNLIMITED_TEXT, format_time, make_etag

    t0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)
    jobs = []
    for i in range(JOB_COUNT):
        created = t0 + timedelta(minutes=i)
        jobs.append({
            "id": f"job-{i:02d}", "url": f"{base}/jobs/job-{i:02d}", "eTag": make_etag(created),
            "lastModified": format_time(created), "creationTime": format_time(created),
            "state": "active" if i % 2 == 0 else "completed", "stateTransitionTime": format_time(created),
            "priority": i, "poolInfo": {"poolId": "local"},
            "constraints": {"maxWallClockTime": UNLIMITED_TEXT, "maxTaskRetryCount": 0},
            "executionInfo": {"startTime": format_time(created), "poolId": "local"},
        })
    return jobs


def demo_app(account: str, key_b64: str, token_secret: bytes) -> Any:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from agent.api import app as api
    from agent.api.auth import AccountKey, Authenticator, HmacTaskTokens, SharedKeyVerifier
    from agent.api.bodies import read_document
    from agent.api.errors import BatchApiError
    from agent.api.formats import entity_headers, http_date
    from agent.api.odata import filterable, parse_list_query
    from agent.logs import get_logger

    log = get_logger(component="demo")

    filters = {"id": filterable("string", "eq", "ne", "gt", "ge", "lt", "le", "startswith"),
               "state": filterable("string", "eq", "ne")}

    async def list_jobs(request: Request) -> Response:
        query = parse_list_query(api.request_url(request), request.query_params, filters=filters,
                                 select=demo_jobs("")[0].keys())
        page = query.page(demo_jobs(api.base_url(request)), key=lambda j: j["id"], cap=PAGE_CAP)
        log.info("demo list page", after=query.after, count=len(page.items),
                 agent=request.headers.get("user-agent", ""))
        return api.json_response(page.body(api.metadata_url(request, "jobs")))

    async def get_job(request: Request) -> Response:
        job_id = request.path_params["jobId"]
        for job in demo_jobs(api.base_url(request)):
            if job["id"].casefold() == job_id.casefold():
                body = {"odata.metadata": api.metadata_url(request, "jobs/@Element"), **job}
                return api.json_response(body, headers=entity_headers(job["eTag"], datetime(2025, 7, 1, 12, 0,
                                                                                          tzinfo=UTC)))
        raise BatchApiError("JobNotFound")

    async def add_job(request: Request) -> Response:
        doc = await read_document(request, "job")
        url = f"{api.base_url(request)}/jobs/{doc.model.id}"  # type: ignore[union-attr]
        now = datetime.now(UTC)
        return api.empty_response(201, {"DataServiceId": url, "Location": url, "ETag": "0x1",
                                        "Last-Modified": http_date(now)})

    async def list_tasks(request: Request) -> Response:
        return api.json_response({"value": []})

    async def boom(request: Request) -> Response:
        raise RuntimeError("planted failure")

    settings = api.ApiSettings(Authenticator(
        SharedKeyVerifier([AccountKey.from_base64(account, key_b64)]), HmacTaskTokens(token_secret)))
    return api.create_app(settings, [
        Route("/jobs", list_jobs, methods=["GET"]), Route("/jobs", add_job, methods=["POST"]),
        Route("/jobs/{jobId}", get_job, methods=["GET"]),
        Route("/jobs/{jobId}/tasks", list_tasks, methods=["GET"]), Route("/boom", boom, methods=["GET"]),
    ])


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--token-secret-file", type=Path, required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    import uvicorn

    from agent import logs

    logs.configure(json=True, level="debug")
    app = demo_app(args.account, args.key_file.read_text().strip(), args.token_secret_file.read_bytes())
    sock = socket.socket(fileno=args.fd)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _serve(sys.argv[1:])
