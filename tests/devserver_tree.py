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
