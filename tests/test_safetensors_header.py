"""The one safetensors header module agrees with the `safetensors` library, file for file (issue 10 item 8)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from devserver_lora.errors import LoraFileError
from devserver_lora.lora.header import MAX_HEADER_BYTES, is_complete, read_header, write_with_metadata

DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "U8": np.uint8, "I32": np.int32,
          "I64": np.int64, "BOOL": np.bool_}
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=24).filter(lambda n: n != "__metadata__")
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3)
tensor_sets = st.dictionaries(names, st.tuples(st.sampled_from(sorted(DTYPES)), shapes), min_size=0, max_size=6)
metadata = st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=5)


def _arrays(spec: dict[str, tuple[str, list[int]]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: np.asarray(rng.random(s) * 100).astype(DTYPES[d]) for n, (d, s) in spec.items()}


def _library_view(path: Path) -> tuple[dict[str, tuple[str, list[int]]], dict[str, str]]:
    with safe_open(str(path), framework="np") as fh:
        tensors = {k: (fh.get_slice(k).get_dtype(), list(fh.get_slice(k).get_shape())) for k in fh.keys()}  # noqa: SIM118
        return tensors, dict(fh.metadata() or {})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=tensor_sets, meta=metadata, new_meta=metadata)
def test_reads_what_the_library_writes_and_writes_what_it_reads(
    tmp_path_factory: pytest.TempPathFactory, spec: dict, meta: dict, new_meta: dict
) -> None:
    folder = tmp_path_factory.mktemp("st")
    arrays = _arrays(spec)
    src = folder / "src.safetensors"
    save_file(arrays, str(src), metadata=meta or None)
    header = read_header(src)
    lib_tensors, lib_meta = _library_view(src)
    assert {k: (t.dtype, t.shape) for k, t in header.tensors.items()} == lib_tensors
    assert header.metadata == lib_meta
    out = write_with_metadata(src, folder / "out.safetensors", new_meta)
    again_tensors, again_meta = _library_view(out)
    assert again_tensors == lib_tensors and again_meta == new_meta
    with safe_open(str(out), framework="np") as fh:
        for name, array in arrays.items():
            assert np.array_equal(fh.get_tensor(name), array)
    assert read_header(out).metadata == new_meta


def _raw(path: Path, header: object, data: bytes, *, raw: bytes | None = None) -> Path:
    body = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def _library_accepts(path: Path) -> bool:
    try:
        _library_view(path)
    except SafetensorError:
        return False
    return True


ONE = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
CASES = {
    "plain": (ONE, b"\0" * 4, None),
    "numbers in metadata": ({"__metadata__": {"ss_epoch": 1}, **ONE}, b"\0" * 4, None),
    "metadata as a list": ({"__metadata__": ["x"], **ONE}, b"\0" * 4, None),
    "null metadata": ({"__metadata__": None, **ONE}, b"\0" * 4, None),
    "gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None),
    "overlap": ({**ONE, "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "trailing bytes": (ONE, b"\0" * 8, None),
    "truncated data": (ONE, b"\0" * 2, None),
    "offsets out of order": ({"b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}, **ONE}, b"\0" * 8, None),
    "empty tensor": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}, b"", None),
    "leading space": (None, b"\0" * 4, b" " + json.dumps(ONE).encode()),
    "padding spaces": (None, b"\0" * 4, json.dumps(ONE).encode() + b"    "),
    "negative dimension": ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "wrong span for shape": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None),
    "sub-byte dtype": ({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\0", None),
    "unknown dtype": ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None),
    "not an object": ([1, 2], b"", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_accepts_and_refuses_exactly_what_the_library_does(tmp_path: Path, case: str) -> None:
    header, data, raw = CASES[case]
    path = _raw(tmp_path / "x.safetensors", header, data, raw=raw)
    try:
        read_header(path)
        ours = True
    except LoraFileError:
        ours = False
    assert ours == _library_accepts(path), case
    assert is_complete(path) == ours


def test_limits_and_refusals_say_what_is_wrong(tmp_path: Path) -> None:
    assert MAX_HEADER_BYTES == 100_000_000  # the library's MAX_HEADER_SIZE
    big = tmp_path / "big.safetensors"
    big.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(LoraFileError, match="over the 100000000 byte limit"):
        read_header(big)
    numbers = _raw(tmp_path / "n.safetensors", {"__metadata__": {"ss_epoch": 1}, **ONE}, b"\0" * 4)
    with pytest.raises(LoraFileError) as info:
        read_header(numbers)
    assert "strings" in info.value.message and info.value.hint
    pickle = tmp_path / "p.safetensors"
    pickle.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(LoraFileError, match="pickle"):
        read_header(pickle)
    with pytest.raises(LoraFileError, match="strings"):
        write_with_metadata(_raw(tmp_path / "ok.safetensors", ONE, b"\0" * 4), tmp_path / "o.safetensors", {"a": 1})  # type: ignore[dict-item]
    assert not (tmp_path / "o.safetensors").exists()
