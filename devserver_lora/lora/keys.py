"""Which LoRA keys ComfyUI (v0.3.75) applies to which model, rebuilt from its mapping rules.

ComfyUI builds a map from every LoRA key spelling it accepts to a weight of the loaded model
(`comfy/lora.py` `model_lora_keys_unet` + `model_lora_keys_clip`, with `comfy/utils.py`
`mmdit_to_diffusers`, `unet_to_diffusers`, `flux_to_diffusers`), then consumes the file's keys by
those names. A file key nothing consumes is logged "lora key not loaded: <key>"; a consumed key
whose target weight the model does not have is logged "NOT LOADED <target>". Both happen silently
on the server, so we predict them here from the model's weight names, which follow from a few
architecture numbers (`ArchSpec`).

The weight names are generated from the model code's structure (depth, pre-only last block,
attn2 blocks, qk-norm; UNet levels and transformer depths; FLUX double/single blocks). Only
`.weight` parameters (and the few non-weight parameters LoRA formats name) are generated: biases
are not, so a `.diff_b` patch is judged by its layer's weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

__all__ = ["ArchSpec", "ARCHS", "comfy_key_map", "model_weights", "clip_weights", "Target", "target_text"]

Family = Literal["sd3", "sdxl", "sd15", "flux"]
TextEncoder = Literal["clip_l", "clip_g", "t5xxl"]
# A key-map target: a weight name, or (weight name, slice) for fused qkv weights as ComfyUI writes it.
Target = str | tuple


@dataclass(frozen=True)
class ArchSpec:
    """The numbers that decide a model's weight names, hence which LoRA keys load on it."""

    name: str
    family: Family
    depth: int = 0  # SD3: joint blocks; FLUX: double blocks
    attn2_blocks: tuple[int, ...] = ()  # SD3.5 Medium: blocks with a second x-attention
    qk_norm: bool = True  # SD3.5 has RMS q/k norms (ln_q/ln_k); SD3 Medium (v1) does not
    single_depth: int = 0  # FLUX single blocks
    hidden_size: int = 0  # FLUX (SD3 derives it: 64 x depth)
    guidance: bool = False  # FLUX dev has guidance_in
    text_encoders: tuple[TextEncoder, ...] = field(default=("clip_l",))

    @classmethod
    def sd3(
        cls,
        depth: int,
        *,
        attn2_blocks: Iterable[int] = (),
        qk_norm: bool = True,
        text_encoders: tuple[TextEncoder, ...] = ("clip_l", "clip_g", "t5xxl"),
        name: str | None = None,
    ) -> ArchSpec:
        """An SD3-family MMDiT: e.g. the recorded tiny model is `ArchSpec.sd3(2, text_encoders=("clip_l",))`."""
        return cls(
            name=name or f"sd3_depth{depth}",
            family="sd3",
            depth=depth,
            attn2_blocks=tuple(attn2_blocks),
            qk_norm=qk_norm,
            text_encoders=tuple(text_encoders),
        )

    @property
    def hidden(self) -> int:
        return 64 * self.depth if self.family == "sd3" else self.hidden_size


ARCHS: dict[str, ArchSpec] = {
    "sd35_large": ArchSpec.sd3(38, name="sd35_large"),
    # DevServer's output_image_sd35_large chunk: its encoders read a DualCLIPLoader with clip_g +
    # t5xxl, so ComfyUI's CLIP has no CLIP-L, and CLIP-G keys are then named lora_te_ (not te2_).
    "sd35_large_dualclip": ArchSpec.sd3(38, text_encoders=("clip_g", "t5xxl"), name="sd35_large_dualclip"),
    "sd35_medium": ArchSpec.sd3(24, attn2_blocks=range(13), name="sd35_medium"),
    "sd3_medium": ArchSpec.sd3(24, qk_norm=False, name="sd3_medium"),
    "sdxl": ArchSpec(name="sdxl", family="sdxl", text_encoders=("clip_l", "clip_g")),
    "sd15": ArchSpec(name="sd15", family="sd15", text_encoders=("clip_l",)),
    "flux_dev": ArchSpec(
        name="flux_dev", family="flux", depth=19, single_depth=38, hidden_size=3072, guidance=True,
        text_encoders=("clip_l", "t5xxl"),
    ),
    "flux_schnell": ArchSpec(
        name="flux_schnell", family="flux", depth=19, single_depth=38, hidden_size=3072, guidance=False,
        text_encoders=("clip_l", "t5xxl"),
    ),
}


def target_text(target: Target) -> str:
    """How ComfyUI prints a target in "NOT LOADED ..." (str() of the key or of the tuple)."""
    return target if isinstance(target, str) else str(target)


# ----------------------------------------------------------------------------- model weights
def _sd3_weights(a: ArchSpec) -> list[str]:
    w = ["x_embedder.proj.weight", "pos_embed", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight",
         "y_embedder.mlp.0.weight", "y_embedder.mlp.2.weight", "context_embedder.weight"]
    for i in range(a.depth):
        pre_only = i == a.depth - 1  # the last context block only feeds the x stream
        for side in ("context_block", "x_block"):
            p = f"joint_blocks.{i}.{side}"
            w.append(f"{p}.attn.qkv.weight")
            if a.qk_norm:
                w += [f"{p}.attn.ln_q.weight", f"{p}.attn.ln_k.weight"]
            if side == "x_block" or not pre_only:
                w.append(f"{p}.attn.proj.weight")
            if side == "x_block" and i in a.attn2_blocks:
                w.append(f"{p}.attn2.qkv.weight")
                if a.qk_norm:
                    w += [f"{p}.attn2.ln_q.weight", f"{p}.attn2.ln_k.weight"]
                w.append(f"{p}.attn2.proj.weight")
            if side == "x_block" or not pre_only:
                w += [f"{p}.mlp.fc1.weight", f"{p}.mlp.fc2.weight"]
            w.append(f"{p}.adaLN_modulation.1.weight")
    w += ["final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"]
    return w


_TRANSFORMER = ("norm1", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "norm2", "attn2.to_q",
                "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "norm3", "ff.net.0.proj", "ff.net.2")


@dataclass(frozen=True)
class _UNetConfig:
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    transformer_depth: tuple[int, ...]  # per input res block
    transformer_depth_middle: int
    transformer_depth_output: tuple[int, ...]  # per output res block, popped from the end
    adm: bool


_UNETS = {
    "sd15": _UNetConfig((1, 2, 4, 4), (2, 2, 2, 2), (1, 1, 1, 1, 1, 1, 0, 0), 1, (1,) * 9 + (0,) * 3, False),
    "sdxl": _UNetConfig((1, 2, 4), (2, 2, 2), (0, 0, 2, 2, 10, 10), 10, (0, 0, 0, 2, 2, 2, 10, 10, 10), True),
}


def _resblock(p: str, skip: bool) -> list[str]:
    w = [f"{p}.in_layers.0.weight", f"{p}.in_layers.2.weight", f"{p}.emb_layers.1.weight",
         f"{p}.out_layers.0.weight", f"{p}.out_layers.3.weight"]
    return w + ([f"{p}.skip_connection.weight"] if skip else [])


def _spatial(p: str, depth: int) -> list[str]:
    w = [f"{p}.norm.weight", f"{p}.proj_in.weight"]
    for t in range(depth):
        w += [f"{p}.transformer_blocks.{t}.{m}.weight" for m in _TRANSFORMER]
    return w + [f"{p}.proj_out.weight"]


def _unet_weights(c: _UNetConfig) -> list[str]:
    w = ["time_embed.0.weight", "time_embed.2.weight"]
    if c.adm:
        w += ["label_emb.0.0.weight", "label_emb.0.2.weight"]
    w.append("input_blocks.0.0.weight")
    depths = list(c.transformer_depth)
    n, ch = 1, 1
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks[level]):
            w += _resblock(f"input_blocks.{n}.0", ch != mult)
            ch = mult
            d = depths.pop(0)
            if d:
                w += _spatial(f"input_blocks.{n}.1", d)
            n += 1
        if level != len(c.channel_mult) - 1:
            w.append(f"input_blocks.{n}.0.op.weight")
            n += 1
    w += _resblock("middle_block.0", False)
    w += _spatial("middle_block.1", c.transformer_depth_middle)
    w += _resblock("middle_block.2", False)
    out_depths = list(c.transformer_depth_output)
    n = 0
    for level in reversed(range(len(c.channel_mult))):
        for i in range(c.num_res_blocks[level] + 1):
            w += _resblock(f"output_blocks.{n}.0", True)  # concatenated skip: channels always change
            d = out_depths.pop()
            sub = 1
            if d:
                w += _spatial(f"output_blocks.{n}.1", d)
                sub = 2
            if level and i == c.num_res_blocks[level]:
                w.append(f"output_blocks.{n}.{sub}.conv.weight")
            n += 1
    return w + ["out.0.weight", "out.2.weight"]


def _flux_weights(a: ArchSpec) -> list[str]:
    w = ["img_in.weight", "time_in.in_layer.weight", "time_in.out_layer.weight",
         "vector_in.in_layer.weight", "vector_in.out_layer.weight"]
    if a.guidance:
        w += ["guidance_in.in_layer.weight", "guidance_in.out_layer.weight"]
    w.append("txt_in.weight")
    for i in range(a.depth):
        for s in ("img", "txt"):
            p = f"double_blocks.{i}.{s}"
            w += [f"{p}_mod.lin.weight", f"{p}_attn.qkv.weight", f"{p}_attn.norm.query_norm.scale",
                  f"{p}_attn.norm.key_norm.scale", f"{p}_attn.proj.weight", f"{p}_mlp.0.weight", f"{p}_mlp.2.weight"]
    for i in range(a.single_depth):
        p = f"single_blocks.{i}"
        w += [f"{p}.linear1.weight", f"{p}.linear2.weight", f"{p}.norm.query_norm.scale",
              f"{p}.norm.key_norm.scale", f"{p}.modulation.lin.weight"]
    return w + ["final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"]


@lru_cache(maxsize=32)
def model_weights(arch: ArchSpec) -> tuple[str, ...]:
    """The diffusion model's parameter names as ComfyUI holds them (`diffusion_model.` prefix), in module order."""
    if arch.family == "sd3":
        names = _sd3_weights(arch)
    elif arch.family == "flux":
        names = _flux_weights(arch)
    else:
        names = _unet_weights(_UNETS[arch.family])
    return tuple(f"diffusion_model.{n}" for n in names)


_CLIP_LAYER = ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
_CLIP_LAYERS = {"clip_l": 12, "clip_g": 32}
_LORA_CLIP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
              "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
              "self_attn.out_proj": "self_attn_out_proj"}


@lru_cache(maxsize=32)
def clip_weights(arch: ArchSpec) -> tuple[str, ...]:
    """The text encoders' linear-layer parameter names as ComfyUI's CLIP object holds them."""
    w: list[str] = []
    for enc in arch.text_encoders:
        if enc in _CLIP_LAYERS:
            for b in range(_CLIP_LAYERS[enc]):
                w += [f"{enc}.transformer.text_model.encoder.layers.{b}.{m}.weight" for m in _CLIP_LAYER]
            w.append(f"{enc}.transformer.text_projection.weight")
        else:  # T5-XXL encoder
            for b in range(24):
                p = f"t5xxl.transformer.encoder.block.{b}.layer"
                w += [f"{p}.0.SelfAttention.{m}.weight" for m in ("q", "k", "v", "o")]
                w += [f"{p}.1.DenseReluDense.{m}.weight" for m in ("wi_0", "wi_1", "wo")]
    return tuple(w)


# ------------------------------------------------------------------------------- key maps
def _unet_to_diffusers(c: _UNetConfig) -> dict[str, str]:
    """Diffusers UNet weight names -> ComfyUI (SGM) names, the same correspondence ComfyUI uses."""
    resnet = {"in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.3": "conv2",
              "skip_connection": "conv_shortcut", "in_layers.0": "norm1", "out_layers.0": "norm2"}
    attn = ("proj_in", "proj_out", "norm")
    m: dict[str, str] = {}
    depths = list(c.transformer_depth)
    for x in range(len(c.channel_mult)):
        n = 1 + (c.num_res_blocks[x] + 1) * x
        for i in range(c.num_res_blocks[x]):
            for sgm, dif in resnet.items():
                m[f"down_blocks.{x}.resnets.{i}.{dif}"] = f"input_blocks.{n}.0.{sgm}"
            d = depths.pop(0)
            if d:
                for b in attn:
                    m[f"down_blocks.{x}.attentions.{i}.{b}"] = f"input_blocks.{n}.1.{b}"
                for t in range(d):
                    for b in _TRANSFORMER:
                        m[f"down_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = (
                            f"input_blocks.{n}.1.transformer_blocks.{t}.{b}"
                        )
            n += 1
        m[f"down_blocks.{x}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
    for b in attn:
        m[f"mid_block.attentions.0.{b}"] = f"middle_block.1.{b}"
    for t in range(c.transformer_depth_middle):
        for b in _TRANSFORMER:
            m[f"mid_block.attentions.0.transformer_blocks.{t}.{b}"] = f"middle_block.1.transformer_blocks.{t}.{b}"
    for i, n in enumerate((0, 2)):
        for sgm, dif in resnet.items():
            m[f"mid_block.resnets.{i}.{dif}"] = f"middle_block.{n}.{sgm}"
    res = list(reversed(c.num_res_blocks))
    out_depths = list(c.transformer_depth_output)
    for x in range(len(c.channel_mult)):
        n = (res[x] + 1) * x
        for i in range(res[x] + 1):
            for sgm, dif in resnet.items():
                m[f"up_blocks.{x}.resnets.{i}.{dif}"] = f"output_blocks.{n}.0.{sgm}"
            sub = 1
            d = out_depths.pop()
            if d:
                sub = 2
                for b in attn:
                    m[f"up_blocks.{x}.attentions.{i}.{b}"] = f"output_blocks.{n}.1.{b}"
                for t in range(d):
                    for b in _TRANSFORMER:
                        m[f"up_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"] = (
                            f"output_blocks.{n}.1.transformer_blocks.{t}.{b}"
                        )
            if i == res[x]:
                m[f"up_blocks.{x}.upsamplers.0.conv"] = f"output_blocks.{n}.{sub}.conv"
            n += 1
    for sgm, dif in (("label_emb.0.0", "class_embedding.linear_1"), ("label_emb.0.2", "class_embedding.linear_2"),
                     ("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"),
                     ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"),
                     ("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2")):
        m[dif] = sgm
    return m


_MMDIT_BLOCK = (("context_block.adaLN_modulation.1", "norm1_context.linear"),
                ("context_block.attn.proj", "attn.to_add_out"), ("context_block.mlp.fc1", "ff_context.net.0.proj"),
                ("context_block.mlp.fc2", "ff_context.net.2"), ("context_block.attn.ln_q", "attn.norm_added_q"),
                ("context_block.attn.ln_k", "attn.norm_added_k"), ("x_block.adaLN_modulation.1", "norm1.linear"),
                ("x_block.attn.proj", "attn.to_out.0"), ("x_block.attn.ln_q", "attn.norm_q"),
                ("x_block.attn.ln_k", "attn.norm_k"), ("x_block.attn2.proj", "attn2.to_out.0"),
                ("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k"),
                ("x_block.mlp.fc1", "ff.net.0.proj"), ("x_block.mlp.fc2", "ff.net.2"))
_MMDIT_BASIC = (("context_embedder", "context_embedder"),
                ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
                ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
                ("x_embedder.proj", "pos_embed.proj"), ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
                ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"), ("final_layer.linear", "proj_out"))


def _mmdit_to_diffusers(a: ArchSpec) -> dict[str, Target]:
    """Diffusers SD3 names (no `.weight`) -> ComfyUI targets, for every block including missing layers."""
    m: dict[str, Target] = {}
    off = a.hidden
    for i in range(a.depth):
        src, dst = f"transformer_blocks.{i}", f"diffusion_model.joint_blocks.{i}"
        for j, q in enumerate("qkv"):
            m[f"{src}.attn.to_{q}"] = (f"{dst}.x_block.attn.qkv.weight", (0, off * j, off))
            m[f"{src}.attn.add_{q}_proj"] = (f"{dst}.context_block.attn.qkv.weight", (0, off * j, off))
            m[f"{src}.attn2.to_{q}"] = (f"{dst}.x_block.attn2.qkv.weight", (0, off * j, off))
        for sgm, dif in _MMDIT_BLOCK:
            m[f"{src}.{dif}"] = f"{dst}.{sgm}.weight"
    for sgm, dif in _MMDIT_BASIC:
        m[dif] = f"diffusion_model.{sgm}.weight"
    m["norm_out.linear"] = ("diffusion_model.final_layer.adaLN_modulation.1.weight", None, "swap_scale_shift")
    return m


def _flux_to_diffusers(a: ArchSpec) -> dict[str, Target]:
    h = a.hidden
    m: dict[str, Target] = {}
    block = {"attn.to_out.0": "img_attn.proj.weight", "norm1.linear": "img_mod.lin.weight",
             "norm1_context.linear": "txt_mod.lin.weight", "attn.to_add_out": "txt_attn.proj.weight",
             "ff.net.0.proj": "img_mlp.0.weight", "ff.net.2": "img_mlp.2.weight",
             "ff_context.net.0.proj": "txt_mlp.0.weight", "ff_context.net.2": "txt_mlp.2.weight",
             "attn.norm_q": "img_attn.norm.query_norm.scale", "attn.norm_k": "img_attn.norm.key_norm.scale",
             "attn.norm_added_q": "txt_attn.norm.query_norm.scale", "attn.norm_added_k": "txt_attn.norm.key_norm.scale"}
    for i in range(a.depth):
        src, dst = f"transformer_blocks.{i}", f"diffusion_model.double_blocks.{i}"
        for j, q in enumerate("qkv"):
            m[f"{src}.attn.to_{q}"] = (f"{dst}.img_attn.qkv.weight", (0, h * j, h))
            m[f"{src}.attn.add_{q}_proj"] = (f"{dst}.txt_attn.qkv.weight", (0, h * j, h))
        for dif, sgm in block.items():
            m[f"{src}.{dif}"] = f"{dst}.{sgm}"
    for i in range(a.single_depth):
        src, dst = f"single_transformer_blocks.{i}", f"diffusion_model.single_blocks.{i}"
        for j, q in enumerate("qkv"):
            m[f"{src}.attn.to_{q}"] = (f"{dst}.linear1.weight", (0, h * j, h))
        m[f"{src}.proj_mlp"] = (f"{dst}.linear1.weight", (0, h * 3, h * 4))
        m[f"{src}.norm.linear"] = f"{dst}.modulation.lin.weight"
        m[f"{src}.proj_out"] = f"{dst}.linear2.weight"
        m[f"{src}.attn.norm_q"] = f"{dst}.norm.query_norm.scale"
        m[f"{src}.attn.norm_k"] = f"{dst}.norm.key_norm.scale"
    for sgm, dif in (("final_layer.linear", "proj_out"), ("img_in", "x_embedder"),
                     ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                     ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                     ("txt_in", "context_embedder"), ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                     ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                     ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                     ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")):
        m[dif] = f"diffusion_model.{sgm}.weight"
    m["norm_out.linear"] = ("diffusion_model.final_layer.adaLN_modulation.1.weight", None, "swap_scale_shift")
    return m


def _unet_key_map(arch: ArchSpec, m: dict[str, Target]) -> None:
    for k in model_weights(arch):
        if k.endswith(".weight"):
            base = k[len("diffusion_model."):-len(".weight")]
            m[f"lora_unet_{base.replace('.', '_')}"] = k
            m[k[: -len(".weight")]] = k  # the generic "diffusion_model.<layer>" format
        else:
            m[k] = k
    if arch.family in _UNETS:
        for dif, sgm in _unet_to_diffusers(_UNETS[arch.family]).items():
            target = f"diffusion_model.{sgm}.weight"
            m[f"lora_unet_{dif.replace('.', '_')}"] = target
            m[f"lycoris_{dif.replace('.', '_')}"] = target
            for prefix in ("", "unet."):
                key = prefix + dif.replace(".to_", ".processor.to_")
                if key.endswith(".to_out.0"):
                    key = key[:-2]
                m[key] = target
    if arch.family == "sd3":
        for dif, mmdit in _mmdit_to_diffusers(arch).items():
            m[f"transformer.{dif}"] = mmdit
            m[f"base_model.model.{dif}"] = mmdit
            m[f"lora_transformer_{dif.replace('.', '_')}"] = mmdit
            m[f"lycoris_{dif.replace('.', '_')}"] = mmdit
    if arch.family == "flux":
        for dif, flux in _flux_to_diffusers(arch).items():
            m[f"transformer.{dif}"] = flux
            m[f"lycoris_{dif.replace('.', '_')}"] = flux
            m[f"lora_transformer_{dif.replace('.', '_')}"] = flux
        for k in model_weights(arch):
            if k.endswith(".linear1.weight"):
                m[k.replace(".linear1.weight", ".linear1_qkv")] = (k, (0, 0, arch.hidden * 3))


def _clip_key_map(arch: ArchSpec, m: dict[str, Target]) -> None:
    weights = clip_weights(arch)
    have = set(weights)
    for k in weights:
        m[f"text_encoders.{k[:-len('.weight')]}"] = k
    clip_l = clip_g = False
    for b in range(32):
        for c, lc in _LORA_CLIP.items():
            k = f"clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in have:
                m[f"lora_te_text_model_encoder_layers_{b}_{lc}"] = k
                m[f"lora_te1_text_model_encoder_layers_{b}_{lc}"] = k
                clip_l = True
                m[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
            k = f"clip_g.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in have:
                clip_g = True
                if clip_l:
                    m[f"lora_te2_text_model_encoder_layers_{b}_{lc}"] = k
                    m[f"text_encoder_2.text_model.encoder.layers.{b}.{c}"] = k
                else:
                    m[f"lora_te_text_model_encoder_layers_{b}_{lc}"] = k
                    m[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
                    m[f"lora_prior_te_text_model_encoder_layers_{b}_{lc}"] = k
    for k in weights:
        if k.startswith("t5xxl.transformer."):
            base = k[len("t5xxl.transformer."):-len(".weight")].replace(".", "_")
            idx = 1 + clip_g + clip_l
            if clip_l and idx == 2:
                m[f"lora_te2_{base}"] = k  # OneTrainer FLUX numbering
                idx += 1
            m[f"lora_te{idx}_{base}"] = k
    if "clip_g.transformer.text_projection.weight" in have:
        m["lora_prior_te_text_projection"] = "clip_g.transformer.text_projection.weight"
        m["lora_te2_text_projection"] = "clip_g.transformer.text_projection.weight"
    if "clip_l.transformer.text_projection.weight" in have:
        m["lora_te1_text_projection"] = "clip_l.transformer.text_projection.weight"


@lru_cache(maxsize=64)
def comfy_key_map(arch: ArchSpec, *, with_model: bool = True, with_clip: bool = True) -> dict[str, Target]:
    """ComfyUI's LoRA key map for a model: accepted key stem -> weight target, in ComfyUI's order.

    `with_clip=False` is LoraLoaderModelOnly (no text encoder: every text-encoder key is "not loaded").
    Treat the result as read-only (it is cached).
    """
    m: dict[str, Target] = {}
    if with_model:
        _unet_key_map(arch, m)
    if with_clip:
        _clip_key_map(arch, m)
    return m
