"""Wrap the single-device model for several processes, in torchtitan's fixed order.

The model code stays plain (``genba.model``); everything distributed happens
here, as small ``apply_*`` functions run in this order on one DeviceMesh:

1. activation checkpointing per trunk block (recompute inside the unit that
   will later be sharded, so FSDP frees the right memory);
2. ``torch.compile`` per block (optional; on this CPU it compiles for a minute
   and gains nothing, see machine-notes, so it is off by default);
3. data parallelism: DDP over the whole model, or FSDP2 ``fully_shard`` on each
   block and then on the root, whose group holds the stems, heads and
   embeddings.

Tensor and expert parallelism (``ParallelPlan.tp``/``ep``) come first, each
on its own mesh (``genba.train.tensor_parallel``, ``genba.train.expert_parallel``);
FSDP2 then shards the rest over the data-parallel ranks, leaving the experts
to expert parallelism (torchtitan's order: TP, checkpointing, compile, FSDP).

The model is called through ``model.loss(batch)``, not ``forward``; DDP and
FSDP2 hook ``forward``, so :class:`LossModule` routes the loss through a
``forward`` (DDP) and FSDP2 registers ``loss``/``sample_actions`` as forward
methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

# Names under which a model may keep its trunk blocks, searched in order.
_BLOCK_PATHS = ("trunk.blocks", "trunk.layers", "blocks", "layers")


@dataclass(frozen=True)
class ParallelPlan:
    """Which wrappers to apply; ``dist`` is none | ddp | fsdp."""

    dist: str = "none"
    activation_checkpointing: bool = False
    compile: bool = False
    tp: int = 1  # tensor parallel (genba.train.tensor_parallel), before checkpointing
    ep: int = 1  # expert parallel (genba.train.expert_parallel), experts left out of FSDP


def data_rank(rank: int, world: int, plan: ParallelPlan) -> tuple[int, int]:
    """(data-parallel rank, data-parallel size): ranks of one TP group see the same samples
    (mesh ``(dp, tp)`` is row-major, so rank = dp_rank * tp + tp_rank)."""
    return rank // plan.tp, world // plan.tp


class LossModule(nn.Module):
    """``forward(batch) = model.loss(batch)``, so DDP's forward hooks see the loss.

    With ``touch_idle`` the stems and heads of embodiments absent from the
    batch (and the image encoder when no camera machine is in it) join the graph as ``0 * sum(params)``: every parameter then gets a
    gradient every step (zero where idle), so DDP needs no
    ``find_unused_parameters`` search of the autograd graph each step (issue 19).
    """

    def __init__(self, model: nn.Module, touch_idle: bool = False) -> None:
        super().__init__()
        self.model = model
        self.touch_idle = touch_idle

    def forward(self, batch):
        loss, metrics = self.model.loss(batch)
        if self.touch_idle:
            idle = [p for name in getattr(self.model, "stems", {}) if name not in batch
                    for part in (self.model.stems[name], self.model.heads[name])
                    for p in part.parameters() if p.requires_grad]
            image = getattr(self.model, "image", None)  # the shared camera encoder, idle in a camera-less batch
            if image is not None and not any(self.model.stems[n].cameras for n in batch):
                idle += [p for p in image.parameters() if p.requires_grad]
            if idle:
                loss = loss + 0.0 * sum(p.sum() for p in idle)  # (); zero value, gradient 0 for each idle param
        return loss, metrics


def build_mesh(device: torch.device) -> DeviceMesh | None:
    """A 1-D data-parallel mesh over all ranks, or None when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))


def trunk_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (the unit of checkpointing and sharding)."""
    for path in _BLOCK_PATHS:
        mod: nn.Module | None = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.ModuleList):
            return mod
    raise AttributeError(f"{type(model).__name__} has no transformer blocks at any of {_BLOCK_PATHS}")


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    blocks = trunk_blocks(model)
    for i, block in enumerate(blocks):
        # the wrapper's state-dict hooks strip its prefix, so checkpoints keep plain names
        blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (``Module.compile`` keeps state-dict names)."""
    for block in trunk_blocks(model):
        block.compile()


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, ignored: set | None = None) -> None:
    """FSDP2: shard each block, then the root (stems, heads, embeddings).

    Different ranks may see different embodiments in a step, so a stem or head
    can be unused on one rank and used on another; zero gradients for unused
    parameters keep the root group's reduce-scatter the same on every rank.
    ``ignored`` parameters (expert-parallel experts) are left to their own mesh.
    """
    ignored = ignored or set()
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = trunk_blocks(model)
    for i, block in enumerate(blocks):
        # the last block is resharded by the root right away; skip the extra free
        own = {p for p in block.parameters() if p in ignored} or None
        fully_shard(block, mesh=mesh, reshard_after_forward=i < len(blocks) - 1, ignored_params=own)
    fully_shard(model, mesh=mesh, ignored_params=ignored or None)
    model.set_reduce_scatter_unused_params(True)
    for method in ("loss", "sample_actions"):
        if hasattr(model, method):
            register_fsdp_forward_method(model, method)


def apply_ddp(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Replicate with DDP; ``module`` must use every parameter each step (LossModule's ``touch_idle``)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, process_group=mesh.get_group(), find_unused_parameters=False)


def parallelize(model: nn.Module, plan: ParallelPlan, mesh: DeviceMesh | None) -> nn.Module:
    """Apply the plan in order; returns the module to call as ``train_module(batch) -> (loss, metrics)``.

    ``model`` itself is changed in place (wrapped blocks, FSDP parameters) and
    stays the object to take state dicts from.
    """
    if plan.dist != "none" and mesh is None:
        raise ValueError(f"dist={plan.dist!r} needs torch.distributed initialized (launch with torchrun)")
    ignored: set = set()
    if plan.tp > 1 or plan.ep > 1:  # TP and EP first, on their own meshes; FSDP then shards over dp
        from genba.train.expert_parallel import ScaleMeshes, apply_ep
        from genba.train.tensor_parallel import apply_tp

        meshes = ScaleMeshes(mesh.device_type, mesh.size(), tp=plan.tp, ep=plan.ep)
        if meshes.tp_mesh is not None:
            apply_tp(model, meshes.tp_mesh)
        if meshes.experts is not None:
            ignored = apply_ep(model, meshes.experts)
        mesh = meshes.dp
    if plan.activation_checkpointing:
        apply_activation_checkpointing(model)
    if plan.compile:
        apply_compile(model)
    if plan.dist == "fsdp":
        if mesh.size() > 1:  # tp over every rank leaves nothing to shard over
            apply_fsdp(model, mesh, ignored)
        return LossModule(model)
    if plan.dist == "ddp":
        return apply_ddp(LossModule(model, touch_idle=True), mesh)
    return LossModule(model)
