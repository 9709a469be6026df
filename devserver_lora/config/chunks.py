"""The project's own SD3.5 output chunks, written from ComfyUI's API format (no DevServer file is copied).

DevServer's `output_image_sd35_large` chunk is a plain ComfyUI text-to-image graph for SD3.5: a checkpoint loader
(MODEL, CLIP, VAE), a CLIP loader feeding two CLIPTextEncode nodes whose texts come from two PrimitiveString nodes,
an empty latent, a KSampler, a VAE decode and a SaveImage. DevServer fills it through `input_mappings` keyed by its
parameter names. `sd35_chunk` writes that graph with the same node ids and mapping keys (the facts a config and
DevServer's Stage 4 rely on) in the project's own words, with either CLIP loader:

- "dual": DualCLIPLoader(clip_g, t5xxl, type sd3), DevServer's choice; a LoRA's CLIP-L keys have nothing to patch;
- "triple": TripleCLIPLoader(clip_l, clip_g, t5xxl), for LoRAs that trained the text encoders.

`python -m devserver_lora.config.chunks` rewrites the shipped triple-CLIP chunk; a test keeps it in step.

`own_chunks()` is the project's chunk layer. A `SchemasTree` puts it UNDER a DevServer tree: a chunk of the tree
always wins, and a chunk taken from this layer is labelled as such wherever it is shown. It holds the triple-CLIP
chunk and a stand-in for DevServer's `output_image_sd35_large` (dual CLIP, the same node ids and mapping keys), so
that `show-config`, `inject` and `generate` work on the shipped example without a DevServer checkout. DevServer
itself never sees the stand-in: every DevServer has its own `output_image_sd35_large`, and LoRA configs name that.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from ..paths import atomic_write_text
from .models import SD35_CHUNK, SD35_TRIPLE_CLIP_CHUNK

Clip = Literal["dual", "triple"]
TRIPLE_CLIP_CHUNK = SD35_TRIPLE_CLIP_CHUNK
OWN_CHUNK_ORIGIN = "devserver-lora's own chunk (devserver_lora.config.chunks)"
STAND_IN_ORIGIN = f"devserver-lora's stand-in for DevServer's {SD35_CHUNK} (written from ComfyUI's API format)"
CHECKPOINT = "OfficialStableDiffusion/sd3.5_large.safetensors"
ENCODERS = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5xxl": "t5xxl_enconly.safetensors"}
DEFAULTS: dict[str, Any] = {
    "width": 1024, "height": 1024, "steps": 25, "cfg": 5.5, "sampler_name": "euler", "scheduler": "normal",
    "denoise": 1.0, "seed": 123456789, "negative_prompt": "blurry, bad quality, watermark, text, distorted",
}


def _node(class_type: str, title: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}


def sd35_workflow(clip: Clip = "dual", *, checkpoint: str = CHECKPOINT) -> dict[str, dict[str, Any]]:
    """The API-format graph: ids "1".."11" as DevServer's SD3.5 chunk numbers them; "7" dangles in the dual form."""
    triple = _node("TripleCLIPLoader", "text encoders: CLIP-L + CLIP-G + T5-XXL", clip_name1=ENCODERS["clip_l"],
                   clip_name2=ENCODERS["clip_g"], clip_name3=ENCODERS["t5xxl"])
    dual = _node("DualCLIPLoader", "text encoders: CLIP-G + T5-XXL", clip_name1=ENCODERS["clip_g"],
                 clip_name2=ENCODERS["t5xxl"], type="sd3", device="default")
    clip_id = "9" if clip == "dual" else "7"
    d = DEFAULTS
    graph = {
        "1": _node("CLIPTextEncode", "encode the prompt", text=["10", 0], clip=[clip_id, 0]),
        "2": _node("VAEDecode", "latent to pixels", samples=["8", 0], vae=["5", 2]),
        "3": _node("EmptyLatentImage", "canvas size", width=d["width"], height=d["height"], batch_size=1),
        "4": _node("SaveImage", "the image", filename_prefix="ComfyUI", images=["2", 0]),
        "5": _node("CheckpointLoaderSimple", "SD3.5 checkpoint", ckpt_name=checkpoint),
        "6": _node("CLIPTextEncode", "encode the negative prompt", text=["11", 0], clip=[clip_id, 0]),
        "7": triple,
        "8": _node("KSampler", "sampler", seed=d["seed"], steps=d["steps"], cfg=d["cfg"],
                   sampler_name=d["sampler_name"], scheduler=d["scheduler"], denoise=d["denoise"],
                   model=["5", 0], positive=["1", 0], negative=["6", 0], latent_image=["3", 0]),
        "10": _node("PrimitiveString", "positive_prompt", value=""),
        "11": _node("PrimitiveString", "negative_prompt", value=""),
    }
    if clip == "dual":
        graph["9"] = dual
    return dict(sorted(graph.items(), key=lambda item: int(item[0])))


def _mapping(node_id: str, field: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"node_id": node_id, "field": field, **extra, "description": description}


def sd35_input_mappings(*, checkpoint: str = CHECKPOINT) -> dict[str, dict[str, Any]]:
    """DevServer's mapping keys (Stage 4 fills them from the config's parameters) onto the graph's fields."""
    d = DEFAULTS
    return {
        "prompt": _mapping("10", "inputs.value", "the prompt Stage 2 wrote", source="{{PREVIOUS_OUTPUT}}"),
        "negative_prompt": _mapping("11", "inputs.value", "what the image should avoid", default=d["negative_prompt"]),
        "width": _mapping("3", "inputs.width", "width in pixels", default=d["width"]),
        "height": _mapping("3", "inputs.height", "height in pixels", default=d["height"]),
        "steps": _mapping("8", "inputs.steps", "sampling steps", default=d["steps"]),
        "cfg": _mapping("8", "inputs.cfg", "how closely the image follows the prompt", default=d["cfg"]),
        "sampler_name": _mapping("8", "inputs.sampler_name", "sampling method", default=d["sampler_name"]),
        "scheduler": _mapping("8", "inputs.scheduler", "noise schedule", default=d["scheduler"]),
        "denoise": _mapping("8", "inputs.denoise", "1.0 renders from noise", default=d["denoise"]),
        "seed": _mapping("8", "inputs.seed", "the seed ('random' draws one)", default=d["seed"]),
        "checkpoint": _mapping("5", "inputs.ckpt_name", "the SD3.5 checkpoint file", default=checkpoint),
    }


def sd35_chunk(name: str, clip: Clip = "dual", *, checkpoint: str = CHECKPOINT) -> dict[str, Any]:
    """A whole DevServer output chunk (JSON-ready) rendering SD3.5 Large through ComfyUI."""
    encoders = ["clip_g", "t5xxl"] if clip == "dual" else ["clip_l", "clip_g", "t5xxl"]
    why = (
        "CLIP-G and T5-XXL through a DualCLIPLoader"
        if clip == "dual"
        else "all three text encoders through a TripleCLIPLoader, so a LoRA's CLIP-L and CLIP-G keys (lora_te1_, "
        "lora_te2_) find the encoders they patch"
    )
    return {
        "name": name,
        "type": "output_chunk",
        "backend_type": "comfyui",
        "media_type": "image",
        "description": f"SD3.5 Large through ComfyUI with {why}.",
        "workflow": sd35_workflow(clip, checkpoint=checkpoint),
        "input_mappings": sd35_input_mappings(checkpoint=checkpoint),
        "output_mapping": {"node_id": "4", "output_type": "image", "format": "png"},
        "meta": {
            "model_file": checkpoint.rsplit("/", 1)[-1],
            "clip_models": [ENCODERS[e] for e in encoders],
            "recommended_resolution": "1024x1024",
            "written_by": "devserver-lora (devserver_lora.config.chunks)",
        },
    }


def own_chunks() -> dict[str, tuple[dict[str, Any], str]]:
    """The project's chunk layer: name -> (chunk JSON, where it comes from, as shown to the user)."""
    stand_in = sd35_chunk(SD35_CHUNK, "dual")
    stand_in["meta"]["stands_in_for"] = f"DevServer's {SD35_CHUNK}, used only where no DevServer tree is given"
    return {
        SD35_CHUNK: (stand_in, STAND_IN_ORIGIN),
        TRIPLE_CLIP_CHUNK: (sd35_chunk(TRIPLE_CLIP_CHUNK, "triple"), OWN_CHUNK_ORIGIN),
    }


def chunk_json(chunk: dict[str, Any]) -> str:
    return json.dumps(chunk, indent=2, ensure_ascii=False) + "\n"


def _main(argv: list[str]) -> int:
    dest = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "schemas" / "chunks"
    path = atomic_write_text(dest / f"{TRIPLE_CLIP_CHUNK}.json", chunk_json(sd35_chunk(TRIPLE_CLIP_CHUNK, "triple")))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
