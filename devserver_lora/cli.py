"""`devserver-lora`: validate and inspect configs, inject LoRAs, render through ComfyUI.

Each group of subcommands lives in its own module under `devserver_lora.commands`
and exposes `register(subparsers)`; this file only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .console import run_command

COMMAND_MODULES: tuple[str, ...] = (
    "devserver_lora.commands.config_cmds",
    "devserver_lora.commands.workflow_cmds",
    "devserver_lora.commands.comfy_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devserver-lora",
        description="LoRAs for the AI4ArtsEd DevServer: output configs, ComfyUI injection, rendering.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
