"""`evaluate`, `samples` and `report`: see what a job's LoRA learned (see devserver_lora.train.evaluate)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...console import out, print_json
from ...errors import TrainingError
from .check_cmds import add_location_flags, settings_from

if TYPE_CHECKING:
    from ..jobs import JobStore


def _jobs(args: argparse.Namespace) -> JobStore:
    from ..jobs import JobStore

    return JobStore(settings_from(args).jobs_dir)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.report import REPORT_HTML
    from ..evaluate.run import EvalOptions, evaluate_job

    settings = settings_from(args, comfyui_loras_dir=args.loras_dir)
    store = _jobs(args)
    job = store.get(args.job)
    if settings.comfyui_loras_dir is None:
        raise TrainingError("evaluate needs ComfyUI's loras folder (it puts the job's checkpoints there to render)",
                            hint="pass --loras-dir ComfyUI/models/loras or set COMFYUI_LORAS_DIR")
    options = EvalOptions(
        comfyui=args.comfyui, loras_dir=Path(settings.comfyui_loras_dir),
        against=store.get(args.against) if args.against else None,
        sheets=tuple(s.strip() for s in args.sheets.split(",") if s.strip()) if args.sheets else (),
        lora_file=args.checkpoint, size=args.size, steps=args.steps, cfg=args.cfg, chunk=args.chunk,
        base_model=args.base_model, clip_from_checkpoint=args.clip_from_checkpoint, clip_model=args.clip_model,
    )

    def progress(i: int, n: int, done: Any) -> None:
        if not args.json:
            what = "no LoRA" if done.spec.lora is None else f"{Path(done.spec.lora).name} {done.spec.strength_model:g}"
            status = "[red]failed[/]" if done.error else "ok"
            out.print(f"  {i}/{n} seed {done.spec.seed}, {what}: {status}", markup=True, highlight=False)

    result = evaluate_job(job, options, on_image=progress)
    if args.json:
        print_json(result.model_dump(mode="json"))
        return 0
    for sheet in result.sheets:
        out.print(f"[green]{sheet.title}[/]: {job.dir / sheet.file}", markup=True, highlight=False)
        for col in sheet.columns:
            if col.mean_abs_change is not None or col.clip_score is not None:
                clip = f", CLIP {col.clip_score:.1f}" if col.clip_score is not None else ""
                change = f"{col.mean_abs_change:.1f}" if col.mean_abs_change is not None else "-"
                out.print(f"    {col.label}: change {change}{clip}", highlight=False)
    for err in result.errors:
        out.print(f"[yellow]![/] {err}", markup=True, highlight=False)
    out.print(f"report: {job.dir / REPORT_HTML}", highlight=False)
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from ..evaluate.settings import EvalPrompt, load_eval_settings, save_eval_settings

    job = _jobs(args).get(args.job)
    changes: dict[str, Any] = {}
    if args.prompt:
        changes["prompts"] = [EvalPrompt(prompt=p, seed=args.seed + i) for i, p in enumerate(args.prompt)]
    if args.off:
        changes["sample_every_n_steps"] = None
    elif args.every is not None:
        changes["sample_every_n_steps"] = args.every
    for key in ("size", "steps", "cfg"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.negative is not None:
        changes["negative_prompt"] = args.negative
    # Shown settings are saved (the file is where the rest is edited); refused changes write nothing.
    current = load_eval_settings(job, create=not changes)
    if changes:
        try:
            updated = current.model_validate({**current.model_dump(), **changes})
        except ValueError as exc:
            raise TrainingError(f"these sample settings are not valid: {exc}") from exc
        save_eval_settings(job, updated)
        current = updated
    if args.json:
        print_json(current.model_dump(mode="json"))
        return 0
    every = current.sample_every_n_steps
    out.print(f"samples: {'every ' + str(every) + ' steps' if every else 'off'}"
              f"{', and before training' if every and current.sample_at_first else ''}; "
              f"{current.size} px, {current.steps} steps, cfg {current.cfg:g}", highlight=False)
    for i, p in enumerate(current.prompts):
        out.print(f"  {i}: seed {p.seed}: {p.prompt}", highlight=False)
    out.print(f"edit more (bias prompts, strengths): {job.dir / 'eval_settings.json'}", highlight=False)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..evaluate.report import write_report

    path = write_report(_jobs(args).get(args.job), written_by="report")
    if args.json:
        print_json({"report": str(path)})
    else:
        out.print(f"report: {path}", highlight=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="render contact sheets of a job's LoRA through ComfyUI, with numbers, and write its report",
        description="Render the job's prompts (same seeds throughout) through a running ComfyUI with the core's "
        "LoRA injection: before/after, strength sweeps (model + text encoder, and model only), every checkpoint, "
        "a bias sheet, and with --against an A/B sheet. Writes evaluation/sheet_*.png, every image alone, "
        "evaluation/results.json and report.html.",
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("--comfyui", metavar="URL", required=True, help="the ComfyUI to render with")
    p.add_argument("--loras-dir", type=Path, help="that ComfyUI's models/loras folder (env COMFYUI_LORAS_DIR)")
    p.add_argument("--against", metavar="JOB_B", help="a second job whose LoRA goes beside this one (A/B sheet)")
    p.add_argument("--sheets", metavar="LIST", help="comma-separated subset of before_after, strength, "
                   "strength_model, checkpoints, bias, ab (default: all)")
    p.add_argument("--checkpoint", metavar="FILE", help="evaluate this file of outputs/ instead of the final LoRA")
    p.add_argument("--size", type=int, help="render size in px (default: the job's eval settings)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the job's eval settings)")
    p.add_argument("--cfg", type=float, help="guidance (default: the job's eval settings)")
    p.add_argument("--chunk", type=Path, help="a DevServer output chunk JSON to render with (default: the SD3.5 "
                   "chunk DevServer uses, as devserver_lora writes it)")
    p.add_argument("--base-model", metavar="NAME", help="the checkpoint file name ComfyUI loads (default: the chunk's)")
    p.add_argument("--clip-from-checkpoint", action="store_true",
                   help="text encoders from the checkpoint itself (single-file checkpoints that carry them)")
    p.add_argument("--clip-model", type=Path, metavar="DIR",
                   help="a local CLIP model folder for CLIP scores (never downloaded)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    add_location_flags(p)
    p.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser(
        "samples",
        help="show or change a job's sample prompts and interval",
        description="Samples are rendered during training at fixed seeds (prompt i at seed SEED+i). Without "
        "options this shows the current settings. Other settings (bias prompts, strengths) live in the job's "
        "eval_settings.json.",
    )
    s.add_argument("job", metavar="JOB")
    s.add_argument("--prompt", action="append", metavar="TEXT", help="a sample prompt (repeat; replaces the list)")
    s.add_argument("--seed", type=int, default=1000, help="seed of the first --prompt (default 1000)")
    s.add_argument("--every", type=int, metavar="N", help="render samples every N training steps")
    s.add_argument("--off", action="store_true", help="no samples during training")
    s.add_argument("--size", type=int, help="sample and evaluation size in px (multiple of 16)")
    s.add_argument("--steps", type=int, help="sampling steps")
    s.add_argument("--cfg", type=float, help="guidance scale")
    s.add_argument("--negative", metavar="TEXT", help="negative prompt")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    add_location_flags(s)
    s.set_defaults(func=_cmd_samples)

    r = sub.add_parser("report", help="write a job's report.html and report.json again (no rendering)",
                       description="Redraw the loss plot and write the report from what the job folder holds.")
    r.add_argument("job", metavar="JOB")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    add_location_flags(r)
    r.set_defaults(func=_cmd_report)
