"""`prepare`, `check-dataset` and `card`: import a dataset, check it, and attach its dataset card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ...console import err, out, print_json
from ...errors import DatasetError, Problem
from ...invocation import train_command
from ..card import CARD_FILE, DatasetCard, card_from_dict, load_card
from ..dataset.checks import RESIZE_POLICIES, CheckOptions, CheckReport, run_checks
from ..dataset.importers import open_source
from ..dataset.manifest import DATASET_MANIFEST, load_manifest
from ..dataset.normalise import prepare_dataset
from ..families import FAMILIES
from ..presets import load_presets

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
CARD_FLAGS = (
    ("title", "title of the dataset"),
    ("description", "what the images show"),
    ("source", "where the images come from (museum, own photos, archive ...)"),
    ("rights_holder", "who holds the rights to the images"),
    ("licence", "licence, e.g. CC-BY-4.0, 'own work', 'with permission'"),
    ("consent", "consent of the people depicted: yes / no / not_applicable"),
    ("cultural_context", "the cultural context of the images"),
    ("approved_by", "who approved this use (community, curator, teacher)"),
    ("language", "language of title, description and tags: de, en, yo, ... (optional)"),
    ("tags", "keywords, comma-separated (optional)"),
)


def _add_card_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dataset card (required before training; or --card card.json)")
    g.add_argument("--card", type=Path, help="a card JSON file with the fields below")
    for name, text in CARD_FLAGS:
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"card_{name}", help=text)


def card_from_args(args: argparse.Namespace) -> DatasetCard | None:
    """The card from --card and/or the card flags (flags override the file); None if none given.
    `args` comes from a parser with the card flags (_add_card_flags)."""
    data: dict[str, Any] = {}
    if args.card:
        data = load_card(args.card).model_dump(mode="json")
    # The flag names come from CARD_FLAGS, so they are read by name.
    flags = {name: getattr(args, f"card_{name}") for name, _ in CARD_FLAGS}
    data.update({k: v for k, v in flags.items() if v is not None})
    if not data:
        return None
    return card_from_dict(data, where=str(args.card) if args.card else "card flags")


def print_problems(problems: list[Problem], *, per_code: int = 5) -> None:
    """One line per finding; a code seen more than `per_code` times is shortened (`--json` has them all)."""
    seen: dict[tuple[str, str], int] = {}
    totals: dict[tuple[str, str], int] = {}
    for p in problems:
        totals[(p.severity, p.code)] = totals.get((p.severity, p.code), 0) + 1
    for p in problems:
        key = (p.severity, p.code)
        seen[key] = seen.get(key, 0) + 1
        style = _STYLE.get(p.severity, "")
        if seen[key] > per_code:
            if seen[key] == totals[key]:
                out.print(f"[{style}]{p.severity:7}[/] {p.code:22} ... and {totals[key] - per_code} more like this",
                          markup=True, highlight=False)
            continue
        line = f"[{style}]{p.severity:7}[/] {p.code:22} [bold]{p.file or '-'}[/]: {p.message}"
        if p.hint:
            line += f" [dim]-> {p.hint}[/]"
        out.print(line, markup=True, highlight=False)


def _summary(report: CheckReport) -> str:
    d = report.as_dict()
    c = d["counts"]
    verdict = "[green]ready for training[/]" if report.ok else "[bold red]blocked: fix the errors[/]"
    return (
        f"{d['num_images']} images, {d['num_usable']} usable, checked for {report.family} at {report.resolution} px"
        f"{' with preset ' + report.preset if report.preset else ''}: {c['error']} errors, {c['warning']} warnings, "
        f"{c['info']} notes -> {verdict}"
    )


def cmd_check(args: argparse.Namespace) -> int:
    trigger = args.trigger
    if trigger is None and Path(args.source, DATASET_MANIFEST).is_file():
        trigger = load_manifest(args.source).trigger  # a prepared dataset knows its trigger
    opts = CheckOptions(
        family=args.family, preset=args.preset, resolution=args.resolution, trigger=trigger,
        workers=args.workers,
    )
    with open_source(args.source) as src:
        report = run_checks(src, opts)
        kind = src.kind
    if args.json:
        print_json({"source": str(args.source), "kind": kind, **report.as_dict()})
    else:
        print_problems(report.problems)
        out.print(_summary(report), markup=True, highlight=False)
    return 0 if report.ok else 1


def cmd_prepare(args: argparse.Namespace) -> int:
    card = card_from_args(args)
    result = prepare_dataset(
        args.source, args.out, name=args.name, trigger=args.trigger, repeats=args.repeats, resize=args.resize,
        max_side=args.max_side, crop_size=args.crop_size, family=args.family, preset=args.preset,
        resolution=args.resolution, card=card,
        skip_bad=args.skip_bad, overwrite=args.overwrite, workers=args.workers,
    )
    m = result.manifest
    if args.json:
        print_json({
            "dataset_dir": str(result.out_dir), "num_images": m.num_images, "subset_dir": m.subset_dir,
            "trigger": m.trigger, "repeats": m.repeats, "card": card is not None, "skipped": result.skipped,
            **{k: v for k, v in result.report.as_dict().items() if k in ("counts", "problems")},
        })
        return 0
    print_problems(result.report.problems)
    out.print(f"[green]prepared[/] {m.num_images} images into [bold]{result.out_dir}[/] ({m.subset_dir}/, trigger "
              f"{m.trigger!r}, {m.repeats} repeats)", markup=True, highlight=False)
    if card is None:
        err.print(f"[yellow]no dataset card yet:[/] add one before planning: {train_command('card')} "
                  f"{result.out_dir} --card card.json", markup=True, highlight=False)
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    folder = Path(args.dataset)
    load_manifest(folder)
    card = card_from_args(args)
    if card is None:
        existing = folder / CARD_FILE
        if not existing.is_file():
            raise DatasetError(f"{folder} has no dataset card", hint="give --card card.json or the card flags")
        card = load_card(existing)
    else:
        card.write(folder / CARD_FILE)
    problems = card.problems()
    if args.json:
        print_json({"card": card.model_dump(mode="json"), "problems": [p.as_dict() for p in problems]})
    else:
        for key, value in card.model_dump(mode="json").items():
            if key != "per_image":
                out.print(f"[bold]{key:17}[/] {value}", markup=True, highlight=False)
        print_problems(problems)
    return 1 if problems else 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="sd35_large", choices=sorted(FAMILIES), help="model family (default sd35_large)")
    p.add_argument("--preset", choices=sorted(load_presets()), help="check the image count against this preset")
    p.add_argument("--trigger", help="trigger word that every caption should contain (prepare adds it where missing; "
                   "default for a Kohya tree: its N_<name> folder name)")
    p.add_argument("--resolution", type=int,
                   help="training resolution to judge image sizes against (default: the preset's, else the family's)")
    p.add_argument("--workers", type=int, help="processes for decoding (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="import images (folder, metadata.jsonl, ZIP, Kohya N_name tree) into a checked training dataset",
        description="Import images with captions into a normalised dataset folder (Kohya layout N_<trigger>/ with "
        ".txt captions, plus dataset.json). Sources: a folder of images with same-stem .txt captions; a folder "
        "with metadata.jsonl ({file_name,text} or {file,prompt}); a .zip of either; a Kohya N_name tree. "
        "Nothing is written when a blocking problem is found.",
    )
    p.add_argument("source", type=Path, help="folder, metadata.jsonl, .zip or Kohya tree")
    p.add_argument("--out", type=Path, required=True, help="the dataset folder to create")
    p.add_argument("--name", help="dataset name (default: the --out folder name)")
    p.add_argument("--repeats", type=int, help="how often each image is seen per epoch (default: from a Kohya "
                   "folder name, else the --preset's value, else 10)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="fit",
                   help="fit: shrink so the longest side is at most --max-side (default); crop: centre square of "
                   "--crop-size; keep: no resizing")
    p.add_argument("--max-side", type=int, default=1536, help="longest side for --resize fit (default 1536)")
    p.add_argument("--crop-size", type=int, help="square size for --resize crop (default: the training resolution)")
    p.add_argument("--skip-bad", action="store_true", help="leave out broken images instead of refusing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared dataset at --out")
    _common(p)
    _add_card_flags(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "check-dataset",
        help="check images and captions without writing anything (exit 1 on blocking errors)",
        description="Report unreadable, truncated or oversized images, converted modes, small or extreme images, "
        "duplicates and caption problems. Errors block training, warnings do not.",
    )
    p.add_argument("source", type=Path, help="folder, metadata.jsonl, .zip, Kohya tree or prepared dataset")
    _common(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "card",
        help="show or set the dataset card of a prepared dataset",
        description="A dataset card (title, description, source, rights holder, licence, consent, cultural "
        "context, approval) is required before training; it travels into the LoRA's metadata.",
    )
    p.add_argument("dataset", type=Path, help="a prepared dataset folder")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    _add_card_flags(p)
    p.set_defaults(func=cmd_card)
