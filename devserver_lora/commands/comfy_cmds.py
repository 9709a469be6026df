"""`generate`: render an output config through ComfyUI, as DevServer's Stage 4 would, with live progress."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..comfy import Timeouts
from ..comfy import events as ev
from ..config.files import SHIPPED_SCHEMAS_DIR
from ..console import err, out, print_json
from ..devserver.stage4 import Stage4Runner
from ..errors import ConfigError
from ..paths import atomic_write_bytes, check_simple_name, free_name

DEFAULT_SERVER = "http://127.0.0.1:8188"


def _parse_sets(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE stays a string (DevServer's parameters arrive as strings too). Which keys the
    chunk takes is checked where the chunk is known (`stage4.check_overrides`)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", hint="e.g. --set WIDTH=512 --set STEPS=20")
        overrides[key.strip()] = value
    return overrides


class _ProgressView:
    """Rich progress: which node runs (id and class) and the sampler's step."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("queued", total=None)
        self.classes: dict[str, str] = {}

    def prepared(self, workflow: dict[str, Any]) -> None:
        self.classes = {k: str(v.get("class_type", "?")) for k, v in workflow.items() if isinstance(v, dict)}

    def __call__(self, event: ev.Event) -> None:
        p, t = self.progress, self.task
        if isinstance(event, ev.Queued):
            p.update(t, description=f"queued as {event.prompt_id[:8]}")
        elif isinstance(event, ev.Executing):
            p.update(t, description=f"node {event.node} {self.classes.get(event.node, '')}", total=None, completed=0)
        elif isinstance(event, ev.Progress):
            name = self.classes.get(event.node or "", "")
            p.update(t, description=f"node {event.node} {name}", total=event.max, completed=event.value)
        elif isinstance(event, ev.FallbackToPolling):
            p.update(t, description=f"waiting (polling: {event.reason})", total=None)
        elif isinstance(event, ev.Done):
            p.update(t, description="done", total=1, completed=1)


def _generate(args: argparse.Namespace) -> int:
    check_simple_name(args.config, what="output config name")
    overrides = _parse_sets(args.set or [])
    timeouts = Timeouts(overall=args.timeout, idle=min(args.timeout, args.idle_timeout))
    if args.arch and not args.loras_dir:
        raise ConfigError("--arch needs --loras-dir (the key check reads the LoRA files)", hint="add --loras-dir DIR")
    runner = Stage4Runner(args.schemas, args.server, loras_dir=args.loras_dir, arch=args.arch, timeouts=timeouts)
    gap = runner.fit_check_gap(args.config)
    if gap and not args.json:
        err.print(f"[yellow]note[/]: {gap}")
    seed = args.seed if args.seed is not None else None
    if args.json:
        result = runner.run(args.config, args.prompt, seed=seed, overrides=overrides)
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=err, transient=False) as progress:
            view = _ProgressView(progress)
            result = runner.run(
                args.config, args.prompt, seed=seed, overrides=overrides, on_event=view, on_prepared=view.prepared
            )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, data in enumerate(result.images):
        # Never overwrite an earlier render: free_name picks "<name>-2.png" etc. if taken.
        path = free_name(out_dir / f"{args.config}_{result.prompt_id[:8]}_{i}.png")
        written.append(atomic_write_bytes(path, data))
    summary = {
        "images": [str(p) for p in written],
        "prompt_id": result.prompt_id,
        "seed": result.seed,
        "prompt": result.prompt,
        "loras": [s.model_dump(mode="json", exclude_none=True) for s in result.loras],
        "notes": [gap] if gap else [],
    }
    if args.save_graph:
        graph_path = free_name(out_dir / f"{args.config}_{result.prompt_id[:8]}.graph.json")
        atomic_write_bytes(graph_path, json.dumps(result.workflow, indent=2).encode())
        summary["graph"] = str(graph_path)
    if args.json:
        print_json(summary)
        return 0
    for path in written:
        out.print(f"wrote [bold]{path}[/]")
    loras = ", ".join(f"{s.name} ({s.strength_model:g}/{s.clip_strength:g})" for s in result.loras) or "none"
    out.print(f"prompt {result.prompt_id}, seed {result.seed}, LoRAs: {loras}")
    out.print(f"prompt text: {result.prompt}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="render an output config through ComfyUI (with its LoRAs and trigger words)",
        description="Render an output config as DevServer's Stage 4 would: input mappings, LoRA injection, "
        "trigger words, then ComfyUI over HTTP + websocket. Writes the images and prints where.",
    )
    p.add_argument("--config", required=True, help="output config name, e.g. sd35_large_yoruba")
    p.add_argument("--prompt", required=True, help="the (Stage-2) prompt text")
    p.add_argument(
        "--server",
        default=os.environ.get("DEVSERVER_LORA_COMFY_URL", DEFAULT_SERVER),
        help=f"ComfyUI base URL, with its path prefix if any (default $DEVSERVER_LORA_COMFY_URL or {DEFAULT_SERVER})",
    )
    p.add_argument("--schemas", default=str(SHIPPED_SCHEMAS_DIR), help="DevServer schemas folder (default: shipped)")
    p.add_argument("--out", default="devserver-lora-output", help="folder for the images (default ./devserver-lora-output)")
    p.add_argument("--seed", type=int, help="seed (default: the config's SEED, usually random)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter, e.g. --set WIDTH=512")
    p.add_argument("--loras-dir", help="ComfyUI's loras folder, if readable here: enables the LoRA fit check")
    p.add_argument(
        "--arch",
        help="base model for the fit check, e.g. sd35_large or sd3:2:te=clip_l (default: the config's "
        "meta.base_model); with --loras-dir a LoRA whose names or shapes ComfyUI would silently skip is refused",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="overall time limit in seconds (default 900)")
    p.add_argument("--idle-timeout", type=float, default=180.0, help="longest silence of a running prompt (default 180)")
    p.add_argument("--save-graph", action="store_true", help="also write the submitted ComfyUI graph as JSON")
    p.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    p.set_defaults(func=_generate)
