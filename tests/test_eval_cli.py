"""The `samples`, `report` and `evaluate` commands without ComfyUI: settings shown and changed, the report written
again from the job folder, and an evaluation that is refused before it writes anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_jobs import tiny_native_job
from kohya_standin import fixtures as standin_fixtures

from devserver_lora.train import runner
from devserver_lora.train.cli import main
from devserver_lora.train.evaluate.settings import load_eval_settings
from devserver_lora.train.install import trained_on

kohya_env = standin_fixtures.kohya_env


@pytest.fixture
def job(tmp_path: Path):
    return tiny_native_job(tmp_path, "cli", 12)


def _run(job, *argv: str) -> int:
    return main([*argv, "--jobs-dir", str(job.dir.parent)])


def test_samples_shows_and_changes_prompts_and_interval(job, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(job, "samples", job.id) == 0
    shown = capsys.readouterr().out
    assert "samples: off" in shown and "0: seed 1000:" in shown and "eval_settings.json" in shown
    assert _run(job, "samples", job.id, "--prompt", "mgsq, a cat", "--prompt", "a dog", "--seed", "7",
                "--every", "3", "--size", "128", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompts"] == [{"prompt": "mgsq, a cat", "seed": 7}, {"prompt": "a dog", "seed": 8}]
    assert data["sample_every_n_steps"] == 3 and data["size"] == 128
    settings = load_eval_settings(job)
    assert settings.sample_steps_of(12) == [0, 3, 6, 9, 12] and len(settings.bias_prompts) == 8  # the rest kept
    assert _run(job, "samples", job.id, "--off") == 0 and load_eval_settings(job).sample_every_n_steps is None


def test_samples_refuses_a_size_that_would_not_render(job, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(job, "samples", job.id, "--size", "100") == 1
    assert "multiple of 16" in capsys.readouterr().err
    assert not (job.dir / "eval_settings.json").exists()  # a refused request writes nothing


def test_report_writes_html_json_and_the_plot(job, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(job, "report", job.id, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"report": str(job.dir / "report.html")}
    assert (job.dir / "report.json").is_file() and (job.dir / "loss_plot.png").is_file()
    assert json.loads((job.dir / "report.json").read_text())["written_by"] == "report"


@pytest.mark.parametrize(("extra", "message"), [
    (["--sheets", "ab"], "needs a second job"),
    (["--sheets", "before_after,sparkles"], "unknown sheet 'sparkles'"),
    (["--loras-dir", "/nonexistent/loras"], "loras folder /nonexistent/loras does not exist"),
])
def test_a_refused_evaluation_writes_nothing(job, capsys, extra: list[str], message: str) -> None:
    before = sorted(p.relative_to(job.dir) for p in job.dir.rglob("*"))
    argv = ["evaluate", job.id, "--comfyui", "http://127.0.0.1:9"]
    if "--loras-dir" not in extra:
        argv += ["--loras-dir", str(job.dir.parent)]
    assert _run(job, *argv, *extra) == 1
    assert message in capsys.readouterr().err
    assert sorted(p.relative_to(job.dir) for p in job.dir.rglob("*")) == before


def test_install_takes_a_checkpoint_pick_and_the_report_shows_it(kohya_env, capsys) -> None:
    job = kohya_env.job()
    assert runner.run_worker(job, kohya_env.settings, backend="kohya", resume=False) == 0
    assert json.loads((job.dir / "report.json").read_text())["install"] is None
    pick = "tiny_sd3_lora-step00000004.safetensors"  # a column label of the checkpoint sheet names this file
    loras = kohya_env.root / "comfy_loras"
    loras.mkdir()
    assert main(["install", job.id, "--checkpoint", pick, "--loras-dir", str(loras), "--schemas",
                 str(kohya_env.root / "schemas"), "--jobs-dir", str(kohya_env.jobs_dir), "--json",
                 "--against", trained_on(job, checkpoint=pick)]) == 0  # the test checkpoint's model (issue 12 item 5)
    installed = json.loads(capsys.readouterr().out)
    assert installed["source"] == str(job.outputs_dir / pick) and (loras / pick).is_file()
    facts = json.loads((job.dir / "report.json").read_text())
    assert facts["written_by"] == "install" and facts["install"]["source"].endswith(pick)
    assert facts["install"]["output_config"]["parameters"]["loras"][0]["name"] == pick
    html = (job.dir / "report.html").read_text(encoding="utf-8")
    assert pick in html and "Not installed yet" not in html
    assert '<th scope="row">trigger words</th><td>tinyobj</td>' in html  # a list shown as words, not as ['tinyobj']
