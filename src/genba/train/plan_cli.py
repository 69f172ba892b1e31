"""The ``genba plan`` verb: prints :mod:`genba.train.plan`'s capacity plans as tables.

    genba plan 1t --cluster h200x8 --nodes 256 --search
    genba plan 1t --cluster h200x8 --nodes 32 --layout dp=32,tp=8,ep=64 --precision fp8

The arithmetic lives in :mod:`genba.train.plan`; this module only parses the
command line and formats what that module computes.
"""

from __future__ import annotations

import argparse

from genba.model.config import get_preset
from genba.train.clusters import CLUSTERS, GIB, Cluster, get_cluster
from genba.train.plan import (
    EXPERTS,
    TP_SHARDED,
    WHY_ON_PREM,
    Budget,
    ModelFacts,
    Plan,
    describe,
    flops_per_token,
    parse_layout,
    plan_layout,
    search,
    serving,
)


def _gib(x: float) -> str:
    return f"{x / GIB:,.1f}"


def _print_plans(facts: ModelFacts, plans: list[Plan], b: Budget, title: str, limit: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("layout", "micro", "weights", "grads", "optim", "act", "act (AC)", "total GiB", "fits",
                "step s", "comm s", "days", "GPU-h"):
        table.add_column(col, justify="left" if col == "layout" else "right")
    for p in plans[:limit]:
        m = p.mem
        table.add_row(str(p.layout), f"{p.micro_tokens:,.0f}x{p.accum}", _gib(m.weights), _gib(m.grads), _gib(m.optimizer), _gib(m.activations),
                      _gib(m.activations_ac), _gib(p.per_gpu), "yes" if p.fits else "NO", f"{p.step_s:.2f}",
                      f"{p.comm_s:.2f}", f"{p.days:,.1f}", f"{p.gpu_hours:,.0f}",
                      style="bold" if p is plans[0] and p.fits else None)
    Console(width=160).print(table)


def _print_header(facts: ModelFacts, b: Budget) -> None:
    f = flops_per_token(facts, b.seq_len)
    c = b.cluster
    print(f"model {facts.preset!r}: {facts.total:,} parameters ({facts.total / 1e12:.3f}T), "
          f"{facts.active:,} active per token ({facts.active / 1e9:.2f}B) [counted on the meta device]")
    print(f"  routed experts {facts.group(EXPERTS):,} | TP-sharded (attention, dense MLP, shared experts) "
          f"{facts.group(TP_SHARDED):,} | replicated over TP {facts.replicated:,}")
    print(f"cluster {c.name}: {b.nodes} nodes x {c.gpus_per_node} {c.gpu} = {b.nodes * c.gpus_per_node} GPUs, "
          f"{c.hbm_bytes / 1e9:.0f} GB HBM ({_gib(c.usable_bytes)} GiB planned, {_gib(c.reserve_bytes)} GiB reserved), "
          f"{c.peak_flops('bf16' if b.precision == 'fp32' else b.precision) / 1e12:.0f} TFLOP/s {b.precision} dense")
    print(f"FLOPs per trunk token (T={b.seq_len}): 6*N_active {f['dense'] / 1e9:.1f} G + attention 12*L*d*T "
          f"{f['attention'] / 1e9:.2f} G + per-sample (language, head) {f['per_sample'] / 1e9:.2f} G = "
          f"{f['total'] / 1e9:.1f} GFLOP")
    print(f"budget: {b.tokens:.3g} tokens, {b.global_tokens:,.0f} tokens/step, {b.micro_tokens:,.0f} tokens per GPU "
          f"micro-step, MFU {b.mfu:.0%}; memory: fp32 master + fp32 grads + AdamW m,v fp32, all sharded "
          f"(FSDP2/ZeRO-3) over dp, experts over ep x (world/ep)")


def _print_serving(facts: ModelFacts, c: Cluster, seq_len: int) -> None:
    print(f"\nServing {facts.preset!r} on {c.name} ({c.hbm_bw / 1e12:.2f} TB/s HBM per GPU):")
    for prec in ("bf16", "fp8"):
        s = serving(facts, c, prec, seq_len)
        print(f"  {prec}: {s.weight_bytes / 1e12:.2f} TB of weights -> {s.gpus} GPUs; per token >= "
              f"{s.per_token_s * 1e3:.2f} ms; per control step of {seq_len} tokens >= {s.per_step_s * 1e3:.2f} ms "
              f"(collectives {s.comm_s * 1e3:.2f} ms)")
    print(WHY_ON_PREM)


def cmd_plan(args: argparse.Namespace) -> int:
    from genba.errors import CLIError
    from genba.model.config import PresetError

    try:
        get_preset(args.preset)
        cluster = get_cluster(args.cluster)
    except (PresetError, KeyError) as e:
        raise CLIError(str(e)) from None
    if args.nodes < 1 or not 0 < args.mfu <= 1 or args.tokens <= 0:
        raise CLIError("--nodes must be >= 1, --mfu in (0, 1], --tokens > 0")
    facts = describe(args.preset)
    seq = args.seq_len or facts.cfg.tokens_per_step
    b = Budget(cluster, args.nodes, seq, args.tokens, args.mfu, args.precision, args.global_tokens, args.micro_tokens)
    _print_header(facts, b)
    world = args.nodes * cluster.gpus_per_node
    try:
        if args.layout:
            plans = [plan_layout(facts, parse_layout(args.layout), b)]
            _print_plans(facts, plans, b, f"layout {args.layout}", 1)
        if args.search or not args.layout:
            plans = search(facts, b)
            fitting = [p for p in plans if p.fits]
            _print_plans(facts, fitting or plans, b, f"search over {len(plans)} layouts on {world} GPUs "
                         f"({len(fitting)} fit); cheapest first", args.top)
            if fitting:
                p = fitting[0]
                print(f"cheapest that fits: {p.layout} -> {_gib(p.per_gpu)} GiB/GPU, {p.step_s:.2f} s/step "
                      f"(grad accumulation {p.accum} x {p.micro_tokens:,.0f} tokens), {p.days:,.1f} days, "
                      f"{p.gpu_hours:,.0f} GPU-hours")
            else:
                print(f"no layout fits on {args.nodes} nodes: add nodes or use activation checkpointing/fp8")
    except ValueError as e:
        raise CLIError(str(e)) from None
    _print_serving(facts, cluster, seq)
    return 0


def register(subparsers) -> None:
    """Add ``genba plan``."""
    p = subparsers.add_parser("plan", help="capacity plan: memory per GPU, FLOPs, training days, serving GPUs")
    p.add_argument("preset", help="model preset (e.g. 1t, moe-small)")
    p.add_argument("--cluster", default="h200x8", help=f"node preset: {', '.join(CLUSTERS)}")
    p.add_argument("--nodes", type=int, default=256, help="number of nodes")
    p.add_argument("--layout", default=None, help="dp=N,tp=N,ep=N[,pp=1][,ac] (dp*tp = GPUs)")
    p.add_argument("--seq-len", type=int, default=None, help="trunk tokens per sample (default: the preset's)")
    p.add_argument("--tokens", type=float, default=15e12, help="training token budget")
    p.add_argument("--global-tokens", type=float, default=16 * 2**20, help="tokens per optimizer step")
    p.add_argument("--micro-tokens", type=float, default=8192, help="tokens per GPU per micro-step")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization assumed")
    p.add_argument("--precision", choices=("bf16", "fp8"), default="bf16", help="compute precision")
    p.add_argument("--search", action="store_true", help="enumerate layouts and report the cheapest that fits")
    p.add_argument("--top", type=int, default=12, help="rows of the search table")
    p.set_defaults(func=cmd_plan)
