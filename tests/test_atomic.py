"""The one write-to-temp-then-rename helper: all or nothing, no leftovers, secrets never readable by others."""

from __future__ import annotations

import stat

import pytest

from genba.atomic import write_atomic


def test_text_bytes_and_writer_callables_replace_the_file_and_leave_nothing(tmp_path):
    target = tmp_path / "state.json"
    write_atomic(target, "old")
    assert write_atomic(target, "新しい") == target and target.read_text(encoding="utf-8") == "新しい"
    write_atomic(target, b"\x00\x01", fsync=True)
    assert target.read_bytes() == b"\x00\x01"
    write_atomic(target, lambda p: p.write_text("via callable"))
    assert target.read_text() == "via callable"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "model.safetensors"
    write_atomic(target, "good")

    def torn(p):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, torn)
    assert target.read_text() == "good" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_mode_is_set_before_the_file_appears(tmp_path):
    target = tmp_path / "tokens.json"
    write_atomic(target, "{}", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
