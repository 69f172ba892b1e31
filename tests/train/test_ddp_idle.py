"""Issue 19 item 11: DDP without ``find_unused_parameters`` when a rank's batch lacks an embodiment.

With ``find_unused_parameters=True`` DDP walks the autograd graph every step to
find parameters that got no gradient (and warns when it finds none); here every
parameter takes part in every step instead, so that traversal is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("ddp_idle_worker.py")


@pytest.mark.distributed
def test_ddp_syncs_an_idle_embodiment_without_unused_parameter_search(toy_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENBA_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path), *map(str, toy_data)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "find_unused_parameters=True" not in proc.stderr  # the warning `make demo` printed twice
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["find_unused_parameters"] is False
    assert res["idle_params"] > 0 and res["idle_grad_max"] > 0  # rank 1's drive gradient reached rank 0
    assert res["max_rel_diff"] < 1e-4, res  # the mean over ranks of each rank's own gradient
