"""The newcomer's first run: a synthetic dataset and a tiny SD3 model, trained with the native backend
through the job store, installed with an output config, and (given a ComfyUI) rendered before and after.

Everything is real except the data and the weights: the dataset goes through `prepare`, the plan through
`make_plan`, training through the detached runner and the job store, the LoRA through `install`
(key check, output config validated against the DevServer chunks). Under 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import TrainingError
from .card import load_card

TRIGGER = "mgsq"
OUTPUT_NAME = "demo_magenta"
DEMO_PROMPT = f"{TRIGGER}, a magenta square on a plain background"


class DemoResult(BaseModel):
    out_dir: str
    job_id: str
    job_state: str
    lora_path: str
    config_name: str | None = None
    config_path: str | None = None
    checkpoint: str
    renders: dict[str, str] = {}
    pixel_difference: float | None = None
    warnings: list[str] = []


def _free_config_name(schemas_dir: Path, base: str) -> str:
    name, n = base, 2
    while (schemas_dir / "configs" / "output" / f"{name}.json").exists():
        name, n = f"{base}_{n}", n + 1
    return name


def render_graph(checkpoint: str, *, lora: str | None, seed: int = 7, prompt: str = DEMO_PROMPT) -> dict[str, Any]:
    """A minimal SD3 graph for the tiny checkpoint (it carries only CLIP-L, so the DevServer SD3.5 chunk with its
    triple text-encoder loader cannot run on it)."""
    model, clip = ["1", 0], ["1", 1]
    graph: dict[str, Any] = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}}
    if lora is not None:
        graph["2"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                             "strength_model": 1.0, "strength_clip": 1.0}}
        model, clip = ["2", 0], ["2", 1]
    graph.update({
        "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": model, "shift": 3.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": clip}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": seed, "steps": 4, "cfg": 4.5,
                                                   "sampler_name": "euler", "scheduler": "sgm_uniform",
                                                   "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "devserver_lora_demo"}},
    })
    return graph


async def _render_pair(url: str, checkpoint: str, lora: str, renders: Path) -> tuple[dict[str, str], float]:
    import numpy as np
    from PIL import Image

    from ..comfy import ComfyClient, Timeouts

    out: dict[str, str] = {}
    arrays = {}
    async with ComfyClient(url, timeouts=Timeouts(overall=300, idle=120)) as client:
        for label, name in (("before", None), ("after", lora)):
            result = await client.run(render_graph(checkpoint, lora=name), output_node="9")
            data = result.images[0].data
            path = renders / f"{label}.png"
            path.write_bytes(data)
            out[label] = str(path)
            arrays[label] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
    return out, float(np.abs(arrays["after"] - arrays["before"]).mean())


def run_demo(
    out_dir: str | Path,
    *,
    comfyui_url: str | None = None,
    comfyui_models: str | Path | None = None,
    steps: int = 30,
    show_progress: bool = True,
) -> DemoResult:
    from ..paths import atomic_write_json
    from . import runner
    from .dataset.normalise import prepare_dataset
    from .install import install_job
    from .jobs import JobStore
    from .native.models import ModelSource, find_tokenizer_dir
    from .native.tiny import PLANTED_CARD, tiny_sai_checkpoint, write_planted_images
    from .plan import make_plan
    from .settings import load_settings

    out = Path(out_dir).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    if comfyui_url and comfyui_models is None:
        raise TrainingError("--comfyui needs --comfyui-models too",
                            hint="pass ComfyUI's models folder so the demo can put its tiny checkpoint and LoRA there")
    models_dir = Path(comfyui_models).expanduser().absolute() if comfyui_models else out / "comfyui_models"
    (models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (models_dir / "loras").mkdir(parents=True, exist_ok=True)

    # 1. images a student might bring (here: a planted concept), with the dataset card, then `prepare`.
    raw = write_planted_images(out / "images", n=4, size=256, trigger=TRIGGER)
    atomic_write_json(raw / "card.json", PLANTED_CARD)
    dataset = prepare_dataset(raw, out / "dataset", name="demo", trigger=TRIGGER, family="sd35_large",
                              preset="quick_test", card=load_card(raw / "card.json"), overwrite=True).out_dir
    # 2. the tiny model (same seed -> same file, so an existing one is reused).
    checkpoint = tiny_sai_checkpoint(models_dir / "checkpoints")
    # 3. plan + job; the job records where its model is, so `status`/`resume` work on it like on any job.
    plan = make_plan("sd35_large", "quick_test", dataset, gpu=None, backend="native", output_name=OUTPUT_NAME,
                     overrides={"resolution": 256, "max_train_steps": steps, "learning_rate": 2e-3,
                                "network_dim": 8, "network_alpha": 4, "save_every_n_epochs": 5})
    settings = load_settings(home=str(out / "home"), jobs_dir=str(out / "jobs"), models_dir=str(models_dir))
    job = JobStore(settings.jobs_dir).create(plan, card=load_card(dataset / "card.json"))
    source = ModelSource(checkpoint=checkpoint)
    if find_tokenizer_dir("clip_l", source) is None:
        source = source.model_copy(update={"tiny_tokenizer": True})
    job.write_json("model.json", source.model_dump(mode="json"))
    # 4. train in the detached runner (exactly what `run` starts), following its events with a progress bar.
    runner.start(job, settings, backend="native")
    if show_progress:
        from .progress_view import show_follow

        show_follow(job, timeout_s=900, poll_s=0.2)
    else:
        runner.wait(job, timeout_s=900)
    if job.state != "done":
        info = job.info
        raise TrainingError(f"demo training ended in state {job.state}: {info.get('message')}", hint=info.get("hint"))
    # 5. install: LoRA into ComfyUI's loras folder, output config into a demo DevServer schemas folder.
    schemas = out / "devserver_schemas"
    installed = install_job(job, loras_dir=models_dir / "loras", schemas_dir=schemas,
                            config_name=_free_config_name(schemas, OUTPUT_NAME))
    result = DemoResult(out_dir=str(out), job_id=job.id, job_state=job.state, lora_path=installed.lora_path,
                        config_name=installed.config_name, config_path=installed.config_path,
                        checkpoint=str(checkpoint), warnings=installed.warnings)
    # 6. before/after renders through a real ComfyUI.
    if comfyui_url:
        renders = out / "renders"
        renders.mkdir(exist_ok=True)
        result.renders, result.pixel_difference = asyncio.run(
            _render_pair(comfyui_url, checkpoint.name, installed.lora_name, renders)
        )
    atomic_write_json(out / "demo_result.json", result.model_dump(mode="json"))
    return result
