"""Dataset checks: every finding is a `Problem` with a `code`, the file it concerns, and a severity.

Severities: "error" blocks training; "warning" does not; "info" notes a conversion we made.

Per image (run in a process pool, both cores):
  image_unreadable, image_truncated, decompression_bomb (errors); very_large_image, image_too_small,
  extreme_aspect_ratio (warnings); mode_converted (CMYK, 16-bit, ...), transparency_flattened,
  exif_rotated (info).
Per caption: caption_not_utf8 (error); caption_missing, caption_empty, caption_too_long (CLIP families,
  see captions.py for the token estimate), trigger_missing (warnings).
Across images: duplicate_exact (same bytes or same normalised pixels; the copy is dropped),
  duplicate_near (the same picture re-encoded, resized or slightly cropped, in the same colours: see
  likeness.py) (warnings); no_images,
  too_few_images (error below half the preset's minimum, warning below it), too_many_images (warning).

Decoding cost is bounded for checks: JPEGs are decoded with `Image.draft` at 1/8 scale (the whole
entropy-coded stream is still read, so truncation is still caught) and the fingerprints are taken from a
`reduce`d thumbnail. With `normalise=True` (prepare), the full image is decoded and written as PNG.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ...errors import DatasetError, Problem
from ...paths import atomic_write_bytes
from ..families import get_family
from ..presets import Preset, get_preset
from .captions import (
    CLIP_MAX_TOKENS,
    CaptionDecodeError,
    add_trigger,
    decode_caption,
    estimate_clip_tokens,
    has_trigger,
)
from .importers import Source
from .likeness import Likeness, likeness, near_copies

RESIZE_POLICIES = ("fit", "crop", "keep")
TOO_SMALL = "image_too_small"
INLINE_BELOW = 16  # fewer images than this: no process pool (starting one costs more than it saves)


def too_small(width: int, height: int, target: int, *, fraction: float = 0.5, file: str | None = None) -> Problem | None:
    """The one verdict on an image's size for training at `target` px (the Studio re-judges stored sizes with it when
    the resolution changes, without reading the images again)."""
    if width * height >= fraction * target * target:
        return None
    side = int(target * fraction ** 0.5)
    return Problem(f"{width}x{height} px is small for training at {target} px; it will be blurry", file=file,
                   code=TOO_SMALL, severity="warning", hint=f"use images of at least {side}x{side} px or a lower resolution")


@dataclass(frozen=True)
class CheckOptions:
    family: str = "sd35_large"
    preset: str | None = None
    resolution: int | None = None
    trigger: str | None = None
    max_aspect_ratio: float = 3.0
    small_area_fraction: float = 0.5
    # prepare only
    normalise: bool = False
    staging_dir: str | None = None
    resize: str = "fit"
    max_side: int = 1536
    crop_size: int | None = None
    workers: int | None = None

    def target_resolution(self) -> int:
        if self.resolution:
            return self.resolution
        if self.preset:
            res = get_preset(self.preset).hyper.get("resolution")
            if res:
                return min(int(res), get_family(self.family).default_resolution)
        return get_family(self.family).default_resolution


@dataclass
class ImageResult:
    source: str
    ok: bool = False
    source_sha256: str = ""
    source_format: str | None = None
    source_mode: str | None = None
    width: int = 0
    height: int = 0
    dhash: int | None = None
    likeness: Likeness | None = None
    problems: list[Problem] = field(default_factory=list)
    out_path: str | None = None
    out_sha256: str | None = None
    out_width: int = 0
    out_height: int = 0

    @property
    def blocked(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


@dataclass
class CheckReport:
    images: list[ImageResult]
    captions: list[str | None]
    problems: list[Problem]
    resolution: int
    family: str
    preset: str | None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "family": self.family,
            "preset": self.preset,
            "resolution": self.resolution,
            "num_images": len(self.images),
            "num_usable": sum(1 for i in self.images if i.ok and not i.blocked),
            "counts": {
                sev: sum(1 for p in self.problems if p.severity == sev) for sev in ("error", "warning", "info")
            },
            "problems": [p.as_dict() for p in self.problems],
        }


# --- one image (runs in a worker process) ------------------------------------------------------


def _png_bit_depth(data: bytes) -> int | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
        return data[24]
    return None


def dhash(img: Image.Image) -> int:
    """64-bit difference hash: brightness gradients of a 9x8 grey thumbnail."""
    grey = img.convert("L")
    factor = min(grey.width // 64, grey.height // 64)
    if factor > 1:
        grey = grey.reduce(factor)
    small = np.asarray(grey.resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _to_rgb(img: Image.Image, bit_depth: int | None, note) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") or (bit_depth == 16):
        if mode in ("RGB", "RGBA"):
            note("mode_converted", "16-bit colour image converted to 8-bit RGB")
            return _flatten(img, note) if mode == "RGBA" else img
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if bit_depth == 16 or mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        note("mode_converted", f"16-bit image (mode {mode}) converted to 8-bit RGB")
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "CMYK":
        note("mode_converted", "CMYK image converted to RGB (colours may shift slightly)")
        return img.convert("RGB")
    if mode == "P":
        if "transparency" in img.info:
            return _flatten(img.convert("RGBA"), note)
        return img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _flatten(img.convert("RGBA"), note)
    if mode in ("RGB",):
        return img
    if mode in ("L", "1"):
        return img.convert("RGB")
    note("mode_converted", f"mode {mode} converted to RGB")
    return img.convert("RGB")


def _flatten(rgba: Image.Image, note) -> Image.Image:
    alpha = rgba.getchannel("A")
    lowest = alpha.getextrema()[0]  # one band: (min, max) of numbers
    if not isinstance(lowest, tuple) and lowest < 255:
        note("transparency_flattened", "transparent areas were filled with white")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba.convert("RGB"), mask=alpha)
        return background
    return rgba.convert("RGB")


def _resize(img: Image.Image, opts: CheckOptions) -> Image.Image:
    if opts.resize == "crop":
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side))
        size = opts.crop_size or opts.target_resolution()
        if side > size:
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        return img
    if opts.resize == "fit" and max(img.size) > opts.max_side:
        scale = opts.max_side / max(img.size)
        new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        return img.resize(new, Image.Resampling.LANCZOS)
    return img


def analyse_image(path: str, source: str, opts: CheckOptions) -> ImageResult:
    """Decode one image, record what is wrong with it, and (normalise=True) write its normalised PNG."""
    res = ImageResult(source=source)

    def note(code: str, message: str, severity: str = "info", hint: str | None = None, **extra) -> None:
        res.problems.append(Problem(message, file=source, code=code, severity=severity, hint=hint, extra=extra))

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        note("image_unreadable", f"cannot read the file: {exc.strerror or exc}", "error")
        return res
    res.source_sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            res.source_format = img.format
            res.source_mode = img.mode
            if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
                note("very_large_image", f"very large image ({img.width}x{img.height} px); it will be scaled down",
                     "warning", hint="scale it down before uploading to save time")
            orientation = img.getexif().get(0x0112, 1)
            width, height = img.size  # from the header, before a draft decode shrinks it
            if not opts.normalise and img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except Image.DecompressionBombError as exc:
        note("decompression_bomb", f"refused: {exc}", "error",
             hint="this image claims an enormous size; open and re-save it at a normal size")
        return res
    except UnidentifiedImageError:
        note("image_unreadable", "not an image Pillow can read", "error",
             hint="export it again as PNG or JPEG")
        return res
    except Exception as exc:  # noqa: BLE001 - any decoder failure on a hostile file is a finding, not a crash
        truncated = "truncat" in str(exc).lower() or isinstance(exc, EOFError)
        if truncated:
            note("image_truncated", f"the file is cut off ({exc})", "error",
                 hint="the upload or copy was incomplete; copy the original again")
        else:
            note("image_unreadable", f"the image data is broken ({exc})", "error",
                 hint="open it in an image editor and save it again")
        return res
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if orientation in range(2, 9):
        img = ImageOps.exif_transpose(img)
        note("exif_rotated", f"turned upright from its camera orientation (EXIF orientation {orientation})")
    res.width, res.height = width, height
    img = _to_rgb(img, _png_bit_depth(data), note)
    res.dhash = dhash(img)
    res.likeness = likeness(img)
    small = too_small(width, height, opts.target_resolution(), fraction=opts.small_area_fraction, file=source)
    if small is not None:
        res.problems.append(small)
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > opts.max_aspect_ratio:
        note("extreme_aspect_ratio", f"aspect ratio {aspect:.1f}:1 is extreme; most of it will be cropped away",
             "warning", hint="crop it closer to the subject (at most 3:1)")
    if opts.normalise:
        img = _resize(img, opts)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6)
        out = buf.getvalue()
        res.out_sha256 = hashlib.sha256(out).hexdigest()
        res.out_width, res.out_height = img.size
        if opts.staging_dir:
            dest = Path(opts.staging_dir) / f"{res.out_sha256}.png"
            if not dest.exists():
                atomic_write_bytes(dest, out)
            res.out_path = str(dest)
    res.ok = True
    return res


def _analyse_star(args: tuple[str, str, CheckOptions]) -> ImageResult:
    return analyse_image(*args)


def analyse_images(jobs: list[tuple[str, str]], opts: CheckOptions) -> list[ImageResult]:
    """Analyse many images on every core (a process pool), keeping the input order."""
    args = [(path, source, opts) for path, source in jobs]
    workers = opts.workers or os.cpu_count() or 1
    if workers <= 1 or len(args) < INLINE_BELOW:
        return [_analyse_star(a) for a in args]
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    chunks = max(1, len(args) // (workers * 4))
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method)) as pool:
            return list(pool.map(_analyse_star, args, chunksize=chunks))
    except BrokenProcessPool as exc:
        raise DatasetError(
            "an image decoder process died (out of memory, or a file that crashes the decoder)",
            hint="run check-dataset with --workers 1 to find the file, then remove or re-save it",
        ) from exc


# --- captions and the dataset as a whole -------------------------------------------------------


def read_captions(source: Source, opts: CheckOptions) -> tuple[list[str | None], list[Problem]]:
    """Decoded captions (None where unusable) and caption problems, in item order."""
    fam = get_family(opts.family)
    captions: list[str | None] = []
    problems: list[Problem] = []
    for item in source.items:
        # A .txt file is named; a caption from metadata.jsonl is named by its image.
        where = item.caption_source if (item.caption_source or "").endswith(".txt") else item.source
        if item.caption is None:
            problems.append(Problem("no caption", file=item.source, code="caption_missing", severity="warning",
                                    hint=f"add {Path(item.source).stem}.txt describing the image"
                                    + (" (the trigger word is used alone)" if opts.trigger else "")))
            captions.append("")
            continue
        try:
            text = decode_caption(item.caption)
        except CaptionDecodeError as exc:
            problems.append(Problem(f"caption is {exc}", file=where, code="caption_not_utf8", severity="error",
                                    hint="save the caption file as UTF-8 in your editor"))
            captions.append(None)
            continue
        if not text:
            problems.append(Problem("caption is empty", file=where, code="caption_empty", severity="warning",
                                    hint="describe what the image shows in a sentence"))
        elif opts.trigger and not has_trigger(text, opts.trigger):
            problems.append(Problem(f"trigger word {opts.trigger!r} missing from the caption", file=where,
                                    code="trigger_missing", severity="warning",
                                    hint="prepare adds it at the start of the caption"))
        final = add_trigger(text, opts.trigger)
        if fam.caption_token_limit:
            tokens = estimate_clip_tokens(final)
            if tokens > fam.caption_token_limit:
                problems.append(Problem(
                    f"caption is about {tokens} CLIP tokens; CLIP reads {CLIP_MAX_TOKENS} and cuts off the rest",
                    file=where, code="caption_too_long", severity="warning",
                    hint="shorten it to the essentials (about 50 words)", extra={"tokens": tokens}))
        captions.append(text)
    return captions, problems


def duplicate_problems(results: list[ImageResult]) -> list[Problem]:
    """Exact copies (same file bytes or same normalised pixels) and near-copies (likeness.py) among `results`."""
    problems: list[Problem] = []
    first_by_hash: dict[str, str] = {}
    exact: set[int] = set()
    for idx, r in enumerate(results):
        if not r.ok:
            continue
        keys = [r.source_sha256] + ([r.out_sha256] if r.out_sha256 else [])
        dup_of = next((first_by_hash[k] for k in keys if k in first_by_hash), None)
        if dup_of is not None:
            exact.add(idx)
            problems.append(Problem(f"exact duplicate of {dup_of}; the copy is left out", file=r.source,
                                    code="duplicate_exact", severity="warning", extra={"duplicate_of": dup_of}))
            continue
        for k in keys:
            first_by_hash.setdefault(k, r.source)
    kept = [r for i, r in enumerate(results) if r.ok and r.likeness is not None and i not in exact]
    reported: set[int] = set()
    for pair in near_copies([r.likeness for r in kept if r.likeness is not None]):
        if pair.second in reported:
            continue
        reported.add(pair.second)
        first, copy = kept[pair.first], kept[pair.second]
        problems.append(Problem(
            f"looks like a copy of {first.source} (re-encoded, resized or slightly cropped: layout match "
            f"{pair.layout:.2f}, colours within {pair.colour:g} of 255 levels)",
            file=copy.source, code="duplicate_near", severity="warning",
            hint="near-copies make the LoRA memorise one picture; keep the better one",
            extra={"duplicate_of": first.source, "layout": pair.layout, "colour_distance": pair.colour}))
    return problems


def count_problems(n: int, preset: Preset | None) -> list[Problem]:
    if n == 0:
        return [Problem("no usable images", code="no_images", hint="add PNG or JPEG images")]
    if preset is None:
        return []
    if n < preset.min_images:
        severe = n < max(1, (preset.min_images + 1) // 2)
        return [Problem(
            f"{n} images is {'far ' if severe else ''}too few for {preset.label_de} ({preset.min_images}-"
            f"{preset.max_images})", code="too_few_images", severity="error" if severe else "warning",
            hint="add images, or choose the fotostudio or quick_test preset")]
    if n > preset.max_images:
        return [Problem(
            f"{n} images is more than {preset.label_de} is meant for ({preset.min_images}-{preset.max_images})",
            code="too_many_images", severity="warning",
            hint="choose a preset for more images (atelier, galerie), or pick the best ones")]
    return []


def run_checks(source: Source, opts: CheckOptions) -> CheckReport:
    """Check every image and caption of `source` and the set as a whole."""
    get_family(opts.family)
    preset = get_preset(opts.preset) if opts.preset else None
    results = analyse_images([(str(i.image), i.source) for i in source.items], opts)
    captions, caption_problems = read_captions(source, opts)
    problems: list[Problem] = list(source.problems)
    for r in results:
        problems.extend(r.problems)
    problems.extend(caption_problems)
    dups = duplicate_problems(results)
    problems.extend(dups)
    dropped = {p.file for p in dups if p.code == "duplicate_exact"}
    usable = sum(1 for r, c in zip(results, captions, strict=True)
                 if r.ok and c is not None and r.source not in dropped)
    problems.extend(count_problems(usable, preset))
    order = {"error": 0, "warning": 1, "info": 2}
    problems.sort(key=lambda p: (order.get(p.severity, 3), p.file or "", p.code))
    return CheckReport(images=results, captions=captions, problems=problems, resolution=opts.target_resolution(),
                       family=opts.family, preset=opts.preset)
