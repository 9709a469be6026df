"""A DevServer-shaped `schemas/` tree for tests, written in code from the format's facts (DESIGN.md section 1).

No DevServer file is copied: the SD3.5 chunk comes from `devserver_lora.config.chunks`, the rest is the smallest
JSON with the fields DevServer reads (a pipeline naming its chunk, the proxy chunk, a plain output config).
Tests about DevServer's *real* files use `conftest.devserver_sample` instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devserver_lora.config.chunks import sd35_chunk

SD35_CHUNK = "output_image_sd35_large"


def proxy_chunk() -> dict[str, Any]:
    """The `output_image` proxy: Stage 4 reads OUTPUT_CHUNK from the config and renders through that chunk."""
    return {
        "name": "output_image",
        "type": "proxy_chunk",
        "backend_type": "comfyui",
        "parameters": {"output_chunk": "{{OUTPUT_CHUNK}}", "prompt": "{{PREVIOUS_OUTPUT}}", "seed": "{{SEED}}"},
    }


def pipeline() -> dict[str, Any]:
    return {"name": "single_text_media_generation", "pipeline_stage": "4", "chunks": ["output_image"]}


def plain_config() -> dict[str, Any]:
    """An image output config without LoRAs, rendering through the SD3.5 ComfyUI chunk."""
    return {
        "pipeline": "single_text_media_generation",
        "name": {"en": "SD3.5 Large (test)", "de": "SD3.5 Large (Test)"},
        "description": {"en": "SD3.5 Large through ComfyUI", "de": "SD3.5 Large über ComfyUI"},
        "category": {"en": "Image", "de": "Bild"},
        "parameters": {"OUTPUT_CHUNK": SD35_CHUNK, "WIDTH": 1024, "HEIGHT": 1024, "STEPS": 25, "CFG": 5.5,
                       "SEED": "random"},
        "media_preferences": {"default_output": "image", "supported_types": ["image"]},
        "meta": {"stage": "output", "backend_type": "comfyui"},
    }


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_devserver_tree(root: Path) -> Path:
    """`root/{chunks,pipelines,configs/output}` with the SD3.5 chunk, the proxy, the pipeline and a plain config."""
    _write(root / "chunks" / f"{SD35_CHUNK}.json", sd35_chunk(SD35_CHUNK))
    _write(root / "chunks" / "output_image.json", proxy_chunk())
    _write(root / "pipelines" / "single_text_media_generation.json", pipeline())
    _write(root / "configs" / "output" / "sd35_large.json", plain_config())
    return root


# ----------------------------------------------------------------------------- more of DevServer's shapes
# Facts (class names, input names, CLIP loader types) from DevServer's chunks and ComfyUI; the JSON is ours.
QWEN_MODEL = "qwen_image_fp8_e4m3fn.safetensors"


def qwen_like_chunk(name: str = "output_image_qwen") -> dict[str, Any]:
    """A Qwen-Image text-to-image chunk as DevServer builds one: UNETLoader + CLIPLoader(type qwen_image)."""
    def node(cls: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": cls, "inputs": inputs}

    workflow = {
        "37": node("UNETLoader", unet_name=QWEN_MODEL, weight_dtype="default"),
        "38": node("CLIPLoader", clip_name="qwen_2.5_vl_7b_fp8_scaled.safetensors", type="qwen_image",
                   device="default"),
        "39": node("VAELoader", vae_name="qwen_image_vae.safetensors"),
        "66": node("ModelSamplingAuraFlow", model=["37", 0], shift=3.1),
        "75": node("PrimitiveStringMultiline", value=""),
        "6": node("CLIPTextEncode", clip=["38", 0], text=["75", 0]),
        "7": node("CLIPTextEncode", clip=["38", 0], text=""),
        "58": node("EmptySD3LatentImage", width=1328, height=1328, batch_size=1),
        "3": node("KSampler", model=["66", 0], positive=["6", 0], negative=["7", 0], latent_image=["58", 0],
                  seed=1, steps=20, cfg=2.5, sampler_name="euler", scheduler="simple", denoise=1),
        "8": node("VAEDecode", samples=["3", 0], vae=["39", 0]),
        "60": node("SaveImage", images=["8", 0], filename_prefix="qwen"),
    }
    return {
        "name": name, "type": "output_chunk", "backend_type": "comfyui", "media_type": "image",
        "requires_workflow": True, "workflow": workflow,
        "input_mappings": {"prompt": {"node_id": "75", "field": "inputs.value", "source": "{{PREVIOUS_OUTPUT}}"},
                           "seed": {"node_id": "3", "field": "inputs.seed", "default": "random"}},
        "output_mapping": {"node_id": "60", "output_type": "image", "format": "png"},
    }


def tiny_sd3_chunk(name: str, checkpoint: str) -> dict[str, Any]:
    """The SD3.5 chunk's graph and mappings on a checkpoint that carries its own CLIP (the tiny test model)."""
    chunk = sd35_chunk(name, "dual", checkpoint=checkpoint)
    workflow = chunk["workflow"]
    for gone in ("7", "9"):
        del workflow[gone]
    workflow["1"]["inputs"]["clip"] = ["5", 1]
    workflow["6"]["inputs"]["clip"] = ["5", 1]
    chunk["meta"] = {"model_file": checkpoint, "written_by": "devserver-lora (tests)"}
    return chunk


def unmodelled_files(root: Path) -> dict[str, int]:
    """Write DevServer files of every kind the plugin does not model; returns how `validate` counts them."""
    _write(root / "chunks" / "output_music_demo.json", {  # template mappings, no node ids; has a .py twin
        "type": "output_chunk", "backend_type": "heartmula", "media_type": "music",
        "input_mappings": {"lyrics": {"source": "{{TEXT_1}}", "default": ""}}, "output_mapping": {"format": "mp3"}})
    (root / "chunks" / "output_music_demo.py").write_text("# a Python chunk\n", encoding="utf-8")
    _write(root / "chunks" / "translate_demo.json", {"template": "Translate: {{INPUT_TEXT}}", "model": "M"})
    _write(root / "chunks" / "output_code_demo.json", {"name": "output_code_demo", "type": "text_passthrough",
                                                       "backend_type": "none", "media_type": "code"})
    _write(root / "configs" / "pre_output" / "translation_demo.json", {"pipeline": "translation", "name": "t"})
    _write(root / "configs" / "interception" / "plain_demo.json",
           {"pipeline": "text_transformation", "name": {"en": "Plain"}, "context": "x"})
    _write(root / "safety_words_demo.json", {"kids": ["a", "b"]})
    return {"output chunks no LoRA config renders through": 1, "LLM template chunks": 1,
            "text passthrough chunks": 1, "other DevServer files (safety, translation, word lists, ...)": 2,
            "interception configs without LoRAs": 1}
