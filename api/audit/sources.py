"""Inputs of an audit: a folder (recursive), a .zip, or a .tar / .tar.gz / .tgz, read safely.

Archive members are never extracted to disk. A member is refused (and listed as unreadable with the
reason) when its name is absolute or climbs out with "..", when it is a link or a device, when it
is over the per-file limit, or once the archive's total would pass the total limit. Each entry is
read only when its batch is scored, so memory holds one batch of files at a time.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from generator.errors import GuardError
from generator.image_io import IMAGE_SUFFIXES, MAX_BYTES, read_bytes

MAX_TOTAL_BYTES = 64 * 1024**3  # an archive's members together (uncompressed)


@dataclass
class Entry:
    path: str  # a file path, or "archive.zip!member/name.png"
    size: int | None
    read: Callable[[], tuple[bytes | None, str | None]]  # -> (bytes, None) or (None, reason)


def archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def _unsafe_name(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path inside the archive"
    if ".." in p.parts:
        return "path traversal ('..') inside the archive"
    return None


def _refused(path: str, reason: str) -> Entry:
    return Entry(path, None, lambda: (None, f"{path}: refused: {reason}"))


def iter_entries(root: str | os.PathLike, *, max_bytes: int = MAX_BYTES,
                 max_total: int = MAX_TOTAL_BYTES) -> Iterator[Entry]:
    """Every candidate file under `root`, in a stable (sorted) order."""
    root = Path(root)
    if not root.exists():
        raise GuardError(f"{root}: no such file or folder")
    kind = archive_kind(root) if root.is_file() else None
    if root.is_dir():
        yield from _folder(root, max_bytes)
    elif kind == "zip":
        yield from _zip(root, max_bytes, max_total)
    elif kind == "tar":
        yield from _tar(root, max_bytes, max_total)
    else:
        raise GuardError(f"{root}: audit takes a folder, a .zip or a .tar(.gz)")


def _folder(root: Path, max_bytes: int) -> Iterator[Entry]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink():
                yield _refused(str(p), "a symbolic link (not followed)")
                continue
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                yield _refused(str(p), f"not an image file name ({p.suffix or 'no suffix'})")
                continue

            def read(p=p):
                try:
                    return read_bytes(p, max_bytes), None
                except GuardError as e:
                    return None, str(e)
            yield Entry(str(p), None, read)


def _zip(root: Path, max_bytes: int, max_total: int) -> Iterator[Entry]:
    try:
        z = zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError) as e:
        raise GuardError(f"{root}: not a readable zip archive ({e})") from None
    total = 0
    for info in sorted(z.infolist(), key=lambda i: i.filename):
        name = f"{root}!{info.filename}"
        if info.is_dir():
            continue
        mode = (info.external_attr >> 16) & 0o170000
        if mode == 0o120000:
            yield _refused(name, "a symbolic link inside the archive")
            continue
        reason = _unsafe_name(info.filename)
        if reason:
            yield _refused(name, reason)
            continue
        if not info.filename.lower().endswith(IMAGE_SUFFIXES):
            yield _refused(name, "not an image file name")
            continue
        if info.file_size > max_bytes:
            yield _refused(name, f"{info.file_size} bytes is over the {max_bytes}-byte limit")
            continue
        total += info.file_size
        if total > max_total:
            yield _refused(name, f"the archive's members pass the {max_total}-byte total limit")
            continue

        def read(info=info, name=name):
            try:
                with z.open(info) as f:
                    data = f.read(max_bytes + 1)  # the header's size may lie: never read past the limit
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as e:
                return None, f"{name}: corrupt archive member ({e})"
            if len(data) > max_bytes:
                return None, f"{name}: over the {max_bytes}-byte limit"
            return data, None
        yield Entry(name, info.file_size, read)


def _tar(root: Path, max_bytes: int, max_total: int) -> Iterator[Entry]:
    try:
        t = tarfile.open(root, "r:*")
        members = sorted(t.getmembers(), key=lambda m: m.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise GuardError(f"{root}: not a readable tar archive ({e})") from None
    total = 0
    for m in members:
        name = f"{root}!{m.name}"
        if m.isdir():
            continue
        if m.issym() or m.islnk():
            yield _refused(name, "a link inside the archive")
            continue
        if not m.isreg():
            yield _refused(name, "not a regular file (device, fifo ...)")
            continue
        reason = _unsafe_name(m.name)
        if reason:
            yield _refused(name, reason)
            continue
        if not m.name.lower().endswith(IMAGE_SUFFIXES):
            yield _refused(name, "not an image file name")
            continue
        if m.size > max_bytes:
            yield _refused(name, f"{m.size} bytes is over the {max_bytes}-byte limit")
            continue
        total += m.size
        if total > max_total:
            yield _refused(name, f"the archive's members pass the {max_total}-byte total limit")
            continue

        def read(m=m, name=name):
            try:
                f = t.extractfile(m)
                data = f.read(max_bytes + 1) if f is not None else None
            except (tarfile.TarError, OSError, EOFError) as e:
                return None, f"{name}: corrupt archive member ({e})"
            if data is None:
                return None, f"{name}: unreadable archive member"
            return data, None
        yield Entry(name, m.size, read)
