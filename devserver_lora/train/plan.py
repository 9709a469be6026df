"""The training plan: resolved hyperparameters, steps, and a memory plan that fits the GPU.

`make_plan(family, preset, dataset, gpu=..., overrides=...)` merges preset defaults, the
family's facts and the caller's overrides, validates every hyperparameter with a message a
student can act on, turns the preset's target step count into epochs for this dataset, and
asks `memory.py` for the cheapest memory plan that fits the card (or refuses with the reason
and what would fit). Every choice is explained in one line in `plan.explanations`.

`make_plan` only orders its parts: validation (`_check_backend_knows`, `_load_dataset`,
`_resolve_values`, `_validate_without_steps`), the memory search (`_search_memory`,
`accumulation_for`), the step arithmetic (`step_schedule`) and the final validation
(`_final_hyperparameters`); each part returns the explanation lines of its choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import DatasetError, PlanError, Problem
from ..paths import UnsafePathError, check_simple_name
from .card import CARD_FILE, load_card
from .dataset.manifest import DatasetManifest, load_manifest
from .families import FAMILIES, Family, get_family
from .gpu import GpuInfo
from .memory import (
    CPU_RELATIVE_SPEED,
    LOADS_IN_WEIGHT_DTYPE,
    Choice,
    MemoryPlan,
    Workload,
    choose_memory_plan,
    estimate,
)
from .presets import Preset, get_preset

__all__ = [
    "BACKEND_OPTIMIZERS",
    "BACKEND_SCHEDULERS",
    "GpuInfo",
    "Hyperparameters",
    "MemoryPlan",
    "StepSchedule",
    "TrainingPlan",
    "accumulation_for",
    "backend_support_problems",
    "caption_cache_problems",
    "make_plan",
    "mixed_precision_for",
    "step_schedule",
]

OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor", "Prodigy")
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
BACKEND_OPTIMIZERS: dict[str, tuple[str, ...]] = {"kohya": OPTIMIZERS, "native": ("AdamW", "AdamW8bit")}
# Both backends take their schedules from diffusers'/transformers' `get_scheduler` (native/loop.py).
BACKEND_SCHEDULERS: dict[str, tuple[str, ...]] = {"kohya": SCHEDULERS, "native": SCHEDULERS}
BackendName = Literal["kohya", "native"]


def _nearest_64(value: int) -> str:
    low = max(256, (value // 64) * 64)
    high = min(1536, low + 64)
    return f"{low} or {high}" if low != high else str(low)


class Hyperparameters(BaseModel):
    """Everything the trainer needs to know about the optimisation. Validated with actionable messages."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    resolution: int = 1024
    learning_rate: float = 1e-4
    text_encoder_lr: float | None = None
    train_text_encoder: bool = False
    network_dim: int = 16
    network_alpha: float = 16
    optimizer: str = "AdamW"
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0)
    max_train_steps: int = 100
    epochs: int = 1
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    repeats: int = 1
    save_every_n_epochs: int = 1
    save_every_n_steps: int | None = None
    seed: int = 42
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    weighting_scheme: Literal["logit_normal", "mode", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    discrete_flow_shift: float | None = 3.0
    caption_dropout_rate: float = 0.0
    shuffle_caption: bool = False
    keep_tokens: int = 0
    flip_aug: bool = False

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: int) -> int:
        if not 256 <= v <= 1536:
            raise ValueError(f"resolution {v} is outside 256-1536 px: use 512 for quick tests, 1024 for SD3.5/SDXL")
        if v % 64:
            raise ValueError(f"resolution {v} is not a multiple of 64: use {_nearest_64(v)}")
        return v

    @field_validator("learning_rate", "text_encoder_lr")
    @classmethod
    def _lr(cls, v: float | None) -> float | None:
        if v is None:
            return v
        if not (1e-6 <= v <= 1e-2) or math.isnan(v):
            raise ValueError(
                f"learning rate {v:g} is outside 1e-6 to 1e-2: typical LoRA values are 1e-4 (fast) to 2e-5 (careful)"
            )
        return v

    @field_validator("max_train_steps", "epochs", "batch_size", "gradient_accumulation_steps", "repeats")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v <= 0:
            raise ValueError(f"{info.field_name} must be at least 1, not {v}")
        limits = {"batch_size": 64, "gradient_accumulation_steps": 64, "repeats": 1000, "max_train_steps": 1_000_000}
        limit = limits.get(info.field_name)
        if limit and v > limit:
            raise ValueError(f"{info.field_name} {v} is more than {limit}: that is almost certainly a typo")
        return v

    @field_validator("network_dim")
    @classmethod
    def _rank(cls, v: int) -> int:
        if not 1 <= v <= 256:
            raise ValueError(f"rank (network_dim) {v} is outside 1-256: 16 is a good start, 32-64 for fine detail")
        return v

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        if v not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {v!r}: choose one of {', '.join(OPTIMIZERS)}")
        return v

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown learning-rate scheduler {v!r}: choose one of {', '.join(SCHEDULERS)}")
        return v

    @field_validator("save_every_n_epochs")
    @classmethod
    def _save_epochs(cls, v: int) -> int:
        if v < 1:
            raise ValueError("save_every_n_epochs must be at least 1")
        return v

    @field_validator("save_every_n_steps")
    @classmethod
    def _save_steps(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("save_every_n_steps must be at least 1 (or left out)")
        return v

    @field_validator("caption_dropout_rate")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(
                f"caption_dropout_rate {v} must be between 0 and 1 (0 = off, the default; with frozen text encoders "
                "the Kohya backend caches their outputs, and sd-scripts refuses any caption dropout then)"
            )
        return v

    @field_validator("keep_tokens")
    @classmethod
    def _keep(cls, v: int) -> int:
        if v < 0:
            raise ValueError("keep_tokens cannot be negative")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Hyperparameters:
        if self.network_alpha <= 0 or self.network_alpha > 4 * self.network_dim:
            raise ValueError(
                f"network_alpha {self.network_alpha:g} must be above 0 and at most 4 x rank "
                f"({4 * self.network_dim}): set it equal to the rank ({self.network_dim}) or half of it"
            )
        if self.lr_warmup_steps >= self.max_train_steps and self.lr_warmup_steps > 0:
            raise ValueError(
                f"lr_warmup_steps {self.lr_warmup_steps} is not below max_train_steps {self.max_train_steps}: "
                "use about 5% of the steps"
            )
        return self


class TrainingPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    family: str
    preset: str
    output_name: str
    trigger: str | None = None
    dataset_dir: str
    num_images: int = Field(ge=1)
    steps_per_epoch: int = Field(default=1, ge=1)
    hyper: Hyperparameters
    memory: MemoryPlan
    gpu: GpuInfo | None = None
    explanations: list[str] = Field(default_factory=list)
    backend: BackendName | None = None

    @field_validator("output_name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            check_simple_name(v, what="output name")
        except UnsafePathError as exc:
            raise ValueError(str(exc)) from exc
        return v


def backend_support_problems(hyper: Hyperparameters, backend: str | None, memory: MemoryPlan | None = None) -> list[Problem]:
    """What `backend` cannot do of this plan (the backends call this in preflight too)."""
    if backend is None:
        return []
    found: list[Problem] = []
    opts = BACKEND_OPTIMIZERS.get(backend, OPTIMIZERS)
    if hyper.optimizer not in opts:
        found.append(
            Problem(
                f"the {backend} backend has no optimizer {hyper.optimizer!r}",
                path="$.hyper.optimizer",
                code="unsupported_optimizer",
                hint=f"use one of {', '.join(opts)}",
            )
        )
    scheds = BACKEND_SCHEDULERS.get(backend, SCHEDULERS)
    if hyper.lr_scheduler not in scheds:
        found.append(
            Problem(
                f"the {backend} backend has no scheduler {hyper.lr_scheduler!r}",
                path="$.hyper.lr_scheduler",
                code="unsupported_scheduler",
                hint=f"use one of {', '.join(scheds)}",
            )
        )
    if backend == "native" and hyper.train_text_encoder:
        found.append(
            Problem(
                "the native backend trains the diffusion model only, not the text encoders",
                path="$.hyper.train_text_encoder",
                code="unsupported_text_encoder_training",
                hint="use the kohya backend for the galerie preset, or choose atelier",
            )
        )
    if backend == "kohya" and memory is not None:
        found += caption_cache_problems(hyper, memory, backend)
    if backend == "native" and memory is not None and (memory.fp8_base or memory.blocks_to_swap):
        found.append(
            Problem(
                "the native backend cannot train on an fp8 base model or swap blocks to host RAM",
                path="$.memory",
                code="unsupported_memory_plan",
                hint="use the kohya backend for this GPU, or a larger GPU",
            )
        )
    return found


_MEMORY_OVERRIDES = ("fp8_base", "blocks_to_swap", "gradient_checkpointing", "use_8bit_optimizer")
CACHE_TE = "cache_text_encoder_outputs"
# sd-scripts' own words (sd3_train_network.py, sdxl_train_network.py, flux_train_network.py: assert_extra_args, on
# DatasetGroup.is_text_encoder_output_cacheable in library/train_util.py); tests/fixtures/kohya/sd_scripts_facts.json.
TE_CACHE_ASSERTION = ("when caching Text Encoder output, either caption_dropout_rate, shuffle_caption, "
                      "token_warmup_step or caption_tag_dropout_rate cannot be used")


def caption_cache_problems(hyper: Hyperparameters, memory: MemoryPlan, backend: str | None) -> list[Problem]:
    """Caption dropout or shuffling while the Kohya backend caches text-encoder outputs: sd-scripts refuses that
    combination at start-up (TE_CACHE_ASSERTION; the captions are encoded once, so neither could take effect).

    Refused rather than resolved silently: turning the cache off keeps every text encoder (T5-XXL alone 4.7 B
    parameters) loaded and running at every step, several GB more memory and slower steps, which the student
    should choose knowingly. The native backend drops captions on the cached outputs, so it is not affected."""
    if backend == "native" or not memory.cache_text_encoder_outputs:
        return []
    used = [f"caption_dropout_rate={hyper.caption_dropout_rate:g}"] if hyper.caption_dropout_rate > 0 else []
    used += ["shuffle_caption=true"] if hyper.shuffle_caption else []
    if not used:
        return []
    return [Problem(
        f"{' and '.join(used)} cannot be used while the text-encoder outputs are cached (the plan caches them "
        f"because the encoders are frozen); sd-scripts would stop at start-up with 'AssertionError: "
        f"{TE_CACHE_ASSERTION}'",
        path="$.hyper." + ("caption_dropout_rate" if hyper.caption_dropout_rate > 0 else "shuffle_caption"),
        code="caption_vs_text_encoder_cache",
        hint="either keep the cache and plan with `--set caption_dropout_rate=0 --set shuffle_caption=false`, or "
        f"plan with `--set {CACHE_TE}=false` (the text encoders then stay loaded while training: several GB "
        "more memory, which the plan estimates, and slower steps)"
        + ("; or use --backend native, which drops captions on the cached outputs" if backend is None else ""),
    )]


def _validation_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown setting {loc!r}"
        problems.append(Problem(msg, path=f"$.hyper.{loc}" if loc else "$.hyper", code="invalid_hyperparameter"))
    return problems


def _dataset(dataset: DatasetManifest | str | Path) -> tuple[DatasetManifest, str]:
    if isinstance(dataset, DatasetManifest):
        raise PlanError("make_plan needs the dataset folder, not only its manifest", hint="pass the folder path")
    folder = Path(dataset).expanduser().resolve()
    return load_manifest(folder), str(folder)


def _check_backend_knows(fam: Family, backend: BackendName | None) -> None:
    """Validation: the native backend trains only the families it was built for."""
    if backend == "native" and not fam.native_supported:
        native = [f.name for f in FAMILIES.values() if f.native_supported]
        raise PlanError(
            f"the native backend cannot train {fam.label}",
            hint=f"use --backend kohya, or a family the native backend knows: {', '.join(native)}",
        )


def _load_dataset(dataset: DatasetManifest | str | Path, *, require_card: bool) -> tuple[DatasetManifest, str]:
    """Validation: the prepared folder's manifest, its card allowing training, at least one image."""
    manifest, dataset_dir = _dataset(dataset)
    if require_card:
        card = load_card(Path(dataset_dir) / CARD_FILE)
        card_problems = card.problems()
        if card_problems:
            raise DatasetError("the dataset card does not allow training", problems=card_problems)
    if manifest.num_images == 0:
        raise DatasetError(f"the dataset in {dataset_dir} has no images", hint="prepare it again with images")
    return manifest, dataset_dir


def _resolve_values(
    fam: Family, pre: Preset, manifest: DatasetManifest, overrides: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The raw hyperparameters: family defaults < preset < dataset folder < the caller's overrides
    (memory overrides already taken out), and the explanation of each adjustment."""
    explanations: list[str] = [f"{pre.label}: {pre.explanation_en}"]
    values: dict[str, Any] = {"resolution": fam.default_resolution}
    values.update(pre.hyper)
    if fam.default_resolution < values["resolution"]:
        values["resolution"] = fam.default_resolution
        explanations.append(f"resolution {fam.default_resolution} px: {fam.label} was trained at that size")
    # The dataset's N_<name> folder says how often each image repeats (Kohya reads the folder name);
    # the preset's value only served as the default of `prepare --preset`.
    values["repeats"] = manifest.repeats
    values["discrete_flow_shift"] = fam.discrete_flow_shift
    if not fam.is_flow_matching:
        values["weighting_scheme"] = "uniform"
    if manifest.trigger:
        values.setdefault("keep_tokens", 1)
    if values.get("train_text_encoder") and not fam.trainable_text_encoders:
        values["train_text_encoder"] = False
    values.update(overrides)
    if values["repeats"] != manifest.repeats:
        explanations.append(
            f"repeats {values['repeats']} instead of the dataset folder's {manifest.repeats} "
            f"({manifest.subset_dir}): the backend passes it explicitly"
        )
    return values, explanations


def _validate_without_steps(values: dict[str, Any]) -> tuple[Hyperparameters, Any, Any]:
    """Validation of everything but the step count, which depends on the rest (a placeholder stands in).
    Returns the hyperparameters and the caller's explicit max_train_steps and epochs (None if not given)."""
    values = dict(values)
    explicit_steps = values.pop("max_train_steps", None)
    explicit_epochs = values.pop("epochs", None)
    try:
        hyper = Hyperparameters.model_validate({**values, "max_train_steps": 10**6, "epochs": 1})
    except ValidationError as exc:
        raise _plan_error(exc) from exc
    return hyper, explicit_steps, explicit_epochs


def mixed_precision_for(
    gpu: GpuInfo | None, family: Family | None = None
) -> tuple[Literal["bf16", "fp16", "no"], str | None]:
    """The mixed precision the card supports, with the explanation when it is not bf16. On the CPU: bf16 for the
    families whose Kohya script loads every part in that dtype (sd3/flux_train_network.py load_target_model: the
    issue-12 run peaked at 11.8 GB of host RAM in bf16 against 22.8 GB in fp32), else full precision."""
    if gpu is None and family is not None and family.name in LOADS_IN_WEIGHT_DTYPE:
        return "bf16", ("no GPU found or given: bf16 on the CPU (sd-scripts then loads the model, text encoders and "
                        "VAE in bf16, half the host RAM of fp32; only sensible for tiny test models)")
    if gpu is None:
        return "no", "no GPU found or given: full precision on the CPU (only sensible for tiny test models)"
    if not gpu.supports_bf16:
        return "fp16", f"fp16 mixed precision: {gpu.name} (compute {gpu.compute_capability}) has no bf16"
    return "bf16", None


def _search_memory(
    fam: Family,
    pre: Preset,
    hyper: Hyperparameters,
    num_images: int,
    gpu: GpuInfo | None,
    backend: BackendName | None,
    forced: dict[str, Any],
    *,
    cache_text_encoder_outputs: bool = True,
) -> tuple[MemoryPlan, Choice, Workload, list[str]]:
    """Memory search: refuse a card below the preset's minimum, else the cheapest memory plan that fits
    (memory.choose_memory_plan), the choice behind it, the workload it was estimated for and its notes."""
    work = Workload(
        family=fam,
        resolution=hyper.resolution,
        batch_size=hyper.batch_size,
        network_dim=hyper.network_dim,
        optimizer=hyper.optimizer,
        train_text_encoder=hyper.train_text_encoder,
        num_images=num_images,
        steps=pre.target_steps,
        mixed_precision=hyper.mixed_precision,
        backend=backend,
        on_gpu=gpu is not None,
        cache_text_encoder_outputs=cache_text_encoder_outputs,
    )
    if gpu is not None and pre.min_vram_gb and gpu.vram_gb < pre.min_vram_gb:
        raise PlanError(
            f"the preset {pre.label_de!r} needs a GPU with at least {pre.min_vram_gb:g} GB; {gpu.name} has "
            f"{gpu.vram_gb:g} GB",
            hint="choose 'atelier' or 'fotostudio', or a larger GPU",
        )
    memory, choice, notes = choose_memory_plan(work, gpu, backend=backend, forced=forced)
    if not cache_text_encoder_outputs and not hyper.train_text_encoder:
        notes.append(f"{CACHE_TE}=false as requested: the text encoders stay loaded and encode each caption at "
                     "every step (more memory, slower; needed for caption dropout or shuffling with Kohya)")
    return memory, choice, work, notes


def accumulation_for(hyper: Hyperparameters, batch: int) -> tuple[int, str | None]:
    """Gradient accumulation that keeps the requested effective batch when memory forced a smaller
    batch, with the explanation when the batch changed."""
    accumulation = hyper.gradient_accumulation_steps * max(1, hyper.batch_size // batch)
    if batch == hyper.batch_size:
        return accumulation, None
    return accumulation, (
        f"batch size {batch} with {accumulation} accumulation steps: same effective batch "
        f"({hyper.batch_size * hyper.gradient_accumulation_steps}) in less memory"
    )


@dataclass(frozen=True)
class StepSchedule:
    """Step arithmetic of a plan: optimizer steps per epoch, epochs, total steps, and why."""

    steps_per_epoch: int
    epochs: int
    max_steps: int
    explanation: str


def step_schedule(
    num_images: int,
    repeats: int,
    batch: int,
    accumulation: int,
    target_steps: int,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    whole_epochs: bool = False,
) -> StepSchedule:
    """Kohya counts optimizer steps; an epoch is every image seen `repeats` times. Explicit `steps` win
    (with `whole_epochs`, rounded up to an epoch's end), then explicit `epochs`, else the epoch count nearest
    the preset's `target_steps` (at least one)."""
    per_epoch = max(1, math.ceil(math.ceil(num_images * repeats / batch) / accumulation))
    if steps is not None:
        requested = int(steps)
        n_epochs = max(1, math.ceil(requested / per_epoch))
        max_steps = n_epochs * per_epoch if whole_epochs and requested > 0 else requested  # 0 is refused later
        why = f"{max_steps} steps as requested ({n_epochs} epochs of {per_epoch} steps)"
        if max_steps != requested:
            # sd-scripts resumes at epoch starts only and restarts its step count per attempt (train_network.py):
            # a plan ending mid-epoch would end at the epoch's end after a resume, so the plan ends there always.
            why = (f"{max_steps} steps: the {requested} requested, rounded up to {n_epochs} whole epochs of "
                   f"{per_epoch} steps, because sd-scripts resumes only at an epoch's start and a cancelled and "
                   f"resumed run must end where planned (the native backend keeps {requested}: --backend native)")
    elif epochs is not None:
        n_epochs = int(epochs)
        max_steps = n_epochs * per_epoch
        why = f"{n_epochs} epochs as requested = {max_steps} steps"
    else:
        n_epochs = max(1, round(target_steps / per_epoch))
        max_steps = n_epochs * per_epoch
        why = (
            f"{n_epochs} epochs x {per_epoch} steps = {max_steps} steps: {num_images} images x {repeats} repeats "
            f"/ batch {batch * accumulation}, aiming at about {target_steps} steps for this preset"
        )
    return StepSchedule(steps_per_epoch=per_epoch, epochs=n_epochs, max_steps=max_steps, explanation=why)


def _final_hyperparameters(
    hyper: Hyperparameters, batch: int, accumulation: int, schedule: StepSchedule
) -> Hyperparameters:
    """Validation of the finished hyperparameters: the memory search's batch, the step arithmetic,
    saving no less often than once per run, warm-up shortened to a tenth when it would not end."""
    final_values = hyper.model_dump()
    final_values.update(
        batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_train_steps=schedule.max_steps,
        epochs=schedule.epochs,
        save_every_n_epochs=min(hyper.save_every_n_epochs, schedule.epochs),
    )
    if final_values["lr_warmup_steps"] >= schedule.max_steps:
        final_values["lr_warmup_steps"] = max(0, schedule.max_steps // 10)
    try:
        return Hyperparameters.model_validate(final_values)
    except ValidationError as exc:
        raise _plan_error(exc) from exc


def _with_wall_time(
    memory: MemoryPlan, work: Workload, choice: Choice, gpu: GpuInfo | None, hyper: Hyperparameters
) -> MemoryPlan:
    """The memory plan with its wall-time estimate refined by the real step count and batch."""
    speed = (gpu.relative_speed * gpu.count) if gpu else CPU_RELATIVE_SPEED
    final_work = replace(
        work, steps=hyper.max_train_steps, batch_size=hyper.batch_size, accumulation=hyper.gradient_accumulation_steps
    )
    est = estimate(final_work, choice, gpu_speed=speed)
    return memory.model_copy(update={"estimated_wall_time_s": est.wall_time_s})


def _text_encoder_note(fam: Family, hyper: Hyperparameters) -> str | None:
    if not hyper.train_text_encoder:
        return None
    return (
        f"text encoders ({', '.join(fam.trainable_text_encoders)}) are trained too, at learning rate "
        f"{hyper.text_encoder_lr or hyper.learning_rate:g}, so the model learns new words"
    )


def make_plan(
    family: str,
    preset: str,
    dataset: str | Path,
    *,
    gpu: GpuInfo | None = None,
    overrides: dict[str, Any] | None = None,
    backend: BackendName | None = None,
    output_name: str | None = None,
    require_card: bool = True,
) -> TrainingPlan:
    """Resolve a plan for a prepared dataset folder; PlanError/DatasetError with what to change otherwise.
    The parts run in order: validation (backend, dataset, hyperparameters), memory search, step
    arithmetic, final validation; each adds its line to the explanations."""
    fam = get_family(family)
    pre = get_preset(preset)
    _check_backend_knows(fam, backend)
    manifest, dataset_dir = _load_dataset(dataset, require_card=require_card)
    n = manifest.num_images
    overrides = dict(overrides or {})
    memory_overrides = {k: overrides.pop(k) for k in _MEMORY_OVERRIDES if k in overrides}
    cache_te = overrides.pop(CACHE_TE, True)
    if not isinstance(cache_te, bool):
        raise PlanError(f"{CACHE_TE} must be true or false, not {cache_te!r}", hint=f"--set {CACHE_TE}=false")

    values, explanations = _resolve_values(fam, pre, manifest, overrides)
    hyper, explicit_steps, explicit_epochs = _validate_without_steps(values)
    mixed, note = mixed_precision_for(gpu, fam)
    explanations.extend([note] if note else [])
    if "mixed_precision" not in overrides:
        hyper.mixed_precision = mixed

    memory, choice, work, notes = _search_memory(fam, pre, hyper, n, gpu, backend, memory_overrides,
                                                 cache_text_encoder_outputs=cache_te)
    explanations.extend(notes)
    batch = choice.batch_size
    accumulation, note = accumulation_for(hyper, batch)
    explanations.extend([note] if note else [])

    schedule = step_schedule(
        n, hyper.repeats, batch, accumulation, pre.target_steps, steps=explicit_steps, epochs=explicit_epochs,
        whole_epochs=backend != "native",  # a plan without a backend may run on Kohya
    )
    explanations.append(schedule.explanation)
    hyper = _final_hyperparameters(hyper, batch, accumulation, schedule)

    problems = caption_cache_problems(hyper, memory, backend)
    if problems:
        raise PlanError(problems[0].message, hint=problems[0].hint, problems=problems)
    problems = backend_support_problems(hyper, backend, memory)
    if problems:
        raise PlanError(f"this plan does not suit the {backend} backend", problems=problems)
    memory = _with_wall_time(memory, work, choice, gpu, hyper)

    name = _safe_output_name(output_name or manifest.trigger or manifest.name)
    note = _text_encoder_note(fam, hyper)
    explanations.extend([note] if note else [])
    return TrainingPlan(
        family=fam.name,
        preset=pre.name,
        output_name=name,
        trigger=manifest.trigger,
        dataset_dir=dataset_dir,
        num_images=n,
        steps_per_epoch=schedule.steps_per_epoch,
        hyper=hyper,
        memory=memory,
        gpu=gpu,
        explanations=explanations,
        backend=backend,
    )


def _plan_error(exc: ValidationError) -> PlanError:
    return PlanError(
        "the training settings are not valid",
        hint="change the settings below (--set key=value) or pick another preset",
        problems=_validation_problems(exc),
    )


def _safe_output_name(name: str) -> str:
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._-") or "lora"
    return check_simple_name(cleaned[:100], what="output name")
