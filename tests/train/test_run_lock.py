"""Issue 19 item 7: one run directory, one run.

Two runs in one ``--out`` used to crash on each other's ``.tmp``, mix
``metrics.jsonl`` and overwrite ``config.json``; a second ``genba train`` into a
finished run silently replaced it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from genba.cli import main as cli_main
from genba.train import trainer as T
from genba.train.config import TrainConfigError, get_train_preset
from genba.train.monitor import read_metrics

DEBUG = get_train_preset("debug").replace(steps=2, ckpt_every=0, keep_last=5)


def _start_run(toy_data, out, minutes=1.0):
    """A real `genba train` in another process, long enough to be caught in the middle."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENBA_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "genba.cli", "train", "--preset", "debug", "--minutes", str(minutes),
           "--ckpt-every", "5", "--no-progress", "--out", str(out), "--data", ",".join(map(str, toy_data))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while not (out / "metrics.jsonl").is_file() or not read_metrics(out):  # it is training
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the first run did not start training"
        time.sleep(0.2)
    return proc


def test_a_second_run_into_a_busy_dir_fails_at_once_naming_the_holder(toy_data, tmp_path):
    out = tmp_path / "run"
    first = _start_run(toy_data, out)
    try:
        config = (out / "config.json").read_text()
        t0 = time.monotonic()
        with pytest.raises(TrainConfigError, match=rf"{out}.* in use by .*pid {first.pid}"):
            T.train(DEBUG.replace(seed=99), toy_data, out, resume=True, progress=False)
        assert time.monotonic() - t0 < 10  # refused before opening any data or touching the dir
        assert (out / "config.json").read_text() == config
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.kill()  # kill -9: the OS releases the lock with the process
        first.wait()
    res = T.train(DEBUG, toy_data, out, resume=True, progress=False)  # the dir is free again
    assert res.step >= 1


def test_train_into_an_existing_run_needs_resume_or_overwrite(toy_data, tmp_path):
    T.train(DEBUG, toy_data, tmp_path, progress=False)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(TrainConfigError, match=r"already holds a run .*--resume.*--overwrite"):
        T.train(DEBUG.replace(seed=7), toy_data, tmp_path, progress=False)
    assert (tmp_path / "config.json").read_text() == before  # nothing replaced
    T.train(DEBUG.replace(seed=7, steps=3), toy_data, tmp_path, overwrite=True, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["seed"] == 7
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]  # one run's lines only
    with pytest.raises(TrainConfigError, match="exclude each other"):
        T.train(DEBUG, toy_data, tmp_path, resume=True, overwrite=True, progress=False)


def test_overwrite_leaves_what_training_did_not_write(toy_data, tmp_path):
    T.train(DEBUG, toy_data, tmp_path, progress=False)
    (tmp_path / "eval-en").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    T.train(DEBUG, toy_data, tmp_path, overwrite=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "eval-en").is_dir()


def test_cli_refuses_an_existing_run_in_one_line(toy_data, tmp_path, capsys):
    argv = ["train", "--preset", "debug", "--steps", "1", "--no-progress", "--out", str(tmp_path),
            "--data", ",".join(map(str, toy_data))]
    assert cli_main(argv) == 0
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "Traceback" not in err
    assert cli_main(argv + ["--overwrite"]) == 0


def test_finetune_out_dir_is_locked_and_not_overwritten(toy_data, tmp_path):
    from genba.train.finetune import FinetuneConfig, default_train_config, finetune
    from genba.train.rundir import RunLock

    parent = T.train(DEBUG, toy_data[:1], tmp_path / "pre", progress=False).checkpoint
    cfg = FinetuneConfig(mode="frozen-trunk", scope="embodiment", tensorboard=False,
                         train=default_train_config().replace(steps=2, batch_size=8, log_every=1))
    out = tmp_path / "ft"
    finetune(parent, toy_data[:1], out, cfg, progress=False)
    with pytest.raises(TrainConfigError, match="already holds a run .*--overwrite"):
        finetune(parent, toy_data[:1], out, cfg, progress=False)
    with RunLock(out):  # another process's run (a second open file description conflicts like one)
        with pytest.raises(TrainConfigError, match=f"pid {os.getpid()}"):
            finetune(parent, toy_data[:1], out, cfg, overwrite=True, progress=False)
    finetune(parent, toy_data[:1], out, cfg, overwrite=True, progress=False)
