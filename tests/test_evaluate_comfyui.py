"""`train evaluate` end to end through the REAL ComfyUI test server (tiny random SD3 checkpoint), and the report in
a real headless Chromium. Marker: comfyui (setup once: `.venv/bin/python tests/comfyui_setup.py`).

Job A is trained here with the native backend on the tiny diffusers model (its MMDiT has the test checkpoint's
shapes, so its LoRA loads in ComfyUI); job B holds the recorded kohya-format fixture LoRA, which also patches
CLIP-L, for the A/B sheet and the model-only sweep. Renders are 64 px with 3 steps.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from comfyui_harness import ComfyServer
from conftest import COMFY_FIXTURES
from PIL import Image
from test_eval_parts import tiny_clip_folder

from devserver_lora.train import runner
from devserver_lora.train.card import load_card
from devserver_lora.train.cli import main as train_main
from devserver_lora.train.evaluate.pngtext import read_fields
from devserver_lora.train.evaluate.render import EVAL_LORAS_SUBDIR
from devserver_lora.train.evaluate.results import EvaluationResult
from devserver_lora.train.evaluate.settings import EvalPrompt, load_eval_settings, save_eval_settings
from devserver_lora.train.evaluate.sheets import fit_cell
from devserver_lora.train.install import trained_on
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.native import tiny
from devserver_lora.train.native.models import ModelSource
from devserver_lora.train.plan import make_plan
from devserver_lora.train.settings import load_settings

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
TINY_ARCH = "sd3:2:te=clip_l"
STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]


def _job(store: JobStore, dataset: Path, name: str):
    plan = make_plan("sd35_medium", "quick_test", dataset, gpu=None, backend="native", output_name=name,
                     overrides={"resolution": 256, "max_train_steps": 4, "learning_rate": 5e-3, "network_dim": 4,
                                "network_alpha": 4, "save_every_n_steps": 2})
    job = store.create(plan, card=load_card(dataset / "card.json"))
    settings = load_eval_settings(job)
    save_eval_settings(job, settings.model_copy(update={
        "prompts": [EvalPrompt(prompt="mgsq, a magenta square on a plain background", seed=21),
                    EvalPrompt(prompt="a magenta square on a plain background", seed=22)],
        "bias_prompts": settings.bias_prompts[:2], "sample_every_n_steps": None, "size": 64, "steps": 3}))
    return job


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = tiny.write_tiny_diffusers_model(root / "tiny_model")
    dataset = tiny.write_planted_dataset(root / "ds", n=2, size=256)
    store = JobStore(root / "jobs")
    a = _job(store, dataset, "lora_a")
    a.write_json("model.json", ModelSource(diffusers_dir=model, tiny_tokenizer=True).model_dump(mode="json"))
    settings = load_settings(home=str(root / "home"), jobs_dir=str(root / "jobs"))
    assert runner.run_worker(a, settings, backend="native", resume=False) == 0
    # Job B: a LoRA trained elsewhere for the same model (the recorded kohya fixture, with CLIP-L keys).
    b = _job(store, dataset, "lora_b")
    shutil.copyfile(COMFY_FIXTURES / "loras" / "tiny_sd3_kohya.safetensors", b.outputs_dir / "lora_b.safetensors")
    b.set_state("done", lora_path=str(b.outputs_dir / "lora_b.safetensors"), base_arch=TINY_ARCH)
    clip = _oriented_clip(root / "tiny_clip")  # a random CLIP built here: CLIP scores without any download
    return {"root": root, "store": store, "a": a, "b": b, "clip": clip}


def _oriented_clip(folder: Path) -> Path:
    """The tiny random CLIP, its text projection turned (negated) if needed so that the cosine of a noise picture
    and a prompt is positive: the CLIP score floors negative cosines at 0, and a test of all-zero scores could not
    tell a working scorer from a broken one."""
    from transformers import CLIPModel

    from devserver_lora.train.evaluate.metrics import ClipScorer

    tiny_clip_folder(folder)
    probe = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    if ClipScorer(folder).cosine(probe, "a magenta square on a plain background") < 0:
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        model.text_projection.weight.data.neg_()
        model.save_pretrained(folder)
    return folder


def _cell(sheet_png: Path, layout: dict, row: int, col: int) -> np.ndarray:
    x = layout["origin_x"] + col * layout["step"]
    y = layout["origin_y"] + row * layout["step"]
    with Image.open(sheet_png) as img:
        return np.asarray(img.convert("RGB").crop((x, y, x + layout["cell"], y + layout["cell"])), dtype=np.int16)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_evaluate_writes_every_sheet_through_real_comfyui(comfyui_server: ComfyServer, jobs: dict) -> None:
    a, b = jobs["a"], jobs["b"]
    mark = comfyui_server.log_mark()
    argv = ["evaluate", a.id, "--comfyui", comfyui_server.url, "--loras-dir", str(comfyui_server.loras_dir),
            "--against", b.id, "--base-model", comfyui_server.checkpoint_name, "--clip-from-checkpoint",
            "--clip-model", str(jobs["clip"]), "--jobs-dir", str(jobs["root"] / "jobs")]
    assert train_main(argv) == 0
    log = comfyui_server.console_log(since=mark)
    assert "lora key not loaded" not in log and "NOT LOADED" not in log
    assert not (comfyui_server.loras_dir / EVAL_LORAS_SUBDIR).exists()  # what evaluate put there is gone again
    result = EvaluationResult.model_validate(json.loads((a.dir / "evaluation" / "results.json").read_text()))
    assert result.errors == []
    sheets = {s.kind: s for s in result.sheets}
    assert list(sheets) == ["before_after", "strength", "strength_model", "checkpoints", "bias", "ab"]
    checkpoints = ["lora_a-step00000002.safetensors", "lora_a.safetensors"]
    expected_columns = {
        "before_after": ["no LoRA · ohne LoRA", "with LoRA · mit LoRA: final, step 4", "difference ×4 · Unterschied"],
        "strength": ["no LoRA · ohne LoRA"] + [f"{s:g}" for s in STRENGTHS],
        "strength_model": ["no LoRA · ohne LoRA"] + [f"{s:g} (model only)" for s in STRENGTHS],
        "checkpoints": ["no LoRA · ohne LoRA", f"step 2: {checkpoints[0]}", f"final, step 4: {checkpoints[1]}"],
        "bias": ["no LoRA · ohne LoRA", "with LoRA, prompt as written",
                 "with LoRA + trigger 'mgsq' (as DevServer adds it)"],
        "ab": ["no LoRA · ohne LoRA", "A: lora_a, final, step 4", "B: lora_b, final"],
    }
    rows = ["mgsq, a magenta square on a plain background  (seed 21)", "a magenta square on a plain background  (seed 22)"]
    for kind, sheet in sheets.items():
        assert [c.label for c in sheet.columns] == expected_columns[kind], kind
        assert len(sheet.cells) == len(sheet.rows) == 2 and all(len(r) == len(sheet.columns) for r in sheet.cells)
        if kind != "bias":
            assert sheet.rows == rows
        png = a.dir / sheet.file
        with Image.open(png) as img:  # the grid on the PNG is the one results.json describes
            cols = len(sheet.columns)
            assert img.size == (sheet.layout["width"], sheet.layout["height"])
            assert sheet.layout["cell"] == 192
            assert img.width == sheet.layout["origin_x"] + cols * sheet.layout["step"] - 6 + 16
        for r, line in enumerate(sheet.cells):
            for c, rel in enumerate(line):
                assert rel is not None and (a.dir / rel).is_file()
                # Each cell of the sheet is its image file, enlarged: nothing else is pasted there.
                with Image.open(a.dir / rel) as single:
                    enlarged = np.asarray(fit_cell(single, 192), dtype=np.int16)
                assert (_cell(png, sheet.layout, r, c) == enlarged).all(), (kind, r, c)
    # The no-LoRA column is the same picture in every sheet for the same seed.
    for r in range(2):
        base = _cell(a.dir / sheets["before_after"].file, sheets["before_after"].layout, r, 0)
        for kind in ("strength", "strength_model", "checkpoints", "ab"):
            assert (_cell(a.dir / sheets[kind].file, sheets[kind].layout, r, 0) == base).all(), kind
    # Strength 0 renders exactly the picture without the LoRA (a different graph, rendered separately) ...
    strength = sheets["strength"]
    for r in range(2):
        no_lora, zero = _pixels(a.dir / strength.cells[r][0]), _pixels(a.dir / strength.cells[r][1])
        assert strength.cells[r][0] != strength.cells[r][1] and (no_lora == zero).all()
        assert read_fields(a.dir / strength.cells[r][1])["strength_model"] == "0.0"
        assert "LoraLoader" in Image.open(a.dir / strength.cells[r][1]).text["prompt"]  # it did run with the LoRA node
    # ... and the LoRA columns differ from it, more with more strength.
    change = [c.mean_abs_change for c in strength.columns[1:]]
    assert change[0] == 0.0 and all(x > 0 for x in change[1:])
    assert change[-1] > change[1]
    for kind in ("before_after", "checkpoints", "bias", "ab"):
        assert all(c.mean_abs_change and c.mean_abs_change > 0 for c in sheets[kind].columns if c.kind == "lora"), kind
    # A CLIP score beside every rendered column: the mean over its rows of the score of that picture and the prompt
    # it was rendered with (the tiny CLIP's numbers mean nothing about the pictures, but they are these numbers).
    from devserver_lora.train.evaluate.metrics import ClipScorer

    assert result.clip_model == str(jobs["clip"])
    scorer = ClipScorer(jobs["clip"])
    prompt_of = {i.file: i.prompt for i in result.images}
    for kind, sheet in sheets.items():
        for c, col in enumerate(sheet.columns):
            if col.kind == "difference":
                assert col.clip_score is None
                continue
            files = [line[c] for line in sheet.cells]
            expected = np.mean([scorer.score(Image.open(a.dir / f), prompt_of[f]) for f in files])
            assert col.clip_score == pytest.approx(expected, rel=1e-4) and 0.0 < col.clip_score <= 100.0, (kind, c)
    # Every render alone, with its facts in PNG text.
    image = next(i for i in result.images if i.lora and i.strength_model == 0.75 and i.strength_clip == 0.75)
    fields = read_fields(a.dir / image.file)
    assert fields["prompt"] == image.prompt and fields["seed"] == str(image.seed)
    assert fields["strength_model"] == "0.75" and fields["strength_clip"] == "0.75"
    assert fields["lora"].endswith("lora_a.safetensors") and fields["job"] == a.id
    assert json.loads(Image.open(a.dir / image.file).text["prompt"])  # ComfyUI's graph of that render, kept


def test_model_only_sweep_differs_for_a_lora_that_patches_the_text_encoder(
        comfyui_server: ComfyServer, jobs: dict) -> None:
    b = jobs["b"]
    settings = load_eval_settings(b)
    save_eval_settings(b, settings.model_copy(update={"prompts": settings.prompts[:1], "strengths": [0.0, 1.0]}))
    argv = ["evaluate", b.id, "--comfyui", comfyui_server.url, "--loras-dir", str(comfyui_server.loras_dir),
            "--sheets", "strength,strength_model", "--base-model", comfyui_server.checkpoint_name,
            "--clip-from-checkpoint", "--jobs-dir", str(jobs["root"] / "jobs"), "--json"]
    assert train_main(argv) == 0
    result = EvaluationResult.model_validate(json.loads((b.dir / "evaluation" / "results.json").read_text()))
    both, model_only = (next(s for s in result.sheets if s.kind == k) for k in ("strength", "strength_model"))
    assert "no text-encoder weights" not in both.note
    assert (_pixels(b.dir / both.cells[0][1]) == _pixels(b.dir / both.cells[0][0])).all()  # strength 0
    assert (_pixels(b.dir / model_only.cells[0][1]) == _pixels(b.dir / both.cells[0][0])).all()
    full, model = _pixels(b.dir / both.cells[0][2]), _pixels(b.dir / model_only.cells[0][2])
    assert np.abs(full - model).mean() > 0  # at 1.0, the CLIP-L patch changes the picture


def test_report_opens_in_headless_chromium_without_a_broken_image_or_a_request_outside(
        comfyui_server: ComfyServer, jobs: dict, tmp_path: Path) -> None:
    from report_browser import open_report

    a = jobs["a"]
    # Pick a checkpoint from the checkpoint sheet and install it, as its note says: the report then shows it.
    sheet = next(s for s in EvaluationResult.model_validate_json((a.dir / "evaluation" / "results.json").read_text()
                                                                 ).sheets if s.kind == "checkpoints")
    pick = Path(sheet.columns[1].source or "").name
    assert pick == "lora_a-step00000002.safetensors" and "--checkpoint FILE" in sheet.note
    installed = jobs["root"] / "installed_loras"
    installed.mkdir()
    assert train_main(["install", a.id, "--checkpoint", pick, "--loras-dir", str(installed),
                       "--jobs-dir", str(jobs["root"] / "jobs"), "--against", trained_on(a, checkpoint=pick)]) == 0
    assert (installed / pick).is_file()
    report = a.dir / "report.html"
    facts = json.loads((a.dir / "report.json").read_text())
    assert facts["evaluation"]["against"] == jobs["b"].id and facts["job"]["state"] == "done"
    assert facts["install"]["source"] == str(a.outputs_dir / pick) and facts["written_by"] == "install"
    page = open_report(report, tmp_path / "report.png")
    assert page.images >= 6 + 1  # every sheet and the loss plot
    assert page.broken == []
    assert page.requests and page.outside == []
    assert "Before / after" in page.text and "Bias check" in page.text and "Checkpoints" in page.text
    assert pick in page.text and "Not installed yet" not in page.text
    print(f"report screenshot: {tmp_path / 'report.png'}")
