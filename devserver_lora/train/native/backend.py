"""`NativeBackend`: in-process SD3/SD3.5 LoRA training with diffusers + peft (the Backend protocol).

Flow: header checks -> caches (VAE and text encoders load, encode, leave) -> transformer + LoRA ->
loop with progress events -> checkpoints named like Kohya's in `job.outputs_dir`, resume state in
`job.work_dir` -> final LoRA, verified against the checkpoint's own layer shapes.
The base model comes from (first found): the `source=` given to the constructor, `model.json` in the
job folder (a `ModelSource`), or the standard file names in `settings.models_dir`.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import BackendError, Problem
from ..events import CheckpointEvent, DoneEvent, ErrorEvent, LogEvent, LogLevel, ProgressEvent
from ..plan import backend_support_problems
from . import models
from .launch import LaunchSpec, multiprocess_problems, run_launched
from .models import ModelSource

if TYPE_CHECKING:  # the loop pulls in torch: imported when training starts
    from ..card import DatasetCard
    from ..jobs import Job
    from ..plan import TrainingPlan
    from ..settings import Settings
    from .loop import LoraTrainer, StepReport

MODEL_FILE = "model.json"
STATE_FILE = "native_state.pt"
NATIVE_FAMILIES = ("sd35_large", "sd35_medium")


class NativeBackend:
    name = "native"

    def __init__(self, settings: Settings | None = None, *, source: ModelSource | None = None, device: str | None = None,
                 export_format: str = "kohya", progress_interval_s: float = 0.5, num_processes: int = 1,
                 grace_s: float = 30.0) -> None:
        self.settings = settings
        self.num_processes = num_processes  # > 1: `launch.run_launched` starts that many processes
        self.grace_s = grace_s
        self.source = source
        self.device = device
        self.export_format = export_format
        self.progress_interval_s = progress_interval_s

    # --- where the model is -------------------------------------------------------------
    def model_source(self, job: Job) -> ModelSource:
        if self.source is not None:
            return self.source
        model_file = job.dir / MODEL_FILE
        if model_file.is_file():
            return ModelSource.model_validate(job.read_json(MODEL_FILE))
        return models.resolve_source(job.plan.family, self.settings.models_dir if self.settings else None)

    # --- Backend protocol ---------------------------------------------------------------
    def preflight(self, job: Job) -> list[Problem]:
        plan = job.plan
        problems: list[Problem] = []
        if plan.family not in NATIVE_FAMILIES:
            problems.append(
                Problem(
                    f"the native backend trains SD3.5 only, not {plan.family}",
                    path="$.family",
                    code="native_unsupported_family",
                    hint="use --backend kohya for SDXL, SD1.5 and FLUX",
                )
            )
            return problems
        problems += backend_support_problems(plan.hyper, "native", plan.memory)
        if self.num_processes != 1:
            problems += multiprocess_problems(self.num_processes)
        if plan.hyper.shuffle_caption:
            problems.append(
                Problem(
                    "shuffle_caption has no effect: the native backend encodes each caption once (cached)",
                    path="$.hyper.shuffle_caption",
                    code="native_no_shuffle",
                    severity="warning",
                    hint="leave it off, or use the kohya backend without text-encoder caching",
                )
            )
        if plan.hyper.train_text_encoder:
            problems.append(
                Problem(
                    "the native backend trains the transformer only; text encoders stay frozen",
                    path="$.hyper.train_text_encoder",
                    code="native_no_te_training",
                    severity="warning",
                    hint="use the kohya backend to train CLIP LoRAs as well",
                )
            )
        try:
            source = self.model_source(job)
        except BackendError as exc:
            return problems + [Problem(exc.message, hint=exc.hint, code=exc.diagnosis or "model_missing")]
        problems += models.model_source_problems(source, plan.family)
        manifest = job.manifest
        missing = [img.file for img in manifest.images if not (Path(plan.dataset_dir) / img.file).is_file()]
        if missing:
            problems.append(
                Problem(
                    f"{len(missing)} dataset images are missing, e.g. {missing[0]}",
                    file=plan.dataset_dir,
                    code="dataset_missing_images",
                    hint="prepare the dataset again",
                )
            )
        return problems

    def launch_spec(self) -> LaunchSpec:
        """What each launched process rebuilds this backend from."""
        settings = self.settings.model_dump(mode="json") if self.settings is not None else None
        return LaunchSpec(settings=settings, source=self.source, device=self.device,
                          export_format=self.export_format, progress_interval_s=self.progress_interval_s)

    def check_preflight(self, job: Job) -> None:
        """Raise BackendError on the first preflight error (warnings pass)."""
        blocking = [p for p in self.preflight(job) if p.severity == "error"]
        if blocking:
            raise BackendError(
                "the native backend cannot run this job: " + "; ".join(p.message for p in blocking),
                hint=blocking[0].hint,
                diagnosis=blocking[0].code,
            )

    def run(self, job: Job, *, resume: bool = False, stop: threading.Event | None = None) -> Path:
        if self.num_processes > 1:
            return run_launched(self.launch_spec(), self.check_preflight, job, num_processes=self.num_processes,
                                resume=resume, stop=stop, grace_s=self.grace_s)
        try:
            return self._run(job, resume=resume, stop=stop)
        except BackendError as exc:
            if exc.diagnosis != "cancelled":
                job.append_event(ErrorEvent(diagnosis=exc.diagnosis, message=exc.message, hint=exc.hint))
            raise
        except Exception as exc:
            import torch

            if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
                err = BackendError(
                    f"out of memory while training: {str(exc).splitlines()[0][:200]}",
                    hint="plan again with a smaller batch, resolution or rank, or use the kohya backend "
                    "(fp8 base and block swapping)",
                    diagnosis="oom",
                )
            else:
                err = BackendError(f"native training failed: {type(exc).__name__}: {exc}", diagnosis="native_crash")
            job.append_event(ErrorEvent(diagnosis=err.diagnosis, message=err.message, hint=err.hint))
            raise err from exc

    # --- the work ----------------------------------------------------------------------
    def _run(self, job: Job, *, resume: bool, stop: threading.Event | None) -> Path:
        import torch
        from accelerate import PartialState

        from .caches import CACHE_FILE, TextEncoder, build_caches, cache_key, load_caches, save_caches
        from .loop import LoopSettings, LoraTrainer, load_state, save_state

        models.env_offline()
        self.check_preflight(job)
        plan, manifest = job.plan, job.manifest
        source = self.model_source(job)
        info = models.inspect_source(source, family=plan.family)
        # One process, or one of several launched ones: each uses its own GPU, the main one builds the caches.
        shared = PartialState(cpu=not torch.cuda.is_available())
        device = torch.device(self.device or shared.device)
        dtype = torch.float32
        if device.type == "cuda":
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.hyper.mixed_precision, torch.float32)
        res = plan.hyper.resolution
        config = info.transformer_config
        self._check_resolution(res, config)

        key = cache_key(manifest, res, plan.hyper.flip_aug, _model_id(source))
        cache_path = job.work_dir / CACHE_FILE

        def load_vae() -> Any:
            return models.load_vae(source, dtype=dtype).to(device).eval()

        def load_tes() -> list[TextEncoder]:
            out = []
            for kind, where in sorted(info.text_encoders.items()):
                model = models.load_text_encoder(kind, where, source, dtype=dtype).to(device).eval()
                out.append(TextEncoder(kind, model, models.load_tokenizer(kind, source)))
            return out

        with shared.main_process_first():  # the others then read what the main process wrote
            caches = load_caches(cache_path, key)
            if caches is None:
                job.append_event(LogEvent(message=f"encoding {manifest.num_images} images and captions (cached once)"))
                caches = build_caches(
                    manifest, Path(plan.dataset_dir), resolution=res, flip=plan.hyper.flip_aug, load_vae=load_vae,
                    load_text_encoders=load_tes, joint_dim=config["joint_attention_dim"],
                    pooled_dim=config["pooled_projection_dim"], device=device, key=key,
                )
                save_caches(caches, cache_path)
        transformer = models.load_transformer(source, info, dtype=dtype).to(device)
        settings = LoopSettings.from_plan(plan)

        def log(level: LogLevel, message: str) -> None:
            job.append_event(LogEvent(level=level, message=message))

        trainer = LoraTrainer(transformer, caches, settings, log=log)
        if trainer.accelerator.num_processes > 1:
            log("info", f"training in {trainer.accelerator.num_processes} processes "
                f"({trainer.accelerator.distributed_type.value}), {trainer.steps_per_epoch} steps per epoch each")
        state_path = job.work_dir / STATE_FILE
        if resume:
            state = load_state(state_path)
            if state is None:
                log("warning", "no saved state to resume from; starting at step 0")
            else:
                trainer.load_state_dict(state)
                log("info", f"resumed at step {trainer.step} of {settings.total_steps}")
        final_path = job.outputs_dir / f"{plan.output_name}.safetensors"
        if trainer.step >= settings.total_steps and final_path.is_file():
            log("info", f"the job already finished all {settings.total_steps} steps; nothing to resume")
            job.append_event(DoneEvent(lora_path=str(final_path), steps=trainer.step))
            return final_path
        exporter = _Exporter(job, plan, trainer, info, self.export_format)
        last_emit = 0.0

        main = trainer.accelerator.is_main_process  # with several GPUs only the main process writes
        sampler = self._sampler(job, config, load_vae, load_tes, device, dtype) if main else None
        if sampler is not None and trainer.step == 0 and sampler.due(0):
            sampler.render(trainer.accelerator.unwrap_model(trainer.model), 0, autocast=trainer.accelerator.autocast)

        def on_step(r: StepReport) -> None:
            nonlocal last_emit
            if not main:
                return
            now = time.monotonic()
            if r.step == 1 or r.step == r.total_steps or now - last_emit >= self.progress_interval_s or r.total_steps <= 200:
                job.append_event(
                    ProgressEvent(step=r.step, total_steps=r.total_steps, epoch=r.epoch, total_epochs=r.total_epochs,
                                  loss=r.loss, eta_s=r.eta_s, it_per_s=r.it_per_s, lr=r.lr)
                )
                last_emit = now
            if not math.isfinite(r.loss):
                raise BackendError(
                    f"the loss became {r.loss} at step {r.step}: training diverged",
                    hint="lower the learning rate (e.g. halve it), or train in bf16 rather than fp16; "
                    "checkpoints saved before this step are fine",
                    diagnosis="nan_loss",
                )
            if sampler is not None and sampler.due(r.step):
                sampler.render(trainer.accelerator.unwrap_model(trainer.model), r.step,
                               autocast=trainer.accelerator.autocast)
            if r.step >= r.total_steps:
                return
            by_steps = settings.save_every_n_steps and r.step % settings.save_every_n_steps == 0
            by_epoch = r.epoch_finished and settings.save_every_n_epochs and r.epoch % settings.save_every_n_epochs == 0
            if by_steps or by_epoch:
                name = (f"{plan.output_name}-step{r.step:08d}" if by_steps else f"{plan.output_name}-{r.epoch:06d}")
                path = exporter.export(name, step=r.step, epoch=r.epoch)
                save_state(trainer.state_dict(), state_path)
                job.append_event(CheckpointEvent(path=str(path), step=r.step, epoch=r.epoch))

        reached = trainer.train(on_step=on_step, stop=stop)
        trainer.accelerator.wait_for_everyone()
        if not main:
            return job.outputs_dir / f"{plan.output_name}.safetensors"
        if reached < settings.total_steps:
            save_state(trainer.state_dict(), state_path)
            raise BackendError(
                f"training stopped at step {reached} of {settings.total_steps}",
                hint="resume the job to continue from here",
                diagnosis="cancelled",
            )
        final = exporter.export(plan.output_name, step=reached, epoch=trainer.epoch)
        save_state(trainer.state_dict(), state_path)
        job.append_event(DoneEvent(lora_path=str(final), steps=reached))
        return final

    @staticmethod
    def _sampler(job: Job, config: dict[str, Any], load_vae: Any, load_tes: Any, device: Any, dtype: Any) -> Any:
        """The in-process sampler for the job's sample prompts, or None when the job samples nothing."""
        from ..evaluate.settings import load_eval_settings
        from .sampling import NativeSampler

        try:
            settings = load_eval_settings(job)
        except Exception as exc:  # noqa: BLE001 - a broken eval_settings.json costs the samples, not the run
            job.append_event(LogEvent(level="warning", message=f"no samples during training: {exc}"))
            return None
        if not settings.samples_on:
            return None
        return NativeSampler(job, settings, load_vae=load_vae, load_text_encoders=load_tes,
                             joint_dim=config["joint_attention_dim"], pooled_dim=config["pooled_projection_dim"],
                             shift=job.plan.hyper.discrete_flow_shift or 1.0, device=device, dtype=dtype)

    @staticmethod
    def _check_resolution(res: int, config: dict[str, Any]) -> None:
        patches = res // 8 // config["patch_size"]
        if patches > config["pos_embed_max_size"]:
            most = config["pos_embed_max_size"] * config["patch_size"] * 8
            raise BackendError(
                f"resolution {res} px is larger than this model's position table allows ({most} px)",
                hint=f"plan with --resolution {most} or less",
                diagnosis="resolution_too_large",
            )


def _model_id(source: ModelSource) -> str:
    parts = []
    for p in (source.checkpoint, source.diffusers_dir, source.clip_l, source.clip_g, source.t5xxl):
        if p is not None:
            st = Path(p).stat()
            parts.append(f"{Path(p).resolve()}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


class _Exporter:
    """Writes LoRA files from the trainer's current weights, in the chosen key layout, with metadata."""

    def __init__(self, job: Job, plan: TrainingPlan, trainer: LoraTrainer, info: models.SourceInfo, fmt: str) -> None:
        self.job, self.plan, self.trainer, self.info, self.fmt = job, plan, trainer, info, fmt
        self.card: DatasetCard | None
        try:
            self.card = job.card
        except Exception:  # a job without a card cannot exist via JobStore.create; tolerate it for direct use
            self.card = None

    def export(self, name: str, *, step: int, epoch: int) -> Path:
        import torch

        from .lora_export import (
            diffusers_tensors,
            kohya_tensors,
            lora_metadata,
            mmdit_fit_problems,
            pairs_from_peft,
            save_lora,
            to_mmdit_pairs,
        )

        s = self.trainer.s
        pairs = pairs_from_peft(self.trainer.lora_state(), s.alpha)
        dtype = torch.float32 if s.mixed_precision == "no" else torch.float16
        if self.fmt == "diffusers":
            tensors = diffusers_tensors(pairs, dtype)
        else:
            depth = self.info.transformer_config["num_layers"]
            tensors = kohya_tensors(to_mmdit_pairs(pairs, depth), dtype)
            if self.info.mmdit_shapes:
                problems = mmdit_fit_problems(tensors, self.info.mmdit_shapes)
                if problems:
                    raise BackendError(
                        f"the exported LoRA does not fit the base model: {problems[0].message}",
                        hint="this is a bug in the native exporter; please report it with the job folder",
                        diagnosis="export_mismatch",
                    )
        trigger = [self.plan.trigger] if self.plan.trigger else []
        card = self.card.model_dump(mode="json") if self.card is not None else None
        meta = lora_metadata(
            output_name=self.plan.output_name, arch=models.trained_arch(self.info), rank=s.rank, alpha=s.alpha,
            resolution=self.plan.hyper.resolution, steps=step, epochs=epoch, trigger_words=trigger, card=card,
            card_metadata=self.card.to_metadata() if self.card is not None else None,
            extra={"ss_num_train_images": str(len(self.trainer.caches)), "ss_learning_rate": str(s.learning_rate),
                   "ss_optimizer": s.optimizer, "ss_lr_scheduler": s.lr_scheduler, "ss_seed": str(s.seed)},
        )
        return save_lora(tensors, meta, self.job.outputs_dir / f"{name}.safetensors")
