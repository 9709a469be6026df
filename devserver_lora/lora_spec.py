"""`LoraSpec`: one LoRA to apply, and the three spellings DevServer configs use for it.

Spellings accepted (DESIGN.md section 2), all normalised to `list[LoraSpec]`:
  1. top-level  "lora": {"name", "strength_model", "strength_clip", ...}
  2. top-level  "lora": [ {...}, {...} ]
  3. DevServer  "parameters": {"loras": [{"name", "strength"}]}   (strength sets both)
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import UnsafePathError
from .paths import check_relative_name

# ComfyUI v0.3.75 LoraLoader: strength_model / strength_clip are FLOAT, min -100, max 100
# (fixtures/comfyui/object_info_LoraLoader.json; a test keeps these in step with it).
STRENGTH_MIN = -100.0
STRENGTH_MAX = 100.0
LORA_SUFFIX = ".safetensors"


class LoraSpec(BaseModel):
    """A LoRA to apply: its file (relative to ComfyUI's loras folder) and how strongly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Path relative to ComfyUI's models/loras folder, ending in .safetensors")
    strength_model: float = Field(1.0, ge=STRENGTH_MIN, le=STRENGTH_MAX, description="Strength on the diffusion model")
    strength_clip: float | None = Field(
        None, ge=STRENGTH_MIN, le=STRENGTH_MAX, description="Strength on the text encoders (defaults to strength_model)"
    )
    trigger_words: tuple[str, ...] | None = Field(
        None, description="Words that activate the LoRA; read from the file's metadata when absent"
    )
    target: str | None = Field(
        None, description="Node id of the model source to patch, for graphs with several (refiner, Wan high/low)"
    )

    @model_validator(mode="before")
    @classmethod
    def _strength_alias(cls, data: Any) -> Any:
        # DevServer's native spelling has one `strength` for both; it fills whichever is not given.
        if isinstance(data, dict) and "strength" in data:
            data = dict(data)
            strength = data.pop("strength")
            data.setdefault("strength_model", strength)
            data.setdefault("strength_clip", strength)
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        try:
            return check_relative_name(value, what="LoRA name", suffix=LORA_SUFFIX)
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("strength_model", "strength_clip", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("strength must be a number, not true/false")
        if isinstance(value, str):
            # DevServer substitutes placeholders into strings ("0.85"); accept those, nothing looser.
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"strength {value!r} is not a number") from None
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise ValueError(f"strength must be a finite number between {STRENGTH_MIN:g} and {STRENGTH_MAX:g}")
        return value

    @field_validator("trigger_words", mode="before")
    @classmethod
    def _triggers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if value is None:
            return None
        words = [w.strip() for w in value if isinstance(w, str) and w.strip()]
        if len(words) != len(list(value)):
            raise ValueError("trigger_words must be non-empty strings")
        return tuple(words)

    @property
    def clip_strength(self) -> float:
        """The strength on the text encoders: `strength_clip`, else `strength_model`."""
        return self.strength_model if self.strength_clip is None else self.strength_clip

    def to_lora_dict(self) -> dict[str, Any]:
        """The top-level `lora` item as this product writes it."""
        out: dict[str, Any] = {
            "name": self.name,
            "strength_model": self.strength_model,
            "strength_clip": self.clip_strength,
        }
        if self.trigger_words:
            out["trigger_words"] = list(self.trigger_words)
        if self.target is not None:
            out["target"] = self.target
        return out

    def to_parameters_dict(self) -> dict[str, Any]:
        """The mirrored `parameters.loras` item: DevServer's `strength` plus ours, so its loader keeps it."""
        out = {"name": self.name, "strength": self.strength_model}
        out.update(self.to_lora_dict())
        return out
