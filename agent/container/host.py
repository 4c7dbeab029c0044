"""What the host gives every container beyond its task's settings (§8.3): GPUs, RDMA devices,
and whether a bind mount can follow mounts made after the container started.

Owns: reading those facts from the host (``detect_host``: a few ``stat`` calls and one read of
``/proc/self/mountinfo``, no engine call, so ``plan`` can use it too) and the pure parts, which
take the paths and the text as parameters (``host_facts``, ``parse_mountinfo``) so the tests
can give a fake ``/dev``. Must not: import ``docker``, or call the engine.

Decisions (the semantics doc says "GPUs are exposed automatically (do not pass ``--gpus``);
RDMA/InfiniBand devices are exposed automatically on RDMA SKUs", not how):

- GPUs: when the host has NVIDIA device nodes (``/dev/nvidiactl`` or ``/dev/nvidia<N>``) and
  the NVIDIA container toolkit's ``nvidia-container-runtime-hook`` is on the engine's search
  path, every container gets the request ``docker run --gpus all`` makes (count -1, capability
  ``gpu``): that hook on dockerd's PATH is what makes dockerd register its ``nvidia`` device
  driver, so no ``--runtime nvidia`` / ``docker info`` check is needed. Devices without the
  hook: nothing is added (the create would fail) and a note says why. A ``--gpus`` in the run
  options wins.
- RDMA: every device node under ``/dev/infiniband`` (``uverbs<N>``, ``rdma_cm``, ``umad<N>``,
  ...) is passed as ``--device P:P:rwm``, plus ``--ulimit memlock=-1:-1`` (verbs pin memory;
  UNCONFIRMED: what batch-shipyard passes, the Batch agent's own flags are not documented). A
  ``--device`` of the same host path or a ``--ulimit memlock`` in the run options wins.
- Propagation: ``rslave`` makes mounts made later under a bind's source (a VFS mount under
  ``fsmounts`` after the task started) appear in the container. The engine refuses ``rslave``
  unless the source's mount is shared or a slave, so it is asked for only then (``can_follow``;
  on a systemd host ``/`` is shared; on this test VM it is private). UNCONFIRMED in Batch.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GPU_HOOK = "nvidia-container-runtime-hook"
_NVIDIA_NODE = re.compile(r"nvidia(?:ctl|\d+)")
_ESCAPE = re.compile(r"\\([0-7]{3})")
# dockerd's own search path adds the sbin directories when it runs from a service manager.
_ENGINE_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@dataclass(frozen=True, slots=True)
class HostFacts:
    gpus: bool = False                          # expose all GPUs (device nodes + toolkit hook)
    rdma_devices: tuple[str, ...] = ()          # /dev/infiniband/* device paths
    mounts: tuple[tuple[str, bool], ...] = ()   # (mount point, shared or slave), mountinfo order
    notes: tuple[str, ...] = ()                 # what was found but cannot be used, and why

    def can_follow(self, path: Path | str) -> bool:
        """True when the mount holding ``path`` is shared or a slave (``rslave`` is allowed)."""
        target = os.path.normpath(str(path))
        best: tuple[int, bool] | None = None
        for point, propagates in self.mounts:
            inside = point == "/" or target == point or target.startswith(point + "/")
            if inside and (best is None or len(point) >= best[0]):   # later entries stack on top
                best = (len(point), propagates)
        return best is not None and best[1]


def parse_mountinfo(text: str) -> tuple[tuple[str, bool], ...]:
    """``/proc/<pid>/mountinfo`` -> (mount point, shared or slave) per line, in order."""
    out: list[tuple[str, bool]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        optional = fields[6:fields.index("-", 6)]
        point = _ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
        out.append((point, any(f.startswith(("shared:", "master:")) for f in optional)))
    return tuple(out)


def host_facts(dev: Path, search_path: Sequence[str], mountinfo: str = "") -> HostFacts:
    """The facts of a host whose device directory is ``dev``, whose engine searches
    ``search_path`` for programs, and whose mount table is ``mountinfo``."""
    notes: list[str] = []
    try:
        nodes = sorted(p.name for p in dev.iterdir() if _NVIDIA_NODE.fullmatch(p.name))
    except OSError:
        nodes = []
    hook = shutil.which(GPU_HOOK, path=os.pathsep.join(search_path)) if nodes else None
    if nodes and hook is None:
        notes.append(f"NVIDIA devices found ({', '.join(nodes)}) but {GPU_HOOK} is not on the engine's "
                     "PATH: GPUs are not exposed; install the NVIDIA container toolkit")
    infiniband = dev / "infiniband"
    try:
        rdma = tuple(sorted(str(p) for p in infiniband.iterdir() if not p.is_dir()))
    except OSError:
        rdma = ()
    return HostFacts(gpus=bool(nodes) and hook is not None, rdma_devices=rdma,
                     mounts=parse_mountinfo(mountinfo), notes=tuple(notes))


def detect_host(dev: Path = Path("/dev"), mountinfo: Path = Path("/proc/self/mountinfo"),
                search_path: Sequence[str] | None = None) -> HostFacts:
    """This host's facts (the agent and the engine are assumed to share the mount namespace)."""
    if search_path is None:
        search_path = [*os.environ.get("PATH", "").split(os.pathsep), *_ENGINE_PATH]
    try:
        table = mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        table = ""
    return host_facts(dev, [p for p in search_path if p], table)
