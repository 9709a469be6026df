"""The SD3 rectified-flow training objective (timestep sampling, noising, target, loss weighting).

SD3 trains a velocity field: x_t = (1 - sigma) * x0 + sigma * noise and the model predicts
noise - x0. Sigmas come from a density over [0, 1] ("logit_normal", "mode" or "uniform"),
then the family's shift (3.0 for SD3) pushes them towards the noisy end, exactly as the
FlowMatch scheduler shifts its sigmas at inference. The model is conditioned on
timestep = sigma * 1000, the scale ComfyUI and diffusers use for SD3.

The density and the loss weighting are diffusers' own (`diffusers.training_utils`; its SD3 LoRA
script uses them, and sd-scripts carries copies of the same two functions). The continuous shift
is the formula of diffusers' `FlowMatchEulerDiscreteScheduler`, which offers no function for it
(tests/test_native_objective.py holds it to that scheduler's sigmas).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

WeightingScheme = Literal["logit_normal", "mode", "uniform"]
WEIGHTING_SCHEMES: tuple[str, ...] = get_args(WeightingScheme)
NUM_TRAIN_TIMESTEPS = 1000


def sample_density(
    batch: int,
    scheme: WeightingScheme,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `batch` values u in (0, 1) from the SD3 timestep density (before the shift)."""
    if scheme not in WEIGHTING_SCHEMES:
        # diffusers samples uniformly for any name it does not know; a typo must not change the training.
        raise ValueError(f"unknown timestep weighting scheme {scheme!r}: use logit_normal, mode or uniform")
    return compute_density_for_timestep_sampling(
        weighting_scheme=scheme, batch_size=batch, logit_mean=logit_mean, logit_std=logit_std,
        mode_scale=mode_scale, generator=generator,
    )


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Apply the flow-matching shift (shift > 1 spends more steps at high noise, as SD3 inference does)."""
    if shift == 1.0:
        return u
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(
    batch: int,
    scheme: WeightingScheme,
    *,
    shift: float,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sigmas in (0, 1) for one batch: density sample, then the family's shift; clamped away from 0 and 1."""
    u = sample_density(
        batch, scheme, logit_mean=logit_mean, logit_std=logit_std, mode_scale=mode_scale, generator=generator
    )
    return shift_sigmas(u, shift).clamp(1e-4, 1.0 - 1e-4)


def noisy_input(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) * x0 + sigma * noise, with one sigma per sample."""
    s = sigmas.view(-1, *([1] * (latents.dim() - 1))).to(latents.dtype)
    return (1.0 - s) * latents + s * noise


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow target: the velocity from data to noise."""
    return noise - latents


def timesteps_for(sigmas: torch.Tensor) -> torch.Tensor:
    """The timestep the SD3 transformer is conditioned on for a given sigma."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def loss_weights(sigmas: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per-sample loss weights for `scheme`, as diffusers' SD3 script and sd-scripts compute them: 1 for the
    density schemes (the density already puts the emphasis where SD3 wants it), else "sigma_sqrt" or "cosmap"."""
    return compute_loss_weighting_for_sd3(weighting_scheme=scheme, sigmas=sigmas).float()


def flow_loss(
    model_pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor, scheme: str
) -> torch.Tensor:
    """Weighted mean squared error between the predicted and the true velocity (a scalar)."""
    target = velocity_target(latents, noise)
    per_sample = ((model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1).mean(dim=1)
    return (loss_weights(sigmas, scheme).to(per_sample.device) * per_sample).mean()
