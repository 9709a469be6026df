"""Shared output for every CLI: rich text for people, `--json` for machines, errors with their hint."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console

from .errors import DevserverLoraError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    """Print `obj` as JSON on stdout (pydantic models are dumped in JSON mode)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def report_error(exc: DevserverLoraError, *, as_json: bool = False) -> None:
    if as_json:
        body: dict[str, Any] = {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        problems = getattr(exc, "problems", None)  # only some error classes carry a list of problems
        if problems:
            body["problems"] = [p.as_dict() for p in problems]
        print_json(body)
        return
    err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)


def run_command(func: Callable[[Any], int | None], args: Any) -> int:
    """Call a subcommand; turn our errors into a message and exit code 1 instead of a traceback."""
    try:
        code = func(args)
    except DevserverLoraError as exc:
        report_error(exc, as_json=getattr(args, "json", False))  # not every subcommand has --json
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return int(code or 0)


def assemble_parser(prog: str, description: str, modules: tuple[str, ...], *, version: str | None = None):
    """An argparse parser whose subcommands come from `modules`, each exposing `register(subparsers)`."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser(prog=prog, description=description)
    if version is not None:
        parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def cli_main(parser: Any, argv: list[str] | None) -> int:
    """Parse `argv` and run the chosen subcommand with our error handling."""
    args = parser.parse_args(argv)
    return run_command(args.func, args)
