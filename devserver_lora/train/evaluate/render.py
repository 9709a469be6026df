"""Render evaluation images through a running ComfyUI, the way DevServer's Stage 4 would.

The graph is a DevServer output chunk: by default the project's own SD3.5 chunk (`config.chunks`, the same graph
as DevServer's `output_image_sd35_large`), or any chunk file. A LoRA goes in through the core's `inject_loras`
(model and CLIP rewired, LoraLoaderModelOnly for a LoRA without text-encoder keys), then the chunk's input
mappings are filled (prompt, negative prompt, size, steps, cfg, seed), as Stage 4 does. Before each submission
the client checks that the LoRA is installed and fits the model it was trained on. Each distinct render happens
once (same prompt, seed, LoRA and strengths = same image) and is saved alone with its facts in PNG text chunks.

ComfyUI reads LoRAs from its loras folder: the files under evaluation are linked or copied into
`<loras>/devserver_lora_eval/<job>/` for the run and removed afterwards (only what we put there).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...comfy import ComfyClient, Timeouts
from ...config.chunks import Clip, sd35_chunk
from ...config.files import load_output_chunk
from ...config.models import OutputChunk
from ...errors import ComfyUnreachable, DevserverLoraError, TrainingError
from ...graph.api import EdgeIndex, copy_api_graph, default_node_types
from ...graph.inject import find_model_sources, inject_loras, set_field
from ...lora.report import inspect_lora
from ...lora.spec import LoraSpec
from ...paths import check_simple_name, safe_join
from .pngtext import write_png

EVAL_LORAS_SUBDIR = "devserver_lora_eval"
CLIP_LOADERS = ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "QuadrupleCLIPLoader")


@dataclass(frozen=True)
class RenderSpec:
    """One image: a prompt at a seed, with a LoRA (ComfyUI name) at given strengths, or without (lora None)."""

    prompt: str
    seed: int
    lora: str | None = None
    strength_model: float = 1.0
    strength_clip: float = 1.0
    source: str | None = None  # what the LoRA is, for people: "<job id>/<file>"


@dataclass(frozen=True)
class RenderSettings:
    size: int
    steps: int
    cfg: float
    negative_prompt: str


@dataclass
class Rendered:
    spec: RenderSpec
    path: Path | None
    image: Any = None  # PIL image
    error: str | None = None


class ChunkGraph:
    """The render graph of one output chunk, with the base model and text-encoder wiring the caller asks for."""

    def __init__(self, chunk: OutputChunk, *, base_model: str | None = None, clip_from_checkpoint: bool = False,
                 description: str = "") -> None:
        self.chunk = chunk
        self.description = description or f"output chunk {chunk.name}"
        graph = copy_api_graph(chunk.workflow)
        if clip_from_checkpoint:
            _clip_from_checkpoint(graph)
            self.description += ", text encoders from the checkpoint"
        if base_model:
            targets = chunk.mapping_targets("checkpoint")
            if targets:
                for t in targets:
                    set_field(graph, t.node_id, t.field, base_model)
            else:
                for node in graph.values():
                    if node.get("class_type") == "CheckpointLoaderSimple":
                        node["inputs"]["ckpt_name"] = base_model
            self.description += f", base model {base_model}"
        self.graph = graph

    @property
    def output_node(self) -> str | None:
        return self.chunk.output_mapping.node_id if self.chunk.output_mapping else None

    def build(self, spec: RenderSpec, settings: RenderSettings, lora_info: dict[str, Any]) -> dict[str, Any]:
        """Inject the LoRA (if any), then fill the mappings: what Stage 4 submits for this prompt and seed."""
        graph = self.graph
        if spec.lora is not None:
            lora = LoraSpec.model_validate({"name": spec.lora, "strength_model": spec.strength_model,
                                            "strength_clip": spec.strength_clip})
            graph = inject_loras(graph, [lora], lora_info=lora_info)
        else:
            graph = copy_api_graph(graph)
        values = {"prompt": spec.prompt, "negative_prompt": settings.negative_prompt, "width": settings.size,
                  "height": settings.size, "steps": settings.steps, "cfg": settings.cfg, "seed": spec.seed}
        for key, value in values.items():
            targets = self.chunk.mapping_targets(key)
            if not targets and key in ("prompt", "seed"):
                raise TrainingError(f"chunk {self.chunk.name!r} has no {key!r} input mapping",
                                    hint="evaluate needs a text-to-image chunk with prompt and seed mappings")
            for t in targets:
                set_field(graph, t.node_id, t.field, value)
        return graph


def _clip_from_checkpoint(graph: dict[str, Any]) -> None:
    """Let every text encoder read the checkpoint's own CLIP (output 1) instead of a separate CLIP loader."""
    sources = [s for s in find_model_sources(graph) if s.class_type == "CheckpointLoaderSimple"]
    if len(sources) != 1:
        raise TrainingError("--clip-from-checkpoint needs a graph with exactly one CheckpointLoaderSimple",
                            hint="use the default chunk, or a chunk file with one checkpoint loader")
    ckpt = sources[0].node_id
    index = EdgeIndex(graph, default_node_types())
    for node in graph.values():
        link = node.get("inputs", {}).get("clip")
        if isinstance(link, list) and len(link) == 2 and index.class_of(str(link[0])) in CLIP_LOADERS:
            node["inputs"]["clip"] = [ckpt, 1]


def load_chunk(path: Path | None, *, triple_clip: bool = False) -> tuple[OutputChunk, str]:
    """The chunk file given, or the project's own SD3.5 chunk (triple CLIP for a LoRA that trained them)."""
    if path is not None:
        return load_output_chunk(path), f"output chunk {Path(path).name}"
    clip: Clip = "triple" if triple_clip else "dual"
    name = "output_image_sd35_large_triple_clip" if triple_clip else "output_image_sd35_large"
    return OutputChunk.model_validate(sd35_chunk(name, clip)), f"the SD3.5 chunk {name} (devserver_lora.config.chunks)"


class LoraStage:
    """Puts LoRA files where ComfyUI finds them for the duration of an evaluation, and takes them away again."""

    def __init__(self, loras_dir: Path, job_id: str) -> None:
        check_simple_name(job_id, what="job id")
        self.loras_dir = Path(loras_dir)
        if not self.loras_dir.is_dir():
            raise TrainingError(f"ComfyUI's loras folder {self.loras_dir} does not exist",
                                hint="pass --loras-dir with the models/loras folder of the ComfyUI you render with")
        self.dir = self.loras_dir / EVAL_LORAS_SUBDIR / job_id
        self.placed: list[Path] = []

    def add(self, source: Path, prefix: str = "") -> str:
        """The ComfyUI name of `source` once it is in the loras folder (a hard link when possible, else a copy)."""
        name = f"{prefix}{source.name}"
        check_simple_name(name, what="LoRA file name")
        dest = safe_join(self.dir, name, what="LoRA file name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not _same_file(source, dest):
            dest.unlink(missing_ok=True)
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
            self.placed.append(dest)
        return dest.relative_to(self.loras_dir).as_posix()

    def remove(self) -> None:
        for path in self.placed:
            path.unlink(missing_ok=True)
        for folder in (self.dir, self.dir.parent):
            try:
                folder.rmdir()  # only when empty: never anything someone else put there
            except OSError:
                pass


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b) or (a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes())
    except OSError:
        return False


def image_file_name(spec: RenderSpec, settings: RenderSettings, graph_id: str) -> str:
    """A readable, unique name: seed, LoRA, strengths, and a hash of everything that shaped the image."""
    blob = json.dumps([spec.prompt, spec.seed, spec.lora, spec.strength_model, spec.strength_clip, settings.size,
                       settings.steps, settings.cfg, settings.negative_prompt, graph_id], sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
    lora = "nolora" if spec.lora is None else Path(spec.lora).stem[:48]
    strengths = "" if spec.lora is None else f"_m{spec.strength_model:g}_c{spec.strength_clip:g}"
    return f"seed{spec.seed}_{lora}{strengths}_{digest}.png"


class Renderer:
    """Renders RenderSpecs through one ComfyUI client; each distinct spec once, every image saved alone."""

    def __init__(self, client: ComfyClient, graph: ChunkGraph, settings: RenderSettings, images_dir: Path, *,
                 loras_dir: Path, arch_of: dict[str, str], job_id: str,
                 on_image: Callable[[Rendered], None] | None = None) -> None:
        self.client, self.graph, self.settings = client, graph, settings
        self.images_dir = images_dir
        self.loras_dir, self.arch_of, self.job_id = loras_dir, arch_of, job_id
        self.on_image = on_image
        self.done: dict[RenderSpec, Rendered] = {}
        self._by_graph: dict[str, tuple[Any, str]] = {}  # graph hash -> (image, ComfyUI prompt id)
        self.lora_info: dict[str, Any] = {}
        self.graph_id = hashlib.sha256(json.dumps(graph.graph, sort_keys=True).encode()).hexdigest()[:12]

    def _info(self, name: str) -> Any:
        if name not in self.lora_info:
            self.lora_info[name] = inspect_lora(safe_join(self.loras_dir, name, what="LoRA name"))
        return self.lora_info[name]

    async def render(self, spec: RenderSpec) -> Rendered:
        if spec in self.done:
            return self.done[spec]
        from PIL import Image

        try:
            if spec.lora is not None:
                self._info(spec.lora)
            graph = self.graph.build(spec, self.settings, self.lora_info)
            digest = hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()
            if digest in self._by_graph:  # e.g. "model only" of a LoRA without text-encoder keys: the same graph
                image, prompt_id = self._by_graph[digest]
            else:
                result = await self.client.run(graph, output_node=self.graph.output_node, loras_dir=self.loras_dir,
                                               arch=self.arch_of.get(spec.lora or ""))
                if not result.images:
                    raise TrainingError(f"ComfyUI saved no image for prompt {result.prompt_id}",
                                        hint="the chunk's output_mapping must name its SaveImage node")
                image = Image.open(io.BytesIO(result.images[0].data))
                image.load()
                prompt_id = result.prompt_id
                self._by_graph[digest] = (image, prompt_id)
            path = self.images_dir / image_file_name(spec, self.settings, self.graph_id)
            write_png(path, image, {
                "prompt": spec.prompt, "seed": spec.seed, "lora": spec.lora, "lora_source": spec.source,
                "strength_model": spec.strength_model if spec.lora else 0.0,
                "strength_clip": spec.strength_clip if spec.lora else 0.0, "job": self.job_id,
                "size": self.settings.size, "steps": self.settings.steps, "cfg": self.settings.cfg,
                "comfyui_prompt_id": prompt_id,
            })
            done = Rendered(spec, path, image.convert("RGB"))
        except ComfyUnreachable:
            raise  # nothing else will render either
        except DevserverLoraError as exc:
            done = Rendered(spec, None, None, f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        self.done[spec] = done
        if self.on_image is not None:
            self.on_image(done)
        return done


def default_timeouts() -> Timeouts:
    return Timeouts(overall=900.0, idle=300.0)
