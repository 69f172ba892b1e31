"""The steps of docs/tutorial-new-embodiment.md, run for real: add a machine, collect, train, evaluate, serve.

The gantry module is taken from the tutorial's first Python block and imported
at runtime (the tutorial saves it in ``src/genba/envs/embodiments/``; a test
must not add files to the package). Because spawned worker processes would
not see a module registered at runtime, collection and evaluation run
in-process here (``--workers 0/1``); everything else is the tutorial's commands.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from genba import cli
from genba.envs import registry

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial-new-embodiment.md"


@pytest.fixture(scope="module")
def gantry(tmp_path_factory):
    """Import the tutorial's module (registers gantry/reach); unregister it afterwards."""
    code = re.search(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.S).group(1)
    path = tmp_path_factory.mktemp("tutorial") / "genba_tutorial_gantry.py"
    path.write_text(code, encoding="utf-8")
    registry.load_all()  # the package's own embodiments first, as in a real install
    spec = importlib.util.spec_from_file_location("genba_tutorial_gantry", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    registry._TASKS.pop("gantry/reach", None)
    sys.modules.pop(spec.name, None)


def test_the_new_task_is_registered_and_passes_the_env_checker(gantry, capsys):
    from gymnasium.utils.env_checker import check_env

    task = registry.get_task("gantry/reach")
    assert task.spec.obs_dim == 6 and task.spec.action_dim == 2 and task.spec.fps == pytest.approx(50.0)
    assert [t.id for t in registry.resolve("gantry")] == ["gantry/reach"]
    check_env(registry.make_env("gantry/reach", 0).unwrapped, skip_render_check=True)
    assert cli.main(["envs", "list", "--group", "gantry"]) == 0
    assert "gantry/reach" in capsys.readouterr().out


def test_collect_train_evaluate_serve(gantry, tmp_path, capsys):
    data, run, ev = tmp_path / "data", tmp_path / "train", tmp_path / "eval"
    # 2. collect
    assert cli.main(["collect", "--tasks", "gantry", "--episodes", "8", "--out", str(data), "--workers", "0"]) == 0
    meta = json.loads((data / "gantry" / "meta" / "genba.json").read_text())
    assert meta["collection"]["kept"] == 8, "the tutorial's expert must solve its task"
    # 3. train
    assert cli.main(["train", "--preset", "debug", "--data", str(data / "gantry"), "--out", str(run),
                     "--steps", "20", "--no-progress"]) == 0
    ckpt = next(run.glob("checkpoints/step-*"))
    assert "gantry" in json.loads((ckpt / "checkpoint.json").read_text())["specs"]
    # 4. evaluate, both languages
    for lang in ("en", "ja"):
        out = ev / lang
        assert cli.main(["eval", str(run), "--tasks", "gantry", "--episodes", "2", "--workers", "1",
                         "--lang", lang, "--out", str(out), "--no-progress"]) == 0
        res = json.loads((out / "results.json").read_text())
        assert list(res["tasks"]) == ["gantry/reach"] and res["tasks"]["gantry/reach"]["episodes"] == 2
    capsys.readouterr()
    # 5. serve: token for the org, then an authenticated infer call on the served checkpoint
    pytest.importorskip("genba.serve.server")
    from fastapi.testclient import TestClient

    from genba.serve.auth import TokenStore
    from genba.serve.backends import load_backend
    from genba.serve.server import PolicyServer, build_app

    tokens = tmp_path / "tokens.json"
    assert cli.main(["tokens", "--store", str(tokens), "add-org", "acme", "--embodiments", "gantry"]) == 0
    assert cli.main(["tokens", "--store", str(tokens), "issue", "acme"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    app = build_app(PolicyServer(load_backend(str(ckpt)), TokenStore(tokens)))
    obs = {"embodiment": "gantry", "state": [0.2, 0.3, 0.0, 0.0, 0.7, 0.6],
           "instruction": "Move the gantry head to the target point."}
    with TestClient(app) as http:
        r = http.post("/v1/infer", json={"obs": obs}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        actions = np.asarray(r.json()["actions"])
        assert actions.ndim == 2 and actions.shape[1] == 2
        assert np.all(np.abs(actions) <= 0.5 + 1e-6), "served commands must respect the spec's limits"
        denied = http.post("/v1/infer", json={"obs": obs}, headers={"Authorization": "Bearer wrong"})
        assert denied.status_code in (401, 403)
