"""A DevServer `schemas/` folder read as DevServer reads it, and an output config resolved to its chunk.

Strict where the plugin acts, lenient elsewhere: a LoRA output config, and the chunk it renders through, must be
right (their problems are errors, and `resolve` refuses them); every other file of DevServer's tree (safety and
translation configs, LLM templates, Diffusers/Python/API chunks, pipelines) is read the way DevServer reads it and
skipped with its reason when the plugin does not model it. Under the tree lies the project's own chunk layer
(`config.chunks.own_chunks`): a chunk the tree lacks may come from there, labelled as such (`chunk_origins`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import ConfigError, Problem
from ..lora.spec import LoraSpec
from . import kinds
from .chunks import own_chunks
from .files import parse_output_chunk, parse_output_config, read_json_file
from .models import OutputChunk, OutputConfig


class ResolvedOutput(BaseModel):
    """An output config with the chunk DevServer would pick for it (`parameters.OUTPUT_CHUNK`)."""

    name: str
    config: OutputConfig
    chunk: OutputChunk
    loras: list[LoraSpec]
    chunk_origin: str


@dataclass(frozen=True)
class Skipped:
    """A file of the tree the plugin reads but does not model, and why."""

    path: Path
    kind: str


class SchemasTree:
    """A DevServer `schemas/` folder: `configs/**/*.json`, `chunks/*.json|*.py`, `pipelines/*.json`.

    Only `*.json` files count (a `.json.deprecated` file is not loaded, as in DevServer), configs are registered
    under DevServer's names (`kinds.registered_config_name`), chunks under their file stem.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.output_configs: dict[str, OutputConfig] = {}
        self.chunks: dict[str, OutputChunk] = {}
        self.chunk_origins: dict[str, str] = {}
        self.python_chunks: set[str] = set()
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.interception_loras: dict[str, list[dict[str, Any]]] = {}
        self.problems: list[Problem] = []
        self.skipped: list[Skipped] = []
        self.config_files: dict[str, Path] = {}
        self._chunk_problems: dict[str, list[Problem]] = {}
        self._chunk_kinds: dict[str, str] = {}
        self._chunk_backends: dict[str, str] = {}
        self._broken: dict[str, list[Problem]] = {}

    @classmethod
    def load(cls, root: str | Path, *, own_chunks: bool = True) -> SchemasTree:
        """Read `root` as DevServer does. `own_chunks=False` leaves out the project's chunk layer (what DevServer
        itself would find: the start-up check and `doctor` use that)."""
        base = Path(root)
        if not base.is_dir():
            raise ConfigError(f"{base} is not a folder", hint="give DevServer's devserver/schemas folder")
        if not (base / "configs").is_dir() and not (base / "chunks").is_dir():
            raise ConfigError(
                f"{base} has neither configs/ nor chunks/",
                hint="give the schemas folder itself (the one that contains configs/ and chunks/)",
            )
        tree = cls(base)
        tree._read_chunks()
        if own_chunks:
            tree._add_own_chunks()
        tree._read_pipelines()
        tree._read_configs()
        return tree

    # ------------------------------------------------------------------ reading
    def _read_chunks(self) -> None:
        folder = self.root / "chunks"
        self.python_chunks = {p.stem for p in folder.glob("*.py")}
        for path in sorted(folder.glob("*.json")):
            try:
                data = read_json_file(path)
            except ConfigError as exc:
                self._chunk_problems[path.stem] = [Problem(message=exc.message, file=str(path), code="json")]
                self._chunk_kinds[path.stem] = "unreadable chunk"
                continue
            kind = kinds.chunk_type(data)
            self._chunk_kinds[path.stem] = kind
            if kind != kinds.OUTPUT_CHUNK or not isinstance(data, dict):
                continue
            self._chunk_backends[path.stem] = str(data.get("backend_type", "comfyui"))  # the router's default
            try:
                self.chunks[path.stem] = parse_output_chunk(kinds.with_chunk_name(data, path.stem), file=str(path))
                self.chunk_origins[path.stem] = str(path)
            except ConfigError as exc:
                self._chunk_problems[path.stem] = exc.problems or [Problem(message=exc.message, file=str(path))]

    def _add_own_chunks(self) -> None:
        for name, (data, origin) in own_chunks().items():
            if name not in self._chunk_kinds and name not in self.python_chunks:
                self.chunks[name] = parse_output_chunk(data, file=origin)
                self.chunk_origins[name] = origin

    def _read_pipelines(self) -> None:
        for path in sorted((self.root / "pipelines").glob("*.json")):
            try:
                data = read_json_file(path)
            except ConfigError as exc:
                self.problems.append(Problem(message=exc.message, file=str(path), severity="warning", code="json"))
                continue
            if isinstance(data, dict):
                name = data.get("name")
                self.pipelines[name if isinstance(name, str) else path.stem] = data

    def _read_configs(self) -> None:
        configs_root = self.root / "configs"
        for path in sorted(configs_root.glob("**/*.json")):
            folder = kinds.config_folder(path, configs_root)
            try:
                data = read_json_file(path)
            except ConfigError as exc:
                # DevServer logs such a file and goes on without it; for an output config that may be a LoRA
                # config that silently vanished from the picker, so it is an error there.
                severity = "error" if folder == kinds.OUTPUT else "warning"
                self.problems.append(Problem(message=exc.message, file=str(path), severity=severity, code="json"))
                continue
            name = kinds.registered_config_name(path, configs_root, data)
            if folder == kinds.OUTPUT:
                self._read_output_config(path, name, data)
            elif folder == kinds.INTERCEPTION and isinstance(data, dict):
                meta = data.get("meta")
                loras = meta.get("loras") if isinstance(meta, dict) else None
                if isinstance(loras, list) and loras:
                    self.interception_loras[name] = [x for x in loras if isinstance(x, dict)]
                self.skipped.append(Skipped(path, kinds.SKIPPED_INTERCEPTION_CONFIGS))
            else:
                self.skipped.append(Skipped(path, kinds.SKIPPED_OTHER_CONFIGS))

    def _read_output_config(self, path: Path, name: str, data: Any) -> None:
        lora = kinds.has_loras(data)
        try:
            config = parse_output_config(data, file=str(path))
        except ConfigError as exc:
            if lora:
                self._broken[name] = exc.problems or [Problem(message=exc.message, file=str(path))]
                self.problems += self._broken[name]
            else:
                self.skipped.append(Skipped(path, kinds.SKIPPED_OUTPUT_CONFIGS))
            return
        self.output_configs[name] = config
        self.config_files[name] = path
        if not lora:
            self.skipped.append(Skipped(path, kinds.SKIPPED_OUTPUT_CONFIGS))
            return
        problems = self._render_chunk_problems(name, config, path)
        unmirrored = kinds.unmirrored_lora(data, str(path))
        if unmirrored is not None:
            problems.append(unmirrored)
        if problems:
            self._broken[name] = problems
            self.problems += problems

    def _render_chunk_problems(self, name: str, config: OutputConfig, path: Path) -> list[Problem]:
        """What is wrong with the chunk a LoRA config renders through ([] if nothing)."""
        chunk_name = config.output_chunk_name
        file = str(path)
        where = "$.parameters.OUTPUT_CHUNK"
        if not chunk_name:
            return [Problem("the output config has no parameters.OUTPUT_CHUNK", file=file, path=where,
                            code="missing_chunk", hint="use 'output_image_sd35_large' (DevServer's ComfyUI chunk)")]
        if chunk_name in self.python_chunks:
            return [Problem(f"DevServer renders {chunk_name!r} with its Python chunk chunks/{chunk_name}.py, which "
                            "applies no LoRA", file=file, path=where, code="chunk_is_python",
                            hint="render LoRA configs through a ComfyUI chunk such as 'output_image_sd35_large'")]
        backend = self._chunk_backends.get(chunk_name, "comfyui")
        if backend != "comfyui":
            return [Problem(f"chunk {chunk_name!r} has backend_type {backend!r}; only ComfyUI chunks apply LoRAs",
                            file=file, path=where, code="chunk_not_comfyui",
                            hint="use a `backend_type: comfyui` chunk such as 'output_image_sd35_large'")]
        if chunk_name in self._chunk_problems:
            return [Problem(f"its chunk {chunk_name!r} is not a valid ComfyUI output chunk", file=file, path=where,
                            code="chunk_invalid"), *self._chunk_problems[chunk_name]]
        chunk = self.chunks.get(chunk_name)
        if chunk is None:
            kind = self._chunk_kinds.get(chunk_name)
            message = (f"its chunk {chunk_name!r} is a {kind}, not an output chunk" if kind else
                       f"names chunk {chunk_name!r}, which is not in {self.root / 'chunks'}")
            return [Problem(message, file=file, path=where, code="chunk_not_found",
                            hint="fix parameters.OUTPUT_CHUNK (DevServer's ComfyUI SD3.5 chunk is "
                                 "'output_image_sd35_large')")]
        return []

    # ------------------------------------------------------------------ queries
    def lora_config_problems(self) -> list[Problem]:
        """The problems of LoRA output configs and of the chunks they render through (what a render would hit)."""
        return [p for problems in self._broken.values() for p in problems]

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def skipped_counts(self) -> Counter[str]:
        return Counter(s.kind for s in self.skipped)

    def lora_configs(self) -> dict[str, list[LoraSpec]]:
        """Every output config with LoRAs that resolves to its chunk, with its normalised LoRA list (the broken ones
        are in `lora_config_problems`)."""
        return {name: cfg.loras for name, cfg in self.output_configs.items() if cfg.loras and name not in self._broken}

    def resolve(self, name: str) -> ResolvedOutput:
        if name in self._broken:
            raise ConfigError(f"output config {name!r} is not valid", self._broken[name])
        config = self.output_configs.get(name)
        if config is None:
            known = ", ".join(sorted(self.output_configs)) or "none"
            raise ConfigError(f"no output config named {name!r} in {self.root}", hint=f"known configs: {known}")
        problems = self._render_chunk_problems(name, config, self.config_files[name])
        if problems:
            raise ConfigError(f"output config {name!r} cannot render through its chunk", problems)
        chunk_name = config.output_chunk_name
        assert chunk_name is not None  # _render_chunk_problems refused a missing one
        return ResolvedOutput(name=name, config=config, chunk=self.chunks[chunk_name], loras=config.loras,
                              chunk_origin=self.chunk_origins[chunk_name])
