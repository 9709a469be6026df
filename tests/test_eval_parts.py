"""The parts of the evaluation that need no ComfyUI: eval settings, contact sheets, PNG text, numbers (pixel change,
CLIP score with a tiny random CLIP built here), the loss plot and the report page (escaping, no broken image)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devserver_lora.errors import TrainingError
from devserver_lora.train.card import load_card
from devserver_lora.train.evaluate import lossplot, metrics, pngtext, sheets
from devserver_lora.train.evaluate.report import REPORT_HTML, REPORT_JSON, write_report
from devserver_lora.train.evaluate.settings import (
    DEFAULT_BIAS_PROMPTS,
    DEFAULT_SEED,
    EvalSettings,
    default_prompts,
    load_eval_settings,
)
from devserver_lora.train.events import CheckpointEvent, ProgressEvent, SampleEvent
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.native import tiny
from devserver_lora.train.plan import make_plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def job(tmp_path: Path):
    ds = tiny.write_planted_dataset(tmp_path / "ds", n=5, size=256)
    plan = make_plan("sd35_large", "quick_test", ds, gpu=None, backend="native", output_name="parts",
                     overrides={"resolution": 256, "max_train_steps": 40, "lr_scheduler": "cosine",
                                "lr_warmup_steps": 4})
    return JobStore(tmp_path / "jobs").create(plan, card=load_card(ds / "card.json"))


# --- settings -----------------------------------------------------------------------------------------------------

def test_default_prompts_three_with_the_trigger_one_without() -> None:
    captions = ["adire, indigo cloth with circles", "adire cloth drying on a line", "a market stall, adire",
                "close-up of adire stitches"]
    prompts = default_prompts(captions, "adire")
    assert [p.seed for p in prompts] == [DEFAULT_SEED, DEFAULT_SEED + 1, DEFAULT_SEED + 2, DEFAULT_SEED + 3]
    assert all("adire" in p.prompt for p in prompts[:3])
    assert "adire" not in prompts[3].prompt and prompts[3].prompt == "indigo cloth with circles"
    assert prompts[0].prompt == captions[0] and prompts[2].prompt == captions[-1]  # spread over the dataset
    assert default_prompts(["drying on a line"], "adire")[0].prompt == "adire, drying on a line"  # trigger added


def test_job_settings_are_written_once_and_sample_about_four_times(job, tmp_path: Path) -> None:
    from devserver_lora.train.gpu import GpuInfo

    assert load_eval_settings(job).sample_every_n_steps is None  # planned for the CPU: samples only when asked
    (job.dir / "eval_settings.json").unlink()
    gpu = GpuInfo(name="RTX 4090", vram_gb=24, compute_capability="8.9")
    job.write_json("plan.json", job.plan.model_copy(update={"gpu": gpu}))
    settings = load_eval_settings(job)
    assert (job.dir / "eval_settings.json").is_file()
    assert settings.sample_every_n_steps == 10 and settings.sample_steps_of(40) == [0, 10, 20, 30, 40]
    assert settings.size == 256 and settings.strengths == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert len(settings.bias_prompts) == len(DEFAULT_BIAS_PROMPTS) == 8
    # Every documented dimension is filled for the bias set, and it covers several values of each.
    for dim in ("age", "gender_presentation", "skin_tone", "body", "setting"):
        assert len({getattr(b, dim) for b in settings.bias_prompts} - {"unspecified"}) >= 3, dim
    edited = settings.model_copy(update={"sample_every_n_steps": 7})
    job.write_json("eval_settings.json", edited)
    assert load_eval_settings(job).sample_every_n_steps == 7  # the file wins once it exists


def test_settings_refuse_what_would_not_render() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        EvalSettings(prompts=[{"prompt": "x", "seed": 1}], size=100)
    with pytest.raises(ValueError):
        EvalSettings(prompts=[])
    with pytest.raises(ValueError, match="strengths"):
        EvalSettings(prompts=[{"prompt": "x", "seed": 1}], strengths=[float("nan")])


# --- sheets and PNG text --------------------------------------------------------------------------------------------

def _solid(color: tuple[int, int, int], size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def test_contact_sheet_grid_cells_and_failed_cell() -> None:
    cells = [[_solid((255, 0, 0)), _solid((0, 255, 0)), None], [_solid((0, 0, 255)), _solid((9, 9, 9)), _solid((1, 2, 3))]]
    sheet = sheets.Sheet(title="Strength · Stärke", subtitle="same seed in every row", columns=["no LoRA", "0.5", "1"],
                         rows=["a prompt (seed 1)", "another prompt that is long enough to wrap twice (seed 2)"],
                         cells=cells, column_notes=["", "change 1.0", "change 2.0"])
    img, layout = sheets.compose(sheet, 64)
    assert layout.cell == 192  # 64 px renders enlarged by a whole factor (3)
    assert img.size == (layout.width, layout.height)
    assert layout.width == sheets.MARGIN * 2 + sheets.ROW_LABEL_W + sheets.GAP + 3 * 192 + 2 * sheets.GAP
    assert layout.height == layout.origin_y + 2 * 192 + sheets.GAP + sheets.MARGIN
    arr = np.asarray(img)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            x0, y0, x1, y1 = layout.box(r, c)
            block = arr[y0:y1, x0:x1]
            if cell is None:
                assert tuple(block[-5, -5]) == sheets.FAILED  # grey, and it says "not rendered"
                assert (block < 150).any()
            else:
                assert (block == np.asarray(cell)[0, 0]).all()
    # Ink where the labels are: every column header and every row label has dark pixels.
    for c in range(3):
        x0, _, x1, _ = layout.box(0, c)
        assert (arr[layout.origin_y - 40 : layout.origin_y, x0:x1] < 100).any()
    for r in range(2):
        _, y0, _, y1 = layout.box(r, 0)
        assert (arr[y0 : y0 + 20, sheets.MARGIN : sheets.MARGIN + sheets.ROW_LABEL_W] < 100).any()


def test_large_renders_are_reduced_and_small_ones_keep_their_pixels() -> None:
    assert sheets.cell_size(1024) == sheets.MAX_CELL and sheets.cell_size(200) == 200
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big = np.asarray(sheets.fit_cell(small, 192))
    assert (big[::3, ::3] == np.asarray(small)).all()  # nearest-neighbour by a whole factor


def test_png_text_keeps_pixels_and_comfyui_text(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", '{"3": {"class_type": "KSampler"}}')
    src = tmp_path / "comfy.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src, pnginfo=info)
    out = pngtext.write_png(tmp_path / "saved.png", src.read_bytes(),
                            {"prompt": "mgsq, a square", "seed": 7, "strength_model": 0.5, "lora": None})
    assert pngtext.read_fields(out) == {"prompt": "mgsq, a square", "seed": "7", "strength_model": "0.5",
                                        "lora": "none"}
    with Image.open(out) as img:
        assert img.text["prompt"].startswith('{"3"')  # the graph ComfyUI ran stays
        assert (np.asarray(img) == np.asarray(Image.open(src))).all()


def test_difference_image_and_mean_change() -> None:
    a, b = _solid((10, 20, 30), 8), _solid((12, 20, 27), 8)
    assert metrics.mean_abs_change(a, a) == 0.0
    assert metrics.mean_abs_change(a, b) == pytest.approx((2 + 0 + 3) / 3)
    diff = np.asarray(sheets.difference_image(a, b, gain=4))
    assert tuple(diff[0, 0]) == (8, 0, 12)
    with pytest.raises(ValueError, match="differ in size"):
        metrics.mean_abs_change(a, _solid((0, 0, 0), 4))


# --- CLIP score with a tiny random CLIP built here (never a download) ------------------------------------------------

def _tiny_clip_configs():
    from transformers import CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=77, projection_dim=16, eos_token_id=2,
                          bos_token_id=0, pad_token_id=1)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                              num_attention_heads=2, projection_dim=16)
    return text, vision


def _processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def tiny_clip_folder(root: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    text, vision = _tiny_clip_configs()
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
              ).save_pretrained(root)
    tiny.tiny_clip_tokenizer().save_pretrained(str(root))
    _processor().save_pretrained(root)
    return root


def tiny_clip_diffusers_folder(root: Path) -> Path:
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    text, vision = _tiny_clip_configs()
    torch.manual_seed(1)
    CLIPVisionModelWithProjection(vision).save_pretrained(root / "image_encoder")
    CLIPTextModelWithProjection(text).save_pretrained(root / "text_encoder")
    tiny.tiny_clip_tokenizer().save_pretrained(str(root / "tokenizer"))
    _processor().save_pretrained(root / "feature_extractor")
    return root


@pytest.mark.parametrize("layout", ["transformers", "diffusers"])
def test_clip_score_from_a_local_folder(tmp_path: Path, layout: str) -> None:
    folder = (tiny_clip_folder if layout == "transformers" else tiny_clip_diffusers_folder)(tmp_path / "clip")
    scorer = metrics.ClipScorer(folder)
    rng = np.random.default_rng(2)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(2)]
    cosines = [scorer.cosine(img, "a magenta square") for img in images]
    assert all(-1.0 <= c <= 1.0 and math.isfinite(c) for c in cosines)
    assert cosines[0] != pytest.approx(cosines[1], abs=1e-6)  # the image matters
    assert scorer.cosine(images[0], "a blue circle") != pytest.approx(cosines[0], abs=1e-6)  # so do the words
    assert scorer.cosine(images[0], "a magenta square") == pytest.approx(cosines[0])  # deterministic
    assert scorer.score(images[0], "a magenta square") == pytest.approx(max(0.0, 100 * cosines[0]))


def test_clip_score_refuses_what_is_not_a_local_clip(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        metrics.ClipScorer(tmp_path / "openai/clip-vit-base-patch32")  # a hub id is not a folder here
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="neither a CLIP model folder"):
        metrics.ClipScorer(tmp_path / "empty")


# --- the loss plot --------------------------------------------------------------------------------------------------

def test_loss_series_from_events_of_a_resumed_run_with_nan() -> None:
    events = [e.model_dump(mode="json") for e in (
        ProgressEvent(step=1, total_steps=4, loss=1.0, lr=1e-4), ProgressEvent(step=2, total_steps=4, loss=0.8),
        CheckpointEvent(path="/x/out-step00000002.safetensors", step=2),
        SampleEvent(path="/x/samples/a.png", step=2, index=0, prompt="p", seed=1),
        ProgressEvent(step=2, total_steps=4, loss=0.7),  # after a resume the step comes again: the last value wins
        ProgressEvent(step=3, total_steps=4, loss=float("nan")), ProgressEvent(step=4, total_steps=4, loss=0.5),
    )]
    s = lossplot.series_of(events)
    assert s.steps == [1, 2, 4] and s.losses == [1.0, 0.7, 0.5] and s.nan_steps == [3]
    assert s.checkpoints == [(2, "out-step00000002.safetensors")] and s.sample_steps == [2]
    assert s.lr_steps == [1] and s.total_steps == 4
    assert s.smoothed[0] == pytest.approx(1.0)  # debiased: the first point is the first loss, not 0.1 of it
    assert s.losses[-1] < s.smoothed[-1] < s.losses[0]


def test_loss_plot_png_with_the_planned_rate_when_events_carry_none(job) -> None:
    for step in range(1, 41):
        job.append_event(ProgressEvent(step=step, total_steps=40, loss=2.0 / math.sqrt(step)))
    planned = lossplot.planned_lr(job.plan, 40)
    assert planned[0] < planned[3] < planned[4] == pytest.approx(job.plan.hyper.learning_rate)  # warmup of 4 steps
    assert planned[-1] < planned[20] < planned[4]  # cosine decay
    path = lossplot.write_loss_plot(job)
    assert path == job.dir / lossplot.LOSS_PLOT_FILE
    with Image.open(path) as img:
        assert img.size == (900, 460)
        arr = np.asarray(img.convert("RGB")).astype(int)
    orange = (abs(arr[..., 0] - 0xE6) < 30) & (abs(arr[..., 1] - 0x7E) < 30) & (arr[..., 2] < 80)
    assert orange.sum() > 200  # the learning-rate line is drawn


# --- the report page ------------------------------------------------------------------------------------------------

def test_report_escapes_text_and_links_only_existing_images(job) -> None:
    card = job.card.model_copy(update={"description": '<script>alert("x")</script> & <img src=http://evil/>'})
    job.write_json("card.json", card)
    (job.dir / "samples").mkdir()
    Image.new("RGB", (16, 16)).save(job.dir / "samples" / "step00000000_p00_seed1000.png")
    job.append_event(SampleEvent(path=str(job.dir / "samples" / "step00000000_p00_seed1000.png"), step=0, index=0,
                                 prompt="<b>bold</b>", seed=1000))
    job.append_event(SampleEvent(path=str(job.dir / "samples" / "gone.png"), step=5, index=0, prompt="p", seed=1000))
    job.append_event(ProgressEvent(step=1, total_steps=40, loss=1.0))
    html_path = write_report(job, written_by="test", state="failed", message="stopped <on purpose>")
    html = html_path.read_text(encoding="utf-8")
    assert "<script" not in html and "http://evil" not in html.replace("&lt;img src=http://evil/&gt;", "")
    assert "&lt;script&gt;" in html and "stopped &lt;on purpose&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    srcs = [s.split('"', 1)[0] for s in html.split('src="')[1:]]
    assert srcs and all((job.dir / s).is_file() for s in srcs)
    assert "gone.png" not in html
    facts = json.loads((job.dir / REPORT_JSON).read_text())
    assert facts["job"]["state"] == "failed" and facts["job"]["message"] == "stopped <on purpose>"
    assert facts["samples"]["steps"] == [0] and facts["training"]["loss_plot"] == "loss_plot.png"
    assert facts["evaluation"] is None and facts["install"] is None
    assert (job.dir / REPORT_HTML).is_file()
