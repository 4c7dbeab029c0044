"""Native processes: ``ProcessRunner`` implements ``agent.runner.Runner`` (§3 of the semantics doc).

Modules: ``runner`` (``ProcessRunner``), ``launch`` (program lookup, descriptors, the child's
last steps, launch failures), ``tree`` (an attempt's processes: membership, signals, pidfd wait).

Owns: exec without a shell, stdio by file descriptor, the user switch, tracking an attempt's
process tree (a per-attempt cgroup, else a secret token in its environment) and the TERM /
grace / KILL / sweep sequence. Must not: interpret the command line, touch the task's output,
or kill anything at ``cleanup`` (a finished task's background processes, such as a start
task's daemon, outlive it).

Choices, and why
- Spawn through the node's supervisor (``agent.supervisor``) when the runner is given the node
  root: the supervisor is the tasks' parent, outlives the agent and keeps each exit status, so a
  restarted agent's ``recover`` + ``wait`` give the REAL code. The attempt id (job, task, attempt
  and a random suffix) is chosen here, names the attempt's cgroup and is the handle's
  ``attempt_id``; ``cleanup`` tells the supervisor to ``forget`` it. A spawn whose answer was
  lost (``SpawnUncertain``) is swept through its cgroup / token and reported as ``RunnerError``,
  never spawned twice. Without a node root (``batch-agent run``: one task, no restart to
  survive) the runner spawns with ``subprocess.Popen`` itself and waits on a pidfd registered
  with the event loop; a supervisor would cost that command a detached process that lingers
  for its idle time (figures in ``bench/bench_supervisor.py``).
- The working directory is entered as the task user (``launch``): opened by the agent without
  following links and ``fchdir``'d after the user switch, in both spawn paths.
- The child joins its cgroup between fork and exec, so nothing it forks can start outside.
  The agent opens ``<cgroup>/cgroup.procs`` and a ``preexec_fn`` writes "0" to that
  inherited descriptor. ``preexec_fn`` is unsafe in threaded programs in general because it
  runs Python after fork. Here it makes a single ``os.write`` on an open descriptor: it takes
  no lock and imports nothing. subprocess drops the uid before it calls ``preexec_fn``, but
  the kernel checks a cgroup migration against the credentials the file was opened with
  (Linux >= 5.16, or with the CVE-2021-4197 backport), so the write works for a non-root task
  user too. On an older kernel the child's write fails quietly and the agent writes the pid
  right after the spawn; only there is a tiny race left.
- Cgroup kinds: cgroup v2 (``cgroup.kill``, else a plain kill loop), else cgroup v1
  ``freezer`` (freeze, kill, thaw), else v1 ``pids`` (kill loop). A handle's cgroup path tells
  its kind by the files in it, so a restarted agent needs no extra state.
- What the kill sweep takes is decided by markers the task can neither forge nor copy. With
  a cgroup (root and a hierarchy): the attempt's cgroup and its process group, nothing else.
  Without one: the process group plus every process whose real uid is the task's and whose
  environment holds the attempt's secret token (``TOKEN_VAR``, from ``secrets``). The runner
  sets it last, over the task's own settings, so ``environmentSettings`` can't choose it; a
  process of another user can't read it (``/proc/<pid>/environ`` is owner-only), and the uid
  check keeps a copy in another user's process from counting. The handle keeps only the uid
  and a hash of the token (handles are persisted; the token stays out of state files). Never a
  Batch variable: a task may set ``AZ_BATCH_TASK_DIR`` to another task's directory. A process
  that rewrites its environment (``env -i``) escapes the token; only a cgroup holds it.
- Cgroups (``agent.cgroups``) are removed once empty: the attempt's at ``cleanup``, and
  leftovers whose last process (a finished task's daemon) exited later by the sweep that every
  ``cleanup`` and every new runner make.
- ``recover``: another boot, no supervisor record, or an unsupervised handle -> False, after the
  tree was swept (cgroup, pid-checked process group, token). A status lost while waiting (the
  supervisor was SIGKILLed) is swept the same way and reported as ``ExitResult(lost=True)``. An
  unsupervised handle of another agent instance can still be waited on; its code is
  ``UNKNOWN_EXIT_CODE`` (-1), a failure, never a false success.
- stdout.txt / stderr.txt: mode 0640 and owned by the task user, so the task's own group
  (``_azbatchgrp`` for auto-users) can read them and others cannot.
- A stale handle's process group id could in theory be reused once every member is gone.
  The cgroup is exact; the group and the marker are best effort.
"""

from __future__ import annotations

from agent.cgroups import find_hierarchy
from agent.process.launch import LOG_MODE, find_program
from agent.process.runner import UNKNOWN_EXIT_CODE, ProcessRunner
from agent.process.tree import TOKEN_VAR

__all__ = ["LOG_MODE", "TOKEN_VAR", "UNKNOWN_EXIT_CODE", "ProcessRunner", "find_hierarchy", "find_program"]
