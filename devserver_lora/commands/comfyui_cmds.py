"""`comfyui start|stop|status`: the local ComfyUI the install set up (CPU, 127.0.0.1, a free port, a pid file)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..comfy.local import BaseDir, Install, Status, default_install, start, status, stop
from ..console import out, print_json
from ..invocation import cli_command

NOT_RUNNING = 3  # `status` exit code when no server answers (as LSB init scripts say "not running")


def _base(args: argparse.Namespace, install: Install) -> BaseDir:
    return BaseDir(Path(args.base).expanduser().absolute()) if args.base else install.default_base()


def ensure_tiny_checkpoint(install: Install) -> Path:
    """The cached tiny SD3 checkpoint the install builds; built here if it is missing (about 20 s, no download)."""
    path = install.tiny_checkpoint
    if not path.is_file() and install.ready:
        from ..testing.tiny_sd3 import write_tiny_sd3_checkpoint

        out.print(f"building the tiny SD3 checkpoint {path} ...")
        write_tiny_sd3_checkpoint(path)
    return path


def _describe(st: Status) -> str:
    rec = st.record
    if rec is None:
        return f"no ComfyUI recorded in {st.base.root}"
    if not st.alive:
        return f"not running (the pid file {st.base.pid_file} names pid {rec.pid}, which has ended)"
    answer = "answering" if st.answering else "NOT answering (still starting, or stuck: see its console log)"
    return f"running at {rec.url} (pid {rec.pid}), {answer}; console log {st.base.log}"


def _start(args: argparse.Namespace) -> int:
    install = default_install()
    base = _base(args, install)
    ensure_tiny_checkpoint(install)
    server = start(install, base, port=args.port)
    if args.json:
        print_json(status(base).as_dict())
        return 0
    out.print(f"ComfyUI started at [bold]{server.url}[/] (pid {server.record.pid})")
    out.print(f"  models: {base.models} (checkpoints/, loras/)\n  images: {base.output}\n  console log: {base.log}",
              highlight=False)
    out.print(f"  stop it with: {cli_command('comfyui stop' + _base_flag(args))}", highlight=False)
    return 0


def _base_flag(args: argparse.Namespace) -> str:
    return f" --base {args.base}" if args.base else ""


def _status(args: argparse.Namespace) -> int:
    st = status(_base(args, default_install()))
    if args.json:
        print_json(st.as_dict())
    else:
        out.print(_describe(st), highlight=False)
    return 0 if st.answering else NOT_RUNNING


def _stop(args: argparse.Namespace) -> int:
    before = stop(_base(args, default_install()))
    if args.json:
        print_json({**before.as_dict(), "stopped": before.alive})
    elif before.alive and before.record is not None:
        out.print(f"stopped ComfyUI at {before.record.url} (pid {before.record.pid})", highlight=False)
    else:
        out.print(_describe(before) + ": nothing to stop", highlight=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "comfyui",
        help="start, stop or look at the local ComfyUI the install set up",
        description="The ComfyUI v0.3.75 the README's install step set up, run on the CPU on 127.0.0.1 with a base "
        "directory of its own (custom_nodes/, models/checkpoints/ with the tiny SD3 checkpoint, models/loras/, "
        "output/, console.log, comfyui.pid). `start` returns once it answers and leaves it running; `status` exits "
        f"{NOT_RUNNING} when it does not answer; `stop` ends only the process group `start` made.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, func, text in (("start", _start, "start it in the background on a free port"),
                             ("status", _status, "its URL and pid, and whether it lives and answers"),
                             ("stop", _stop, "end it (SIGTERM, then SIGKILL; bounded)")):
        q = actions.add_parser(name, help=text, description=text)
        q.add_argument("--base", help="its base directory (default: base/ in the install folder)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "start":
            q.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
        q.set_defaults(func=func)
