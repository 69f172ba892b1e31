"""The embodiment spec: the one contract every layer reads.

Everything that differs between machines lives here: observation and action
feature names, units, limits, control period and what an action means. Envs
produce it, datasets store it (``meta/genba.json``), the model builds a stem and
a head from it, the shield takes its limits from it, the OPC UA bridge maps its
nodes from it. Nothing downstream may assume one shape.

The spec round-trips through plain JSON (``to_dict`` / ``from_dict``) so a
checkpoint or a dataset alone carries it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


class SpecError(ValueError):
    """An embodiment spec that is inconsistent or malformed."""


@dataclass(frozen=True)
class SafetyLimits:
    """Per-axis limits the safety shield enforces on the action command.

    The action is a vector of ``action_dim`` commands. ``max_rate`` bounds how
    fast each command may change (units per second), ``max_accel`` its second
    derivative and ``max_jerk`` the third. ``position_obs_index`` maps an action
    axis to the observation entry holding the position that axis moves (or -1),
    with ``position_low/high`` the allowed range of that position: the shield
    brakes early so the position stops inside it. ``keepout_boxes`` are
    axis-aligned boxes (lo xyz, hi xyz) the end effector at ``ee_obs_slice`` must
    not enter. Empty tuples mean "no such limit".
    """

    max_rate: tuple[float, ...] = ()
    max_accel: tuple[float, ...] = ()
    max_jerk: tuple[float, ...] = ()
    position_obs_index: tuple[int, ...] = ()
    position_low: tuple[float, ...] = ()
    position_high: tuple[float, ...] = ()
    ee_obs_slice: tuple[int, int] | None = None
    keepout_boxes: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = ()


#: What an observation entry is (``EmbodimentSpec.obs_roles``): the machine's own sensing, a command the
#: task hands the machine (a target, a reference: a controller has it too), or simulator-only ground truth
#: (an object's pose: never fed to a deployable policy, so never recorded in ``pixels`` mode).
OBS_ROLES = ("sensor", "command", "sim")
#: ``state``: the simulator's full observation, as before cameras; ``pixels``: own sensing + commands + cameras.
OBS_MODES = ("state", "pixels")


@dataclass(frozen=True)
class CameraSpec:
    """One camera: stored as the feature ``observation.images.<name>`` (uint8, height x width x 3)."""

    name: str
    height: int
    width: int
    source: str  # the simulator camera it renders (a MuJoCo camera name), or a device id on a real cell

    @property
    def feature(self) -> str:
        return f"observation.images.{self.name}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 3)


@dataclass(frozen=True)
class EmbodimentSpec:
    """Everything the stack needs to know about one machine.

    ``action_meaning`` is free text but conventional values are
    ``"end-effector delta"``, ``"joint velocity"``, ``"phase voltages"`` and
    ``"armature voltage"``. ``obs_roles`` (one of :data:`OBS_ROLES` per
    observation entry; empty = all ``sensor``) and ``cameras`` say what a
    deployable policy may see; ``obs_mode`` says how a dataset was recorded.
    """

    name: str
    robot_type: str
    obs_names: tuple[str, ...]
    obs_units: tuple[str, ...]
    obs_low: tuple[float, ...]
    obs_high: tuple[float, ...]
    action_names: tuple[str, ...]
    action_units: tuple[str, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_period: float
    action_meaning: str
    description: str = ""
    safety: SafetyLimits = field(default_factory=SafetyLimits)
    obs_roles: tuple[str, ...] = ()
    cameras: tuple[CameraSpec, ...] = ()
    obs_mode: str = "state"

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived -------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return len(self.obs_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def fps(self) -> float:
        return 1.0 / self.control_period

    def role(self, i: int) -> str:
        """The role of observation entry ``i`` (``sensor`` when the spec names none)."""
        return self.obs_roles[i] if self.obs_roles else "sensor"

    def camera(self, name: str) -> CameraSpec:
        for c in self.cameras:
            if c.name == name:
                return c
        raise SpecError(f"spec {self.name!r} has no camera {name!r}; its cameras: {[c.name for c in self.cameras]}")

    # ---- checks --------------------------------------------------------
    def validate(self) -> None:
        """Raise SpecError naming the field if any part is inconsistent."""
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise SpecError(f"spec name {self.name!r}: must be a non-empty identifier")
        _same_len(self.name, "obs", self.obs_names, obs_units=self.obs_units, obs_low=self.obs_low, obs_high=self.obs_high)
        _same_len(self.name, "action", self.action_names, action_units=self.action_units,
                  action_low=self.action_low, action_high=self.action_high)
        if self.obs_dim == 0 or self.action_dim == 0:
            raise SpecError(f"spec {self.name!r}: obs_dim and action_dim must be > 0")
        for kind, names in (("obs_names", self.obs_names), ("action_names", self.action_names)):
            if len(set(names)) != len(names):
                raise SpecError(f"spec {self.name!r}: duplicate entries in {kind}")
        _ordered_limits(self.name, "obs", self.obs_names, self.obs_low, self.obs_high, allow_inf=True)
        _ordered_limits(self.name, "action", self.action_names, self.action_low, self.action_high, allow_inf=False)
        if not (math.isfinite(self.control_period) and self.control_period > 0):
            raise SpecError(f"spec {self.name!r}: control_period must be a positive number of seconds, "
                            f"got {self.control_period!r}")
        _check_safety(self)
        _check_views(self)

    # ---- serialization -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbodimentSpec:
        """Build from ``to_dict`` output; unknown or missing keys are errors."""
        if not isinstance(d, dict):
            raise SpecError(f"embodiment spec must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"embodiment spec has unknown keys {sorted(unknown)}")
        kw = dict(d)
        try:
            safety = kw.pop("safety", None) or {}
            safety = SafetyLimits(**_tupleize(safety))
            cams = kw.pop("cameras", None) or []
            if not isinstance(cams, list) or not all(isinstance(c, dict) for c in cams):
                raise SpecError("embodiment spec: cameras must be a list of objects")
            kw["cameras"] = tuple(CameraSpec(**c) for c in cams)
            kw = {k: _tupleize(v) if isinstance(v, list) else v for k, v in kw.items()}
            kw["obs_low"] = tuple(float(x) for x in kw["obs_low"])
            kw["obs_high"] = tuple(float(x) for x in kw["obs_high"])
            return cls(safety=safety, **kw)
        except TypeError as e:  # missing keys
            raise SpecError(f"embodiment spec is malformed: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> EmbodimentSpec:
        return cls.from_dict(json.loads(text))


# ---- comparing specs, and checking data against one ------------------------
def diff_specs(a: EmbodimentSpec, b: EmbodimentSpec) -> list[str]:
    """``"field: value in a vs value in b"`` for every field that differs (empty if equal).

    Sequences of equal length are compared entry by entry (``action_high[1]: 1.0
    vs 2.0``), so a conflict between two datasets names the axis at fault.
    """
    out: list[str] = []
    _diff(out, "", dataclasses.asdict(a), dataclasses.asdict(b))
    return out


def _diff(out: list[str], prefix: str, a: Any, b: Any) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            _diff(out, f"{prefix}{key}" if not prefix else f"{prefix}.{key}", a[key], b.get(key))
    elif (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b) and a
          and not isinstance(a[0], (tuple, list))):
        out.extend(f"{prefix}[{i}]: {x!r} vs {y!r}" for i, (x, y) in enumerate(zip(a, b)) if x != y)
    elif a != b:
        out.append(f"{prefix}: {a!r} vs {b!r}")


#: How far outside a finite limit a recorded value may lie, in spans of the limit range, before it is
#: refused as absurd rather than as a fault the data should show (overshoot, a sensor glitch). A unit error
#: (mm recorded as m: x1000) or a corrupted cell (1e30) lands far beyond; a real excursion does not.
PLAUSIBLE_SPANS = 10.0
#: The bound on a side whose spec limit is infinite (an unbounded velocity, say).
PLAUSIBLE_ABS = 1e6


def plausible_bounds(low, high) -> tuple[Any, Any]:
    """Per-entry ``(lo, hi)`` arrays beyond which a recorded value is absurd (see PLAUSIBLE_SPANS)."""
    import numpy as np  # numpy is a dependency of the data layer; kept out of the spec's import path

    lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
    span = hi - lo
    finite = np.isfinite(span)
    margin = np.where(finite, PLAUSIBLE_SPANS * np.where(finite, span, 0.0), 0.0)
    out_lo = np.where(finite, lo - margin, -PLAUSIBLE_ABS)
    out_hi = np.where(finite, hi + margin, PLAUSIBLE_ABS)
    return out_lo, out_hi


#: Relative slack of the fps check, beyond the integer rounding LeRobot's int ``fps`` forces.
FPS_REL_TOL = 1e-3


def fps_mismatch(fps: Any, control_period: float) -> str | None:
    """Why a dataset's ``fps`` and a spec's ``control_period`` disagree, or None if they agree.

    LeRobot stores ``fps`` as an int, so genba writes ``max(1, round(1 / control_period))``;
    they agree when ``fps`` is that, or ``|fps - 1/control_period|`` is at most
    the rounding (0.5 Hz) or 0.1 % of the rate, whichever is larger.
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        return f"fps {fps!r} is not a positive number"
    rate = 1.0 / control_period
    if fps == max(1, round(rate)) or abs(fps - rate) <= max(0.5, FPS_REL_TOL * rate):
        return None
    return (f"fps {fps:g} (1/fps = {1.0 / fps:.6g} s) disagrees with the spec's control_period "
            f"{control_period:.6g} s ({rate:.6g} Hz)")


# ---- helpers -------------------------------------------------------------
def _same_len(spec: str, kind: str, names: tuple, **others: tuple) -> None:
    for key, seq in others.items():
        if len(seq) != len(names):
            raise SpecError(f"spec {spec!r}: {key} has {len(seq)} entries but {kind}_names has {len(names)}")


def _ordered_limits(spec: str, kind: str, names, low, high, allow_inf: bool) -> None:
    for n, lo, hi in zip(names, low, high):
        if math.isnan(lo) or math.isnan(hi):
            raise SpecError(f"spec {spec!r}: {kind} limit of {n!r} is NaN")
        if not allow_inf and not (math.isfinite(lo) and math.isfinite(hi)):
            raise SpecError(f"spec {spec!r}: {kind} limit of {n!r} must be finite, got [{lo}, {hi}]")
        if not lo < hi:
            raise SpecError(f"spec {spec!r}: {kind} limit of {n!r} has low {lo} >= high {hi}")


def _check_safety(spec: EmbodimentSpec) -> None:
    s = spec.safety
    for key in ("max_rate", "max_accel", "max_jerk", "position_obs_index"):
        seq = getattr(s, key)
        if seq and len(seq) != spec.action_dim:
            raise SpecError(f"spec {spec.name!r}: safety.{key} has {len(seq)} entries, action_dim is {spec.action_dim}")
    for key in ("max_rate", "max_accel", "max_jerk"):
        if any(not (v > 0) for v in getattr(s, key)):
            raise SpecError(f"spec {spec.name!r}: safety.{key} entries must be > 0")
    if s.position_obs_index:
        if len(s.position_low) != spec.action_dim or len(s.position_high) != spec.action_dim:
            raise SpecError(f"spec {spec.name!r}: safety.position_low/high need one entry per action axis")
        for i in s.position_obs_index:
            if not -1 <= i < spec.obs_dim:
                raise SpecError(f"spec {spec.name!r}: safety.position_obs_index {i} outside observation")
    if s.ee_obs_slice is not None:
        a, b = s.ee_obs_slice
        if not (0 <= a < b <= spec.obs_dim and b - a == 3):
            raise SpecError(f"spec {spec.name!r}: safety.ee_obs_slice must select 3 observation entries")


def _check_views(spec: EmbodimentSpec) -> None:
    """Observation roles, cameras and the recording mode (see OBS_ROLES, CameraSpec, OBS_MODES)."""
    if spec.obs_roles:
        if len(spec.obs_roles) != spec.obs_dim:
            raise SpecError(f"spec {spec.name!r}: obs_roles has {len(spec.obs_roles)} entries, obs_dim is "
                            f"{spec.obs_dim}")
        bad = sorted({r for r in spec.obs_roles if r not in OBS_ROLES})
        if bad:
            raise SpecError(f"spec {spec.name!r}: obs_roles {bad} unknown; expected {OBS_ROLES}")
    if spec.obs_mode not in OBS_MODES:
        raise SpecError(f"spec {spec.name!r}: obs_mode {spec.obs_mode!r}; expected one of {OBS_MODES}")
    names = [c.name for c in spec.cameras]
    if len(set(names)) != len(names):
        raise SpecError(f"spec {spec.name!r}: duplicate camera names {names}")
    for c in spec.cameras:
        if not c.name or not c.name.replace("_", "").isalnum():
            raise SpecError(f"spec {spec.name!r}: camera name {c.name!r} must be an identifier")
        if not (isinstance(c.height, int) and isinstance(c.width, int) and 8 <= c.height <= 4096
                and 8 <= c.width <= 4096):
            raise SpecError(f"spec {spec.name!r}: camera {c.name!r} size {c.height}x{c.width}: expected integers "
                            "between 8 and 4096")
    if spec.obs_mode == "pixels":
        if not spec.cameras:
            raise SpecError(f"spec {spec.name!r}: obs_mode 'pixels' needs at least one camera")
        if "sim" in spec.obs_roles:
            raise SpecError(f"spec {spec.name!r}: obs_mode 'pixels' records no simulator-only entries, but "
                            f"{[n for n, r in zip(spec.obs_names, spec.obs_roles) if r == 'sim']} are")


def _tupleize(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tupleize(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tupleize(v) for v in x)
    return x


def _jsonable(x: Any) -> Any:
    """Tuples to lists and infinities to strings JSON accepts everywhere."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and math.isinf(x):
        return x  # json.dumps writes Infinity; Python's json reads it back
    return x
