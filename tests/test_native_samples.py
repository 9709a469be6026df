"""Samples during native training (diffusers' SD3 pipeline on the LoRA as it trains), the live loss plot and the
report at the end of a run, on the tiny diffusers model; a sample that fails is a warning, never a failed run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devserver_lora.train import runner
from devserver_lora.train.card import load_card
from devserver_lora.train.evaluate.pngtext import read_fields
from devserver_lora.train.evaluate.report import REPORT_HTML, REPORT_JSON
from devserver_lora.train.evaluate.settings import EvalPrompt, load_eval_settings, save_eval_settings
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.native import tiny
from devserver_lora.train.native.models import ModelSource
from devserver_lora.train.plan import make_plan
from devserver_lora.train.settings import load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_diffusers_model(tmp_path_factory.mktemp("tiny_sd3"))


def _job(tmp_path: Path, model: Path, *, size: int, steps: int = 4):
    ds = tiny.write_planted_dataset(tmp_path / "ds", n=2, size=256)
    plan = make_plan("sd35_medium", "quick_test", ds, gpu=None, backend="native", output_name="sampled",
                     overrides={"resolution": 256, "max_train_steps": steps, "learning_rate": 5e-3,
                                "network_dim": 4, "network_alpha": 4})
    job = JobStore(tmp_path / "jobs").create(plan, card=load_card(ds / "card.json"))
    job.write_json("model.json", ModelSource(diffusers_dir=model, tiny_tokenizer=True).model_dump(mode="json"))
    settings = load_eval_settings(job)
    settings = settings.model_copy(update={
        "prompts": [EvalPrompt(prompt="mgsq, a magenta square", seed=11), EvalPrompt(prompt="a grey wall", seed=12)],
        "sample_every_n_steps": 2, "size": size, "steps": 2})
    save_eval_settings(job, settings)
    return job, load_settings(home=str(tmp_path / "home"), jobs_dir=str(tmp_path / "jobs"))


def test_samples_at_fixed_seeds_then_plot_and_report(tmp_path: Path, tiny_model: Path) -> None:
    job, settings = _job(tmp_path, tiny_model, size=64)
    assert runner.run_worker(job, settings, backend="native", resume=False) == 0
    assert job.state == "done"
    events = job.events()
    samples = [e for e in events if e["type"] == "sample"]
    assert [(e["step"], e["index"], e["seed"]) for e in samples] == [
        (0, 0, 11), (0, 1, 12), (2, 0, 11), (2, 1, 12), (4, 0, 11), (4, 1, 12)]
    for e in samples:
        path = Path(e["path"])
        assert path.parent == job.dir / "samples" and path.name == f"step{e['step']:08d}_p{e['index']:02d}_seed{e['seed']}.png"
        fields = read_fields(path)
        assert fields["step"] == str(e["step"]) and fields["seed"] == str(e["seed"]) and fields["prompt"] == e["prompt"]
        with Image.open(path) as img:
            assert img.size == (64, 64)

    def pixels(step: int, index: int) -> np.ndarray:
        return np.asarray(Image.open(job.dir / "samples" / f"step{step:08d}_p{index:02d}_seed{11 + index}.png"),
                          dtype=np.int16)

    assert np.abs(pixels(0, 0) - pixels(0, 1)).mean() > 0  # different prompt and seed, different picture
    assert np.abs(pixels(0, 0) - pixels(4, 0)).mean() > 0  # same seed: what changed is the LoRA
    progress = [e for e in events if e["type"] == "progress"]
    assert all(e["lr"] == pytest.approx(5e-3) for e in progress)
    # The end of the run wrote the plot and the report, and the report already says "done".
    assert (job.dir / "loss_plot.png").is_file() and (job.dir / REPORT_HTML).is_file()
    facts = __import__("json").loads((job.dir / REPORT_JSON).read_text())
    assert facts["job"]["state"] == "done" and facts["samples"]["steps"] == [0, 2, 4]
    assert facts["training"]["checkpoints"][-1]["final"] is True
    # A fresh job with the same seeds that samples only before training: step 0 is the same picture again, and
    # its losses after step 2 equal the first run's, so sampling at step 2 left training's random stream alone.
    again, settings2 = _job(tmp_path / "again", tiny_model, size=64)
    save_eval_settings(again, load_eval_settings(again).model_copy(update={"sample_every_n_steps": 1000}))
    assert runner.run_worker(again, settings2, backend="native", resume=False) == 0
    first = np.asarray(Image.open(again.dir / "samples" / "step00000000_p00_seed11.png"), dtype=np.int16)
    assert (first == pixels(0, 0)).all()
    assert [e["step"] for e in again.events() if e["type"] == "sample"] == [0, 0]
    losses = [e["loss"] for e in again.events() if e["type"] == "progress"]
    assert losses == pytest.approx([e["loss"] for e in progress], rel=1e-6)


def test_a_failing_sample_is_a_warning_and_the_run_finishes(tmp_path: Path, tiny_model: Path) -> None:
    # 2048 px is four times what the tiny model's position table holds: the pipeline refuses every sample.
    job, settings = _job(tmp_path, tiny_model, size=2048, steps=2)
    assert runner.run_worker(job, settings, backend="native", resume=False) == 0
    assert job.state == "done" and (job.dir / "outputs" / "sampled.safetensors").is_file()
    events = job.events()
    assert not [e for e in events if e["type"] == "sample"]
    warnings = [e["message"] for e in events if e["type"] == "log" and e["level"] == "warning"]
    assert len([w for w in warnings if "could not be rendered" in w and "training goes on" in w]) == 4  # 2 steps x 2
