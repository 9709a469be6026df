"""`inject` and `inspect-lora`: the final ComfyUI workflow of an output config, and what a LoRA file holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from ..config.files import SHIPPED_SCHEMAS_DIR
from ..console import out, print_json
from ..devserver.stage4 import Stage4Runner
from ..errors import GraphValidationError
from ..graph.check import graph_problems, load_object_info
from ..lora.fit import ARCHS, fit_problems, resolve_arch
from ..lora.report import ARCH_KEY, inspect_lora


def build_workflow(
    schemas: str | Path,
    config_name: str,
    *,
    prompt: str | None = None,
    loras_dir: str | None = None,
    position: Literal["prefix", "suffix"] = "prefix",
    seed: int | None = None,
) -> dict[str, Any]:
    """The workflow DevServer's Stage 4 would submit for `config_name`: parameters, LoRAs and triggers applied.

    Offline: with `loras_dir` the LoRA files are read (trigger words, text-encoder keys, key fit).
    """
    runner = Stage4Runner(schemas, None, loras_dir=loras_dir, trigger_position=position)
    workflow, *_ = runner.prepare(config_name, prompt or "", seed=seed)
    return workflow


def _inject(args: argparse.Namespace) -> int:
    workflow = build_workflow(
        args.schemas,
        args.config,
        prompt=args.prompt,
        loras_dir=args.loras_dir,
        position=args.trigger_position,
        seed=args.seed,
    )
    if args.object_info:
        problems = graph_problems(workflow, load_object_info(args.object_info))
        if problems:
            raise GraphValidationError(
                f"the workflow for '{args.config}' would be refused by ComfyUI ({len(problems)} problem(s))",
                problems,
                hint="install the missing files on the ComfyUI server, or fix the chunk",
            )
    print_json(workflow)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    if args.against:
        resolve_arch(args.against)  # an unknown name fails before the file is read
    report = inspect_lora(args.file)
    problems = fit_problems(report, args.against, with_clip=not args.model_only) if args.against else []
    shapes = [p for p in problems if p.code != "key_not_loaded"]
    lines = [p.message for p in problems if p.code == "key_not_loaded"]
    if args.json:
        body = report.model_dump(mode="json", exclude={"tensors"})
        body["against"] = args.against
        body["fits"] = not problems if args.against else None
        body["not_loaded"] = lines
        body["fit_problems"] = [p.as_dict() for p in problems]
        print_json(body)
    else:
        out.print(f"[bold]{report.path}[/]  ({report.file_size} bytes, {report.tensor_count} tensors)")
        arch = report.architecture + (f", depth {report.depth}" if report.depth else "")
        out.print(f"  format {report.format} ({report.adapter}); architecture {arch}; rank {report.rank}")
        trained = report.metadata.get(ARCH_KEY)
        if trained:
            out.print(f"  trained on: {trained} (check with --against {trained})")
        te = ", ".join(report.text_encoders) or "none"
        out.print(f"  text encoders: {te}; alpha keys: {'yes' if report.has_alpha else 'no'}")
        out.print(f"  trigger words: {', '.join(report.trigger_words) or 'none found in metadata'}")
        for w in report.warnings:
            out.print(f"  [yellow]warning[/]: {w}")
        if args.against:
            for problem in shapes:
                out.print(f"  [red]does not fit {args.against}[/]: {problem.message}")
            if lines:
                out.print(f"  [red]ComfyUI would log {len(lines)} warning(s) on {args.against}:[/]")
                for line in lines:
                    out.print(f"    {line}")
            if not problems:
                out.print(f"  [green]fits {args.against}: every key loads and every shape matches[/]")
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inject",
        help="print the ComfyUI workflow an output config renders with, LoRAs injected",
        description="Resolve an output config to its chunk, apply its parameters as DevServer's Stage 4 does, put the "
        "prompt (with the LoRAs' trigger words) into the chunk's prompt mapping, inject the LoRA chain and print the "
        "API-format workflow that would be submitted, as JSON. Nothing is sent anywhere.",
    )
    p.add_argument("--config", required=True, help="output config name (file stem), e.g. sd35_large_yoruba")
    p.add_argument("--schemas", default=str(SHIPPED_SCHEMAS_DIR), help="DevServer schemas folder (default: shipped)")
    p.add_argument("--prompt", help="the Stage-2 prompt; trigger words are merged in without duplicates")
    p.add_argument("--trigger-position", choices=("prefix", "suffix"), default="prefix", help="where triggers go")
    p.add_argument("--loras-dir", help="ComfyUI's models/loras folder: read trigger words and text-encoder keys")
    p.add_argument("--seed", type=int, help="the seed (default: the config's SEED; 'random' draws one)")
    p.add_argument("--object-info", help="saved GET /object_info answer: validate offline the way ComfyUI would")
    p.add_argument("--json", action="store_true", help="errors as JSON (the workflow is always JSON)")
    p.set_defaults(func=_inject)

    q = sub.add_parser(
        "inspect-lora",
        help="describe a .safetensors LoRA and predict ComfyUI's 'lora key not loaded' warnings",
        description="Reads only the file's header. With --against, lists the 'lora key not loaded' and "
        "'NOT LOADED' lines ComfyUI would log on that model; exits 1 if there are any.",
    )
    q.add_argument("file", help="the .safetensors file")
    q.add_argument(
        "--against",
        metavar="ARCH",
        help=f"model to check key coverage against: {', '.join(sorted(ARCHS))}, or sd3:DEPTH[:attn2=A-B][:te=clip_l,...]",
    )
    q.add_argument("--model-only", action="store_true", help="predict for LoraLoaderModelOnly (no text encoder)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.set_defaults(func=_inspect)
