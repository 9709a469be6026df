"""Turn sd-scripts' output and exit status into a named cause with a fix a student can follow.

`Watcher` sees every output line as it comes (cheap substring tests first, so it
keeps up with tqdm's redraws) and remembers the first sign of each known failure;
`diagnose` then combines those signs with the exit status and whether the LoRA file
exists. sd-scripts exits 0 when it finds no images, so success is "exit 0 AND file".
"""

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...invocation import train_command
from ..plan import CACHE_TE, TE_CACHE_ASSERTION

if TYPE_CHECKING:
    from ..plan import TrainingPlan


@dataclass(frozen=True)
class Diagnosis:
    code: str
    message: str
    hint: str

    def as_dict(self) -> dict[str, str]:
        return {"diagnosis": self.code, "message": self.message, "hint": self.hint}


# (code, needles): the first needle found in a line marks the code. Order matters only for reporting.
_SIGNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cuda_oom", ("CUDA out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED")),
    ("cuda_arch", ("no kernel image is available", "is not compatible with the current PyTorch installation")),
    ("bitsandbytes_missing", ("No module named 'bitsandbytes'", "bitsandbytes is not installed",
                              "requires bitsandbytes")),
    ("dataset_toml_invalid", ("extra keys not allowed", "Invalid user config")),
    # sd3/sdxl/flux_train_network.py assert_extra_args (plan.TE_CACHE_ASSERTION); before "traceback".
    ("caption_vs_text_encoder_cache", (TE_CACHE_ASSERTION,)),
    ("blocks_to_swap_too_many", ("Cannot swap more than",)),  # library/sd3_models.py MMDiT.enable_block_swap
    ("bad_flag", ("error: unrecognized arguments:", "error: argument ")),
    ("no_data", ("No data found",)),
    ("model_mismatch", ("Error(s) in loading state_dict", "size mismatch for", "Missing key(s) in state_dict",
                        "Unexpected key(s) in state_dict", "HeaderTooLarge", "SafetensorError",
                        "MetadataIncompleteBuffer")),
    ("missing_module", ("ModuleNotFoundError: No module named",)),
    ("hub_access", ("We couldn't connect to 'https://huggingface.co'", "OfflineModeIsEnabled",
                    "LocalEntryNotFoundError")),
    ("traceback", ("Traceback (most recent call last):",)),
)


class Watcher:
    """Collects the first line showing each known failure sign, plus a tail of recent output."""

    def __init__(self, tail_lines: int = 60) -> None:
        self.signs: dict[str, str] = {}
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.nan_losses = 0  # consecutive progress lines with avr_loss=nan

    def feed(self, line: str) -> None:
        if not line.startswith("steps:"):
            self.tail.append(line)
        for code, needles in _SIGNS:
            if code in self.signs:
                continue
            for needle in needles:
                if needle in line:
                    self.signs[code] = line.strip()
                    break

    def loss(self, value: float | None) -> None:
        if value is None:
            return
        self.nan_losses = self.nan_losses + 1 if value != value else 0


def lower_memory_hint(plan: TrainingPlan | None) -> str:
    """The next lower-memory setting of this plan, as an override a student can pass to `plan`."""
    if plan is None:
        return "re-plan with a lower-memory preset (smaller resolution, batch size 1, gradient checkpointing)"
    mem, hyper = plan.memory, plan.hyper
    swap = (mem.blocks_to_swap or 0) + 8
    steps: list[tuple[bool, str, str]] = [
        (not mem.gradient_checkpointing, "turn on gradient checkpointing", "gradient_checkpointing=true"),
        (not mem.cache_text_encoder_outputs, "cache the text-encoder outputs", "cache_text_encoder_outputs=true"),
        (not mem.fp8_base, "load the base model in fp8", "fp8_base=true"),
        (hyper.batch_size > 1, f"lower the batch size from {hyper.batch_size} to 1", "batch_size=1"),
        (not mem.use_8bit_optimizer and hyper.optimizer == "AdamW", "use the 8-bit optimizer", "use_8bit_optimizer=true"),
        ((mem.blocks_to_swap or 0) < 16, "swap more transformer blocks to host RAM", f"blocks_to_swap={swap}"),
        (hyper.resolution > 512, "train at a lower resolution", f"resolution={max(512, hyper.resolution - 256)}"),
        (hyper.network_dim > 8, "use a smaller rank", f"network_dim={max(4, hyper.network_dim // 2)}"),
    ]
    for applies, what, setting in steps:
        if applies:
            return f"{what}: plan again with `--set {setting}`, then run the new job"
    return "even the smallest settings do not fit this GPU: train on a card with more VRAM"


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def diagnose(
    *,
    returncode: int | None,
    watcher: Watcher,
    output_exists: bool,
    plan: TrainingPlan | None = None,
    cancelled: bool = False,
) -> Diagnosis | None:
    """None when the run succeeded (exit 0 and the LoRA file exists), else the most specific cause we can name."""
    signs = watcher.signs
    if cancelled:
        return Diagnosis("cancelled", "training was cancelled", "finished checkpoints are kept; `resume JOB` continues")
    if watcher.nan_losses:  # the last loss sd-scripts printed was NaN
        return Diagnosis(
            "nan_loss",
            "the loss became NaN: training diverged and the LoRA weights are unusable",
            "lower the learning rate (e.g. halve it), keep mixed_precision=bf16 (fp16 overflows on SD3), "
            "and resume from the last checkpoint before the NaN or start again",
        )
    if returncode == 0 and output_exists:
        return None
    if "cuda_oom" in signs:
        return Diagnosis("cuda_oom", f"the GPU ran out of memory ({signs['cuda_oom'][:200]})", lower_memory_hint(plan))
    if "cuda_arch" in signs:
        return Diagnosis(
            "cuda_arch",
            "PyTorch in the Kohya venv has no kernels for this GPU ('no kernel image is available')",
            "install a torch built for your card: RTX 50xx (sm_120) needs a CUDA 12.8 build, "
            "e.g. `trainer/setup.sh --cuda cu128`, or `pip install torch --index-url "
            "https://download.pytorch.org/whl/cu128` inside the Kohya venv",
        )
    if "bitsandbytes_missing" in signs:
        return Diagnosis(
            "bitsandbytes_missing",
            "the 8-bit optimizer needs bitsandbytes, which the Kohya venv cannot import",
            "install it in the Kohya venv (`<venv>/bin/pip install bitsandbytes`) or plan with optimizer=AdamW",
        )
    if "dataset_toml_invalid" in signs:
        return Diagnosis(
            "dataset_toml_invalid",
            f"sd-scripts refused the dataset TOML: {signs['dataset_toml_invalid'][:200]}",
            "the generated dataset.toml does not match this sd-scripts version: run `check` and make sure "
            "sd-scripts is at the pinned commit (trainer/setup.sh)",
        )
    if "caption_vs_text_encoder_cache" in signs:
        return Diagnosis(
            "caption_vs_text_encoder_cache",
            "sd-scripts refused caption dropout or caption shuffling while the text-encoder outputs are cached "
            f"('{TE_CACHE_ASSERTION}')",
            "plan again either with `--set caption_dropout_rate=0 --set shuffle_caption=false` (keeps the cache), or "
            f"with `--set {CACHE_TE}=false` (the text encoders stay loaded while training: more memory, slower)",
        )
    if "blocks_to_swap_too_many" in signs:
        return Diagnosis(
            "blocks_to_swap_too_many",
            f"sd-scripts refused the number of swapped blocks: {signs['blocks_to_swap_too_many'][:200]}",
            "plan again with `--set blocks_to_swap=N` for the N it names; `check --job JOB` compares the plan "
            "with the checkpoint's depth before a run",
        )
    if "bad_flag" in signs:
        return Diagnosis(
            "bad_flag",
            f"sd-scripts refused a command-line flag: {signs['bad_flag'][:200]}",
            "sd-scripts is not at the pinned commit: run `check` and re-run trainer/setup.sh",
        )
    if "model_mismatch" in signs:
        return Diagnosis(
            "model_mismatch",
            f"a model file does not match what the trainer expects: {signs['model_mismatch'][:200]}",
            f"run `{train_command('check')}`: it reads each model file's header and names the wrong "
            "one (e.g. an SDXL checkpoint given for SD3.5, or a clip_g given as clip_l)",
        )
    if "missing_module" in signs:
        return Diagnosis(
            "missing_module",
            f"the Kohya venv lacks a package: {signs['missing_module'][:200]}",
            "install sd-scripts' own requirements into the Kohya venv (trainer/setup.sh, or in KOHYA_DIR/sd-scripts: "
            "`../venv/bin/pip install -r requirements.txt`)",
        )
    if "hub_access" in signs:
        return Diagnosis(
            "hub_access",
            "sd-scripts tried to download tokenizers from the Hugging Face hub",
            "save the tokenizers once with trainer/setup.sh (it fills --tokenizer_cache_dir), then run again",
        )
    if returncode is not None and returncode < 0:
        name = _signal_name(returncode)
        hint = "it was stopped from outside; `resume JOB` continues from the last saved state"
        if -returncode == signal.SIGKILL:
            hint = ("SIGKILL without a cancel usually means the system ran out of host RAM (the OOM killer): "
                    "close other programs or plan with fewer cached outputs / more swap; then `resume JOB`")
        return Diagnosis("killed", f"the trainer was killed by {name}", hint)
    if returncode == 0:
        if "no_data" in signs:
            return Diagnosis(
                "no_data",
                "sd-scripts found no training images ('No data found') and exited without writing a LoRA",
                "the dataset folder must hold `N_<trigger>/` subfolders with images and same-name .txt captions: "
                "run `prepare` again and check the dataset path in the plan",
            )
        return Diagnosis(
            "no_output",
            "sd-scripts exited normally but the LoRA file was not written",
            "look at the end of the job's kohya.log; check free disk space and the output folder permissions",
        )
    last = " | ".join(list(watcher.tail)[-3:])
    return Diagnosis(
        "failed",
        f"sd-scripts failed with exit code {returncode}: {last[:300]}",
        "read the job's logs/kohya.log for the full output; run `check` to test the Kohya setup",
    )
