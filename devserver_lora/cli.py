"""`devserver-lora`: validate and inspect configs, inject LoRAs, render through ComfyUI.

Each group of subcommands lives in its own module under `devserver_lora.commands`
and exposes `register(subparsers)`; this file only assembles them.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .console import assemble_parser, cli_main

COMMAND_MODULES: tuple[str, ...] = (
    "devserver_lora.commands.config_cmds",
    "devserver_lora.commands.workflow_cmds",
    "devserver_lora.commands.comfy_cmds",
    "devserver_lora.commands.comfyui_cmds",
    "devserver_lora.commands.devserver_cmds",
    "devserver_lora.commands.studio_cmds",
)


def build_parser() -> argparse.ArgumentParser:
    return assemble_parser(
        "devserver-lora",
        "LoRAs for the AI4ArtsEd DevServer: output configs, ComfyUI injection, rendering.",
        COMMAND_MODULES,
        version=__version__,
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
