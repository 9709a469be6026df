"""`python -m devserver_lora.train`: prepare, check, plan, run, follow and install LoRA trainings.

Each group of subcommands lives in `devserver_lora.train.commands.*` and exposes
`register(subparsers)`; this file only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..console import run_command

COMMAND_MODULES: tuple[str, ...] = (
    "devserver_lora.train.commands.dataset_cmds",
    "devserver_lora.train.commands.plan_cmds",
    "devserver_lora.train.commands.jobs_cmds",
    "devserver_lora.train.commands.check_cmds",
    "devserver_lora.train.commands.run_cmds",
    "devserver_lora.train.commands.install_cmds",
    "devserver_lora.train.commands.demo_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devserver_lora.train",
        description="Train a LoRA on your own images and install it for the DevServer.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
