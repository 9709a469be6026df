"""Generate what sd-scripts runs from a TrainingPlan: `dataset.toml`, a flat `config.toml`, and the argv list.

Every key we write is checked against recorded data before anything starts:
dataset keys against sd-scripts' voluptuous schema (data/dataset_schema.json), flags
against the flag list recorded from `sd3_train_network.py --help` at the pin
(data/sd3_train_network_flags.json). sd-scripts does NOT check `--config_file`
keys, so a typo there would be silently ignored: that is why we check them.

Other families: `sdxl_train_network.py`, `train_network.py` and `flux_train_network.py`
share sd-scripts' common argument groups (train_util / train_network), which are
the recorded SD3 list minus the SD3-only flags below; their family-specific flags
come from sd-scripts' source (data/family_flags.json says which commit) and are
not recorded from a run, so we emit as few of them as training needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from ...errors import DatasetError, PlanError, Problem
from ...invocation import train_command
from ..families import Family, get_family
from .flags import SD3_IGNORED_FLAGS, dataset_config_problems, sd3_flags
from .models import ModelFiles, checkpoint_depth

if TYPE_CHECKING:
    from ..plan import Hyperparameters, TrainingPlan

_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}

# Families whose script reads --sdpa: train_network.py and sdxl_train_network.py `load_target_model` pass it to
# train_util.replace_unet_modules; sd3_train_network.py and flux_train_network.py override load_target_model and
# read it nowhere (their attention is plain torch SDPA already), so it is not written for them.
SDPA_READERS = frozenset({"sd15", "sdxl"})
# library/sd3_models.py, MMDiT.enable_block_swap: "Cannot swap more than {num_blocks - 2} blocks".
SD3_UNSWAPPED_BLOCKS = 2

# Always on the command line (visible in `ps` and in the job's command.json), whatever the config file says.
FIXED_ARGS = ("network_module", "console_log_simple", "caption_extension", "save_every_n_epochs", "save_state", "logging_dir")


@cache
def _family_flags() -> dict:
    return json.loads(resources.files(__package__).joinpath("data", "family_flags.json").read_text("utf-8"))


def allowed_flags(family: str) -> set[str]:
    """Flag names the family's script accepts, as far as we can vouch for them."""
    data = _family_flags()
    recorded = set(sd3_flags()) - {"help"}
    if get_family(family).kohya_script == "sd3_train_network.py":
        return recorded - SD3_IGNORED_FLAGS
    common = recorded - set(data["sd3_only"]) - SD3_IGNORED_FLAGS
    return common | set(data["extra"].get(family, []))


@dataclass(frozen=True)
class Subset:
    image_dir: Path
    num_repeats: int
    class_tokens: str
    images: int


def find_subsets(dataset_dir: Path) -> list[Subset]:
    """The Kohya `N_<name>/` folders of a normalised dataset (repeats are FOLDER names, never file prefixes)."""
    if not dataset_dir.is_dir():
        raise DatasetError(f"dataset folder {dataset_dir} does not exist", hint="run `prepare` again, then `plan`")
    subsets = []
    for child in sorted(dataset_dir.iterdir()):
        m = _REPEAT_DIR.match(child.name)
        if not (child.is_dir() and m):
            continue
        images = sum(1 for f in child.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
        if images:
            subsets.append(Subset(child, int(m.group(1)), m.group(2), images))
    if not subsets:
        raise DatasetError(
            f"no `N_<name>/` folder with images in {dataset_dir} (sd-scripts would say 'No data found' and exit "
            "without a LoRA)",
            hint="run `prepare` on your images again; it writes the Kohya layout",
        )
    return subsets


def dataset_config(plan: TrainingPlan) -> dict:
    """The `--dataset_config` document for the plan's dataset: one dataset, one subset per repeat folder."""
    h = plan.hyper
    general: dict[str, Any] = {
        "caption_extension": ".txt",
        "shuffle_caption": bool(h.shuffle_caption),
        "flip_aug": bool(h.flip_aug),
        "caption_dropout_rate": float(h.caption_dropout_rate),
    }
    # keep_tokens is read only where captions are split into tokens: with shuffle_caption, token warm-up or tag
    # dropout (library/train_util.py, BaseDataset.process_caption); we offer only shuffle_caption of the three.
    if h.shuffle_caption:
        general["keep_tokens"] = int(h.keep_tokens)
    res = int(h.resolution)
    dataset: dict[str, Any] = {
        "resolution": [res, res],
        "batch_size": int(h.batch_size),
        "enable_bucket": True,
        # No min_bucket_reso/max_bucket_reso: with bucket_no_upscale sd-scripts ignores them and says so
        # (library/train_util.py, BaseDataset.make_buckets: "min_bucket_reso and max_bucket_reso are ignored if
        # bucket_no_upscale is set"); the buckets follow each image's own size, never upscaled.
        "bucket_reso_steps": 64,
        "bucket_no_upscale": True,
        "subsets": [
            # The plan's repeats win over the folder's N_ prefix: the folder name is only prepare's default.
            {"image_dir": str(s.image_dir), "num_repeats": int(h.repeats or s.num_repeats), "class_tokens": s.class_tokens}
            for s in find_subsets(Path(plan.dataset_dir))
        ],
    }
    return {"general": general, "datasets": [dataset]}


def _shift(h: Hyperparameters, fam: Family) -> float:
    value = h.discrete_flow_shift
    if value is None:
        value = fam.discrete_flow_shift if fam.discrete_flow_shift is not None else 3.0
    return value


def _save_precision(mixed: str) -> str:
    return mixed if mixed in ("fp16", "bf16") else "float"


def train_config(
    plan: TrainingPlan,
    models: ModelFiles,
    *,
    dataset_toml: Path,
    output_dir: Path,
    tokenizer_cache_dir: Path | None,
) -> dict[str, Any]:
    """The flat `--config_file` keys (flag names without dashes) for this plan and family."""
    fam: Family = get_family(plan.family)
    h, mem = plan.hyper, plan.memory
    ckpt = models.get("checkpoint")
    if ckpt is None:
        raise PlanError(f"no base model file for {fam.label}", hint=f"run `{train_command('check')}`")
    cfg: dict[str, Any] = {"pretrained_model_name_or_path": str(ckpt)}
    for role in ("clip_l", "clip_g", "t5xxl", "ae"):
        if models.get(role) is not None:
            cfg[role] = str(models.get(role))
    if tokenizer_cache_dir is not None:
        cfg["tokenizer_cache_dir"] = str(tokenizer_cache_dir)
    optimizer = h.optimizer
    if mem.use_8bit_optimizer and optimizer == "AdamW":
        optimizer = "AdamW8bit"
    cfg.update(
        {
            "network_dim": int(h.network_dim),
            "network_alpha": float(h.network_alpha),
            "network_train_unet_only": not h.train_text_encoder,
            "dataset_config": str(dataset_toml),
            "output_dir": str(output_dir),
            "output_name": plan.output_name,
            "save_model_as": "safetensors",
            "learning_rate": float(h.learning_rate),
            "optimizer_type": optimizer,
            "lr_scheduler": h.lr_scheduler,
            "lr_warmup_steps": int(h.lr_warmup_steps),
            "max_train_steps": int(h.max_train_steps),
            "gradient_accumulation_steps": int(h.gradient_accumulation_steps),
            "seed": int(h.seed),
            "mixed_precision": h.mixed_precision,
            "save_precision": _save_precision(h.mixed_precision),
            "max_data_loader_n_workers": 2,
            "persistent_data_loader_workers": True,
            "cache_latents": bool(mem.cache_latents),
            "cache_latents_to_disk": bool(mem.cache_latents and mem.cache_latents_to_disk),
            "gradient_checkpointing": bool(mem.gradient_checkpointing),
            "fp8_base": bool(mem.fp8_base),
            "log_with": "tensorboard",
            "metadata_title": plan.output_name,
        }
    )
    if fam.name in SDPA_READERS:
        cfg["sdpa"] = True
    if plan.gpu is None and h.mixed_precision in ("bf16", "fp16"):
        # On the CPU the VAE's half-precision convolutions are minutes per 64 px image where fp32 takes a second
        # (measured with the pinned sd-scripts here); train_network.py casts the VAE to fp32 with this flag.
        cfg["no_half_vae"] = True
    # Only steps: sd-scripts lets max_train_epochs override max_train_steps, and the plan's epochs are rounded up.
    if h.save_every_n_steps:
        cfg["save_every_n_steps"] = int(h.save_every_n_steps)
    if h.train_text_encoder and h.text_encoder_lr:
        cfg["text_encoder_lr"] = [float(h.text_encoder_lr)]  # nargs='*' in sd-scripts: one value for all encoders
    if plan.trigger:
        cfg["metadata_trigger_phrase"] = plan.trigger
    # Text-encoder outputs can only be cached when the encoders are frozen (sd-scripts asserts this).
    if not h.train_text_encoder and fam.name != "sd15":
        cfg["cache_text_encoder_outputs"] = bool(mem.cache_text_encoder_outputs)
        cfg["cache_text_encoder_outputs_to_disk"] = bool(
            mem.cache_text_encoder_outputs and mem.cache_text_encoder_outputs_to_disk
        )
    if fam.kohya_script == "sd3_train_network.py":
        cfg.update(
            {
                "weighting_scheme": h.weighting_scheme,
                "logit_mean": float(h.logit_mean),
                "logit_std": float(h.logit_std),
                "mode_scale": float(h.mode_scale),
                "training_shift": float(_shift(h, fam)),
            }
        )
        if mem.blocks_to_swap:
            cfg["blocks_to_swap"] = int(mem.blocks_to_swap)
    elif fam.kohya_script == "flux_train_network.py":
        cfg.update(
            {
                "weighting_scheme": "none" if h.weighting_scheme == "uniform" else h.weighting_scheme,
                "logit_mean": float(h.logit_mean),
                "logit_std": float(h.logit_std),
                "mode_scale": float(h.mode_scale),
                "discrete_flow_shift": float(_shift(h, fam)),
                "timestep_sampling": "shift",
                "model_prediction_type": "raw",
                "guidance_scale": 1.0,
            }
        )
    return {k: v for k, v in cfg.items() if v is not False}  # store_true flags: absent means off


def _path_arg(path: Path) -> str:
    # Absolute, so a relative folder named like "-x" can never be read as an option by python or argparse.
    return str(Path(path).absolute())


def fixed_args(plan: TrainingPlan, logging_dir: Path) -> list[str]:
    every = max(1, plan.hyper.save_every_n_epochs)
    return [
        "--network_module", get_family(plan.family).kohya_network_module,
        "--console_log_simple",
        "--caption_extension", ".txt",
        "--save_every_n_epochs", str(every),
        "--save_state",
        "--logging_dir", _path_arg(logging_dir),
    ]


def config_problems(family: str, cfg: dict[str, Any], *, file: str | None = None) -> list[Problem]:
    """Every key the family's script would reject, ignore, or refuse by `choices`."""
    allowed = allowed_flags(family)
    flags = sd3_flags()
    family_choices = _family_flags()["choices"].get(family, {})
    problems = []
    for key, value in cfg.items():
        if key not in allowed:
            problems.append(Problem(f"--{key} is not a flag we can vouch for in {get_family(family).kohya_script}",
                                    file=file, path=key, code="unknown_flag"))
            continue
        choices = family_choices.get(key)
        if choices is None and flags.get(key) is not None and isinstance(flags[key].choices, list):
            choices = flags[key].choices
        if choices is not None and value not in choices:
            problems.append(Problem(f"--{key} {value!r} is not one of {choices}", file=file, path=key,
                                    code="choice"))
    return problems


def trainer_refusal_problems(plan: TrainingPlan, models: ModelFiles) -> list[Problem]:
    """What the pinned sd-scripts would refuse at start-up although every key is valid: caption dropout or
    shuffling with cached text-encoder outputs (plan.caption_cache_problems), and more swapped blocks than the
    checkpoint's MMDiT allows (its depth counted from the header's key names, minus SD3_UNSWAPPED_BLOCKS)."""
    from ..plan import caption_cache_problems

    found = caption_cache_problems(plan.hyper, plan.memory, "kohya")
    swap = int(plan.memory.blocks_to_swap or 0)
    depth = checkpoint_depth(models) if swap and get_family(plan.family).kohya_script == "sd3_train_network.py" \
        else None
    if depth is not None and swap > depth - SD3_UNSWAPPED_BLOCKS:
        limit = max(0, depth - SD3_UNSWAPPED_BLOCKS)
        found.append(Problem(
            f"blocks_to_swap={swap} is more than this checkpoint allows: its MMDiT has {depth} joint blocks "
            f"(read from {models.get('checkpoint')}), and sd-scripts swaps at most depth - {SD3_UNSWAPPED_BLOCKS} "
            f"= {limit} (it would stop with 'Cannot swap more than {limit} blocks')",
            path="$.memory.blocks_to_swap", code="blocks_to_swap_too_many",
            hint=f"plan again with `--set blocks_to_swap={limit}`" if limit else
            "plan again with `--set blocks_to_swap=0`: a model this small needs no block swap",
        ))
    return found


def argv_flags(argv: list[str]) -> list[str]:
    return [a[2:] for a in argv if a.startswith("--")]


@dataclass(frozen=True)
class KohyaCommand:
    argv: list[str]
    cwd: Path
    config_toml: Path
    dataset_toml: Path


def build_command(
    plan: TrainingPlan,
    *,
    python: Path,
    scripts_dir: Path,
    models: ModelFiles,
    work_dir: Path,
    output_dir: Path,
    logging_dir: Path,
    tokenizer_cache_dir: Path | None,
    resume_state: Path | None = None,
    initial_epoch: int | None = None,
    num_processes: int = 1,
    write: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> KohyaCommand:
    """Write dataset.toml and config.toml into `work_dir` and return the argv (a list, never a shell string).

    `extra_config`: more `--config_file` keys (the job's sampling options), checked like the plan's own.
    `initial_epoch` (with `resume_state`): the epoch sd-scripts starts at (see kohya/backend.py, resume continuity)."""
    from ...paths import atomic_write_text

    fam = get_family(plan.family)
    refused = trainer_refusal_problems(plan, models)
    if refused:
        raise PlanError("sd-scripts would refuse this plan at start-up: " + "; ".join(p.message for p in refused),
                        hint="; ".join(p.hint for p in refused if p.hint), problems=refused)
    dataset_toml = work_dir / "dataset.toml"
    config_toml = work_dir / "config.toml"
    ds = dataset_config(plan)
    problems = dataset_config_problems(ds, file=str(dataset_toml))
    cfg = train_config(plan, models, dataset_toml=dataset_toml, output_dir=output_dir,
                       tokenizer_cache_dir=tokenizer_cache_dir)
    cfg.update(extra_config or {})  # e.g. sampling (kohya/samples.py): checked below like every other key
    problems += config_problems(plan.family, cfg, file=str(config_toml))
    extra = fixed_args(plan, logging_dir)
    if resume_state is not None:
        extra += ["--resume", _path_arg(resume_state)]
        if initial_epoch is not None:
            extra += ["--initial_epoch", str(int(initial_epoch))]
    problems += config_problems(plan.family, {f: True for f in argv_flags(extra)})
    if problems:
        raise PlanError("the generated Kohya files would be rejected: " + "; ".join(str(p) for p in problems),
                        hint="this is a bug in devserver-lora's Kohya backend; please report it with the plan.json")
    if write:
        header = "# generated by devserver-lora from plan.json; sd-scripts flattens sections, CLI flags override\n"
        atomic_write_text(dataset_toml, "# generated by devserver-lora from plan.json\n" + tomli_w.dumps(ds))
        atomic_write_text(config_toml, header + tomli_w.dumps(cfg))
    script = _path_arg(scripts_dir / fam.kohya_script)
    if num_processes > 1:
        launcher = [str(python), "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(num_processes), "--num_machines", "1", "--num_cpu_threads_per_process", "2"]
    else:
        launcher = [str(python)]
    argv = [*launcher, script, "--config_file", _path_arg(config_toml), *extra]
    return KohyaCommand(argv=argv, cwd=scripts_dir, config_toml=config_toml, dataset_toml=dataset_toml)
