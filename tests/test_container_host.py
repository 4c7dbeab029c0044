"""``agent.container.host`` and what ``build`` does with it: GPUs, RDMA devices, propagation.

The device tests use a fake ``/dev`` (and a fake toolkit hook on a fake PATH) made in
``tmp_path``: this machine has neither GPUs nor InfiniBand, which the last tests check.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.container.build import build_container_request, describe
from agent.container.host import GPU_HOOK, HostFacts, detect_host, host_facts, parse_mountinfo
from agent.layout import NodeLayout
from agent.runner import TaskUser
from agent.spec import TaskContainerSettings

ROOT = Path("/mnt/batch/tasks")
LAYOUT = NodeLayout(ROOT)
DIRS = LAYOUT.task("job1", "t1")
GPU_REQUEST = {"count": -1, "capabilities": [["gpu"]]}
MEMLOCK = {"name": "memlock", "soft": -1, "hard": -1}


def fake_host(tmp_path: Path, *, nvidia: tuple[str, ...] = (), infiniband: tuple[str, ...] = (),
              hook: bool = False, mountinfo: str = "") -> HostFacts:
    dev, bin_dir = tmp_path / "dev", tmp_path / "bin"
    (dev / "infiniband").mkdir(parents=True) if infiniband else dev.mkdir()
    bin_dir.mkdir()
    for name in (*nvidia, "null", "nvidia-caps", *(f"infiniband/{n}" for n in infiniband)):
        (dev / name).touch()
    if hook:
        (bin_dir / GPU_HOOK).touch(mode=0o755)
    return host_facts(dev, [str(bin_dir)], mountinfo)


def build(host: HostFacts | None, run_options: str | None = None, **settings: Any) -> dict[str, Any]:
    spec = TaskContainerSettings.model_validate({"imageName": "img:1", "containerRunOptions": run_options,
                                                 **settings})
    request, _ = build_container_request(spec, argv=["true"], env={}, dirs=DIRS, layout=LAYOUT,
                                         user=TaskUser("u", 1000, 1000), prep_dirs=None, job_id="job1",
                                         task_id="t1", attempt=0, host=host)
    return describe(request, host)


@pytest.mark.parametrize("nodes", [("nvidiactl",), ("nvidia0",), ("nvidiactl", "nvidia0", "nvidia1", "nvidia-uvm")])
def test_gpus_with_the_toolkit_hook_are_all_exposed(tmp_path: Path, nodes: tuple[str, ...]) -> None:
    host = fake_host(tmp_path, nvidia=nodes, hook=True)
    assert host.gpus and not host.notes
    shown = build(host)
    assert shown["device_requests"] == [GPU_REQUEST] and shown["devices"] == []
    assert "host_notes" not in shown


def test_gpus_without_the_hook_are_not_exposed_and_a_note_says_why(tmp_path: Path) -> None:
    host = fake_host(tmp_path, nvidia=("nvidiactl", "nvidia0"))
    assert not host.gpus
    shown = build(host)
    assert shown["device_requests"] == []
    assert GPU_HOOK in shown["host_notes"][0] and "nvidia0" in shown["host_notes"][0]


def test_the_hook_without_devices_adds_nothing(tmp_path: Path) -> None:
    host = fake_host(tmp_path, hook=True)
    assert host == HostFacts()


def test_gpus_in_run_options_win(tmp_path: Path) -> None:
    host = fake_host(tmp_path, nvidia=("nvidiactl", "nvidia0", "nvidia1"), hook=True)
    assert build(host, "--gpus 1")["device_requests"] == [{"count": 1, "capabilities": [["gpu"]]}]


def test_rdma_devices_and_memlock(tmp_path: Path) -> None:
    host = fake_host(tmp_path, infiniband=("uverbs0", "rdma_cm", "umad0"))
    ib = tmp_path / "dev" / "infiniband"
    assert host.rdma_devices == tuple(str(ib / n) for n in ("rdma_cm", "umad0", "uverbs0"))
    shown = build(host)
    assert shown["devices"] == [f"{ib / n}:{ib / n}:rwm" for n in ("rdma_cm", "umad0", "uverbs0")]
    assert shown["options"]["ulimits"] == [MEMLOCK] and shown["device_requests"] == []


def test_rdma_device_and_memlock_in_run_options_win(tmp_path: Path) -> None:
    host = fake_host(tmp_path, infiniband=("uverbs0", "rdma_cm"))
    ib = tmp_path / "dev" / "infiniband"
    shown = build(host, f"--device {ib}/uverbs0:/dev/v0:r --ulimit memlock=1024 --ulimit nofile=64")
    assert shown["devices"] == [f"{ib}/uverbs0:/dev/v0:r", f"{ib}/rdma_cm:{ib}/rdma_cm:rwm"]
    assert shown["options"]["ulimits"] == [{"name": "memlock", "soft": 1024, "hard": 1024},
                                           {"name": "nofile", "soft": 64, "hard": 64}]


def test_gpu_and_rdma_together(tmp_path: Path) -> None:
    host = fake_host(tmp_path, nvidia=("nvidiactl",), infiniband=("uverbs0",), hook=True)
    shown = build(host)
    assert shown["device_requests"] == [GPU_REQUEST] and len(shown["devices"]) == 1


def test_a_missing_dev_directory_is_no_devices(tmp_path: Path) -> None:
    assert host_facts(tmp_path / "nothing", [str(tmp_path)]) == HostFacts()


MOUNTINFO = r"""22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:5 / /dev rw,nosuid master:2 - devtmpfs udev rw
40 22 254:0 /mnt /mnt/batch rw,relatime - ext4 /dev/vda rw
41 40 254:0 /x /mnt/batch/tasks/fsmounts rw,relatime shared:7 - ext4 /dev/vda rw
42 22 0:40 / /srv/with\040space rw shared:9 master:3 - tmpfs tmpfs rw
43 40 254:0 /y /mnt/batch/tasks/fsmounts rw,relatime - ext4 /dev/vda rw
bad line
"""


def test_parse_mountinfo() -> None:
    assert parse_mountinfo(MOUNTINFO) == (
        ("/", True), ("/dev", True), ("/mnt/batch", False), ("/mnt/batch/tasks/fsmounts", True),
        ("/srv/with space", True), ("/mnt/batch/tasks/fsmounts", False))


@pytest.mark.parametrize(("path", "follows"), [
    ("/", True), ("/home/x", True), ("/dev/infiniband", True), ("/mnt/batch", False),
    ("/mnt/batch/tasks", False), ("/mnt/batchx", True),
    ("/mnt/batch/tasks/fsmounts", True), ("/mnt/batch/tasks/fsmounts/nfs", True),
    ("/srv/with space/a", True), ("/srv/with", True),
])
def test_can_follow_takes_the_longest_mount_point(path: str, follows: bool) -> None:
    # Without line 43 (stacked on 41, tested below): the longest mount point holding the path.
    lines = MOUNTINFO.splitlines()
    table = "\n".join(line for line in lines if not line.startswith("43 "))
    assert HostFacts(mounts=parse_mountinfo(table)).can_follow(path) is follows


def test_a_mount_stacked_on_top_decides() -> None:
    assert not HostFacts(mounts=parse_mountinfo(MOUNTINFO)).can_follow("/mnt/batch/tasks/fsmounts/a")


SHARED = r"""1 0 254:0 / / rw shared:1 - ext4 /dev/vda rw
"""
PRIVATE = r"""1 0 254:0 / / rw - ext4 /dev/vda rw
"""


@pytest.mark.parametrize(("mounts", "expected"), [
    (None, [f"{LAYOUT.fsmounts}:{LAYOUT.fsmounts}:rw", f"{DIRS.task_dir}:{DIRS.task_dir}:ro"]),
    (PRIVATE, [f"{LAYOUT.fsmounts}:{LAYOUT.fsmounts}:rw", f"{DIRS.task_dir}:{DIRS.task_dir}:ro"]),
    (SHARED, [f"{LAYOUT.fsmounts}:{LAYOUT.fsmounts}:rw,rslave", f"{DIRS.task_dir}:{DIRS.task_dir}:ro"]),
])
def test_vfs_mounts_follow_later_mounts_where_the_engine_allows(mounts: str | None, expected: list[str]) -> None:
    host = None if mounts is None else HostFacts(mounts=parse_mountinfo(mounts))
    shown = build(host, None, workingDirectory="containerImageDefault",
                  containerHostBatchBindMounts=[{"source": "VfsMounts"}, {"source": "Task", "isReadOnly": True}])
    assert shown["mounts"] == expected


@pytest.mark.parametrize(("mounts", "mode"), [(None, "rw"), (PRIVATE, "rw"), (SHARED, "rw,rslave")])
def test_the_default_whole_root_mount_follows_too(mounts: str | None, mode: str) -> None:
    host = None if mounts is None else HostFacts(mounts=parse_mountinfo(mounts))
    assert build(host)["mounts"] == [f"{ROOT}:{ROOT}:{mode}"]


def test_read_only_vfs_mounts_keep_ro() -> None:
    host = HostFacts(mounts=parse_mountinfo(SHARED))
    shown = build(host, None, workingDirectory="containerImageDefault",
                  containerHostBatchBindMounts=[{"source": "VfsMounts", "isReadOnly": True}])
    assert shown["mounts"] == [f"{LAYOUT.fsmounts}:{LAYOUT.fsmounts}:ro,rslave"]


def test_this_host_is_read_as_it_is() -> None:
    host = detect_host()
    if os.path.exists("/dev/nvidiactl") or os.path.isdir("/dev/infiniband"):  # a GPU / RDMA machine
        assert host.gpus or host.rdma_devices or host.notes
        return
    assert not host.gpus and host.rdma_devices == () and host.notes == ()
    shown = build(host)
    assert shown["devices"] == [] and shown["device_requests"] == [] and "ulimits" not in shown["options"]
