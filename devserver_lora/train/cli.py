"""`python -m devserver_lora.train`: prepare, check, plan, run, follow and install LoRA trainings.

Each group of subcommands lives in `devserver_lora.train.commands.*` and exposes
`register(subparsers)`; this file only assembles them.
"""

from __future__ import annotations

import argparse
import sys

from ..console import assemble_parser, cli_main
from ..invocation import train_command

COMMAND_MODULES: tuple[str, ...] = (
    "devserver_lora.train.commands.dataset_cmds",
    "devserver_lora.train.commands.plan_cmds",
    "devserver_lora.train.commands.jobs_cmds",
    "devserver_lora.train.commands.check_cmds",
    "devserver_lora.train.commands.run_cmds",
    "devserver_lora.train.commands.install_cmds",
    "devserver_lora.train.commands.eval_cmds",
    "devserver_lora.train.commands.demo_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    return assemble_parser(
        train_command(),
        "Train a LoRA on your own images and install it for the DevServer.",
        COMMAND_MODULES,
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
