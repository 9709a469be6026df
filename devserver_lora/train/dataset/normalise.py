"""`prepare`: import a source, check it, and write the normalised dataset folder (all or nothing).

Normalised form (identical bytes whichever of the four sources the images came from):
every image is decoded, turned upright (EXIF), converted to 8-bit RGB (transparency on white),
resized by the policy (`fit`: longest side at most `max_side`; `crop`: centre square of
`crop_size`; `keep`), and written as PNG named by the SHA-256 of those PNG bytes
(`<sha256[:16]>.png`); the caption (one UTF-8 line, trigger first where it was missing) goes
beside it as `.txt`. Manifest images are sorted by that hash. Exact duplicates are left out.

The folder is built under a staging name beside `out` and renamed into place at the end, so
a failed or refused import writes nothing at `out`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import DatasetError, Problem
from ...paths import atomic_write_json, atomic_write_text, check_simple_name
from ..card import CARD_FILE, DatasetCard
from ..presets import get_preset
from .captions import add_trigger
from .checks import RESIZE_POLICIES, CheckOptions, CheckReport, run_checks
from .importers import open_source
from .manifest import DATASET_MANIFEST, DatasetManifest, ManifestImage
from .zipsafe import ZipLimits

CHECKS_FILE = "checks.json"
DEFAULT_REPEATS = 10


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: DatasetManifest
    report: CheckReport
    skipped: list[str]


def class_folder_name(trigger: str | None, name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", (trigger or name).strip()).strip("._-") or "images"
    return base[:64]


def _check_trigger(trigger: str | None) -> str | None:
    if trigger is None:
        return None
    trigger = trigger.strip()
    if not trigger or "," in trigger or "\n" in trigger or len(trigger) > 64:
        raise DatasetError(
            f"trigger word {trigger!r} is not usable",
            hint="use one short word or phrase without commas, e.g. 'yoruba_adire'",
        )
    return trigger


def prepare_dataset(
    source: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    trigger: str | None = None,
    repeats: int | None = None,
    resize: str = "fit",
    max_side: int = 1536,
    crop_size: int | None = None,
    family: str = "sd35_large",
    preset: str | None = None,
    resolution: int | None = None,
    card: DatasetCard | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    zip_limits: ZipLimits | None = None,
) -> PrepareResult:
    out = Path(out_dir).expanduser().absolute()
    name = check_simple_name(name or out.name, what="dataset name")
    trigger = _check_trigger(trigger)
    if resize not in RESIZE_POLICIES:
        raise DatasetError(f"unknown resize policy {resize!r}", hint=f"choose one of {', '.join(RESIZE_POLICIES)}")
    if not 256 <= max_side <= 8192:
        raise DatasetError(f"--max-side {max_side} is outside 256-8192 px", hint="1536 keeps enough detail")
    if repeats is not None and not 1 <= repeats <= 1000:
        raise DatasetError(f"--repeats {repeats} is outside 1-1000", hint="10 is typical for 10-30 images")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetError(f"{out} already exists and is not empty", hint="choose a new --out folder or pass --overwrite")
        if not (out / DATASET_MANIFEST).is_file():
            raise DatasetError(
                f"{out} is not a dataset this tool prepared (no {DATASET_MANIFEST}); refusing to replace it",
                hint="choose a new --out folder",
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        result = _prepare_into(
            source, staging, out, name=name, trigger=trigger, repeats=repeats, resize=resize, max_side=max_side,
            crop_size=crop_size, family=family, preset=preset, resolution=resolution, card=card, skip_bad=skip_bad,
            workers=workers, zip_limits=zip_limits,
        )
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def _prepare_into(
    source_path: str | Path,
    staging: Path,
    out: Path,
    *,
    name: str,
    trigger: str | None,
    repeats: int | None,
    resize: str,
    max_side: int,
    crop_size: int | None,
    family: str,
    preset: str | None,
    resolution: int | None,
    card: DatasetCard | None,
    skip_bad: bool,
    workers: int | None,
    zip_limits: ZipLimits | None,
) -> PrepareResult:
    images_tmp = staging / ".images"
    images_tmp.mkdir()
    with open_source(source_path, zip_limits=zip_limits) as src:
        if trigger is None and src.class_name:
            # A Kohya tree's `N_<name>` folder names the trigger when none is given.
            trigger = _check_trigger(src.class_name)
        opts = CheckOptions(
            family=family, preset=preset, resolution=resolution, trigger=trigger, normalise=True,
            staging_dir=str(images_tmp),
            resize=resize, max_side=max_side, crop_size=crop_size, workers=workers,
        )
        report = run_checks(src, opts)
        kind, src_root = src.kind, str(Path(source_path).expanduser().absolute())
        preset_repeats = get_preset(preset).hyper.get("repeats") if preset else None
        repeats = repeats or src.repeats or preset_repeats or DEFAULT_REPEATS
        items = list(src.items)
    card_problems = card.problems() if card else []
    # An error about one image (or its caption file) can be skipped; one about the whole set cannot.
    owner = {it.source: it.source for it in items}
    owner.update({it.caption_source: it.source for it in items if it.caption_source and it.caption_source.endswith(".txt")})
    per_image_errors = {owner[p.file] for p in report.errors if p.file in owner}
    global_errors = [p for p in report.errors if p.file is None] + card_problems
    if report.errors and not skip_bad:
        raise DatasetError(
            f"the dataset has {len(report.errors)} blocking problem(s); nothing was written",
            hint="fix them, or pass --skip-bad to leave the broken images out",
            problems=report.errors + card_problems,
        )
    if global_errors:
        raise DatasetError("the dataset cannot be used; nothing was written", problems=global_errors)

    subset = class_folder_name(trigger, name)
    subset_dir = f"{repeats}_{subset}"
    (staging / subset_dir).mkdir()
    dropped = {p.file for p in report.problems if p.code == "duplicate_exact"}
    skipped: list[str] = []
    entries: list[ManifestImage] = []
    seen: set[str] = set()
    for item, res, caption in zip(items, report.images, report.captions, strict=True):
        if not res.ok or res.blocked or caption is None or item.source in per_image_errors:
            skipped.append(item.source)
            continue
        if item.source in dropped or res.out_sha256 in seen:
            continue
        assert res.out_sha256 and res.out_path
        seen.add(res.out_sha256)
        stem = res.out_sha256[:16]
        final_caption = add_trigger(caption, trigger)
        image_rel, caption_rel = f"{subset_dir}/{stem}.png", f"{subset_dir}/{stem}.txt"
        os.replace(res.out_path, staging / image_rel)
        atomic_write_text(staging / caption_rel, final_caption + "\n")
        entries.append(ManifestImage(
            file=image_rel, caption_file=caption_rel, sha256=res.out_sha256, source_sha256=res.source_sha256,
            width=res.out_width, height=res.out_height, mode="RGB", source_mode=res.source_mode or "",
            source_format=res.source_format, caption=final_caption, dhash=f"{res.dhash:016x}", source=item.source,
        ))
    shutil.rmtree(images_tmp, ignore_errors=True)
    if not entries:
        raise DatasetError("no usable images remain; nothing was written", problems=report.errors)
    entries.sort(key=lambda e: e.sha256)
    manifest = DatasetManifest(
        name=name, trigger=trigger, repeats=repeats, subset_dir=subset_dir, resize=resize,
        max_side=max_side if resize == "fit" else None,
        crop_size=(crop_size or opts.target_resolution()) if resize == "crop" else None,
        images=entries, source={"kind": kind, "path": src_root},
    )
    if skipped:
        report.problems.append(Problem(
            f"{len(skipped)} image(s) left out because of the errors above", code="images_skipped",
            severity="warning", extra={"files": skipped}))
    atomic_write_json(staging / DATASET_MANIFEST, manifest.model_dump(mode="json"))
    atomic_write_json(staging / CHECKS_FILE, report.as_dict())
    if card is not None:
        card.write(staging / CARD_FILE)
    return PrepareResult(out_dir=out, manifest=manifest, report=report, skipped=skipped)
