"""`job_results`: what the LoRA Studio's job page lists of a job (sheets, report, loss plot, samples), only files
that exist, paths relative to the job folder; a damaged evaluation is a problem in the listing, not an error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from eval_jobs import tiny_native_job
from PIL import Image

from devserver_lora.train.evaluate.listing import job_results
from devserver_lora.train.evaluate.report import write_report
from devserver_lora.train.evaluate.results import EVAL_DIR, RESULTS_FILE, EvaluationResult, SheetColumn, SheetRecord
from devserver_lora.train.evaluate.samples import publish_sample
from devserver_lora.train.events import ProgressEvent, SampleEvent


@pytest.fixture
def job(tmp_path: Path):
    return tiny_native_job(tmp_path, "listed", 4)


def _sheet(kind: str, file: str) -> SheetRecord:
    return SheetRecord(kind=kind, title=f"title of {kind}", file=file, note=f"note {kind}", rows=["p (seed 1)"],
                       columns=[SheetColumn(label="no LoRA", kind="base"),
                                SheetColumn(label="1", kind="lora", mean_abs_change=3.5)],
                       cells=[[None, None]])


def test_a_fresh_job_lists_nothing(job) -> None:
    listed = job_results(job)
    assert listed.job == job.id and listed.job_dir == job.dir
    assert listed.report is None and listed.loss_plot is None and listed.sheets == [] and listed.samples == []
    assert listed.problems == [] and listed.evaluated is None
    assert not (job.dir / "eval_settings.json").exists()  # listing writes nothing


def test_lists_existing_sheets_samples_report_and_plot(job, tmp_path: Path) -> None:
    for step in (0, 2):
        for index, seed in ((0, 1000), (1, 1001)):
            publish_sample(job, Image.new("RGB", (8, 8), (step * 40, index * 90, 0)), step=step, index=index,
                           prompt=f"prompt {index}", seed=seed)
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    job.append_event(SampleEvent(path=str(outside), step=4, index=0, prompt="not ours", seed=1))
    job.append_event(ProgressEvent(step=1, total_steps=4, loss=0.5))
    (job.dir / EVAL_DIR).mkdir()
    Image.new("RGB", (8, 8)).save(job.dir / EVAL_DIR / "sheet_before_after.png")
    result = EvaluationResult(job=job.id, written=time.time(), comfyui="http://127.0.0.1:1", graph="g", size=64,
                              steps=2, cfg=1.0, lora=f"{job.id}/listed.safetensors", errors=["seed 1: failed"],
                              sheets=[_sheet("before_after", f"{EVAL_DIR}/sheet_before_after.png"),
                                      _sheet("bias", f"{EVAL_DIR}/sheet_bias.png")])
    job.write_json(f"{EVAL_DIR}/{RESULTS_FILE}", result)
    write_report(job, written_by="test")

    listed = job_results(job)
    assert listed.report == "report.html" and listed.report_json == "report.json"
    assert listed.loss_plot == "loss_plot.png" and listed.path(listed.loss_plot).is_file()
    assert [(s.step, s.index, s.seed, s.prompt) for s in listed.samples] == [
        (0, 0, 1000, "prompt 0"), (0, 1, 1001, "prompt 1"), (2, 0, 1000, "prompt 0"), (2, 1, 1001, "prompt 1")]
    assert all(s.file.startswith("samples/step") and listed.path(s.file).is_file() for s in listed.samples)
    assert [(s.kind, s.title, s.file) for s in listed.sheets] == [
        ("before_after", "title of before_after", "evaluation/sheet_before_after.png")]
    assert listed.sheets[0].columns[1].mean_abs_change == 3.5 and listed.sheets[0].note == "note before_after"
    assert listed.problems == ["the bias sheet evaluation/sheet_bias.png is missing"]
    assert listed.lora == f"{job.id}/listed.safetensors" and listed.errors == ["seed 1: failed"]
    assert listed.evaluated == result.written
    assert listed.model_dump(mode="json")["job_dir"] == str(job.dir)  # JSON-ready for the Studio's API


def test_a_sheet_path_climbing_out_of_the_job_is_not_listed(job, tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    result = EvaluationResult(job=job.id, written=1.0, comfyui="u", graph="g", size=64, steps=2, cfg=1.0, lora="x",
                              sheets=[_sheet("ab", "../../secret.png")])
    job.write_json(f"{EVAL_DIR}/{RESULTS_FILE}", result)
    listed = job_results(job)
    assert listed.sheets == [] and listed.problems == ["the ab sheet ../../secret.png is missing"]


def test_a_damaged_evaluation_is_a_problem_not_an_error(job) -> None:
    (job.dir / EVAL_DIR).mkdir()
    (job.dir / EVAL_DIR / RESULTS_FILE).write_text('{"job": 3}', encoding="utf-8")
    publish_sample(job, Image.new("RGB", (8, 8)), step=0, index=0, prompt="p", seed=5)
    listed = job_results(job)
    assert listed.sheets == [] and len(listed.samples) == 1
    assert len(listed.problems) == 1 and "not a valid evaluation" in listed.problems[0]
