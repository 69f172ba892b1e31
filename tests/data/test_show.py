"""`genba data show`: a PNG contact sheet of an episode, of the size the layout promises."""

from __future__ import annotations

import struct

import pytest
from data_synth import TASKS
from video_synth import camera_episodes, camera_spec

from genba.cli import main
from genba.data.layout import write_dataset
from genba.data.show import pick_frames, sheet_size


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_show_writes_contact_sheet(tmp_path, capsys):
    spec = camera_spec(cameras=(("corner2", 32, 32), ("wrist", 16, 24)))
    root = write_dataset(tmp_path / "ds", camera_episodes(spec, [5, 30]), spec, TASKS)
    out = tmp_path / "sheet.png"
    assert main(["data", "show", str(root), "--episode", "1", "--out", str(out), "--columns", "6"]) == 0
    shown = pick_frames(30, 6)
    assert shown.tolist() == [0, 6, 12, 18, 24, 29]
    aspect = (32 / 32 + 16 / 24) / 2
    assert _png_size(out) == sheet_size(2, len(shown), aspect)
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("episode", [2, -1])
def test_show_refuses_missing_episode(tmp_path, capsys, episode):
    spec = camera_spec()
    root = write_dataset(tmp_path / "ds", camera_episodes(spec, [4]), spec, TASKS[:1])
    assert main(["data", "show", str(root), "--episode", str(episode), "--out", str(tmp_path / "x.png")]) == 2
    assert "episode" in capsys.readouterr().err
