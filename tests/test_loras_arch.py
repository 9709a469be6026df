"""The generated weight names agree with real model architectures (diffusers classes, built on the meta device).

Each diffusers weight must map, through the same diffusers -> ComfyUI correspondence ComfyUI uses,
onto a weight our generator lists, and every listed weight must be reached: so a LoRA trained on
either naming is judged against the real layer set, not a guess. No weights are loaded.
"""

from __future__ import annotations

import os

import pytest

from devserver_lora.lora.keys import (
    _UNETS,
    ARCHS,
    ArchSpec,
    _flux_to_diffusers,
    _mmdit_to_diffusers,
    _unet_to_diffusers,
    model_weights,
)

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _weights(model) -> list[str]:
    return [k for k in model.state_dict() if k.endswith(".weight")]


UNET_CONFIGS = {
    "sd15": dict(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_unet_weights_match_diffusers(name: str) -> None:
    with torch.device("meta"):
        model = diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **UNET_CONFIGS[name])
    mapping = _unet_to_diffusers(_UNETS[name])
    ours = set(model_weights(ARCHS[name]))
    reached = set()
    for key in _weights(model):
        target = f"diffusion_model.{mapping[key[: -len('.weight')]]}.weight"
        assert target in ours, (key, target)
        reached.add(target)
    assert reached == ours


def _mapped(mapping: dict, key: str) -> str | None:
    stem = key[: -len(".weight")]
    target = mapping.get(stem)
    if target is None:
        return None
    return target if isinstance(target, str) else target[0]


def test_sd35_medium_style_mmdit_matches_diffusers() -> None:
    arch = ArchSpec.sd3(2, attn2_blocks=(0,))
    with torch.device("meta"):
        model = diffusers.SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64, num_attention_heads=2,
            joint_attention_dim=4096, caption_projection_dim=128, pooled_projection_dim=2048, out_channels=16,
            pos_embed_max_size=32, qk_norm="rms_norm", dual_attention_layers=(0,),
        )
    mapping = _mmdit_to_diffusers(arch)
    ours = set(model_weights(arch))
    reached = set()
    for key in _weights(model):
        target = _mapped(mapping, key)
        assert target is not None, key
        assert target in ours, (key, target)
        reached.add(target)
    # ComfyUI keeps the learned positional table as a parameter named without ".weight".
    assert reached | {"diffusion_model.pos_embed"} == ours


def test_flux_matches_diffusers() -> None:
    arch = ArchSpec(name="flux_tiny", family="flux", depth=2, single_depth=3, hidden_size=128, guidance=True,
                    text_encoders=("clip_l", "t5xxl"))
    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=3, attention_head_dim=64,
            num_attention_heads=2, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        )
    mapping = _flux_to_diffusers(arch)
    ours = set(model_weights(arch))
    reached = set()
    for key in _weights(model):
        target = _mapped(mapping, key)
        assert target is not None, key
        assert target in ours, (key, target)  # q/k norms land on ComfyUI's "...query_norm.scale"
        reached.add(target)
    assert reached == ours
