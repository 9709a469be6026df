"""`demo`: the two-minute first run (synthetic dataset, tiny model, native training, install, renders)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...console import err, out, print_json
from ...invocation import cli_command, train_command


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import NOISE_NOTE, run_demo

    def note(text: str) -> None:
        if not args.json:
            err.print(text, highlight=False)

    result = run_demo(args.out, render=args.render, comfyui_base=args.comfyui_base, comfyui_url=args.comfyui,
                      comfyui_models=args.comfyui_models, steps=args.steps, show_progress=not args.json, on_note=note)
    if args.json:
        print_json(result.model_dump(mode="json"))
        return 0
    loss = f", loss at the last step {result.final_loss:.3g}" if result.final_loss is not None else ""
    out.print(f"[green]final LoRA:[/] {result.lora_path} (trained on {result.arch}: {result.steps} steps{loss})")
    if result.config_path:
        out.print(f"[green]output config:[/] {result.config_name} ({result.config_path})")
    for w in result.warnings:
        out.print(f"[yellow]note:[/] {w}")
    out.print(NOISE_NOTE, highlight=False)
    if result.renders:
        change = f" (mean pixel change {result.pixel_difference:.1f} of 255)" if result.pixel_difference else ""
        out.print(f"[green]before/after:[/] {result.renders['sheet']}{change}", highlight=False)
        out.print(f"  before {result.renders['before']}\n  after {result.renders['after']}\n"
                  f"  difference {result.renders.get('difference', '-')}", highlight=False)
    else:
        out.print("no renders: add --render to start the local ComfyUI and render before/after images "
                  "(or --comfyui URL --comfyui-models DIR for another ComfyUI)")
    if result.samples:
        out.print(f"[green]samples during training:[/] {len(result.samples)} in {Path(result.samples[0]).parent}",
                  highlight=False)
    if result.loss_plot:
        out.print(f"[green]loss plot:[/] {result.loss_plot}", highlight=False)
    if result.comfyui_started:
        base = f" --base {args.comfyui_base}" if args.comfyui_base else ""
        out.print(f"ComfyUI keeps running at {result.comfyui_url}; stop it with `{cli_command('comfyui stop' + base)}`",
                  highlight=False)
    if result.next_commands:
        out.print("next, the README's Quick start 1 with your LoRA:")
        for command in result.next_commands:
            out.print(f"  {command}", highlight=False)
    if result.real_model_commands:
        out.print("the same with a real SD3.5 Large model (on a GPU; README, Quick start 2):")
        for command in result.real_model_commands:
            out.print(f"  {command}", highlight=False)
    out.print(f"job {result.job_id}: `{train_command('status ' + result.job_id)} "
              f"--jobs-dir {Path(result.out_dir) / 'jobs'}`", highlight=False)
    if result.report:
        out.print(f"[bold green]report:[/] {result.report}", highlight=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a two-minute first run: synthetic images, a tiny model, training, install (and renders)",
        description="Make a small synthetic dataset with a dataset card and a tiny SD3 model, plan (quick_test), "
        "train with the native backend, install the LoRA with an output config into a demo DevServer schemas "
        "folder and, with --render, start the local ComfyUI (unless it runs) and render the same seed before and "
        "after. Runs on CPU.",
    )
    p.add_argument("--out", type=Path, default=Path("devserver-lora-demo"), help="working folder (default ./devserver-lora-demo)")
    p.add_argument("--render", action="store_true",
                   help="render before/after through the local ComfyUI the install set up (started if it is not "
                   "running, and left running for `generate`)")
    p.add_argument("--comfyui-base", type=Path, metavar="DIR",
                   help="with --render: that ComfyUI's base directory (default: base/ in its install folder)")
    p.add_argument("--comfyui", metavar="URL", help="render through this running ComfyUI instead")
    p.add_argument("--comfyui-models", type=Path, metavar="DIR",
                   help="with --comfyui: that ComfyUI's models folder (the demo writes checkpoints/ and loras/ files there)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.add_argument("--json", action="store_true", help="machine-readable result, no progress bar")
    p.set_defaults(func=_cmd_demo)
