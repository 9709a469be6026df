"""The one reader and rewriter of .safetensors headers; no tensor is ever loaded.

Layout: 8-byte little-endian header length N, N bytes of JSON (`{name: {dtype, shape, data_offsets},
"__metadata__": {str: str}}`), then the tensor bytes, whose offsets count from the end of the header.

`read_header` accepts exactly what the `safetensors` library accepts (it is what ComfyUI and the trainers load
with): metadata maps strings to strings, tensors tile the data region with no gap or overlap, each span is
shape x dtype size, and the data region ends at the end of the file. A file it accepts is one ComfyUI can open.
Pickle files are refused before any byte is interpreted: unpickling runs code.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from .. import safe_json
from ..errors import LoraFileError
from ..paths import publish_file

__all__ = [
    "MAX_HEADER_BYTES",
    "SafetensorsHeader",
    "TensorInfo",
    "is_complete",
    "read_header",
    "tensor_bytes_equal",
    "write_with_metadata",
]

# The `safetensors` library's own limit (MAX_HEADER_SIZE); a LoRA header is a few hundred KB.
MAX_HEADER_BYTES = 100_000_000
# Bits per element: the sub-byte float formats pack several elements into a byte.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64,
}
_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


class TensorInfo(BaseModel):
    dtype: str
    shape: list[int]


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_len: int
    tensors: dict[str, TensorInfo]
    offsets: dict[str, tuple[int, int]]
    metadata: dict[str, str]
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _refuse_pickle(path: Path, why: str) -> LoraFileError:
    return LoraFileError(
        f"{path}: {why}; pickle files can run code when loaded, so they are refused unopened",
        hint="convert it to .safetensors on a trusted machine (or get the .safetensors release of this file)",
    )


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save writes a zip ("PK\x03\x04"); older files are a bare pickle (PROTO opcode 0x80, protocol 2-5).
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _read_raw(p: Path) -> tuple[bytes, int]:
    """(header JSON bytes, file size), after the checks that need no parsing."""
    if p.suffix.lower() in _PICKLE_SUFFIXES:
        raise _refuse_pickle(p, f"'{p.suffix}' is a pickle format")
    try:
        size = p.stat().st_size
        if not p.is_file():
            # A folder, FIFO or device: reading a FIFO would block, /dev/zero would never end.
            kind = "a folder" if p.is_dir() else "not a regular file"
            raise LoraFileError(f"{p}: is {kind}, not a .safetensors file", hint="give the path of the .safetensors file")
        with p.open("rb") as fh:
            head = fh.read(9)
            # The first 8 bytes are a length, so they may be anything (0x80 or "PK" included);
            # a JSON header opens with '{' at byte 8.
            if head[8:9] != b"{" and _looks_like_pickle(head):
                raise _refuse_pickle(p, "the file is a PyTorch zip/pickle archive, not safetensors")
            if len(head) < 8:
                raise LoraFileError(
                    f"{p}: only {size} bytes, too short for a safetensors file (8-byte header length first)",
                    hint="the file is truncated or empty: copy or download it again",
                )
            (n,) = struct.unpack("<Q", head[:8])
            if n > MAX_HEADER_BYTES:
                raise LoraFileError(
                    f"{p}: header length {n} bytes is over the {MAX_HEADER_BYTES} byte limit",
                    hint="this is not a safetensors file, or it is corrupt",
                )
            if n > size - 8:
                raise LoraFileError(
                    f"{p}: header claims {n} bytes but the file has only {size - 8} after the length",
                    hint="the file is truncated (or still being written): copy or download it again",
                )
            fh.seek(8)
            return fh.read(n), size
    except FileNotFoundError:
        raise LoraFileError(f"{p}: no such file", hint="check the name and the folder") from None
    except PermissionError:
        raise LoraFileError(f"{p}: cannot read the file (permission denied)") from None
    except OSError as exc:
        raise LoraFileError(f"{p}: cannot read the file ({exc.strerror or exc})") from None


def _metadata(p: Path, raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise LoraFileError(
            f"{p}: __metadata__ must map strings to strings; the safetensors library refuses this file",
            hint="rewrite the metadata with string values (numbers as text, lists as JSON text)",
        )
    return dict(raw)


def _tensor(p: Path, name: str, info: object, data_size: int) -> tuple[TensorInfo, tuple[int, int]]:
    where = f"{p}: tensor '{name}'"
    if not isinstance(info, dict):
        raise LoraFileError(f"{where}: entry is not an object", hint="the file is corrupt")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _DTYPE_BITS:
        raise LoraFileError(f"{where}: unknown dtype {dtype!r}", hint="the file is corrupt or from a newer format")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise LoraFileError(f"{where}: shape {shape!r} is not a list of non-negative integers", hint="the file is corrupt")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise LoraFileError(f"{where}: data offsets {offsets!r} are not a [begin, end] pair", hint="the file is corrupt")
    if offsets[1] > data_size:
        raise LoraFileError(
            f"{where}: its data ends at byte {offsets[1]} of the data region, which holds only {data_size}: "
            "the file is incomplete",
            hint="it is truncated or still being written: wait for the trainer, or copy the file again",
        )
    bits = math.prod(shape) * _DTYPE_BITS[dtype]
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        raise LoraFileError(
            f"{where}: {dtype} {shape} needs {bits / 8:g} bytes but its offsets span {offsets[1] - offsets[0]}",
            hint="the header is corrupt",
        )
    return TensorInfo(dtype=dtype, shape=shape), (offsets[0], offsets[1])


def _check_tiling(p: Path, offsets: dict[str, tuple[int, int]], data_size: int) -> None:
    pos = 0
    for name, (begin, end) in sorted(offsets.items(), key=lambda item: item[1]):
        if begin != pos:
            kind = "overlaps the previous tensor" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise LoraFileError(f"{p}: tensor '{name}' {kind} (offset {begin}, expected {pos})", hint="the header is corrupt")
        pos = end
    if pos != data_size:
        raise LoraFileError(
            f"{p}: tensors cover {pos} bytes but the data region has {data_size}",
            hint="the file is truncated (or still being written), padded, or its header is corrupt",
        )


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The validated header of a .safetensors file; `LoraFileError` for anything `safetensors` would refuse."""
    p = Path(path)
    raw, size = _read_raw(p)
    try:
        doc = safe_json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"{p}: the safetensors header is not valid JSON ({exc})", hint="the file is corrupt") from None
    if not isinstance(doc, dict):
        raise LoraFileError(f"{p}: the safetensors header is not a JSON object", hint="the file is corrupt")
    metadata = _metadata(p, doc.pop("__metadata__", None))
    data_size = size - 8 - len(raw)
    tensors: dict[str, TensorInfo] = {}
    offsets: dict[str, tuple[int, int]] = {}
    for name, info in doc.items():
        tensors[name], offsets[name] = _tensor(p, name, info, data_size)
    _check_tiling(p, offsets, data_size)
    return SafetensorsHeader(p, len(raw), tensors, offsets, metadata, size)


def is_complete(path: str | os.PathLike[str]) -> bool:
    """True when the file is a whole, valid safetensors file (a checkpoint still being written is not)."""
    try:
        read_header(path)
    except LoraFileError:
        return False
    return True


def _encode_header(header: SafetensorsHeader, metadata: dict[str, str]) -> bytes:
    doc: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    for name, info in header.tensors.items():
        doc[name] = {"dtype": info.dtype, "shape": info.shape, "data_offsets": list(header.offsets[name])}
    raw = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(raw)) + raw


def write_with_metadata(
    src: str | os.PathLike[str], dest: str | os.PathLike[str], metadata: dict[str, str], *, overwrite: bool = False
) -> Path:
    """Copy `src` to `dest` with its `__metadata__` replaced; tensor bytes are copied byte for byte.

    Atomic: written to a temp file beside `dest`, then linked to its name (never replacing an existing file
    unless `overwrite`). Returns the path written.
    """
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise LoraFileError(f"safetensors metadata must map strings to strings; not: {bad}")
    header = read_header(src)

    def write(out: BinaryIO) -> None:
        with open(header.path, "rb") as inp:
            out.write(_encode_header(header, metadata))
            inp.seek(header.data_start)
            shutil.copyfileobj(inp, out, length=1024 * 1024)

    return publish_file(dest, write, overwrite=overwrite)


def tensor_bytes_equal(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when both files hold the same tensors (names, dtypes, shapes, offsets) and identical tensor bytes."""
    ha, hb = read_header(a), read_header(b)
    if ha.tensors != hb.tensors or ha.offsets != hb.offsets:
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
