"""A DevServer `schemas/` folder read as DevServer reads it, and an output config resolved to its chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import ConfigError, Problem
from ..lora.spec import LoraSpec
from .files import load_output_config, parse_output_chunk, read_json_file
from .models import OutputChunk, OutputConfig


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
