"""Peak-memory and wall-time estimator, and the search for the cheapest memory plan that fits a GPU.

Every figure here is an *estimate* from the model below, not a measurement: the plan and the CLI say so.
All sizes are GiB (2**30 bytes), parameter counts are in billions (families.py).

Training peak (GPU):
    weights   = P_model * b * (1 - s / D) + [s > 0] * P_model * b / D   (b = 1 for fp8 base else 2;
                s swapped blocks of D; one extra block is resident as the swap buffer)
              + text encoders the step still runs: trained CLIPs in bf16 and, when a T5 family trains its
                text encoders, T5 at b; SD1.5's CLIP-L always (sd-scripts' train_network.py cannot cache
                its outputs); every encoder (T5 at b) when the plan turns caching off (caption dropout or
                shuffling with the Kohya backend, plan.py); otherwise encoder outputs are cached and freed
    lora      = N_lora * (4 weight + 4 grad + k_opt)    k_opt: AdamW 8, AdamW8bit 2, Adafactor 2, Prodigy 16 bytes
                N_lora = 46 * r * hidden * depth  (+ 18 * r * width * layers for each trained CLIP)
    acts      per sample, in bytes:
      MMDiT/FLUX  T * hidden * 40 * depth                without gradient checkpointing
                  T * hidden * (2 * depth + 40)          with it (block inputs + one block recomputed)
                  T = (resolution / 16)**2 image tokens + text tokens (333 for SD3 joint attention, 512 FLUX);
                  40 bytes/token/width/block is a block's bf16 attention+MLP intermediates with SDPA
      UNet        P * C * 80  without checkpointing,  P * C * 40  with it
                  P = (resolution / 8)**2 latent positions of the first level; C = channels x blocks per
                  first-level position, summed over the levels (each level has 1/4 of the positions of the
                  one above): SD1.5 5760 (320/640/1280/1280 channels, 10/10/10/8 blocks), SDXL 9360
                  (320/640/1280 channels, 5/15/67 blocks counting each transformer layer)
    overhead  = 2.5 + 0.02 * weights          CUDA context with cuDNN/cuBLAS, workspaces, and what the
                                              caching allocator holds between steps (nvidia-smi shows it)
Caching peak (before training): text-encoder weights (b) + VAE + VAE encoder activations
(2.5 * (resolution/1024)**2) + 1.5. The estimated peak is the larger of the two.

Held to the published figures (../shared/DESIGN.md section 4; tests/test_memory_published.py) within 25%:
the SD3.5 Kohya setup guide's budgets (SD3.5 Large 18-22 GB: 20.3; SD1.5 8-12: 6.4 and SDXL 16-20: 20.1,
both read as its recipe at batch 1 without checkpointing) and the RTX 5080 table of the Kohya TOML guide
(SD1.5-class, checkpointing, AdamW8bit: 13.7 for 15, 12.0 for 13, 12.8-16.8 for 14, 12.5-19.6 for 15).
What changed to get there, and why: UNet activations were counted on 16-px tokens like the MMDiT's,
a quarter of a UNet's first-level positions, with the MMDiT's width and depth (SD1.5 at 512 px, batch 10:
4.7 GB against the table's 15); they are now counted on 8-px positions per channel-block, at 40 bytes with
checkpointing as the table implies (about 1 GB per 512-px sample; with --sdpa, which our Kohya runs pass,
sd-scripts may need less, but a plan must not promise less than the guides) and twice that without it. The fixed overhead rose from 1.5 to 2.5 GB
(and its weights share fell from 8 to 2%, keeping SD3.5 Large where it was): small models came out 2-3 GB
under every published figure. SD1.5's text encoder stays on the GPU (above).

Fit: peak <= vram - margin, margin = max(1.5, 0.15 * vram). The planner tries every combination of
gradient checkpointing, halving the batch (gradient accumulation keeps the effective batch), the 8-bit
optimizer, an fp8 base model and swapping blocks to host RAM, and takes the cheapest that fits
(cost: checkpointing 3, each batch halving 1, 8-bit optimizer 2, fp8 base 4, block swap 6 + 0.5 per block).
For SD3.5 Large, Atelier preset (1024 px, rank 32, batch 2) this gives, by design and tested:
    80 GB: nothing needed (bf16 base, no checkpointing, batch 2)
    32 GB: gradient checkpointing; bf16 base, batch 2
    24 GB: gradient checkpointing + 8-bit optimizer, batch 1 (accumulation 2); bf16 base kept
    16 GB: gradient checkpointing + fp8 base, batch 1 (accumulation 2)
    12 GB: the 16 GB plan plus blocks swapped to host RAM
    8 GB: refused (PlanError naming the first smaller family that fits, sd15, and the smallest card that fits)
Host RAM: every part is loaded on the host first, so the host peak is the sum over the parts (model, text encoders,
VAE) of params x the bytes of the dtype the trainer loads that part in (`loaded_bytes`), plus HOST_OVERHEAD_GB for
Python, torch and the trainer itself (and HOST_CUDA_GB for the CUDA runtime on a GPU). Swapped blocks stay in that
host copy, so they add nothing. The dtypes, from the pinned sd-scripts source: `sd3_train_network.py` and
`flux_train_network.py` `load_target_model` load the MMDiT/FLUX model, CLIP-L, CLIP-G, T5-XXL and the VAE in the
weight dtype of `train_util.prepare_dtype` (fp32 for mixed_precision "no", else bf16/fp16), except that with
fp8_base the model and T5 load as stored in their files (counted as 16-bit, the usual release) and are cast to fp8
afterwards; SD1.5/SDXL (`train_util.load_target_model`, `sdxl_train_util._load_target_model`) load in fp32 unless
full_fp16/full_bf16, which we never pass. The native backend computes in fp32 on the CPU (native/backend.py).
Held to the measured CPU runs of the issue-12 trainer (tests/test_memory_host.py): full-size SD3.5 encoders and VAE
with a depth-2 MMDiT peaked at 22.8 GB in fp32 and 11.8 GB in bf16; the estimate is within HOST_TOLERANCE of both.
Wall time: steps * s_ref * (resolution / 1024)**2 * batch * accumulation / speed * penalties
(checkpointing 1.3, fp8 1.1, swap 1 + 0.04 per block, text-encoder training 1.15) + 120 s loading +
0.5 s per image for caching. s_ref is the family's s/step at 1024 px on an RTX 4090 (speed 1.0).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import PlanError
from .families import TEXT_ENCODER_PARAMS_B, Family
from .gpu import GpuInfo

GIB = 2**30
OPTIMIZER_STATE_BYTES: dict[str, float] = {"AdamW": 8, "AdamW8bit": 2, "Adafactor": 2, "Prodigy": 16}
CLIP_SHAPES: dict[str, tuple[int, int]] = {"clip_l": (768, 12), "clip_g": (1280, 32)}  # width, layers
TEXT_TOKENS: dict[str, int] = {"sd35_large": 333, "sd35_medium": 333, "flux_dev": 512}
# UNets: sum over blocks of channels x positions relative to the first level (module docstring).
UNET_CHANNEL_BLOCKS: dict[str, int] = {"sd15": 5760, "sdxl": 9360}
UNET_BYTES_CHECKPOINTED = 40.0
UNET_BYTES_FULL = 80.0
# sd-scripts' train_network.py (SD1.5) has no text-encoder output cache: CLIP-L stays on the GPU while training.
TEXT_ENCODERS_STAY_LOADED = frozenset({"sd15"})
CPU_RELATIVE_SPEED = 0.01
HOST_OVERHEAD_GB = 1.0  # Python, torch, sd-scripts' own state: calibrated on the measured CPU runs (docstring)
HOST_CUDA_GB = 1.0  # the CUDA runtime's host side on a GPU machine (not measured here)
HOST_TOLERANCE = 0.10  # tests/test_memory_host.py holds the host estimate to the measured runs within this
# Families whose Kohya script loads every part in the mixed-precision dtype (sd3/flux_train_network.py
# load_target_model); the UNet scripts load in fp32 (module docstring).
LOADS_IN_WEIGHT_DTYPE = frozenset({"sd35_large", "sd35_medium", "flux_dev"})
# Where to point a student whose card is too small, nearest first.
SMALLER_FAMILY: dict[str, tuple[str, ...]] = {
    "sd35_large": ("sd35_medium", "sdxl", "sd15"),
    "flux_dev": ("sd35_medium", "sdxl", "sd15"),
    "sd35_medium": ("sdxl", "sd15"),
    "sdxl": ("sd15",),
}


ESTIMATE_TOLERANCE = 0.25  # tests/test_memory_published.py holds the model to the published figures within this
ESTIMATE_BASIS = (
    "estimates from the memory model documented in devserver_lora/train/memory.py (within "
    f"{ESTIMATE_TOLERANCE:.0%} of the published Kohya guide figures; real use varies with driver, attention kernel "
    "and allocator), not measurements"
)


class MemoryPlan(BaseModel):
    """What the trainer must do so that the run fits, and what we expect it to use (estimates: ESTIMATE_BASIS)."""

    model_config = ConfigDict(extra="forbid")

    fp8_base: bool = False
    blocks_to_swap: int = Field(default=0, ge=0)
    gradient_checkpointing: bool = False
    cache_text_encoder_outputs: bool = True
    cache_text_encoder_outputs_to_disk: bool = True
    cache_latents: bool = True
    cache_latents_to_disk: bool = True
    use_8bit_optimizer: bool = False
    estimated_peak_vram_gb: float = 0.0
    estimated_host_ram_gb: float = 0.0
    estimated_wall_time_s: float = 0.0
    vram_gb: float | None = None
    margin_gb: float = 0.0
    breakdown_gb: dict[str, float] = Field(default_factory=dict)
    estimate_basis: str = ESTIMATE_BASIS


@dataclass(frozen=True)
class Workload:
    family: Family
    resolution: int
    batch_size: int
    network_dim: int
    optimizer: str
    train_text_encoder: bool
    num_images: int
    steps: int
    accumulation: int = 1
    # What decides the host-RAM estimate (module docstring): the precision, the backend, whether a GPU is used,
    # and whether the frozen text encoders are cached (else they stay loaded while training).
    mixed_precision: str = "bf16"
    backend: str | None = None
    on_gpu: bool = True
    cache_text_encoder_outputs: bool = True
    # The diffusion model's real size when it is not the family's (a test-sized checkpoint), in billions.
    model_params_b: float | None = None


@dataclass(frozen=True)
class Choice:
    gradient_checkpointing: bool = False
    batch_size: int = 1
    use_8bit_optimizer: bool = False
    fp8_base: bool = False
    blocks_to_swap: int = 0

    def cost(self, preset_batch: int) -> float:
        halvings = math.log2(max(1, preset_batch) / self.batch_size) if self.batch_size else 0
        return (
            3 * self.gradient_checkpointing
            + halvings
            + 2 * self.use_8bit_optimizer
            + 4 * self.fp8_base
            + (6 + 0.5 * self.blocks_to_swap if self.blocks_to_swap else 0)
        )


@dataclass
class Estimate:
    peak_gb: float
    train_gb: float
    cache_gb: float
    host_ram_gb: float
    wall_time_s: float
    breakdown: dict[str, float] = field(default_factory=dict)


def margin_for(vram_gb: float) -> float:
    return round(max(1.5, 0.15 * vram_gb), 2)


def image_tokens(family: Family, resolution: int) -> int:
    """Positions of the model's first level: 16-px patches for the MMDiT and FLUX, 8-px latents for UNets."""
    return (resolution // (family.latent_downscale * family.patch_size)) ** 2


def activation_bytes(family: Family, resolution: int, *, checkpointing: bool) -> float:
    """Bytes of activations one sample keeps for the backward pass (see the module docstring)."""
    if family.name in UNET_CHANNEL_BLOCKS:
        per = UNET_BYTES_CHECKPOINTED if checkpointing else UNET_BYTES_FULL
        return image_tokens(family, resolution) * UNET_CHANNEL_BLOCKS[family.name] * per
    tokens = image_tokens(family, resolution) + TEXT_TOKENS.get(family.name, 0)
    per_width_blocks = (2 * family.depth + 40) if checkpointing else 40 * family.depth
    return tokens * family.hidden_size * per_width_blocks


def lora_params(family: Family, rank: int, train_text_encoder: bool) -> float:
    n = 46.0 * rank * family.hidden_size * family.depth
    if train_text_encoder:
        for te in family.trainable_text_encoders:
            width, layers = CLIP_SHAPES.get(te, (0, 0))
            n += 18.0 * rank * width * layers
    return n


def loaded_bytes(work: Workload, part: str, *, fp8_base: bool) -> float:
    """Bytes per parameter of `part` ("model", "t5xxl", "clip_l", "clip_g", "vae") as the trainer loads it on the
    host (module docstring: which sd-scripts function says so)."""
    weight = 4.0 if work.mixed_precision == "no" else 2.0  # train_util.prepare_dtype
    if work.backend == "native":
        return weight if work.on_gpu else 4.0  # native/backend.py: fp32 on the CPU
    if work.family.name not in LOADS_IN_WEIGHT_DTYPE:
        return 4.0
    if fp8_base and part in ("model", "t5xxl"):
        return 2.0  # loaded as stored (a 16-bit file), cast to fp8 afterwards
    return weight


def host_ram_gb(work: Workload, *, fp8_base: bool = False) -> float:
    """Estimated peak host RAM (GB): every part loaded on the host at once, in its loaded dtype, plus overhead."""
    fam = work.family
    model_b = fam.model_params_b if work.model_params_b is None else work.model_params_b
    parts: dict[str, float] = {"model": model_b, "vae": fam.vae_params_b}
    parts.update({t: TEXT_ENCODER_PARAMS_B[t] for t in fam.text_encoders})
    if work.backend is None:  # not decided yet: the larger of both backends' needs
        both = [host_ram_gb(Workload(**{**work.__dict__, "backend": b}), fp8_base=fp8_base) for b in ("kohya", "native")]
        return max(both)
    total = sum(params * 1e9 * loaded_bytes(work, part, fp8_base=fp8_base) for part, params in parts.items())
    return round(total / GIB + HOST_OVERHEAD_GB + (HOST_CUDA_GB if work.on_gpu else 0.0), 1)


def estimate(work: Workload, choice: Choice, *, gpu_speed: float = 1.0) -> Estimate:
    fam = work.family
    b = 1.0 if choice.fp8_base else 2.0
    p_model = fam.model_params_b * 1e9
    swap = min(choice.blocks_to_swap, fam.swappable_blocks)
    per_block = p_model * b / fam.depth
    model_w = p_model * b * (1 - swap / fam.depth) + (per_block if swap else 0.0)
    te_w = 0.0
    if work.train_text_encoder:
        te_w += sum(TEXT_ENCODER_PARAMS_B[t] * 1e9 * 2 for t in fam.trainable_text_encoders)
        if fam.uses_t5:
            te_w += TEXT_ENCODER_PARAMS_B["t5xxl"] * 1e9 * b
    elif fam.name in TEXT_ENCODERS_STAY_LOADED:
        te_w += sum(TEXT_ENCODER_PARAMS_B[t] for t in fam.text_encoders) * 1e9 * 2
    elif not work.cache_text_encoder_outputs:  # frozen but not cached: every caption is encoded at every step
        te_w += sum(TEXT_ENCODER_PARAMS_B[t] * 1e9 * (b if t == "t5xxl" else 2) for t in fam.text_encoders)
    weights = (model_w + te_w) / GIB
    optimizer = "AdamW8bit" if choice.use_8bit_optimizer else work.optimizer
    lora = lora_params(fam, work.network_dim, work.train_text_encoder) * (8 + OPTIMIZER_STATE_BYTES[optimizer]) / GIB
    acts = choice.batch_size * activation_bytes(fam, work.resolution, checkpointing=choice.gradient_checkpointing) / GIB
    if work.train_text_encoder:
        acts += choice.batch_size * 77 * 1280 * 32 * 40 / GIB
    overhead = 2.5 + 0.02 * weights
    train = weights + lora + acts + overhead
    te_all = sum(TEXT_ENCODER_PARAMS_B[t] for t in fam.text_encoders) * 1e9 * b / GIB
    cache = te_all + fam.vae_params_b * 1e9 * 2 / GIB + 2.5 * (work.resolution / 1024) ** 2 + 1.5
    host = host_ram_gb(work, fp8_base=choice.fp8_base)
    speed = max(gpu_speed, 1e-6)
    s_step = fam.ref_s_per_step_1024 * (work.resolution / 1024) ** 2 * choice.batch_size
    s_step *= work.accumulation / speed
    s_step *= 1.3 if choice.gradient_checkpointing else 1.0
    s_step *= 1.1 if choice.fp8_base else 1.0
    s_step *= 1 + 0.04 * swap
    s_step *= 1.15 if work.train_text_encoder else 1.0
    wall = work.steps * s_step + 120 + 0.5 * work.num_images
    breakdown = {
        "weights": round(weights, 2),
        "lora_and_optimizer": round(lora, 2),
        "activations": round(acts, 2),
        "overhead": round(overhead, 2),
        "caching_phase": round(cache, 2),
    }
    return Estimate(
        peak_gb=round(max(train, cache), 2),
        train_gb=round(train, 2),
        cache_gb=round(cache, 2),
        host_ram_gb=host,
        wall_time_s=round(wall, 0),
        breakdown=breakdown,
    )


def _batches(preset_batch: int) -> list[int]:
    out = []
    b = max(1, preset_batch)
    while b >= 1:
        out.append(b)
        if b == 1:
            break
        b = max(1, b // 2)
    return out


def candidate_choices(
    work: Workload, *, allow_fp8: bool = True, allow_swap: bool = True, allow_8bit: bool = True
) -> list[Choice]:
    fam = work.family
    swaps = [0]
    if allow_swap and fam.swappable_blocks:
        swaps += list(range(2, fam.swappable_blocks + 1, 2))
    eight = [False, True] if allow_8bit and work.optimizer == "AdamW" else [False]
    fp8 = [False, True] if allow_fp8 else [False]
    return [
        Choice(gradient_checkpointing=ckpt, batch_size=bs, use_8bit_optimizer=o8, fp8_base=f8, blocks_to_swap=sw)
        for ckpt, bs, o8, f8, sw in itertools.product([False, True], _batches(work.batch_size), eight, fp8, swaps)
    ]


def cheapest_fit(
    work: Workload, budget_gb: float, candidates: list[Choice], *, gpu_speed: float = 1.0
) -> tuple[Choice, Estimate] | None:
    """The lowest-cost choice whose peak fits `budget_gb` (ties: lower peak), or None."""
    best: tuple[float, float, Choice, Estimate] | None = None
    for choice in candidates:
        est = estimate(work, choice, gpu_speed=gpu_speed)
        if est.peak_gb > budget_gb:
            continue
        key = (choice.cost(work.batch_size), est.peak_gb)
        if best is None or key < best[:2]:
            best = (key[0], key[1], choice, est)
    return (best[2], best[3]) if best else None


def smallest_peak(work: Workload, candidates: list[Choice]) -> tuple[Choice, Estimate]:
    pairs = [(c, estimate(work, c)) for c in candidates]
    return min(pairs, key=lambda p: p[1].peak_gb)


def choose_memory_plan(
    work: Workload,
    gpu: GpuInfo | None,
    *,
    backend: str | None = None,
    forced: dict[str, Any] | None = None,
) -> tuple[MemoryPlan, Choice, list[str]]:
    """The cheapest memory plan whose estimated peak fits `gpu` with the margin, the choice behind it,
    and one line of explanation per decision. PlanError with the reason and what would fit otherwise.
    `forced` pins choices (fp8_base, blocks_to_swap, gradient_checkpointing, use_8bit_optimizer)."""
    explanations: list[str] = []
    forced = forced or {}
    fam = work.family
    # sd-scripts' train_network.py (SD1.5) has no text-encoder output cache; the plan may turn caching off.
    cache_te = not work.train_text_encoder and fam.name not in TEXT_ENCODERS_STAY_LOADED and \
        work.cache_text_encoder_outputs
    # The native backend has neither an fp8 base nor block swapping.
    allow = {"allow_fp8": backend != "native", "allow_swap": backend != "native", "allow_8bit": gpu is not None}
    candidates = candidate_choices(work, **allow)
    for key, val in forced.items():
        candidates = [c for c in candidates if getattr(c, key) == val]
    if not candidates:
        raise PlanError(
            f"the memory settings {forced} are not possible for {fam.label} with this backend",
            hint="leave them out and let the plan choose",
        )
    if gpu is None:
        choice = min(candidates, key=lambda c: (c.cost(work.batch_size), c.blocks_to_swap))
        est = estimate(work, choice, gpu_speed=CPU_RELATIVE_SPEED)
        vram, margin = None, 0.0
    else:
        vram = gpu.vram_gb
        margin = margin_for(vram)
        fit = cheapest_fit(work, vram - margin, candidates, gpu_speed=gpu.relative_speed * gpu.count)
        if fit is None:
            raise _no_fit(work, gpu, margin, candidates, allow)
        choice, est = fit
    plan = MemoryPlan(
        fp8_base=choice.fp8_base,
        blocks_to_swap=choice.blocks_to_swap,
        gradient_checkpointing=choice.gradient_checkpointing,
        cache_text_encoder_outputs=cache_te,
        cache_text_encoder_outputs_to_disk=cache_te,
        cache_latents=True,
        cache_latents_to_disk=True,
        use_8bit_optimizer=choice.use_8bit_optimizer,
        estimated_peak_vram_gb=est.peak_gb,
        estimated_host_ram_gb=est.host_ram_gb,
        estimated_wall_time_s=est.wall_time_s,
        vram_gb=vram,
        margin_gb=margin,
        breakdown_gb=est.breakdown,
    )
    where = f"{gpu.name} ({vram:g} GB, keeping {margin:g} GB spare)" if gpu else "the CPU"
    loaded = "32-bit" if loaded_bytes(work, "clip_l", fp8_base=False) == 4 else "16-bit"
    explanations.append(f"estimated peak {est.peak_gb:.1f} GB on {where}; host RAM about {est.host_ram_gb:.0f} GB "
                        f"with the weights loaded in {loaded} ({ESTIMATE_BASIS})")
    explanations.append(
        "gradient checkpointing on: recomputes activations instead of storing them (about 30% slower, far less memory)"
        if choice.gradient_checkpointing
        else "gradient checkpointing off: there is room to keep activations, which is faster"
    )
    if choice.fp8_base:
        explanations.append("fp8 base model: the frozen weights are stored in 8 bits, halving their memory")
    else:
        explanations.append("base model in 16 bits: the best quality, and it fits")
    if choice.blocks_to_swap:
        explanations.append(
            f"{choice.blocks_to_swap} of {fam.depth} blocks swapped to host RAM while not in use (slower, fits smaller cards)"
        )
    if choice.use_8bit_optimizer:
        explanations.append("8-bit AdamW: the optimizer state takes a quarter of the memory")
    if cache_te:
        explanations.append("text-encoder outputs cached once to disk and the encoders freed")
    elif work.train_text_encoder:
        explanations.append("text encoders stay loaded because they are trained")
    elif fam.name in TEXT_ENCODERS_STAY_LOADED:
        explanations.append(f"the text encoder stays loaded: sd-scripts caches no text-encoder outputs for {fam.label}")
    else:
        explanations.append("text encoders stay loaded and encode every caption at every step (caching is off), "
                            "which the estimate counts")
    explanations.append("latents cached once to disk, so the VAE is not needed while training and a resume is quick")
    return plan, choice, explanations


def _no_fit(
    work: Workload, gpu: GpuInfo, margin: float, candidates: list[Choice], allow: dict[str, bool]
) -> PlanError:
    fam = work.family
    best_choice, best = smallest_peak(work, candidates)
    need = best.peak_gb + margin_for(best.peak_gb / 0.85)
    suggestions: list[str] = []
    for res in (768, 512):
        if res < work.resolution:
            smaller = Workload(**{**work.__dict__, "resolution": res})
            if cheapest_fit(smaller, gpu.vram_gb - margin, candidate_choices(smaller, **allow)) is not None:
                suggestions.append(f"--set resolution={res}")
                break
    if work.train_text_encoder:
        smaller = Workload(**{**work.__dict__, "train_text_encoder": False})
        if cheapest_fit(smaller, gpu.vram_gb - margin, candidate_choices(smaller, **allow)) is not None:
            suggestions.append("the 'atelier' preset (no text-encoder training)")
    from .families import get_family

    for alt in SMALLER_FAMILY.get(fam.name, ()):
        # A plan for that family trains at most at its own resolution (make_plan caps it), so judge it there.
        other = get_family(alt)
        smaller = Workload(**{**work.__dict__, "family": other, "resolution": min(work.resolution,
                                                                                  other.default_resolution)})
        if cheapest_fit(smaller, gpu.vram_gb - margin, candidate_choices(smaller, **allow)) is not None:
            suggestions.append(f"--family {alt}")
            break
    suggestions.append(f"a GPU with at least {math.ceil(need)} GB")
    phase = (
        "caching the text-encoder outputs (the encoders must sit on the GPU once)"
        if best.cache_gb >= best.train_gb
        else "training"
    )
    return PlanError(
        f"{fam.label} at {work.resolution} px does not fit {gpu.name} ({gpu.vram_gb:g} GB): even with every "
        f"memory saving, {phase} needs about {best.peak_gb:.1f} GB, and {margin:g} GB must stay free",
        hint="what would fit: " + "; or ".join(suggestions),
    )
