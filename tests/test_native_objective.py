"""The SD3 rectified-flow objective: sigma sampling, shift, noising and target."""

from __future__ import annotations

import pytest
import torch

from devserver_lora.train.native.objective import (
    flow_loss,
    loss_weights,
    noisy_input,
    sample_density,
    sample_sigmas,
    shift_sigmas,
    timesteps_for,
    velocity_target,
)


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "uniform"])
def test_sigmas_stay_inside_the_unit_interval(scheme: str) -> None:
    g = torch.Generator().manual_seed(0)
    s = sample_sigmas(4096, scheme, shift=3.0, generator=g)
    assert s.shape == (4096,)
    assert float(s.min()) > 0.0 and float(s.max()) < 1.0


def test_shift_pushes_towards_noise_and_keeps_endpoints() -> None:
    u = torch.linspace(0, 1, 11)
    shifted = shift_sigmas(u, 3.0)
    assert torch.allclose(shifted[[0, -1]], torch.tensor([0.0, 1.0]))
    assert bool((shifted[1:-1] > u[1:-1]).all())
    assert torch.allclose(shift_sigmas(u, 1.0), u)
    # SD3's shift at u = 0.5 with shift 3 is 0.75.
    assert float(shift_sigmas(torch.tensor([0.5]), 3.0)) == pytest.approx(0.75)


def test_logit_normal_is_centred_and_mode_scale_changes_the_density() -> None:
    g = torch.Generator().manual_seed(1)
    u = sample_density(20000, "logit_normal", generator=g)
    assert float(u.median()) == pytest.approx(0.5, abs=0.02)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    a = sample_density(1000, "mode", mode_scale=0.0, generator=g1)
    b = sample_density(1000, "mode", mode_scale=1.29, generator=g2)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="logit_normal, mode or uniform"):
        sample_density(2, "bogus")  # type: ignore[arg-type]


def test_noisy_input_interpolates_between_data_and_noise() -> None:
    x0, noise = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    sig = torch.tensor([0.0, 0.5, 1.0])
    xt = noisy_input(x0, noise, sig)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[2], noise[2])
    assert torch.allclose(xt[1], 0.5 * (x0[1] + noise[1]))
    # Moving along the target velocity from x_t by sigma lands back on the data.
    assert torch.allclose(xt - sig.view(-1, 1, 1, 1) * velocity_target(x0, noise), x0, atol=1e-6)
    assert torch.allclose(timesteps_for(sig), torch.tensor([0.0, 500.0, 1000.0]))


def test_flow_loss_is_zero_for_the_true_velocity_and_positive_otherwise() -> None:
    x0, noise = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    sig = torch.tensor([0.3, 0.7])
    assert float(flow_loss(noise - x0, x0, noise, sig, "logit_normal")) == pytest.approx(0.0, abs=1e-10)
    assert float(flow_loss(torch.zeros_like(x0), x0, noise, sig, "logit_normal")) > 0.5


# --- parity with diffusers (issue 10 item 9): the density, the weighting and the shift are diffusers' ----------


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "uniform"])
def test_density_draws_what_diffusers_draws(scheme: str) -> None:
    from diffusers.training_utils import compute_density_for_timestep_sampling

    ours = sample_density(512, scheme, logit_mean=0.3, logit_std=1.2, mode_scale=1.29,
                          generator=torch.Generator().manual_seed(7))
    theirs = compute_density_for_timestep_sampling(scheme, 512, logit_mean=0.3, logit_std=1.2, mode_scale=1.29,
                                                   generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap", "none"])
def test_loss_weights_are_diffusers_sd3_weights(scheme: str) -> None:
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    sigmas = torch.linspace(0.05, 0.95, 19)
    assert torch.allclose(loss_weights(sigmas, scheme), compute_loss_weighting_for_sd3(scheme, sigmas).float())
    x0, noise = torch.randn(19, 4, 2, 2), torch.randn(19, 4, 2, 2)
    pred = torch.zeros_like(x0)
    per_sample = ((pred - (noise - x0)) ** 2).reshape(19, -1).mean(dim=1)
    expected = (compute_loss_weighting_for_sd3(scheme, sigmas).float() * per_sample).mean()
    assert float(flow_loss(pred, x0, noise, sigmas, scheme)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0, 0.5])
def test_shift_is_the_flow_match_schedulers_shift(shift: float) -> None:
    """The one formula kept here: diffusers' FlowMatchEulerDiscreteScheduler shifts its training sigmas so."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    plain = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).sigmas
    shifted = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift).sigmas
    assert torch.allclose(shift_sigmas(plain, shift), shifted, atol=1e-6)
