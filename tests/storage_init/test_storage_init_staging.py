"""The swap into DEST: restartable after a kill at any phase, rolled back on an in-process error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from storage_servers import tree

from kbundle.storage_init import staging as st


def _dest_with_old_model(tmp_path: Path) -> Path:
    dest = tmp_path / "models"
    dest.mkdir()
    (dest / "old.onnx").write_text("old")
    (dest / "sub").mkdir()
    (dest / "sub" / "old.txt").write_text("old")
    return dest


def _staged_new_model(dest: Path) -> st.Staging:
    staging = st.Staging(dest)
    staging.create()
    (staging.model / "new.onnx").write_text("new")
    (staging.model / "SHA256SUMS").write_text("")
    return staging


NEW = {"new.onnx", "SHA256SUMS"}


def test_commit_replaces_old_model(tmp_path: Path) -> None:
    dest = _dest_with_old_model(tmp_path)
    _staged_new_model(dest).commit()
    assert set(os.listdir(dest)) == NEW


@pytest.mark.parametrize("moved_old", [0, 1, 2])
def test_killed_after_verified_is_finished_forward(tmp_path: Path, moved_old: int) -> None:
    """Killed while moving the old model aside: the next run completes the swap."""
    dest = _dest_with_old_model(tmp_path)
    staging = _staged_new_model(dest)
    staging._set_phase(st.VERIFIED)
    (dest / st.PREVIOUS).mkdir()
    for name in sorted(os.listdir(dest))[:moved_old]:
        if name not in (st.STAGING, st.PREVIOUS):
            os.rename(dest / name, dest / st.PREVIOUS / name)
    st.recover(dest)
    assert set(os.listdir(dest)) == NEW


def test_killed_while_moving_new_model_in_is_finished(tmp_path: Path) -> None:
    dest = _dest_with_old_model(tmp_path)
    staging = _staged_new_model(dest)
    (dest / st.PREVIOUS).mkdir()
    for name in ("old.onnx", "sub"):
        os.rename(dest / name, dest / st.PREVIOUS / name)
    staging._set_phase(st.OLD_MOVED)
    os.rename(staging.model / "new.onnx", dest / "new.onnx")  # one of two moved, then killed
    st.recover(dest)
    assert set(os.listdir(dest)) == NEW


def test_unverified_staging_is_deleted_and_old_model_kept(tmp_path: Path) -> None:
    dest = _dest_with_old_model(tmp_path)
    before = tree(dest)
    _staged_new_model(dest)  # no PHASE: the fetch never finished
    st.recover(dest)
    assert tree(dest) == before


def test_error_during_swap_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename failing half-way (e.g. EBUSY on a mount inside DEST) restores the old model."""
    dest = _dest_with_old_model(tmp_path)
    before = tree(dest)
    staging = _staged_new_model(dest)
    real_rename, calls = os.rename, []

    def flaky_rename(src, dst):
        calls.append(src)
        if len(calls) == 4:  # both old entries moved aside, one new entry moved in
            raise OSError(16, "Device or resource busy")
        real_rename(src, dst)

    monkeypatch.setattr(st.os, "rename", flaky_rename)
    with pytest.raises(OSError):
        staging.commit()
    monkeypatch.undo()
    assert tree(dest) == before
