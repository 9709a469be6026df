"""Benchmark: images per second of `check-dataset` against a bare Pillow decode loop.

    .venv/bin/python bench/dataset.py [--n 200] [--size 1024] [--workers N]

Generates `n` JPEGs of `size` px (with captions) in a temporary folder, then times in the
same run (a) a bare single-process loop `Image.open(f).load()` over the same files and
(b) the full `check-dataset` path (scan, decode, checks, hashes, captions, duplicates) with
the process pool. Prints both rates and the ratio check/bare (target >= 0.7). Best of 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devserver_lora.train.dataset.checks import CheckOptions, run_checks  # noqa: E402
from devserver_lora.train.dataset.importers import open_source  # noqa: E402


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        grid = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(grid, "RGB").resize((size, size), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, size=(size, size, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8), "RGB")
        path = folder / f"img_{i:04d}.jpg"
        img.save(path, format="JPEG", quality=90)
        path.with_suffix(".txt").write_text(f"bench, pattern {i}", encoding="utf-8")
        files.append(path)
    return files


def bare_decode(files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.load()
    return time.perf_counter() - start


def check_dataset(folder: Path, workers: int | None) -> float:
    start = time.perf_counter()
    with open_source(folder) as src:
        report = run_checks(src, CheckOptions(family="sd35_large", trigger="bench", workers=workers))
    elapsed = time.perf_counter() - start
    assert len(report.images) > 0 and report.ok, report.as_dict()["counts"]
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        files = make_images(folder, args.n, args.size)
        print(f"generated {args.n} JPEGs of {args.size} px in {time.perf_counter() - t:.1f} s; cores: {os.cpu_count()}")
        bare_decode(files)  # warm the page cache
        bare = min(bare_decode(files) for _ in range(args.repeat))
        check = min(check_dataset(folder, args.workers) for _ in range(args.repeat))
    bare_rate, check_rate = args.n / bare, args.n / check
    print(f"bare Pillow decode loop : {bare_rate:8.1f} images/s")
    print(f"check-dataset           : {check_rate:8.1f} images/s")
    print(f"ratio check/bare        : {check_rate / bare_rate:8.2f}  (target >= 0.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
