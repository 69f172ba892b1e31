"""The image stem: one small conv encoder shared by every camera-bearing embodiment (issue 21).

Normalized frames ``(N, h, w, 3)`` (``genba.data.transforms.NormalizeImages``:
uint8 -> [0, 1] -> per-channel mean/std from the dataset's image stats, carried
in the checkpoint) become ``image_tokens`` trunk tokens each:

1. two coordinate channels (x, y in [-1, 1]) are appended, so the convolutions
   can tell where a feature is, not only what it is (CoordConv);
2. four 3x3 convolutions of widths ``image_channels`` (strides 2, 2, 1, 1: a
   64x64 frame is read at 16x16 after the first two) with GroupNorm and SiLU;
3. a spatial softmax per channel gives one keypoint (expected x, y) per channel
   plus the channel's softmax-weighted feature (what is there), as in Levine et
   al. (deep spatial autoencoders) and robomimic: the puck or peg covers a few
   pixels at 64x64, and averaging pooling would wash out *where* it is;
4. a linear map to ``image_tokens`` tokens of ``d_model``.

:class:`Generalist` adds a camera embedding (per embodiment and camera name), a
frame embedding (history index, like the state tokens' order) and replaces the
tokens of padded frames (before the episode start) with a learned pad token.
Camera-less machines never touch this module; a model without a camera spec
does not build it, so state-only checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genba.model.config import ModelConfig
from genba.model.trunk import cached_constant

STRIDES = (2, 2, 1, 1)  # of the convolutions in order; further layers (if any) keep stride 1


def coord_channels(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, h, w): x and y in [-1, 1]; cached per shape and device."""
    def build():
        ys = torch.linspace(-1.0, 1.0, h, device=device)
        xs = torch.linspace(-1.0, 1.0, w, device=device)
        return torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None]  # (1, 2, h, w)
    return cached_constant(("coords", h, w, torch.device(device)), build).to(dtype)


class SpatialSoftmax(nn.Module):
    """Features (N, C, h, w) -> per channel: expected (x, y) under its softmax and the weighted feature (N, 3C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_temp = nn.Parameter(torch.empty(channels))  # learned sharpness per channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, h, w = x.shape
        coords = coord_channels(h, w, x.device, x.dtype).flatten(2)  # (1, 2, hw)
        logits = x.flatten(2) * self.log_temp.exp().to(x.dtype)[:, None]  # (N, C, hw)
        p = logits.softmax(-1)
        xy = torch.einsum("nck,dk->ncd", p, coords[0])  # (N, C, 2)
        feat = (p * x.flatten(2)).sum(-1, keepdim=True)  # (N, C, 1)
        return torch.cat((xy, feat), -1).flatten(1)  # (N, 3C)

    def init_weights(self) -> None:
        nn.init.zeros_(self.log_temp)


class ImageEncoder(nn.Module):
    """Normalized frames (N, h, w, 3) -> tokens (N, image_tokens, d_model); see the module docstring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        widths = (5, *cfg.image_channels)  # RGB + 2 coordinate channels in
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, stride=STRIDES[i] if i < len(STRIDES) else 1, padding=1)
            for i, (cin, cout) in enumerate(zip(widths, widths[1:])))
        self.norms = nn.ModuleList(nn.GroupNorm(_groups(c), c) for c in cfg.image_channels)
        self.keypoints = SpatialSoftmax(cfg.image_channels[-1])
        self.tokens, self.d_model = cfg.image_tokens, cfg.d_model
        self.proj = nn.Linear(3 * cfg.image_channels[-1], cfg.image_tokens * cfg.d_model)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        N, h, w, _ = frames.shape
        x = frames.permute(0, 3, 1, 2)  # (N, 3, h, w)
        x = torch.cat((x, coord_channels(h, w, x.device, x.dtype).expand(N, -1, -1, -1)), 1)  # (N, 5, h, w)
        for conv, norm in zip(self.convs, self.norms):
            x = F.silu(norm(conv(x)))  # (N, c, h', w')
        return self.proj(self.keypoints(x)).view(N, self.tokens, self.d_model)  # (N, K, D)

    def init_weights(self, std: float) -> None:
        for conv in self.convs:  # He init for SiLU stacks: unit-scale activations
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for norm in self.norms:
            nn.init.ones_(norm.weight)
            nn.init.zeros_(norm.bias)
        self.keypoints.init_weights()
        nn.init.normal_(self.proj.weight, std=std)  # tokens at the state stem's scale
        nn.init.zeros_(self.proj.bias)


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 channels each where they divide, else one group."""
    return channels // 8 if channels % 8 == 0 and channels >= 8 else 1
