"""`genba bridge opcua`: drive an OPC UA machine with a policy, through the shield.

Each cycle (``period_s``, default 100 Hz) does only what cannot wait: read every
observation node in one request, post the observation to the
:class:`~genba.serve.prefetch.ChunkPrefetcher`, pop the action planned for this
cycle from the newest action chunk, pass it through the :class:`SafetyShield`,
write every setpoint node in one request. The model never runs inside a cycle:
the prefetcher's worker plans the next chunk (in-process Policy, a Policy in a
child process, or a genba server) from the newest observation while the
current chunk plays. A cycle with no valid action (none yet, or the newest
chunk expired) gives the shield a no-command step, so the watchdog turns a
lasting gap into a controlled stop; it is counted as a missed deadline, and an
expired action is never played. Cycles that overrun their period, and cycles
whose write lands after ``deadline_s``, are counted too. Priorities and CPU
pinning are optional (``cycle_nice``, ``cycle_cpus``; see docs/safety.md).

A machine with cameras (its spec's ``cameras``) needs a camera source
(:mod:`genba.serve.cameras`: ``read() -> {camera: (H, W, 3) uint8}``, the
simulator's renderer now, a capture device on a cell): each cycle reads it right
after the observation nodes, checks the frames against the spec and posts them
with the observation, so the policy plans from state and frames of one instant.

The client session uses Basic256Sha256 SignAndEncrypt with its own
certificate, and validates the machine's certificate against the same trust
store (our CA).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from genba.data.spec import EmbodimentSpec
from genba.serve.cameras import CameraSource, check_frames
from genba.serve.opcua_machine import NAMESPACE
from genba.serve.prefetch import ChunkPrefetcher, ChunkSource, PrefetchConfig, StepSource, set_priority
from genba.serve.shield import SafetyShield, ShieldConfig

CLIENT_URI = "urn:genba:bridge"


@dataclass(frozen=True)
class BridgeConfig:
    """``deadline_s``: the latest a cycle's write may land after its read started (later writes are
    counted as ``late``). ``prefetch``: chunk planning and validity. ``cycle_nice``,
    ``cycle_rt_priority``, ``cycle_cpus``: optional priority (nice, or the SCHED_FIFO real-time
    class) and CPU pinning of the cycle's thread (a negative nice and SCHED_FIFO need
    CAP_SYS_NICE; what cannot be applied is reported in the summary, not raised)."""

    endpoint: str = "opc.tcp://127.0.0.1:4840/genba/"
    cert_dir: str = "certs"
    name: str = "bridge"  # client certificate name in cert_dir
    period_s: float = 0.01
    deadline_s: float = 0.008
    instruction: str = ""
    shield: ShieldConfig = field(default_factory=lambda: ShieldConfig(deadline_s=0.05))
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    cycle_nice: int | None = None
    cycle_rt_priority: int | None = None  # SCHED_FIFO priority of the cycle thread (1-99)
    cycle_cpus: tuple[int, ...] | None = None


@dataclass
class BridgeReport:
    """Per cycle: the command written, the machine's tracking error, and the age (cycles since its
    observation) of the planned action played, -1 where there was none (a missed deadline)."""

    cycles: int = 0
    missed_deadlines: int = 0
    camera_errors: int = 0  # cycles whose frames were missing or wrong: not posted (the chunk ages out)
    camera_error: str | None = None
    startup_misses: int = 0  # of those, the cycles before the first plan arrived
    overruns: int = 0
    late: int = 0
    cycle_ms: list[float] = field(default_factory=list)
    phase_ms: list[tuple[float, float, float]] = field(default_factory=list)  # (read, decide, write)
    commands: list[np.ndarray] = field(default_factory=list)
    tracking_error: list[float] = field(default_factory=list)
    ages: list[int] = field(default_factory=list)
    interventions: dict = field(default_factory=dict)
    prefetch: dict = field(default_factory=dict)
    priority_problems: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        c = np.asarray(self.cycle_ms) if self.cycle_ms else np.zeros(1)
        te = np.asarray([e for e in self.tracking_error if np.isfinite(e)]) if self.tracking_error else np.zeros(0)
        played = [a for a in self.ages if a >= 0]
        return {"cycles": self.cycles, "missed_deadlines": self.missed_deadlines,
                "camera_errors": self.camera_errors, "camera_error": self.camera_error,
                "startup_misses": self.startup_misses, "overruns": self.overruns,
                "late": self.late, "cycle_ms_p50": float(np.percentile(c, 50)),
                "cycle_ms_p99": float(np.percentile(c, 99)), "cycle_ms_max": float(c.max()),
                "phase_ms_p99": dict(zip(("read", "decide", "write"), np.percentile(
                    np.asarray(self.phase_ms).reshape(-1, 3), 99, axis=0).tolist())) if self.phase_ms else {},
                "action_age_max": max(played) if played else None,
                "watchdog_stops": int(self.interventions.get("watchdog", 0)),
                "tracking_error_mean": float(te.mean()) if te.size else None, "interventions": self.interventions,
                "prefetch": self.prefetch, "priority_problems": self.priority_problems}


async def secure_client(endpoint: str, cert_dir: str, name: str, *, encrypt: bool = True,
                        as_user: bool = True) -> Client:
    """An asyncua client with our certificate, SignAndEncrypt, a validator for the server's
    certificate, and (``as_user``) the same certificate as its user identity (no anonymous session)."""
    d = Path(cert_dir)
    client = Client(endpoint, timeout=5)
    client.application_uri = f"{CLIENT_URI}:{name}"
    if encrypt:
        await client.set_security(SecurityPolicyBasic256Sha256, str(d / f"{name}.cert.der"), str(d / f"{name}.key.pem"),
                                  server_certificate=str(d / "machine.cert.der"), mode=ua.MessageSecurityMode.SignAndEncrypt)
        store = TrustStore([d / "trusted"], [])
        await store.load()
        client.certificate_validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER, store)
    if as_user:
        await client.load_client_certificate(str(d / f"{name}.cert.der"))
        await client.load_private_key(str(d / f"{name}.key.pem"))
    return client


async def machine_nodes(client: Client, spec: EmbodimentSpec):
    """(observation nodes, setpoint nodes, status folder) by browse path from the spec's names."""
    idx = await client.get_namespace_index(NAMESPACE)
    root = await client.nodes.objects.get_child(f"{idx}:{spec.name}")
    obs = [await root.get_child([f"{idx}:Observations", f"{idx}:{n}"]) for n in spec.obs_names]
    sets = [await root.get_child([f"{idx}:Setpoints", f"{idx}:{n}"]) for n in spec.action_names]
    status = await root.get_child(f"{idx}:Status")
    return obs, sets, status


def check_cameras(spec: EmbodimentSpec, cameras: CameraSource | None) -> None:
    """A camera machine needs a camera source, a camera-less one takes none."""
    if spec.cameras and cameras is None:
        raise ValueError(f"embodiment {spec.name!r} has cameras {[c.name for c in spec.cameras]}: give a camera "
                         "source (genba.serve.cameras)")
    if cameras is not None and not spec.cameras:
        raise ValueError(f"embodiment {spec.name!r} has no cameras; drop the camera source")


async def run_cycles(spec: EmbodimentSpec, prefetcher: ChunkPrefetcher, cfg: BridgeConfig,
                     read: Callable, write: Callable, *, cycles: int | None = None, seconds: float | None = None,
                     stop: asyncio.Event | None = None, cameras: CameraSource | None = None) -> BridgeReport:
    """The control cycle against any I/O: ``await read() -> (state, tracking_error)``,
    ``await write(command)``, and on a camera machine ``cameras.read()`` (returns at once: see
    ``genba.serve.cameras.LatestFrames``); one cycle per ``cfg.period_s`` until ``cycles``/``seconds``/
    ``stop``. It never waits on the policy: ``prefetcher`` (started by the caller) plans in the background."""
    check_cameras(spec, cameras)
    shield = SafetyShield(spec, cfg.shield)
    report = BridgeReport()
    t_end = None if seconds is None else time.perf_counter() + seconds
    next_t = time.perf_counter()
    while not ((cycles is not None and report.cycles >= cycles) or (t_end and time.perf_counter() >= t_end)
               or (stop is not None and stop.is_set())):
        t0 = time.perf_counter()
        k = report.cycles
        state, err = await read()
        images = _read_frames(spec, cameras, report) if cameras is not None else None
        t_read = time.perf_counter()
        if cameras is None or images is not None:  # a cycle without its frames is not posted: no plan from it
            prefetcher.post(k, state, images)
        action, age = prefetcher.action(k)
        if action is None:  # nothing valid for this cycle: the shield's no-command step, counted
            report.missed_deadlines += 1
            report.startup_misses += report.missed_deadlines == k + 1  # no action played yet (first plan)
        u = shield.step(action, state, now=t0)
        t_decide = time.perf_counter()  # post + pop + shield
        await write(u)
        t1 = time.perf_counter()
        report.phase_ms.append(((t_read - t0) * 1e3, (t_decide - t_read) * 1e3, (t1 - t_decide) * 1e3))
        report.late += t1 - t0 > cfg.deadline_s
        report.commands.append(u)
        report.tracking_error.append(float(err))
        report.ages.append(-1 if age is None else age)
        report.cycles += 1
        report.cycle_ms.append((t1 - t0) * 1e3)
        next_t += cfg.period_s
        if time.perf_counter() > next_t:
            report.overruns += 1
            next_t = time.perf_counter()
        await asyncio.sleep(max(0.0, next_t - time.perf_counter()))
    report.interventions = dict(shield.counts)
    report.prefetch = prefetcher.stats()
    return report


def _read_frames(spec: EmbodimentSpec, cameras: CameraSource, report: BridgeReport) -> dict | None:
    """This cycle's checked frames, or None (counted): the current chunk then ages out and the shield's
    watchdog turns a lasting camera failure into a controlled stop."""
    try:
        return check_frames(spec, cameras.read())
    except (ValueError, TimeoutError, OSError) as e:
        report.camera_errors += 1
        report.camera_error = f"{type(e).__name__}: {e}"
        return None


async def run_bridge(spec: EmbodimentSpec, act: Callable[[np.ndarray], np.ndarray] | None, cfg: BridgeConfig,
                     *, source: ChunkSource | None = None, cycles: int | None = None,
                     seconds: float | None = None, stop: asyncio.Event | None = None,
                     cameras: CameraSource | None = None) -> BridgeReport:
    """Drive the machine at ``cfg.period_s`` until ``cycles``/``seconds``/``stop``; returns a report.

    The policy is ``source`` (a chunk source from :mod:`genba.serve.prefetch`) or a per-step
    ``act(state) -> action`` (an expert; its answer stays valid for one cycle after its
    observation). Either runs in the prefetch worker thread, never inside a cycle. ``cameras``: the
    frame source of a machine with cameras (:mod:`genba.serve.cameras`).
    """
    if (act is None) == (source is None):
        raise ValueError("run_bridge: give exactly one of act (per step) or source (action chunks)")
    check_cameras(spec, cameras)
    prefetcher = ChunkPrefetcher(source if source is not None else StepSource(act), cfg.prefetch)
    client = await secure_client(cfg.endpoint, cfg.cert_dir, cfg.name)
    with prefetcher:
        async with client:
            obs_nodes, set_nodes, status = await machine_nodes(client, spec)
            err_node = await status.get_child(f"{await client.get_namespace_index(NAMESPACE)}:TrackingError")

            async def read():
                values = np.asarray(await client.read_values(obs_nodes + [err_node]), dtype=np.float64)
                return values[:-1], values[-1]

            async def write(u):
                await client.write_values(set_nodes, [ua.DataValue(ua.Variant(float(x), ua.VariantType.Double))
                                                      for x in u])

            problems = set_priority(cfg.cycle_nice, cfg.cycle_cpus, "bridge cycle", rt=cfg.cycle_rt_priority)
            try:
                report = await run_cycles(spec, prefetcher, cfg, read, write, cycles=cycles, seconds=seconds,
                                          stop=stop, cameras=cameras)
            finally:
                if cfg.cycle_rt_priority is not None and not problems:  # the caller's thread goes back to normal
                    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    report.priority_problems = problems
    return report
