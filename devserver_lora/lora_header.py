"""The header of a .safetensors file, read and checked without loading a tensor.

Layout: 8-byte little-endian header length, then that many bytes of JSON
(`{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}`), then the tensor data.
Every claim of the header is checked against the file: the length is bounded, offsets lie
inside the data region, tensors tile it exactly, and shape x dtype size equals the span.
Pickle files are refused before any byte is interpreted: unpickling runs code.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from pydantic import BaseModel

from . import safe_json
from .errors import LoraFileError

__all__ = ["TensorInfo", "read_safetensors_header", "MAX_HEADER_BYTES"]

# safetensors itself refuses headers over 100 MB; a LoRA header is a few hundred KB at most.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


class TensorInfo(BaseModel):
    dtype: str
    shape: list[int]


def _refuse_pickle(path: Path, why: str) -> LoraFileError:
    return LoraFileError(
        f"{path}: {why}; pickle files can run code when loaded, so they are refused unopened",
        hint="convert it to .safetensors on a trusted machine (or get the .safetensors release of this LoRA)",
    )


def _looks_like_pickle(head: bytes) -> bool:
    # torch.save writes a zip ("PK\x03\x04"); older files are a bare pickle (PROTO opcode 0x80, protocol 2-5).
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def read_safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """`(tensors, metadata, file_size)` from a .safetensors header, validated against the file.

    Raises `LoraFileError` for a missing, unreadable, pickle, truncated or lying file.
    """
    p = Path(path)
    if p.suffix.lower() in _PICKLE_SUFFIXES:
        raise _refuse_pickle(p, f"'{p.suffix}' is a pickle format")
    try:
        size = p.stat().st_size
        if not p.is_file():
            # A folder, FIFO or device: reading a FIFO would block, /dev/zero would never end.
            kind = "a folder" if p.is_dir() else "not a regular file"
            raise LoraFileError(f"{p}: is {kind}, not a LoRA file", hint="give the path of the .safetensors file")
        with p.open("rb") as fh:
            head = fh.read(9)
            # The first 8 bytes of a safetensors file are a length, so they may be anything
            # (0x80 or "PK" included); its JSON header always opens with '{' at byte 8.
            if head[8:9] != b"{" and _looks_like_pickle(head):
                raise _refuse_pickle(p, "the file is a PyTorch zip/pickle archive, not safetensors")
            head = head[:8]
            fh.seek(8)
            if len(head) < 8:
                raise LoraFileError(
                    f"{p}: only {size} bytes, too short for a safetensors file (8-byte header length first)",
                    hint="the file is truncated or empty: copy or download it again",
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise LoraFileError(
                    f"{p}: header length {n} bytes is over the {MAX_HEADER_BYTES} byte limit",
                    hint="this is not a safetensors file, or it is corrupt",
                )
            if n > size - 8:
                raise LoraFileError(
                    f"{p}: header claims {n} bytes but the file has only {size - 8} after the length",
                    hint="the file is truncated: copy or download it again",
                )
            raw = fh.read(n)
    except FileNotFoundError:
        raise LoraFileError(f"{p}: no such LoRA file", hint="check the name and the loras folder") from None
    except PermissionError:
        raise LoraFileError(f"{p}: cannot read the file (permission denied)") from None
    try:
        header = safe_json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"{p}: the safetensors header is not valid JSON ({exc})", hint="the file is corrupt") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"{p}: the safetensors header is not a JSON object", hint="the file is corrupt")
    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict):
        raise LoraFileError(f"{p}: __metadata__ is not an object of strings", hint="the file is corrupt")
    metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta_raw.items()}
    data_size = size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        where = f"{p}: tensor '{name}'"
        if not isinstance(info, dict):
            raise LoraFileError(f"{where}: entry is not an object", hint="the file is corrupt")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise LoraFileError(f"{where}: unknown dtype {dtype!r}", hint="the file is corrupt or from a newer format")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise LoraFileError(f"{where}: shape {shape!r} is not a list of non-negative integers", hint="the file is corrupt")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise LoraFileError(
                f"{where}: data offsets {offsets!r} lie outside the {data_size}-byte data region",
                hint="the file is truncated or its header is corrupt",
            )
        expected = math.prod(shape) * _DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise LoraFileError(
                f"{where}: {dtype} {shape} needs {expected} bytes but its offsets span {offsets[1] - offsets[0]}",
                hint="the header is corrupt",
            )
        tensors[name] = TensorInfo(dtype=dtype, shape=shape)
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            kind = "overlaps the previous tensor" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise LoraFileError(f"{p}: tensor '{name}' {kind} (offset {begin}, expected {pos})", hint="the header is corrupt")
        pos = end
    if pos != data_size:
        raise LoraFileError(
            f"{p}: tensors cover {pos} bytes but the data region has {data_size}",
            hint="the file is truncated, padded or its header is corrupt",
        )
    return tensors, metadata, size
