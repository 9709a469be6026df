"""Model families we can train LoRAs for, with the facts the plan and both backends need.

Parameter counts (billions) feed the memory estimator in `memory.py`:
SD3.5 Large MMDiT 8.1 (depth 38, hidden 2432), SD3.5 Medium MMDiT 2.5 (depth 24,
hidden 1536), SDXL UNet 2.6, SD1.5 UNet 0.86, FLUX.1-dev 11.9 (19 double + 38 single
blocks); text encoders T5-XXL encoder 4.7, CLIP-G 0.69, CLIP-L 0.12; VAE 0.08.
`arch` is a key of `devserver_lora.loras.ARCHS` (named like the families).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..errors import PlanError

FamilyName = Literal["sd35_large", "sd35_medium", "sdxl", "sd15", "flux_dev"]
TextEncoderName = Literal["clip_l", "clip_g", "t5xxl"]

TEXT_ENCODER_PARAMS_B: dict[str, float] = {"clip_l": 0.12, "clip_g": 0.69, "t5xxl": 4.7}
VAE_PARAMS_B = 0.08


class Family(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: FamilyName
    label: str
    arch: str
    base_output_config: str
    kohya_script: str
    kohya_network_module: str
    native_supported: bool
    default_resolution: int
    # 77 where a CLIP encoder reads the caption and truncates it; None where T5 carries the prompt.
    caption_token_limit: int | None
    text_encoders: tuple[TextEncoderName, ...]
    # Text encoders a LoRA may train (T5 is never trained: too large, and Kohya does not by default).
    trainable_text_encoders: tuple[TextEncoderName, ...]
    model_params_b: float
    vae_params_b: float = VAE_PARAMS_B
    # Transformer blocks that can be swapped to host RAM (0 = the trainer cannot swap blocks for this family).
    swappable_blocks: int = 0
    # Hidden width and depth, for the activation estimate.
    hidden_size: int
    depth: int
    latent_channels: int
    # Pixels per latent token: VAE factor 8 times the patch size (2 for MMDiT/FLUX; UNets work on 8x latents).
    latent_downscale: int = 8
    patch_size: int = 1
    # Rough throughput on a reference card (RTX 4090, bf16, 1024 px, batch 1) in s/step, for the wall-time estimate.
    ref_s_per_step_1024: float
    discrete_flow_shift: float | None = None
    is_flow_matching: bool = False

    @property
    def text_encoder_params_b(self) -> float:
        return sum(TEXT_ENCODER_PARAMS_B[t] for t in self.text_encoders)

    @property
    def uses_t5(self) -> bool:
        return "t5xxl" in self.text_encoders


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="sd35_large",
            label="Stable Diffusion 3.5 Large",
            arch="sd35_large",
            base_output_config="sd35_large",
            kohya_script="sd3_train_network.py",
            kohya_network_module="networks.lora_sd3",
            native_supported=True,
            default_resolution=1024,
            caption_token_limit=77,
            text_encoders=("clip_l", "clip_g", "t5xxl"),
            trainable_text_encoders=("clip_l", "clip_g"),
            model_params_b=8.1,
            swappable_blocks=36,
            hidden_size=2432,
            depth=38,
            latent_channels=16,
            patch_size=2,
            ref_s_per_step_1024=1.6,
            discrete_flow_shift=3.0,
            is_flow_matching=True,
        ),
        Family(
            name="sd35_medium",
            label="Stable Diffusion 3.5 Medium",
            arch="sd35_medium",
            base_output_config="sd35_medium",
            kohya_script="sd3_train_network.py",
            kohya_network_module="networks.lora_sd3",
            native_supported=True,
            default_resolution=1024,
            caption_token_limit=77,
            text_encoders=("clip_l", "clip_g", "t5xxl"),
            trainable_text_encoders=("clip_l", "clip_g"),
            model_params_b=2.5,
            swappable_blocks=22,
            hidden_size=1536,
            depth=24,
            latent_channels=16,
            patch_size=2,
            ref_s_per_step_1024=0.6,
            discrete_flow_shift=3.0,
            is_flow_matching=True,
        ),
        Family(
            name="sdxl",
            label="Stable Diffusion XL",
            arch="sdxl",
            base_output_config="sdxl",
            kohya_script="sdxl_train_network.py",
            kohya_network_module="networks.lora",
            native_supported=False,
            default_resolution=1024,
            caption_token_limit=77,
            text_encoders=("clip_l", "clip_g"),
            trainable_text_encoders=("clip_l", "clip_g"),
            model_params_b=2.6,
            swappable_blocks=0,
            hidden_size=1280,
            depth=70,
            latent_channels=4,
            ref_s_per_step_1024=0.5,
        ),
        Family(
            name="sd15",
            label="Stable Diffusion 1.5",
            arch="sd15",
            base_output_config="sd15",
            kohya_script="train_network.py",
            kohya_network_module="networks.lora",
            native_supported=False,
            default_resolution=512,
            caption_token_limit=77,
            text_encoders=("clip_l",),
            trainable_text_encoders=("clip_l",),
            model_params_b=0.86,
            swappable_blocks=0,
            hidden_size=1280,
            depth=16,
            latent_channels=4,
            ref_s_per_step_1024=0.35,
        ),
        Family(
            name="flux_dev",
            label="FLUX.1 [dev]",
            arch="flux_dev",
            base_output_config="flux_dev",
            kohya_script="flux_train_network.py",
            kohya_network_module="networks.lora_flux",
            native_supported=False,
            default_resolution=1024,
            caption_token_limit=None,
            text_encoders=("clip_l", "t5xxl"),
            trainable_text_encoders=("clip_l",),
            model_params_b=11.9,
            swappable_blocks=35,
            hidden_size=3072,
            depth=57,
            latent_channels=16,
            patch_size=2,
            ref_s_per_step_1024=2.2,
            discrete_flow_shift=3.1582,
            is_flow_matching=True,
        ),
    )
}


def get_family(name: str) -> Family:
    """The family called `name`; PlanError listing the known names otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise PlanError(
            f"unknown model family {name!r}",
            hint=f"choose one of: {', '.join(FAMILIES)} (sd35_large is the DevServer default)",
        ) from None
