"""Latent and text-encoder caches: the VAE and text encoders run once, then leave memory before training.

Text conditioning follows SD3 as ComfyUI computes it at render time (where the LoRA will be used):
CLIP-L and CLIP-G penultimate hidden states side by side (768 + 1280), zero-padded to the joint width
(4096), followed by T5's tokens when a T5 is present; pooled = CLIP-L pooled + CLIP-G pooled, zeros for
a missing encoder. Without T5 the context is just the 77 CLIP tokens, as in ComfyUI.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import BackendError
from ...paths import publish_path
from ..dataset.manifest import DatasetManifest

CLIP_LENGTH = 77
T5_LENGTH = 77
CACHE_FILE = "native_cache.pt"


@dataclass
class TextEncoder:
    """One text encoder with its tokenizer; `kind` is clip_l, clip_g or t5xxl."""

    kind: str
    model: Any
    tokenizer: Any


@dataclass
class Caches:
    latents: torch.Tensor  # (N, C, h, w), already shifted and scaled
    latents_flipped: torch.Tensor | None
    context: torch.Tensor  # (N, T, joint_dim)
    pooled: torch.Tensor  # (N, pooled_dim)
    empty_context: torch.Tensor  # (1, T, joint_dim): the caption-dropout condition
    empty_pooled: torch.Tensor  # (1, pooled_dim)
    key: str

    def __len__(self) -> int:
        return int(self.latents.shape[0])


@torch.no_grad()
def encode_prompts(
    encoders: Sequence[TextEncoder], prompts: list[str], *, joint_dim: int, pooled_dim: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3 (context, pooled) for `prompts`, from whichever of CLIP-L, CLIP-G and T5 are given."""
    by_kind = {e.kind: e for e in encoders}
    n = len(prompts)
    clip_hidden: list[torch.Tensor] = []
    pooled_parts: list[torch.Tensor] = []
    for kind, default_width in (("clip_l", 768), ("clip_g", 1280)):
        enc = by_kind.get(kind)
        if enc is None:
            pooled_parts.append(torch.zeros(n, default_width))
            continue
        ids = enc.tokenizer(prompts, padding="max_length", max_length=CLIP_LENGTH, truncation=True, return_tensors="pt").input_ids
        out = enc.model(ids.to(device), output_hidden_states=True)
        clip_hidden.append(out.hidden_states[-2].float().cpu())
        pooled_parts.append(out.text_embeds.float().cpu())
    if clip_hidden:
        clip_ctx = torch.cat(clip_hidden, dim=-1)
    else:
        clip_ctx = torch.zeros(n, CLIP_LENGTH, 0)
    if clip_ctx.shape[-1] > joint_dim:
        raise BackendError(f"CLIP width {clip_ctx.shape[-1]} exceeds the model's joint width {joint_dim}", diagnosis="model_mismatch")
    clip_ctx = torch.nn.functional.pad(clip_ctx, (0, joint_dim - clip_ctx.shape[-1]))
    parts = [clip_ctx]
    t5 = by_kind.get("t5xxl")
    if t5 is not None:
        ids = t5.tokenizer(prompts, padding="max_length", max_length=T5_LENGTH, truncation=True, return_tensors="pt").input_ids
        parts.append(t5.model(ids.to(device)).last_hidden_state.float().cpu())
    pooled = torch.cat(pooled_parts, dim=-1)
    if pooled.shape[-1] < pooled_dim:
        pooled = torch.nn.functional.pad(pooled, (0, pooled_dim - pooled.shape[-1]))
    elif pooled.shape[-1] > pooled_dim:
        # A tiny model with a narrow pooled input: keep the leading features (CLIP-L's first, as ComfyUI orders them).
        pooled = pooled[:, :pooled_dim]
    return torch.cat(parts, dim=1), pooled


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB image scaled so the short side is `resolution`, centre-cropped square, as a (3, H, W) tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as opened:
        img = opened.convert("RGB")
        w, h = img.size
        scale = resolution / min(w, h)
        img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.Resampling.LANCZOS)
        w, h = img.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_latents(vae: Any, images: torch.Tensor, *, device: Any, batch: int = 4) -> torch.Tensor:
    """VAE posterior means, shifted and scaled as SD3 expects (the mean: deterministic and cache-friendly)."""
    cfg = vae.config
    shift = getattr(cfg, "shift_factor", None) or 0.0  # a VAE config varies: SD3's has it, SD1.5/SDXL's do not
    scale = cfg.scaling_factor
    dtype = next(vae.parameters()).dtype
    out = []
    for i in range(0, images.shape[0], batch):
        chunk = images[i : i + batch].to(device=device, dtype=dtype)
        mean = vae.encode(chunk).latent_dist.mean
        out.append(((mean.float() - shift) * scale).cpu())
    return torch.cat(out)


def cache_key(manifest: DatasetManifest, resolution: int, flip: bool, model_id: str) -> str:
    blob = json.dumps(
        {"images": [(i.sha256, i.caption) for i in manifest.images], "res": resolution, "flip": flip, "model": model_id},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def build_caches(
    manifest: DatasetManifest,
    dataset_dir: Path,
    *,
    resolution: int,
    flip: bool,
    load_vae: Callable[[], Any],
    load_text_encoders: Callable[[], list[TextEncoder]],
    joint_dim: int,
    pooled_dim: int,
    device: Any,
    key: str,
) -> Caches:
    """Encode every image and caption once; each model is loaded, used and released in turn."""
    images = torch.stack([load_image(dataset_dir / img.file, resolution) for img in manifest.images])
    vae = load_vae()
    latents = encode_latents(vae, images, device=device)
    flipped = encode_latents(vae, torch.flip(images, dims=[-1]), device=device) if flip else None
    del vae
    _release()
    encoders = load_text_encoders()
    captions = [img.caption for img in manifest.images]
    context, pooled = encode_prompts(encoders, captions + [""], joint_dim=joint_dim, pooled_dim=pooled_dim, device=device)
    del encoders
    _release()
    return Caches(latents, flipped, context[:-1], pooled[:-1], context[-1:], pooled[-1:], key)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_caches(caches: Caches, path: Path) -> None:
    """Atomic: a crash mid-write leaves the old cache or none, never a torn one."""
    publish_path(path, lambda tmp: torch.save(caches.__dict__, tmp), overwrite=True)


def load_caches(path: Path, key: str) -> Caches | None:
    """The cache at `path` if it was built from the same images, captions, resolution and model; else None."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return Caches(**data)
