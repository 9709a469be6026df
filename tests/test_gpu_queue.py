"""One GPU, one training, for the terminal as for the Studio: a second start is refused, `run --wait` queues in the
Studio's order (train/gpu_queue.py), and `cancel` takes a queued job out so no pump starts it later."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kohya_standin import fixtures as standin_fixtures

from devserver_lora.errors import GpuBusyError
from devserver_lora.train import gpu_queue, runner
from devserver_lora.train.cli import main as train_main

kohya_env = standin_fixtures.kohya_env  # the shared pytest fixture


def _common(env) -> list[str]:
    return ["--jobs-dir", str(env.jobs_dir), "--kohya-dir", str(env.kohya_dir), "--models-dir", str(env.models_dir)]


def _state_times(job) -> dict[str, float]:
    """When the job's worker recorded each state (first time)."""
    times: dict[str, float] = {}
    for e in job.events():
        if e["type"] == "state":
            times.setdefault(e["state"], e["ts"])
    return times


def _slow_job(env, monkeypatch, name: str):
    monkeypatch.setenv("STANDIN_STEP_S", "0.3")
    job = env.job(name, max_train_steps=8, save_every_n_steps=4)
    runner.start(job, env.settings, backend="kohya")
    monkeypatch.setenv("STANDIN_STEP_S", "0.002")  # what starts later runs fast
    return job


def test_a_second_start_is_refused_while_a_job_trains_and_writes_nothing(kohya_env, monkeypatch):
    first = _slow_job(kohya_env, monkeypatch, "first_lora")
    second = kohya_env.job("second_lora")
    before = sorted(p.name for p in second.dir.rglob("*"))
    with pytest.raises(GpuBusyError) as refused:
        runner.start(second, kohya_env.settings, backend="kohya")
    assert first.id in refused.value.message and "--wait" in (refused.value.hint or "")
    assert second.state == "created" and not gpu_queue.is_queued(second.info)
    assert sorted(p.name for p in second.dir.rglob("*")) == before
    # the terminal's `run` says the same, as an error with its hint, exit 1
    assert train_main(["run", second.id, "--backend", "kohya", "--no-preflight", *_common(kohya_env)]) == 1
    assert second.state == "created"
    assert runner.wait(first, timeout_s=60) == "done"
    runner.start(second, kohya_env.settings, backend="kohya")  # free again
    assert runner.wait(second, timeout_s=60) == "done"


def test_run_wait_queues_behind_a_studio_queued_job_and_starts_in_order(kohya_env, monkeypatch, capsys):
    first = _slow_job(kohya_env, monkeypatch, "first_lora")
    queued_earlier = kohya_env.job("studio_lora")
    gpu_queue.enqueue(queued_earlier, resume=False, backend="kohya")  # as the Studio queues a run
    waiter = kohya_env.job("terminal_lora")
    code = train_main(["run", waiter.id, "--wait", "--backend", "kohya", "--no-preflight", "--json",
                       "--timeout", "120", *_common(kohya_env)])
    assert code == 0, capsys.readouterr()
    assert "queued (1 before it)" in capsys.readouterr().err.replace("\n", " ")
    assert [j.state for j in (first, queued_earlier, waiter)] == ["done", "done", "done"]
    # The Studio-queued job started when the first ended (the waiting terminal pumped the shared queue), and the
    # terminal's job only after that one had finished: one training at a time, in queue order.
    t_first, t_studio, t_term = (_state_times(j) for j in (first, queued_earlier, waiter))
    assert t_first["done"] <= t_studio["running"] <= t_studio["done"] <= t_term["running"]
    assert not any(gpu_queue.is_queued(j.info) for j in (queued_earlier, waiter))
    assert any("queued" in e.get("message", "") for e in waiter.events() if e["type"] == "log")


def test_cancel_takes_a_queued_job_out_of_the_queue(kohya_env, monkeypatch, capsys):
    first = _slow_job(kohya_env, monkeypatch, "first_lora")
    waiting = kohya_env.job("waiting_lora")
    gpu_queue.enqueue(waiting, resume=False, backend="kohya")
    assert gpu_queue.position(waiting) == 0
    assert train_main(["cancel", waiting.id, "--json", *_common(kohya_env)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "cancelled"
    assert not gpu_queue.is_queued(waiting.info) and gpu_queue.position(waiting) is None
    assert runner.wait(first, timeout_s=60) == "done"
    assert gpu_queue.start_head(kohya_env.jobs_dir, kohya_env.settings) is None
    assert waiting.state == "cancelled"


def test_two_pumps_at_once_start_one_job(kohya_env, monkeypatch):
    """Two processes' pumps (a Studio and a waiting terminal) racing for a free GPU start the head once, and the
    next job stays queued while it trains."""
    monkeypatch.setenv("STANDIN_STEP_S", "0.3")
    jobs = [kohya_env.job(f"lora_{i}", max_train_steps=8, save_every_n_steps=4) for i in range(2)]
    for job in jobs:
        gpu_queue.enqueue(job, resume=False, backend="kohya")
        time.sleep(0.01)  # distinct queued_at
    started: list[str | None] = []

    def pump() -> None:
        started.append(gpu_queue.start_head(kohya_env.jobs_dir, kohya_env.settings))

    threads = [threading.Thread(target=pump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [s for s in started if s] == [jobs[0].id]
    assert jobs[0].state == "running" and gpu_queue.is_queued(jobs[1].info)
    assert runner.wait(jobs[0], timeout_s=60) == "done"
    assert gpu_queue.start_head(kohya_env.jobs_dir, kohya_env.settings) == jobs[1].id
    assert runner.wait(jobs[1], timeout_s=60) == "done"
