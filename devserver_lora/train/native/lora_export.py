"""Turn a peft LoRA on diffusers' SD3 transformer into a LoRA file ComfyUI loads with zero warnings.

Two layouts:
- "kohya" (default): `lora_unet_joint_blocks_{i}_{x|context}_block_{...}` with `.lora_down/.lora_up/.alpha`,
  the layout sd-scripts writes. The MMDiT fuses q, k and v into one `qkv` Linear, while diffusers keeps
  three; the three LoRAs are fused exactly: down = concat of the downs (rank 3r), up = block-diagonal of
  the ups, alpha tripled so alpha/rank (ComfyUI's scale) is unchanged.
- "diffusers": `transformer.transformer_blocks.{i}...lora_A/lora_B` plus an explicit `.alpha`, because
  ComfyUI uses factor 1.0 when `.alpha` is missing (a LoRA trained with alpha != rank would be applied at
  the wrong strength).
Keys on the last block's context side are refused: that side is `pre_only` in the MMDiT, and ComfyUI logs
them as NOT LOADED.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from ...errors import BackendError, Problem
from ...paths import publish_path

ExportFormat = Literal["kohya", "diffusers"]

# diffusers module path inside transformer_blocks.{i} -> (MMDiT module path inside joint_blocks.{i}, qkv slot)
_DIFFUSERS_TO_MMDIT: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("x_block.attn.qkv", 0),
    "attn.to_k": ("x_block.attn.qkv", 1),
    "attn.to_v": ("x_block.attn.qkv", 2),
    "attn.to_out.0": ("x_block.attn.proj", None),
    "attn.add_q_proj": ("context_block.attn.qkv", 0),
    "attn.add_k_proj": ("context_block.attn.qkv", 1),
    "attn.add_v_proj": ("context_block.attn.qkv", 2),
    "attn.to_add_out": ("context_block.attn.proj", None),
    "attn2.to_q": ("x_block.attn2.qkv", 0),
    "attn2.to_k": ("x_block.attn2.qkv", 1),
    "attn2.to_v": ("x_block.attn2.qkv", 2),
    "attn2.to_out.0": ("x_block.attn2.proj", None),
    "ff.net.0.proj": ("x_block.mlp.fc1", None),
    "ff.net.2": ("x_block.mlp.fc2", None),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", None),
    "ff_context.net.2": ("context_block.mlp.fc2", None),
    "norm1.linear": ("x_block.adaLN_modulation.1", None),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", None),
}

# Module names (relative to a transformer block) that training may target; what the family has decides the rest.
TRAINABLE_MODULES: tuple[str, ...] = tuple(_DIFFUSERS_TO_MMDIT)

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?transformer_blocks\.(\d+)\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoraPair:
    """One trained low-rank pair: delta W = (alpha / rank) * up @ down."""

    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        return (self.alpha / self.rank) * (self.up.float() @ self.down.float())


def pairs_from_peft(state: Mapping[str, torch.Tensor], alpha: float | Mapping[str, float]) -> dict[str, LoraPair]:
    """Group a peft state dict (`get_peft_model_state_dict`) into pairs keyed `transformer_blocks.{i}.<module>`."""
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise BackendError(
                f"unexpected LoRA key {key!r} in the trained adapter",
                hint="only transformer_blocks.* Linear layers can be exported for SD3",
                diagnosis="export_unknown_key",
            )
        name = f"transformer_blocks.{m.group(1)}.{m.group(2)}"
        (downs if m.group(3) == "A" else ups)[name] = tensor.detach()
    if set(downs) != set(ups):
        raise BackendError(
            f"trained adapter is incomplete: lora_A/lora_B mismatch for {sorted(set(downs) ^ set(ups))[:3]}",
            diagnosis="export_incomplete",
        )
    return {
        name: LoraPair(downs[name], ups[name], float(alpha if not isinstance(alpha, Mapping) else alpha[name]))
        for name in sorted(downs)
    }


def _split(name: str) -> tuple[int, str]:
    _, block, module = name.split(".", 2)
    return int(block), module


def fuse_qkv(parts: dict[int, LoraPair], out_per_slot: int) -> LoraPair:
    """Fuse the q/k/v pairs (slots 0..2; missing slots contribute nothing) into one pair for the fused qkv Linear.

    The result's delta equals the three deltas stacked along the output dimension.
    """
    slots = sorted(parts)
    same = len({(parts[s].rank, parts[s].alpha) for s in slots}) == 1
    downs, ups = [], []
    for s in slots:
        p = parts[s]
        up = p.up.float()
        if not same:
            # Ranks or alphas differ: fold each scale into its up so a single alpha == rank is exact.
            up = up * (p.alpha / p.rank)
        downs.append(p.down.float())
        ups.append(up)
    rank = sum(d.shape[0] for d in downs)
    down = torch.cat(downs, dim=0)
    up = torch.zeros(3 * out_per_slot, rank, dtype=torch.float32)
    col = 0
    for s, u in zip(slots, ups, strict=True):
        up[s * out_per_slot : (s + 1) * out_per_slot, col : col + u.shape[1]] = u
        col += u.shape[1]
    alpha = parts[slots[0]].alpha * len(slots) if same else float(rank)
    return LoraPair(down, up, alpha)


def to_mmdit_pairs(pairs: Mapping[str, LoraPair], depth: int) -> dict[str, LoraPair]:
    """Map diffusers-named pairs to MMDiT module paths (`joint_blocks.{i}.x_block.attn.qkv`), fusing q/k/v."""
    out: dict[str, LoraPair] = {}
    qkv: dict[str, dict[int, LoraPair]] = {}
    for name, pair in pairs.items():
        block, module = _split(name)
        if module not in _DIFFUSERS_TO_MMDIT:
            raise BackendError(
                f"cannot map trained layer {name!r} to the SD3 checkpoint layout",
                hint=f"train only these layers: {', '.join(TRAINABLE_MODULES)}",
                diagnosis="export_unmapped",
            )
        target, slot = _DIFFUSERS_TO_MMDIT[module]
        if block == depth - 1 and target.startswith("context_block") and not target.endswith("attn.qkv"):
            raise BackendError(
                f"trained layer {name!r} is on the last block's context side, which is pre_only in SD3",
                hint="exclude it from training: ComfyUI would log it as NOT LOADED",
                diagnosis="export_pre_only",
            )
        full = f"joint_blocks.{block}.{target}"
        if slot is None:
            out[full] = LoraPair(pair.down.float(), pair.up.float(), pair.alpha)
        else:
            qkv.setdefault(full, {})[slot] = pair
    for full, parts in qkv.items():
        out_per_slot = int(next(iter(parts.values())).up.shape[0])
        out[full] = fuse_qkv(parts, out_per_slot)
    return dict(sorted(out.items()))


def kohya_tensors(mmdit: Mapping[str, LoraPair], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The sd-scripts key layout ComfyUI maps via `lora_unet_<path with dots as underscores>`."""
    tensors: dict[str, torch.Tensor] = {}
    for path, pair in mmdit.items():
        base = "lora_unet_" + path.replace(".", "_")
        tensors[f"{base}.lora_down.weight"] = pair.down.to(dtype).contiguous()
        tensors[f"{base}.lora_up.weight"] = pair.up.to(dtype).contiguous()
        tensors[f"{base}.alpha"] = torch.tensor(pair.alpha, dtype=dtype)
    return tensors


def diffusers_tensors(pairs: Mapping[str, LoraPair], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """diffusers layout with `.alpha` written so ComfyUI scales by alpha/rank."""
    tensors: dict[str, torch.Tensor] = {}
    for name, pair in pairs.items():
        base = f"transformer.{name}"
        tensors[f"{base}.lora_A.weight"] = pair.down.to(dtype).contiguous()
        tensors[f"{base}.lora_B.weight"] = pair.up.to(dtype).contiguous()
        tensors[f"{base}.alpha"] = torch.tensor(pair.alpha, dtype=dtype)
    return tensors


def mmdit_fit_problems(tensors: Mapping[str, torch.Tensor], mmdit_shapes: Mapping[str, tuple[int, ...]]) -> list[Problem]:
    """Every kohya module must name a 2-D weight of the checkpoint with matching (out, in); as ComfyUI maps them.

    `mmdit_shapes` holds MMDiT keys without prefix (`joint_blocks.0.x_block.attn.qkv.weight` -> shape).
    """
    targets = {
        "lora_unet_" + k[: -len(".weight")].replace(".", "_"): tuple(shape)
        for k, shape in mmdit_shapes.items()
        if k.endswith(".weight") and len(shape) == 2
    }
    problems: list[Problem] = []
    modules = sorted({k.split(".", 1)[0] for k in tensors})
    for module in modules:
        shape = targets.get(module)
        if shape is None:
            problems.append(
                Problem(f"lora key not loaded: {module}", code="lora_key_not_loaded", hint="no such layer in the model")
            )
            continue
        down, up = tensors.get(f"{module}.lora_down.weight"), tensors.get(f"{module}.lora_up.weight")
        if down is None or up is None:
            problems.append(Problem(f"{module} lacks lora_down or lora_up", code="lora_incomplete"))
        elif (int(up.shape[0]), int(down.shape[1])) != shape:
            problems.append(
                Problem(
                    f"{module}: LoRA shape {(int(up.shape[0]), int(down.shape[1]))} does not fit layer {shape}",
                    code="lora_shape_mismatch",
                )
            )
    return problems


def lora_metadata(
    *,
    output_name: str,
    arch: str,
    rank: int,
    alpha: float,
    resolution: int,
    steps: int,
    epochs: int | None,
    trigger_words: list[str],
    card: Mapping[str, object] | None,
    card_metadata: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> dict[str, str]:
    """String metadata in the `ss_*` / `modelspec.*` conventions, plus the dataset card and trigger words.

    `arch` is what was trained (`lora.fit.arch_name`: "sd35_large", or "sd3:2:te=clip_l" for a test-sized model),
    so `inspect-lora --against` and `install` judge the LoRA against the model it was made for.
    """
    modelspec_arch = {"sd35_large": "stable-diffusion-3-5-large", "sd35_medium": "stable-diffusion-3-5-medium"}.get(
        arch, "stable-diffusion-3"
    )
    meta: dict[str, str] = {
        "ss_network_module": "networks.lora_sd3",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_base_model_version": arch,
        "devserver_lora.arch": arch,
        "ss_output_name": output_name,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_steps": str(steps),
        "ss_epoch": str(epochs if epochs is not None else 0),
        "ss_training_finished_at": str(time.time()),
        "ss_trainer": "devserver-lora native (diffusers + peft)",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{modelspec_arch}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": output_name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "flow",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "devserver_lora.trigger_words": json.dumps(trigger_words, ensure_ascii=False),
    }
    if trigger_words:
        meta["modelspec.trigger_phrase"] = ", ".join(trigger_words)
    if card is not None:
        meta["devserver_lora.card"] = json.dumps(card, ensure_ascii=False, sort_keys=True, default=str)
        title = card.get("title")
        if isinstance(title, str):
            meta["modelspec.description"] = title
    if card_metadata:
        meta.update({str(k): str(v) for k, v in card_metadata.items()})
    for k, v in (extra or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v, default=str)
    return meta


def save_lora(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], dest: str | os.PathLike[str]) -> Path:
    """Write the LoRA next to `dest` under a free name (a trained file is never overwritten); returns the path."""
    return publish_path(dest, lambda tmp: save_file(dict(tensors), str(tmp), metadata=dict(metadata)))
