"""Atomic file writing (:mod:`qsmbids.files`): all or nothing, no temporary file left behind, permissions as asked."""

from __future__ import annotations

import os
import stat

import pytest

from qsmbids.files import atomic_path, write_text_atomic


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out" / "a.json"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new χ\n")
    assert path.read_text(encoding="utf-8") == "new χ\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert tmp.parent.parent == path.parent and tmp.parent.name.startswith(".a.pt.") and tmp.name == "a.pt.tmp"
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_mode_and_umask(tmp_path):
    old = os.umask(0o077)
    try:
        private = write_text_atomic(tmp_path / "private.txt", "x")
        shared = write_text_atomic(tmp_path / "shared.html", "x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600  # as any other output under this umask
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644


def test_torch_archive_is_named_after_the_file(tmp_path):
    """torch.save names the archive inside the file after the file: the bytes do not depend on the temporary name."""
    torch = pytest.importorskip("torch")
    saved = []
    for _ in range(2):
        with atomic_path(tmp_path / "unet.pt") as tmp:
            torch.save({"w": torch.arange(3.0)}, tmp)
        saved.append((tmp_path / "unet.pt").read_bytes())
    assert saved[0] == saved[1] and b"unet.pt/data.pkl" in saved[0]


def test_temporary_names_are_unique(tmp_path):
    with atomic_path(tmp_path / "a") as one, atomic_path(tmp_path / "a") as two:
        one.write_text("1")
        two.write_text("2")
        assert one != two
    assert (tmp_path / "a").read_text() == "1"  # the outer block finishes last and wins
