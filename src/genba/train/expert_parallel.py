"""Expert parallelism: routed experts placed across ranks, tokens moved by all-to-all.

Mesh: ``world = efsdp * ep`` ranks as a 2-D ``DeviceMesh(("efsdp", "ep"))``.
Each MoE layer's stacked experts ``[E, d, h]`` become DTensors placed
``(Shard(1), Shard(0))``: dim 0 (which expert) split over ``ep``, so a rank
owns ``E / ep`` experts; dim 1 split over ``efsdp`` (ZeRO-3 for the experts,
gathered for the layer's compute and reduce-scattered in backward). The dense
rest of the model is FSDP2-sharded over all ``world`` ranks as usual, with the
expert tensors passed as ``ignored_params``. At 1T scale this is the only way
to shard: FSDP2 alone cannot split 384 experts over thousands of ranks.

Token flow in ``ep_dispatch`` (replaces ``MoE.dispatch``; routing, the shared
experts and the balance loss are the model's own code):

1. slots sorted by expert id; since experts are contiguous per rank, that is
   also grouped by destination rank;
2. per-expert counts exchanged (``all_to_all_single``), then the token rows
   (``all_to_all_single`` with uneven splits, autograd-aware);
3. received rows regrouped by local expert, the experts run on them, rows put
   back in arrival order;
4. the reverse all-to-all returns outputs; gates weight them; ``index_add``
   sums each token's k slots, exactly as the single-device code does.

Gradient scale: an expert's gradient sums the contributions of every rank's
loss (each a mean over its own samples), while FSDP averages the dense
gradients over ranks; the expert gradients are therefore scaled by
``1 / world`` (the efsdp reduce-scatter sums, it does not average).
"""

from __future__ import annotations

import types

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from genba.model.trunk import MoE

EXPERT_WEIGHTS = ("w_gate", "w_up", "w_down")


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with uneven splits; backward runs the reverse exchange."""

    @staticmethod
    def forward(ctx, x, out_splits: list[int], in_splits: list[int], group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def local_experts(moe: MoE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's experts ``[E/ep, d, h]``: gathered over efsdp, gradient reduce-scattered back."""
    out = []
    for name in EXPERT_WEIGHTS:
        w = getattr(moe, name)
        if isinstance(w, DTensor):
            # the gradient of the gathered copy differs per efsdp rank (own tokens): Partial, so the
            # backward reduce-scatters (sums) it into the Shard(1) storage
            w = w.redistribute(placements=[Replicate(), Shard(0)]).to_local(grad_placements=[Partial(), Shard(0)])
        out.append(_ScaleGrad.apply(w, moe.ep_grad_scale))
    return tuple(out)


def _regroup_index(recv: torch.Tensor) -> torch.Tensor:
    """Rows arrive as [source rank][local expert]; the index that orders them [local expert][source rank]."""
    seg = recv.flatten()  # (ep * n_local,) in arrival order
    starts = (torch.cumsum(seg, 0) - seg).view_as(recv)
    new_seg, new_starts = recv.t().flatten(), starts.t().flatten()  # segments in [expert][source] order
    offset = torch.cumsum(new_seg, 0) - new_seg
    within = torch.arange(int(seg.sum())) - offset.repeat_interleave(new_seg)
    return new_starts.repeat_interleave(new_seg) + within


def ep_dispatch(self: MoE, x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
    """``MoE.dispatch`` across the ep group (see the module docstring for the steps)."""
    group, ep = self.ep_group, self.ep_size
    n_local = self.n_experts // ep
    order = idx.flatten().argsort(stable=True)  # slots grouped by expert, hence by owner rank
    token_of_slot = order // self.top_k
    xs = x[token_of_slot]  # (N*k, d)
    recv = torch.empty_like(counts)
    dist.all_to_all_single(recv, counts.contiguous(), group=group)  # [src rank][local expert] counts
    recv = recv.view(ep, n_local)
    in_splits = counts.view(ep, n_local).sum(1).tolist()
    out_splits = recv.sum(1).tolist()
    xr = _AllToAll.apply(xs, out_splits, in_splits, group)  # (M, d) rows for our experts
    perm = _regroup_index(recv).to(x.device)
    w_gate, w_up, w_down = local_experts(self)
    outs = []
    for e, xe in enumerate(xr[perm].split(recv.sum(0).tolist())):
        # every local expert runs, even on 0 rows, so each rank's expert weights always get a gradient
        outs.append((F.silu(xe @ w_gate[e]) * (xe @ w_up[e])) @ w_down[e])
    y = torch.empty_like(xr).index_copy(0, perm, torch.cat(outs))  # back to arrival order
    ys = _AllToAll.apply(y, in_splits, out_splits, group)  # (N*k, d) in our slot order
    ys = ys * gates.flatten()[order].unsqueeze(-1).to(x.dtype)
    return torch.zeros_like(x).index_add_(0, token_of_slot, ys)


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def expert_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The stacked routed-expert tensors (what FSDP must leave to expert parallelism)."""
    return {getattr(m, n) for m in moe_layers(model) for n in EXPERT_WEIGHTS}


def apply_ep(model: nn.Module, mesh: DeviceMesh) -> set[nn.Parameter]:
    """Shard every MoE layer's experts over ``mesh`` (2-D ``("efsdp", "ep")``) and route tokens
    with all-to-all. Call before FSDP; pass the returned parameters as FSDP's ``ignored_params``.

    Every rank must hold the same full weights on entry (the trainer initializes them
    from one seed), so placing is a local slice without communication.
    """
    efsdp, ep = mesh.size(0), mesh.size(1)
    layers = moe_layers(model)
    if not layers:
        raise ValueError("expert parallelism needs an MoE model (n_experts > 0)")
    E, d = layers[0].n_experts, model.cfg.d_model
    if E % ep or d % efsdp or model.cfg.expert_hidden % efsdp:
        raise ValueError(f"ep={ep} must divide n_experts ({E}) and efsdp={efsdp} must divide d_model ({d}) "
                         f"and expert_hidden ({model.cfg.expert_hidden})")
    placements = [Shard(1), Shard(0)]
    for moe in layers:
        for name in EXPERT_WEIGHTS:
            full = getattr(moe, name).detach()
            local = _local_slice(full, mesh, placements)
            dt = DTensor.from_local(local, mesh, placements, run_check=False, shape=full.shape,
                                    stride=full.stride())
            setattr(moe, name, nn.Parameter(dt))
        moe.ep_group, moe.ep_size = mesh.get_group("ep"), ep
        moe.ep_grad_scale = 1.0 / (ep * efsdp)
        moe.dispatch = types.MethodType(ep_dispatch, moe)
    return expert_parameters(model)


def _local_slice(full: torch.Tensor, mesh: DeviceMesh, placements) -> torch.Tensor:
    """This rank's block of ``full`` under ``placements`` (even splits, checked by the caller)."""
    out = full
    for mesh_dim, p in enumerate(placements):
        n, r = mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim)
        out = out.chunk(n, dim=p.dim)[r]
    return out.contiguous().clone()


def grad_norm_(params, max_norm: float) -> float:
    """Clip gradients to a global L2 norm over any mix of plain tensors and DTensors on any meshes.

    ``clip_grad_norm_`` stacks per-parameter norms and so needs them all on one
    mesh; with FSDP (dp mesh), TP (tp mesh) and EP (efsdp x ep mesh) they are
    not. Each rank sums the squares of its local shards, divided by how many
    ranks hold a replica of them; one all-reduce over the world adds them up.
    A DTensor on a mesh smaller than the world is reduced on its own mesh.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    local = torch.zeros((), dtype=torch.float64)
    sub = torch.zeros((), dtype=torch.float64)  # already reduced (own mesh) or replicated everywhere
    grads = [p.grad for p in params if p.grad is not None]
    for g in grads:
        if isinstance(g, DTensor):
            if g.device_mesh.size() == world and not any(pl.is_partial() for pl in g.placements):
                replicas = 1  # (FSDP2 + TP grads are _StridedShard on dp: a shard, not a replica)
                for dim, pl in enumerate(g.placements):
                    replicas *= g.device_mesh.size(dim) if pl.is_replicate() else 1
                local += g.to_local().double().square().sum() / replicas
            else:
                sub += torch.linalg.vector_norm(g).full_tensor().double() ** 2
        else:
            sub += g.double().square().sum()
    if world > 1:
        dist.all_reduce(local)
    total = float((local + sub).sqrt())
    if max_norm > 0 and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g.mul_(scale)
    return total


# ---- the meshes of a layout (composed with FSDP2 in genba.train.parallelize) ---------------------
class ScaleMeshes:
    """The meshes of one layout: ``dp`` (FSDP), ``tp`` (within a node), ``experts`` (efsdp x ep)."""

    def __init__(self, device_type: str, world: int, tp: int = 1, ep: int = 1) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        if world % (tp * ep) or (tp > 1 and ep > 1):
            raise ValueError(f"layout tp={tp}, ep={ep} on {world} ranks: tp and ep must divide the world size "
                             "and are not combined (tokens are replicated over tp; no sequence parallelism)")
        self.tp, self.ep, self.world = tp, ep, world
        self.dp_size = world // tp
        if tp > 1:
            mesh = init_device_mesh(device_type, (self.dp_size, tp), mesh_dim_names=("dp", "tp"))
            self.dp, self.tp_mesh = mesh["dp"], mesh["tp"]
        else:
            self.dp, self.tp_mesh = init_device_mesh(device_type, (world,), mesh_dim_names=("dp",)), None
        self.experts = (init_device_mesh(device_type, (world // ep, ep), mesh_dim_names=("efsdp", "ep"))
                        if ep > 1 else None)

