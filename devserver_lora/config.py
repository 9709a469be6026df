"""DevServer output configs and output chunks as pydantic models, with the `lora` extension.

DevServer keeps only `pipeline, name, description, category, context, parameters,
media_preferences, meta` of an output config; a top-level `lora` alone would be
dropped. So a config this product writes carries the LoRAs twice: top-level `lora`
(ours, DevServer's proposed spelling) and `parameters.loras` (what DevServer's loader
keeps and its Stage 4 reads). Reading accepts either or both; both must agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import safe_json
from .errors import ConfigError, Problem
from .lora_spec import LoraSpec
from .paths import atomic_write_json, check_simple_name

LocalizedText = str | dict[str, str]

# DevServer's Stage 4 routes an output config by substrings of its NAME: any of these
# makes it treat the config as audio/video/code, so an image config must avoid them.
NON_IMAGE_NAME_MARKERS = ("ace", "audio", "music", "video", "code")

SHIPPED_SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
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
    parameters: OutputParameters = Field(default_factory=OutputParameters)
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


def pydantic_problems(exc: ValidationError, *, file: str | None) -> list[Problem]:
    """Turn pydantic's errors into Problems with a JSON path (`$.lora[0].name`) and a clean message."""
    problems = []
    for error in exc.errors():
        path = "$"
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if error["type"] not in ("missing",) and not isinstance(value, (dict, list)):
            message += f" (got {value!r})"
        problems.append(Problem(message=message, file=file, path=path, code=error["type"]))
    return problems


def read_json_file(path: str | Path) -> Any:
    """Parse a JSON file, raising ConfigError with the line and column of a syntax error."""
    p = Path(path)
    try:
        # Refuse before reading: a FIFO would block, a huge file would fill memory.
        if p.exists() and not p.is_file():
            raise ConfigError(f"{p} is not a regular file", hint="give the path of a .json file")
        if p.stat().st_size > safe_json.MAX_JSON_BYTES:
            raise ConfigError(f"{p} is {p.stat().st_size} bytes, over the {safe_json.MAX_JSON_BYTES} byte limit",
                              hint="this is not an output config or chunk")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return safe_json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            hint="fix the syntax (a trailing comma or a missing quote is the usual cause)",
        ) from None


def parse_output_config(data: Any, *, file: str | None = None) -> OutputConfig:
    try:
        return OutputConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{file or 'output config'} is not a valid output config", pydantic_problems(exc, file=file)) from None


def parse_output_chunk(data: Any, *, file: str | None = None) -> OutputChunk:
    try:
        return OutputChunk.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{file or 'output chunk'} is not a valid output chunk", pydantic_problems(exc, file=file)) from None


def load_output_config(path: str | Path) -> OutputConfig:
    return parse_output_config(read_json_file(path), file=str(path))


def load_output_chunk(path: str | Path) -> OutputChunk:
    return parse_output_chunk(read_json_file(path), file=str(path))


def write_output_config(config: OutputConfig, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write `config` as DevServer JSON (LoRAs in both spellings), atomically; refuse to replace a file."""
    target = Path(path)
    check_simple_name(target.stem, what="output config name")
    if target.suffix != ".json":
        raise ConfigError(f"output config file {target.name!r} must end with .json")
    if target.exists() and not overwrite:
        raise ConfigError(
            f"output config {target} already exists",
            hint="choose another name; an existing config is never replaced silently",
        )
    return atomic_write_json(target, config.to_json_dict())


def check_image_config_name(name: str) -> str | None:
    """The DevServer routing trap: return the offending marker if `name` would not be routed as an image."""
    lowered = name.lower()
    for marker in NON_IMAGE_NAME_MARKERS:
        if marker in lowered:
            return marker
    return None


def make_lora_output_config(
    name: str,
    loras: list[LoraSpec],
    *,
    base: OutputConfig | None = None,
    title_en: str | None = None,
    title_de: str | None = None,
    description_en: str | None = None,
    description_de: str | None = None,
    output_chunk: str | None = None,
) -> OutputConfig:
    """A new output config `name` that renders through the ComfyUI SD3.5 chunk with `loras` applied.

    `base` defaults to the shipped `sd35_large_yoruba` config, whose DevServer fields
    (parameters, media preferences, meta) are what a LoRA config on SD3.5 Large needs.
    `output_chunk` replaces the base's `parameters.OUTPUT_CHUNK` (e.g. the triple-CLIP chunk
    that LoRAs with text-encoder keys need).
    """
    check_simple_name(name, what="output config name")
    marker = check_image_config_name(name)
    if marker:
        raise ConfigError(
            f"output config name {name!r} contains {marker!r}, so DevServer would not route it as an image",
            hint=f"pick a name without any of {', '.join(NON_IMAGE_NAME_MARKERS)}",
        )
    if not loras:
        raise ConfigError("a LoRA output config needs at least one LoRA")
    if base is None:
        base = load_output_config(SHIPPED_SCHEMAS_DIR / "configs" / "output" / "sd35_large_yoruba.json")
    data = base.to_json_dict()
    data.pop("lora", None)
    data.get("parameters", {}).pop("loras", None)
    if title_en or title_de:
        data["name"] = {"en": title_en or title_de, "de": title_de or title_en}
    if description_en or description_de:
        data["description"] = {"en": description_en or description_de, "de": description_de or description_en}
    if output_chunk is not None:
        data.setdefault("parameters", {})["OUTPUT_CHUNK"] = output_chunk
    data["lora"] = [s.to_lora_dict() for s in loras]
    return parse_output_config(data, file=name)


class ResolvedOutput(BaseModel):
    """An output config with the chunk DevServer would pick for it (`parameters.OUTPUT_CHUNK`)."""

    name: str
    config: OutputConfig
    chunk: OutputChunk
    loras: list[LoraSpec]


class SchemasTree:
    """A DevServer `schemas/` folder: `configs/output/*.json`, `chunks/*.json`, `pipelines/*.json`.

    Like DevServer, only `*.json` files count (a `.json.deprecated` file is not loaded)
    and a config or chunk is registered under its file stem.
    """

    def __init__(
        self,
        root: Path,
        output_configs: dict[str, OutputConfig],
        chunks: dict[str, OutputChunk],
        pipelines: dict[str, dict[str, Any]],
    ) -> None:
        self.root = root
        self.output_configs = output_configs
        self.chunks = chunks
        self.pipelines = pipelines

    @classmethod
    def load(cls, root: str | Path) -> SchemasTree:
        base = Path(root)
        if not base.is_dir():
            raise ConfigError(f"{base} is not a folder", hint="give DevServer's devserver/schemas folder")
        if not (base / "configs" / "output").is_dir() and not (base / "chunks").is_dir():
            raise ConfigError(
                f"{base} has neither configs/output/ nor chunks/",
                hint="give the schemas folder itself (the one that contains configs/ and chunks/)",
            )
        problems: list[Problem] = []
        configs: dict[str, OutputConfig] = {}
        for path in sorted((base / "configs" / "output").glob("*.json")):
            try:
                configs[path.stem] = load_output_config(path)
            except ConfigError as exc:
                problems += exc.problems or [Problem(message=exc.message, file=str(path))]
        chunks: dict[str, OutputChunk] = {}
        for path in sorted((base / "chunks").glob("*.json")):
            try:
                data = read_json_file(path)
            except ConfigError as exc:
                problems.append(Problem(message=exc.message, file=str(path)))
                continue
            if isinstance(data, dict) and data.get("type", "output_chunk") == "output_chunk":
                try:
                    chunks[path.stem] = parse_output_chunk(data, file=str(path))
                except ConfigError as exc:
                    problems += exc.problems
        pipelines: dict[str, dict[str, Any]] = {}
        for path in sorted((base / "pipelines").glob("*.json")):
            try:
                pipelines[path.stem] = read_json_file(path)
            except ConfigError as exc:
                problems.append(Problem(message=exc.message, file=str(path)))
        if problems:
            raise ConfigError(f"the schemas folder {base} has invalid files", problems)
        return cls(base, configs, chunks, pipelines)

    def lora_configs(self) -> dict[str, list[LoraSpec]]:
        """Every output config that carries LoRAs, with its normalised LoRA list."""
        return {name: cfg.loras for name, cfg in self.output_configs.items() if cfg.loras}

    def resolve(self, name: str) -> ResolvedOutput:
        config = self.output_configs.get(name)
        if config is None:
            known = ", ".join(sorted(self.output_configs)) or "none"
            raise ConfigError(f"no output config named {name!r} in {self.root}", hint=f"known configs: {known}")
        chunk_name = config.output_chunk_name
        if not chunk_name:
            raise ConfigError(
                f"output config {name!r} has no parameters.OUTPUT_CHUNK",
                hint="set it to the output chunk that renders this config, e.g. 'output_image_sd35_large'",
            )
        chunk = self.chunks.get(chunk_name)
        if chunk is None:
            raise ConfigError(
                f"output config {name!r} names chunk {chunk_name!r}, which is not in {self.root / 'chunks'}",
                hint="copy the chunk into chunks/ or fix parameters.OUTPUT_CHUNK",
            )
        return ResolvedOutput(name=name, config=config, chunk=chunk, loras=config.loras)
