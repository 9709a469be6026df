"""The key check uses the text encoders the graph really wires, and the config's base model by default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SCHEMAS
from safetensors.numpy import save_file

from devserver_lora.comfy.preflight import arch_as_wired, check_fits
from devserver_lora.config.chunks import sd35_workflow
from devserver_lora.config.files import load_output_chunk
from devserver_lora.devserver.stage4 import Stage4Runner
from devserver_lora.errors import LoraFileError
from devserver_lora.graph.inject import inject_loras
from devserver_lora.lora.fit import resolve_arch
from devserver_lora.lora.spec import LoraSpec

DUAL = sd35_workflow("dual")
TRIPLE = load_output_chunk(SCHEMAS / "chunks" / "output_image_sd35_large_triple_clip.json").workflow


def _lora(path: Path, *, te: bool, unet_prefix: str = "lora_unet_joint_blocks_0_x_block_attn_qkv",
          width: int = 128) -> Path:
    """A zero LoRA shaped as ComfyUI's weights are: `width` = the MMDiT's hidden size (64 x depth)."""
    f16 = np.float16
    modules = {unet_prefix: (width, 3 * width)}
    if te:
        modules["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"] = (768, 768)
        modules["lora_te2_text_model_encoder_layers_0_self_attn_q_proj"] = (1280, 1280)
    tensors = {}
    for m, (fan_in, fan_out) in modules.items():
        tensors[f"{m}.lora_down.weight"] = np.zeros((4, fan_in), dtype=f16)
        tensors[f"{m}.lora_up.weight"] = np.zeros((fan_out, 4), dtype=f16)
        tensors[f"{m}.alpha"] = np.array(4.0, dtype=f16)
    save_file(tensors, str(path))
    return path


def _injected(workflow: dict, name: str) -> tuple[dict, str]:
    graph = inject_loras(workflow, [LoraSpec(name=name)], lora_info={name: True})
    (node_id,) = [k for k, n in graph.items() if n["class_type"] == "LoraLoader"]
    return graph, node_id


def test_arch_follows_the_clip_the_lora_patches() -> None:
    base = resolve_arch("sd35_large")
    graph, node = _injected(DUAL, "x.safetensors")
    assert arch_as_wired(graph, node, base).text_encoders == ("clip_g", "t5xxl")
    graph, node = _injected(TRIPLE, "x.safetensors")
    assert arch_as_wired(graph, node, base).text_encoders == ("clip_l", "clip_g", "t5xxl")


def test_text_encoder_lora_on_the_dual_clip_chunk_is_refused(tmp_path: Path) -> None:
    _lora(tmp_path / "te.safetensors", te=True)
    graph, _ = _injected(DUAL, "te.safetensors")
    with pytest.raises(LoraFileError) as info:
        check_fits(graph, tmp_path, "sd3:2")
    text = str(info.value)
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in text
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj" in text
    # With all three encoders loaded, every key lands.
    graph, _ = _injected(TRIPLE, "te.safetensors")
    check_fits(graph, tmp_path, "sd3:2")


def test_stage4_checks_keys_against_the_configs_base_model(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    assert json.loads((schemas / "configs/output/sd35_large_yoruba.json").read_text())["meta"]["base_model"] == "sd35_large"
    loras = tmp_path / "loras"
    loras.mkdir()
    # An SDXL LoRA under the SD3.5 name: ComfyUI would skip all its keys, silently.
    _lora(loras / "yorubaheritage_sd35.safetensors", te=False, unet_prefix="lora_unet_input_blocks_4_1_proj_in")
    runner = Stage4Runner(schemas, "http://127.0.0.1:9", loras_dir=loras)
    with pytest.raises(LoraFileError, match="does not fit the model"):
        runner.prepare("sd35_large_yoruba", "a market")
    # An MMDiT LoRA fits: nothing is raised and the graph is ready to submit.
    _lora(loras / "mmdit.safetensors", te=False, width=2432)
    (loras / "yorubaheritage_sd35.safetensors").unlink()
    (loras / "mmdit.safetensors").rename(loras / "yorubaheritage_sd35.safetensors")
    graph, *_ = runner.prepare("sd35_large_yoruba", "a market")
    assert any(n["class_type"].startswith("LoraLoader") for n in graph.values())
