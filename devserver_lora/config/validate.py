"""`devserver-lora validate`: check DevServer JSON files, alone and against each other.

DevServer's own tree holds far more than the plugin models (safety and translation configs, LLM templates,
Diffusers, Python and API chunks, music and video configs). Every JSON file is read; the plugin JUDGES only what it
acts on and SKIPS the rest, counting it by kind:
  - judged: output configs with LoRAs, the chunks they render through, interception configs' `meta.loras`, and
    every file this project wrote (`meta.written_by: devserver-lora...`);
  - skipped: everything else (read the way DevServer reads it, with its fallbacks: a chunk without `name` is named
    after its file).
A judged file goes through three passes, every problem with its file and JSON path:
  1. the exported JSON Schemas (`schemas/*.schema.json`), as editors and DevServer tooling see them;
  2. our pydantic models, which also catch what JSON Schema cannot (NaN, hostile paths);
  3. cross-file rules: a LoRA output config resolves to a `backend_type: comfyui` chunk (not a Python chunk), names
     a pipeline DevServer has, is registered under its file name, and has no name DevServer routes as non-image;
     chunk mappings name nodes that exist.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, Problem
from ..lora.spec import LoraSpec
from . import kinds
from .chunks import own_chunks
from .files import SHIPPED_SCHEMAS_DIR, pydantic_problems, read_json_file
from .models import NON_IMAGE_NAME_MARKERS, OutputChunk, OutputConfig, non_image_marker

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


_CHUNK_TYPES = frozenset({"output_chunk", "proxy_chunk", "api_output_chunk", "text_passthrough", "processing_chunk"})
_SKIP_LABELS = {
    "proxy_chunk": "proxy chunks",
    "api_output_chunk": "API output chunks",
    "text_passthrough": "text passthrough chunks",
    "processing_chunk": "LLM template chunks",
}


def _kind_of(path: Path, data: Any) -> str:
    """Which DevServer file this is, from its content first and its folder second."""
    if not isinstance(data, dict):
        return "unknown"
    parent = path.parent.name
    if parent == "chunks" or data.get("type") in _CHUNK_TYPES:
        return "chunk"
    stage = (data.get("meta") or {}).get("stage") if isinstance(data.get("meta"), dict) else None
    if stage == "output" or parent == "output":
        return "output_config"
    if stage == "interception" or parent == "interception":
        return "interception_config"
    if parent == "pipelines" or ("chunks" in data and "pipeline_type" in data):
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
    judged: bool = False
    skip: str = ""
    model: Any = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class ValidationReport:
    """What `validate` found: every problem, and how many files it judged and skipped (by kind)."""

    problems: list[Problem]
    judged: int
    skipped: Counter[str]

    @property
    def checked(self) -> int:
        return self.judged + sum(self.skipped.values())

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def summary(self) -> str:
        kinds_text = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
        skipped = sum(self.skipped.values())
        return (f"checked {self.checked} file(s): judged {self.judged}, skipped {skipped}"
                + (f" (not modelled by devserver-lora: {kinds_text})" if skipped else ""))


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


def _read(path: Path, *, named: bool) -> _Loaded:
    try:
        data = read_json_file(path)
    except ConfigError as exc:
        # DevServer skips an unreadable file; in configs/output that may be a LoRA config gone from the picker.
        # A file named on the command line was asked about: it is an error too.
        severity = "error" if named or path.parent.name == kinds.OUTPUT else "warning"
        problem = Problem(message=exc.message, file=str(path), code="json", severity=severity)
        return _Loaded(path, "unreadable", None, skip="unreadable files", problems=[problem])
    return _Loaded(path, _kind_of(path, data), data)


def _judge_model(item: _Loaded, model_cls: type[BaseModel], schema: dict[str, Any], data: Any) -> None:
    file = str(item.path)
    try:
        item.model = model_cls.model_validate(data)
    except ValidationError as exc:
        item.problems += pydantic_problems(exc, file=file)
    # Pydantic's messages teach better; keep schema findings only where pydantic said nothing.
    seen = [p.path for p in item.problems]
    item.problems += [p for p in _schema_problems(data, schema, file) if not any(_related(p.path, s) for s in seen)]


def _judge_interception(item: _Loaded, loras: list[Any]) -> None:
    """DevServer reads `name` and `strength` of each entry; other keys are ignored there and here (a warning)."""
    file = str(item.path)
    known = set(LoraSpec.model_fields) | {"strength"}
    for i, raw in enumerate(loras):
        where = f"$.meta.loras[{i}]"
        if not isinstance(raw, dict):
            item.problems.append(Problem(message="each LoRA must be an object with a name", file=file, path=where))
            continue
        extra = sorted(k for k in raw if k not in known)
        if extra:
            item.problems.append(Problem(
                message=f"keys {', '.join(map(repr, extra))} are ignored (DevServer reads name and strength)",
                file=file, path=where, severity="warning", code="lora_unknown_keys"))
        try:
            LoraSpec.model_validate({k: v for k, v in raw.items() if k in known})
        except ValidationError as exc:
            for p in pydantic_problems(exc, file=file):
                item.problems.append(Problem(message=p.message, file=file, path=where + p.path[1:], code=p.code))


def _judge(item: _Loaded, lora_chunks: set[str], schemas: dict[str, dict[str, Any]]) -> None:
    """Decide whether the plugin judges this file, and judge it (or name why it is skipped)."""
    data = item.data
    if item.kind == "output_config":
        if kinds.has_loras(data) or kinds.written_by_us(data):
            item.judged = True
            _judge_model(item, OutputConfig, schemas["output_config"], data)
        else:
            item.skip = kinds.SKIPPED_OUTPUT_CONFIGS
    elif item.kind == "chunk":
        ctype = kinds.chunk_type(data)
        if ctype == kinds.OUTPUT_CHUNK and (item.path.stem in lora_chunks or kinds.written_by_us(data)):
            item.judged = True
            _judge_model(item, OutputChunk, schemas["output_chunk"], kinds.with_chunk_name(data, item.path.stem))
        elif ctype == kinds.OUTPUT_CHUNK:
            item.skip = "output chunks no LoRA config renders through"
        else:
            item.skip = _SKIP_LABELS.get(ctype, f"{ctype} chunks")
    elif item.kind == "interception_config":
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        loras = meta.get("loras")
        if loras is None or loras == []:
            item.skip = "interception configs without LoRAs"
        elif not isinstance(loras, list):
            item.judged = True
            item.problems.append(Problem(message="meta.loras must be a list", file=str(item.path), path="$.meta.loras"))
        else:
            item.judged = True
            _judge_interception(item, loras)
    elif item.kind == "pipeline":
        item.skip = "pipelines"
    elif item.kind == "unknown":
        item.skip = "other DevServer files (safety, translation, word lists, ...)"


def _collect_files(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, bool]], set[str]]:
    """The JSON files to check (each with whether it was named itself), and the Python chunks (`chunks/*.py`)."""
    files: list[tuple[Path, bool]] = []
    python_chunks: set[str] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files += [(f, False) for f in sorted(p.rglob("*.json")) if not f.name.endswith(".schema.json")]
            python_chunks |= {f.stem for f in p.rglob("*.py") if f.parent.name == "chunks"}
        elif p.is_file():
            files.append((p, True))
        else:
            raise ConfigError(f"{p} does not exist", hint="give JSON files or DevServer schemas folders")
    return files, python_chunks


def _chunk_mapping_problems(item: _Loaded) -> list[Problem]:
    problems: list[Problem] = []
    file = str(item.path)
    workflow = item.model.workflow
    for key in item.model.input_mappings:
        for n, target in enumerate(item.model.mapping_targets(key)):
            if target.node_id not in workflow:
                where = f"$.input_mappings.{key}" + (f"[{n}]" if isinstance(item.model.input_mappings[key], list) else "")
                problems.append(Problem(message=f"maps to node {target.node_id!r}, which is not in the workflow",
                                        file=file, path=where + ".node_id",
                                        hint=f"workflow nodes: {', '.join(sorted(workflow))}"))
    om = item.model.output_mapping
    if om is not None and om.node_id not in workflow:
        problems.append(Problem(message=f"output node {om.node_id!r} is not in the workflow", file=file,
                                path="$.output_mapping.node_id"))
    return problems


def _cross_file_problems(items: list[_Loaded], python_chunks: set[str]) -> list[Problem]:
    chunks = {i.path.stem: i for i in items if i.kind == "chunk"}
    pipelines: set[str] = set()
    for i in items:
        if i.kind == "pipeline" and isinstance(i.data, dict):
            name = i.data.get("name")
            pipelines.add(name if isinstance(name, str) else i.path.stem)
    problems: list[Problem] = []
    for item in items:
        if item.kind == "chunk" and item.judged and isinstance(item.model, OutputChunk):
            problems += _chunk_mapping_problems(item)
        if item.kind == "output_config" and item.judged and isinstance(item.data, dict):
            problems += _config_rule_problems(item, chunks, pipelines, python_chunks)
    return problems


def _name_problems(item: _Loaded) -> list[Problem]:
    data, file, stem = item.data, str(item.path), item.path.stem
    problems: list[Problem] = []
    marker = non_image_marker(stem)
    if marker:
        problems.append(Problem(
            message=f"config name {stem!r} contains {marker!r}; DevServer would route it as non-image",
            file=file, hint=f"rename the file so its name has none of: {', '.join(NON_IMAGE_NAME_MARKERS)}",
            code="name_routes_non_image"))
    name = data.get("name")
    if isinstance(name, str) and name != stem:
        problems.append(Problem(
            message=f"DevServer registers this config as {name!r} (its string `name`), but its frontend lists it "
                    f"as {stem!r} (the file name): selecting it would fail",
            file=file, path="$.name", hint='give `name` as {"en": ..., "de": ...} or rename the file to match',
            code="registered_name_differs"))
    unmirrored = kinds.unmirrored_lora(data, file)
    if unmirrored is not None:
        problems.append(unmirrored)
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    if meta.get("backend_type") not in (None, "comfyui"):
        problems.append(Problem(
            message=f"meta.backend_type is {meta.get('backend_type')!r}, but LoRAs need ComfyUI", file=file,
            path="$.meta.backend_type", hint="set it to 'comfyui'", code="meta_backend_not_comfyui"))
    return problems


def _config_rule_problems(item: _Loaded, chunks: dict[str, _Loaded], pipelines: set[str],
                  python_chunks: set[str]) -> list[Problem]:
    # Works on the raw JSON, so these rules still report when the model itself failed to load.
    data, file = item.data, str(item.path)
    problems = _name_problems(item)
    pipeline = data.get("pipeline")
    if pipelines and isinstance(pipeline, str) and pipeline not in pipelines:
        problems.append(Problem(
            message=f"DevServer has no pipeline {pipeline!r}, so it would not load this config",
            file=file, path="$.pipeline", hint="use 'single_text_media_generation'", code="pipeline_not_found"))
    where = "$.parameters.OUTPUT_CHUNK"
    chunk_name = kinds.output_chunk_name(data)
    if chunk_name is None:
        return problems + [Problem(message="a LoRA output config needs parameters.OUTPUT_CHUNK", file=file,
                                   path=where, hint="use 'output_image_sd35_large' (the ComfyUI chunk)",
                                   code="missing_chunk")]
    if chunk_name in python_chunks:
        return problems + [Problem(
            message=f"DevServer renders {chunk_name!r} with chunks/{chunk_name}.py, which applies no LoRA",
            file=file, path=where, hint="use a ComfyUI chunk such as 'output_image_sd35_large'",
            code="chunk_is_python")]
    chunk = chunks.get(chunk_name)
    if chunk is None:
        own = own_chunks().get(chunk_name)
        if own is not None:
            return problems + [Problem(
                message=f"chunk {chunk_name!r} is not among the files checked; judged against {own[1]}",
                file=file, path=where, severity="warning", code="chunk_from_own_layer",
                hint="validate together with DevServer's devserver/schemas folder to check the chunk it really has")]
        return problems + [Problem(message=f"output chunk {chunk_name!r} is not among the files checked", file=file,
                                   path=where, hint="check the chunk's folder too, or fix the name",
                                   code="chunk_not_found")]
    ctype = kinds.chunk_type(chunk.data)
    backend = chunk.data.get("backend_type") if isinstance(chunk.data, dict) else None
    if ctype != kinds.OUTPUT_CHUNK or backend != "comfyui":
        problems.append(Problem(
            message=f"chunk {chunk_name!r} is a {ctype} with backend_type {backend!r}; only ComfyUI output chunks "
                    "apply LoRAs",
            file=file, path=where, hint="use a `backend_type: comfyui` chunk such as 'output_image_sd35_large'",
            code="chunk_not_comfyui"))
    return problems


def validate_tree(paths: Iterable[str | Path]) -> ValidationReport:
    """Read every JSON file under `paths`, judge what the plugin acts on, count the rest by kind."""
    schemas = export_json_schemas()
    files, python_chunks = _collect_files(paths)
    items = [_read(p, named=named) for p, named in files]
    lora_chunks = {name for i in items if i.kind == "output_config" and kinds.has_loras(i.data)
                   if (name := kinds.output_chunk_name(i.data))}
    for item in items:
        if item.kind != "unreadable":
            _judge(item, lora_chunks, schemas)
    problems = [p for item in items for p in item.problems] + _cross_file_problems(items, python_chunks)
    skipped = Counter(i.skip for i in items if not i.judged)
    return ValidationReport(problems, sum(i.judged for i in items), skipped)


def tree_problems(paths: Iterable[str | Path]) -> list[Problem]:
    """Every problem in the given files and folders (errors and warnings), cross-file rules included."""
    return validate_tree(paths).problems
