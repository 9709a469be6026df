"""Hostile names and crash-safe writes (shared by every part of the product)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devserver_lora.errors import UnsafePathError
from devserver_lora.lora.spec import LoraSpec
from devserver_lora.paths import (
    atomic_write_bytes,
    atomic_write_json,
    check_simple_name,
    copy_no_overwrite,
    safe_join,
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab./\\:\x00 C_-")), max_size=16))
def test_accepted_lora_names_never_escape_the_loras_folder(tmp_path_factory: pytest.TempPathFactory, raw: str) -> None:
    root = tmp_path_factory.getbasetemp() / "loras"
    root.mkdir(exist_ok=True)
    name = raw + ".safetensors"
    try:
        LoraSpec(name=name)
    except ValueError:
        return
    target = safe_join(root, name)
    assert root.resolve() in target.parents


def test_safe_join_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "loras"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(root, "link/x.safetensors")


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "-x", "x" * 129, "a b", "é"])
def test_simple_names(name: str) -> None:
    with pytest.raises(UnsafePathError):
        check_simple_name(name)


def test_atomic_write_leaves_old_file_when_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plan.json"
    atomic_write_json(target, {"v": 1})

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"half")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_copy_no_overwrite_never_replaces_a_checkpoint(tmp_path: Path) -> None:
    src = tmp_path / "src.safetensors"
    dest_dir = tmp_path / "loras"
    written = []
    lock = threading.Lock()

    def copy(i: int) -> None:
        data = tmp_path / f"s{i}"
        data.write_bytes(bytes([i]) * 1000)
        path = copy_no_overwrite(data, dest_dir / "style.safetensors")
        with lock:
            written.append((i, path))

    src.write_bytes(b"x")
    threads = [threading.Thread(target=copy, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = [p for _, p in written]
    assert len(set(paths)) == 8
    for i, path in written:
        assert path.read_bytes() == bytes([i]) * 1000
    assert sorted(p.name for p in dest_dir.iterdir()) == sorted(
        ["style.safetensors"] + [f"style-{n}.safetensors" for n in range(2, 9)]
    )


def test_written_files_are_readable_by_other_users(tmp_path: Path) -> None:
    # ComfyUI or DevServer may run as another user than the trainer: no 0600 files.
    config = atomic_write_json(tmp_path / "sd35_large_x.json", {})
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    lora = copy_no_overwrite(src, tmp_path / "loras" / "x.safetensors")
    for path in (config, lora):
        assert path.stat().st_mode & 0o044 == 0o044, oct(path.stat().st_mode)


def test_written_files_are_group_readable_even_under_a_private_umask(tmp_path) -> None:
    """LoRAs, configs and training states are read by ComfyUI/DevServer running as another user of the group."""
    import subprocess
    import sys

    code = (
        "import os, sys; os.umask(0o077)\n"
        "from pathlib import Path\n"
        "from devserver_lora.paths import atomic_write_bytes, publish_path\n"
        "d = Path(sys.argv[1])\n"
        "a = atomic_write_bytes(d / 'a.json', b'{}')\n"
        "b = publish_path(d / 'b.pt', lambda p: p.write_bytes(b'x'))\n"
        "print(oct(a.stat().st_mode & 0o777), oct(b.stat().st_mode & 0o777))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.split() == ["0o640", "0o640"]
