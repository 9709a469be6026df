"""Read the four kinds of dataset source into one list of (image, caption) items.

Sources (detected by `open_source`):
  * folder   images with same-stem `.txt` captions (captions optional)
  * jsonl    a folder with `metadata.jsonl`, lines `{"file_name", "text"}` or `{"file", "prompt"}`
  * kohya    a Kohya tree `<root>/<N>_<name>/` with images and captions (N = repeats)
  * zip      a ZIP of any of the above, extracted safely (zipsafe.py) into a temporary folder
Names inside metadata.jsonl and ZIP members are hostile and go through `safe_join`.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ... import safe_json
from ...errors import DatasetError, Problem, UnsafePathError
from ...paths import safe_join
from .zipsafe import ZipLimits, safe_extract

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
CAPTION_EXTENSION = ".txt"
METADATA_FILE = "metadata.jsonl"
_KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")
# (file key, caption key) spellings in use: Hugging Face imagefolder and the DevServer's own tools.
JSONL_SPELLINGS: tuple[tuple[str, str], ...] = (("file_name", "text"), ("file", "prompt"))


@dataclass(frozen=True)
class SourceItem:
    image: Path
    source: str  # the name the student knows it by (relative path / member name)
    caption: bytes | None  # raw caption bytes; None when there is no caption at all
    caption_source: str | None = None


@dataclass
class Source:
    kind: str
    root: Path
    items: list[SourceItem]
    repeats: int | None = None
    class_name: str | None = None
    problems: list[Problem] = field(default_factory=list)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.rsplit("/", 1)[-1].startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and is_image_name(p.name))


def _caption_for(image: Path) -> bytes | None:
    cap = image.with_suffix(CAPTION_EXTENSION)
    if cap.is_file() and not cap.is_symlink():
        return cap.read_bytes()
    return None


def _read_folder(root: Path, prefix: str = "") -> list[SourceItem]:
    items = []
    for img in _images_in(root):
        cap = _caption_for(img)
        items.append(
            SourceItem(
                image=img,
                source=f"{prefix}{img.name}",
                caption=cap,
                caption_source=f"{prefix}{img.with_suffix(CAPTION_EXTENSION).name}" if cap is not None else None,
            )
        )
    return items


def _kohya_dirs(root: Path) -> list[tuple[Path, int, str]]:
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        m = _KOHYA_DIR.match(sub.name)
        if m and _images_in(sub):
            found.append((sub, int(m.group(1)), m.group(2)))
    return found


def _read_jsonl(root: Path) -> tuple[list[SourceItem], list[Problem]]:
    meta = root / METADATA_FILE
    items: list[SourceItem] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    raw = meta.read_bytes()
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"$[line {lineno}]"
        try:
            row = safe_json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(Problem(f"not a JSON object: {exc}", file=METADATA_FILE, path=where,
                                    code="metadata_invalid", hint="one JSON object per line"))
            continue
        if not isinstance(row, dict):
            problems.append(Problem("line is not a JSON object", file=METADATA_FILE, path=where,
                                    code="metadata_invalid"))
            continue
        spelling = next(((f, c) for f, c in JSONL_SPELLINGS if f in row), None)
        if spelling is None:
            problems.append(Problem("no image name", file=METADATA_FILE, path=where, code="metadata_invalid",
                                    hint='use {"file_name": ..., "text": ...} or {"file": ..., "prompt": ...}'))
            continue
        name, text = row[spelling[0]], row.get(spelling[1])
        if not isinstance(name, str):
            problems.append(Problem("image name is not a string", file=METADATA_FILE, path=where,
                                    code="metadata_invalid"))
            continue
        try:
            image = safe_join(root, name, what="image name in metadata.jsonl")
        except UnsafePathError as exc:
            problems.append(Problem(exc.message, file=METADATA_FILE, path=where, code="metadata_unsafe_path",
                                    hint="image names must be relative to the folder of metadata.jsonl"))
            continue
        if name in seen:
            problems.append(Problem(f"{name} is listed twice", file=METADATA_FILE, path=where,
                                    code="metadata_duplicate", severity="warning", hint="the first entry is used"))
            continue
        seen.add(name)
        if not image.is_file():
            problems.append(Problem(f"image {name} does not exist", file=METADATA_FILE, path=where,
                                    code="image_missing", hint="fix the name or add the image"))
            continue
        caption = text.encode("utf-8") if isinstance(text, str) else None
        items.append(SourceItem(image=image, source=name, caption=caption,
                                caption_source=METADATA_FILE if caption is not None else None))
    items.sort(key=lambda i: i.source)
    return items, problems


def read_directory(root: Path, kind_hint: str | None = None) -> Source:
    """Detect the layout of an unpacked folder and read it."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder", hint="give a folder of images, a ZIP, or a Kohya N_name tree")
    if (root / METADATA_FILE).is_file():
        items, problems = _read_jsonl(root)
        return Source(kind=kind_hint or "jsonl", root=root, items=items, problems=problems)
    top = _images_in(root)
    kohya = _kohya_dirs(root)
    if kohya and not top:
        found: list[SourceItem] = []
        for sub, _repeats, _name in kohya:
            found.extend(_read_folder(sub, prefix=f"{sub.name}/"))
        repeats = {r for _, r, _ in kohya}
        mixed: list[Problem] = []
        if len(repeats) > 1:
            mixed.append(Problem(f"subfolders use different repeats {sorted(repeats)}; one value is used for all",
                                 code="mixed_repeats", severity="warning", hint="pass --repeats to choose"))
        return Source(kind=kind_hint or "kohya", root=root, items=found, repeats=kohya[0][1],
                      class_name=kohya[0][2], problems=mixed)
    if not top:
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("__MACOSX", "."))]
        if len(subdirs) == 1:
            # A ZIP of a folder unpacks to one folder: look inside it.
            return read_directory(subdirs[0], kind_hint)
    return Source(kind=kind_hint or "folder", root=root, items=_read_folder(root))


@contextmanager
def open_source(path: str | Path, *, zip_limits: ZipLimits | None = None) -> Iterator[Source]:
    """Yield the Source at `path` (folder, metadata.jsonl folder or file, Kohya tree, or ZIP)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"dataset source {p} does not exist", hint="give a folder of images or a .zip file")
    if p.is_file() and p.name == METADATA_FILE:
        p = p.parent
    if p.is_file():
        if not zipfile.is_zipfile(p):
            raise DatasetError(f"{p} is neither a folder nor a ZIP file",
                               hint="give a folder of images with .txt captions, a metadata.jsonl folder or a .zip")
        tmp = Path(tempfile.mkdtemp(prefix="devserver-lora-zip-"))
        try:
            target = tmp / "x"
            safe_extract(p, target, limits=zip_limits)
            yield read_directory(target, kind_hint="zip")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    yield read_directory(p)
