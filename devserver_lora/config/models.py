"""DevServer output configs and output chunks as pydantic models, with the `lora` extension.

DevServer keeps only `pipeline, name, description, category, context, parameters,
media_preferences, meta` of an output config; a top-level `lora` alone would be
dropped. So a config this product writes carries the LoRAs twice: top-level `lora`
(ours, DevServer's proposed spelling) and `parameters.loras` (what DevServer's loader
keeps and its Stage 4 reads). Reading accepts either or both; both must agree.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..lora.spec import LoraSpec

LocalizedText = str | dict[str, str]

# DevServer's Stage 4 guesses the media type from substrings of the config NAME
# (schema_pipeline_routes: code|p5js|tonejs -> code, video, audio|music|ace -> audio, else image).
NON_IMAGE_NAME_MARKERS = ("code", "p5js", "tonejs", "video", "audio", "music", "ace")

# The DevServer SD3.5 chunk feeds its encoders from DualCLIPLoader(clip_g, t5xxl): no CLIP-L, and
# CLIP-G LoRA keys map differently there, so a LoRA that trained text encoders needs all three.
SD35_CHUNK = "output_image_sd35_large"
SD35_TRIPLE_CLIP_CHUNK = "output_image_sd35_large_triple_clip"


class OutputParameters(BaseModel):
    """`parameters` of an output config; only the keys we rely on are typed, the rest are kept."""

    model_config = ConfigDict(extra="allow")

    OUTPUT_CHUNK: str | None = Field(None, description="Name of the output chunk that renders this config")
    loras: list[LoraSpec] | None = Field(None, description="DevServer's LoRA list: [{name, strength}] (mirrored)")


def _lora_one_or_many_schema(schema: dict[str, Any]) -> None:
    lora = schema["properties"]["lora"]
    item_ref = next(alt["items"] for alt in lora["anyOf"] if alt.get("type") == "array")
    lora["anyOf"].insert(0, dict(item_ref))


class OutputConfig(BaseModel):
    """A DevServer output config (`schemas/configs/output/<name>.json`); unknown fields survive a round trip."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_lora_one_or_many_schema)

    pipeline: str
    name: LocalizedText
    description: LocalizedText | None = None
    category: LocalizedText | None = None
    context: LocalizedText | None = None
    parameters: OutputParameters = Field(default_factory=lambda: OutputParameters(OUTPUT_CHUNK=None, loras=None))
    media_preferences: dict[str, Any] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    # Read as a list either way, so errors have one clean path ($.lora[0].name); the schema
    # still tells editors that a single object is allowed.
    lora: list[LoraSpec] | None = Field(
        None, description="LoRA(s) to apply: one object or a list; mirrored into parameters.loras when written"
    )

    @field_validator("lora", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _lora_spellings_agree(self) -> OutputConfig:
        top = self._top_level_loras()
        native = self.parameters.loras or []
        if top and native and _comparable(top) != _comparable(native):
            raise ValueError(
                "top-level 'lora' and 'parameters.loras' name different LoRAs or strengths; "
                "keep them identical (devserver-lora writes both) or remove one"
            )
        return self

    def _top_level_loras(self) -> list[LoraSpec]:
        return list(self.lora or [])

    @property
    def loras(self) -> list[LoraSpec]:
        """All LoRAs of this config, normalised from whichever spelling it uses."""
        return self._top_level_loras() or list(self.parameters.loras or [])

    @property
    def output_chunk_name(self) -> str | None:
        return self.parameters.OUTPUT_CHUNK

    def to_json_dict(self) -> dict[str, Any]:
        """The config as DevServer JSON, with the LoRAs written in both spellings (or neither)."""
        data = self.model_dump(mode="json", exclude_unset=True, exclude_none=False, exclude={"lora"})
        params = data.setdefault("parameters", {})
        params.pop("loras", None)
        loras = self.loras
        if loras:
            data["lora"] = loras[0].to_lora_dict() if len(loras) == 1 else [s.to_lora_dict() for s in loras]
            params["loras"] = [s.to_parameters_dict() for s in loras]
        return data


def _comparable(specs: list[LoraSpec]) -> list[tuple[str, float, float]]:
    return [(s.name, s.strength_model, s.clip_strength) for s in specs]


class InputMapping(BaseModel):
    """One target of an input mapping: where in the workflow a DevServer value goes."""

    model_config = ConfigDict(extra="allow")

    node_id: str
    field: str = Field(description="Dotted path inside the node, e.g. 'inputs.value'")
    default: Any = None
    source: str | None = None
    description: str | None = None


class OutputMapping(BaseModel):
    model_config = ConfigDict(extra="allow")

    node_id: str
    output_type: str
    format: str | None = None


class OutputChunk(BaseModel):
    """A DevServer output chunk (`schemas/chunks/<name>.json`) carrying a ComfyUI API-format workflow."""

    model_config = ConfigDict(extra="allow")

    name: str
    type: str = "output_chunk"
    backend_type: str
    media_type: str | None = None
    description: str | None = None
    workflow: dict[str, dict[str, Any]] = Field(default_factory=dict)
    input_mappings: dict[str, InputMapping | list[InputMapping]] = Field(default_factory=dict)
    output_mapping: OutputMapping | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    def mapping_targets(self, key: str) -> list[InputMapping]:
        """The targets of input mapping `key` (both the single and the list form); [] if absent."""
        value = self.input_mappings.get(key)
        if value is None:
            return []
        return value if isinstance(value, list) else [value]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


def non_image_marker(name: str) -> str | None:
    """The DevServer routing trap: return the offending marker if `name` would not be routed as an image."""
    lowered = name.lower()
    for marker in NON_IMAGE_NAME_MARKERS:
        if marker in lowered:
            return marker
    return None
