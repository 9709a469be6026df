"""Hostile-name checks and crash-safe file writes.

Every name that becomes a path (LoRA names, dataset names, job ids, output names,
archive members) goes through `check_relative_name` or `safe_join`. Every file we
write goes through `atomic_write_*`, so a crash never leaves half a file, and
trained checkpoints go through `copy_no_overwrite`, which never replaces one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .errors import UnsafePathError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600. What we write (LoRAs, configs, checkpoints, training states) is read by ComfyUI or
# DevServer running as another user of the same group, and by the group that shares the job folder: so a written
# file gets the mode a plain open() would, and never less than owner and group read (a umask of 077 still keeps
# others out).
FILE_MODE = (0o666 & ~_current_umask()) | 0o440

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_SIMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_relative_name(name: object, *, what: str = "name", suffix: str | None = None) -> str:
    """Return `name` if it is a safe forward-slash relative path, else raise UnsafePathError.
    (`name` may be anything a hostile source sent: a non-string is refused like an empty name.)

    Refused: empty, NUL or control characters, backslashes, absolute paths, drive
    letters, '.' or '..' parts, empty parts ('a//b'), and (if given) another suffix.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafePathError(f"{what} is empty", hint="give a file name such as 'my_style.safetensors'")
    if any(ord(c) < 32 for c in name):
        raise UnsafePathError(f"{what} {name!r} contains a control character (NUL, newline, ...)")
    if "\\" in name:
        raise UnsafePathError(
            f"{what} {name!r} contains a backslash", hint="use '/' to name a subfolder, e.g. 'styles/x.safetensors'"
        )
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        raise UnsafePathError(f"{what} {name!r} is an absolute path", hint="give a path relative to its folder")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(
            f"{what} {name!r} has an empty, '.' or '..' part",
            hint="a name may not climb out of its folder; use a plain relative path",
        )
    if suffix is not None and not name.endswith(suffix):
        raise UnsafePathError(f"{what} {name!r} must end with {suffix!r}")
    return name


def check_simple_name(name: object, *, what: str = "name") -> str:
    """A single path component of letters, digits, '.', '_' and '-' (a job id, dataset or output name)."""
    if not isinstance(name, str) or not _SIMPLE_NAME.match(name) or name in (".", ".."):
        raise UnsafePathError(
            f"{what} {name!r} is not allowed",
            hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def safe_join(root: str | os.PathLike[str], name: str, *, what: str = "name") -> Path:
    """Join a hostile relative `name` under `root`, refusing anything that resolves outside it."""
    check_relative_name(name, what=what)
    base = Path(root).resolve()
    target = (base / PurePosixPath(name)).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{what} {name!r} resolves outside {base}", hint="a symlink or '..' points elsewhere")
    return target


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_file(
    dest: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, overwrite: bool = False
) -> Path:
    """Write a file through `write(fh)` into a temp file beside `dest`, then publish it atomically.

    With `overwrite`, the temp file replaces `dest` (a reader sees the old or the new file,
    never half of one). Without it, the temp file is hard-linked to `dest` or, if that name
    is taken, to the first free `stem-N.ext`: `os.link` fails rather than replaces when
    another writer got there first, so an existing file (a trained checkpoint) is never lost.
    Returns the path written.
    """

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return publish_path(dest, fill, overwrite=overwrite)


def publish_path(
    dest: str | os.PathLike[str], fill: Callable[[Path], None], *, overwrite: bool = False
) -> Path:
    """`publish_file` for writers that take a file name (safetensors' `save_file`, `torch.save`): `fill(tmp)` writes
    the temp file beside `dest`; it is synced, given FILE_MODE and published the same way. Returns the path written."""
    target = Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        fill(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        if overwrite:
            os.replace(tmp, target)
            written = target
        else:
            while True:
                written = free_name(target)
                try:
                    os.link(tmp, written)
                except FileExistsError:
                    continue
                break
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    return written


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename."""
    return publish_file(path, lambda fh: fh.write(data), overwrite=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def free_name(path: str | os.PathLike[str]) -> Path:
    """`path` if nothing is there, else the first of `stem-2.ext`, `stem-3.ext`, ... that is free."""
    target = Path(path)
    # lexists: a dangling symlink is a taken name too (exists() says no, and os.link would refuse it forever).
    if not os.path.lexists(target):
        return target
    n = 2
    while True:
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def copy_no_overwrite(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy `src` to `dest` atomically; if `dest` exists, pick a suffixed free name. Returns the path written."""

    def write(out: BinaryIO) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, length=1024 * 1024)

    return publish_file(dest, write)
