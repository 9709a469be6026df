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

from ..errors import UnsafePathError
from ..paths import check_relative_name

# ComfyUI v0.3.75 LoraLoader: strength_model / strength_clip are FLOAT, min -100, max 100
# (fixtures/comfyui/object_info_LoraLoader.json; a test keeps these in step with it).
STRENGTH_MIN = -100.0
STRENGTH_MAX = 100.0
LORA_SUFFIX = ".safetensors"
# The same rule as paths.check_relative_name, for editors and jsonschema users: relative,
# forward slashes, no '.', '..' or empty parts, no control characters, .safetensors suffix.
NAME_PATTERN = r"^(?![A-Za-z]:)(?!/)(?!.*\\)(?!.*//)(?!(.*/)?\.\.?(/|$))[^\x00-\x1f]+\.safetensors$"


def _schema_extra(schema: dict[str, Any]) -> None:
    schema["properties"]["strength"] = {
        "type": "number",
        "minimum": STRENGTH_MIN,
        "maximum": STRENGTH_MAX,
        "description": "DevServer's spelling: one strength for both model and text encoders",
    }


class LoraSpec(BaseModel):
    """A LoRA to apply: its file (relative to ComfyUI's loras folder) and how strongly."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_schema_extra)

    name: str = Field(
        description="Path relative to ComfyUI's models/loras folder, ending in .safetensors",
        json_schema_extra={"pattern": NAME_PATTERN},
    )
    strength_model: float = Field(1.0, ge=STRENGTH_MIN, le=STRENGTH_MAX, description="Strength on the diffusion model")
    strength_clip: float = Field(
        1.0, ge=STRENGTH_MIN, le=STRENGTH_MAX, description="Strength on the text encoders (defaults to strength_model)"
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
        # The clip strength is resolved here, so every spelling yields the same canonical spec.
        if isinstance(data, dict) and "strength" not in data and "strength_clip" not in data and "strength_model" in data:
            data = dict(data)
            data["strength_clip"] = data["strength_model"]
        if isinstance(data, dict) and "strength" in data:
            data = dict(data)
            strength = data.pop("strength")
            if "strength_model" in data and data["strength_model"] != strength:
                raise ValueError(
                    f"'strength' ({strength!r}) and 'strength_model' ({data['strength_model']!r}) disagree; give one"
                )
            data.setdefault("strength_model", strength)
            data.setdefault("strength_clip", strength)
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        try:
            return check_relative_name(value, what="LoRA name", suffix=LORA_SUFFIX)
        except UnsafePathError as exc:
            raise ValueError(f"{exc.message}; {exc.hint}" if exc.hint else exc.message) from None

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
        """The strength on the text encoders (an alias kept for readability at call sites)."""
        return self.strength_clip

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
