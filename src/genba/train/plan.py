"""Capacity plan from the model code itself: memory per GPU, FLOPs, time, serving.

    genba plan 1t --cluster h200x8 --nodes 256 --search
    genba plan 1t --cluster h200x8 --nodes 32 --layout dp=32,tp=8,ep=64 --precision fp8

(the verb itself: :mod:`genba.train.plan_cli`)

Parameter counts are never a separate formula: the preset is built on the
``meta`` device and counted per component and per block with
``genba.model.counts.parameter_counts`` / ``component_of``.

Memory model per GPU, for what ``genba.train.parallelize`` runs (a layout is
``world = dp * tp`` GPUs; ``ep`` divides ``dp`` and is not combined with
``tp``; pipeline parallelism is not used, ``pp`` must be 1):

- shard P_gpu = (attention + dense MLP + shared experts) / (tp * dp)   [TP, then FSDP over dp]
               + (router, norms, language, embeddings, stems, heads) / dp  [replicated over tp]
               + routed experts / dp       [EP: E/ep per rank, split efsdp = dp/ep ways]
- weights: fp32 master shard, 4 B * P_gpu; when sharded (world > 1) plus two
  gathered compute copies (this unit and the prefetched next) of one block,
  2 B each (1 B for fp8 all-gathers).
- gradients: fp32 shard 4 B * P_gpu, plus one unsharded block of fp32 grads
  awaiting its reduce-scatter.
- optimizer: AdamW m and v in fp32, 8 B * P_gpu (ZeRO-3/FSDP2 shards all three
  states the same way; the step counters are 4 B per tensor).
- activations: see :func:`block_activation_elems` (elements saved for backward
  per token per block, derived from what autograd keeps in ``genba.model.trunk``);
  with activation checkpointing only each block's input (d per token) is kept
  plus one block recomputed at a time.

FLOPs per trunk token = 6 * N_active_trunk + 12 * n_layers * d_model * T
(forward + backward of every active weight, plus QK^T and AV), plus the
per-sample language encoder (6 * N_lang * L bytes) and head (6 * N_head)
spread over the T tokens of a sample. With tp > 1 the routed experts run on
every TP rank (tokens are replicated over tp): their FLOPs count tp times.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from genba.model.config import ModelConfig
from genba.train.clusters import Cluster

TP_SHARDED = ("attention", "dense_mlp", "shared_experts")
EXPERTS = ("routed_experts",)
PRECISIONS = ("fp32", "bf16", "fp8")
EP_IMBALANCE = 1.25  # routed-token peak over mean per EP rank planned for (capacity factor)


# ---- the model, counted from its code ---------------------------------------------------
@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs from a built (meta) model: counts per component and per block."""

    preset: str
    cfg: ModelConfig
    counts: dict  # parameter_counts(): {component: {"total", "active"}} + "total"
    block: dict  # largest trunk block: {"tp": n, "rep": n, "experts": n}
    n_tensors: int  # parameter tensors (AdamW keeps one step counter each)

    @property
    def total(self) -> int:
        return self.counts["total"]["total"]

    @property
    def active(self) -> int:
        return self.counts["total"]["active"]

    def group(self, comps: tuple[str, ...], key: str = "total") -> int:
        return sum(self.counts[c][key] for c in comps)

    @property
    def replicated(self) -> int:
        return self.total - self.group(TP_SHARDED) - self.group(EXPERTS)


@functools.lru_cache(maxsize=8)
def describe(preset: str) -> ModelFacts:
    """Build ``preset`` on the meta device with the nominal embodiments and count it (the same
    code ``genba model info`` runs); cached, a 1T build takes seconds."""
    from genba.model.counts import build_meta, nominal_specs

    return facts_of(build_meta(preset, nominal_specs()), preset)


def facts_of(model, preset: str = "custom") -> ModelFacts:
    """Counts of an already built model (meta or real)."""
    from genba.model.counts import component_of, parameter_counts

    blocks: dict[int, dict[str, int]] = {}
    for name, p in model.named_parameters():
        if not name.startswith("trunk.layers."):
            continue
        comp = component_of(name, model)
        kind = "tp" if comp in TP_SHARDED else "experts" if comp in EXPERTS else "rep"
        b = blocks.setdefault(int(name.split(".")[2]), {"tp": 0, "rep": 0, "experts": 0})
        b[kind] += p.numel()
    largest = max(blocks.values(), key=lambda b: sum(b.values()))
    return ModelFacts(preset, model.cfg, parameter_counts(model), largest, len(list(model.parameters())))


# ---- layouts ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    dp: int = 1
    tp: int = 1
    ep: int = 1
    pp: int = 1
    ac: bool = False  # activation checkpointing per trunk block

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    def __str__(self) -> str:
        return f"dp={self.dp},tp={self.tp},ep={self.ep},pp={self.pp}" + (",ac" if self.ac else "")


def parse_layout(text: str) -> Layout:
    """``dp=16,tp=8,ep=64[,pp=1][,ac]`` -> Layout; bad keys or values raise ValueError naming them."""
    kw: dict = {}
    for part in filter(None, (s.strip() for s in text.split(","))):
        if part == "ac":
            kw["ac"] = True
            continue
        key, _, val = part.partition("=")
        if key not in ("dp", "tp", "ep", "pp") or not val.isdigit() or int(val) < 1:
            raise ValueError(f"--layout part {part!r}: expected dp=N, tp=N, ep=N, pp=N (N >= 1) or ac")
        kw[key] = int(val)
    return Layout(**kw)


def check_layout(facts: ModelFacts, lay: Layout, cluster: Cluster | None) -> None:
    """Raise ValueError naming what a layout cannot do with this model and node."""
    cfg = facts.cfg
    if lay.pp != 1:
        raise ValueError("pp must be 1: the trunk runs ~20 tokens per sample, too few to fill a pipeline "
                         "(use ep and FSDP instead)")
    if cfg.n_heads % lay.tp or cfg.n_kv_heads % lay.tp:
        raise ValueError(f"tp={lay.tp} must divide n_heads ({cfg.n_heads}) and n_kv_heads ({cfg.n_kv_heads})")
    if cluster is not None and lay.tp > cluster.gpus_per_node:
        raise ValueError(f"tp={lay.tp} exceeds the {cluster.gpus_per_node} GPUs of one NVLink node")
    if lay.ep > 1 and (cfg.n_experts % lay.ep or lay.dp % lay.ep or lay.tp > 1):
        raise ValueError(f"ep={lay.ep} must divide n_experts ({cfg.n_experts}) and dp ({lay.dp}), "
                         "and is not combined with tp > 1")


# ---- memory ----------------------------------------------------------------------------------
def block_activation_elems(d: int, heads: int, kv_heads: int, hidden: int, *, tp: int = 1) -> float:
    """Elements autograd saves per token for one dense block (attention + SwiGLU), fp32/bf16 alike.

    attention: norm input and its rstd, normed x (shared by wq/wkv), q and k/v
    projections, rotated q and k, SDPA output and log-sum-exp, the reshaped
    output fed to wo: 7 d + 3 kv_dim + heads + 1 (heads/kv/q-sized terms divide by tp).
    SwiGLU: norm input and normed x (2 d + 1), gate, silu(gate), up, product (4 hidden).
    """
    hd = d // heads
    attn = 2 * d + 1 + (4 * d + 3 * kv_heads * hd + heads) / tp + d
    mlp = 2 * d + 1 + 4 * hidden / tp
    return attn + mlp


def moe_ffn_elems(cfg: ModelConfig, *, tp: int = 1, imbalance: float = 1.0) -> float:
    """Extra elements per token of an MoE feed-forward over a dense one's ``4 * hidden``.

    Router logits and scores (2 E), per routed slot the gathered input, the
    expert output and gated output (3 d) plus 4 expert_hidden, shared experts
    as a SwiGLU (4 * hidden_shared / tp), and small index/gate tensors (~4 k).
    """
    k, h = cfg.top_k, cfg.expert_hidden
    routed = k * (3 * cfg.d_model + 4 * h) * imbalance
    return 2 * cfg.n_experts + routed + 4 * h * cfg.n_shared_experts / tp + 4 * k


def activation_bytes(facts: ModelFacts, tokens: float, *, seq_len: int, abytes: int, lay: Layout) -> float:
    """Bytes saved for backward on one GPU for ``tokens`` trunk tokens (``tokens / seq_len`` samples)."""
    cfg = facts.cfg
    samples = tokens / seq_len
    imb = EP_IMBALANCE if lay.ep > 1 else 1.0
    dense = block_activation_elems(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.mlp_hidden, tp=lay.tp)
    moe = dense - 4 * cfg.mlp_hidden / lay.tp + (moe_ffn_elems(cfg, tp=lay.tp, imbalance=imb) if cfg.n_experts else 0)
    n_moe = len(cfg.moe_layers)
    per_block = [moe] * n_moe + [dense] * (cfg.n_layers - n_moe)
    if lay.ac:  # keep each block's input; recompute one block (the largest) during backward
        trunk = cfg.n_layers * cfg.d_model + max(per_block)
    else:
        trunk = sum(per_block)
    # language encoder: same block over L byte tokens per sample (never checkpointed)
    L, w = cfg.max_lang_len, cfg.lang_dim
    lang = L * (cfg.lang_layers * block_activation_elems(w, cfg.lang_heads, cfg.lang_heads, 2 * w) + 2 * w)
    # stems, token assembly, final norm: a few d per token
    edges = 4 * cfg.d_model
    return abytes * (tokens * (trunk + edges) + samples * lang)


@dataclass(frozen=True)
class Memory:
    weights: float
    grads: float
    optimizer: float
    activations: float
    activations_ac: float  # the same micro-batch with activation checkpointing
    shard_params: float

    @property
    def states(self) -> float:
        return self.weights + self.grads + self.optimizer

    def total(self, ac: bool) -> float:
        return self.states + (self.activations_ac if ac else self.activations)


def memory(facts: ModelFacts, lay: Layout, *, precision: str, micro_tokens: float, seq_len: int) -> Memory:
    """Per-GPU bytes of one layout (see module docstring for the formulas)."""
    shard = (facts.group(TP_SHARDED) / (lay.tp * lay.dp) + facts.replicated / lay.dp
             + facts.group(EXPERTS) / lay.dp)
    sharded = lay.world > 1
    cbytes = {"fp32": 4, "bf16": 2, "fp8": 1}[precision]
    abytes = 4 if precision == "fp32" else 2
    b = facts.block
    unit = b["tp"] / lay.tp + b["rep"] + b["experts"] / lay.ep  # one block, gathered over FSDP
    tensors = facts.n_tensors  # step counters: every rank keeps one per (sharded) tensor
    weights = 4 * shard + (2 * unit * cbytes if sharded else 0)
    grads = 4 * shard + (4 * unit if sharded else 0)
    optim = 8 * shard + 4 * tensors
    act = activation_bytes(facts, micro_tokens, seq_len=seq_len, abytes=abytes, lay=replace(lay, ac=False))
    act_ac = activation_bytes(facts, micro_tokens, seq_len=seq_len, abytes=abytes, lay=replace(lay, ac=True))
    return Memory(weights, grads, optim, act, act_ac, shard)


# ---- compute and time ---------------------------------------------------------------------------
def flops_per_token(facts: ModelFacts, seq_len: int) -> dict[str, float]:
    """Training FLOPs per trunk token: {"dense": 6 N_active_trunk, "attention": 12 L d T, "per_sample": .., "total"}."""
    cfg, c = facts.cfg, facts.counts
    trunk = sum(c[k]["active"] for k in ("attention", "dense_mlp", "routed_experts", "shared_experts", "router", "norms"))
    per_sample = 6 * (c["language_encoder"]["active"] * cfg.max_lang_len + c["stems_heads"]["active"]
                      + c["embeddings"]["active"])
    out = {"dense": 6.0 * trunk, "attention": 12.0 * cfg.n_layers * cfg.d_model * seq_len,
           "per_sample": per_sample / seq_len}
    out["total"] = sum(out.values())
    return out


def comm_seconds(facts: ModelFacts, lay: Layout, cluster: Cluster, step_tokens_gpu: float, cbytes: int,
                 accum: int = 1) -> float:
    """Per-GPU communication per optimizer step (bytes / bandwidth), assumed overlappable with compute.

    FSDP: all-gathers in forward and backward of every micro-step (``accum``) and
    one reduce-scatter of grads, of the GPU's unsharded groups, over inter-node
    links when dp spans nodes. EP: token
    dispatch + combine, forward and backward (4 all-to-alls of k * d per token).
    TP: 4 all-reduces of d per token per block (2 fwd, 2 bwd), on NVLink.
    """
    cfg = facts.cfg
    fabric = cluster.internode_bw if lay.world > cluster.gpus_per_node else cluster.nvlink_bw
    dense_unsharded = facts.group(TP_SHARDED) / lay.tp + facts.replicated
    passes = 2 * accum + 1
    fsdp = 0.0 if lay.world == 1 else passes * dense_unsharded * cbytes / fabric
    efsdp = lay.dp // lay.ep
    if efsdp > 1:
        fsdp += passes * facts.group(EXPERTS) / lay.ep * cbytes / fabric
    a2a = 0.0
    if lay.ep > 1 and cfg.n_experts:
        ep_bw = cluster.nvlink_bw if lay.ep <= cluster.gpus_per_node else cluster.internode_bw
        a2a = 4 * len(cfg.moe_layers) * step_tokens_gpu * cfg.top_k * cfg.d_model * 2 * (1 - 1 / lay.ep) / ep_bw
    tp = 0.0 if lay.tp == 1 else 4 * cfg.n_layers * step_tokens_gpu * cfg.d_model * 2 * 2 * (lay.tp - 1) / lay.tp / cluster.nvlink_bw
    return fsdp + a2a + tp


@dataclass(frozen=True)
class Plan:
    layout: Layout
    mem: Memory
    fits: bool
    flops: dict
    step_s: float
    compute_s: float
    comm_s: float
    days: float
    gpu_hours: float
    micro_tokens: float
    accum: int

    @property
    def per_gpu(self) -> float:
        return self.mem.total(self.layout.ac)


@dataclass(frozen=True)
class Budget:
    cluster: Cluster
    nodes: int
    seq_len: int
    tokens: float = 15e12
    mfu: float = 0.4
    precision: str = "bf16"
    global_tokens: float = 16 * 2**20  # tokens per optimizer step
    micro_tokens: float = 8192  # tokens per GPU per micro-step (what activations hold)


def plan_layout(facts: ModelFacts, lay: Layout, b: Budget) -> Plan:
    """Memory, fit, step time and total time of one layout. Activation checkpointing recomputes
    the forward: 8 instead of 6 FLOPs per parameter and token."""
    check_layout(facts, lay, b.cluster)
    world = b.nodes * b.cluster.gpus_per_node
    if lay.world != world:
        raise ValueError(f"layout {lay} uses {lay.world} GPUs, but {b.nodes} nodes of {b.cluster.gpus_per_node} "
                         f"have {world}")
    mem = memory(facts, lay, precision=b.precision, micro_tokens=b.micro_tokens, seq_len=b.seq_len)
    flops = flops_per_token(facts, b.seq_len)
    # every GPU of a TP group sees the same tokens: the step's tokens split over dp only
    step_tokens_gpu = b.global_tokens / lay.dp
    accum = max(1, math.ceil(step_tokens_gpu / b.micro_tokens))
    peak = b.cluster.peak_flops("bf16" if b.precision == "fp32" else b.precision)
    routed = 6.0 * facts.counts["routed_experts"]["active"] * (lay.tp - 1)  # run on every TP rank
    recompute = 8 / 6 if lay.ac else 1.0
    compute = (flops["total"] + routed) * recompute * b.global_tokens / (world * peak * b.mfu)
    cbytes = 1 if b.precision == "fp8" else 2
    comm = comm_seconds(facts, lay, b.cluster, step_tokens_gpu, cbytes, accum)
    step = max(compute, comm)
    days = b.tokens / b.global_tokens * step / 86400
    return Plan(lay, mem, mem.total(lay.ac) <= b.cluster.usable_bytes, flops, step, compute, comm, days,
                days * 24 * world, b.micro_tokens, accum)


def search(facts: ModelFacts, b: Budget) -> list[Plan]:
    """Every valid layout on ``b.nodes`` nodes (tp in 1, 2, 4, 8 within a node, ep dividing experts,
    dp the rest, with and without activation checkpointing, micro-steps of 1k-8k tokens per GPU),
    cheapest first (days, then memory)."""
    world = b.nodes * b.cluster.gpus_per_node
    eps = [e for e in range(1, world + 1) if world % e == 0 and (facts.cfg.n_experts % e == 0 if facts.cfg.n_experts else e == 1)]
    plans = []
    for tp in (1, 2, 4, 8):
        if tp > b.cluster.gpus_per_node or world % tp:
            continue
        for ep in eps:
            for ac in (False, True):
                for micro in sorted({1024, 2048, 4096, 8192, b.micro_tokens}):
                    try:
                        plans.append(plan_layout(facts, Layout(dp=world // tp, tp=tp, ep=ep, ac=ac),
                                                 replace(b, micro_tokens=micro)))
                    except ValueError:
                        continue
    return sorted(plans, key=lambda p: (not p.fits, p.days, p.per_gpu))


# ---- serving --------------------------------------------------------------------------------------
NVLINK_LATENCY_S = 10e-6  # per collective inside a node (NCCL small-message latency, order of magnitude)
IB_LATENCY_S = 25e-6  # per collective across nodes


@dataclass(frozen=True)
class Serving:
    precision: str
    gpus: int
    weight_bytes: float
    per_token_s: float  # one token: active bytes over the GPUs' HBM, plus collectives
    per_step_s: float  # one control step of T tokens (distinct experts read once)
    comm_s: float


def serving(facts: ModelFacts, cluster: Cluster, precision: str, seq_len: int) -> Serving:
    """GPUs to hold the weights (10% kept for activations and workspace) and memory-bound latency.

    Latency = bytes that must stream from HBM / (GPUs * HBM bandwidth), assuming
    weights spread evenly (TP for dense, EP for experts), plus two collectives
    per block (TP all-reduce or EP dispatch/combine) at a fixed latency each.
    A control step of T tokens reads the union of the experts its tokens chose:
    E * (1 - (1 - k/E)^T) per MoE layer.
    """
    cfg = facts.cfg
    wb = {"bf16": 2, "fp8": 1}[precision]
    weight_bytes = facts.total * wb
    gpus = 1  # 1, 2, 4, 8 in a node, then whole nodes
    while weight_bytes / gpus > 0.9 * cluster.usable_bytes:
        gpus = gpus * 2 if gpus < cluster.gpus_per_node else gpus + cluster.gpus_per_node
    bw = gpus * cluster.hbm_bw
    latency = NVLINK_LATENCY_S if gpus <= cluster.gpus_per_node else IB_LATENCY_S
    comm = 0.0 if gpus == 1 else 2 * cfg.n_layers * latency
    per_token = facts.active * wb / bw + comm
    routed_active = facts.counts["routed_experts"]["active"]
    step_bytes = (facts.active - routed_active) * wb
    if cfg.n_experts:
        expert = facts.counts["routed_experts"]["total"] / (cfg.n_experts * len(cfg.moe_layers))
        distinct = cfg.n_experts * (1 - (1 - cfg.top_k / cfg.n_experts) ** seq_len)
        step_bytes += len(cfg.moe_layers) * distinct * expert * wb
    return Serving(precision, gpus, weight_bytes, per_token, step_bytes / bw + comm, comm)


WHY_ON_PREM = """\
Why real-time control runs a distilled small model on the machine:
- A control loop at 100 Hz - 1 kHz has 10 ms - 1 ms per cycle for sensing, inference, the safety
  shield and actuation. The flagship's forward pass alone is bounded below by streaming its active
  weights from HBM (figures above), before any batching, queueing or network.
- A data-center round trip from a factory is 1-30 ms with jitter; a missed cycle is a fault on a drive
  or an arm, so the loop cannot depend on a WAN link or a shared GPU queue.
- The flagship is the teacher: it plans, labels and distils. A small student (`small`, ~2.5M
  parameters; ~4 ms per batch-1 call on one CPU core, per machine-notes) runs next to the PLC,
  behind the safety shield, and is re-distilled when the flagship improves."""


# ---- validation helpers (what PyTorch really allocates) ------------------------------------------
def measure_states(model, optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state actually held (unique storages)."""
    def total(tensors) -> int:
        seen: dict[int, int] = {}
        for t in tensors:
            if t is not None and hasattr(t, "untyped_storage"):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if hasattr(v, "untyped_storage")]
    return {"weights": total(params), "grads": total(p.grad for p in params), "optimizer": total(states)}


def measure_activations(model, fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (unique storages,
    parameters and buffers excluded), via ``torch.autograd.graph.saved_tensors_hooks``."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own and t.device.type != "meta":
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out
