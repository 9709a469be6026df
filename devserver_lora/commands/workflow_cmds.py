"""`inject` and `inspect-lora`: the final ComfyUI workflow of an output config, and what a LoRA file holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import SHIPPED_SCHEMAS_DIR, SchemasTree
from ..console import out, print_json
from ..errors import GraphValidationError, LoraFileError
from ..graph_check import load_object_info, validate_graph
from ..loras import ARCHS, LoraReport, fit_problems, inspect_lora, predict_not_loaded, resolve_arch
from ..paths import safe_join
from ..triggers import merge_triggers
from ..workflow import inject_loras, set_field


def _reports(names: list[str], loras_dir: str | None) -> dict[str, LoraReport]:
    """Reports of the LoRA files found in `loras_dir` (names are hostile: joined safely)."""
    if not loras_dir:
        return {}
    reports = {}
    for name in names:
        path = safe_join(loras_dir, name, what="LoRA name")
        if not path.exists():
            raise LoraFileError(f"LoRA '{name}' is not in {loras_dir}", hint="install it first, or drop --loras-dir")
        reports[name] = inspect_lora(path)
    return reports


def build_workflow(
    schemas: str | Path,
    config_name: str,
    *,
    prompt: str | None = None,
    loras_dir: str | None = None,
    position: str = "prefix",
) -> dict[str, Any]:
    """The workflow DevServer's Stage 4 would submit for `config_name`, with LoRAs and triggers applied."""
    resolved = SchemasTree.load(schemas).resolve(config_name)
    reports = _reports([s.name for s in resolved.loras], loras_dir)
    workflow = inject_loras(resolved.chunk.workflow, resolved.loras, lora_info=reports)
    if prompt is not None:
        triggers: list[str] = []
        for spec in resolved.loras:
            words = spec.trigger_words or tuple(reports[spec.name].trigger_words if spec.name in reports else ())
            triggers += list(words)
        text = merge_triggers(prompt, triggers, position=position)  # type: ignore[arg-type]
        targets = resolved.chunk.mapping_targets("prompt")
        if not targets:
            raise GraphValidationError(
                f"chunk '{resolved.chunk.name}' has no 'prompt' input mapping to put the prompt into", []
            )
        for t in targets:
            set_field(workflow, t.node_id, t.field, text)
    return workflow


def _inject(args: argparse.Namespace) -> int:
    workflow = build_workflow(
        args.schemas, args.config, prompt=args.prompt, loras_dir=args.loras_dir, position=args.trigger_position
    )
    if args.object_info:
        problems = validate_graph(workflow, load_object_info(args.object_info))
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
    lines = predict_not_loaded(report, args.against, with_clip=not args.model_only) if args.against else []
    fit = fit_problems(report, args.against) if args.against else []
    if args.json:
        body = report.model_dump(mode="json", exclude={"tensors"})
        body["against"] = args.against
        body["not_loaded"] = lines
        body["fit_problems"] = fit
        print_json(body)
    else:
        out.print(f"[bold]{report.path}[/]  ({report.file_size} bytes, {report.tensor_count} tensors)")
        arch = report.architecture + (f", depth {report.depth}" if report.depth else "")
        out.print(f"  format {report.format} ({report.adapter}); architecture {arch}; rank {report.rank}")
        te = ", ".join(report.text_encoders) or "none"
        out.print(f"  text encoders: {te}; alpha keys: {'yes' if report.has_alpha else 'no'}")
        out.print(f"  trigger words: {', '.join(report.trigger_words) or 'none found in metadata'}")
        for w in report.warnings:
            out.print(f"  [yellow]warning[/]: {w}")
        if args.against:
            for problem in fit:
                out.print(f"  [red]does not fit {args.against}[/]: {problem}")
            if lines:
                out.print(f"  [red]ComfyUI would log {len(lines)} warning(s) on {args.against}:[/]")
                for line in lines:
                    out.print(f"    {line}")
            elif not fit:
                out.print(f"  [green]every key loads on {args.against}[/]")
    return 1 if lines or fit else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inject",
        help="print the ComfyUI workflow an output config renders with, LoRAs injected",
        description="Resolve an output config to its chunk, put the prompt (with the LoRAs' trigger words) into the "
        "chunk's prompt mapping, inject the LoRA chain and print the API-format workflow as JSON.",
    )
    p.add_argument("--config", required=True, help="output config name (file stem), e.g. sd35_large_yoruba")
    p.add_argument("--schemas", default=str(SHIPPED_SCHEMAS_DIR), help="DevServer schemas folder (default: shipped)")
    p.add_argument("--prompt", help="the Stage-2 prompt; trigger words are merged in without duplicates")
    p.add_argument("--trigger-position", choices=("prefix", "suffix"), default="prefix", help="where triggers go")
    p.add_argument("--loras-dir", help="ComfyUI's models/loras folder: read trigger words and text-encoder keys")
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
