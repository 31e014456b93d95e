"""Folders that appear whole or not at all (``lorakit.files.atomic_folder``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lorakit import files
from lorakit.files import atomic_file, atomic_folder, atomic_write, recover_folder


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


def test_atomic_folder_error_in_the_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "a.txt").write_text("old")
    real, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk gone"), atomic_folder(dest) as staging:
        (staging / "a.txt").write_text("new")
    assert (dest / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_file_error_leaves_the_old_file(tmp_path):
    path = tmp_path / "devset.csv"
    atomic_write(path, b"old")
    with pytest.raises(ValueError, match="not a csv"), atomic_file(path) as tmp:
        tmp.write_bytes(b"<html>")
        raise ValueError("not a csv")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["devset.csv"]


def test_atomic_write_permissions_follow_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", b"{}")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_concurrent_builds_take_turns_and_the_result_is_whole(tmp_path):
    """Threads building one folder at once (each on its own lock descriptor, as separate processes would):
    none removes another's staging folder, all succeed, and one build's files are what stays."""
    dest, workers = tmp_path / "cache" / "model", 6
    start, errors = threading.Barrier(workers), []

    def build(ident: int) -> None:
        try:
            start.wait()
            with atomic_folder(dest) as staging:
                for n in range(20):
                    (staging / f"part-{n}").write_text(str(ident))
        except BaseException as err:  # any error in a thread fails the test below
            errors.append(err)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({(dest / f"part-{n}").read_text() for n in range(20)}) == 1
    assert len(list(dest.iterdir())) == 20
    assert [p.name for p in dest.parent.iterdir()] == ["model"]  # no staging folder, no lock file


# A second Python process that loads files.py alone (no torch), for the tests that need one to die or wait.
_CHILD = """
import importlib.util, os, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
dest, how = Path(sys.argv[2]), sys.argv[3]
if how == "between-renames":
    real = os.replace
    def replace(src, dst):
        real(src, dst)
        os._exit(9)  # killed right after the old folder was renamed aside
    os.replace = replace
with files.atomic_folder(dest) as staging:
    (staging / "a.txt").write_text("half")
    if how == "while-writing":
        os._exit(9)
    print("inside", flush=True)
    sys.stdin.readline()  # until the test lets it finish
    (staging / "a.txt").write_text("child")
"""


def _child(dest: Path, how: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, files.__file__, str(dest), how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("how", ["while-writing", "between-renames"])
def test_a_killed_build_leaves_the_previous_folder_and_the_next_call_recovers(tmp_path, how):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "a.txt").write_text("previous")
    child = _child(dest, how)
    child.communicate("\n", timeout=60)
    assert child.returncode == 9
    leftovers = sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if p.name != "model")
    if how == "while-writing":
        assert (dest / "a.txt").read_text() == "previous"
        assert leftovers == [".model.lock", ".model.partial"]
    else:  # the previous folder is aside, not lost
        assert not dest.exists() and leftovers == [".model.lock", ".model.old", ".model.partial"]
    assert recover_folder(dest)  # the dead process's staging folder
    assert (dest / "a.txt").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_folder(dest) as staging:  # and the next build goes through
        (staging / "a.txt").write_text("next")
    assert (dest / "a.txt").read_text() == "next"


def test_a_live_build_in_another_process_is_waited_for_not_removed(tmp_path):
    """The bug this guards against: recovery deleted every ``.<name>.partial-*``, including the staging
    folder of a process still writing it."""
    dest = tmp_path / "model"
    child = _child(dest, "wait")
    try:
        assert child.stdout.readline() == "inside\n"
        staging = next(tmp_path.glob(".model.partial-*"))
        ours = threading.Thread(target=lambda: recover_folder(dest))
        ours.start()
        ours.join(timeout=0.2)  # room for a broken lock to show; a working one blocks until the child is done
        assert ours.is_alive() and staging.is_dir()
        child.stdin.write("go\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
        ours.join(timeout=60)
        assert not ours.is_alive()
    finally:
        child.kill()
        child.wait()
    assert (dest / "a.txt").read_text() == "child"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_clean_stale_recovers_the_trainers_result_folders(tmp_path):
    """``--resume`` after a kill during the final save: the result killed between its renames comes back,
    staging folders of today's and earlier versions go."""
    from lorakit.train.checkpoint import clean_stale

    old = tmp_path / ".adapter.old-abc"
    old.mkdir()
    (old / "adapter_model.safetensors").write_bytes(b"previous")
    for name in (".adapter.partial-x", ".model.partial-y", ".model.partial", ".model.old", ".adapter.k3j2h1"):
        (tmp_path / name).mkdir()
    removed = clean_stale(tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == b"previous"
    assert sorted(p.name for p in removed) == [".adapter.k3j2h1", ".adapter.partial-x", ".model.old",
                                               ".model.partial", ".model.partial-y"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_strict_json_writes_null_for_non_finite_numbers():
    """Report files (glue.json, protocol.json) are read by jq and JavaScript, which refuse Python's ``NaN``."""
    import json
    import math

    text = files.strict_json({"pearson": math.nan, "scores": [math.inf, -math.inf, 1.5], "task": "stsb"}, indent=None)
    assert text == '{"pearson": null, "scores": [null, null, 1.5], "task": "stsb"}'
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
