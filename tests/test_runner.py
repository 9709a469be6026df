"""The detached runner: new session, status re-attach, cancel (checkpoints kept), resume (steps keep counting)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from kohya_standin import fixtures as standin_fixtures

from devserver_lora.errors import JobError
from devserver_lora.train import runner
from devserver_lora.train.cli import main as train_main

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def wait_for(predicate, timeout=30.0, poll=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("condition not met in time")


def kinds(job, kind):
    return [e for e in job.events() if e["type"] == kind]


def test_detached_run_reaches_done(kohya_env):
    job = kohya_env.job()
    pid = runner.start(job, kohya_env.settings, backend="kohya")
    assert job.info["pid"] == pid and job.state == "running"
    # a new session: closing our terminal (SIGHUP to our session) does not reach it
    assert os.getsid(pid) == pid != os.getsid(0)
    state = runner.wait(job, timeout_s=60)
    assert state == "done"
    info = job.info
    assert info["lora_path"].endswith("outputs/tiny_sd3_lora.safetensors") and info["backend"] == "kohya"
    states = [e["state"] for e in kinds(job, "state")]
    assert states == ["created", "running", "done"]
    with pytest.raises(JobError, match="already done"):
        runner.start(job, kohya_env.settings, backend="kohya")


def test_cancel_then_resume_keeps_checkpoints_and_step_count(kohya_env, monkeypatch):
    monkeypatch.setenv("STANDIN_STEP_S", "0.25")
    # 4 images x 1 repeat / batch 1 = 4 steps per epoch; a state every 4 steps lies on an epoch boundary, where
    # sd-scripts resumes exactly (from a mid-epoch state it goes on with the next epoch, as recorded).
    job = kohya_env.job(max_train_steps=12, save_every_n_steps=4)
    runner.start(job, kohya_env.settings, backend="kohya")
    wait_for(lambda: any("step00000004" in e["path"] for e in kinds(job, "checkpoint")))
    worker = job.info["pid"]
    os.kill(worker, signal.SIGHUP)  # what closing the terminal would send: ignored
    time.sleep(0.2)
    assert runner.pid_alive(worker, marker=runner.RUNNER_MODULE)
    child = job.info["child_pid"]
    assert runner.cancel(job, grace_s=20) == "cancelled"
    assert not runner.pid_alive(child) and not runner.runner_alive(job)
    kept = sorted(p.name for p in job.outputs_dir.glob("*.safetensors"))
    assert "tiny_sd3_lora-step00000004.safetensors" in kept and "tiny_sd3_lora.safetensors" not in kept
    before = max(e["step"] for e in kinds(job, "progress"))
    monkeypatch.setenv("STANDIN_STEP_S", "0.002")
    runner.start(job, kohya_env.settings, backend="kohya", resume=True)
    assert runner.wait(job, timeout_s=60) == "done"
    steps = [e["step"] for e in kinds(job, "progress")]
    resumed = steps[steps.index(before) + 1:]
    # (a resume may go back a few steps to the last saved state, never below it)
    assert resumed and min(resumed) >= 4 and steps[-1] == 12 and resumed == sorted(resumed)
    assert kinds(job, "done")[-1]["steps"] == 12
    names = [p.name for p in job.outputs_dir.glob("*.safetensors")]
    assert len(names) == len(set(names)) and not any(n.endswith("-2.safetensors") for n in names)


def test_a_resume_during_a_cancels_grace_period_is_not_killed_by_it(kohya_env, monkeypatch):
    """The page's Cancel waits up to its grace period for the worker to go; the job says "cancelled" within a second
    and a student may press Resume at once. The cancel must not then take the resumed run for the one it stops."""
    import threading

    monkeypatch.setenv("STANDIN_STEP_S", "0.25")
    job = kohya_env.job(max_train_steps=12, save_every_n_steps=4)
    runner.start(job, kohya_env.settings, backend="kohya")
    wait_for(lambda: any("step00000004" in e["path"] for e in kinds(job, "checkpoint")))
    first = job.info["pid"]
    outcome: list[str] = []
    # The cancel looks for its worker every 3 s here, so the resume surely starts while it waits (with the default
    # 0.2 s the cancel could see its worker gone first and return before the resume: no race to test then).
    cancelling = threading.Thread(target=lambda: outcome.append(runner.cancel(job, grace_s=20, poll_s=3.0)))
    cancelling.start()
    wait_for(lambda: job.state == "cancelled")
    wait_for(lambda: not runner.pid_alive(first, marker=runner.RUNNER_MODULE))
    monkeypatch.setenv("STANDIN_STEP_S", "0.05")
    second = runner.start(job, kohya_env.settings, backend="kohya", resume=True)
    cancelling.join(timeout=30)
    assert not cancelling.is_alive() and outcome == ["running"]
    assert runner.runner_alive(job) and job.info["pid"] == second != first
    assert runner.wait(job, timeout_s=60) == "done"
    assert [e["state"] for e in kinds(job, "state")][-3:] == ["cancelled", "running", "done"]


def test_worker_lost_is_reconciled_and_resumable(kohya_env, monkeypatch):
    monkeypatch.setenv("STANDIN_STEP_S", "0.25")
    # a state on an epoch boundary (4 steps per epoch): the only kind a Kohya resume goes back to
    job = kohya_env.job(max_train_steps=12, save_every_n_steps=4)
    runner.start(job, kohya_env.settings, backend="kohya")
    wait_for(lambda: any("step00000004" in e["path"] for e in kinds(job, "checkpoint")))
    os.killpg(job.info["pgid"], signal.SIGKILL)  # the machine "crashed" under the worker
    wait_for(lambda: not runner.runner_alive(job))
    assert runner.reconcile(job) == "failed"
    assert job.info["diagnosis"] == "worker_lost" and "resume" in job.info["hint"]
    # its trainer lost its reader and stops on the broken pipe
    wait_for(lambda: not runner.pid_alive(job.info["child_pid"]), timeout=30)
    monkeypatch.setenv("STANDIN_STEP_S", "0.002")
    runner.start(job, kohya_env.settings, backend="kohya", resume=True)
    assert runner.wait(job, timeout_s=60) == "done"


def test_cli_run_status_from_plan_file(kohya_env, capsys, monkeypatch):
    job = kohya_env.job()
    plan_file = kohya_env.root / "plan.json"
    plan_file.write_text(job.plan.model_dump_json())
    common = ["--jobs-dir", str(kohya_env.jobs_dir), "--kohya-dir", str(kohya_env.kohya_dir),
              "--models-dir", str(kohya_env.models_dir)]
    assert train_main(["run", str(plan_file), "--backend", "kohya", "--json", "--no-preflight", "--timeout", "60",
                       *common]) == 0
    lines = capsys.readouterr().out
    new_id = json.loads(lines[lines.index("{"):lines.index("}\n") + 1])["job"]
    assert new_id != job.id
    assert train_main(["status", new_id, "--json", *common]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "done" and status["progress"]["step"] == 8 and len(status["checkpoints"]) == 5
    assert train_main(["status", "--json", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {j["id"] for j in listed} == {job.id, new_id}
    assert train_main(["status", new_id, "--follow", "--timeout", "5", *common]) == 0
    text = capsys.readouterr().out
    assert "LoRA ready" in text and "8/8" in text
    assert train_main(["cancel", new_id, *common]) == 1  # not running: a clear error, exit 1


class _FakeBackend:
    """Any backend honouring the contract: the runner must record its outcome the same way."""

    name = "fake"

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def preflight(self, job):
        return []

    def run(self, job, *, resume=False, stop=None):
        from devserver_lora.errors import BackendError
        from devserver_lora.train.events import ErrorEvent, ProgressEvent

        job.append_event(ProgressEvent(step=1, total_steps=2))
        if self.outcome == "cancelled":
            raise BackendError("stopped", diagnosis="cancelled")
        if self.outcome == "failed":
            job.append_event(ErrorEvent(diagnosis="cuda_oom", message="CUDA out of memory", hint="smaller batch"))
            raise BackendError("CUDA out of memory", hint="smaller batch", diagnosis="cuda_oom")
        if self.outcome == "crash":
            raise RuntimeError("a bug")
        path = job.outputs_dir / f"{job.plan.output_name}.safetensors"
        path.write_bytes(b"x")
        return path


@pytest.mark.parametrize(("outcome", "state", "code"), [("done", "done", 0), ("failed", "failed", 1),
                                                         ("cancelled", "cancelled", 0), ("crash", "failed", 1)])
def test_worker_records_any_backends_outcome(kohya_env, monkeypatch, outcome, state, code):
    import devserver_lora.train.backends as backends

    monkeypatch.setattr(backends, "get_backend", lambda name, settings, **kw: _FakeBackend(outcome))
    job = kohya_env.job()
    assert runner.run_worker(job, kohya_env.settings, backend="native", resume=False) == code
    assert job.state == state
    errors = kinds(job, "error")
    if outcome == "failed":
        assert len(errors) == 1 and job.info["diagnosis"] == "cuda_oom" and job.info["hint"] == "smaller batch"
    if outcome == "crash":
        assert errors[-1]["diagnosis"] == "internal_error" and "a bug" in errors[-1]["message"]
    if outcome == "done":
        assert job.info["lora_path"].endswith("tiny_sd3_lora.safetensors")
    assert kinds(job, "state")[-1]["state"] == state


def test_run_refuses_in_the_foreground_when_the_native_backend_has_no_model(kohya_env, capsys):
    # A blocker must show before a detached worker starts, whichever backend runs the job.
    from devserver_lora.train.cli import main

    job = kohya_env.job()
    code = main(["run", job.id, "--backend", "native", "--jobs-dir", str(kohya_env.jobs_dir)])
    captured = capsys.readouterr()
    assert code == 1
    assert "no base model configured" in captured.out + captured.err
    assert "not started" in captured.err
    assert job.state == "created" and "pid" not in job.info  # no worker was started


def test_status_says_cancelled_once(kohya_env, monkeypatch, capsys):
    # issue 12 item 7: `status` printed "cancelled cancelled; finished checkpoints are kept"
    import devserver_lora.train.backends as backends

    monkeypatch.setattr(backends, "get_backend", lambda name, settings, **kw: _FakeBackend("cancelled"))
    job = kohya_env.job()
    runner.run_worker(job, kohya_env.settings, backend="native", resume=False)
    capsys.readouterr()
    assert train_main(["status", job.id, "--jobs-dir", str(kohya_env.jobs_dir)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line == f"job {job.id}: cancelled; finished checkpoints are kept"
    assert train_main(["status", "--jobs-dir", str(kohya_env.jobs_dir)]) == 0
    listed = capsys.readouterr().out
    assert listed.count("cancelled") == 1 and "finished checkpoints are kept" in listed
    job.set_state("cancelled", message="cancelled; finished checkpoints are kept")  # a job from before the fix
    assert train_main(["status", job.id, "--jobs-dir", str(kohya_env.jobs_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"job {job.id}: cancelled; finished checkpoints are kept"
