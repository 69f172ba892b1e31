"""The bridge's cycle never waits on the model: chunk prefetching, validity, missed deadlines.

No timing assertions here (timed targets live in benchmarks/bridge_cycle.py): every check is a
relation that holds however slow the machine is (an action is played only inside its chunk's
validity, every cycle without one is counted, a chunk's actions come out in order).
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from genba.serve.bridge import BridgeConfig, run_cycles
from genba.serve.prefetch import ChunkPrefetcher, PolicySource, PrefetchConfig, StepSource
from genba.serve.shield import ShieldConfig

from .conftest import toy_spec

SPEC = toy_spec()


class TaggedSource:
    """A chunk of ``chunk`` actions; action i of the chunk planned at cycle k0 carries k0 + i (the cycle
    it is meant for) in ``tags``, keyed by the value on axis 0. Sleeps ``delay`` s per chunk."""

    def __init__(self, chunk: int, delay: float, hang_after: int | None = None) -> None:
        self.chunk, self.delay, self.hang_after = chunk, delay, hang_after
        self.cycle = 0  # set by the fake machine: the cycle whose observation was posted last
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, states):
        k0 = int(round(states[-1][4] * 1000))  # the fake machine writes its cycle into obs 'ty'
        self.calls += 1
        if self.hang_after is not None and self.calls > self.hang_after:
            self.release.wait(30)  # a model that stops answering
        time.sleep(self.delay)
        return np.array([[0.3, 1e-4 * (k0 + i), 0.0] for i in range(self.chunk)])


def fake_io(log: list):
    """read() gives an observation that carries the cycle index (obs 'ty' = k / 1000); write() records."""
    k = {"n": 0}

    async def read():
        s = np.zeros(SPEC.obs_dim)
        s[4] = k["n"] / 1000
        k["n"] += 1
        return s, 0.0

    async def write(u):
        log.append(np.array(u))
    return read, write


def drive(source, cycles: int, prefetch: PrefetchConfig | None = None, shield_deadline: float = 0.05):
    prefetch = prefetch or PrefetchConfig()
    cfg = BridgeConfig(period_s=0.01, shield=ShieldConfig(deadline_s=shield_deadline), prefetch=prefetch)
    fed: list = []
    written: list = []
    read, write = fake_io(written)
    pre = ChunkPrefetcher(source, prefetch)
    orig = pre.action

    def spy(k):
        a, age = orig(k)
        fed.append((k, a, age))
        return a, age
    pre.action = spy
    with pre:
        rep = asyncio.run(run_cycles(SPEC, pre, cfg, read, write, cycles=cycles))
        if isinstance(source, TaggedSource):
            source.release.set()  # a hung fake answers now, so the worker ends with the prefetcher
    return rep, fed, np.array(written)


def test_bridge_slow_policy_never_plays_an_expired_action_and_counts_misses():
    """A policy that takes 30 ms per chunk of 4 (3+ cycles at 100 Hz): the cycle still runs every
    period, plays only actions whose chunk slot is this very cycle, and counts every other cycle."""
    src = TaggedSource(chunk=4, delay=0.03)
    rep, fed, written = drive(src, cycles=40)
    assert rep.cycles == 40 and len(written) == 40
    for k, a, age in fed:
        if a is None:
            continue
        assert 0 <= age < 4  # inside its chunk: never an action past its validity
        assert round(a[1] / 1e-4) == k  # the action planned for exactly this cycle
    misses = sum(a is None for _, a, _ in fed)
    assert misses >= 1 and rep.missed_deadlines == misses == rep.ages.count(-1)
    first = next((i for i, a in enumerate(rep.ages) if a >= 0), len(rep.ages))
    assert rep.startup_misses == first >= 1  # cycle 0 never has a plan from its own observation
    assert src.calls < 40  # the worker coalesced observations while busy: never one request per cycle queued


def test_bridge_prefetch_plays_chunk_actions_in_order():
    """With a policy faster than the period, consecutive cycles play consecutive slots of the newest
    chunk; no slot is played twice or out of order."""
    src = TaggedSource(chunk=8, delay=0.0)
    rep, fed, _ = drive(src, cycles=30, prefetch=PrefetchConfig(replan_every=4))
    played = [(k, a, age) for k, a, age in fed if a is not None]
    assert len(played) >= 20
    assert [round(a[1] / 1e-4) for _, a, _ in played] == [k for k, _, _ in played]
    ks = [k for k, _, _ in played]
    assert ks == sorted(set(ks))
    ages = [age for _, _, age in played]
    # inside one chunk the age grows by one per cycle; a new chunk restarts it at a smaller age
    assert all(b == a + 1 or b < a + 1 for a, b in zip(ages, ages[1:]))
    assert any(b == a + 1 for a, b in zip(ages, ages[1:]))


def test_bridge_stalled_policy_ends_in_a_counted_controlled_stop():
    """The model answers once, then hangs: after its chunk expires no action is played again, every
    cycle is counted, and the shield's watchdog ramps the command to the stop value."""
    src = TaggedSource(chunk=4, delay=0.0, hang_after=1)
    try:
        rep, fed, written = drive(src, cycles=60)
    finally:
        src.release.set()
    ages = rep.ages
    last_played = max(i for i, a in enumerate(ages) if a >= 0)
    assert all(a == -1 for a in ages[last_played + 1:]) and max(ages) < 4
    assert rep.missed_deadlines == ages.count(-1) >= 60 - 4 - 1
    assert rep.interventions.get("watchdog", 0) >= 1
    np.testing.assert_allclose(written[-1], [0.0, 0.0, 0.0], atol=1e-9)  # the stop value, held
    assert np.abs(written[:, 0]).max() > 0.01  # it did move while the chunk was valid


def test_bridge_failing_policy_is_a_missing_command_not_a_crash():
    def boom(states):
        raise RuntimeError("model exploded")
    rep, fed, written = drive(boom, cycles=10)
    assert rep.missed_deadlines == 10 and rep.prefetch["errors"] >= 1
    assert "model exploded" in rep.prefetch["last_error"]
    np.testing.assert_allclose(written, 0.0, atol=1e-12)


def test_step_source_answer_valid_one_cycle_after_its_observation():
    pre = ChunkPrefetcher(StepSource(lambda s: s[:3] + 1.0))
    pre._chunk = (5, StepSource(lambda s: s[:3] + 1.0)([np.zeros(5)]))
    assert pre.action(5)[1] == 0 and pre.action(6)[1] == 1
    assert pre.action(7) == (None, None) and pre.action(4) == (None, None)
    pre = ChunkPrefetcher(StepSource(lambda s: s), PrefetchConfig(max_age=0))
    pre._chunk = (5, np.zeros((8, 3)))
    assert pre.action(5)[1] == 0 and pre.action(6) == (None, None)  # max_age caps a long chunk


@pytest.mark.parametrize("bad", [dict(replan_every=0), dict(max_age=-1), dict(backlog=0)])
def test_prefetch_config_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="PrefetchConfig"):
        PrefetchConfig(**bad)


def test_policy_source_feeds_every_frame_to_the_history(random_checkpoint):
    """Planning from a coalesced backlog (3 frames, then 4) gives the chunks a policy fed every frame
    gives: the frames no chunk was planned from still reach the history (``Policy.observe``)."""
    from genba.model.policy import load_policy

    ckpt, spec = random_checkpoint
    policy, ref = load_policy(ckpt, device="cpu"), load_policy(ckpt, device="cpu")
    rng = np.random.default_rng(0)
    states = [rng.uniform(-0.5, 0.5, spec.obs_dim) for _ in range(7)]
    src = PolicySource(policy, spec.name, "track")
    got = [src(states[:3]), src(states[3:7])]
    obs = [{"embodiment": spec.name, "state": s.astype(np.float32), "instruction": "track"} for s in states]
    want = []
    for i, o in enumerate(obs):
        if i in (2, 6):
            want.append(ref.infer_chunk(o))
        else:
            ref.observe(o)
    skipped = load_policy(ckpt, device="cpu")  # the same plans without the in-between frames differ
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    skipped.infer_chunk(obs[2])
    assert not np.allclose(skipped.infer_chunk(obs[6]), want[1])


def test_process_policy_source_matches_the_in_process_policy(random_checkpoint, tmp_path):
    """The Policy in a child process (no GIL shared with the cycle) plans what the in-process one
    plans, backlog and all; a checkpoint that does not load is refused naming it."""
    from genba.model.policy import load_policy
    from genba.serve.prefetch import ProcessPolicySource

    ckpt, spec = random_checkpoint
    rng = np.random.default_rng(1)
    states = [rng.uniform(-0.5, 0.5, spec.obs_dim) for _ in range(5)]
    local = PolicySource(load_policy(ckpt, device="cpu"), spec.name, "track")
    remote = ProcessPolicySource(ckpt, spec.name, "track")
    try:
        assert remote.chunk == 4
        for part in (states[:2], states[2:]):
            np.testing.assert_allclose(remote(part), local(part), rtol=1e-5, atol=1e-6)
    finally:
        remote.close()
    with pytest.raises(RuntimeError, match=f"policy worker for {tmp_path}"):
        ProcessPolicySource(tmp_path, spec.name, "track")


def test_set_priority_reports_instead_of_raising():
    from genba.serve.prefetch import set_priority

    problems = set_priority(cpus=[10_000], what="test", rt=1000)
    assert len(problems) == 2 and "SCHED_FIFO 1000 not applied" in problems[0] and "CPUs [10000]" in problems[1]
