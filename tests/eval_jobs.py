"""A job for the evaluation tests: a planted three-image dataset, a native tiny-model plan, a real JobStore."""

from __future__ import annotations

from pathlib import Path

from devserver_lora.train.card import load_card
from devserver_lora.train.jobs import Job, JobStore
from devserver_lora.train.native import tiny
from devserver_lora.train.plan import make_plan


def tiny_native_job(root: Path, output_name: str, steps: int) -> Job:
    ds = tiny.write_planted_dataset(root / "ds", n=3, size=256)
    plan = make_plan("sd35_large", "quick_test", ds, gpu=None, backend="native", output_name=output_name,
                     overrides={"resolution": 256, "max_train_steps": steps})
    return JobStore(root / "jobs").create(plan, card=load_card(ds / "card.json"))
