"""`plan` (and `presets`): resolve hyperparameters and a memory plan that fits the GPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ...console import out, print_json
from ...errors import PlanError
from ...invocation import train_command
from ...paths import atomic_write_text
from ..card import CARD_FILE, load_card
from ..dataset.manifest import load_manifest
from ..families import FAMILIES
from ..gpu import KNOWN_GPUS, resolve_gpu
from ..memory import ESTIMATE_BASIS
from ..plan import TrainingPlan, make_plan
from ..presets import load_presets
from ..settings import load_settings


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs; values are read as JSON where they parse (numbers, true/false), else text."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise PlanError(f"--set {item!r} is not key=value", hint="e.g. --set learning_rate=5e-5 --set network_dim=32")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        result[key] = value
    return result


def _duration(seconds: float) -> str:
    m = int(seconds // 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{max(1, m)} min"


def print_plan(plan: TrainingPlan) -> None:
    h, m = plan.hyper, plan.memory
    gpu = f"{plan.gpu.name} ({plan.gpu.vram_gb:g} GB)" if plan.gpu else "CPU"
    out.print(f"[bold]{plan.output_name}[/]: {FAMILIES[plan.family].label}, preset {plan.preset}, {plan.num_images} "
              f"images, on {gpu}", markup=True, highlight=False)
    out.print(f"  resolution {h.resolution}, rank {h.network_dim} (alpha {h.network_alpha:g}), lr {h.learning_rate:g}"
              f"{', text encoders lr ' + format(h.text_encoder_lr or h.learning_rate, 'g') if h.train_text_encoder else ''}"
              f", {h.optimizer}{' 8-bit' if m.use_8bit_optimizer and h.optimizer == 'AdamW' else ''}, {h.lr_scheduler}",
              highlight=False)
    out.print(f"  {h.max_train_steps} steps = {h.epochs} epochs x {plan.steps_per_epoch}, batch {h.batch_size} x "
              f"{h.gradient_accumulation_steps} accumulation, {h.repeats} repeats, save every {h.save_every_n_epochs} "
              f"epoch(s), {h.mixed_precision}", highlight=False)
    where = "of GPU memory" if plan.gpu else "of memory (no GPU)"
    out.print(f"  memory, estimated: peak about {m.estimated_peak_vram_gb:.1f} GB {where}, "
              f"{m.estimated_host_ram_gb:.0f} GB host RAM, about {_duration(m.estimated_wall_time_s)}", highlight=False)
    out.print(f"  ({m.estimate_basis})", highlight=False)
    out.print("[bold]why:[/]", markup=True)
    for line in plan.explanations:
        out.print(f"  - {line}", highlight=False)


def cmd_plan(args: argparse.Namespace) -> int:
    gpu = resolve_gpu(vram=args.vram, gpu=args.gpu, detect=not args.no_detect)
    plan = make_plan(
        args.family, args.preset, args.dataset, gpu=gpu, overrides=parse_sets(args.set), backend=args.backend,
        output_name=args.name,
    )
    job_id = None
    if args.out:
        atomic_write_text(args.out, plan.model_dump_json(indent=2) + "\n")
    if args.create_job:
        from ..jobs import JobStore

        settings = load_settings(home=args.home, jobs_dir=args.jobs_dir)
        folder = Path(plan.dataset_dir)
        job = JobStore(settings.jobs_dir).create(plan, manifest=load_manifest(folder), card=load_card(folder / CARD_FILE))
        job_id = job.id
    if args.json:
        print_json({"plan": plan.model_dump(mode="json"), "job_id": job_id})
        return 0
    print_plan(plan)
    if args.out:
        out.print(f"plan written to {args.out}", highlight=False)
    if job_id:
        out.print(f"[green]job created:[/] {job_id}  (start it with: {train_command(f'run {job_id}')})",
                  markup=True, highlight=False)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    presets = load_presets()
    if args.json:
        print_json({"presets": [p.model_dump() for p in presets.values()],
                    "families": [f.model_dump() for f in FAMILIES.values()],
                    "gpus": [g.model_dump() for g in KNOWN_GPUS.values()]})
        return 0
    for p in presets.values():
        vram = f", needs >= {p.min_vram_gb:g} GB" if p.min_vram_gb else ""
        out.print(f"[bold]{p.name:11}[/] {p.label_de} / {p.label_en} ({p.min_images}-{p.max_images} images{vram})",
                  markup=True, highlight=False)
        out.print(f"            {p.explanation_de}", highlight=False)
        out.print(f"            {p.explanation_en}", highlight=False)
    out.print("families: " + ", ".join(f"{f.name} ({f.label})" for f in FAMILIES.values()), highlight=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="plan a training for a prepared dataset: settings, steps and a memory plan that fits the GPU",
        description="Resolve the preset's settings for this dataset and GPU (detected, or --vram / --gpu), choose "
        "memory savings (gradient checkpointing, smaller batch, 8-bit optimizer, fp8 base, block swapping) so the "
        "estimated peak fits with a margin, and explain each choice. Refuses, with what would fit, when nothing does. "
        f"Memory and time figures are {ESTIMATE_BASIS}.",
    )
    p.add_argument("dataset", type=Path, help="a dataset folder made by `prepare` (with its dataset card)")
    p.add_argument("--family", default="sd35_large", choices=sorted(FAMILIES), help="model family (default sd35_large)")
    p.add_argument("--preset", default="fotostudio", choices=sorted(load_presets()),
                   help="fotostudio (10-30 images), atelier (30-75), galerie (75-150, >= 16 GB) or quick_test")
    p.add_argument("--vram", type=float, help="plan for a GPU with this much memory in GB (e.g. 24)")
    p.add_argument("--gpu", help=f"plan for a known GPU, e.g. 'RTX 5090' (known: {', '.join(KNOWN_GPUS)})")
    p.add_argument("--no-detect", action="store_true", help="do not look for a local GPU (plan for the CPU)")
    p.add_argument("--backend", choices=("kohya", "native"), help="plan only what this backend can do")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a setting, e.g. --set learning_rate=5e-5 --set max_train_steps=800; also "
                   "fp8_base, blocks_to_swap, gradient_checkpointing, use_8bit_optimizer")
    p.add_argument("--name", help="name of the LoRA (default: the trigger word or dataset name)")
    p.add_argument("--out", type=Path, help="write the plan as JSON to this file")
    p.add_argument("--create-job", action="store_true", help="also create a job in the job store, ready for `run`")
    p.add_argument("--home", type=Path, help="devserver-lora home (env DEVSERVER_LORA_HOME)")
    p.add_argument("--jobs-dir", type=Path, help="where jobs live (default: HOME/jobs)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("presets", help="list presets, model families and known GPUs")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_presets)
