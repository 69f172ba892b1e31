"""A LeRobot policy, running in LeRobot's own environment, as a genba ``Policy``.

LeRobot 0.4.4 needs torch<2.11-era packages and cannot be imported into genba's
environment, so the policy lives in a child process started with
``benchmarks/peers/.venv-lerobot/bin/python lerobot_side.py serve CHECKPOINT``
and this class talks to it over the child's stdin/stdout.

Why a subprocess pipe, not genba's policy server: the server loads genba
checkpoints with ``genba.model.policy.load_policy`` in genba's environment; it
cannot host a LeRobot model without teaching the serving layer about a second
stack. A pipe needs no port, no auth and no serve-layer change, costs ~0.1 ms
per call on this machine (measured and reported by ``run.py`` as the adapter
overhead, separate from the model's own latency), and dies with its parent.

Wire format: each message is a 4-byte big-endian length followed by a msgpack
map. Requests: ``{"op": "reset"}``, ``{"op": "infer", "state": <float32
bytes>, "instruction": str}``, ``{"op": "latency", "states": <float32 bytes>,
"rows": int, "instruction": str}``, ``{"op": "info"}``, ``{"op": "ping"}``, ``{"op": "close"}``.
Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": str}`` (raised here
as :class:`PeerError` with the child's message). Arrays travel as raw float32
bytes, so nothing is lost in a round trip.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

HERE = Path(__file__).resolve().parent
LEROBOT_PYTHON = HERE / ".venv-lerobot" / "bin" / "python"
SIDE_SCRIPT = HERE / "lerobot_side.py"
_LEN = struct.Struct(">I")


class PeerError(RuntimeError):
    """The LeRobot process failed, answered with an error, or went away."""


def write_msg(stream: Any, obj: Mapping[str, Any]) -> None:
    """One length-prefixed msgpack message."""
    data = msgpack.packb(obj, use_bin_type=True)
    stream.write(_LEN.pack(len(data)) + data)
    stream.flush()


def read_msg(stream: Any) -> dict | None:
    """The next message, or None at end of stream."""
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    body = stream.read(n)
    if len(body) < n:
        return None
    return msgpack.unpackb(body, raw=False)


def peer_env() -> dict[str, str]:
    """Environment of the child: one thread, offline hub, no MuJoCo display."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.pop("PYTHONPATH", None)  # never let genba's environment leak into LeRobot's
    return env


class LeRobotPolicy:
    """``infer(obs) -> action`` / ``reset()`` backed by a LeRobot policy process.

    ``obs`` is genba's ``{"embodiment", "state", "instruction"}``; the child maps
    the state and instruction to LeRobot's features (see ``lerobot_side.py``).
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, checkpoint: str | os.PathLike, *, python: str | os.PathLike = LEROBOT_PYTHON,
                 log: str | os.PathLike | None = None) -> None:
        if not Path(python).exists():
            raise PeerError(f"LeRobot environment not found at {python}; run benchmarks/peers/setup_lerobot_env.sh")
        self.checkpoint = Path(checkpoint)
        self._log = open(log, "ab") if log else None
        self._proc = subprocess.Popen([str(python), str(SIDE_SCRIPT), "serve", str(self.checkpoint)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log if self._log else None, env=peer_env())
        self.info = self._call({"op": "info"})
        self.embodiment = self.info["embodiment"]
        self.obs_dim = int(self.info["obs_dim"])

    # ---- genba Policy interface ----------------------------------------------
    def reset(self) -> None:
        """Start a new episode: the child clears LeRobot's action queue."""
        self._call({"op": "reset"})

    def infer(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The next action (action_dim,) float32 from LeRobot's ``select_action``."""
        state = self._check_obs(obs)
        reply = self._call({"op": "infer", "state": state.tobytes(), "instruction": obs["instruction"]})
        return np.frombuffer(reply["action"], dtype=np.float32).copy()

    # ---- measurement ----------------------------------------------------------
    def chunk_latency(self, states: np.ndarray, instruction: str) -> dict:
        """Batch-1 fresh-chunk latency, measured inside the child (LeRobot processors + model).

        One call per row of ``states`` (R, obs_dim), each after a reset so the
        action queue is empty; the first call is a warm-up. Returns ``{"times_s": [...]}``.
        """
        states = np.ascontiguousarray(states, dtype=np.float32)
        return self._call({"op": "latency", "states": states.tobytes(), "rows": len(states),
                           "instruction": instruction})

    def ping(self) -> None:
        """One empty round trip (measures the pipe and msgpack alone)."""
        self._call({"op": "ping"})

    # ---- plumbing -------------------------------------------------------------
    def _check_obs(self, obs: Mapping[str, Any]) -> np.ndarray:
        for key in ("embodiment", "state", "instruction"):
            if key not in obs:
                raise ValueError(f"obs lacks {key!r} (have {sorted(obs)})")
        if obs["embodiment"] != self.embodiment:
            raise ValueError(f"obs['embodiment'] {obs['embodiment']!r}: this LeRobot policy was trained on "
                             f"{self.embodiment!r}")
        state = np.asarray(obs["state"], dtype=np.float32)
        if state.shape != (self.obs_dim,):
            raise ValueError(f"obs['state'] has shape {state.shape}, expected ({self.obs_dim},)")
        return state

    def _call(self, request: Mapping[str, Any]) -> dict:
        if self._proc.poll() is not None:
            raise PeerError(f"LeRobot process for {self.checkpoint} exited with code {self._proc.returncode}")
        try:
            write_msg(self._proc.stdin, request)
            reply = read_msg(self._proc.stdout)
        except (BrokenPipeError, OSError) as e:
            raise PeerError(f"LeRobot process for {self.checkpoint}: {e}") from None
        if reply is None:
            code = self._proc.wait(timeout=10)
            raise PeerError(f"LeRobot process for {self.checkpoint} closed the pipe (exit code {code})")
        if not reply.get("ok"):
            raise PeerError(f"LeRobot process ({request.get('op')}): {reply.get('error')}")
        return reply

    def close(self) -> None:
        """Ask the child to exit; kill it if it does not within 10 s."""
        if self._proc.poll() is None:
            try:
                write_msg(self._proc.stdin, {"op": "close"})
                self._proc.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._log:
            self._log.close()

    def __enter__(self) -> LeRobotPolicy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- genba's closed-loop harness -------------------------------------------------
class LockstepPeer:
    """The lockstep interface of ``genba.eval.rollout.run_lockstep`` over one LeRobot process.

    ``reset(n, embodiment, instruction)`` / ``act(obs (N, obs_dim)) -> (N, A)``:
    the N lockstep envs of one eval job share one batched LeRobot call per
    step, as genba's ``BatchedPolicy`` does; LeRobot's action queue holds
    ``(N, A)`` actions, so every env replans on the same steps.
    """

    def __init__(self, peer: LeRobotPolicy) -> None:
        self.peer = peer

    def reset(self, n: int, embodiment: str, instruction: str) -> None:
        if embodiment != self.peer.embodiment:
            raise ValueError(f"embodiment {embodiment!r}: the LeRobot policy was trained on {self.peer.embodiment!r}")
        self.n, self.instruction = n, instruction
        self.peer.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        if obs.shape != (self.n, self.peer.obs_dim):
            raise ValueError(f"obs has shape {obs.shape}, expected ({self.n}, {self.peer.obs_dim})")
        reply = self.peer._call({"op": "infer", "state": obs.tobytes(), "instruction": self.instruction})
        return np.frombuffer(reply["action"], dtype=np.float32).reshape(self.n, -1).copy()


_WORKER: dict = {}  # per eval worker process: checkpoint -> LeRobotPolicy, (task, slot) -> env


def run_peer_job(job) -> list:
    """Eval worker entry, the twin of ``genba.eval.rollout.run_job`` for a LeRobot checkpoint."""
    from genba.envs import registry
    from genba.eval.rollout import run_lockstep

    cfg, task_id, episodes = job
    task = registry.get_task(task_id)
    envs = []
    for j, (_, seed) in enumerate(episodes):
        if (task_id, j) not in _WORKER:
            _WORKER[(task_id, j)] = task.make_env(seed)
        envs.append(_WORKER[(task_id, j)])
    if cfg.checkpoint not in _WORKER:
        _WORKER[cfg.checkpoint] = LeRobotPolicy(cfg.checkpoint, log=Path(cfg.checkpoint) / "serve-eval.log")
    return run_lockstep(task, envs, LockstepPeer(_WORKER[cfg.checkpoint]), episodes, cfg)


def iter_peer_results(cfg):
    """Results job by job, as ``genba.eval.rollout.iter_results`` gives them for genba checkpoints."""
    from genba.envs.collect import parallel_map
    from genba.eval.rollout import plan_jobs

    jobs = plan_jobs(cfg)
    yield from parallel_map(run_peer_job, jobs, min(cfg.workers, len(jobs)))


if __name__ == "__main__":  # quick manual check: python adapter.py CHECKPOINT
    with LeRobotPolicy(sys.argv[1]) as pol:
        print(pol.info)
        pol.reset()
        print(pol.infer({"embodiment": pol.embodiment, "state": np.zeros(pol.obs_dim, np.float32),
                         "instruction": pol.info["instructions"][0]}))
