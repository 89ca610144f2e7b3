"""Crash-safe file replacement: write a temp file, fsync it, rename it, fsync the directory.

Each fsync is a journal commit that every process writing to the same disk waits for, so
writers that replace several files at once say which of them must survive a power cut
(`durable`) and fsync their directory once (`write_many`), not once per file.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_bytes(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace `path` with `data` so a reader or a crash sees the old file or the new one.

    `durable=False`: a reader still sees the old file or the new one, but after a power cut the
    file may be the old one, or empty; only for files that are rewritten or checked anyway.
    """
    _replace(path, data, mode, durable)
    if durable:
        fsync_dir(path.parent)


def write_many(folder: Path, files: dict[str, bytes], mode: int = 0o644, *,
               volatile: frozenset[str] = frozenset()) -> None:
    """Write each of `files` into `folder` as write_bytes does, with one fsync of `folder` for all.

    Names in `volatile` are not fsynced themselves (files a reader checks and the writer repairs).
    Once this returns, the durable ones are on disk; nothing names them yet if it fails half-way.
    """
    for name, data in files.items():
        _replace(folder / name, data, mode, name not in volatile)
    if files:
        fsync_dir(folder)


def _replace(path: Path, data: bytes, mode: int, durable: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
