"""`install`: copy a trained LoRA into ComfyUI's loras folder and write its DevServer output config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ...console import out, print_json
from ..install import install_job
from .check_cmds import add_location_flags, settings_from

if TYPE_CHECKING:
    from ..jobs import Job


def _cmd_install(args: argparse.Namespace) -> int:
    from ..jobs import JobStore

    settings = settings_from(args, comfyui_loras_dir=args.loras_dir, devserver_schemas_dir=args.schemas)
    job = JobStore(settings.jobs_dir).get(args.job)
    result = install_job(
        job,
        loras_dir=settings.comfyui_loras_dir,
        schemas_dir=settings.devserver_schemas_dir,
        epoch=args.epoch,
        checkpoint=args.checkpoint,
        config_name=args.config_name,
        strength=args.strength,
        check_keys=not args.no_key_check,
        against=args.against,
    )
    _refresh_report(job)
    if args.json:
        print_json(result)
        return 0
    out.print(f"[green]installed[/] {result.lora_path}", markup=True, highlight=False)
    if result.config_path:
        out.print(f"[green]output config[/] {result.config_name} -> {result.config_path}", markup=True, highlight=False)
        out.print(f"  select `{result.config_name}` in DevServer; trigger words: {', '.join(result.trigger_words) or '-'}",
                  highlight=False)
    for w in result.warnings:
        out.print(f"[yellow]![/] {w}", markup=True, highlight=False)
    return 0


def _refresh_report(job: Job) -> None:
    """The job's report shows the install state: write it again now (a warning event if that fails; the LoRA is
    installed either way)."""
    from ..evaluate.live import finish

    finish(job, written_by="install")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "install",
        help="install a job's LoRA into ComfyUI and write its DevServer output config",
        description="Copy the final LoRA (or --epoch N) into the loras folder with its dataset card, plan and "
        "trigger words in the file's metadata, check its keys against the model, and write "
        "configs/output/sd35_large_<name>.json. Nothing existing is ever replaced.",
    )
    p.add_argument("job", metavar="JOB")
    p.add_argument("--epoch", type=int, help="install the checkpoint saved after this epoch instead of the final one")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="install this file of the job's outputs/ (e.g. a step checkpoint of a cancelled job)")
    p.add_argument("--loras-dir", type=Path, help="ComfyUI/SwarmUI loras folder (env COMFYUI_LORAS_DIR)")
    p.add_argument("--schemas", type=Path, help="DevServer's devserver/schemas folder (env DEVSERVER_SCHEMAS_DIR)")
    p.add_argument("--config-name", help="name of the output config (default: sd35_large_<output name>)")
    p.add_argument("--strength", type=float, default=1.0, help="LoRA strength in the config (default 1.0)")
    p.add_argument("--against", metavar="ARCH",
                   help="the model the LoRA is installed for, as inspect-lora names it (default: the plan's family's "
                   "model; e.g. sd3:2:te=clip_l for a test-sized checkpoint)")
    p.add_argument("--no-key-check", action="store_true", help="skip the check that every key loads on the model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_location_flags(p)
    p.set_defaults(func=_cmd_install)
