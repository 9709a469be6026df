"""`validate`, `show-config` and `export-schemas`: DevServer JSON files and their LoRAs."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from ..config.files import SHIPPED_SCHEMAS_DIR
from ..config.tree import SchemasTree
from ..config.validate import validate_tree, write_json_schemas
from ..console import out, print_json


def _validate(args: argparse.Namespace) -> int:
    report = validate_tree(args.paths)
    problems = report.problems
    errors = report.errors()
    if args.json:
        print_json({"ok": not errors, "checked": report.checked, "judged": report.judged,
                    "skipped": dict(sorted(report.skipped.items())), "problems": [p.as_dict() for p in problems]})
    else:
        for p in problems:
            style = "red" if p.severity == "error" else "yellow"
            out.print(f"[{style}]{p.severity}[/]: " + escape(str(p)))
        out.print(escape(report.summary()))
        summary = f"{len(errors)} error(s), {len(problems) - len(errors)} warning(s)"
        out.print(f"[bold {'red' if errors else 'green'}]{summary}[/]")
    return 1 if errors else 0


def _show_config(args: argparse.Namespace) -> int:
    resolved = SchemasTree.load(args.schemas).resolve(args.name)
    if args.json:
        print_json(
            {
                "name": resolved.name,
                "output_chunk": resolved.chunk.name,
                "backend_type": resolved.chunk.backend_type,
                "chunk_origin": resolved.chunk_origin,
                "loras": [s.model_dump(mode="json") for s in resolved.loras],
                "config": resolved.config.to_json_dict(),
            }
        )
        return 0
    title = resolved.config.name
    title = title.get("en", next(iter(title.values()), "")) if isinstance(title, dict) else title
    out.print(f"[bold]{resolved.name}[/]  {title}")
    out.print(f"  chunk: {resolved.chunk.name} (backend_type {resolved.chunk.backend_type}) from "
              + escape(resolved.chunk_origin))
    if not Path(resolved.chunk_origin).is_file():
        out.print("  (no DevServer tree has it here: pass --schemas <DevServer>/devserver/schemas to use DevServer's "
                  "own chunks)")
    if not resolved.loras:
        out.print("  LoRAs: none")
    for spec in resolved.loras:
        triggers = ", ".join(spec.trigger_words or ()) or "(from the file's metadata)"
        target = f", target node {spec.target}" if spec.target else ""
        out.print(
            f"  LoRA {spec.name}: model {spec.strength_model:g}, clip {spec.clip_strength:g}{target}; triggers: {triggers}"
        )
    return 0


def _export_schemas(args: argparse.Namespace) -> int:
    for path in write_json_schemas(Path(args.dir)):
        out.print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check output configs, chunks and schemas folders",
        description="Check DevServer JSON files (or whole schemas folders) against the schemas and cross-file rules. "
        "Lists every problem; exits 1 if any is an error.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a JSON file or a folder searched for *.json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_validate)

    p = sub.add_parser(
        "show-config",
        help="show an output config with its chunk and LoRAs",
        description="Resolve an output config as DevServer does (parameters.OUTPUT_CHUNK) and list its LoRAs.",
    )
    p.add_argument("name", help="output config name (file stem), e.g. sd35_large_yoruba")
    p.add_argument("--schemas", default=str(SHIPPED_SCHEMAS_DIR), help="DevServer schemas folder (default: shipped)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_show_config)

    p = sub.add_parser(
        "export-schemas",
        help="write the JSON Schemas of our models",
        description="Write output_config / output_chunk / lora_spec .schema.json files for editors and tooling.",
    )
    p.add_argument("dir", nargs="?", default=str(SHIPPED_SCHEMAS_DIR), help="target folder (default: schemas/)")
    p.set_defaults(func=_export_schemas)
