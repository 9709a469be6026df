"""What a DevServer JSON file is, decided from its raw JSON and place the way DevServer's own loaders decide it.

Facts from DevServer's `ConfigLoader`, `ChunkBuilder` and `BackendRouter._load_output_chunk` (the pinned commit):
- configs are every `configs/**/*.json`; one under `configs/output/` or `configs/interception/` is registered under
  its file stem, others under their path below `configs/` (`pre_output/translation_en`), user configs as
  `u_<user>_<stem>`; a string `name` field replaces all of that (a multilingual `name` does not);
- a chunk's `type` defaults to `processing_chunk`, its `name` to the file stem; Stage 4 loads an output chunk by
  FILE name (`chunks/<OUTPUT_CHUNK>.json`), and a `chunks/<OUTPUT_CHUNK>.py` beside it runs instead of it;
- output chunks are `output_chunk`, `api_output_chunk` or `text_passthrough`; `proxy_chunk` routes to one of them.

These functions hold those facts once, for `tree` (reading a tree) and `validate` (judging files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import Problem

OUTPUT = "output"
INTERCEPTION = "interception"
USER_CONFIGS = "user_configs"
DEFAULT_CHUNK_TYPE = "processing_chunk"
OUTPUT_CHUNK = "output_chunk"
WRITTEN_BY_US = "devserver-lora"
# How skipped files are counted, where `tree` and `validate` skip the same kind.
SKIPPED_OUTPUT_CONFIGS = "output configs without LoRAs"
SKIPPED_INTERCEPTION_CONFIGS = "interception configs"
SKIPPED_OTHER_CONFIGS = "configs of other stages (safety, translation, user configs)"


def has_loras(data: Any) -> bool:
    """Whether an output config carries LoRAs in either spelling (top-level `lora`, `parameters.loras`)."""
    if not isinstance(data, dict):
        return False
    params = data.get("parameters")
    return bool(data.get("lora")) or (isinstance(params, dict) and bool(params.get("loras")))


def unmirrored_lora(data: Any, file: str) -> Problem | None:
    """A top-level `lora` without `parameters.loras`: DevServer's ConfigLoader drops the top-level key, so in
    DevServer such a config renders without its LoRA (and without a word about it)."""
    if not isinstance(data, dict) or not data.get("lora"):
        return None
    params = data.get("parameters")
    if isinstance(params, dict) and params.get("loras"):
        return None
    return Problem("the LoRA is only in the top-level `lora`, which DevServer's config loader drops: DevServer would "
                   "render this config without it", file=file, path="$.parameters.loras", code="lora_not_mirrored",
                   hint="mirror it into parameters.loras ([{name, strength, ...}]); configs devserver-lora writes "
                        "carry both")


def config_folder(path: Path, configs_root: Path) -> str:
    """The first folder below `configs/` (`output`, `interception`, `pre_output`, ...); '' at the top."""
    try:
        parts = path.relative_to(configs_root).parts
    except ValueError:
        return path.parent.name
    return parts[0] if len(parts) > 1 else ""


def registered_config_name(path: Path, configs_root: Path, data: Any) -> str:
    """The name DevServer's ConfigLoader registers a config under (what `output_config` in a request names)."""
    name = data.get("name") if isinstance(data, dict) else None
    if isinstance(name, str) and name:
        return name
    try:
        rel = path.relative_to(configs_root)
    except ValueError:
        return path.stem
    parts = rel.parts
    if len(parts) >= 2 and parts[0] == USER_CONFIGS:
        return f"u_{parts[1]}_{path.stem}"
    if parts[0] in (OUTPUT, INTERCEPTION):
        return path.stem
    return rel.with_suffix("").as_posix()


def chunk_type(data: Any) -> str:
    """A chunk's `type`, with ChunkBuilder's default."""
    value = data.get("type", DEFAULT_CHUNK_TYPE) if isinstance(data, dict) else None
    return value if isinstance(value, str) else DEFAULT_CHUNK_TYPE


def with_chunk_name(data: dict[str, Any], stem: str) -> dict[str, Any]:
    """The chunk with ChunkBuilder's fallback applied: a chunk without `name` is named after its file."""
    return data if data.get("name") else {**data, "name": stem}


def written_by_us(data: Any) -> bool:
    """A file this project wrote (`meta.written_by` starts with "devserver-lora"): always judged strictly."""
    meta = data.get("meta") if isinstance(data, dict) else None
    written = meta.get("written_by") if isinstance(meta, dict) else None
    return isinstance(written, str) and written.startswith(WRITTEN_BY_US)


def output_chunk_name(data: Any) -> str | None:
    """`parameters.OUTPUT_CHUNK` of a config, if it is a non-empty string."""
    params = data.get("parameters") if isinstance(data, dict) else None
    name = params.get("OUTPUT_CHUNK") if isinstance(params, dict) else None
    return name if isinstance(name, str) and name else None
