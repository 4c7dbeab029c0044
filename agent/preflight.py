"""``plan --check``: an opt-in storage pre-flight. The only part of ``plan`` that talks to
the network, and only when asked.

For every task given: each resource file's input exists (HEAD for ``httpUrl``, a listing for a
container with its prefix), each output container accepts writes, and each SAS expires after the
wall clock plus an allowance for the upload. Results are plain dicts for the plan output; URLs
appear only redacted.

The write check writes nothing (``BlobTransport.container_writable``): a Put Block List to a fresh
name on condition ``If-Match: *``, which the service authorises (SAS ``w``) before it finds the
condition false. Chosen over the alternatives: a probe blob put then deleted stays behind when
the SAS lacks ``d``; a Put Block leaves an uncommitted blob (listed with
``include=uncommittedblobs``, collected only after a week); reading ``sp`` from the SAS says
nothing for an account key, a stored access policy or a revoked SAS. The check must not change
what a user finds in the container.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from agent.config import AgentConfig
from agent.redact import redact_url
from agent.spec import TaskBase
from agent.status import utcnow
from agent.taskrunner import limits_for

UPLOAD_ALLOWANCE = timedelta(minutes=30)


def _expiry_warning(url: str, needed_until: Any, what: str) -> str | None:
    from agent.blob import parse_sas_expiry

    expiry = parse_sas_expiry(url)
    if expiry is None or needed_until is None or expiry >= needed_until:
        return None
    return f"{what}: the SAS expires at {expiry.isoformat()}, before the task could finish " \
           f"({needed_until.isoformat()}: wall clock plus {UPLOAD_ALLOWANCE} for uploads)"


async def run_checks(specs: Sequence[TaskBase], config: AgentConfig) -> list[dict[str, Any]]:
    from agent.blob import BlobError, BlobTransport
    from agent.staging import auto_storage_container, transport_config

    results: list[dict[str, Any]] = []
    async with BlobTransport(transport_config(config.storage)) as transport:
        for spec in specs:
            task_id = getattr(spec, "id", "")
            limits = limits_for(spec, None)
            needed_until = utcnow() + (limits.wall_clock + UPLOAD_ALLOWANCE if limits.wall_clock else
                                       UPLOAD_ALLOWANCE)
            for i, rf in enumerate(spec.resource_files or ()):
                where = f"{task_id}.resourceFiles[{i}]"
                entry: dict[str, Any] = {"check": where}
                try:
                    if rf.http_url:
                        entry["url"] = redact_url(rf.http_url)
                        entry["ok"] = await transport.exists(rf.http_url)
                        entry["detail"] = "exists" if entry["ok"] else "not found (BlobNotFound)"
                        url = rf.http_url
                    else:
                        if rf.auto_storage_container_name:
                            resolved = auto_storage_container(rf.auto_storage_container_name, config.storage)
                            if resolved is None:
                                entry.update(ok=False, detail="no auto-storage account in the agent config "
                                                              "([storage] connection_string or account_url)")
                                results.append(entry)
                                continue
                            url, credential = resolved
                        else:
                            url, credential = rf.storage_container_url or "", None
                        entry["url"] = redact_url(url)
                        blobs = await transport.list_blobs(url, rf.blob_prefix, credential=credential)
                        entry["ok"] = True
                        entry["detail"] = f"{len(blobs)} blob(s), {sum(b.size for b in blobs)} bytes"
                except BlobError as exc:
                    entry.update(ok=False, detail=f"{exc.kind}: {exc}")
                    url = ""
                warning = _expiry_warning(url, needed_until, where) if url else None
                if warning:
                    entry["warning"] = warning
                results.append(entry)
            for i, of in enumerate(getattr(spec, "output_files", None) or ()):
                url = of.destination.container.container_url
                where = f"{task_id}.outputFiles[{i}]"
                entry = {"check": where, "url": redact_url(url)}
                try:
                    entry["ok"] = await transport.container_writable(url)
                    entry["detail"] = "accepts writes" if entry["ok"] else "write denied (FileUploadAccessDenied)"
                except BlobError as exc:
                    entry.update(ok=False, detail=f"{exc.kind}: {exc}")
                warning = _expiry_warning(url, needed_until, where)
                if warning:
                    entry["warning"] = warning
                results.append(entry)
    return results
