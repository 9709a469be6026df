"""`check`: is the Kohya install ready to train this family (venv, torch vs GPU, sd-scripts pin, models, tokenizers)?"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...console import out, print_json
from ...errors import Problem
from ..families import FAMILIES
from ..kohya.venv import blockers, environment_problems
from ..settings import Settings, load_settings

_MARK = {"error": "[bold red]✖[/]", "warning": "[yellow]![/]", "info": "[green]✔[/]"}


def add_location_flags(p: argparse.ArgumentParser) -> None:
    """Flags every training command shares to override settings (env vars and settings.json otherwise)."""
    p.add_argument("--home", type=Path, help="devserver-lora home (env DEVSERVER_LORA_HOME)")
    p.add_argument("--jobs-dir", type=Path, help="where jobs live (default: HOME/jobs)")
    p.add_argument("--kohya-dir", type=Path, help="the Kohya install made by trainer/setup.sh (env KOHYA_DIR)")
    p.add_argument("--models-dir", type=Path, help="folder with the base-model files (env DEVSERVER_LORA_MODELS)")


def settings_from(args: argparse.Namespace, **extra: object) -> Settings:
    """The settings for a command whose parser has the location flags (add_location_flags)."""
    return load_settings(
        home=args.home,
        jobs_dir=args.jobs_dir,
        kohya_dir=args.kohya_dir,
        models_dir=args.models_dir,
        **{k: v for k, v in extra.items() if v is not None},
    )


def print_findings(findings: list[Problem]) -> None:
    for p in findings:
        where = f" ({p.file})" if p.file else ""
        out.print(f"{_MARK.get(p.severity, '-')} {p.message}{where}", markup=True, highlight=False)
        if p.hint and p.severity != "info":
            out.print(f"    fix: {p.hint}", markup=False, highlight=False)


def _cmd_check(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.job:
        from ..jobs import JobStore
        from ..kohya.backend import KohyaBackend

        job = JobStore(settings.jobs_dir).get(args.job)
        family = job.plan.family
        findings = KohyaBackend(settings).preflight(job, probe=not args.no_probe)
    else:
        family = args.family
        findings = environment_problems(
            settings.kohya_dir,
            family=family,
            models_dir=settings.models_dir,
            needs_bitsandbytes=args.eight_bit,
            gpu_capability=args.gpu_capability,
            probe=not args.no_probe,
        )
    bad = blockers(findings)
    if args.json:
        print_json({"family": family, "ok": not bad, "findings": [p.as_dict() for p in findings]})
    else:
        print_findings(findings)
        if bad:
            out.print(f"[bold red]{len(bad)} blocking problem(s)[/]: fix them, then run `check` again", markup=True)
        else:
            out.print(f"[green]ready to train {family} with Kohya[/]", markup=True)
    return 1 if bad else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="check the Kohya install, GPU, sd-scripts pin, base models and tokenizers",
        description="Print every finding about the Kohya setup with its fix; exit code 1 if anything blocks training.",
    )
    p.add_argument("--family", default="sd35_large", choices=sorted(FAMILIES), help="model family (default sd35_large)")
    p.add_argument("--job", help="check for this job: its family, GPU and optimizer, and generate its Kohya files "
                   "as a dry run")
    p.add_argument("--gpu-capability", help="compute capability to check torch against, e.g. 12.0 for an RTX 5090")
    p.add_argument("--8bit", dest="eight_bit", action="store_true", help="also require bitsandbytes")
    p.add_argument("--no-probe", action="store_true", help="do not start the venv's Python (skips torch checks)")
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    add_location_flags(p)
    p.set_defaults(func=_cmd_check)
