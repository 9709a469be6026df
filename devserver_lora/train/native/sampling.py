"""Samples during native training: diffusers' SD3 pipeline on the transformer being trained (LoRA applied as it
stands), the job's sample prompts at their fixed seeds, saved through `evaluate.samples`.

The prompts are encoded once, at the start, by the same code that encodes the captions (`caches.encode_prompts`,
ComfyUI's SD3 conditioning), so a sample shows what the LoRA learned under the conditioning it trained with. The
VAE is loaded once and kept. Nothing here may stop training: every failure becomes a warning event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..evaluate.samples import publish_sample, sample_failed
from ..evaluate.settings import EvalSettings

if TYPE_CHECKING:
    from ..jobs import Job


@dataclass
class _Encoded:
    context: torch.Tensor
    pooled: torch.Tensor
    negative_context: torch.Tensor
    negative_pooled: torch.Tensor


class NativeSampler:
    """Renders the job's sample prompts with the current LoRA at the steps the eval settings ask for."""

    def __init__(self, job: Job, settings: EvalSettings, *, load_vae: Callable[[], Any],
                 load_text_encoders: Callable[[], list[Any]], joint_dim: int, pooled_dim: int, shift: float,
                 device: Any, dtype: Any) -> None:
        self.job, self.settings = job, settings
        self.device, self.dtype, self.shift = device, dtype, shift
        self._load_vae, self._load_tes = load_vae, load_text_encoders
        self.joint_dim, self.pooled_dim = joint_dim, pooled_dim
        self.vae: Any = None
        self.encoded: _Encoded | None = None
        self.broken = False

    def due(self, step: int) -> bool:
        s = self.settings
        if not s.samples_on or self.broken:
            return False
        if step == 0:
            return s.sample_at_first
        return s.sample_every_n_steps is not None and step % s.sample_every_n_steps == 0

    def prepare(self) -> None:
        """Encode the prompts and load the VAE; on failure sampling is off for this run (a warning says why)."""
        from .caches import _release, encode_prompts

        try:
            encoders = self._load_tes()
            texts = [p.prompt for p in self.settings.prompts]
            ctx, pooled = encode_prompts(encoders, [*texts, self.settings.negative_prompt], joint_dim=self.joint_dim,
                                         pooled_dim=self.pooled_dim, device=self.device)
            del encoders
            _release()
            self.encoded = _Encoded(ctx[:-1], pooled[:-1], ctx[-1:], pooled[-1:])
            self.vae = self._load_vae()
        except Exception as exc:  # noqa: BLE001 - sampling is optional; training is not
            self.broken = True
            sample_failed(self.job, step=0, index=None, error=exc)

    def _pipeline(self, transformer: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)
        return StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=self.vae, text_encoder=None, tokenizer=None,
            text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
        )

    def render(self, transformer: Any, step: int, *, autocast: Any = None) -> int:
        """Render every prompt at `step`; returns how many samples were saved."""
        if self.encoded is None and not self.broken:
            self.prepare()
        if self.encoded is None:
            return 0
        was_training = transformer.training
        rng = torch.get_rng_state()  # the pipeline draws from its own generator; keep training's stream intact
        saved = 0
        try:
            transformer.eval()
            pipe = self._pipeline(transformer)
            pipe.set_progress_bar_config(disable=True)
            for i, p in enumerate(self.settings.prompts):
                try:
                    image = self._one(pipe, i, p.seed, autocast)
                    publish_sample(self.job, image, step=step, index=i, prompt=p.prompt, seed=p.seed)
                    saved += 1
                except Exception as exc:  # noqa: BLE001 - one bad sample must not cost the run
                    sample_failed(self.job, step=step, index=i, error=exc)
        except Exception as exc:  # noqa: BLE001
            sample_failed(self.job, step=step, index=None, error=exc)
        finally:
            torch.set_rng_state(rng)
            transformer.train(was_training)
        return saved

    def _one(self, pipe: Any, i: int, seed: int, autocast: Any) -> Any:
        import contextlib

        enc = self.encoded
        assert enc is not None
        s = self.settings
        generator = torch.Generator(device="cpu").manual_seed(seed)
        dtype = self.dtype
        with torch.no_grad(), (autocast() if autocast is not None else contextlib.nullcontext()):
            out = pipe(
                prompt_embeds=enc.context[i : i + 1].to(self.device, dtype),
                pooled_prompt_embeds=enc.pooled[i : i + 1].to(self.device, dtype),
                negative_prompt_embeds=enc.negative_context.to(self.device, dtype),
                negative_pooled_prompt_embeds=enc.negative_pooled.to(self.device, dtype),
                height=s.size, width=s.size, num_inference_steps=s.steps, guidance_scale=s.cfg,
                generator=generator, output_type="pil",
            )
        return out.images[0]
