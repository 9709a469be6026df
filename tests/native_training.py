"""A LoRA the native backend trains on the very checkpoint the real ComfyUI test server loads, for render tests.

The planted dataset (a magenta square under the trigger `mgsq`) is learnt in 30 steps on the tiny SD3 model; a render
with the LoRA then differs visibly from one without it. The caller points COMFYUI_DIR at ComfyUI's install (its
tokenizer files, so training conditions on what ComfyUI computes at render time) and sets HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from pathlib import Path

from devserver_lora.train.card import load_card
from devserver_lora.train.jobs import JobStore
from devserver_lora.train.native import NativeBackend, tiny
from devserver_lora.train.native.models import ModelSource
from devserver_lora.train.plan import make_plan

TRIGGER_PROMPT = "mgsq, a magenta square on a plain background"


def train_planted_lora(work: Path, checkpoint: Path, *, output_name: str = "native_magenta") -> Path:
    """Train the planted concept into a LoRA for `checkpoint` (a tiny SD3 single file); returns the LoRA file."""
    dataset = tiny.write_planted_dataset(work / "ds", n=4, size=256)
    plan = make_plan("sd35_medium", "quick_test", dataset, gpu=None, backend="native", output_name=output_name,
                     overrides={"resolution": 256, "max_train_steps": 30, "learning_rate": 2e-3, "network_dim": 8,
                                "network_alpha": 4})
    job = JobStore(work / "jobs").create(plan, card=load_card(dataset / "card.json"))
    backend = NativeBackend(None, source=ModelSource(checkpoint=checkpoint))
    problems = [p for p in backend.preflight(job) if p.severity == "error"]
    if problems:
        raise AssertionError(f"native preflight refused the job: {problems}")
    return backend.run(job)
