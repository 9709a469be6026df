"""The loss plot is redrawn while a job runs (so the Studio can show it), for any backend; a plot that cannot be
drawn is one warning event and training goes on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from eval_jobs import tiny_native_job
from kohya_standin import fixtures as standin_fixtures

from devserver_lora.train import runner
from devserver_lora.train.evaluate import live, lossplot
from devserver_lora.train.events import ProgressEvent

kohya_env = standin_fixtures.kohya_env


@pytest.fixture
def job(tmp_path: Path):
    return tiny_native_job(tmp_path, "live", 40)


def _until(check, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_the_plot_follows_new_events_while_running(job) -> None:
    plot = job.dir / lossplot.LOSS_PLOT_FILE
    with live.LivePlot(job, interval_s=0.05):
        job.append_event(ProgressEvent(step=1, total_steps=40, loss=1.0))
        assert _until(plot.is_file)
        first = plot.read_bytes()
        for step in range(2, 12):
            job.append_event(ProgressEvent(step=step, total_steps=40, loss=1.0 / step))
        assert _until(lambda: plot.read_bytes() != first)
    assert lossplot.series_of(job.events()).steps == list(range(1, 12))


def test_a_plot_that_cannot_be_drawn_is_one_warning(job, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def broken(_job):
        calls.append(1)
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(lossplot, "write_loss_plot", broken)
    with live.LivePlot(job, interval_s=0.02):
        job.append_event(ProgressEvent(step=1, total_steps=40, loss=1.0))
        assert _until(lambda: bool(calls))
        job.append_event(ProgressEvent(step=2, total_steps=40, loss=0.9))
        time.sleep(0.2)
    warnings = [e["message"] for e in job.events() if e["type"] == "log" and e["level"] == "warning"]
    assert warnings == ["the loss plot could not be drawn: no fonts today"] and len(calls) == 1


def test_a_kohya_run_shows_its_plot_before_it_ends(kohya_env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "DEFAULT_INTERVAL_S", 0.05)
    monkeypatch.setenv("STANDIN_STEP_S", "0.4")
    job = kohya_env.job()
    plot = job.dir / lossplot.LOSS_PLOT_FILE
    seen: list[list[int]] = []

    def watch() -> None:  # what a Studio page polling the job would see, while the run goes on
        if _until(plot.is_file, timeout_s=60):
            seen.append([e["step"] for e in job.events() if e["type"] == "progress"])
            seen.append([e["type"] for e in job.events() if e["type"] == "done"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert runner.run_worker(job, kohya_env.settings, backend="kohya", resume=False) == 0
    watcher.join(timeout=10)
    assert seen and seen[1] == [] and max(seen[0], default=0) < 8  # drawn mid-run, before the last step
    series = lossplot.series_of(job.events())
    assert series.steps[-1] == 8 and [s for s, _ in series.checkpoints][:2] == [2, 4]
    assert not series.lrs and len(lossplot.planned_lr(job.plan, 8)) == 8  # Kohya's events carry no rate: planned
