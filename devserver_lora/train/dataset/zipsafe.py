"""Extract an uploaded ZIP without trusting it.

Refused (the whole archive, nothing kept): members whose names are absolute, use
backslashes or drive letters, or climb with '..'; symlink members; encrypted members;
more than `max_members` entries; a member that expands beyond `max_member_bytes`, a
total beyond `max_total_bytes`, or a member whose expansion ratio exceeds `max_ratio`
(past the first MiB, so small text files may compress well). Sizes are counted while
streaming; the sizes declared in the archive are only used to refuse early, never trusted.
Files are created with O_EXCL under a fresh folder, so nothing outside it is ever touched.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import DatasetError, Problem, UnsafePathError
from ...paths import check_relative_name, safe_join

CHUNK = 1 << 20
JUNK_PREFIXES = ("__MACOSX/",)
JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass(frozen=True)
class ZipLimits:
    max_total_bytes: int = 4 << 30
    max_member_bytes: int = 512 << 20
    max_ratio: float = 200.0
    max_members: int = 20000
    ratio_grace_bytes: int = 1 << 20


def _refuse(zip_path: Path, member: str, message: str, code: str, hint: str) -> DatasetError:
    return DatasetError(
        f"the ZIP {zip_path.name} was refused: {message}",
        hint=hint,
        problems=[Problem(message, file=member, code=code, hint=hint)],
    )


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _is_junk(name: str) -> bool:
    return name.startswith(JUNK_PREFIXES) or name.rsplit("/", 1)[-1] in JUNK_NAMES


def safe_extract(zip_path: str | Path, dest: str | Path, *, limits: ZipLimits | None = None) -> list[str]:
    """Extract `zip_path` into the new folder `dest` (must not exist). Returns the member names written.

    On any refusal `dest` is removed again and DatasetError says which member and why.
    """
    limits = limits or ZipLimits()
    zip_path = Path(zip_path)
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{zip_path} is not a readable ZIP file: {exc}", hint="create it again") from exc
    dest.mkdir(parents=False, exist_ok=False)
    try:
        with zf:
            return _extract_all(zf, zip_path, dest, limits)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _check_member(info: zipfile.ZipInfo, zip_path: Path, limits: ZipLimits) -> None:
    name = info.filename
    try:
        check_relative_name(name[:-1] if name.endswith("/") else name, what="ZIP member")
    except UnsafePathError as exc:
        raise _refuse(
            zip_path, name, str(exc.message), "zip_unsafe_path",
            "the archive tries to write outside its folder; make a new ZIP of just the images",
        ) from None
    if _is_symlink(info):
        raise _refuse(
            zip_path, name, "member is a symbolic link", "zip_symlink",
            "links could point anywhere on the server; zip the real files instead",
        )
    if info.flag_bits & 0x1:
        raise _refuse(zip_path, name, "member is encrypted", "zip_encrypted", "upload a ZIP without a password")
    if info.file_size > limits.max_member_bytes:
        raise _refuse(
            zip_path, name, f"member declares {info.file_size} bytes, more than {limits.max_member_bytes}",
            "zip_too_large", "a training image is never that large; check the archive",
        )


def _extract_all(zf: zipfile.ZipFile, zip_path: Path, dest: Path, limits: ZipLimits) -> list[str]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise _refuse(
            zip_path, "*", f"{len(infos)} members, more than {limits.max_members}", "zip_too_many_members",
            "split the dataset or remove files that are not images and captions",
        )
    for info in infos:
        _check_member(info, zip_path, limits)
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total_bytes:
        raise _refuse(
            zip_path, "*", f"members declare {declared} bytes in total, more than {limits.max_total_bytes}",
            "zip_too_large", "upload fewer or smaller images",
        )
    written: list[str] = []
    total = 0
    for info in infos:
        if info.filename.endswith("/") or _is_junk(info.filename):
            continue
        target = safe_join(dest, info.filename, what="ZIP member")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # The folders we just made are ours; a member cannot have planted a link there (links are refused).
            # O_NOFOLLOW where the platform has it (not on Windows).
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            # Two members with one name, or a file where another member needs a folder.
            raise _refuse(
                zip_path, info.filename, f"member clashes with another member ({exc.strerror})", "zip_conflict",
                "the archive holds the same name twice; create it again from the folder",
            ) from exc
        count = 0
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                while True:
                    chunk = src.read(CHUNK)
                    if not chunk:
                        break
                    count += len(chunk)
                    total += len(chunk)
                    if count > limits.max_member_bytes:
                        raise _refuse(
                            zip_path, info.filename, f"member expands beyond {limits.max_member_bytes} bytes",
                            "zip_bomb", "this looks like a ZIP bomb; upload the images themselves",
                        )
                    if total > limits.max_total_bytes:
                        raise _refuse(
                            zip_path, info.filename, f"archive expands beyond {limits.max_total_bytes} bytes",
                            "zip_bomb", "this looks like a ZIP bomb; upload the images themselves",
                        )
                    if count > limits.ratio_grace_bytes and count > limits.max_ratio * max(1, info.compress_size):
                        raise _refuse(
                            zip_path, info.filename,
                            f"member expands more than {limits.max_ratio:g} times its compressed size",
                            "zip_bomb", "images do not compress like that; this looks like a ZIP bomb",
                        )
                    out.write(chunk)
        except zipfile.BadZipFile as exc:
            raise _refuse(
                zip_path, info.filename, f"member is corrupt ({exc})", "zip_corrupt", "create the ZIP again"
            ) from exc
        written.append(info.filename)
    return written
