"""The job lifecycle under NodeService, real processes: prep / release, job actions, wall clock,
the job manager, terminate / delete / reactivate / disable / enable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from service_kit import job, make_store, service, sh, state_of, task, until

from agent.errors import ServiceError

LOG = "$AZ_BATCH_NODE_SHARED_DIR/log"


def log_line(what: str) -> str:
    return sh(f"echo {what} >> {LOG}")


def lines(root: Path) -> list[str]:
    path = root / "shared" / "log"
    return path.read_text().split() if path.exists() else []


async def job_state(svc, job_id: str) -> str:  # type: ignore[no-untyped-def]
    return str((await svc.get_job(job_id)).state)


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_prep_once_before_first_task_release_once_at_terminate(node_root: Path, tmp_path: Path,
                                                                      store_kind: str) -> None:
    svc = service(node_root, make_store(store_kind, tmp_path / "state"), slots=2)
    await svc.add_job(job("j", jobPreparationTask={"commandLine": log_line("prep")},
                          jobReleaseTask={"commandLine": log_line("release")}))
    for i in range(3):
        await svc.add_task("j", task(f"t{i}", log_line(f"task{i}")))
    await asyncio.wait_for(svc.run_until_idle(), 60)
    got = lines(node_root)
    assert got[0] == "prep" and got.count("prep") == 1 and sorted(got[1:]) == ["task0", "task1", "task2"]
    prep, rel = await svc.prep_release_status("j")
    assert prep is not None and prep["state"] == "completed" and prep["exitCode"] == 0 and rel is None
    assert not any(k.startswith("x-agent") for k in prep)
    await svc.terminate_job("j")
    await asyncio.wait_for(svc.run_until_idle(), 60)
    assert lines(node_root).count("release") == 1
    record = await svc.get_job("j")
    assert record.state == "completed" and record.execution_info["terminateReason"] == "UserTerminate"
    assert record.previous_state == "terminating" and record.execution_info.get("endTime")
    _, rel = await svc.prep_release_status("j")
    assert rel is not None and rel["state"] == "completed"
    await svc.aclose()


async def test_no_release_when_prep_never_ran_here(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j", jobPreparationTask={"commandLine": log_line("prep")},
                          jobReleaseTask={"commandLine": log_line("release")}))
    await svc.terminate_job("j")
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert lines(node_root) == [] and await job_state(svc, "j") == "completed"
    await svc.aclose()


async def test_failed_prep_with_wait_for_success_blocks_tasks(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("sqlite", tmp_path / "state"))
    await svc.add_job(job("j", jobPreparationTask={"commandLine": sh("exit 5")}))
    await svc.add_task("j", task("t", log_line("task")))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert await state_of(svc, "j", "t") == "active" and lines(node_root) == []
    prep, _ = await svc.prep_release_status("j")
    assert prep is not None and prep["result"] == "failure" and prep["exitCode"] == 5
    await svc.aclose()


async def test_failed_prep_without_wait_for_success_lets_tasks_run(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j", jobPreparationTask={"commandLine": sh("exit 5"), "waitForSuccess": False}))
    await svc.add_task("j", task("t", log_line("task")))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert await state_of(svc, "j", "t") == "completed"
    await svc.aclose()


async def test_on_all_tasks_complete_terminates(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", "/bin/true"))
    await svc.update_job("j", {"onAllTasksComplete": "terminatejob"}, replace_all=False)
    await asyncio.wait_for(svc.run_until_idle(), 30)
    record = await svc.get_job("j")
    assert record.state == "completed" and record.execution_info["terminateReason"] == "AllTasksComplete"
    await svc.aclose()


@pytest.mark.parametrize(("action", "state", "reason"), [("terminate", "completed", "TaskFailed"),
                                                        ("disable", "disabled", None)])
async def test_on_task_failure_job_action(node_root: Path, tmp_path: Path, action: str, state: str,
                                          reason: str | None) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j", onTaskFailure="performexitoptionsjobaction"))
    await svc.add_task("j", task("t", sh("exit 7"), exitConditions={
        "exitCodes": [{"code": 7, "exitOptions": {"jobAction": action}}]}))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    record = await svc.get_job("j")
    assert record.state == state and record.execution_info.get("terminateReason") == reason
    await svc.aclose()


async def test_on_task_failure_noaction_leaves_job_active(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", sh("exit 7")))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert await job_state(svc, "j") == "active"
    await svc.aclose()


async def test_job_wall_clock_terminates_job_and_its_running_task(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j", constraints={"maxWallClockTime": "PT1S"}))
    await svc.add_task("j", task("t", "/bin/sleep 60"))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    record = await svc.get_job("j")
    assert record.state == "completed" and record.execution_info["terminateReason"] == "MaxWallClockTimeExpiry"
    t = await svc.get_task("j", "t")
    assert t.state == "completed" and t.execution_info.failure_info is not None
    assert t.execution_info.failure_info.code == "TaskEnded"
    await svc.aclose()


async def test_job_manager_runs_first_and_kills_job_on_completion(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("sqlite", tmp_path / "state"))
    await svc.add_job(job("j", jobManagerTask={"id": "jm", "commandLine": log_line("jm")}))
    await svc.add_task("j", task("t", log_line("task")))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    record = await svc.get_job("j")
    assert lines(node_root)[0] == "jm"
    assert record.state == "completed" and record.execution_info["terminateReason"] == "JMComplete"
    await svc.aclose()


async def test_terminate_running_task_and_reactivate(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", sh("[ -e $AZ_BATCH_NODE_SHARED_DIR/again ] || sleep 60")))
    loop = asyncio.create_task(svc.serve())
    try:
        await until(lambda: _running(svc, "j", "t"), "the task to run")
        await svc.update_task("j", "t", {"maxWallClockTime": "PT1H"})
        await svc.terminate_task("j", "T")
        await until(lambda: _completed(svc, "j", "t"), "the task to end")
        t = await svc.get_task("j", "t")
        assert t.execution_info.failure_info is not None and t.execution_info.failure_info.code == "TaskEnded"
        with pytest.raises(ServiceError) as err:
            await svc.terminate_task("j", "t")
        assert err.value.code == "TaskCompleted"
        with pytest.raises(ServiceError) as err:
            await svc.update_task("j", "t", {"maxWallClockTime": "PT1S"})
        assert err.value.code == "TaskCompleted"
        (node_root / "shared" / "again").touch()
        again = await svc.reactivate_task("j", "t")
        assert again.state == "active" and again.execution_info.retry_count == 0
        assert again.body["constraints"] == {"maxWallClockTime": "PT1H"}
        await until(lambda: _completed(svc, "j", "t"), "the reactivated task to end")
        t = await svc.get_task("j", "t")
        assert t.execution_info.exit_code == 0 and t.execution_info.failure_info is None
    finally:
        loop.cancel()
        await svc.aclose()


async def _running(svc, job_id: str, task_id: str) -> bool:  # type: ignore[no-untyped-def]
    return await state_of(svc, job_id, task_id) == "running" and \
        (job_id.casefold(), task_id.casefold()) in svc.core.running


async def _completed(svc, job_id: str, task_id: str) -> bool:  # type: ignore[no-untyped-def]
    return await state_of(svc, job_id, task_id) == "completed"


async def test_reactivate_refuses_success_and_active(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("ok", "/bin/true"))
    await svc.add_task("j", task("wait", "/bin/true", dependsOn=None))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    with pytest.raises(ServiceError) as err:
        await svc.reactivate_task("j", "ok")
    assert err.value.code == "TaskSucceeded"
    await svc.add_task("j", task("new", "/bin/true"))
    with pytest.raises(ServiceError) as err:
        await svc.reactivate_task("j", "new")
    assert err.value.code == "TaskNotCompleted"
    await svc.aclose()


async def test_delete_running_task_kills_it_and_removes_its_dir(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", "/bin/sleep 60"))
    loop = asyncio.create_task(svc.serve())
    try:
        await until(lambda: _running(svc, "j", "t"), "the task to run")
        task_dir = svc.core.layout.task("j", "t").task_dir
        assert task_dir.exists()
        await svc.delete_task("j", "t")
        with pytest.raises(ServiceError) as err:
            await svc.get_task("j", "t")
        assert err.value.code == "TaskNotFound"
        await until(lambda: _gone(task_dir), "the task dir to go")
        assert not svc.core.running
    finally:
        loop.cancel()
        await svc.aclose()


async def _gone(path: Path) -> bool:
    return not path.exists()


async def test_delete_job_runs_release_and_removes_everything(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("sqlite", tmp_path / "state"))
    await svc.add_job(job("j", jobPreparationTask={"commandLine": "/bin/true"},
                          jobReleaseTask={"commandLine": log_line("release")}))
    await svc.add_task("j", task("t", "/bin/true"))
    await asyncio.wait_for(svc.run_until_idle(), 30)
    await svc.delete_job("j")
    with pytest.raises(ServiceError) as err:
        await svc.delete_job("J")
    assert err.value.code == "JobBeingDeleted"
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert lines(node_root) == ["release"]
    with pytest.raises(ServiceError) as err:
        await svc.get_job("j")
    assert err.value.code == "JobNotFound"
    assert not (node_root / "workitems" / "j").exists()
    await svc.aclose()


async def test_disable_requeue_and_enable(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    await svc.add_task("j", task("t", sh("if [ -e $AZ_BATCH_NODE_SHARED_DIR/go ]; then exit 0; fi; "
                                         "touch $AZ_BATCH_NODE_SHARED_DIR/go; sleep 60")))
    loop = asyncio.create_task(svc.serve())
    try:
        await until(lambda: _exists(node_root / "shared" / "go"), "the task to run")
        await svc.disable_job("j", "requeue")
        await until(lambda: _job_is(svc, "j", "disabled"), "the job to be disabled")
        t = await svc.get_task("j", "t")
        assert t.state == "active" and t.execution_info.requeue_count == 1
        with pytest.raises(ServiceError) as err:
            await svc.disable_job("j", "requeue")
        assert err.value.code == "JobNotActive"
        await svc.enable_job("j")
        await until(lambda: _completed(svc, "j", "t"), "the requeued task to complete")
        t = await svc.get_task("j", "t")
        assert t.execution_info.exit_code == 0 and t.execution_info.retry_count == 0
    finally:
        loop.cancel()
        await svc.aclose()


async def _exists(path: Path) -> bool:
    return path.exists()


async def _job_is(svc, job_id: str, state: str) -> bool:  # type: ignore[no-untyped-def]
    return await job_state(svc, job_id) == state


async def test_commands_refused_by_state(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j"))
    with pytest.raises(ServiceError) as err:
        await svc.add_job(job("J"))
    assert err.value.code == "JobExists"
    await svc.add_task("j", task("t", "/bin/true"))
    with pytest.raises(ServiceError) as err:
        await svc.add_task("j", task("T", "/bin/true"))
    assert err.value.code == "TaskExists"
    results = await svc.add_tasks("j", {"value": [task("t", "/bin/true"), task("u", "/bin/true")]})
    assert [r.error.code if r.error else "ok" for r in results] == ["TaskExists", "ok"]
    with pytest.raises(ServiceError) as err:
        await svc.update_job("j", {"jobManagerTask": {"id": "x", "commandLine": "x"}}, replace_all=False)
    assert err.value.code == "InvalidPropertyValue"
    await svc.terminate_job("j", "because")
    await asyncio.wait_for(svc.run_until_idle(), 30)
    assert (await svc.get_job("j")).execution_info["terminateReason"] == "because"
    with pytest.raises(ServiceError) as err:
        await svc.add_task("j", task("v", "/bin/true"))
    assert err.value.code == "JobCompleted"
    with pytest.raises(ServiceError) as err:
        await svc.get_task("nope", "t")
    assert err.value.code == "JobNotFound"
    await svc.aclose()


async def test_task_id_of_the_prep_or_release_task_is_refused(node_root: Path, tmp_path: Path) -> None:
    svc = service(node_root, make_store("memory", tmp_path))
    await svc.add_job(job("j", jobPreparationTask={"id": "prep", "commandLine": "/bin/true"},
                          jobReleaseTask={"id": "rel", "commandLine": "/bin/true"}))
    for task_id, code in (("PREP", "TaskIdSameAsJobPreparationTask"), ("rel", "TaskIdSameAsJobReleaseTask")):
        with pytest.raises(ServiceError) as err:
            await svc.add_task("j", task(task_id, "/bin/true"))
        assert err.value.code == code and err.value.path == "id"
    await svc.aclose()
