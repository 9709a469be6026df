"""The tiny SD3 checkpoint: layout ComfyUI detects, initialisation that renders something, key match with ComfyUI."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from devserver_lora.testing import tiny_sd3 as t

DUMP_SCRIPT = r"""
import json, sys
sys.argv = ["x", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch, comfy.ops, comfy.sd1_clip
from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
from comfy.ldm.models.autoencoder import AutoencodingEngine
c = json.loads(sys.stdin.read())
ops = comfy.ops.disable_weight_init
out = {}
with torch.device("meta"):
    m = MMDiT(patch_size=c["patch"], in_channels=c["in_ch"], depth=c["depth"], adm_in_channels=c["adm"],
              out_channels=c["in_ch"], context_embedder_config={"target": "torch.nn.Linear",
              "params": {"in_features": c["ctx"], "out_features": c["hidden"]}},
              pos_embed_max_size=c["pos"], num_patches=c["pos"] ** 2, qk_norm="rms", operations=ops)
    out.update({"model.diffusion_model." + k: list(v.shape) for k, v in m.state_dict().items()})
    dd = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
          "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    v = AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": dd},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": dd})
    out.update({"first_stage_model." + k: list(x.shape) for k, x in v.state_dict().items()})
    clip = comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float16)
    out.update({"text_encoders.clip_l." + k: list(x.shape) for k, x in clip.state_dict().items()})
print(json.dumps(out))
"""


def test_layout_is_what_comfyui_detects_as_tiny_sd3() -> None:
    shapes = t.checkpoint_shapes()
    assert len(shapes) == 501
    d = "model.diffusion_model."
    # comfy/model_detection.py: depth = x_embedder out // 64; qk-norm from ln_q; patches from pos_embed.
    assert shapes[d + "x_embedder.proj.weight"] == (128, 16, 2, 2)
    assert shapes[d + "joint_blocks.0.context_block.attn.qkv.weight"] == (384, 128)
    assert shapes[d + "joint_blocks.0.context_block.attn.ln_q.weight"] == (64,)
    assert shapes[d + "pos_embed"] == (1, 1024, 128)
    assert shapes[d + "y_embedder.mlp.0.weight"] == (128, 2048)
    assert shapes[d + "context_embedder.weight"] == (128, 4096)
    # The last block's context side is pre_only: no proj, no mlp (LoRA keys there are "NOT LOADED").
    assert d + "joint_blocks.1.context_block.attn.proj.weight" not in shapes
    assert d + "joint_blocks.1.context_block.mlp.fc1.weight" not in shapes
    assert "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight" in shapes
    assert "first_stage_model.decoder.conv_in.weight" in shapes


def test_initialisation_rules() -> None:
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(t._init("x.attn.ln_q.weight", (64,), gen), torch.ones(64))
    assert torch.equal(t._init("enc.norm1.bias", (8,), gen), torch.zeros(8))
    assert torch.equal(t._init("a.transformer.text_projection.weight", (4, 4), gen), torch.eye(4))
    w = t._init("joint_blocks.0.x_block.attn.qkv.weight", (384, 128), gen)
    assert 0.05 < float(w.std()) < 0.15  # 1/sqrt(128) ~ 0.088: informative, not flat
    a = t._init("q.weight", (3, 3), torch.Generator().manual_seed(1))
    b = t._init("q.weight", (3, 3), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.mark.comfyui
@pytest.mark.slow
def test_keys_and_shapes_match_comfyuis_own_modules() -> None:
    from comfyui_harness import require_install
    from comfyui_setup import comfy_main, venv_python

    install = require_install()
    cfg = {
        "patch": t.MMDIT_PATCH,
        "in_ch": t.MMDIT_IN_CHANNELS,
        "depth": t.MMDIT_DEPTH,
        "adm": t.MMDIT_ADM_IN,
        "ctx": t.MMDIT_CONTEXT_IN,
        "hidden": t.MMDIT_HIDDEN,
        "pos": t.MMDIT_POS_EMBED_MAX,
    }
    comfy_dir = comfy_main(install).parent
    proc = subprocess.run(
        [str(venv_python(install)), "-c", DUMP_SCRIPT],
        input=json.dumps(cfg),
        capture_output=True,
        text=True,
        cwd=comfy_dir,
        env={"PYTHONPATH": str(comfy_dir), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    assert t.checkpoint_shapes() == expected
