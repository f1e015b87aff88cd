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

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import IMAGE_SUFFIXES, MAX_BYTES, read_bytes

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


def iter_entries(root: str | os.PathLike, *, max_bytes: int = MAX_BYTES, max_total: int = MAX_TOTAL_BYTES,
                 label: str | None = None) -> Iterator[Entry]:
    """Every candidate file under `root`, in a stable (sorted) order. An archive's members are named
    "LABEL!member", LABEL defaulting to the archive's path (the service passes the uploaded name, so
    its reports never show where the server keeps the file)."""
    root = Path(root)
    if not root.exists():
        raise GuardError(f"{root}: no such file or folder")
    kind = archive_kind(root) if root.is_file() else None
    if root.is_dir():
        yield from _folder(root, max_bytes)
    elif kind == "zip":
        yield from _zip(root, max_bytes, max_total, label or str(root))
    elif kind == "tar":
        yield from _tar(root, max_bytes, max_total, label or str(root))
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


def _members(label: str, members, max_bytes: int, max_total: int) -> Iterator[Entry]:
    """Archive members as entries. `members` yields (name, kind, size, open) with kind "file", "dir",
    "link" or "other", and open() -> a readable file object; the same checks hold for zip and tar."""
    total = 0
    for name, kind, size, opener in sorted(members, key=lambda m: m[0]):
        path = f"{label}!{name}"
        if kind == "dir":
            continue
        reason = {"link": "a link inside the archive", "other": "not a regular file (device, fifo ...)"}.get(kind)
        reason = reason or _unsafe_name(name)
        if reason is None and not name.lower().endswith(IMAGE_SUFFIXES):
            reason = "not an image file name"
        if reason is None and size > max_bytes:
            reason = f"{size} bytes is over the {max_bytes}-byte limit"
        if reason is None:
            total += size
            if total > max_total:
                reason = f"the archive's members pass the {max_total}-byte total limit"
        if reason is not None:
            yield _refused(path, reason)
            continue

        def read(opener=opener, path=path):
            try:
                with opener() as f:
                    data = f.read(max_bytes + 1)  # the header's size may lie: never read past the limit
            except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, RuntimeError, AttributeError) as e:
                return None, f"{path}: corrupt archive member ({e})"
            if len(data) > max_bytes:
                return None, f"{path}: over the {max_bytes}-byte limit"
            return data, None
        yield Entry(path, size, read)


def _zip(root: Path, max_bytes: int, max_total: int, label: str) -> Iterator[Entry]:
    try:
        z = zipfile.ZipFile(root)
    except (zipfile.BadZipFile, OSError) as e:
        raise GuardError(f"{root}: not a readable zip archive ({e})") from None

    def kind(info: zipfile.ZipInfo) -> str:
        if info.is_dir():
            return "dir"
        return "link" if (info.external_attr >> 16) & 0o170000 == 0o120000 else "file"
    yield from _members(label, ((i.filename, kind(i), i.file_size, lambda i=i: z.open(i)) for i in z.infolist()),
                        max_bytes, max_total)


def _tar(root: Path, max_bytes: int, max_total: int, label: str) -> Iterator[Entry]:
    try:
        t = tarfile.open(root, "r:*")
        members = t.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise GuardError(f"{root}: not a readable tar archive ({e})") from None

    def kind(m: tarfile.TarInfo) -> str:
        if m.isdir():
            return "dir"
        if m.issym() or m.islnk():
            return "link"
        return "file" if m.isreg() else "other"
    yield from _members(label, ((m.name, kind(m), m.size, lambda m=m: t.extractfile(m)) for m in members),
                        max_bytes, max_total)
