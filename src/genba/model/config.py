"""Model configuration: one frozen dataclass and one registry of named presets.

A preset is a plain Python value; variants are made with ``dataclasses.replace``
(never YAML, never string eval). ``get_preset(name)`` suggests the closest names
when one is mistyped, like openpi's config list.

Token layout of one control step (the same for every embodiment, so a mixed
batch runs through the trunk as one tensor)::

    [lang summaries (n_lang_tokens)] [embodiment+rate (1)] [obs history (history)] [readouts (n_readout)]

Sizing notes (2-core CPU, ~50-88 GFLOP/s per core fp32): training costs about
``6 * trunk_params * tokens_per_step`` FLOPs per sample, so the per-step token
count is kept near 10 and ``small`` is sized so 20 minutes sees several epochs of
~120k frames.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

HEAD_TYPES = ("l1", "flow")
ROUTER_TYPES = ("softmax", "sigmoid")
# How a policy plays its action chunks (genba.model.policy): temporal ensembling of overlapping chunks, or a
# fresh chunk every few steps played open loop. ``auto`` (eval, the demo) picks one per machine by control rate.
EXECUTE_MODES = ("ensemble", "replan")
EXECUTE_CHOICES = ("auto", *EXECUTE_MODES)


class PresetError(KeyError):
    """An unknown preset name; the message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the model's shapes (and a few training-time switches).

    Widths: ``d_model`` trunk width, ``n_heads``/``n_kv_heads`` attention heads
    (grouped-query attention when ``n_kv_heads < n_heads``), ``mlp_hidden`` the
    SwiGLU hidden size of dense layers.

    Mixture of experts: with ``n_experts > 0`` every layer from
    ``first_dense_layers`` on (every ``moe_every``-th) is an MoE layer with
    ``n_experts`` routed experts of hidden ``expert_hidden``, ``top_k`` active per
    token, plus ``n_shared_experts`` always-on experts of the same hidden size.
    Balancing: ``aux_loss_coef`` (switch-style load-balancing loss) and/or
    ``router_bias_rate`` (DeepSeek-V3's auxiliary-loss-free per-expert bias,
    nudged after each training forward).
    """

    # trunk
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 6
    n_kv_heads: int = 6
    mlp_hidden: int = 512
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    # mixture of experts (n_experts == 0: every layer dense)
    n_experts: int = 0
    top_k: int = 2
    expert_hidden: int = 0
    n_shared_experts: int = 0
    first_dense_layers: int = 0
    moe_every: int = 1
    router: str = "softmax"
    aux_loss_coef: float = 0.01
    router_bias_rate: float = 0.0
    # step layout (read by the trainer and the data reader)
    history: int = 2  # H observation frames, oldest first
    chunk: int = 8  # C actions predicted per step
    max_lang_len: int = 128  # L instruction bytes (UTF-8; Japanese is 3 bytes/char)
    n_readout: int = 2
    # language encoder (byte level, vocab 257: 0 = pad, byte b -> b + 1)
    vocab_size: int = 257
    lang_dim: int = 64
    lang_layers: int = 1
    lang_heads: int = 2
    n_lang_tokens: int = 4
    # stems and heads (one pair per embodiment)
    stem_hidden: int = 256
    head: str = "l1"
    head_hidden: int = 256
    # linear map from the observation history straight to the chunk, added to the head's output
    # (generalist.py says why). False by default only so checkpoints written before it load as they were;
    # every preset turns it on.
    obs_linear: bool = False
    flow_steps: int = 10  # Euler steps at inference (pi0)
    # image stem (built only when an embodiment has cameras; generalist.py ImageEncoder): conv widths
    # ``image_channels`` (stride 2, 2, 1, 1; coordinate channels in), spatial-softmax keypoints of the last
    # layer projected to ``image_tokens`` trunk tokens per camera per frame
    image_tokens: int = 4
    image_channels: tuple[int, ...] = (16, 32, 32, 32)
    # init
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived -------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def tokens_per_step(self) -> int:
        """Trunk tokens of one step of a camera-less machine."""
        return self.n_lang_tokens + 1 + self.history + self.n_readout

    def tokens_with_cameras(self, n_cameras: int) -> int:
        """Trunk tokens of one step of a machine with ``n_cameras`` cameras."""
        return self.tokens_per_step + n_cameras * self.history * self.image_tokens

    def is_moe_layer(self, i: int) -> bool:
        """Whether trunk layer ``i`` uses the MoE feed-forward."""
        if self.n_experts == 0 or i < self.first_dense_layers:
            return False
        return (i - self.first_dense_layers) % self.moe_every == 0

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_layers) if self.is_moe_layer(i))

    # ---- checks --------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field if the config cannot build a model."""
        positive = ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "history", "chunk",
                    "max_lang_len", "n_readout", "vocab_size", "lang_dim", "lang_layers", "lang_heads",
                    "n_lang_tokens", "stem_hidden", "head_hidden", "flow_steps", "image_tokens")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"ModelConfig.d_model ({self.d_model}) must split into n_heads ({self.n_heads}) "
                             "heads of even size (rotary embedding)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"ModelConfig.n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.lang_dim % self.lang_heads or (self.lang_dim // self.lang_heads) % 2:
            raise ValueError(f"ModelConfig.lang_dim ({self.lang_dim}) must split into lang_heads "
                             f"({self.lang_heads}) heads of even size")
        if not self.image_channels or any(int(c) <= 0 for c in self.image_channels):
            raise ValueError(f"ModelConfig.image_channels must be positive widths, got {self.image_channels}")
        if self.head not in HEAD_TYPES:
            raise ValueError(f"ModelConfig.head {self.head!r}: expected one of {HEAD_TYPES}")
        if self.router not in ROUTER_TYPES:
            raise ValueError(f"ModelConfig.router {self.router!r}: expected one of {ROUTER_TYPES}")
        if self.n_experts < 0 or self.n_shared_experts < 0 or self.moe_every <= 0:
            raise ValueError("ModelConfig.n_experts, n_shared_experts must be >= 0 and moe_every > 0")
        if self.n_experts and not (0 < self.top_k <= self.n_experts and self.expert_hidden > 0):
            raise ValueError(f"ModelConfig: MoE needs 0 < top_k ({self.top_k}) <= n_experts "
                             f"({self.n_experts}) and expert_hidden > 0 (got {self.expert_hidden})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config has unknown keys {unknown}")
        if "image_channels" in d:  # a tuple in the config, a list in JSON
            d = {**d, "image_channels": tuple(d["image_channels"])}
        return cls(**d)


# ---- presets ----------------------------------------------------------------
_SMALL = ModelConfig(obs_linear=True)

PRESETS: dict[str, ModelConfig] = {
    # For tests: < 100k parameters, builds and trains in milliseconds.
    "debug": ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, mlp_hidden=64, history=2, chunk=4,
                         max_lang_len=32, n_readout=1, lang_dim=16, lang_layers=1, lang_heads=2, n_lang_tokens=2,
                         stem_hidden=32, head_hidden=32, obs_linear=True),
    # For tests with cameras: the debug trunk and a tiny image stem.
    "debug-pixels": ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, mlp_hidden=64, history=2, chunk=4,
                                max_lang_len=32, n_readout=1, lang_dim=16, lang_layers=1, lang_heads=2,
                                n_lang_tokens=2, stem_hidden=32, head_hidden=32, obs_linear=True,
                                image_tokens=2, image_channels=(8, 8, 8, 8)),
    # ~1M parameters: the size of the machine-notes latency figure.
    "tiny": ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden=344, stem_hidden=128,
                        head_hidden=128, obs_linear=True),
    # ~2.5M: the 20-minute, 2-core training preset (see module docstring).
    "small": _SMALL,
    # the same with the image stem sized for a 64x64 camera, history 2 (issue 21)
    "small-pixels": dataclasses.replace(_SMALL, image_tokens=4, image_channels=(32, 32, 32, 32)),
    # ~30M: for longer runs or a GPU.
    "base": ModelConfig(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, mlp_hidden=1376, history=3,
                        lang_dim=128, lang_layers=2, lang_heads=4, stem_hidden=512, head_hidden=512,
                        obs_linear=True),
    # The same MoE code as `1t`, small enough to train on this CPU.
    "moe-small": ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, mlp_hidden=344,
                             n_experts=8, top_k=2, expert_hidden=256, n_shared_experts=1, first_dense_layers=1,
                             router="softmax", aux_loss_coef=0.01, stem_hidden=128, head_hidden=128,
                             obs_linear=True),
    # Kimi-K2 proportions: 61 layers, width 7168, 64 heads, 384 routed experts of hidden 2048, 8 active +
    # 1 shared, first layer dense (hidden 18432), sigmoid routing with aux-loss-free bias balancing
    # (DeepSeek-V3) plus a tiny aux loss. Attention is grouped-query (8 KV heads of 128) instead of
    # MLA: same order of attention parameters, simpler kernels. No 160k-token vocabulary: language
    # enters through the byte encoder, so the total is ~1.03T with ~32B active per token.
    "1t": ModelConfig(d_model=7168, n_layers=61, n_heads=64, n_kv_heads=8, mlp_hidden=18432,
                      n_experts=384, top_k=8, expert_hidden=2048, n_shared_experts=1, first_dense_layers=1,
                      router="sigmoid", aux_loss_coef=1e-4, router_bias_rate=1e-3,
                      history=4, chunk=16, max_lang_len=128, n_readout=4,
                      lang_dim=1024, lang_layers=2, lang_heads=8, n_lang_tokens=8,
                      stem_hidden=2048, head_hidden=4096, obs_linear=True),
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; an unknown name raises PresetError listing the closest ones."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(PRESETS), n=3, cutoff=0.3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise PresetError(f"unknown model preset {name!r}: {hint}known presets: {', '.join(PRESETS)}") from None


def preset_name_of(cfg: ModelConfig) -> str | None:
    """The preset whose config equals ``cfg`` exactly, or None for a custom config."""
    return next((n for n, c in PRESETS.items() if c == cfg), None)
