"""Writing a file atomically: a bottom leaf of the house (STYLE §1), standard library only, for every floor.

A reader (a second qsmbids process, the group level, a user's ``cat``), or a crash half-way, never sees a half-written
file: the content goes to a temporary file next to the final one (so that the final :func:`os.replace` is a rename
within one file system, atomic on POSIX), which is flushed to disk (:func:`os.fsync`) before it replaces the old one.
The temporary file is ``<name>.tmp`` inside a hidden folder of its own, ``.<name>.<uuid4>.tmp/``: unique, so that
concurrent writers never share one, yet named after the final file, so that what a writer records of its file name
stays the same (``torch.save`` names its archive after the file: ``unet.pt``). Both are removed when writing fails.
The file is created like any other output (permissions from the umask, unlike :func:`tempfile.mkstemp`'s private
0600) unless ``mode`` is given.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = write_text_atomic(folder / "a" / "b.txt", "χ\\n")
>>> (folder / "a" / "b.txt").read_text(encoding="utf-8"), sorted(p.name for p in (folder / "a").iterdir())
('χ\\n', ['b.txt'])
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_text_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; on leaving the block without an error it is synced to disk,
    given ``mode`` (when not None) and moved onto ``path``; on an error it is removed and ``path`` left as it was.

    For writers that take a file name (``torch.save``) or open the file themselves (``open(tmp, "x", ...)``). The
    folder of ``path`` is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    stage.mkdir()
    tmp = stage / f"{path.name}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", newline: str | None = None,
                      mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`); returns ``path``."""
    with atomic_path(path, mode=mode) as tmp, open(tmp, "x", encoding=encoding, newline=newline) as fh:
        fh.write(text)
    return Path(path)
