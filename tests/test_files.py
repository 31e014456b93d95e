"""Folders that appear whole or not at all (``lorakit.files.atomic_folder``)."""

from __future__ import annotations

import os

import pytest

from lorakit.files import atomic_folder, recover_folder


def test_atomic_folder_appears_whole_and_replaces(tmp_path):
    dest = tmp_path / "out" / "model"
    with atomic_folder(dest) as staging:
        assert not dest.exists()  # nothing visible while it is being written
        (staging / "a.txt").write_text("one")
    assert (dest / "a.txt").read_text() == "one"
    with atomic_folder(dest) as staging:
        (staging / "b.txt").write_text("two")
        assert (dest / "a.txt").exists()  # the old one stays readable until the swap
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]  # nothing left beside it


def test_atomic_folder_error_leaves_the_old_folder(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_folder(dest) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (dest / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_recover_after_a_kill_between_the_renames(tmp_path):
    dest = tmp_path / "model"
    old = tmp_path / ".model.old-abc"  # what a process killed between the two renames leaves
    old.mkdir()
    (old / "a.txt").write_text("previous")
    (tmp_path / ".model.partial-xyz").mkdir()
    recover_folder(dest)
    assert (dest / "a.txt").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_folder_permissions_follow_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "m") as staging:
            (staging / "x").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
