"""`demo`: the two-minute first run (synthetic dataset, tiny model, native training, install, renders)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...console import out, print_json
from ...invocation import train_command


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(args.out, comfyui_url=args.comfyui, comfyui_models=args.comfyui_models, steps=args.steps,
                      show_progress=not args.json)
    if args.json:
        print_json(result.model_dump(mode="json"))
        return 0
    out.print(f"[green]LoRA installed:[/] {result.lora_path}")
    if result.config_path:
        out.print(f"[green]output config:[/] {result.config_name} ({result.config_path})")
    for w in result.warnings:
        out.print(f"[yellow]note:[/] {w}")
    if result.renders:
        out.print(f"renders: before {result.renders['before']}, after {result.renders['after']} "
                  f"(mean pixel difference {result.pixel_difference:.1f})")
    else:
        out.print("no ComfyUI given: pass --comfyui URL --comfyui-models DIR to render before/after images")
    out.print(f"job {result.job_id}: `{train_command('status ' + result.job_id)} "
              f"--jobs-dir {Path(result.out_dir) / 'jobs'}`", highlight=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a two-minute first run: synthetic images, a tiny model, training, install (and renders)",
        description="Make a small synthetic dataset with a dataset card and a tiny SD3 model, plan (quick_test), "
        "train with the native backend, install the LoRA with an output config into a demo DevServer schemas "
        "folder and, given a ComfyUI, render the same seed before and after. Runs on CPU.",
    )
    p.add_argument("--out", type=Path, default=Path("devserver-lora-demo"), help="working folder (default ./devserver-lora-demo)")
    p.add_argument("--comfyui", metavar="URL", help="a running ComfyUI to render before/after images with")
    p.add_argument("--comfyui-models", type=Path, metavar="DIR",
                   help="that ComfyUI's models folder (the demo writes checkpoints/ and loras/ files there)")
    p.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    p.add_argument("--json", action="store_true", help="machine-readable result, no progress bar")
    p.set_defaults(func=_cmd_demo)
