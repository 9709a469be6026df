"""A tiny random SD3 checkpoint that ComfyUI (v0.3.75) loads and detects as SD3, for tests without real weights.

Layout (the key names and shapes are those ComfyUI's own modules expect: `comfy/ldm/modules/diffusionmodules/
mmdit.py` MMDiT, `comfy/ldm/modules/diffusionmodules/model.py` Encoder/Decoder, `comfy/sd1_clip.py` CLIP-L;
`comfy/model_detection.py` reads depth from `x_embedder.proj.weight`, qk-norm from `ln_q`, patches from `pos_embed`):

    model.diffusion_model.*          depth-2 MMDiT (the constants below)
    first_stage_model.*              the SD3 VAE (z 16, ch 128, ch_mult 1,2,4,4, 2 res blocks): size fixed by ComfyUI
    text_encoders.clip_l.transformer.*  full-size CLIP-L text model (ComfyUI's sd1 config): size fixed too

Initialisation matters: all-random weights render a flat grey image, which would hide whether a LoRA changed
anything. So every norm has weight 1 / bias 0, the q/k RMS norms are 1, CLIP's text_projection is the identity,
and linear layers are small random normals (seeded, so the same seed writes the same file).

Another engineer's native trainer trains LoRAs on this same MMDiT: keep the constants in sync with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

from ..paths import publish_path

# --- the tiny MMDiT (ComfyUI derives hidden = 64 * depth and heads = depth) ---
MMDIT_DEPTH = 2
MMDIT_HIDDEN = 64 * MMDIT_DEPTH  # 128
MMDIT_HEADS = MMDIT_DEPTH  # 2 (head size 64)
MMDIT_PATCH = 2
MMDIT_IN_CHANNELS = 16
MMDIT_POS_EMBED_MAX = 32  # pos_embed holds 32 x 32 = 1024 positions
MMDIT_NUM_PATCHES = MMDIT_POS_EMBED_MAX**2
MMDIT_ADM_IN = 2048  # y_embedder input (pooled CLIP-L 768 + CLIP-G 1280)
MMDIT_CONTEXT_IN = 4096  # context_embedder input (T5-XXL width)
MMDIT_MLP_RATIO = 4
MMDIT_QK_NORM = "rms"  # SD3.5 style ln_q / ln_k
MMDIT_FREQ_DIM = 256  # timestep embedder's sinusoidal width

# --- the SD3 VAE ---
VAE_Z = 16
VAE_CH = 128
VAE_CH_MULT = (1, 2, 4, 4)
VAE_RES_BLOCKS = 2

# --- CLIP-L (comfy/sd1_clip_config.json) ---
CLIP_L_WIDTH = 768
CLIP_L_LAYERS = 12
CLIP_L_MLP = 3072
CLIP_L_VOCAB = 49408
CLIP_L_POSITIONS = 77

DEFAULT_NAME = "tiny_sd3_random.safetensors"

Shape = tuple[int, ...]


def _linear(prefix: str, out_f: int, in_f: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (out_f, in_f)
    yield f"{prefix}.bias", (out_f,)


def mmdit_shapes() -> Iterator[tuple[str, Shape]]:
    """Keys (without `model.diffusion_model.`) and shapes of the tiny MMDiT."""
    h = MMDIT_HIDDEN
    yield "pos_embed", (1, MMDIT_NUM_PATCHES, h)
    yield "x_embedder.proj.weight", (h, MMDIT_IN_CHANNELS, MMDIT_PATCH, MMDIT_PATCH)
    yield "x_embedder.proj.bias", (h,)
    yield from _linear("t_embedder.mlp.0", h, MMDIT_FREQ_DIM)
    yield from _linear("t_embedder.mlp.2", h, h)
    yield from _linear("y_embedder.mlp.0", h, MMDIT_ADM_IN)
    yield from _linear("y_embedder.mlp.2", h, h)
    yield from _linear("context_embedder", h, MMDIT_CONTEXT_IN)
    head = h // MMDIT_HEADS
    for i in range(MMDIT_DEPTH):
        last = i == MMDIT_DEPTH - 1
        for side in ("context_block", "x_block"):
            # The last block's context side is `pre_only`: no attn proj, no mlp, 2 modulations instead of 6.
            pre_only = last and side == "context_block"
            p = f"joint_blocks.{i}.{side}"
            yield from _linear(f"{p}.attn.qkv", 3 * h, h)
            if not pre_only:
                yield from _linear(f"{p}.attn.proj", h, h)
            yield f"{p}.attn.ln_q.weight", (head,)
            yield f"{p}.attn.ln_k.weight", (head,)
            if not pre_only:
                yield from _linear(f"{p}.mlp.fc1", MMDIT_MLP_RATIO * h, h)
                yield from _linear(f"{p}.mlp.fc2", h, MMDIT_MLP_RATIO * h)
            yield from _linear(f"{p}.adaLN_modulation.1", (2 if pre_only else 6) * h, h)
    yield from _linear("final_layer.linear", MMDIT_PATCH * MMDIT_PATCH * MMDIT_IN_CHANNELS, h)
    yield from _linear("final_layer.adaLN_modulation.1", 2 * h, h)


def _conv(prefix: str, out_c: int, in_c: int, k: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (out_c, in_c, k, k)
    yield f"{prefix}.bias", (out_c,)


def _norm(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (c,)
    yield f"{prefix}.bias", (c,)


def _resnet(prefix: str, c_in: int, c_out: int) -> Iterator[tuple[str, Shape]]:
    yield from _norm(f"{prefix}.norm1", c_in)
    yield from _conv(f"{prefix}.conv1", c_out, c_in, 3)
    yield from _norm(f"{prefix}.norm2", c_out)
    yield from _conv(f"{prefix}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        yield from _conv(f"{prefix}.nin_shortcut", c_out, c_in, 1)


def _mid(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    yield from _resnet(f"{prefix}.mid.block_1", c, c)
    yield from _norm(f"{prefix}.mid.attn_1.norm", c)
    for name in ("q", "k", "v", "proj_out"):
        yield from _conv(f"{prefix}.mid.attn_1.{name}", c, c, 1)
    yield from _resnet(f"{prefix}.mid.block_2", c, c)


def vae_shapes() -> Iterator[tuple[str, Shape]]:
    """Keys (without `first_stage_model.`) and shapes of the SD3 VAE (no quant convs, as SD3 ships it)."""
    levels = len(VAE_CH_MULT)
    yield from _conv("encoder.conv_in", VAE_CH, 3, 3)
    c_in = VAE_CH
    for lvl, mult in enumerate(VAE_CH_MULT):
        c_out = VAE_CH * mult
        for b in range(VAE_RES_BLOCKS):
            yield from _resnet(f"encoder.down.{lvl}.block.{b}", c_in, c_out)
            c_in = c_out
        if lvl != levels - 1:
            yield from _conv(f"encoder.down.{lvl}.downsample.conv", c_in, c_in, 3)
    yield from _mid("encoder", c_in)
    yield from _norm("encoder.norm_out", c_in)
    yield from _conv("encoder.conv_out", 2 * VAE_Z, c_in, 3)

    c_in = VAE_CH * VAE_CH_MULT[-1]
    yield from _conv("decoder.conv_in", c_in, VAE_Z, 3)
    yield from _mid("decoder", c_in)
    for lvl in reversed(range(levels)):
        c_out = VAE_CH * VAE_CH_MULT[lvl]
        for b in range(VAE_RES_BLOCKS + 1):
            yield from _resnet(f"decoder.up.{lvl}.block.{b}", c_in, c_out)
            c_in = c_out
        if lvl != 0:
            yield from _conv(f"decoder.up.{lvl}.upsample.conv", c_in, c_in, 3)
    yield from _norm("decoder.norm_out", c_in)
    yield from _conv("decoder.conv_out", 3, c_in, 3)


def clip_l_shapes() -> Iterator[tuple[str, Shape]]:
    """Keys (without `text_encoders.clip_l.`) and shapes of ComfyUI's CLIP-L text model."""
    w = CLIP_L_WIDTH
    yield "logit_scale", ()
    t = "transformer.text_model"
    yield f"{t}.embeddings.token_embedding.weight", (CLIP_L_VOCAB, w)
    yield f"{t}.embeddings.position_embedding.weight", (CLIP_L_POSITIONS, w)
    for i in range(CLIP_L_LAYERS):
        p = f"{t}.encoder.layers.{i}"
        yield from _norm(f"{p}.layer_norm1", w)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield from _linear(f"{p}.self_attn.{proj}", w, w)
        yield from _norm(f"{p}.layer_norm2", w)
        yield from _linear(f"{p}.mlp.fc1", CLIP_L_MLP, w)
        yield from _linear(f"{p}.mlp.fc2", w, CLIP_L_MLP)
    yield from _norm(f"{t}.final_layer_norm", w)
    yield "transformer.text_projection.weight", (w, w)


PREFIXES = {
    "model.diffusion_model.": mmdit_shapes,
    "first_stage_model.": vae_shapes,
    "text_encoders.clip_l.": clip_l_shapes,
}


def checkpoint_shapes() -> dict[str, Shape]:
    """Every key of the checkpoint with its shape (501 tensors)."""
    out: dict[str, Shape] = {}
    for prefix, fn in PREFIXES.items():
        for key, shape in fn():
            out[prefix + key] = shape
    return out


def _is_norm(key: str) -> bool:
    return any(part in key for part in (".norm", "layer_norm", "norm_out", ".ln_q.", ".ln_k."))


def _init(key: str, shape: Shape, gen):  # noqa: ANN001, ANN202 - torch is imported lazily
    import torch

    if key.endswith("logit_scale"):
        return torch.tensor(math.log(1 / 0.07))
    if key.endswith("text_projection.weight"):
        return torch.eye(shape[0])
    if _is_norm(key):
        return torch.ones(shape) if key.endswith(".weight") else torch.zeros(shape)
    if key.endswith(".bias"):
        return torch.zeros(shape)
    if "embedding" in key or key.endswith("pos_embed"):
        return torch.randn(shape, generator=gen) * 0.02
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) * (1.0 / math.sqrt(fan_in))


def write_tiny_sd3_checkpoint(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the checkpoint (fp16, ~419 MB) to `path` atomically and return it. Same seed -> same tensors."""
    import torch
    from safetensors.torch import save_file

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        key: _init(key, shape, gen).to(torch.float16).contiguous() for key, shape in checkpoint_shapes().items()
    }
    metadata = {"format": "pt", "devserver_lora": f"tiny_sd3 seed={seed}"}
    return publish_path(dest, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite=True)
