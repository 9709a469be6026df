"""Small LoRA files for tests, written in code: zero weights shaped as ComfyUI's SD3 weights are.

`zero_lora(path)` fits SD3.5 Large as DevServer's chunk wires it (MMDiT hidden 2432 = 64 x 38; CLIP-G keys named
`lora_te_` as ComfyUI names them when no CLIP-L is loaded, DESIGN.md section 3). Zeros change nothing in an image;
these files are for injection, fit and metadata tests, not renders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

SD35_LARGE_WIDTH = 2432


def zero_lora(path: str | os.PathLike[str], *, width: int = SD35_LARGE_WIDTH, clip_g: bool = True,
              trigger_words: list[str] | None = None, arch: str | None = None) -> Path:
    """Write a kohya-style LoRA (rank 4) for joint block 0 (and CLIP-G layer 0); returns its path."""
    modules = {"lora_unet_joint_blocks_0_x_block_attn_qkv": (width, 3 * width)}
    if clip_g:
        modules["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] = (1280, 1280)
    tensors = {}
    for m, (fan_in, fan_out) in modules.items():
        tensors[f"{m}.lora_down.weight"] = np.zeros((4, fan_in), dtype=np.float16)
        tensors[f"{m}.lora_up.weight"] = np.zeros((fan_out, 4), dtype=np.float16)
        tensors[f"{m}.alpha"] = np.array(4.0, dtype=np.float16)
    metadata = {}
    if trigger_words is not None:
        metadata["devserver_lora.trigger_words"] = json.dumps(trigger_words)
    if arch is not None:
        metadata["devserver_lora.arch"] = arch
    out = Path(path)
    save_file(tensors, str(out), metadata=metadata or None)
    return out
