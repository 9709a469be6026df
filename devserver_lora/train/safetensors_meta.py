"""Read and rewrite the JSON header of a .safetensors file without touching (or loading) its tensors.

Layout: 8-byte little-endian header length N, N bytes of JSON (`{name: {dtype, shape,
data_offsets}, "__metadata__": {str: str}}`), then the tensor bytes. Data offsets
are relative to the end of the header, so a new header of any length keeps every
tensor valid as long as the byte block after it is copied unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import safe_json
from ..errors import LoraFileError
from ..paths import publish_file

MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit too


@dataclass
class SafetensorsHeader:
    path: Path
    header_len: int
    tensors: dict[str, dict]
    metadata: dict[str, str]
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def data_len(self) -> int:
        return max((int(t["data_offsets"][1]) for t in self.tensors.values()), default=0)

    @property
    def complete(self) -> bool:
        """The file holds every byte its header promises (a checkpoint still being written does not)."""
        return self.file_size >= self.data_start + self.data_len


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse the header; LoraFileError with what is wrong if the file is not a safetensors file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            # A FIFO would block the open/read forever, a device (/dev/zero) never ends.
            raise LoraFileError(f"{p} is not a regular file", hint="give the path of the .safetensors file")
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise LoraFileError(f"{p} is too short to be a .safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > MAX_HEADER or 8 + n > size:
                raise LoraFileError(
                    f"{p} does not start with a valid safetensors header (claims {n} header bytes, file has {size})",
                    hint="the file is truncated, still being written, or not a .safetensors file",
                )
            raw = fh.read(n)
    except OSError as exc:
        raise LoraFileError(f"cannot read {p}: {exc.strerror or exc}") from exc
    try:
        doc = safe_json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"{p}: the safetensors header is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise LoraFileError(f"{p}: the safetensors header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise LoraFileError(f"{p}: __metadata__ must map strings to strings")
    for name, info in doc.items():
        if not isinstance(info, dict) or "data_offsets" not in info:
            raise LoraFileError(f"{p}: tensor entry {name!r} has no data_offsets")
    return SafetensorsHeader(p, n, doc, dict(meta), size)


def _encode_header(tensors: dict[str, dict], metadata: dict[str, str]) -> bytes:
    doc: dict = {"__metadata__": metadata} if metadata else {}
    doc.update(tensors)
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw


def write_with_metadata(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], metadata: dict[str, str], *, overwrite: bool = False
) -> Path:
    """Copy `src` to `dest` with its `__metadata__` replaced; tensor bytes are copied byte for byte.

    Atomic: written to a temp file beside `dest`, then linked to a free name (never
    replacing an existing file unless `overwrite`). Returns the path written.
    """
    header = read_header(src)
    if not header.complete:
        raise LoraFileError(f"{src} is incomplete (still being written?)", hint="wait for the trainer to finish")
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise LoraFileError(f"safetensors metadata must be strings; not: {bad}")

    def write(out: BinaryIO) -> None:
        with open(header.path, "rb") as inp:
            out.write(_encode_header(header.tensors, metadata))
            inp.seek(header.data_start)
            shutil.copyfileobj(inp, out, length=1024 * 1024)

    return publish_file(dest, write, overwrite=overwrite)


def tensor_bytes_equal(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when both files hold the same tensors (names, dtypes, shapes) and identical tensor bytes."""
    ha, hb = read_header(a), read_header(b)
    if ha.tensors != hb.tensors:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(ha.data_start)
        fb.seek(hb.data_start)
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True
