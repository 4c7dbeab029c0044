"""Storage throughput: batch-agent's resource-file and output-file paths against raw httpx and
the azure-storage-blob SDK's defaults, all measured in one run against a running Azurite.

    . /tmp/batch-agent-infra/env.sh   # or export AZURITE_BLOB_URL / AZURITE_ACCOUNT / AZURITE_KEY
    .venv/bin/python bench/bench_storage.py [--large-mb 200] [--small 1000] [--small-kb 10] [--rounds 3]

Starts nothing: it needs Azurite up (``scripts/infra-up.sh``). Cases:

* large blob, each way: agent (``stage_resource_files`` with one ``httpUrl`` / ``upload_outputs``
  with one literal pattern) vs raw httpx (a streamed GET to a file; a single Put Blob with
  Content-Length, 4 MiB body pieces) vs the SDK's defaults (``download_blob().readinto``,
  ``upload_blob``).
* many small blobs, each way: agent (a container listing + downloads; a ``*`` pattern) vs the
  SDK sequential, the SDK on 8 threads and httpx sequential. Every small-download case lists the
  container first, as the agent must.
* as root, the agent's upload as a nonadmin task user (files read through the setuid helper).

Each case runs ``--rounds`` times, interleaved with the others; rates and ratios use the median
round (the best round is shown too): on 2 cores shared with Azurite and whatever else runs, single
rounds are noisy. Ratios: agent / raw httpx for the large blob (aim >= 0.9); agent / best baseline
for small files (aim >= 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pwd
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from azure.storage.blob import (  # noqa: E402
    BlobServiceClient,
    ContainerSasPermissions,
    ContentSettings,
    generate_container_sas,
)

from agent.blob import BlobTransport, blob_url  # noqa: E402
from agent.config import StorageConfig  # noqa: E402
from agent.runner import TaskUser  # noqa: E402
from agent.spec import OutputFile, ResourceFile  # noqa: E402
from agent.staging import StagingResult, stage_resource_files, transport_config  # noqa: E402
from agent.upload import UploadResult, upload_outputs  # noqa: E402

MiB = 1024 * 1024
ME = TaskUser("agent", None, None)


def azurite_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("AZURITE_")}
    path = Path(os.environ.get("INFRA_DIR", "/tmp/batch-agent-infra")) / "env.sh"
    if "AZURITE_BLOB_URL" not in env and path.is_file():
        for line in path.read_text().splitlines():
            words = shlex.split(line, comments=True)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, value = words[1].split("=", 1)
                env.setdefault(key, value)
    missing = [k for k in ("AZURITE_BLOB_URL", "AZURITE_ACCOUNT", "AZURITE_KEY") if k not in env]
    if missing:
        raise SystemExit(f"Azurite is not configured ({', '.join(missing)} missing): run scripts/infra-up.sh")
    return env


class Bench:
    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.account, self.key = env["AZURITE_ACCOUNT"], env["AZURITE_KEY"]
        self.endpoint = env["AZURITE_BLOB_URL"]
        conn = (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.endpoint};")
        self.svc = BlobServiceClient.from_connection_string(conn)
        self.work = work
        self.containers: list[str] = []
        self.storage = StorageConfig(backoff=0.0)          # the config's default concurrency

    def container(self) -> tuple[str, str]:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        self.svc.create_container(name)
        self.containers.append(name)
        sas = generate_container_sas(self.account, name, account_key=self.key,
                                     permission=ContainerSasPermissions(read=True, write=True, create=True,
                                                                        list=True, delete=True),
                                     expiry=datetime.now(UTC) + timedelta(hours=2))
        return name, f"{self.endpoint}/{name}?{sas}"

    def cleanup(self) -> None:
        for name in self.containers:
            self.svc.delete_container(name)

    def fresh_dir(self, label: str) -> Path:
        path = self.work / f"{label}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        os.chmod(path, 0o755)
        return path

    # --- agent ------------------------------------------------------------------------------------
    async def _agent_download(self, files: list[ResourceFile], dest: Path, storage: StorageConfig) -> None:
        async with BlobTransport(transport_config(storage)) as transport:
            result = await stage_resource_files(files, dest, user=ME, transport=transport, storage=storage)
        assert isinstance(result, StagingResult), result

    def agent_download(self, files: list[ResourceFile], dest: Path, concurrency: int | None = None) -> None:
        asyncio.run(self._agent_download(files, dest, self.with_concurrency(concurrency)))

    def with_concurrency(self, concurrency: int | None) -> StorageConfig:
        return self.storage if concurrency is None else replace(self.storage, concurrency=concurrency)

    async def _agent_upload(self, outputs: list[OutputFile], wd: Path, user: TaskUser,
                            storage: StorageConfig) -> int:
        task_dir = self.fresh_dir("updir")
        if user.uid is not None:
            os.chown(task_dir, user.uid, user.gid or -1)
        async with BlobTransport(transport_config(storage)) as transport:
            result = await upload_outputs(outputs, exit_code=0, wd=wd, task_dir=task_dir, env={}, user=user,
                                          transport=transport, concurrency=storage.concurrency)
        assert isinstance(result, UploadResult), result
        return result.files

    def agent_upload(self, outputs: list[OutputFile], wd: Path, user: TaskUser = ME,
                     concurrency: int | None = None) -> None:
        asyncio.run(self._agent_upload(outputs, wd, user, self.with_concurrency(concurrency)))


def out(pattern: str, sas: str, path: str | None = None) -> OutputFile:
    return OutputFile.model_validate({"filePattern": pattern, "destination": {"container": {
        "containerUrl": sas, **({"path": path} if path else {})}}, "uploadOptions": {"uploadCondition":
                                                                                     "taskcompletion"}})


# --- baselines ------------------------------------------------------------------------------------

def httpx_get(client: httpx.Client, url: str, dest: Path) -> None:
    with client.stream("GET", url) as resp, open(dest, "wb") as f:
        resp.raise_for_status()
        for chunk in resp.iter_raw(MiB):
            f.write(chunk)


def httpx_put(client: httpx.Client, url: str, src: Path) -> None:
    size = src.stat().st_size

    def body() -> Any:
        with open(src, "rb") as f:
            while chunk := f.read(4 * MiB):
                yield chunk

    resp = client.put(url, content=body(),
                      headers={"x-ms-blob-type": "BlockBlob", "Content-Length": str(size)})
    resp.raise_for_status()


def httpx_list(client: httpx.Client, sas: str, prefix: str) -> list[str]:
    names: list[str] = []
    marker = ""
    while True:
        query = urlencode({"restype": "container", "comp": "list", "prefix": prefix,
                           **({"marker": marker} if marker else {})})
        resp = client.get(f"{sas}&{query}")          # params= would drop the SAS query
        resp.raise_for_status()
        root = ET.fromstring(resp.content)
        names += [n.text or "" for n in root.iterfind("Blobs/Blob/Name")]
        marker = root.findtext("NextMarker") or ""
        if not marker:
            return names


def run_rounds(cases: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            start = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - start)
    return times


def nobody() -> TaskUser | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return TaskUser("nobody", entry.pw_uid, entry.pw_gid, (entry.pw_gid,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large-mb", type=int, default=200)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--small-kb", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tuned", type=int, default=2 * (os.cpu_count() or 1),
                        help="the second agent concurrency measured for small files (default 2 x cores)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    os.chmod(base, 0o755)
    bench = Bench(azurite_env(), base)
    try:
        report(bench, args)
    finally:
        bench.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def report(bench: Bench, args: argparse.Namespace) -> None:
    size = args.large_mb * MiB
    src_dir = bench.fresh_dir("src")
    big = src_dir / "big.bin"
    with open(big, "wb") as f:
        for _ in range(args.large_mb):
            f.write(os.urandom(MiB))
    small_dir = bench.fresh_dir("small")
    for i in range(args.small):
        (small_dir / f"f{i:05d}.bin").write_bytes(os.urandom(args.small_kb * 1024))
    user = nobody()
    if user is not None and user.uid is not None:
        for p in (src_dir, big, small_dir, *small_dir.iterdir()):
            os.chown(p, user.uid, user.gid or -1)
    name, sas = bench.container()
    bench.svc.get_blob_client(name, "big.bin").upload_blob(big.read_bytes(), overwrite=True)
    # the same bytes with a stored Content-MD5, which the agent verifies (raw httpx does not)
    digest = hashlib.md5(big.read_bytes(), usedforsecurity=False).digest()
    bench.svc.get_blob_client(name, "big-md5.bin").upload_blob(
        big.read_bytes(), overwrite=True, content_settings=ContentSettings(content_md5=bytearray(digest)))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: bench.svc.get_blob_client(name, f"small/{p.name}").upload_blob(
            p.read_bytes(), overwrite=True), sorted(small_dir.iterdir())))
    container = bench.svc.get_container_client(name)
    client = httpx.Client(timeout=120)
    big_url = blob_url(sas, "big.bin")

    def sdk_get_big() -> None:
        with open(bench.fresh_dir("sdkdl") / "big.bin", "wb") as f:
            container.get_blob_client("big.bin").download_blob().readinto(f)

    down_big = run_rounds({
        "agent (stage_resource_files, httpUrl)": lambda: bench.agent_download(
            [ResourceFile.model_validate({"httpUrl": big_url, "filePath": "big.bin"})],
            bench.fresh_dir("agdl")),
        "agent, stored Content-MD5 (verified)": lambda: bench.agent_download(
            [ResourceFile.model_validate({"httpUrl": blob_url(sas, "big-md5.bin"), "filePath": "big.bin"})],
            bench.fresh_dir("agdl")),
        "raw httpx (streamed GET)": lambda: httpx_get(client, big_url, bench.fresh_dir("hxdl") / "big.bin"),
        "SDK defaults (download_blob().readinto)": sdk_get_big,
    }, args.rounds)

    def sdk_put_big() -> None:
        with open(big, "rb") as f:
            container.get_blob_client("up/sdk-big.bin").upload_blob(f, overwrite=True)

    up_big_cases = {
        "agent (upload_outputs, literal pattern)": lambda: bench.agent_upload(
            [out(str(big), sas, "up/agent-big.bin")], src_dir),
        "raw httpx (single Put Blob)": lambda: httpx_put(client, blob_url(sas, "up/httpx-big.bin"), big),
        "SDK defaults (upload_blob)": sdk_put_big,
    }
    if user is not None:
        up_big_cases["agent as nonadmin user (setuid helper)"] = lambda: bench.agent_upload(
            [out(str(big), sas, "up/agent-nobody-big.bin")], src_dir, user)
    up_big = run_rounds(up_big_cases, args.rounds)

    def sdk_seq_down() -> None:
        dest = bench.fresh_dir("sdkseq")
        for blob in container.list_blobs(name_starts_with="small/"):
            with open(dest / blob.name.split("/")[-1], "wb") as f:
                container.get_blob_client(blob.name).download_blob().readinto(f)

    def sdk_threads_down() -> None:
        dest = bench.fresh_dir("sdkthr")

        def one(blob_name: str) -> None:
            with open(dest / blob_name.split("/")[-1], "wb") as f:
                container.get_blob_client(blob_name).download_blob().readinto(f)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, [b.name for b in container.list_blobs(name_starts_with="small/")]))

    def httpx_seq_down() -> None:
        dest = bench.fresh_dir("hxseq")
        for blob_name in httpx_list(client, sas, "small/"):
            (dest / blob_name.split("/")[-1]).write_bytes(client.get(blob_url(sas, blob_name)).content)

    down_small = run_rounds({
        "agent (stage_resource_files, container)": lambda: bench.agent_download(
            [ResourceFile.model_validate({"storageContainerUrl": sas, "blobPrefix": "small/"})],
            bench.fresh_dir("agsm")),
        f"agent, concurrency {args.tuned} (2 x cores)": lambda: bench.agent_download(
            [ResourceFile.model_validate({"storageContainerUrl": sas, "blobPrefix": "small/"})],
            bench.fresh_dir("agsm"), args.tuned),
        "SDK sequential": sdk_seq_down,
        "SDK 8 threads": sdk_threads_down,
        "httpx sequential": httpx_seq_down,
    }, args.rounds)

    files = sorted(small_dir.iterdir())

    def sdk_seq_up() -> None:
        for p in files:
            with open(p, "rb") as f:
                container.get_blob_client(f"upsdk/{p.name}").upload_blob(f, overwrite=True)

    def sdk_threads_up() -> None:
        def one(p: Path) -> None:
            with open(p, "rb") as f:
                container.get_blob_client(f"upthr/{p.name}").upload_blob(f, overwrite=True)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, files))

    def httpx_seq_up() -> None:
        for p in files:
            resp = client.put(blob_url(sas, f"uphx/{p.name}"), content=p.read_bytes(),
                              headers={"x-ms-blob-type": "BlockBlob"})
            resp.raise_for_status()

    up_small_cases = {
        "agent (upload_outputs, '*' pattern)": lambda: bench.agent_upload(
            [out("*.bin", sas, "upag")], small_dir),
        f"agent, concurrency {args.tuned} (2 x cores)": lambda: bench.agent_upload(
            [out("*.bin", sas, "upag")], small_dir, concurrency=args.tuned),
        "SDK sequential": sdk_seq_up,
        "SDK 8 threads": sdk_threads_up,
        "httpx sequential": httpx_seq_up,
    }
    if user is not None:
        up_small_cases["agent as nonadmin user (setuid helper)"] = lambda: bench.agent_upload(
            [out("*.bin", sas, "upnb")], small_dir, user)
    up_small = run_rounds(up_small_cases, args.rounds)
    client.close()

    mb = size / 1e6
    print(f"\nbatch-agent storage benchmark: {args.large_mb} MiB blob, "
          f"{args.small} x {args.small_kb} KiB blobs, "
          f"median of {args.rounds} interleaved rounds, Azurite at {bench.endpoint}")
    ratios: list[tuple[str, float, str]] = []
    n = args.small
    for title, table, unit, scale in (("large blob download", down_big, "MB/s", mb),
                                      ("large blob upload", up_big, "MB/s", mb),
                                      (f"{n} small blobs download", down_small, "files/s", n),
                                      (f"{n} small blobs upload", up_small, "files/s", n)):
        print(f"\n== {title}")
        rates = {name: scale / statistics.median(secs) for name, secs in table.items()}
        for name, rate in rates.items():
            print(f"  {name:<44} {rate:10.1f} {unit} median   {scale / min(table[name]):10.1f} best   "
                  f"(rounds: {', '.join(f'{t:.2f}' for t in table[name])} s)")
        agents = {n: r for n, r in rates.items() if n.startswith("agent")}
        if "large" in title:
            baseline_name = next(n for n in rates if n.startswith("raw httpx"))
        else:
            baseline_name = max((n for n in rates if not n.startswith("agent")), key=lambda n: rates[n])
        aim = ">= 0.9" if "large" in title else ">= 1.0"
        for name, rate in agents.items():
            ratios.append((f"{title}: {name} / {baseline_name}", rate / rates[baseline_name], aim))
    print("\n== ratios")
    for label, ratio, aim in ratios:
        print(f"  {label:<100} {ratio:6.2f}  (aim {aim})")


if __name__ == "__main__":
    main()
