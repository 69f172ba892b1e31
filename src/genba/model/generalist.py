"""The generalist: per-embodiment stems and heads around one shared trunk.

One control step becomes a short token sequence (same length for every
embodiment, so a mixed batch is one trunk pass)::

    [lang summaries (S)] [embodiment + control rate (1)] [obs history (H)] [images (H x cams x K)] [readouts (R)]

The image tokens exist only for machines with cameras (``genba.model.vision``:
one conv encoder shared by all of them, K = ``image_tokens`` per camera per
frame, plus camera and frame embeddings in the machine's stem); sequences of
different lengths go through the trunk in one pass per length, so a batch that
mixes camera and camera-less machines still shares every trunk weight, and a
camera-less batch is exactly one pass as before.

- Language: a byte-level transformer pooled to S summary tokens (en and ja
  alike), cached per instruction; its mean also skips the trunk to every head,
  scaled by a constant, because through the trunk alone the instruction was
  ignored.
- Stem (per embodiment): one observation frame -> one token, a learned pad
  token before the episode start, the embodiment token with log(fps) features.
- Head (per embodiment): readout queries and an L1 chunk regressor (default) or
  a flow-matching head (pi0); ``cfg.obs_linear`` adds a linear map from the
  normalized history to the chunk, for the drives' near-linear control laws.

Design and the measurements behind the language skip and the linear path:
docs/concepts.md#the-generalist. Built under ``torch.device("meta")``, then
``to_empty`` and ``init_weights``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from genba.data.spec import EmbodimentSpec
from genba.model.config import ModelConfig
from genba.model.trunk import Attention, RMSNorm, SwiGLU, Trunk, cached_constant, rotary
from genba.model.vision import ImageEncoder

N_RATE_FEATURES = 16
BATCH_KEYS = ("observation.state", "observation.state_is_pad", "lang_tokens", "lang_mask")


def rate_features(fps: float, device: torch.device) -> torch.Tensor:
    """Sinusoidal features of log(fps), (N_RATE_FEATURES,): 1 Hz .. 10 kHz all distinct; cached."""
    def build():
        freqs = torch.arange(N_RATE_FEATURES // 2, dtype=torch.float32, device=device)
        ang = math.log(fps) * (0.5 ** freqs)
        return torch.cat((ang.sin(), ang.cos()))
    return cached_constant(("rate", fps, torch.device(device)), build)


def _linear_init(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class LanguageEncoder(nn.Module):
    """Bytes (B, L) -> S summary tokens (B, S, d_model) by self-attention then pooling."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.lang_dim
        self.cfg = cfg
        # a bare Parameter, not nn.Embedding: its constructor's normal_ on meta imports torch._dynamo (~6 s)
        self.embed = nn.Parameter(torch.empty(cfg.vocab_size, w))
        self.norms = nn.ModuleList(RMSNorm(w, cfg.norm_eps) for _ in range(2 * cfg.lang_layers))
        self.attns = nn.ModuleList(Attention(w, cfg.lang_heads, cfg.lang_heads) for _ in range(cfg.lang_layers))
        self.mlps = nn.ModuleList(SwiGLU(w, 2 * w) for _ in range(cfg.lang_layers))
        self.queries = nn.Parameter(torch.empty(cfg.n_lang_tokens, w))
        self.pool_q = nn.Linear(w, w, bias=False)
        self.pool_kv = nn.Linear(w, 2 * w, bias=False)
        self.out_norm = RMSNorm(w, cfg.norm_eps)
        self.proj = nn.Linear(w, cfg.d_model, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = int(mask.sum(-1).max().clamp_min(1))  # trim to the longest instruction in the batch
        tokens, mask = tokens[:, :n], mask[:, :n].clone()
        mask[:, 0] = True  # an empty instruction still attends to something (its pad byte)
        B, L = tokens.shape
        keep = mask[:, None, None, :]  # (B, 1, 1, L) keys that may be attended
        x = F.embedding(tokens, self.embed)  # (B, L, w)
        rope = rotary(L, self.cfg.lang_dim // self.cfg.lang_heads, self.cfg.rope_theta, x.device)
        for i, (attn, mlp) in enumerate(zip(self.attns, self.mlps)):
            x = x + attn(self.norms[2 * i](x), rope, keep)
            x = x + mlp(self.norms[2 * i + 1](x))
        h, w = self.cfg.lang_heads, self.cfg.lang_dim
        q = self.pool_q(self.queries).view(1, -1, h, w // h).transpose(1, 2).expand(B, -1, -1, -1)  # (B, h, S, hd)
        k, v = self.pool_kv(x).view(B, L, 2, h, w // h).permute(2, 0, 3, 1, 4)  # (B, h, L, hd)
        s = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, h, S, hd)
        return self.proj(self.out_norm(s.transpose(1, 2).reshape(B, -1, w)))  # (B, S, d_model)

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.embed, std=std)
        for norm in (*self.norms, self.out_norm):
            norm.init_weights()
        for attn, mlp in zip(self.attns, self.mlps):
            attn.init_weights(std, std)
            mlp.init_weights(std, std)
        nn.init.normal_(self.queries, std=std)
        for layer in (self.pool_q, self.pool_kv, self.proj):
            _linear_init(layer, std)


class Stem(nn.Module):
    """One embodiment's observation frames (B, H, obs) -> tokens (B, H, D), plus its embodiment token.

    A machine with cameras also owns a camera embedding (one row per camera of its spec, in spec
    order), a frame embedding (one row per history index) and a pad token for the image tokens of
    padded frames; the image encoder itself is shared (:class:`Generalist.image`).
    """

    def __init__(self, cfg: ModelConfig, spec: EmbodimentSpec) -> None:
        super().__init__()
        self.fc1 = nn.Linear(spec.obs_dim, cfg.stem_hidden)
        self.fc2 = nn.Linear(cfg.stem_hidden, cfg.d_model)
        self.pad = nn.Parameter(torch.empty(cfg.d_model))
        self.token = nn.Parameter(torch.empty(cfg.d_model))
        self.cameras = tuple(c.name for c in spec.cameras)
        if self.cameras:  # camera-less stems keep exactly their former parameters
            self.camera_embed = nn.Parameter(torch.empty(len(self.cameras), cfg.d_model))
            self.frame_embed = nn.Parameter(torch.empty(cfg.history, cfg.d_model))
            self.image_pad = nn.Parameter(torch.empty(cfg.d_model))

    def forward(self, state: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.silu(self.fc1(state)))  # (B, H, D)
        return torch.where(is_pad.unsqueeze(-1), self.pad.to(x.dtype), x)

    def image_tokens(self, encoder: ImageEncoder, images, is_pad: torch.Tensor, dtype) -> torch.Tensor:
        """Normalized frames {camera: (B, H, h, w, 3)} -> tokens (B, cams * H * K, D), camera-major."""
        out = []
        for i, cam in enumerate(self.cameras):
            frames = images[cam].to(dtype)
            B, H = frames.shape[:2]
            tok = encoder(frames.flatten(0, 1)).view(B, H, encoder.tokens, -1)  # (B, H, K, D)
            tok = tok + (self.camera_embed[i] + self.frame_embed[:, None]).to(dtype)  # (H, 1, D) broadcast
            tok = torch.where(is_pad[:, :, None, None], self.image_pad.to(dtype), tok)
            out.append(tok.flatten(1, 2))  # (B, H * K, D)
        return torch.cat(out, 1)

    def init_weights(self, std: float) -> None:
        _linear_init(self.fc1, 1 / math.sqrt(self.fc1.in_features))  # inputs are normalized: unit scale
        _linear_init(self.fc2, std)
        nn.init.normal_(self.pad, std=std)
        nn.init.normal_(self.token, std=std)
        if self.cameras:  # drawn after the camera-less stem's: its draws are unchanged
            for p in (self.camera_embed, self.frame_embed, self.image_pad):
                nn.init.normal_(p, std=std)


def head_inputs(cfg: ModelConfig) -> int:
    """Width of a head's input: its R readout tokens plus the language skip token, flattened."""
    return (cfg.n_readout + 1) * cfg.d_model


class ObsLinear(nn.Module):
    """Normalized history (B, H, obs) -> chunk (B, C, A), linear; zero at init (the model starts as without it)."""

    def __init__(self, cfg: ModelConfig, spec: EmbodimentSpec) -> None:
        super().__init__()
        self.chunk, self.action_dim = cfg.chunk, spec.action_dim
        self.fc = nn.Linear(cfg.history * spec.obs_dim, cfg.chunk * spec.action_dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.fc(state.flatten(1)).view(-1, self.chunk, self.action_dim)  # (B, C, A)

    def init_weights(self) -> None:
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)


def _init_obs_linear(head: nn.Module) -> None:
    if head.obs_linear is not None:
        head.obs_linear.init_weights()


class L1Head(nn.Module):
    """Readouts + language skip (B, R + 1, D) -> action chunk (B, C, A), trained with masked L1."""

    def __init__(self, cfg: ModelConfig, spec: EmbodimentSpec) -> None:
        super().__init__()
        self.chunk, self.action_dim = cfg.chunk, spec.action_dim
        self.obs_linear = ObsLinear(cfg, spec) if cfg.obs_linear else None
        self.readout = nn.Parameter(torch.empty(cfg.n_readout, cfg.d_model))
        self.fc1 = nn.Linear(head_inputs(cfg), cfg.head_hidden)
        self.fc2 = nn.Linear(cfg.head_hidden, cfg.chunk * spec.action_dim)

    def predict(self, ro: torch.Tensor) -> torch.Tensor:
        y = self.fc2(F.silu(self.fc1(ro.flatten(1))))
        return y.view(-1, self.chunk, self.action_dim)  # (B, C, A)

    def errors(self, ro: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (self.predict(ro) - action).abs()  # (B, C, A)

    def sample(self, ro: torch.Tensor, steps: int, generator: torch.Generator | None) -> torch.Tensor:
        return self.predict(ro)

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.readout, std=std)
        _linear_init(self.fc1, 1 / math.sqrt(self.fc1.in_features))  # readouts are RMS-normed: unit scale
        _linear_init(self.fc2, std)
        _init_obs_linear(self)


class FlowHead(nn.Module):
    """Conditional flow matching over the flattened chunk, conditioned on readouts and time."""

    def __init__(self, cfg: ModelConfig, spec: EmbodimentSpec) -> None:
        super().__init__()
        self.chunk, self.action_dim = cfg.chunk, spec.action_dim
        flat, hid = cfg.chunk * spec.action_dim, cfg.head_hidden
        self.obs_linear = ObsLinear(cfg, spec) if cfg.obs_linear else None
        self.readout = nn.Parameter(torch.empty(cfg.n_readout, cfg.d_model))
        self.cond = nn.Linear(head_inputs(cfg), hid)
        self.inp = nn.Linear(flat, hid)
        self.time = nn.Linear(N_RATE_FEATURES, hid)
        self.fc = nn.Linear(hid, hid)
        self.out = nn.Linear(hid, flat)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        freqs = torch.arange(N_RATE_FEATURES // 2, device=t.device, dtype=t.dtype)
        ang = t[:, None] * (2.0 ** freqs) * math.pi  # (B, F/2)
        h = cond + self.inp(x_t.flatten(1)) + self.time(torch.cat((ang.sin(), ang.cos()), -1))
        return self.out(F.silu(self.fc(F.silu(h)))).view_as(x_t)  # (B, C, A)

    def errors(self, ro: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        B = action.shape[0]
        t = torch.distributions.Beta(1.5, 1.0).sample((B,)).to(action)  # (B,)
        noise = torch.randn_like(action)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * action
        v = self.velocity(x_t, t, self.cond(ro.flatten(1)))
        return (v - (noise - action)).square()  # (B, C, A)

    def sample(self, ro: torch.Tensor, steps: int, generator: torch.Generator | None) -> torch.Tensor:
        cond = self.cond(ro.flatten(1))
        x = torch.randn(ro.shape[0], self.chunk, self.action_dim, generator=generator,
                        device=ro.device, dtype=ro.dtype)  # t = 1: pure noise
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((ro.shape[0],), 1.0 - i * dt, device=ro.device, dtype=ro.dtype)
            x = x - dt * self.velocity(x, t, cond)
        return x

    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.readout, std=std)
        for layer in (self.cond, self.inp, self.time, self.fc):  # unit-scale hidden activations
            _linear_init(layer, 1 / math.sqrt(layer.in_features))
        _linear_init(self.out, std)
        _init_obs_linear(self)


HEADS = {"l1": L1Head, "flow": FlowHead}


class Generalist(nn.Module):
    """Stems, language encoder, trunk and heads; ``loss`` and ``sample_actions`` on normalized batches."""

    def __init__(self, cfg: ModelConfig, specs: Mapping[str, EmbodimentSpec]) -> None:
        super().__init__()
        if not specs:
            raise ValueError("Generalist needs at least one embodiment spec")
        self.cfg = cfg
        self.specs: dict[str, EmbodimentSpec] = {}
        self.lang = LanguageEncoder(cfg)
        self.rate = nn.Linear(N_RATE_FEATURES, cfg.d_model)
        self.trunk = Trunk(cfg)
        self.stems = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.image: ImageEncoder | None = None  # built with the first camera-bearing embodiment
        for name in sorted(specs):  # sorted: init order (and so weights) independent of dict order
            self._add(name, specs[name])

    @property
    def skip_scale(self) -> float:
        """Unit scale for the language skip token at init (the summaries leave ``proj`` at ~init_std * sqrt(w))."""
        return 1.0 / (self.cfg.init_std * math.sqrt(self.cfg.lang_dim))

    def _add(self, name: str, spec: EmbodimentSpec) -> None:
        if name != spec.name:
            raise ValueError(f"embodiment key {name!r} differs from its spec's name {spec.name!r}")
        if name in self.specs:
            raise ValueError(f"embodiment {name!r} already has a stem and head")
        self.specs[name] = spec
        if spec.cameras and self.image is None:
            self.image = ImageEncoder(self.cfg)
        self.stems[name] = Stem(self.cfg, spec)
        self.heads[name] = HEADS[self.cfg.head](self.cfg, spec)

    def add_embodiment(self, spec: EmbodimentSpec) -> None:
        """Give a new machine its stem and head (initialized) beside the pretrained trunk."""
        ref = self.rate.weight
        new_encoder = spec.cameras and self.image is None
        with torch.device(ref.device):
            self._add(spec.name, spec)
        if new_encoder:
            self.image.to(ref.dtype)
            if ref.device.type != "meta":
                self.image.init_weights(self.cfg.init_std)
        self.stems[spec.name].to(ref.dtype)
        self.heads[spec.name].to(ref.dtype)
        if ref.device.type != "meta":
            self.stems[spec.name].init_weights(self.cfg.init_std)
            self.heads[spec.name].init_weights(self.cfg.init_std)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Fill every parameter and buffer; deterministic given the torch seed; works after ``to_empty``."""
        std = self.cfg.init_std
        self.lang.init_weights(std)
        _linear_init(self.rate, std)
        self.trunk.init_weights()
        for name in self.specs:
            self.stems[name].init_weights(std)
            self.heads[name].init_weights(std)
        if self.image is not None:  # last: a camera-less model draws exactly what it did before cameras
            self.image.init_weights(std)

    # ---- forward -----------------------------------------------------------
    def encode_language(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Instruction bytes (B, L) and mask (B, L) -> summary tokens (B, S, D); cache it per instruction.

        Identical instructions in the batch are encoded once and shared: a mixed training batch of 64
        holds ~25 distinct ones, and the encoder was a third of a ``small`` training step.
        """
        rows = torch.cat((tokens, mask.to(tokens.dtype)), dim=1)  # (B, 2L): a row per (instruction, mask)
        distinct, inverse = torch.unique(rows, dim=0, return_inverse=True)
        if distinct.shape[0] == rows.shape[0]:
            return self.lang(tokens, mask.bool())
        L = tokens.shape[1]
        return self.lang(distinct[:, :L], distinct[:, L:].bool())[inverse]  # (B, S, D)

    def readouts(self, batch: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One trunk pass over all embodiments: head inputs {emb: (B, R + 1, D)} (the readout tokens, then
        the language skip token) and the MoE aux loss."""
        names = list(batch)
        for name in names:
            self._check(name, batch[name])
        lang = self._language(batch, names)
        seqs = []
        for name, summary in zip(names, lang):
            b, stem, head = batch[name], self.stems[name], self.heads[name]
            B = b["observation.state"].shape[0]
            ident = (stem.token + self.rate(rate_features(self.specs[name].fps, stem.token.device))).to(summary.dtype)
            is_pad = b["observation.state_is_pad"].bool()
            obs = [stem(b["observation.state"].to(summary.dtype), is_pad)]  # (B, H, D)
            if stem.cameras:
                obs.append(stem.image_tokens(self.image, b["images"], is_pad, summary.dtype))  # (B, cams*H*K, D)
            seqs.append(torch.cat((summary, ident.expand(B, 1, -1), *obs,
                                   head.readout.to(summary.dtype).expand(B, -1, -1)), dim=1))  # (B, T, D)
        parts, aux = self._trunk(seqs)
        skips = [summary.mean(1, keepdim=True) * self.skip_scale for summary in lang]  # (B, 1, D) each
        return {n: torch.cat((p, k.to(p.dtype)), dim=1) for n, p, k in zip(names, parts, skips)}, aux

    def _trunk(self, seqs: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Readouts (B_i, R, D) of every sequence: one trunk pass per sequence length (one pass when no
        machine has cameras), and the MoE aux loss averaged over the passes by their rows."""
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_len.setdefault(s.shape[1], []).append(i)
        parts: list[torch.Tensor] = [None] * len(seqs)  # type: ignore[list-item]
        auxes, rows = [], []
        for idx in by_len.values():
            x, aux = self.trunk(torch.cat([seqs[i] for i in idx], dim=0), keep_last=self.cfg.n_readout)
            for i, p in zip(idx, x.split([seqs[i].shape[0] for i in idx])):
                parts[i] = p  # (B_i, R, D): only the readouts are read
            auxes.append(aux)
            rows.append(x.shape[0])
        if len(auxes) == 1:
            return parts, auxes[0]
        return parts, sum(a * (n / sum(rows)) for a, n in zip(auxes, rows))

    def _language(self, batch, names) -> list[torch.Tensor]:
        """Summaries per embodiment: the cached ``lang_summary`` when given, else one encoder pass for all."""
        todo = [n for n in names if "lang_summary" not in batch[n]]
        done = {n: batch[n]["lang_summary"] for n in names if n not in todo}
        if todo:
            tokens = torch.cat([batch[n]["lang_tokens"] for n in todo])
            mask = torch.cat([batch[n]["lang_mask"] for n in todo])
            enc = self.encode_language(tokens, mask).split([batch[n]["lang_tokens"].shape[0] for n in todo])
            done.update(zip(todo, enc))
        return [done[n] for n in names]

    def _check(self, name: str, b: Mapping[str, torch.Tensor]) -> None:
        if name not in self.specs:
            raise KeyError(f"batch has embodiment {name!r} but the model knows {sorted(self.specs)}")
        missing = [k for k in BATCH_KEYS if k not in b and not (k.startswith("lang") and "lang_summary" in b)]
        if missing:
            raise KeyError(f"batch[{name!r}] lacks {missing}")
        H, obs = self.cfg.history, self.specs[name].obs_dim
        shape = tuple(b["observation.state"].shape)
        if len(shape) != 3 or shape[1:] != (H, obs):
            raise ValueError(f"batch[{name!r}]['observation.state'] has shape {shape}, expected (B, {H}, {obs})")
        for cam in self.specs[name].cameras:
            got = b.get("images", {}).get(cam.name)
            want = (shape[0], H, *cam.shape)
            if got is None:
                raise KeyError(f"batch[{name!r}] lacks images[{cam.name!r}] (camera of embodiment {name!r})")
            if tuple(got.shape) != want:
                raise ValueError(f"batch[{name!r}]['images'][{cam.name!r}] has shape {tuple(got.shape)}, "
                                 f"expected {want}")

    def loss(self, batch: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked action loss (per embodiment averaged, then mean over embodiments) + MoE aux loss."""
        ro, aux = self.readouts(batch)
        per = {}
        for name, r in ro.items():
            b, A = batch[name], self.specs[name].action_dim
            action = b["action"].to(r.dtype)
            if tuple(action.shape[1:]) != (self.cfg.chunk, A):
                raise ValueError(f"batch[{name!r}]['action'] has shape {tuple(action.shape)}, "
                                 f"expected (B, {self.cfg.chunk}, {A})")
            pad = b["action_is_pad"].bool().unsqueeze(-1)  # (B, C, 1)
            residual = action - self.linear_part(name, b, r.dtype)  # what the head itself must produce
            residual = residual.masked_fill(pad, 0.0)  # padded steps must not leak into the flow head's input
            err = self.heads[name].errors(r, residual).float()  # (B, C, A)
            valid = (~pad).float()
            per[name] = (err * valid).sum() / (valid.sum() * A).clamp_min(1.0)
        action_loss = torch.stack(list(per.values())).mean()
        loss = action_loss + self.cfg.aux_loss_coef * aux if self.cfg.n_experts else action_loss
        metrics = {"loss": loss.item(), "loss/action": action_loss.item()}
        metrics.update({f"loss/{n}": v.item() for n, v in per.items()})
        if self.cfg.n_experts:
            metrics["loss/aux"] = aux.item()
            metrics["moe/max_load"] = self.max_expert_load()
        return loss, metrics

    @torch.no_grad()
    def sample_actions(self, batch: Mapping[str, Mapping[str, torch.Tensor]],
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Normalized action chunks {emb: (B, C, A)}; ``generator`` seeds the flow head's noise."""
        ro, _ = self.readouts(batch)
        return {n: self.heads[n].sample(r, self.cfg.flow_steps, generator) + self.linear_part(n, batch[n], r.dtype)
                for n, r in ro.items()}

    def linear_part(self, name: str, b: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor | float:
        """The observation-linear path's chunk (B, C, A) for ``batch[name]``, or 0.0 without it."""
        lin = self.heads[name].obs_linear
        if lin is None:
            return 0.0
        state, is_pad = b["observation.state"].to(dtype), b["observation.state_is_pad"].bool()  # (B, H, obs), (B, H)
        # padded frames (front) read as the first real one, whatever they hold, as the reader and policy pad
        first = state[torch.arange(state.shape[0], device=state.device), is_pad.sum(1).clamp_max(state.shape[1] - 1)]
        return lin(torch.where(is_pad.unsqueeze(-1), first.unsqueeze(1), state))  # (B, C, A)

    def max_expert_load(self) -> float:
        """Largest expert load over the mean load in the last forward, across MoE layers (1.0 = balanced)."""
        loads = self.trunk.expert_load().values()
        return max((float(l.max() / l.mean().clamp_min(1e-9)) for l in loads), default=1.0)


def build_model(cfg: ModelConfig, specs: Mapping[str, EmbodimentSpec], device: torch.device | str = "cpu",
                seed: int | None = None, *, init: bool = True) -> Generalist:
    """The one way to make a :class:`Generalist`: build on ``meta``, ``to_empty`` on ``device``, ``init_weights``.

    Describing a big config costs nothing on ``meta``; every tensor is then
    allocated once, on its device. ``seed`` seeds the init (every rank of a
    sharded run gets the very weights a single process does); ``None`` draws
    from the current RNG. ``init=False`` leaves the tensors unfilled and the RNG
    untouched, for a caller that loads a full state dict next (a bundle saved
    mid-training must not shift the run's random stream). ``device="meta"``
    returns the description alone (e.g. to check a checkpoint's shapes first).
    """
    with torch.device("meta"):
        model = Generalist(cfg, specs)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    if init:
        if seed is not None:
            torch.manual_seed(seed)
        model.init_weights()
    return model
