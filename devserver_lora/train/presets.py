"""Training presets shipped as data (`devserver_lora/train/presets/*.toml`), read by both backends.

A preset gives default hyperparameters (`[hyper]`, validated later by
`plan.Hyperparameters`), the image-count range it is meant for, a target number of
optimizer steps the plan turns into epochs, and German and English labels.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import PlanError

CLASSROOM_PRESETS: tuple[str, ...] = ("fotostudio", "atelier", "galerie")


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    label_en: str
    label_de: str
    explanation_en: str
    explanation_de: str
    min_images: int = Field(ge=1)
    max_images: int = Field(ge=1)
    min_vram_gb: float = Field(default=0, ge=0)
    target_steps: int = Field(gt=0)
    hyper: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.label_de} / {self.label_en}"


@cache
def load_presets() -> dict[str, Preset]:
    presets: dict[str, Preset] = {}
    folder = resources.files("devserver_lora.train") / "presets"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".toml"):
            continue
        try:
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            preset = Preset.model_validate(data)
        except (tomllib.TOMLDecodeError, ValidationError) as exc:
            raise PlanError(f"shipped preset {entry.name} is broken: {exc}") from exc
        if f"{preset.name}.toml" != entry.name:
            raise PlanError(f"preset file {entry.name} declares name {preset.name!r}; they must match")
        presets[preset.name] = preset
    return presets


def get_preset(name: str) -> Preset:
    presets = load_presets()
    try:
        return presets[name]
    except KeyError:
        lines = "; ".join(f"{p.name} ({p.label_de})" for p in presets.values())
        raise PlanError(f"unknown preset {name!r}", hint=f"choose one of: {lines}") from None
