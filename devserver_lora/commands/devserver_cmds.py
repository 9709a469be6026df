"""`devserver doctor`: check a DevServer checkout for everything adopting LoRA configs needs."""

from __future__ import annotations

import argparse

from rich.markup import escape

from ..console import out, print_json
from ..devserver.doctor import run_doctor


def _doctor(args: argparse.Namespace) -> int:
    checks = run_doctor(args.devserver, loras_dir=args.loras_dir, comfyui_url=args.comfyui)
    if args.json:
        print_json({"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]})
    else:
        for check in checks:
            mark = "[green]ok[/]  " if check.ok else "[red]todo[/]"
            out.print(f"{mark} {escape(check.item)}: {escape(check.detail)}")
            for step in check.steps:
                out.print("       -> " + escape(step).replace("\n", "\n          "))
        left = sum(not c.ok for c in checks)
        out.print(f"[bold {'red' if left else 'green'}]{left} item(s) left to do[/]" if left else
                  "[bold green]everything is in place[/]")
    return 0 if all(c.ok for c in checks) else 1


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "devserver",
        help="checks on a DevServer checkout (doctor)",
        description="Work with a DevServer checkout (github joeriben/ai4artsed_webserver).",
    )
    actions = group.add_subparsers(dest="devserver_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "doctor",
        help="say, per item, what a DevServer checkout still needs for LoRA configs",
        description="Check a DevServer checkout: the schemas tree validates, create_app() calls "
        "install_into_devserver, DevServer's venv imports devserver_lora, the loras folder exists and is the one "
        "ComfyUI reads, every LoRA config's LoRA is installed and fits its model, and each LoRA config is offered in "
        "the frontend's pickers. Prints ok or the exact step left to do; exits 1 while anything is left.",
    )
    p.add_argument("--devserver", required=True, metavar="DIR", help="the checkout (the folder holding devserver/)")
    p.add_argument("--loras-dir", metavar="DIR",
                   help="the loras folder (default: DevServer's LORA_OUTPUT_DIR, i.e. <AI tools>/SwarmUI/Models/loras)")
    p.add_argument("--comfyui", metavar="URL", help="a running ComfyUI (or SwarmUI's /ComfyBackendDirect): check the "
                                                    "LoRAs it offers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_doctor)
