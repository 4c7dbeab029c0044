"""Lifecycle hooks, one per file (the Nomad task-runner pattern).

- ``gate``: fails a task that uses a field no hook or runner implements, naming the field.
- ``taskdir``: the node and task directories, owned by the task user; a clean ``wd`` per attempt.
- ``resources``: ``resourceFiles`` in (§4).
- ``image``: the container image and the container to create (§8).
- ``outputs``: ``outputFiles`` out (§7).
"""
