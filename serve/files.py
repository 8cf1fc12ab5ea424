"""Writing a file whole or not at all: the one tmp + fsync + rename writer of gankd (model folders, run state,
manifests, the runtime-order cache, the images gankd-demo and ``upscale`` write); and the one file hash
(:func:`sha256_file`: model folders' checksums, manifests' file hashes, and serve's check of both).

A bottom-layer module: standard library only, it imports nothing of gankd, so gankd.distill and gankd.export import
it (serve imports neither).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(target: str | Path, content: bytes | str | Callable[[Path], object], *,
                 fsync: bool = True) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a call that writes the file at the path it is given) to a new
    hidden file next to ``target``, flush it to disk (``fsync``) and rename it over ``target``.

    A kill -9, a full disk or an exception mid-write (the call may raise to refuse what it wrote) leaves what
    ``target`` held, and the partial file is removed; a reader never sees part of a file; a symlink at ``target``
    is replaced, not written through. The partial file ends in ``target``'s suffix (writers that pick a format by
    the name, as PyAV does, pick the same) and gets the permissions a plain ``open`` gives (not ``mkstemp``'s private
    ones). ``fsync=False`` only for files that are made again when lost (caches): the rename is still atomic, just
    not durable across a power cut."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.partial{target.suffix}")
    # O_EXCL: a new file, never an existing one or a symlink; mode 0o666 less the umask, as open() gives
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            if not callable(content):
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        if callable(content):
            content(tmp)
        if fsync:
            _fsync(tmp, os.O_RDWR)
        os.replace(tmp, target)
        if fsync and hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable (Windows cannot)
            _fsync(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's SHA-256, hex, read in chunks (a model file never sits in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def publish_folder(staged: str | Path, target: str | Path) -> Path:
    """Put the finished folder ``staged`` (made next to ``target``, on the same filesystem) at ``target`` by rename:
    a reader sees the old folder or the new one, never a half-written one. An existing ``target`` is moved aside
    first and removed only once the new one is in place; the parent folder is fsynced so the rename is durable (the
    files inside are as durable as their writers made them: this does not fsync each one). The one folder publisher of gankd (artifact folders, the photo pool, teacher caches)."""
    import shutil

    staged, target = Path(staged), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        target.rename(old)
    try:
        staged.rename(target)
    except BaseException:
        if old is not None and not target.exists():
            old.rename(target)  # put the previous folder back: nothing that was saved is lost
        raise
    if hasattr(os, "O_DIRECTORY"):
        _fsync(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
