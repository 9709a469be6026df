"""Synthetic datasets for the training tests (dataset checks, plans, both backends).

`make_image_folder(tmp, n, size, planted=...)` writes `n` distinct JPEGs with same-stem
`.txt` captions ("<trigger>, a photo of pattern <i>") and, for each name in `planted`,
one extra file with that problem. `expected_findings(planted)` gives the (code, file)
pairs the checks must report for them. Everything is deterministic (seeded).
Also: the same images as metadata.jsonl (both spellings), as a ZIP and as a Kohya tree,
and ZIP builders for hostile archives (path traversal, symlinks, bombs) that cost
kilobytes on disk.
"""

from __future__ import annotations

import io
import json
import shutil
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

TRIGGER = "adire"
CARD = {
    "title": "Adire cloth patterns",
    "description": "Indigo resist-dyed cloth photographed by the class.",
    "source": "class photos, Lagos workshop 2025",
    "rights_holder": "the students of class 9b",
    "licence": "CC-BY-4.0",
    "consent": "not_applicable",
    "cultural_context": "Yoruba adire textiles, shown with the makers' permission",
    "approved_by": "workshop lead and teacher",
}

# planted name -> (file written, codes the checks must report for it)
PLANTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "unreadable": ("p_unreadable.png", ("image_unreadable",)),
    "truncated": ("p_truncated.jpg", ("image_truncated",)),
    "bomb": ("p_bomb.png", ("decompression_bomb",)),
    "cmyk": ("p_cmyk.jpg", ("mode_converted",)),
    "16bit": ("p_16bit.png", ("mode_converted",)),
    "palette_alpha": ("p_palette_alpha.png", ("transparency_flattened",)),
    "exif_rotated": ("p_exif.jpg", ("exif_rotated",)),
    "too_small": ("p_small.jpg", ("image_too_small",)),
    "extreme_aspect": ("p_wide.jpg", ("extreme_aspect_ratio",)),
    "duplicate_exact": ("p_dup_exact.jpg", ("duplicate_exact",)),
    "duplicate_near": ("p_dup_near.jpg", ("duplicate_near",)),
    "caption_missing": ("p_nocap.jpg", ("caption_missing",)),
    "caption_empty": ("p_emptycap.jpg", ("caption_empty",)),
    "caption_too_long": ("p_longcap.jpg", ("caption_too_long",)),
    "trigger_missing": ("p_notrigger.jpg", ("trigger_missing",)),
    "caption_not_utf8": ("p_latin1.jpg", ("caption_not_utf8",)),
}
# Findings whose `file` is the caption file rather than the image.
CAPTION_FILE_CODES = {"caption_empty", "caption_too_long", "trigger_missing", "caption_not_utf8"}


def pattern_image(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A smooth random colour pattern; different seeds give clearly different difference hashes."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(grid, "RGB").resize(size, Image.Resampling.BICUBIC)
    noise = rng.integers(-6, 7, size=(size[1], size[0], 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 90, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def caption_for(i: int, trigger: str = TRIGGER) -> str:
    return f"{trigger}, a photo of pattern {i}"


def forged_bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb) in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def make_image_folder(
    root: Path,
    n: int = 12,
    size: int = 128,
    *,
    planted: tuple[str, ...] = (),
    trigger: str = TRIGGER,
    seed: int = 0,
) -> Path:
    """`n` clean JPEG+caption pairs (img_000.jpg ...) plus one file per planted problem."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img_{i:03d}.jpg").write_bytes(jpeg_bytes(pattern_image(seed * 1000 + i, (size, size))))
        (root / f"img_{i:03d}.txt").write_text(caption_for(i, trigger), encoding="utf-8")
    for kind in planted:
        name, _ = PLANTED[kind]
        _plant(root, kind, name, size, seed, trigger)
    return root


def _plant(root: Path, kind: str, name: str, size: int, seed: int, trigger: str) -> None:
    img = pattern_image(seed * 1000 + 500 + len(kind) * 7 + sum(map(ord, kind)), (size, size))
    path = root / name
    cap = caption_for(900 + sum(map(ord, kind)), trigger)
    if kind == "unreadable":
        path.write_bytes(b"this is not a PNG file at all" * 10)
    elif kind == "truncated":
        data = jpeg_bytes(img)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bomb":
        path.write_bytes(forged_bomb_png())
    elif kind == "cmyk":
        img.convert("CMYK").save(path, format="JPEG", quality=90)
    elif kind == "16bit":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(arr).save(path, format="PNG")  # uint16 -> mode I;16
    elif kind == "palette_alpha":
        pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        pal.info["transparency"] = 0
        pal.save(path, format="PNG", transparency=0)
    elif kind == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        path.write_bytes(jpeg_bytes(img.resize((size, size * 7 // 8)), exif=exif.tobytes()))
    elif kind == "too_small":
        path.write_bytes(jpeg_bytes(img.resize((max(16, size // 4), max(16, size // 4)))))
    elif kind == "extreme_aspect":
        path.write_bytes(jpeg_bytes(pattern_image(seed + 77, (size * 4, size))))
    elif kind == "duplicate_exact":
        shutil.copyfile(root / "img_000.jpg", path)
        cap = (root / "img_000.txt").read_text(encoding="utf-8")
    elif kind == "duplicate_near":
        near = Image.open(root / "img_001.jpg").convert("RGB")
        arr = np.clip(np.asarray(near, dtype=np.int16) + 4, 0, 255).astype(np.uint8)
        path.write_bytes(jpeg_bytes(Image.fromarray(arr, "RGB"), quality=80))
    else:
        path.write_bytes(jpeg_bytes(img))
    txt = path.with_suffix(".txt")
    if kind == "caption_missing":
        return
    if kind == "caption_empty":
        txt.write_text("  \n", encoding="utf-8")
    elif kind == "caption_too_long":
        words = " ".join(f"intricately patterned indigo cloth detail number {i}" for i in range(12))
        txt.write_text(f"{trigger}, {words}", encoding="utf-8")
    elif kind == "trigger_missing":
        txt.write_text("a photo of a folded cloth", encoding="utf-8")
    elif kind == "caption_not_utf8":
        txt.write_bytes(f"{trigger}, Stoff aus Lagos, gefärbt".encode("latin-1"))
    else:
        txt.write_text(cap, encoding="utf-8")


def expected_findings(planted: tuple[str, ...]) -> set[tuple[str, str]]:
    """(code, file) pairs the checks must report for the planted problems (nothing for clean images)."""
    out = set()
    for kind in planted:
        name, codes = PLANTED[kind]
        for code in codes:
            file = str(Path(name).with_suffix(".txt")) if code in CAPTION_FILE_CODES else name
            out.add((code, file))
    return out


# --- the same images in the other three source layouts -----------------------------------------


def as_jsonl(folder: Path, dest: Path, *, spelling: tuple[str, str] = ("file_name", "text")) -> Path:
    """Copy the images of `folder` into `dest/images/` with a metadata.jsonl instead of .txt files."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "images").mkdir(exist_ok=True)
    lines = []
    for img in sorted(p for p in folder.iterdir() if p.suffix != ".txt"):
        shutil.copyfile(img, dest / "images" / img.name)
        row = {spelling[0]: f"images/{img.name}"}
        txt = img.with_suffix(".txt")
        if txt.exists():
            row[spelling[1]] = txt.read_text(encoding="utf-8")
        lines.append(json.dumps(row, ensure_ascii=False))
    (dest / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def as_zip(folder: Path, dest: Path, *, inner: str = "upload") -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{inner}/{p.name}")
    return dest


def as_kohya(folder: Path, dest: Path, *, repeats: int = 10, name: str = TRIGGER) -> Path:
    sub = dest / f"{repeats}_{name}"
    sub.mkdir(parents=True, exist_ok=True)
    for p in sorted(folder.iterdir()):
        shutil.copyfile(p, sub / p.name)
    return dest


# --- hostile archives ------------------------------------------------------------------------------


def zip_with_members(dest: Path, members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    """A ZIP holding exactly these member names (traversal names are written as given)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return dest


def _zeros_deflate(total: int, chunk: int = 1 << 20) -> tuple[bytes, int]:
    """A raw deflate stream of `total` zero bytes, built from one repeated full-flush block (cheap)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    n = total // chunk
    stream = first + block * (n - 1) + comp.flush(zlib.Z_FINISH)
    # The true CRC would mean hashing gigabytes; a safe extractor stops long before it checks it.
    crc = zlib.crc32(zeros) if n == 1 else 0
    return stream, crc


def zip_bomb(dest: Path, *, expanded: int = 10 << 30, declared: int | None = None, name: str = "big.png") -> Path:
    """A ZIP whose one member inflates to `expanded` zero bytes (10 GiB by default) in ~10 MB of disk.

    `declared` is the size written in the headers (default: the true size). Written by hand because
    zipfile would have to compress the 10 GiB itself. Zip64 extra fields carry sizes >= 4 GiB.
    """
    declared = expanded if declared is None else declared
    data, crc = _zeros_deflate(expanded)
    name_b = name.encode()
    zip64 = declared >= 0xFFFFFFFF or len(data) >= 0xFFFFFFFF
    usize32 = 0xFFFFFFFF if zip64 else declared
    csize32 = 0xFFFFFFFF if zip64 else len(data)
    extra_local = struct.pack("<HHQQ", 1, 16, declared, len(data)) if zip64 else b""
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, csize32, usize32, len(name_b), len(extra_local)
    ) + name_b + extra_local
    extra_cd = struct.pack("<HHQQ", 1, 16, declared, len(data)) if zip64 else b""
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, csize32, usize32, len(name_b),
        len(extra_cd), 0, 0, 0, 0o644 << 16, 0,
    ) + name_b + extra_cd
    cd_offset = len(local) + len(data)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), cd_offset, 0)
    with open(dest, "wb") as fh:
        fh.write(local)
        fh.write(data)
        fh.write(central)
        fh.write(eocd)
    return dest
