"""The torch-free client package (clients/genba-client) installed alone into a bare venv, against a served checkpoint.

A cell controller installs ``genba-client`` without torch, MuJoCo or Meta-World;
this test does the same (``python -m venv``, ``pip install clients/genba-client``
from the index pip is configured with) and talks to a real uvicorn server on
loopback that serves the tiny ``debug`` checkpoint, over HTTP and websocket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genba.envs.registry import get_task
from genba.serve.backends import load_backend
from genba.serve.server import PolicyServer, build_app
from tests.serve.conftest import loopback_server
from tests.serve.test_serve_model import checkpoint  # noqa: F401  (the tiny random-weight bundle fixture)

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "genba-client"
TASK = "drive/dc-current"

# Runs inside the bare venv: argv[1] is a JSON job; prints one JSON line of what it saw.
SCRIPT = r"""
import importlib.util, json, sys
job = json.loads(sys.argv[1])
leaked = [m for m in ("torch", "mujoco", "metaworld", "genba") if importlib.util.find_spec(m) is not None]
from genba_client import PolicyClient, ServerError
out = {"leaked": leaked}
for transport in ("http", "ws"):
    with PolicyClient(job["url"], job["token"], transport=transport, session=transport) as c:
        answer = c.infer(job["embodiment"], job["state"], "track")
        out[transport] = {"actions": answer["actions"].tolist(), "dtype": str(answer["actions"].dtype),
                          "preset": c.metadata()["model"]["preset"]}
    with PolicyClient(job["url"], "gbt_00000000_" + "A" * 43, transport=transport) as c:
        try:
            c.infer(job["embodiment"], job["state"])
        except ServerError as e:
            out[transport]["refused"] = e.status
out["torch_loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


# PYTHONPATH would hand the bare venv this checkout's sources (genba included): it runs without it.
BARE_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=BARE_ENV)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A venv with nothing but genba-client and its four dependencies (no system site-packages)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=60)
    python = venv / "bin" / "python"
    # this env's pip installs into the bare one (--python): no ensurepip, same index and wheel cache
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(CLIENT_DIR)], timeout=120)
    return python


@pytest.fixture
def served(checkpoint, tokens):  # noqa: F811  (pytest injects the imported fixture)
    """A uvicorn server on a free loopback port serving the tiny checkpoint; yields (url, token)."""
    tokens.add_org("cell", [get_task(TASK).spec.name])
    with loopback_server(build_app(PolicyServer(load_backend(str(checkpoint)), tokens))) as port:
        yield f"http://127.0.0.1:{port}", tokens.issue("cell")


def test_bare_venv_client_without_torch_talks_http_and_ws(bare_venv, served):
    url, token = served
    spec = get_task(TASK).spec
    state, _ = get_task(TASK).make_env(0).reset(seed=0)
    job = {"url": url, "token": token, "embodiment": spec.name, "state": np.asarray(state).tolist()}
    r = _run([str(bare_venv), "-c", SCRIPT, json.dumps(job)], timeout=60)
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["leaked"] == [] and not seen["torch_loaded"]
    no_torch = subprocess.run([str(bare_venv), "-c", "import torch"], capture_output=True, text=True, env=BARE_ENV)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    for transport in ("http", "ws"):
        got = seen[transport]
        acts = np.asarray(got["actions"])
        assert got["dtype"] == "float32" and got["preset"] == "debug" and got["refused"] == 401
        assert acts.ndim == 2 and acts.shape[1] == spec.action_dim and np.all(np.isfinite(acts))
        assert np.all(acts >= np.array(spec.action_low)) and np.all(acts <= np.array(spec.action_high))
