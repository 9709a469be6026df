"""`devserver-lora validate`: check DevServer JSON files, alone and against each other.

Three passes, every problem reported with its file and JSON path:
  1. the exported JSON Schemas (`schemas/*.schema.json`), as editors and DevServer tooling see them;
  2. our pydantic models, which also catch what JSON Schema cannot (NaN, hostile paths);
  3. cross-file rules: a LoRA output config must resolve to an existing `backend_type: comfyui`
     chunk and must not carry a name DevServer routes as non-image; chunk mappings must name
     nodes that exist.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, Problem
from ..lora.spec import LoraSpec
from .files import SHIPPED_SCHEMAS_DIR, pydantic_problems, read_json_file
from .models import NON_IMAGE_NAME_MARKERS, OutputChunk, OutputConfig, check_image_config_name

SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "output_config": OutputConfig,
    "output_chunk": OutputChunk,
    "lora_spec": LoraSpec,
}


def export_json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schemas of our models, keyed by file stem (`output_config` -> output_config.schema.json)."""
    out = {}
    for stem, model in SCHEMA_MODELS.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://ai4artsed.example/devserver-lora/{stem}.schema.json"
        out[stem] = schema
    return out


def write_json_schemas(folder: Path = SHIPPED_SCHEMAS_DIR) -> list[Path]:
    from ..paths import atomic_write_text

    written = []
    for stem, schema in export_json_schemas().items():
        text = json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        written.append(atomic_write_text(folder / f"{stem}.schema.json", text))
    return written


def _kind_of(path: Path, data: Any) -> str:
    """Which DevServer file this is, from its content first and its folder second."""
    if not isinstance(data, dict):
        return "unknown"
    if data.get("type") in ("output_chunk", "proxy_chunk") or path.parent.name == "chunks":
        return "chunk" if data.get("type", "output_chunk") == "output_chunk" else "proxy_chunk"
    stage = (data.get("meta") or {}).get("stage") if isinstance(data.get("meta"), dict) else None
    parent = path.parent.name
    if stage == "output" or parent == "output":
        return "output_config"
    if stage == "interception" or parent == "interception":
        return "interception_config"
    if "chunks" in data and ("pipeline_type" in data or parent == "pipelines"):
        return "pipeline"
    return "unknown"


def _json_path(parts: Iterable[Any]) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


@dataclass
class _Loaded:
    path: Path
    kind: str
    data: Any
    model: Any = None
    problems: list[Problem] = field(default_factory=list)


def _schema_problems(data: Any, schema: dict[str, Any], file: str) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        problems.append(
            Problem(message=error.message, file=file, path=_json_path(error.absolute_path), code=f"schema.{error.validator}")
        )
    return problems


def _related(a: str, b: str) -> bool:
    """One JSON path is the other or lies inside it."""
    return a == b or a.startswith(b + ".") or a.startswith(b + "[") or b.startswith(a + ".") or b.startswith(a + "[")


def _load_one(path: Path, schemas: dict[str, dict[str, Any]]) -> _Loaded:
    file = str(path)
    try:
        data = read_json_file(path)
    except ConfigError as exc:
        return _Loaded(path, "unreadable", None, problems=[Problem(message=exc.message, file=file, code="json")])
    kind = _kind_of(path, data)
    item = _Loaded(path, kind, data)
    model_cls = {"output_config": OutputConfig, "chunk": OutputChunk}.get(kind)
    if model_cls is not None:
        try:
            item.model = model_cls.model_validate(data)
        except ValidationError as exc:
            item.problems += pydantic_problems(exc, file=file)
        # Pydantic's messages teach better; keep schema findings only where pydantic said nothing.
        seen = [p.path for p in item.problems]
        schema = schemas["output_config" if kind == "output_config" else "output_chunk"]
        item.problems += [
            p for p in _schema_problems(data, schema, file) if not any(_related(p.path, s) for s in seen)
        ]
    elif kind == "interception_config":
        loras = (data.get("meta") or {}).get("loras") or []
        if not isinstance(loras, list):
            item.problems.append(Problem(message="meta.loras must be a list", file=file, path="$.meta.loras"))
        else:
            for i, raw in enumerate(loras):
                try:
                    LoraSpec.model_validate(raw)
                except ValidationError as exc:
                    for p in pydantic_problems(exc, file=file):
                        item.problems.append(
                            Problem(message=p.message, file=file, path=f"$.meta.loras[{i}]" + p.path[1:], code=p.code)
                        )
    elif kind == "unknown":
        item.problems.append(
            Problem(
                message="not recognised as an output config, chunk, pipeline or interception config; skipped",
                file=file,
                severity="warning",
                code="unknown_file",
            )
        )
    return item


def _collect_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.json") if not f.name.endswith(".schema.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{p} does not exist", hint="give JSON files or DevServer schemas folders")
    return files


def _cross_file(items: list[_Loaded]) -> list[Problem]:
    chunks = {i.path.stem: i for i in items if i.kind in ("chunk", "proxy_chunk")}
    problems: list[Problem] = []
    for item in items:
        file = str(item.path)
        if item.kind == "chunk" and isinstance(item.model, OutputChunk):
            workflow = item.model.workflow
            for key in item.model.input_mappings:
                for n, target in enumerate(item.model.mapping_targets(key)):
                    if target.node_id not in workflow:
                        where = f"$.input_mappings.{key}" + (f"[{n}]" if isinstance(item.model.input_mappings[key], list) else "")
                        problems.append(
                            Problem(
                                message=f"maps to node {target.node_id!r}, which is not in the workflow",
                                file=file,
                                path=where + ".node_id",
                                hint=f"workflow nodes: {', '.join(sorted(workflow))}",
                            )
                        )
            om = item.model.output_mapping
            if om is not None and om.node_id not in workflow:
                problems.append(
                    Problem(message=f"output node {om.node_id!r} is not in the workflow", file=file, path="$.output_mapping.node_id")
                )
        if item.kind != "output_config" or not isinstance(item.data, dict):
            continue
        problems += _config_rules(item, chunks)
    return problems


def _raw_has_loras(data: dict[str, Any]) -> bool:
    params = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    return bool(data.get("lora") or params.get("loras"))


def _config_rules(item: _Loaded, chunks: dict[str, _Loaded]) -> list[Problem]:
    # Works on the raw JSON, so these rules still report when the model itself failed to load.
    data, file, name = item.data, str(item.path), item.path.stem
    params = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    has_loras = _raw_has_loras(data)
    problems: list[Problem] = []
    marker = check_image_config_name(name)
    if marker and has_loras:
        problems.append(
            Problem(
                message=f"config name {name!r} contains {marker!r}; DevServer would route it as non-image",
                file=file,
                hint=f"rename the file so its name has none of: {', '.join(NON_IMAGE_NAME_MARKERS)}",
                code="name_routes_non_image",
            )
        )
    if has_loras and meta.get("backend_type") not in (None, "comfyui"):
        problems.append(
            Problem(
                message=f"meta.backend_type is {meta.get('backend_type')!r}, but LoRAs need ComfyUI",
                file=file,
                path="$.meta.backend_type",
                hint="set it to 'comfyui'",
                code="meta_backend_not_comfyui",
            )
        )
    chunk_name = params.get("OUTPUT_CHUNK")
    if not isinstance(chunk_name, str) or not chunk_name:
        if has_loras:
            problems.append(
                Problem(
                    message="a LoRA output config needs parameters.OUTPUT_CHUNK",
                    file=file,
                    path="$.parameters.OUTPUT_CHUNK",
                    hint="use 'output_image_sd35_large' (the ComfyUI chunk)",
                    code="missing_chunk",
                )
            )
        return problems
    chunk = chunks.get(chunk_name)
    if chunk is None:
        problems.append(
            Problem(
                message=f"output chunk {chunk_name!r} is not among the files checked",
                file=file,
                path="$.parameters.OUTPUT_CHUNK",
                hint="check the chunk's folder too, or fix the name",
                code="chunk_not_found",
                severity="error" if has_loras else "warning",
            )
        )
        return problems
    backend = chunk.data.get("backend_type") if isinstance(chunk.data, dict) else None
    if has_loras and (chunk.kind != "chunk" or backend != "comfyui"):
        problems.append(
            Problem(
                message=f"chunk {chunk_name!r} has backend_type {backend!r}; only ComfyUI chunks apply LoRAs",
                file=file,
                path="$.parameters.OUTPUT_CHUNK",
                hint="use a `backend_type: comfyui` chunk such as 'output_image_sd35_large'",
                code="chunk_not_comfyui",
            )
        )
    return problems


def validate_paths(paths: Iterable[str | Path]) -> list[Problem]:
    """Every problem in the given files and folders (errors and warnings), cross-file rules included."""
    schemas = export_json_schemas()
    items = [_load_one(p, schemas) for p in _collect_files(paths)]
    problems = [p for item in items for p in item.problems]
    return problems + _cross_file(items)
