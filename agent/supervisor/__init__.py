"""The task supervisor: what keeps a task's real exit status when the agent itself dies.

Only a process's parent can read its exit status, so whatever outlives the agent must be the
tasks' parent. Nomad's executor, containerd's shim, conmon and Slurm's slurmstepd are all that
parent. Here it is ONE shared supervisor per node root. It is a small Python process that
spawns the tasks as its own children, reaps them, writes each exit status to disk before it
tells anyone, and answers the agent over a unix socket. A restarted agent asks it for an
attempt id and gets the real code.

Modules: ``protocol`` (wire format, private directory, attempt ids), ``server`` (the
supervisor process; stdlib only), ``client`` (the agent's async side). Import them directly:
this package imports nothing, so the supervisor does not load ``asyncio``.

Why one shared supervisor (measured by ``bench/bench_supervisor.py``, 2 cores, Python 3.11)
- Shared Python supervisor: about 11 MB RSS / 6.5 MB USS in total, paid once per node. Each
  running task adds 0.5-5 KB (its child entry and a waiting connection). At 50 tasks that is
  0.22 MB of RSS per task, all counted. The aim is 2 MB or less per task. A spawn takes about
  1 ms more than ``Popen`` in the agent (p50 1.6 ms against 0.5-0.8 ms on a quiet machine):
  two local round trips and a fork of a small process.
- A Python waiter per task (``python -I -S``, posix_spawn + waitpid + a status file): about
  8.4 MB RSS / 2.7 MB USS for every task. That is over the aim, and the cost grows with slots.
- A C shim per task, conmon-style: about 1.1 MB RSS / 0.09 MB USS for every task. This is the
  smallest, but it is a compiled artefact. gcc is not on every target, and we would then ship
  and trust C code that handles fds, setuid and cgroups: a second implementation of
  ``ProcessRunner.start``. The shared supervisor stays under the aim from the first task on,
  so the C shim is not needed.
- Double fork with a shell writing the status (``sh -c 'cmd; echo $? > file'``): not
  acceptable. The task's command line must be exec'd without a shell, and a shell wrapper
  would need the argv quoted back into a string. Doing it without a shell means a waiter
  process of our own, which is one of the two options above.

What the supervisor does (``server``)
- It listens on ``<root>/volatile/batch-agent/supervisor.sock``. The directory is 0700 and
  owned by the agent's uid; the socket is 0600. The agent and the supervisor reach the socket
  through the directory's descriptor (``/proc/self/fd/N/...``), so neither a swapped path nor
  the 108-byte limit on socket paths applies. Every peer's ``SO_PEERCRED`` uid must be the
  supervisor's own, or the connection is closed (and logged).
- One instance per directory: it holds ``supervisor.lock`` (flock) for its whole life and
  releases it only by exiting, SIGKILL included. Clients serialise starting one on
  ``start.lock``. When two agents race, one starts it and the other connects to it.
- It spawns with ``subprocess.Popen`` exactly as ``ProcessRunner.start`` does today:
  ``executable``, argv, env, cwd, ``stdin`` /dev/null, stdout/stderr received as descriptors
  (``SCM_RIGHTS``, opened by the agent, so no Python sits in the data path), ``close_fds``,
  a new session, uid/gid/groups, the agent's umask, and, in a ``preexec_fn`` that runs after
  the user switch, the cgroup join (a write to the received ``cgroup.procs`` descriptor) and
  the change into the working directory AS THE TASK USER (``fchdir`` on the received ``cwd``
  descriptor, which the agent opened without following links; never Popen's ``cwd``, which
  chdirs as root before the switch). This is safe here because the supervisor has a single
  thread. Launch errors come back as errno, strerror and filename.
- It is the child subreaper (``PR_SET_CHILD_SUBREAPER``): orphans from a task's tree are reaped
  by one ``waitpid(-1)`` loop, woken by SIGCHLD through ``set_wakeup_fd``, and do not end up
  as zombies under init (or under a PID 1 in a container that never reaps).
- It records each exit (fsync, then rename, then fsync of the directory) in
  ``exits/<attempt>`` BEFORE it answers a waiter. The records outlive the supervisor, and a
  new supervisor serves them.
- It exits when it has had no child and no client for ``idle`` seconds. Before it goes, it
  accepts any connection still queued, so no request is dropped. SIGTERM or ``shutdown``
  stops new spawns; it then exits after its last child is reaped, so stopping it never kills
  work.

Protocol: JSON lines over SOCK_STREAM, one request and then its reply; the server greets first.
    <- {"ok":true,"pid":P,"version":1}                     on accept (the client was accepted)
    -> {"op":"spawn","id":A,"argv":[..],"executable":X,"cwd":C,"env":{..},"uid":U,"gid":G,
        "groups":[..],"umask":M,"fds":["stdout","stderr"(,"cgroup")(,"cwd")]}  + SCM_RIGHTS fds
    <- {"ok":true,"pid":N} | {"ok":false,"error":"launch","errno":E,"strerror":S,"filename":F}
       | {"ok":false,"error":"exists"|"draining"|"protocol",...}
    -> {"op":"wait","id":A}       <- (when it ends) {"ok":true,"state":"exited","code":C}
                                     | {"ok":true,"state":"unknown"}
    -> {"op":"status","id":A}     <- state "running" (+pid) | "exited" (+code) | "unknown"
    -> {"op":"list"}              <- {"ok":true,"running":{A:pid},"exited":{A:code}}
    -> {"op":"forget","id":A}     <- {"ok":true} | {"ok":false,"error":"running"}
    -> {"op":"shutdown"}          <- {"ok":true}
``code`` is what subprocess reports: the exit code, or minus the signal number. An attempt id
is 1-200 characters of ``[A-Za-z0-9._-]`` and does not start with a dot.

What the client guarantees (``client``)
- If no supervisor answers, it starts one detached (``python -I -S``, its own session, a
  parent that exits at once) and waits for its "ready" line. It never waits on a clock.
- ``wait`` re-attaches after the connection drops. If the supervisor died, a new one knows
  nothing of the attempt, and the client reports ``Lost`` (requeue), never a success. After a
  reboot it is ``Lost`` too, unless the task ended before the reboot and its record survived:
  that record is the real result.
- If a spawn's connection drops after the request was sent, it raises ``SpawnUncertain``.
  The caller must sweep the attempt's cgroup and process group, not spawn it a second time.

How ``ProcessRunner`` uses it (``agent.process.runner``; built with ``node_root=``): it picks the
attempt id (job, task, attempt, random suffix; also the cgroup's name) and puts it in the
handle; it spawns with the log, ``cgroup.procs`` and working-directory descriptors it opened;
``LaunchFailed`` becomes the same ``FailureInfo`` as a Popen error; ``SpawnUncertain`` sweeps the
attempt's cgroup / token and raises ``RunnerError``; ``wait`` asks the supervisor (``Lost`` ->
tree swept, ``ExitResult(lost=True)``); ``recover`` asks ``status``; ``cleanup`` sends ``forget``.
``batch-agent run`` keeps direct Popen (no restart to survive; a cold supervisor costs that
command about 30 ms and a detached process that lingers for its idle time).

Limits: a SIGKILLed supervisor loses the status of the tasks it was running. They keep running,
reparented, and the agent must kill them through the handle's cgroup and pgid before it
requeues. Under systemd the supervisor shares the service's cgroup: use ``KillMode=process``,
or move the supervisor into its own cgroup, so that a ``systemctl restart`` does not kill it.
"""
