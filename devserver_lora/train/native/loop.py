"""The LoRA training loop for diffusers' SD3 transformer, on cached latents and text embeddings.

One optimizer step = `gradient_accumulation_steps` micro-batches. The data order of each epoch is a
permutation seeded by (seed, epoch), and all randomness of a step (noise, sigmas, caption dropout, flips)
comes from one generator whose state is saved, so a resumed run continues the same sequence.
`accelerate.Accelerator` handles devices, mixed precision and several GPUs when launched with accelerate.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from ...errors import BackendError
from ...paths import publish_path
from ..events import LogLevel
from ..plan import SCHEDULERS, TrainingPlan
from .caches import Caches
from .lora_export import TRAINABLE_MODULES
from .objective import WeightingScheme, flow_loss, noisy_input, sample_sigmas, timesteps_for

STATE_VERSION = 1


@dataclass
class LoopSettings:
    total_steps: int
    rank: int
    alpha: float
    learning_rate: float = 1e-4
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    repeats: int = 1
    optimizer: str = "AdamW"
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    seed: int = 42
    weighting_scheme: WeightingScheme = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 3.0
    caption_dropout_rate: float = 0.0
    flip_aug: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    save_every_n_steps: int | None = None
    save_every_n_epochs: int | None = None
    max_grad_norm: float = 1.0

    @classmethod
    def from_plan(cls, plan: TrainingPlan) -> LoopSettings:
        h = plan.hyper
        return cls(
            total_steps=h.max_train_steps,
            rank=h.network_dim,
            alpha=float(h.network_alpha),
            learning_rate=h.learning_rate,
            batch_size=h.batch_size,
            gradient_accumulation_steps=h.gradient_accumulation_steps,
            repeats=h.repeats,
            optimizer=h.optimizer,
            lr_scheduler=h.lr_scheduler,
            lr_warmup_steps=h.lr_warmup_steps,
            seed=h.seed,
            weighting_scheme=h.weighting_scheme,
            logit_mean=h.logit_mean,
            logit_std=h.logit_std,
            mode_scale=h.mode_scale,
            shift=h.discrete_flow_shift or 1.0,
            caption_dropout_rate=h.caption_dropout_rate,
            flip_aug=h.flip_aug,
            mixed_precision=h.mixed_precision,
            gradient_checkpointing=plan.memory.gradient_checkpointing,
            save_every_n_steps=h.save_every_n_steps,
            save_every_n_epochs=h.save_every_n_epochs,
        )


@dataclass
class StepReport:
    step: int
    total_steps: int
    epoch: int  # 1-based epoch the step belongs to
    total_epochs: int
    loss: float
    it_per_s: float | None
    eta_s: float | None
    epoch_finished: bool
    lr: float | None = None  # the learning rate this step used


def lora_target_modules(transformer: torch.nn.Module) -> list[str]:
    """Full names of the Linear layers a LoRA trains: every mappable layer of every block, except the last
    block's context side beyond q/k/v (pre_only in the MMDiT, so ComfyUI could not load it)."""
    depth = len(list(transformer.get_submodule("transformer_blocks").children()))
    names = []
    for name, module in transformer.named_modules():
        if not name.startswith("transformer_blocks.") or not isinstance(module, torch.nn.Linear):
            continue
        _, block, rest = name.split(".", 2)
        if rest not in TRAINABLE_MODULES:
            continue
        if int(block) == depth - 1 and rest in ("norm1_context.linear", "attn.to_add_out", "ff_context.net.0.proj", "ff_context.net.2"):
            continue
        names.append(name)
    return names


def lr_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup: int, total: int) -> LRScheduler:
    """The learning-rate schedule `name`: diffusers' `get_scheduler`, called as sd-scripts calls it (one cycle,
    power 1, warmup in optimizer steps), so both backends follow the same curve for the same plan."""
    from diffusers.optimization import SchedulerType, get_scheduler

    if name not in {t.value for t in SchedulerType} or name == SchedulerType.PIECEWISE_CONSTANT.value:
        raise BackendError(
            f"the native backend has no learning-rate scheduler {name!r}",
            hint=f"use one of {', '.join(SCHEDULERS)}",
            diagnosis="unsupported_scheduler",
        )
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


class LoraTrainer:
    """Adds a peft LoRA to `transformer` and trains it on `caches`."""

    def __init__(self, transformer: Any, caches: Caches, settings: LoopSettings, *, accelerator: Any = None,
                 log: Callable[[LogLevel, str], None] | None = None) -> None:
        from accelerate import Accelerator
        from peft import LoraConfig

        self.s = settings
        self.caches = caches
        self.log = log or (lambda level, msg: None)
        cpu = not torch.cuda.is_available()
        precision = "no" if cpu else settings.mixed_precision
        # Accumulation is done here, not by accelerate: an epoch may end inside an accumulation window.
        self.accelerator = accelerator or Accelerator(mixed_precision=precision, cpu=cpu)
        transformer.requires_grad_(False)
        self.targets = lora_target_modules(transformer)
        # peft initialises lora_A from the global RNG: seed it so the same plan gives the same LoRA.
        torch.manual_seed(settings.seed)
        transformer.add_adapter(
            # peft annotates lora_alpha as int, but scales by alpha / r with any number; Kohya's alpha is a float.
            LoraConfig(r=settings.rank, lora_alpha=settings.alpha,  # type: ignore[arg-type]
                       target_modules=self.targets, init_lora_weights=True)
        )
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        for p in self.params:
            # LoRA weights train in fp32 even on a bf16 base: small updates vanish in bf16.
            p.data = p.data.float()
        if settings.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        self.optimizer = self._optimizer()
        self.lr_scheduler = lr_scheduler(settings.lr_scheduler, self.optimizer, settings.lr_warmup_steps, settings.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(transformer, self.optimizer)
        self.generator = torch.Generator().manual_seed(self._noise_seed(0))
        self.step = 0
        self.epoch = 0  # completed epochs
        self.pos = 0  # next micro-batch within the current epoch

    # --- setup ---------------------------------------------------------------------
    def _noise_seed(self, step: int) -> int:
        """Rank 0 draws from the plan's seed; other ranks need their own noise (they see other images)."""
        rank = self.accelerator.process_index
        return self.s.seed if rank == 0 else self.s.seed + 1_000_003 * rank + 7_919 * step

    def _stop_requested(self, stop: threading.Event | None) -> bool:
        """Several processes must leave at the same step (else one waits forever in the next all-reduce)."""
        asked = stop is not None and stop.is_set()
        if self.accelerator.num_processes == 1:
            return asked
        flag = torch.tensor([1.0 if asked else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _optimizer(self) -> torch.optim.Optimizer:
        name = self.s.optimizer
        if name == "AdamW8bit":
            if torch.cuda.is_available():
                import bitsandbytes as bnb

                return bnb.optim.AdamW8bit(self.params, lr=self.s.learning_rate, weight_decay=1e-2)
            self.log("warning", "AdamW8bit needs a CUDA GPU (bitsandbytes); training with plain AdamW on this machine")
        elif name != "AdamW":
            raise BackendError(
                f"the native backend has no optimizer {name!r}",
                hint="use AdamW or AdamW8bit, or the kohya backend for Adafactor/Prodigy",
                diagnosis="unsupported_optimizer",
            )
        # The fused kernel (CPU and CUDA) updates all LoRA tensors in one pass instead of one small op per tensor.
        return torch.optim.AdamW(self.params, lr=self.s.learning_rate, weight_decay=1e-2, fused=True)

    # --- data ------------------------------------------------------------------------
    @property
    def samples_per_epoch(self) -> int:
        """Samples this process sees per epoch (several GPUs split each epoch between them)."""
        return math.ceil(len(self.caches) * self.s.repeats / self.accelerator.num_processes)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.samples_per_epoch / self.s.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.batches_per_epoch / self.s.gradient_accumulation_steps))

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.s.total_steps / self.steps_per_epoch)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.s.seed * 100_003 + epoch)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        full = torch.randperm(len(self.caches) * self.s.repeats, generator=g) % len(self.caches)
        if world > 1:
            # Every process draws the same permutation and takes its own stride of it (wrapped to equal length).
            full = full.repeat(2)[: self.samples_per_epoch * world][rank::world]
        return full

    def _batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.caches
        latents = c.latents[indices]
        if self.s.flip_aug and c.latents_flipped is not None:
            flip = torch.rand(len(indices), generator=self.generator) < 0.5
            latents = torch.where(flip.view(-1, 1, 1, 1), c.latents_flipped[indices], latents)
        context, pooled = c.context[indices], c.pooled[indices]
        if self.s.caption_dropout_rate > 0:
            drop = torch.rand(len(indices), generator=self.generator) < self.s.caption_dropout_rate
            context = torch.where(drop.view(-1, 1, 1), c.empty_context.expand_as(context), context)
            pooled = torch.where(drop.view(-1, 1), c.empty_pooled.expand_as(pooled), pooled)
        return latents, context, pooled

    # --- one micro-batch ---------------------------------------------------------------
    def _micro_step(self, indices: torch.Tensor, *, scale: float, sync: bool) -> float:
        device = self.accelerator.device
        latents, context, pooled = self._batch(indices)
        noise = torch.randn(latents.shape, generator=self.generator)
        sigmas = sample_sigmas(
            len(indices), self.s.weighting_scheme, shift=self.s.shift, logit_mean=self.s.logit_mean,
            logit_std=self.s.logit_std, mode_scale=self.s.mode_scale, generator=self.generator,
        )
        x_t = noisy_input(latents, noise, sigmas)
        # Between accumulation micro-batches there is no need to all-reduce gradients across GPUs.
        sync_ctx = contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model)
        with sync_ctx, self.accelerator.autocast():
            pred = self.model(
                hidden_states=x_t.to(device),
                encoder_hidden_states=context.to(device),
                pooled_projections=pooled.to(device),
                timestep=timesteps_for(sigmas).to(device),
                return_dict=False,
            )[0]
            loss = flow_loss(pred, latents.to(device), noise.to(device), sigmas.to(device), self.s.weighting_scheme)
            self.accelerator.backward(loss * scale)
        return float(loss.detach())

    def train(self, *, on_step: Callable[[StepReport], None] | None = None, stop: threading.Event | None = None) -> int:
        """Train until `total_steps` (or `stop` is set, checked between optimizer steps). Returns the step reached."""
        started, start_step = time.monotonic(), self.step
        order = self._epoch_order(self.epoch)
        while self.step < self.s.total_steps:
            if self._stop_requested(stop):
                break
            window = min(self.s.gradient_accumulation_steps, self.batches_per_epoch - self.pos)
            losses = []
            for i in range(window):
                begin = self.pos * self.s.batch_size
                indices = order[begin : begin + self.s.batch_size]
                losses.append(self._micro_step(indices, scale=1.0 / window, sync=i == window - 1))
                self.pos += 1
            if self.s.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.params, self.s.max_grad_norm)
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.lr_scheduler.step()
            self.step += 1
            epoch_finished = self.pos >= self.batches_per_epoch
            if epoch_finished:
                self.epoch += 1
                self.pos = 0
                order = self._epoch_order(self.epoch)
            elapsed = time.monotonic() - started
            done = self.step - start_step
            rate = done / elapsed if elapsed > 0 else None
            if on_step is not None:
                on_step(
                    StepReport(
                        step=self.step,
                        total_steps=self.s.total_steps,
                        epoch=self.epoch if epoch_finished else self.epoch + 1,
                        total_epochs=self.total_epochs,
                        loss=sum(losses) / len(losses),
                        it_per_s=rate,
                        eta_s=(self.s.total_steps - self.step) / rate if rate else None,
                        epoch_finished=epoch_finished,
                        lr=lr,
                    )
                )
        return self.step

    # --- LoRA weights and saved state -------------------------------------------------------------
    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trained LoRA in peft naming (`transformer_blocks.0.attn.to_q.lora_A.weight`), fp32 on CPU."""
        from peft.utils import get_peft_model_state_dict

        model = self.accelerator.unwrap_model(self.model)
        return {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model).items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "pos": self.pos,
            "targets": self.targets,
            "rank": self.s.rank,
            "alpha": self.s.alpha,
            "lora": self.lora_state(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from peft.utils import set_peft_model_state_dict

        if state.get("version") != STATE_VERSION or state.get("rank") != self.s.rank or state.get("targets") != self.targets:
            raise BackendError(
                "the saved training state does not match this plan (rank or trained layers differ)",
                hint="resume with the plan the job started with, or start a new job",
                diagnosis="resume_mismatch",
            )
        model = self.accelerator.unwrap_model(self.model)
        # torch's load_state_dict result, passed through (peft annotates it as a bare `namedtuple`).
        result: Any = set_peft_model_state_dict(model, state["lora"])
        if result.unexpected_keys:
            raise BackendError("the saved LoRA state has unexpected keys", diagnosis="resume_mismatch")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"])  # saved by rank 0; the others start a fresh stream
        if self.accelerator.process_index != 0:
            self.generator.manual_seed(self._noise_seed(int(state["step"])))
        torch.set_rng_state(state["torch_rng"])
        self.step, self.epoch, self.pos = int(state["step"]), int(state["epoch"]), int(state["pos"])


def save_state(state: dict[str, Any], path: Path) -> Path:
    """Write the resume state atomically (a kill mid-write leaves the previous state intact)."""
    return publish_path(path, lambda tmp: torch.save(state, tmp), overwrite=True)


def load_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)  # never unpickle code from a job folder
    except Exception as exc:
        raise BackendError(
            f"the saved training state {path} is damaged ({exc})",
            hint="delete it to restart training from the beginning",
            diagnosis="resume_damaged",
        ) from exc
