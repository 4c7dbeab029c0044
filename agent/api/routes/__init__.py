"""The local API's Batch routes (jobs, tasks, task files) over a ``NodeService`` and its store.

Units, one concern each:

    common   the routes' shared context (service, store), the error mapping (ServiceError /
             SpecError / the store's not-found -> Batch error bodies), conditional headers
    render   a JobRecord / TaskRecord as Batch's ``BatchJob`` / ``BatchTask`` JSON (durations
             every client reads, url, eTag, times, executionInfo, nodeInfo) and the entity headers
    jobs     /jobs, /jobs/{jobId} and its actions, task counts, prep/release status
    tasks    /jobs/{jobId}/tasks..., addtaskcollection, subtasksinfo
    files    /jobs/{jobId}/tasks/{taskId}/files...: every byte is reached through ``agent.nodefs``
             beneath the task directory (no link followed, no ``..``), since the task owns it

Commands go to ``NodeService`` (it owns the lifecycle rules); reads (get / list / counts) go to
the store directly through ``StoreThread``. Must not: keep state, log a body or a header, or read
a task's file by a path string (always an fd beneath the task dir).
"""
