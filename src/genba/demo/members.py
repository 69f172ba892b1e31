"""The consortium the demo plays: its members and the demonstrations each contributes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemberPlan:
    """One consortium member and the demonstrations it contributes."""

    org: str
    name: str
    tasks: str  # a genba.envs selection
    classification: str
    noise: str = ""  # DART levels of its demonstrations, as `genba collect --noise` takes them ("" = plain)


# The Jaco arm's demonstrations are collected with DART noise: measured jaco-only (`small`, 7 min,
# 30 episodes), push 0.43 -> 0.73 and reach 0.87 -> 0.97. The same level on all of MT10 lost peg-insert
# (0.67 -> 0.17), so of MT10 only reach-v3 takes it: its clone stopped a few mm short of the goal and
# drifted off the expert's straight line, where no plain demonstration shows a correction (20-minute
# runs: reach 0.86 and 0.84 plain, 0.98 and 0.94 with noise). The drives' speed tasks take a small level
# (0.01): it excites the inner current loop the speed expert closes (its gain is otherwise
# unidentifiable from demonstrations that track the demand). Measured drives-only (`small`, 7 min, 30
# episodes), plain -> noisy speed tasks: PMSM speed success 0.90 -> 1.00, DC speed 0.93 -> 0.93; 0.03 on
# DC speed tracked tighter but tripped more (0.72 in a 20-minute run). The current tasks stay plain.
MEMBERS = (
    MemberPlan("automaker", "Automaker (Sawyer-arm demonstrations)", "mt10", "confidential",
               noise="metaworld/reach-v3=0.2"),
    MemberPlan("steelworks", "Steelworks (electric-drive telemetry)", "drives", "restricted",
               noise="drive/pmsm-speed=0.01,drive/dc-speed=0.01"),
    MemberPlan("electronics", "Electronics maker (joint-space arm demonstrations)", "arms", "internal",
               noise="arms=0.2"),
)
