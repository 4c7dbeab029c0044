"""agent.container.runopts: containerRunOptions -> Docker SDK create arguments (§8.3), table-driven,
plus one check that docker-py itself accepts the result (no engine contacted)."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.container.runopts import SUPPORTED_OPTIONS, RunOptionsError, parse_run_options

WD = "/mnt/batch/tasks/workitems/job-1/job-1/task-1/wd"
ENV = {
    "AZ_BATCH_TASK_WORKING_DIR": WD,
    "AZ_BATCH_NODE_SHARED_DIR": "/mnt/batch/tasks/shared",
    "TOKEN": "s3cr3t-t0ken",
    "SPACED": "a b",
    "QUOTED": "it's \"q\" \\ $HOME",
    "EMPTY": "",
}
GIB = 1024**3
MIB = 1024**2

# option string -> expected create_kwargs (exactly)
OK: list[tuple[str | None, dict[str, Any]]] = [
    (None, {}),
    ("", {}),
    ("   ", {}),
    ("--rm", {}),
    # -e / --env
    ("-e A=1", {"environment": {"A": "1"}}),
    ("--env A=1", {"environment": {"A": "1"}}),
    ("--env=A=1", {"environment": {"A": "1"}}),
    ("-eA=1", {"environment": {"A": "1"}}),
    ("-e=A=1", {"environment": {"A": "1"}}),
    ("-e A= -e B==x", {"environment": {"A": "", "B": "=x"}}),
    ("-e A=1 -e B=2 -e A=3", {"environment": {"A": "3", "B": "2"}}),
    ("-e TOKEN", {"environment": {"TOKEN": "s3cr3t-t0ken"}}),
    ("-e NOT_SET", {}),
    ("-e 'GREETING=hello world'", {"environment": {"GREETING": "hello world"}}),
    # -v / --volume
    ("-v /data:/data", {"volumes": {"/data": {"bind": "/data", "mode": "rw"}}}),
    ("--volume /data:/in:ro", {"volumes": {"/data": {"bind": "/in", "mode": "ro"}}}),
    ("--volume=/data:/in:ro,z", {"volumes": {"/data": {"bind": "/in", "mode": "ro,z"}}}),
    ("-v cache-vol:/cache", {"volumes": {"cache-vol": {"bind": "/cache", "mode": "rw"}}}),
    ("-v /a:/a -v /b:/b:rslave", {"volumes": {"/a": {"bind": "/a", "mode": "rw"},
                                              "/b": {"bind": "/b", "mode": "rslave"}}}),
    ("-v /scratch", {"mounts": [{"type": "volume", "source": None, "target": "/scratch"}]}),
    ("-v $AZ_BATCH_NODE_SHARED_DIR:/shared:ro",
     {"volumes": {"/mnt/batch/tasks/shared": {"bind": "/shared", "mode": "ro"}}}),
    # --mount
    ("--mount type=bind,source=/data,target=/data,readonly",
     {"mounts": [{"type": "bind", "source": "/data", "target": "/data", "read_only": True}]}),
    ("--mount=type=bind,src=/x,dst=/y,bind-propagation=rshared,ro=false",
     {"mounts": [{"type": "bind", "source": "/x", "target": "/y", "read_only": False,
                  "propagation": "rshared"}]}),
    ("--mount type=volume,src=v1,destination=/v,volume-nocopy,volume-label=a=b,volume-subpath=sub",
     {"mounts": [{"type": "volume", "source": "v1", "target": "/v", "read_only": False, "no_copy": True,
                  "labels": {"a": "b"}, "subpath": "sub"}]}),
    ("--mount target=/anon", {"mounts": [{"type": "volume", "source": None, "target": "/anon",
                                          "read_only": False}]}),
    ("--mount type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1777",
     {"mounts": [{"type": "tmpfs", "source": None, "target": "/t", "read_only": False,
                  "tmpfs_size": 64 * MIB, "tmpfs_mode": 0o1777}]}),
    ("--mount 'type=volume,source=nfs,target=/nfs,volume-driver=local,volume-opt=type=nfs,"
     "\"volume-opt=o=addr=10.0.0.1,rw\"'",
     {"mounts": [{"type": "volume", "source": "nfs", "target": "/nfs", "read_only": False,
                  "driver_config": {"Name": "local", "Options": {"type": "nfs", "o": "addr=10.0.0.1,rw"}}}]}),
    ("--mount type=bind,src=/a,dst=/a --mount type=tmpfs,dst=/b",
     {"mounts": [{"type": "bind", "source": "/a", "target": "/a", "read_only": False},
                 {"type": "tmpfs", "source": None, "target": "/b", "read_only": False}]}),
    # --net / --network
    ("--network host", {"network": "host"}),
    ("--net=none", {"network": "none"}),
    ("--network my-net --net my-net", {"network": "my-net"}),
    # --gpus
    ("--gpus all", {"device_requests": [{"count": -1, "capabilities": [["gpu"]]}]}),
    ("--gpus=2", {"device_requests": [{"count": 2, "capabilities": [["gpu"]]}]}),
    ("--gpus '\"device=0,1\"'", {"device_requests": [{"device_ids": ["0", "1"], "capabilities": [["gpu"]]}]}),
    ("--gpus device=GPU-3a23c669", {"device_requests": [{"device_ids": ["GPU-3a23c669"],
                                                         "capabilities": [["gpu"]]}]}),
    ("--gpus 'all,\"capabilities=compute,utility\"'",
     {"device_requests": [{"count": -1, "capabilities": [["compute", "utility", "gpu"]]}]}),
    ("--gpus driver=nvidia,count=1,options=k=v",
     {"device_requests": [{"driver": "nvidia", "count": 1, "options": {"k": "v"},
                           "capabilities": [["gpu"]]}]}),
    ("--gpus capabilities=gpu", {"device_requests": [{"count": 1, "capabilities": [["gpu"]]}]}),
    # sizes
    ("--shm-size 1g", {"shm_size": GIB}),
    ("--shm-size=512m", {"shm_size": 512 * MIB}),
    ("--shm-size 1024", {"shm_size": 1024}),
    ("--shm-size 1.5g", {"shm_size": 3 * GIB // 2}),
    ("--shm-size 64MB", {"shm_size": 64 * MIB}),
    ("--shm-size 2GiB", {"shm_size": 2 * GIB}),
    ("--shm-size 10k", {"shm_size": 10240}),
    ("-m 512m", {"mem_limit": 512 * MIB}),
    ("--memory=2g", {"mem_limit": 2 * GIB}),
    ("-m2g", {"mem_limit": 2 * GIB}),
    ("-m 1g --memory-swap -1", {"mem_limit": GIB, "memswap_limit": -1}),
    ("--memory-swap=3g", {"memswap_limit": 3 * GIB}),
    ("--memory-reservation 256m", {"mem_reservation": 256 * MIB}),
    # namespaces
    ("--ipc host", {"ipc_mode": "host"}),
    ("--ipc=shareable", {"ipc_mode": "shareable"}),
    ("--pid host", {"pid_mode": "host"}),
    ("--uts host", {"uts_mode": "host"}),
    ("--userns=host", {"userns_mode": "host"}),
    # user, workdir, entrypoint
    ("-u 1000:1000", {"user": "1000:1000"}),
    ("--user=nobody", {"user": "nobody"}),
    ("-unobody", {"user": "nobody"}),
    ("-w /work", {"working_dir": "/work"}),
    ("--workdir=/x", {"working_dir": "/x"}),
    ("-w $AZ_BATCH_TASK_WORKING_DIR", {"working_dir": WD}),
    ("-w ${AZ_BATCH_TASK_WORKING_DIR}/sub", {"working_dir": f"{WD}/sub"}),
    ("--workdir \"$AZ_BATCH_TASK_WORKING_DIR\"", {"working_dir": WD}),
    ("--entrypoint /bin/sh", {"entrypoint": ["/bin/sh"]}),
    ("--entrypoint ''", {"entrypoint": [""]}),
    ("--entrypoint=", {"entrypoint": [""]}),
    ("--entrypoint '/opt/my app/run'", {"entrypoint": ["/opt/my app/run"]}),
    # CPU
    ("--cpus 1.5", {"nano_cpus": 1_500_000_000}),
    ("--cpus=2", {"nano_cpus": 2_000_000_000}),
    ("--cpus 0.000000001", {"nano_cpus": 1}),
    ("-c 512", {"cpu_shares": 512}),
    ("--cpu-shares=1024", {"cpu_shares": 1024}),
    ("--cpu-period 100000 --cpu-quota 50000", {"cpu_period": 100000, "cpu_quota": 50000}),
    ("--cpuset-cpus 0-3,6 --cpuset-mems 0", {"cpuset_cpus": "0-3,6", "cpuset_mems": "0"}),
    # limits
    ("--ulimit nofile=1024:2048", {"ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}]}),
    ("--ulimit=nproc=100", {"ulimits": [{"name": "nproc", "soft": 100, "hard": 100}]}),
    ("--ulimit memlock=-1:-1", {"ulimits": [{"name": "memlock", "soft": -1, "hard": -1}]}),
    ("--ulimit stack=67108864:-1", {"ulimits": [{"name": "stack", "soft": 67108864, "hard": -1}]}),
    ("--ulimit nofile=1:2 --ulimit core=0 --ulimit nofile=3:4",
     {"ulimits": [{"name": "core", "soft": 0, "hard": 0}, {"name": "nofile", "soft": 3, "hard": 4}]}),
    ("--pids-limit 100", {"pids_limit": 100}),
    ("--pids-limit=-1", {"pids_limit": -1}),
    ("--oom-score-adj 500", {"oom_score_adj": 500}),
    # privileges and devices
    ("--cap-add SYS_ADMIN --cap-add=NET_ADMIN", {"cap_add": ["SYS_ADMIN", "NET_ADMIN"]}),
    ("--cap-drop ALL", {"cap_drop": ["ALL"]}),
    ("--privileged", {"privileged": True}),
    ("--privileged=false", {"privileged": False}),
    ("--security-opt seccomp=unconfined --security-opt=apparmor:unconfined --security-opt no-new-privileges",
     {"security_opt": ["seccomp=unconfined", "apparmor:unconfined", "no-new-privileges"]}),
    ("--security-opt label=disable", {"security_opt": ["label=disable"]}),
    ("--device /dev/fuse", {"devices": ["/dev/fuse:/dev/fuse:rwm"]}),
    ("--device=/dev/sda:/dev/xvda:r", {"devices": ["/dev/sda:/dev/xvda:r"]}),
    ("--device /dev/sda:rw --device /dev/infiniband/uverbs0",
     {"devices": ["/dev/sda:/dev/sda:rw", "/dev/infiniband/uverbs0:/dev/infiniband/uverbs0:rwm"]}),
    ("--device-cgroup-rule 'c 10:200 rwm'", {"device_cgroup_rules": ["c 10:200 rwm"]}),
    # file system, init, runtime
    ("--tmpfs /run", {"tmpfs": {"/run": ""}}),
    ("--tmpfs /tmp:rw,size=64m,mode=1777 --tmpfs=/run",
     {"tmpfs": {"/tmp": "rw,size=64m,mode=1777", "/run": ""}}),
    ("--read-only", {"read_only": True}),
    ("--init", {"init": True}),
    ("--init=false", {"init": False}),
    ("--runtime nvidia", {"runtime": "nvidia"}),
    ("--volumes-from other:ro", {"volumes_from": ["other:ro"]}),
    # names, network details, labels
    ("-h node-1", {"hostname": "node-1"}),
    ("--hostname=n", {"hostname": "n"}),
    ("--domainname example.com", {"domainname": "example.com"}),
    ("--add-host db:10.0.0.5 --add-host=gw=host-gateway --add-host v6:::1 --add-host 'b=[::2]'",
     {"extra_hosts": ["db:10.0.0.5", "gw:host-gateway", "v6:::1", "b:::2"]}),
    ("--dns 8.8.8.8 --dns=2001:4860:4860::8888", {"dns": ["8.8.8.8", "2001:4860:4860::8888"]}),
    ("--dns-search example.com --dns-option ndots:2",
     {"dns_search": ["example.com"], "dns_opt": ["ndots:2"]}),
    ("-l a=b -l c --label=d=e=f -la=z", {"labels": {"a": "z", "c": "", "d": "e=f"}}),
    ("--label 'note=hello world'", {"labels": {"note": "hello world"}}),
    ("--group-add video --group-add=44", {"group_add": ["video", "44"]}),
    ("--sysctl net.core.somaxconn=1024 --sysctl=kernel.shmmax=1", {"sysctls": {"net.core.somaxconn": "1024",
                                                                              "kernel.shmmax": "1"}}),
    ("--stop-signal SIGINT", {"stop_signal": "SIGINT"}),
    ("--platform linux/amd64", {"platform": "linux/amd64"}),
    # $VAR expansion: from the task env, never word-split, not inside single quotes, unknown kept
    ("--label x=$SPACED", {"labels": {"x": "a b"}}),
    ('--label "x=$SPACED"', {"labels": {"x": "a b"}}),
    ("--label 'x=$SPACED'", {"labels": {"x": "$SPACED"}}),
    ("--label x=\\$SPACED", {"labels": {"x": "$SPACED"}}),
    ("--label x=$NOPE,${NOPE}", {"labels": {"x": "$NOPE,${NOPE}"}}),
    ('-e "Q=$QUOTED" -e R=$QUOTED', {"environment": {"Q": ENV["QUOTED"], "R": ENV["QUOTED"]}}),
    ("--label x=$EMPTY -l y=${SPACED}z", {"labels": {"x": "", "y": "a bz"}}),
]


def _flag_names(text: str | None) -> set[str]:
    names = set()
    for token in shlex.split(text or ""):
        if token.startswith("--"):
            names.add(token.partition("=")[0])
        elif re.fullmatch(r"-[a-z].*", token):
            names.add(token[:2])
    return names


@pytest.mark.parametrize(("text", "expected"), OK)
def test_parses(text: str | None, expected: dict[str, Any]) -> None:
    assert parse_run_options(text, ENV).create_kwargs == expected


def test_every_supported_spelling_has_a_case() -> None:
    used = set().union(*(_flag_names(text) for text, _ in OK))
    spellings = {name for option in SUPPORTED_OPTIONS for name in option.split("/")}
    assert spellings - used == set()
    assert "-e/--env" in SUPPORTED_OPTIONS and "--rm" in SUPPORTED_OPTIONS


@pytest.mark.parametrize(("text", "remove"), [("--rm", True), ("--rm=true", True), ("--rm=false", False),
                                              ("--rm=1", True), ("", False), ("--rm --rm=false", False)])
def test_remove(text: str, remove: bool) -> None:
    assert parse_run_options(text, ENV).remove is remove


def test_fields_mirror_create_kwargs() -> None:
    text = "--rm -u 1000:1000 -w $AZ_BATCH_TASK_WORKING_DIR --entrypoint /bin/bash --net host"
    opts = parse_run_options(text, ENV)
    assert (opts.remove, opts.user, opts.workdir, opts.entrypoint, opts.network) == (
        True, "1000:1000", WD, ["/bin/bash"], "host")
    assert opts.create_kwargs == {"user": "1000:1000", "working_dir": WD, "entrypoint": ["/bin/bash"],
                                  "network": "host"}
    empty = parse_run_options(None, ENV)
    assert (empty.remove, empty.user, empty.workdir, empty.entrypoint, empty.network, empty.display) == (
        False, None, None, None, None, ())


@pytest.mark.parametrize(("text", "display"), [
    ("--rm -e A=1 -v /data:/data:ro --shm-size 1g --ulimit nofile=1024:2048",
     ("--rm", "-e A", "--volume=/data:/data:ro", "--shm-size=1g", "--ulimit=nofile=1024:2048")),
    ("-w $AZ_BATCH_TASK_WORKING_DIR --net=host -m2g --init=false --privileged=true",
     ("--workdir=$AZ_BATCH_TASK_WORKING_DIR", "--network=host", "--memory=2g", "--init=false",
      "--privileged")),
    ("--entrypoint '' --label 'a=b c'", ("--entrypoint=", "--label=a=b c")),
])
def test_display(text: str, display: tuple[str, ...]) -> None:
    assert parse_run_options(text, ENV).display == display


def test_display_and_errors_never_show_env_values() -> None:
    opts = parse_run_options("-e PASS=hunter2 --env=TOKEN=$TOKEN -e TOKEN -eX=hunter2", ENV)
    assert opts.display == ("-e PASS", "-e TOKEN", "-e TOKEN", "-e X")
    assert opts.create_kwargs["environment"] == {"PASS": "hunter2", "TOKEN": "s3cr3t-t0ken", "X": "hunter2"}
    for text in ("--shm-size $TOKEN", "--label x=$TOKEN --cpus $TOKEN", "-e =$TOKEN"):
        with pytest.raises(RunOptionsError) as info:
            parse_run_options(text, ENV)
        assert "s3cr3t" not in str(info.value)


# option string -> (RunOptionsError.option, a fragment of the message)
BAD: list[tuple[str, str, str]] = [
    ("--foo", "--foo", "unsupported option '--foo' (supported: --rm, -e/--env, -v/--volume, --mount"),
    ("--foo=bar --rm", "--foo", "unsupported option '--foo'"),
    ("-it", "-i", "unsupported option '-i'"),
    ("-p 8080:80", "-p", "unsupported option '-p'"),
    ("--name my-task", "--name", "option '--name' is not allowed: the agent names the container"),
    ("--env-file ./env.list", "--env-file", "use -e or environmentSettings"),
    ("--stop-timeout 5", "--stop-timeout", "not allowed"),
    ("busybox", "busybox", "unexpected argument 'busybox': only options belong here"),
    ("--rm -- sh", "--", "unexpected argument '--'"),
    ("--rm ''", "", "unexpected argument ''"),
    ("--label 'unterminated", "", "cannot split into arguments (No closing quotation)"),
    # missing values
    ("-e", "-e", "-e needs a value: -e NAME[=VALUE]"),
    ("--shm-size", "--shm-size", "--shm-size needs a value"),
    ("-w --rm", "-w", "-w needs a value"),
    ("--ulimit --shm-size=1g", "--ulimit", "--ulimit needs a value"),
    # malformed values
    ("--rm=maybe", "--rm", "--rm 'maybe': expected true or false"),
    ("-e =x", "-e", "-e: expected NAME=VALUE or NAME"),
    ("--ulimit nofile", "--ulimit", "--ulimit 'nofile': expected NAME=SOFT[:HARD], NAME one of core,"),
    ("--ulimit bogus=1", "--ulimit", "NAME one of"),
    ("--ulimit nofile=a:b", "--ulimit", "expected an integer"),
    ("--ulimit nofile=10:5", "--ulimit", "the soft limit 10 is above the hard limit 5"),
    ("--cpus abc", "--cpus", "--cpus 'abc': expected a number of CPUs"),
    ("--cpus -1", "--cpus", "non-negative"),
    ("--cpus 0.0000000001", "--cpus", "at most 9 decimals"),
    ("--shm-size 1x", "--shm-size", "expected a size"),
    ("-m lots", "-m", "-m 'lots': expected a size"),
    ("--memory-swap -2", "--memory-swap", "expected a size"),
    ("-w relative/dir", "-w", "expected an absolute path"),
    ("-w $EMPTY", "-w", "expected an absolute path"),
    ("--hostname ''", "--hostname", "expected a non-empty value"),
    ("-v /a:/b:/c:/d", "-v", "expected SOURCE:TARGET[:MODE] or TARGET"),
    ("-v rel/path:/x", "-v", "absolute host path or a volume name"),
    ("-v /a:/b:bogus", "-v", "MODE is a comma-separated list of"),
    ("-v /a:b", "-v", "expected an absolute path"),
    ("-v /a:/x -v /a:/y", "-v", "/a is already mounted by an earlier -v; use --mount"),
    ("--mount type=bind,target=/x", "--mount", "type=bind needs source=HOST_PATH"),
    ("--mount type=tmpfs,src=/a,dst=/b", "--mount", "type=tmpfs takes no source"),
    ("--mount src=/a", "--mount", "target=PATH is required"),
    ("--mount type=nfs,dst=/a", "--mount", "expected bind, volume or tmpfs"),
    ("--mount type=bind,src=/a,dst=/b,volume-nocopy", "--mount", "volume-nocopy cannot be used with type=b"),
    ("--mount type=volume,dst=/a,tmpfs-size=1m", "--mount", "tmpfs-size cannot be used with type=volume"),
    ("--mount type=volume,dst=/a,bogus=1", "--mount", "unknown field 'bogus' (allowed: type, source"),
    ("--mount type=volume,dst=/a,label", "--mount", "field 'label' must be KEY=VALUE"),
    ("--mount 'type=bind,\"src=/a'", "--mount", "not a comma-separated list"),
    ("--mount type=tmpfs,dst=/t,tmpfs-mode=999", "--mount", "expected an octal mode"),
    ("--gpus device=0,1", "--gpus", "a count and device= exclude each other; quote a device list"),
    ("--gpus lots", "--gpus", "expected 'all' or a positive integer"),
    ("--gpus 0", "--gpus", "expected 'all' or a positive integer"),
    ("--gpus foo=bar", "--gpus", "unknown key 'foo' (allowed: all, N, count=, driver="),
    ("--gpus all,count=2", "--gpus", "'count' is given twice"),
    ("--network a --network b", "--network", "the Docker SDK creates a container on one network only"),
    ("--dns not-an-ip", "--dns", "expected an IP address"),
    ("--add-host nohost", "--add-host", "expected an IP address"),
    ("--add-host h:999.1.1.1", "--add-host", "expected an IP address"),
    ("--add-host :10.0.0.1", "--add-host", "expected a non-empty value"),
    ("--device relative", "--device", "expected HOST_PATH[:CONTAINER_PATH][:PERMISSIONS]"),
    ("--device /dev/a:/dev/b:rwx", "--device", "expected HOST_PATH"),
    ("--security-opt seccomp=/etc/profile.json", "--security-opt", "use seccomp=unconfined"),
    ("--security-opt bogus", "--security-opt", "expected KEY=VALUE"),
    ("--uts private", "--uts", "'host' (the only value the Docker SDK accepts)"),
    ("--pids-limit lots", "--pids-limit", "expected an integer"),
    ("--cpu-shares 1.5", "--cpu-shares", "expected an integer"),
    ("--sysctl novalue", "--sysctl", "expected KEY=VALUE"),
    ("--tmpfs relative", "--tmpfs", "expected an absolute path"),
    ("--label =x", "--label", "expected a non-empty value"),
]


@pytest.mark.parametrize(("text", "option", "fragment"), BAD)
def test_rejects(text: str, option: str, fragment: str) -> None:
    with pytest.raises(RunOptionsError) as info:
        parse_run_options(text, ENV)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.option == option
    assert fragment in err.message
    assert str(err) == f"containerSettings.containerRunOptions: {err.message}"


_PIECES = st.sampled_from([*(n for o in SUPPORTED_OPTIONS for n in o.split("/")), "--name", "-x", "--", " ",
                           "=", "'", '"', "\\", "$TOKEN", "${QUOTED}", "$NOPE", "/a", ":", ",", "1g", "all"])


@given(st.one_of(st.text(max_size=30), st.lists(_PIECES, max_size=10).map("".join)))
def test_any_text_parses_or_raises_run_options_error(text: str) -> None:
    with contextlib.suppress(RunOptionsError):
        parse_run_options(text, ENV)


@given(st.text(max_size=30))
def test_a_quoted_value_comes_back_unchanged(value: str) -> None:
    labels = parse_run_options(f"--label {shlex.quote('x=' + value)}", ENV).create_kwargs["labels"]
    assert labels == {"x": value}


def test_docker_py_accepts_the_arguments() -> None:
    """The SDK's own conversion (what containers.create runs before the HTTP call) takes the result."""
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig, DeviceRequest, HostConfig, Mount, Ulimit

    text = (
        "--rm -e A=1 -e TOKEN -v /data:/data:ro,z -v cache:/cache -v /anon "
        "--mount type=bind,src=/mnt/in,dst=/in,readonly,bind-propagation=rslave "
        "--mount type=tmpfs,dst=/scratch,tmpfs-size=64m,tmpfs-mode=1777 "
        "--mount type=volume,src=v1,dst=/v1,volume-nocopy,volume-label=k=v "
        "--network host --gpus all --shm-size 1g --ipc host -u 1000:1000 -w $AZ_BATCH_TASK_WORKING_DIR "
        "--entrypoint /bin/sh --cpus 1.5 -m 2g --memory-swap -1 --ulimit nofile=1024:2048 "
        "--ulimit memlock=-1:-1 --cap-add SYS_PTRACE --cap-drop NET_RAW --device /dev/fuse "
        "--security-opt seccomp=unconfined --init --pids-limit 200 --tmpfs /run:size=16m "
        "-h node-1 -l team=hpc --read-only --runtime runc --privileged --add-host db:10.0.0.5 "
        "--dns 8.8.8.8 --group-add 44 --sysctl net.core.somaxconn=1024 -c 512 --cpuset-cpus 0-1 "
        "--stop-signal SIGINT --platform linux/amd64 --memory-reservation 1g --oom-score-adj 10"
    )
    opts = parse_run_options(text, ENV)
    kwargs = dict(opts.create_kwargs)
    kwargs["mounts"] = [Mount(**m) for m in kwargs["mounts"]]
    kwargs["environment"] = {**ENV, **kwargs["environment"]}
    args = _create_container_args({**kwargs, "image": "busybox:1.36", "command": ["true"], "version": "1.41"})

    host = args["host_config"]
    assert isinstance(host, HostConfig)
    assert host["Binds"] == ["/data:/data:ro,z", "cache:/cache:rw"]
    assert args["volumes"] == ["/data", "/cache"]       # no bogus "/data:ro,z" anonymous volume
    assert [m["Target"] for m in host["Mounts"]] == ["/anon", "/in", "/scratch", "/v1"]
    assert host["Mounts"][1]["BindOptions"] == {"Propagation": "rslave"} and host["Mounts"][1]["ReadOnly"]
    assert host["Mounts"][2]["TmpfsOptions"] == {"SizeBytes": 64 * MIB, "Mode": 0o1777}
    assert host["DeviceRequests"] == [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    assert host["Ulimits"] == [Ulimit(name="nofile", soft=1024, hard=2048),
                               Ulimit(name="memlock", soft=-1, hard=-1)]
    assert (host["ShmSize"], host["Memory"], host["MemorySwap"]) == (GIB, 2 * GIB, -1)
    assert (host["NanoCpus"], host["CpuShares"], host["MemoryReservation"]) == (1_500_000_000, 512, GIB)
    assert host["NetworkMode"] == "host" and host["IpcMode"] == "host" and host["Init"] is True
    assert host["Devices"] == [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse",
                                "CgroupPermissions": "rwm"}]
    assert host["Tmpfs"] == {"/run": "size=16m"} and host["ReadonlyRootfs"] and host["Privileged"]
    assert host["ExtraHosts"] == ["db:10.0.0.5"] and host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert "AutoRemove" not in host                       # --rm is the agent's job (§8.3)

    platform = args.pop("platform")
    config = ContainerConfig("1.41", **args)             # what create_container sends as the body
    assert platform == "linux/amd64"
    assert config["Entrypoint"] == ["/bin/sh"] and config["WorkingDir"] == WD
    assert config["User"] == "1000:1000" and config["StopSignal"] == "SIGINT"
    assert "A=1" in config["Env"] and "TOKEN=s3cr3t-t0ken" in config["Env"]
    assert config["Labels"] == {"team": "hpc"} and config["Hostname"] == "node-1"
    json.dumps(config)
