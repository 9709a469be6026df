"""The Studio's datasets: what a user uploaded, its check results and thumbnails, its card, its prepared forms.

    <home>/studio/datasets/<owner key>/<name>/
        source/          the upload as received (upload.zip, or the images with their captions / metadata.jsonl)
        view.json        the dataset checks of the training package, per image and for the whole set
        thumbs/          small PNGs of the readable images
        card.json        the dataset card (DatasetCard), once the form was sent
        prepared/<key>/  `prepare`d datasets (train/dataset/normalise.py), one per trigger word, made when planned

An upload is received into a staging folder and renamed into place only when it was accepted, so a refused upload
leaves nothing behind, and two users (or two tabs) never write into the same folder: each dataset lives below its
owner's key and a name that exists is refused (409).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from werkzeug.datastructures import FileStorage

from ..errors import Problem, UnsafePathError
from ..paths import atomic_write_json, check_simple_name, safe_join
from ..train.card import CARD_FILE, DatasetCard, load_card
from ..train.dataset.checks import TOO_SMALL, CheckOptions, CheckReport, run_checks, too_small
from ..train.dataset.importers import CAPTION_EXTENSION, METADATA_FILE, is_image_name, open_source
from ..train.dataset.manifest import DATASET_MANIFEST
from ..train.dataset.normalise import prepare_dataset
from ..train.dataset.zipsafe import ZipLimits
from .config import StudioConfig
from .identity import owner_key
from .ranges import RESOLUTION
from .replies import StudioRefusal, field, problem_dict

SOURCE_DIR = "source"
VIEW_FILE = "view.json"
THUMBS_DIR = "thumbs"
PREPARED_DIR = "prepared"
UPLOAD_ZIP = "upload.zip"
THUMB_SIDE = 192
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PREPARE_LOCK = threading.Lock()


def check_dataset_name(name: Any, *, what: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith("."):
        raise StudioRefusal(400, f"{what} {name!r} is not usable as a name", hint="use 1-64 letters, digits, '.', "
                            "'_' or '-', starting with a letter or digit",
                            fields=[field(what, "not a safe name", "use letters, digits, '.', '_' or '-'")])
    return check_simple_name(name, what=what)


def dataset_dir(config: StudioConfig, owner: str, name: str) -> Path:
    return safe_join(safe_join(config.datasets_dir, owner_key(owner), what="owner"), name, what="dataset name")


def _upload_name(upload: FileStorage) -> str:
    """The file's own name (browsers may send a folder path with it); hostile names are refused."""
    raw = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    try:
        return check_simple_name(raw, what="uploaded file name")
    except UnsafePathError:
        raise StudioRefusal(400, f"the uploaded file name {upload.filename!r} is not usable",
                            hint="rename the file to letters, digits, '.', '_' and '-'",
                            fields=[field("files", f"bad file name {upload.filename!r}", "rename it")]) from None


def _save_files(uploads: list[FileStorage], folder: Path, config: StudioConfig) -> Path:
    """Write the uploads into `folder`; the path to hand to `open_source` (the ZIP, or the folder)."""
    limits = config.limits
    if not uploads:
        raise StudioRefusal(400, "no files were uploaded", hint="choose one ZIP, or the images and their captions",
                            fields=[field("files", "no files", "choose one ZIP or several images")])
    if len(uploads) > limits.max_files:
        raise StudioRefusal(400, f"{len(uploads)} files are more than {limits.max_files}",
                            hint="pack them into one ZIP", fields=[field("files", "too many files", "upload a ZIP")])
    folder.mkdir()
    names = [_upload_name(u) for u in uploads]
    if len(uploads) == 1 and names[0].lower().endswith(".zip"):
        target = folder / UPLOAD_ZIP
        uploads[0].save(target)
        return target
    seen: set[str] = set()
    for upload, name in zip(uploads, names, strict=True):
        lower = name.lower()
        if not (is_image_name(name) or lower.endswith(CAPTION_EXTENSION) or name == METADATA_FILE):
            raise StudioRefusal(400, f"{name} is neither an image, a .txt caption nor metadata.jsonl",
                                hint="upload images (.png, .jpg, .webp ...), captions (.txt) or one ZIP",
                                fields=[field("files", f"{name}: unsupported file type", "leave it out")])
        if lower in seen:
            raise StudioRefusal(400, f"{name} was uploaded twice", hint="give every file its own name",
                                fields=[field("files", f"{name} twice", "rename or leave one out")])
        seen.add(lower)
        upload.save(folder / name)
    if not any(is_image_name(n) for n in names):
        raise StudioRefusal(400, "the upload holds no image", hint="add .png, .jpg or .webp images",
                            fields=[field("files", "no images", "add images")])
    return folder


def _thumb_name(source: str) -> str:
    return "t" + hashlib.sha256(source.encode("utf-8")).hexdigest()[:20] + ".png"


def _write_thumb(image: Path, target: Path) -> bool:
    try:
        with Image.open(image) as opened:
            opened.draft("RGB", (THUMB_SIDE * 2, THUMB_SIDE * 2))
            small = ImageOps.exif_transpose(opened).convert("RGB")
            small.thumbnail((THUMB_SIDE, THUMB_SIDE))
            small.save(target, "PNG")
        return True
    except Exception:  # noqa: BLE001 - an unreadable image has no thumbnail; the checks say why
        return False


def _view(report: CheckReport, items: list[Any], thumbs: dict[str, str], owner: str, name: str,
          kind: str) -> dict[str, Any]:
    per_file: dict[str, list[Problem]] = {}
    owner_of = {it.source: it.source for it in items}
    owner_of.update({it.caption_source: it.source for it in items if it.caption_source})
    overall: list[Problem] = []
    for p in report.problems:
        target = owner_of.get(p.file or "")
        if target is None:
            overall.append(p)
        else:
            per_file.setdefault(target, []).append(p)
    images = []
    for item, res, caption in zip(items, report.images, report.captions, strict=True):
        images.append({
            "file": item.source, "caption": caption, "thumb": thumbs.get(item.source),
            "width": res.width or None, "height": res.height or None,
            "problems": [problem_dict(p) for p in per_file.get(item.source, [])],
        })
    usable = sum(1 for i in images if not any(p["severity"] == "error" for p in i["problems"]))
    blocking = usable == 0 or any(p.severity == "error" for p in overall)
    return {"name": name, "owner": owner, "kind": kind, "images": images, "resolution": report.resolution,
            "problems": [problem_dict(p) for p in overall], "blocking": blocking, "usable": usable}


def resolution_arg(value: str | None, *, where: str) -> int | None:
    """A training resolution sent with a request (form field or query), held to the Studio's range."""
    if value is None or value == "":
        return None
    low, high = RESOLUTION
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not low <= number <= high:
        raise StudioRefusal(400, f"resolution {value!r} is not a whole number of pixels from {low} to {high}",
                            hint=f"send a resolution between {low} and {high} px",
                            fields=[field(where, "out of range", f"a whole number from {low} to {high}")])
    return number


def rejudge_sizes(view: dict[str, Any], resolution: int) -> None:
    """Judge each image's stored size for training at `resolution` (dataset.checks.too_small, the check's own verdict):
    the upload was checked at one resolution, the plan may train at another."""
    for image in view["images"]:
        kept = [p for p in image["problems"] if p.get("code") != TOO_SMALL]
        if image.get("width") and image.get("height"):
            small = too_small(int(image["width"]), int(image["height"]), resolution, file=image["file"])
            if small is not None:
                kept.append(problem_dict(small))
        image["problems"] = kept
    view["resolution"] = resolution


def receive(config: StudioConfig, owner: str, name: str, uploads: list[FileStorage], *, family: str,
            resolution: int | None = None) -> Path:
    """Store, check and thumbnail an upload as dataset `name` of `owner`; all or nothing."""
    target = dataset_dir(config, owner, name)
    if target.exists():
        raise StudioRefusal(409, f"you already have a dataset called {name}", hint="choose another name",
                            fields=[field("name", "exists already", "choose another name")])
    staging = Path(tempfile.mkdtemp(prefix="upload-", dir=config.staging_dir))
    try:
        source = _save_files(uploads, staging / SOURCE_DIR, config)
        limits = ZipLimits(max_total_bytes=config.limits.max_zip_bytes, max_members=config.limits.max_zip_members)
        (staging / THUMBS_DIR).mkdir()
        with open_source(source, zip_limits=limits) as src:
            report = run_checks(src, CheckOptions(family=family, resolution=resolution, workers=1))
            thumbs = {}
            for item, res in zip(src.items, report.images, strict=True):
                thumb = _thumb_name(item.source)
                if res.ok and _write_thumb(item.image, staging / THUMBS_DIR / thumb):
                    thumbs[item.source] = thumb
            view = _view(report, list(src.items), thumbs, owner, name, src.kind)
        atomic_write_json(staging / VIEW_FILE, view)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging, target)  # not os.replace: a folder that appeared meanwhile is not overwritten
        except OSError:
            raise StudioRefusal(409, f"you already have a dataset called {name}", hint="choose another name",
                                fields=[field("name", "exists already", "choose another name")]) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_view(folder: Path) -> dict[str, Any]:
    return json.loads((folder / VIEW_FILE).read_text(encoding="utf-8"))


def read_card(folder: Path) -> DatasetCard | None:
    path = folder / CARD_FILE
    return load_card(path) if path.is_file() else None


def write_card(folder: Path, card: DatasetCard) -> None:
    """The card of the dataset and of every prepared form of it (a job copies it from there)."""
    card.write(folder / CARD_FILE)
    prepared = folder / PREPARED_DIR
    if prepared.is_dir():
        for sub in prepared.iterdir():
            if (sub / DATASET_MANIFEST).is_file():
                card.write(sub / CARD_FILE)


def _trigger_key(trigger: str | None) -> str:
    if not trigger:
        return "no-trigger"
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", trigger)[:40]
    return f"t-{safe}-{hashlib.sha256(trigger.encode('utf-8')).hexdigest()[:8]}"


def prepared(config: StudioConfig, folder: Path, *, trigger: str | None, family: str,
             validate: Callable[[Path], object]) -> Path:
    """The `prepare`d form of the dataset for `trigger`, made on first use (images that failed a check are left out,
    as `prepare --skip-bad` does; the page showed them flagged). A new form is kept only when `validate(folder)`
    (the plan) accepts it, so a refused plan leaves nothing behind."""
    out = folder / PREPARED_DIR / _trigger_key(trigger)
    with _PREPARE_LOCK:
        if (out / DATASET_MANIFEST).is_file():
            return out
        source = folder / SOURCE_DIR
        zipped = source / UPLOAD_ZIP
        card = read_card(folder)
        staging = Path(tempfile.mkdtemp(prefix="prepare-", dir=config.staging_dir))
        try:
            made = prepare_dataset(
                zipped if zipped.is_file() else source, staging / "dataset", name=folder.name, trigger=trigger,
                family=family, card=card, skip_bad=True, workers=1,
                zip_limits=ZipLimits(max_total_bytes=config.limits.max_zip_bytes,
                                     max_members=config.limits.max_zip_members)).out_dir
            validate(made)
            out.parent.mkdir(exist_ok=True)
            os.rename(made, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def remove_dataset(config: StudioConfig, owner: str, name: str) -> None:
    """Delete a dataset folder (and its owner's folder when that is left empty)."""
    folder = dataset_dir(config, owner, name)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass  # other datasets of this owner remain


def list_datasets(config: StudioConfig, owner: str | None) -> list[Path]:
    """The dataset folders of `owner` (None: everyone's), newest first."""
    root = config.datasets_dir
    owners = [root / owner_key(owner)] if owner is not None else [p for p in root.iterdir() if p.is_dir()]
    found = [d for o in owners if o.is_dir() for d in o.iterdir() if (d / VIEW_FILE).is_file()]
    return sorted(found, key=lambda d: (d / VIEW_FILE).stat().st_mtime, reverse=True)
