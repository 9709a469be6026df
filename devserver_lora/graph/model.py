"""Which model a ComfyUI graph renders with, read from the graph itself.

A LoRA fits one model; DevServer's chunks load many (SD3.5 through a checkpoint loader, Qwen, FLUX.2, Wan and LTX
through UNETLoader or their own checkpoints). So a LoRA is judged against the model of the graph it goes into,
never against one model named once for all graphs. Evidence, strongest first:
1. the output config's `meta.base_model`, given per render, or learnt at start-up for a model file (`known_files`:
   the file a LoRA config's chunk loads -> that config's `meta.base_model`);
2. the loader's model file name (`sd3.5_large.safetensors` -> sd35_large, `qwen_image_...` -> Qwen-Image);
3. the `type` of the graph's CLIP loaders (ComfyUI's own names: `sd3`, `flux`, `qwen_image`, `wan`, ...); a
   TripleCLIPLoader is SD3's.
`family` uses the LoRA report's family names (sd3, flux, sdxl, sd15) for the models the plugin knows keys for, and
ComfyUI's CLIP type name for the others (qwen_image, wan, ltxv, ...): a LoRA of a known family never fits those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..lora.keys import ARCHS
from .api import NodeTypes
from .inject import find_model_sources

# Model file names (lower case, without folders) -> the ARCHS entry they are. Substrings, first match wins.
_FILE_ARCHS: tuple[tuple[str, str], ...] = (
    ("sd3.5_large", "sd35_large"), ("sd3.5-large", "sd35_large"), ("sd35_large", "sd35_large"),
    ("sd3.5_medium", "sd35_medium"), ("sd3.5-medium", "sd35_medium"), ("sd35_medium", "sd35_medium"),
    ("sd3_medium", "sd3_medium"), ("flux1-dev", "flux_dev"), ("flux1_dev", "flux_dev"),
    ("flux1-schnell", "flux_schnell"), ("flux1_schnell", "flux_schnell"),
)
# Model file names -> a family the plugin knows no keys for (a LoRA of a known family does not fit it).
_FILE_FAMILIES: tuple[tuple[str, str], ...] = (
    ("qwen", "qwen_image"), ("flux2", "flux2"), ("wan2", "wan"), ("ltx", "ltxv"), ("hunyuan", "hunyuan_video"),
    ("hidream", "hidream"), ("ace_step", "ace"), ("stable-audio", "stable_audio"), ("stable_audio", "stable_audio"),
)
# ComfyUI CLIP loader `type` -> family. `stable_diffusion` is SD1.x or SD2.x: it says nothing we can use.
_CLIP_TYPE_FAMILIES = {"sd3": "sd3", "flux": "flux", "sdxl": "sdxl"}
_UNSURE_CLIP_TYPES = frozenset({"stable_diffusion", "", "default"})
_MODEL_FILE_INPUTS = ("ckpt_name", "unet_name", "model_name")


@dataclass(frozen=True)
class GraphModel:
    """The model behind one model source of a graph, and how we know."""

    source: str
    class_type: str
    file: str | None
    family: str | None
    arch: str | None
    evidence: str

    def label(self) -> str:
        return self.arch or self.family or "an unknown model"


def _family_of_arch(arch: str) -> str | None:
    spec = ARCHS.get(arch)
    if spec is not None:
        return spec.family
    return "sd3" if arch.startswith("sd3:") else None


def _from_file(file: str) -> tuple[str | None, str | None]:
    low = file.replace("\\", "/").rsplit("/", 1)[-1].casefold()
    for mark, arch in _FILE_ARCHS:
        if mark in low:
            return arch, _family_of_arch(arch)
    for mark, family in _FILE_FAMILIES:
        if mark in low:
            return None, family
    return None, None


def _clip_family(workflow: Mapping[str, Any]) -> str | None:
    """The one family the graph's CLIP loaders name, if they agree (None when none says or they disagree)."""
    found = set()
    for node in workflow.values():
        if not isinstance(node, Mapping):
            continue
        cls = node.get("class_type")
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            continue
        if cls == "TripleCLIPLoader":
            found.add("sd3")
        elif cls in ("CLIPLoader", "DualCLIPLoader", "QuadrupleCLIPLoader"):
            kind = str(inputs.get("type", "")).casefold()
            if kind not in _UNSURE_CLIP_TYPES:
                found.add(_CLIP_TYPE_FAMILIES.get(kind, kind))
    return found.pop() if len(found) == 1 else None


def graph_models(
    workflow: Mapping[str, Any],
    *,
    base_model: str | None = None,
    known_files: Mapping[str, str] | None = None,
    types: NodeTypes | None = None,
) -> dict[str, GraphModel]:
    """The model of each model source of `workflow` (node id -> GraphModel), from the evidence listed above."""
    out: dict[str, GraphModel] = {}
    clip_family = _clip_family(workflow)
    for source in find_model_sources(workflow, types=types):
        inputs = workflow[source.node_id].get("inputs") or {}
        file = next((v for k in _MODEL_FILE_INPUTS if isinstance(v := inputs.get(k), str)), None)
        if base_model:
            arch, how = base_model, "the output config's meta.base_model"
        elif file and known_files and file in known_files:
            arch, how = known_files[file], f"meta.base_model of the LoRA config whose chunk loads {file}"
        else:
            arch, how = None, ""
        family = _family_of_arch(arch) if arch else None
        if arch is None and file:
            arch, family = _from_file(file)
            how = f"its model file {file}" if (arch or family) else ""
        if family is None and clip_family:
            family, how = clip_family, "the type of its CLIP loader"
        out[source.node_id] = GraphModel(source.node_id, source.class_type, file, family, arch, how or "nothing")
    return out
