"""LoRA export: peft (diffusers names) -> kohya MMDiT keys with exact q/k/v fusion, checked against diffusers'
own SAI -> diffusers converter and against ComfyUI's key mapping (devserver_lora.lora.fit.predict_not_loaded)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from devserver_lora.errors import BackendError
from devserver_lora.lora.fit import predict_not_loaded
from devserver_lora.lora.keys import ArchSpec
from devserver_lora.train.native import models
from devserver_lora.train.native.loop import lora_target_modules
from devserver_lora.train.native.lora_export import (
    LoraPair,
    diffusers_tensors,
    fuse_qkv,
    kohya_tensors,
    lora_metadata,
    mmdit_fit_problems,
    pairs_from_peft,
    save_lora,
    to_mmdit_pairs,
)
from devserver_lora.train.native.tiny import tiny_sai_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY_ARCH = ArchSpec.sd3(2, text_encoders=("clip_l",), name="tiny_sd3")


@pytest.fixture(scope="module")
def sai_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    return tiny_sai_checkpoint(tmp_path_factory.mktemp("tiny_sai"))


@pytest.fixture(scope="module")
def lora_model(sai_checkpoint):
    """The tiny MMDiT loaded through the SAI single-file path, with a LoRA whose up weights are non-zero."""
    from peft import LoraConfig

    src = models.ModelSource(checkpoint=sai_checkpoint, tiny_tokenizer=True)
    info = models.inspect_source(src)
    transformer = models.load_transformer(src, info, dtype=torch.float32)
    transformer.requires_grad_(False)
    targets = lora_target_modules(transformer)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=2.0, target_modules=targets))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return src, info, transformer, targets


def _peft_state(transformer):
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float() for k, v in get_peft_model_state_dict(transformer).items()}


def test_fused_qkv_delta_equals_the_three_deltas_stacked() -> None:
    g = torch.Generator().manual_seed(1)
    parts = {s: LoraPair(torch.randn(4, 32, generator=g), torch.randn(16, 4, generator=g), 2.0) for s in range(3)}
    fused = fuse_qkv(parts, 16)
    assert fused.rank == 12 and fused.alpha == 6.0  # alpha / rank preserved
    stacked = torch.cat([parts[s].delta() for s in range(3)], dim=0)
    assert torch.allclose(fused.delta(), stacked, atol=1e-5)
    # Uneven ranks/alphas and a missing slot still fuse exactly (scales folded into the ups).
    odd = {0: LoraPair(torch.randn(2, 32, generator=g), torch.randn(16, 2, generator=g), 8.0),
           2: LoraPair(torch.randn(5, 32, generator=g), torch.randn(16, 5, generator=g), 1.0)}
    fused = fuse_qkv(odd, 16)
    want = torch.cat([odd[0].delta(), torch.zeros(16, 32), odd[2].delta()], dim=0)
    assert torch.allclose(fused.delta(), want, atol=1e-5)


def test_targets_skip_the_pre_only_context_side_of_the_last_block(lora_model) -> None:
    _, _, transformer, targets = lora_model
    last = len(transformer.transformer_blocks) - 1
    assert f"transformer_blocks.{last}.attn.add_q_proj" in targets
    for bad in ("norm1_context.linear", "attn.to_add_out", "ff_context.net.0.proj", "ff_context.net.2"):
        assert f"transformer_blocks.{last}.{bad}" not in targets
    assert "transformer_blocks.0.ff_context.net.2" in targets
    with pytest.raises(BackendError, match="pre_only"):
        to_mmdit_pairs({f"transformer_blocks.{last}.ff_context.net.2": LoraPair(torch.zeros(1, 2), torch.zeros(2, 1), 1.0)}, last + 1)


def test_kohya_lora_applied_to_sai_weights_equals_the_peft_lora_on_diffusers_weights(lora_model, sai_checkpoint) -> None:
    """The real check of mapping AND fusion: patch the SAI weights the way ComfyUI does
    (W += alpha/rank * up @ down), convert with diffusers' own converter, compare with peft's delta."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    src, info, transformer, _ = lora_model
    pairs = pairs_from_peft(_peft_state(transformer), 2.0)
    tensors = kohya_tensors(to_mmdit_pairs(pairs, 2), torch.float32)
    assert mmdit_fit_problems(tensors, info.mmdit_shapes) == []
    sai = models.load_tensors(sai_checkpoint, models.MMDIT_PREFIX, dtype=torch.float32)
    patched = dict(sai)
    for key in {k.split(".", 1)[0] for k in tensors}:
        down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
        alpha = float(tensors[f"{key}.alpha"])
        weight = key[len("lora_unet_"):]
        match = [k for k in sai if k.endswith(".weight") and k[: -len(".weight")].replace(".", "_") == weight]
        assert len(match) == 1, key
        patched[match[0]] = sai[match[0]] + (alpha / down.shape[0]) * (up @ down)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(patched)
    base = {k: v for k, v in transformer.state_dict().items() if "lora_" not in k}
    compared = 0
    for name, pair in pairs.items():
        key = f"{name}.base_layer.weight"
        expected = base[key] + pair.delta()
        got = converted[f"{name}.weight"]
        assert torch.allclose(got, expected, atol=1e-5), name
        compared += 1
    assert compared == len(pairs) > 20
    # Layers without a LoRA are untouched.
    assert torch.equal(converted["proj_out.weight"], base["proj_out.weight"])


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_saved_lora_loads_with_zero_comfyui_warnings(lora_model, tmp_path, fmt: str) -> None:
    _, _, transformer, _ = lora_model
    pairs = pairs_from_peft(_peft_state(transformer), 2.0)
    tensors = kohya_tensors(to_mmdit_pairs(pairs, 2), torch.float16) if fmt == "kohya" else diffusers_tensors(pairs, torch.float16)
    meta = lora_metadata(
        output_name="magenta", arch="sd35_medium", rank=4, alpha=2.0, resolution=256, steps=10, epochs=1,
        trigger_words=["mgsq"], card={"title": "Magenta squares"}, card_metadata={"devserver_lora.card.title": "Magenta squares"},
    )
    path = save_lora(tensors, meta, tmp_path / "magenta.safetensors")
    assert predict_not_loaded(path, TINY_ARCH) == []
    # Every module carries an explicit alpha (ComfyUI would use 1.0 without it).
    with safe_open(str(path), "pt") as fh:
        keys = list(fh.keys())
        stored = fh.metadata()
    down_suffix = ".lora_down.weight" if fmt == "kohya" else ".lora_A.weight"
    modules = {k[: -len(down_suffix)] for k in keys if k.endswith(down_suffix)}
    assert modules and all(f"{m}.alpha" in keys for m in modules)
    assert json.loads(stored["devserver_lora.trigger_words"]) == ["mgsq"]
    assert json.loads(stored["devserver_lora.card"])["title"] == "Magenta squares"
    assert stored["ss_network_module"] == "networks.lora_sd3"
    assert stored["modelspec.architecture"] == "stable-diffusion-3-5-medium/lora"
    # A second save never overwrites the first.
    again = save_lora(tensors, meta, tmp_path / "magenta.safetensors")
    assert again != path and path.is_file()


def test_check_against_mmdit_reports_unknown_and_misshaped_layers() -> None:
    shapes = {"joint_blocks.0.x_block.attn.qkv.weight": (384, 128)}
    good = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(4, 128),
            "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(384, 4)}
    assert mmdit_fit_problems(good, shapes) == []
    bad = {**good, "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(128, 4),
           "lora_unet_joint_blocks_9_x_block_mlp_fc1.lora_down.weight": torch.zeros(4, 128)}
    codes = sorted(p.code for p in mmdit_fit_problems(bad, shapes))
    assert codes == ["lora_key_not_loaded", "lora_shape_mismatch"]
