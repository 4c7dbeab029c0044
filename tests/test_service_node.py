"""NodeService node-level behaviour: retention (no link followed), task tokens, the start task."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from pathlib import Path

import pytest
from service_kit import job, make_store, service, sh, task, until

from agent.api.auth import HmacTaskTokens
from agent.spec import StartTask
from agent.tokens import TaskTokens, TokenRejected, load_secret


def fifo(node_root: Path) -> Path:
    path = node_root.parent / f"{node_root.name}.fifo"
    os.mkfifo(path, 0o666)
    path.chmod(0o666)
    return path


async def _gone(path: Path) -> bool:
    return not path.exists()


async def _exists(path: Path) -> bool:
    return path.exists()


async def test_retention_deletes_the_dir_and_follows_no_link(node_root: Path, tmp_path: Path) -> None:
    victim = Path(tempfile.mkdtemp(dir=node_root.parent, prefix=f"{node_root.name}.victim-"))
    (victim / "precious").write_text("keep me")
    svc = service(node_root, make_store("sqlite", tmp_path / "state"))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", sh(f"ln -s {victim} $AZ_BATCH_TASK_DIR/link; ln -s {victim} wd-link"),
                                 constraints={"retentionTime": "PT1S"}))
    await svc.add_task("j", task("keep", "/bin/true"))
    loop = asyncio.create_task(svc.serve())
    try:
        task_dir = svc.core.layout.task("j", "t").task_dir
        await until(lambda: _exists(task_dir / "link"), "the task to plant its link")
        await until(lambda: _gone(task_dir), "retention to delete the task dir")
    finally:
        loop.cancel()
        await svc.aclose()
    assert (victim / "precious").read_text() == "keep me"
    assert svc.core.layout.task("j", "keep").task_dir.exists()       # default retention: 7 days


async def test_token_in_env_scoped_to_its_job_and_live_only_while_running(node_root: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret = load_secret(state)
    assert load_secret(state) == secret
    assert stat.S_IMODE(os.stat(state / "task-token.key").st_mode) == 0o600
    gate = fifo(node_root)
    svc = service(node_root, make_store("memory", tmp_path), tokens=TaskTokens(secret), slots=2)
    await svc.add_job(job("j"))
    out = "$AZ_BATCH_NODE_SHARED_DIR/token.$AZ_BATCH_TASK_ID"
    dump = f"echo ${{AZ_BATCH_AUTHENTICATION_TOKEN:-none}} > {out}.tmp; mv {out}.tmp {out}"
    await svc.add_task("j", task("with", sh(f"{dump}; cat {gate} >/dev/null"),
                                 authenticationTokenSettings={"access": ["job"]}))
    await svc.add_task("j", task("without", sh(dump)))
    shared = node_root / "shared"
    loop = asyncio.create_task(svc.serve())
    try:
        await until(lambda: _exists(shared / "token.with"), "the task to write its token")
        await until(lambda: _exists(shared / "token.without"), "the other task")
        token = (shared / "token.with").read_text().strip()
        assert (shared / "token.without").read_text().strip() == "none"
        assert svc.tokens is not None
        claims = svc.tokens.claims(token)
        assert (claims.job_id, claims.task_id) == ("j", "with")
        principal = HmacTaskTokens(secret).verify_token(token)
        assert principal.may_access_job("j") and not principal.may_access_job("other-job")
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        with pytest.raises(TokenRejected):
            svc.tokens.claims(forged)
        await asyncio.to_thread(lambda: os.close(os.open(gate, os.O_WRONLY)))
        await until(lambda: _completed(svc, "j", "with"), "the task to end")
        with pytest.raises(TokenRejected, match="no longer running"):
            svc.tokens.claims(token)
    finally:
        loop.cancel()
        await svc.aclose()


async def _completed(svc, job_id: str, task_id: str) -> bool:  # type: ignore[no-untyped-def]
    return (await svc.get_task(job_id, task_id)).state == "completed"


async def test_start_task_runs_first_and_gates_tasks(node_root: Path, tmp_path: Path) -> None:
    start = StartTask.model_validate({"commandLine": sh("touch $AZ_BATCH_NODE_SHARED_DIR/started")})
    svc = service(node_root, make_store("memory", tmp_path), start_task=start, state_dir=tmp_path / "state")
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", sh("test -e $AZ_BATCH_NODE_SHARED_DIR/started")))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    t = await svc.get_task("j", "t")
    assert t.state == "completed" and t.execution_info.exit_code == 0
    info = svc.start_task_info()
    assert info is not None and info["state"] == "completed" and info["result"] == "success"
    await svc.aclose()
    again = service(node_root, make_store("memory", tmp_path), start_task=start, state_dir=tmp_path / "state")
    assert again.gate.ready                                  # same boot: it does not run again
    await again.aclose()


async def test_failed_start_task_with_wait_for_success_keeps_the_node_closed(node_root: Path,
                                                                            tmp_path: Path) -> None:
    start = StartTask.model_validate({"commandLine": sh("exit 4"), "maxTaskRetryCount": 1})
    svc = service(node_root, make_store("memory", tmp_path), start_task=start)
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", "/bin/true"))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert (await svc.get_task("j", "t")).state == "active"
    info = svc.start_task_info()
    assert info is not None and info["result"] == "failure" and info["exitCode"] == 4 and info["retryCount"] == 1
    await svc.aclose()


@pytest.mark.skipif(os.geteuid() != 0, reason="per-task accounts exist only when the agent is root")
async def test_retention_deletes_the_per_task_account(node_root: Path, tmp_path: Path) -> None:
    import pwd

    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    out = "$AZ_BATCH_NODE_SHARED_DIR/who"
    await svc.add_task("j", task("t", sh(f"id -un > {out}.tmp; mv {out}.tmp {out}"),
                                 userIdentity={"autoUser": {"scope": "task"}},
                                 constraints={"retentionTime": "PT0S"}))
    loop = asyncio.create_task(svc.serve())
    try:
        who = node_root / "shared" / "who"
        await until(lambda: _exists(who), "the task to run")
        name = who.read_text().strip()
        assert name.startswith("_azbatchtask_")
        await until(lambda: _gone(svc.core.layout.task("j", "t").task_dir), "retention")
        await until(lambda: _no_account(name), "the account to be deleted")
    finally:
        loop.cancel()
        await svc.aclose()
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


async def _no_account(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return True
    return False
