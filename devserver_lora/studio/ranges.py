"""The ranges the page shows and the server enforces on top of `Hyperparameters` (which holds the absolute ones).

A preset is a starting point for beginners; its rank may move within a factor of four either way (fotostudio's 16:
4-64) and alpha from 1 up to that upper rank bound, so a student cannot turn a quick 16-rank preset into a 256-rank
run by accident. Resolution 256-1536 px and learning rate 1e-6 to 1e-2 are the model's own limits (train/plan.py).
"""

from __future__ import annotations

from typing import Any

from ..train.plan import OPTIMIZERS, SCHEDULERS
from ..train.presets import Preset
from .replies import field

RESOLUTION = (256, 1536)
LEARNING_RATE = (1e-6, 1e-2)
RANK_LIMITS = (1, 256)
# Settings that are not Hyperparameters but memory choices make_plan accepts as overrides.
MEMORY_SETTINGS: dict[str, type] = {"fp8_base": bool, "gradient_checkpointing": bool, "use_8bit_optimizer": bool,
                                    "blocks_to_swap": int}


def preset_ranges(preset: Preset) -> dict[str, list[float]]:
    rank = int(preset.hyper.get("network_dim", 16))
    lo, hi = max(RANK_LIMITS[0], rank // 4), min(RANK_LIMITS[1], rank * 4)
    return {
        "network_dim": [lo, hi],
        "network_alpha": [1, hi],
        "resolution": list(RESOLUTION),
        "learning_rate": list(LEARNING_RATE),
        "max_train_steps": [1, 1_000_000],
    }


def _int_like(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def override_problems(preset: Preset, overrides: dict[str, Any]) -> list[dict[str, str]]:
    """Fields of `overrides` outside the preset's bounds or of a type make_plan would not survive; the rest
    (every other hyperparameter, unknown names) is validated by make_plan itself."""
    found = []
    ranges = preset_ranges(preset)
    for key in ("network_dim", "network_alpha"):
        if key not in overrides:
            continue
        value = overrides[key]
        lo, hi = ranges[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            found.append(field(f"hyper.{key}", f"{key} must be a number", f"choose a value from {lo:g} to {hi:g}"))
        elif not lo <= value <= hi:
            found.append(field(f"hyper.{key}", f"{key} {value:g} is outside {lo:g}-{hi:g} for the preset "
                               f"{preset.name}", f"choose a value from {lo:g} to {hi:g}, or another preset"))
    for key in ("max_train_steps", "epochs"):
        if key in overrides and not (_int_like(overrides[key]) and overrides[key] > 0):
            found.append(field(f"hyper.{key}", f"{key} must be a whole number above 0, not {overrides[key]!r}",
                               "e.g. 600 steps for fotostudio"))
    for key, kind in MEMORY_SETTINGS.items():
        if key not in overrides:
            continue
        value = overrides[key]
        ok = isinstance(value, bool) if kind is bool else (_int_like(value) and 0 <= value <= 100)
        if not ok:
            found.append(field(f"hyper.{key}", f"{key} must be {'true or false' if kind is bool else 'from 0 to 100'}",
                               "or leave it out and let the plan choose"))
    return found


def choices() -> dict[str, list[str]]:
    return {"schedulers": list(SCHEDULERS), "optimizers": list(OPTIMIZERS)}
