"""GPU node presets for the capacity planner (``genba plan --cluster``).

Figures are the vendors' datasheet peaks for the SXM parts, dense (no 2:4
sparsity), per GPU. Planners apply an MFU on top; nothing here is a measured
throughput.

Sources
- H100 SXM5 80 GB: NVIDIA H100 Tensor Core GPU datasheet (2023): BF16 989.4
  TFLOP/s dense (1,979 with sparsity), FP8 1,979 dense (3,958 sparse), HBM3
  3.35 TB/s, NVLink 4 900 GB/s total per GPU (450 GB/s each direction).
  https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
- H200 SXM 141 GB: NVIDIA H200 datasheet (2024): same Hopper compute as H100
  SXM (BF16 989 / FP8 1,979 TFLOP/s dense), HBM3e 141 GB at 4.8 TB/s, NVLink
  900 GB/s. https://www.nvidia.com/en-us/data-center/h200/
- Inter-node: DGX/HGX H100 and H200 reference designs give each GPU its own
  ConnectX-7 400 Gb/s NDR InfiniBand port (8 per node), i.e. 50 GB/s per GPU
  per direction, 400 GB/s per node (NVIDIA DGX H100/H200 user guide,
  "networking": 8x single-port ConnectX-7 for the compute fabric).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

GB = 1e9  # datasheets use decimal units
GIB = 2**30


class ClusterError(KeyError):
    """An unknown cluster preset; the message lists the valid names."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Cluster:
    """One kind of node: ``gpus_per_node`` identical GPUs joined by NVLink, nodes by InfiniBand.

    Bandwidths are per GPU, one direction, in bytes/s; FLOP/s are dense peaks.
    """

    name: str
    gpu: str
    gpus_per_node: int
    hbm_bytes: float  # usable capacity as sold (141 GB = 141e9 bytes)
    hbm_bw: float  # bytes/s
    bf16_flops: float
    fp8_flops: float
    nvlink_bw: float  # intra-node, per GPU per direction
    internode_bw: float  # inter-node, per GPU per direction
    reserve_bytes: float = 6 * GIB  # CUDA context, NCCL buffers, allocator fragmentation: never plan to 100%

    def peak_flops(self, precision: str) -> float:
        if precision not in ("bf16", "fp8"):
            raise ValueError(f"precision {precision!r}: expected bf16 or fp8")
        return self.bf16_flops if precision == "bf16" else self.fp8_flops

    @property
    def usable_bytes(self) -> float:
        return self.hbm_bytes - self.reserve_bytes


CLUSTERS: dict[str, Cluster] = {
    c.name: c
    for c in (
        Cluster("h100x8", "H100 SXM5 80GB", 8, hbm_bytes=80 * GB, hbm_bw=3.35e12, bf16_flops=989.4e12,
                fp8_flops=1978.9e12, nvlink_bw=450 * GB, internode_bw=50 * GB),
        Cluster("h200x8", "H200 SXM 141GB", 8, hbm_bytes=141 * GB, hbm_bw=4.8e12, bf16_flops=989.4e12,
                fp8_flops=1978.9e12, nvlink_bw=450 * GB, internode_bw=50 * GB),
    )
}


def get_cluster(name: str) -> Cluster:
    """The node preset called ``name``; unknown names raise ClusterError with the closest ones."""
    try:
        return CLUSTERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(CLUSTERS), n=2, cutoff=0.3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ClusterError(f"unknown cluster {name!r}: {hint}known clusters: {', '.join(CLUSTERS)}") from None
