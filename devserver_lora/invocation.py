"""How a person runs this package's commands, spelled so that a printed command runs as printed.

Hints name commands ("run `... -m devserver_lora.train check`"). A bare `python` is often not the interpreter that
has this package (a venv nobody activated), so every hint names the interpreter running now: `.venv/bin/python`
when it lies below the current folder (as after the README's install), else its absolute path.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

TRAIN_MODULE = "devserver_lora.train"
CLI_MODULE = "devserver_lora"
CLI_SCRIPT = "devserver-lora"


def shown_path(path: str | Path) -> str:
    """`path` as a command argument: relative to the current folder when it lies below it (with a slash, so a
    program is never looked up on PATH), else absolute; quoted for the shell where needed."""
    path = Path(path).absolute()
    try:
        rel = path.relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(path))
    text = rel.as_posix()
    return shlex.quote(text if "/" in text else f"./{text}")


def python() -> str:
    """The interpreter running this package, as a command prefix (`.venv/bin/python`)."""
    # absolute(), not resolve(): a venv's python is a symlink, and following it would leave the venv.
    return shown_path(Path(sys.executable or "python3").absolute())


def train_command(args: str = "") -> str:
    """`<python> -m devserver_lora.train ARGS`, e.g. `train_command("status JOB --follow")`."""
    return f"{python()} -m {TRAIN_MODULE}" + (f" {args}" if args else "")


def cli_command(args: str = "") -> str:
    """`devserver-lora ARGS` as the venv's script (`.venv/bin/devserver-lora`), else `<python> -m devserver_lora`."""
    exe = Path(sys.executable or "python3").absolute()
    script = exe.parent / CLI_SCRIPT
    prefix = shown_path(script) if script.is_file() else f"{python()} -m {CLI_MODULE}"
    return prefix + (f" {args}" if args else "")
