"""Warm-start a new machine's stem and head from a known machine, channel by channel.

``--init-from dc``: each channel and action of the new spec is matched to the
source's of the same name (after ``--channel-map`` renames; units must agree),
and the source's stem columns and head rows are copied rescaled for the two
machines' normalization stats, so on raw values the new entry computes exactly
the source's controller on the channels they share; unmatched channels start
at zero weight and training adds what differs. The test:
``tests/train/test_transfer.py``; the rationale and the rescaling:
docs/adaptation.md#warm-start-from-a-known-machine---init-from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genba.train.finetune_data import FinetuneError


@dataclass(frozen=True)
class ChannelMatch:
    """Which channels of ``target`` take over which channels of ``source`` (pairs of names, target first)."""

    target: str
    source: str
    obs: tuple[tuple[str, str], ...]
    action: tuple[tuple[str, str], ...]
    unmatched_obs: tuple[str, ...]
    unmatched_action: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"target": self.target, "source": self.source, "obs": dict(self.obs), "action": dict(self.action),
                "unmatched_obs": list(self.unmatched_obs), "unmatched_action": list(self.unmatched_action)}


def parse_channel_map(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"i_a=i,u_a=u"`` -> ``(("i_a", "i"), ("u_a", "u"))``; a malformed entry is an error naming it."""
    out = []
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        new, sep, old = item.partition("=")
        if not sep or not new.strip() or not old.strip():
            raise FinetuneError(f"--channel-map entry {item!r}: expected NEW=SOURCE, e.g. i_a=i")
        out.append((new.strip(), old.strip()))
    return tuple(out)


def _rename(name: str, renames: tuple[tuple[str, str], ...]) -> tuple[str, str | None]:
    """The source name ``name`` maps to, and the rename rule used (whole name or ``<prefix>_NEW`` suffix)."""
    for new, old in renames:
        if name == new:
            return old, new
        if name.endswith("_" + new):
            return name[: -len(new)] + old, new
    return name, None


def _pair(names, units, src_names, src_units, renames, used, what: str, target: str, source: str):
    pairs, unmatched = [], []
    for name, unit in zip(names, units):
        cand, rule = _rename(name, renames)
        if cand not in src_names:
            unmatched.append(name)
            continue
        src_unit = src_units[src_names.index(cand)]
        if unit != src_unit:
            raise FinetuneError(f"--init-from {source}: {what} channel {name!r} of {target!r} is in {unit!r} but "
                                f"{source!r}'s {cand!r} is in {src_unit!r}; map it elsewhere or leave it out")
        pairs.append((name, cand))
        if rule is not None:
            used.add(rule)
    return tuple(pairs), tuple(unmatched)


def match_channels(target, source, renames: tuple[tuple[str, str], ...] = ()) -> ChannelMatch:
    """Pair ``target``'s observation and action channels with ``source``'s (two EmbodimentSpecs) by name."""
    used: set[str] = set()
    obs, free_obs = _pair(target.obs_names, target.obs_units, source.obs_names, source.obs_units, renames, used,
                          "observation", target.name, source.name)
    act, free_act = _pair(target.action_names, target.action_units, source.action_names, source.action_units,
                          renames, used, "action", target.name, source.name)
    idle = [new for new, _ in renames if new not in used]
    if idle:
        raise FinetuneError(f"--channel-map {', '.join(idle)}: no channel of {target.name!r} is named so or ends in "
                            f"'_<name>' (its channels: {', '.join(target.obs_names + target.action_names)})")
    if not act:
        raise FinetuneError(f"--init-from {source.name}: none of {target.name!r}'s actions "
                            f"({', '.join(target.action_names)}) matches one of {source.name!r}'s "
                            f"({', '.join(source.action_names)}); name the pairs with --channel-map NEW=SOURCE")
    return ChannelMatch(target.name, source.name, obs, act, free_obs, free_act)


def plan_warm_start(cfg, known: dict, new_specs: list, adapted: list) -> list[ChannelMatch]:
    """The channel matches ``cfg.init_from`` asks for (one per new embodiment), checked before any training."""
    if cfg.init_from is None:
        return []
    if cfg.init_from not in known:
        raise FinetuneError(f"--init-from {cfg.init_from!r}: the checkpoint has no such embodiment "
                            f"(it has {', '.join(sorted(known))})")
    if not new_specs:
        raise FinetuneError(f"--init-from {cfg.init_from}: the data adds no new embodiment (it adapts "
                            f"{', '.join(adapted)}, which keep their own stems and heads)")
    return [match_channels(s, known[cfg.init_from], tuple(cfg.channel_map)) for s in new_specs]


def _indices(pairs, target_names, source_names) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tensor([target_names.index(a) for a, _ in pairs], dtype=torch.long)
    s = torch.tensor([source_names.index(b) for _, b in pairs], dtype=torch.long)
    return t, s


@torch.no_grad()
def warm_start(model, match: ChannelMatch, norm) -> None:
    """Overwrite ``model``'s stem and head of ``match.target`` from those of ``match.source``.

    ``norm`` is a :class:`genba.data.transforms.Normalize` holding both machines' stats: the copied weights
    are rescaled so that the target computes, on raw values, what the source computes on the matched channels.
    """
    cfg = model.cfg
    if cfg.head != "l1":
        raise FinetuneError(f"--init-from needs the L1 action head (this checkpoint's head is {cfg.head!r})")
    tspec, sspec = model.specs[match.target], model.specs[match.source]
    oj, ok = _indices(match.obs, tspec.obs_names, sspec.obs_names)
    aj, ak = _indices(match.action, tspec.action_names, sspec.action_names)
    o_shift_t, o_scale_t = _affine(norm, match.target, "observation.state")
    o_shift_s, o_scale_s = _affine(norm, match.source, "observation.state")
    a_shift_t, a_scale_t = _affine(norm, match.target, "action")
    a_shift_s, a_scale_s = _affine(norm, match.source, "action")
    # target-normalized x_t = (raw - shift_t) / scale_t; the source saw (raw - shift_s) / scale_s = x_t * ratio + offset
    ratio = o_scale_t[oj] / o_scale_s[ok]
    offset = (o_shift_t[oj] - o_shift_s[ok]) / o_scale_s[ok]
    # source-normalized action y_s -> target-normalized y_t = y_s * gain + bias
    gain = a_scale_s[ak] / a_scale_t[aj]
    bias = (a_shift_s[ak] - a_shift_t[aj]) / a_scale_t[aj]
    _stem(model.stems[match.source], model.stems[match.target], oj, ok, ratio, offset)
    _head(model.heads[match.source], model.heads[match.target], aj, ak, gain, bias)
    if model.heads[match.target].obs_linear is not None:
        _obs_linear(model.heads[match.source].obs_linear, model.heads[match.target].obs_linear,
                    (oj, ok, ratio, offset), (aj, ak, gain), cfg.history)


def _affine(norm, emb: str, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    shift, scale = norm.affine(emb, key)
    return torch.as_tensor(np.asarray(shift, np.float64)), torch.as_tensor(np.asarray(scale, np.float64))


def _stem(src, dst, oj, ok, ratio, offset) -> None:
    w_s, b_s = src.fc1.weight.double(), src.fc1.bias.double()  # (hidden, obs_s)
    w = torch.zeros(dst.fc1.weight.shape, dtype=torch.float64)
    w[:, oj] = w_s[:, ok] * ratio
    dst.fc1.weight.copy_(w)
    dst.fc1.bias.copy_(b_s + w_s[:, ok] @ offset)
    for name in ("fc2.weight", "fc2.bias", "pad", "token"):
        dst.get_parameter(name).copy_(src.get_parameter(name))


def _head(src, dst, aj, ak, gain, bias) -> None:
    for name in ("readout", "fc1.weight", "fc1.bias"):
        dst.get_parameter(name).copy_(src.get_parameter(name))
    chunk, hidden = src.chunk, src.fc2.in_features
    w_s = src.fc2.weight.double().view(chunk, -1, hidden)  # (C, A_s, hidden)
    b_s = src.fc2.bias.double().view(chunk, -1)  # (C, A_s)
    w = torch.zeros(chunk, dst.action_dim, hidden, dtype=torch.float64)
    b = torch.zeros(chunk, dst.action_dim, dtype=torch.float64)
    w[:, aj] = w_s[:, ak] * gain[:, None]
    b[:, aj] = b_s[:, ak] * gain + bias  # the action shift goes here once (not into the linear path too)
    dst.fc2.weight.copy_(w.view_as(dst.fc2.weight))
    dst.fc2.bias.copy_(b.view_as(dst.fc2.bias))


def _obs_linear(src, dst, obs, act, history: int) -> None:
    """Both ends of the linear history -> chunk path: input columns as the stem's, output rows as the head's."""
    (oj, ok, ratio, offset), (aj, ak, gain) = obs, act
    chunk = src.chunk
    w_s = src.fc.weight.double().view(chunk, src.action_dim, history, -1)  # (C, A_s, H, O_s)
    b_s = src.fc.bias.double().view(chunk, src.action_dim)  # (C, A_s)
    sub = w_s[:, ak][..., ok]  # (C, a, H, o): matched actions x matched channels
    rows = torch.zeros(chunk, len(ak), history, dst.fc.in_features // history, dtype=torch.float64)
    rows[..., oj] = sub * ratio
    w = torch.zeros(chunk, dst.action_dim, history, rows.shape[-1], dtype=torch.float64)
    b = torch.zeros(chunk, dst.action_dim, dtype=torch.float64)
    w[:, aj] = rows * gain[None, :, None, None]
    b[:, aj] = (b_s[:, ak] + (sub * offset).sum(dim=(-1, -2))) * gain
    dst.fc.weight.copy_(w.view_as(dst.fc.weight))
    dst.fc.bias.copy_(b.view_as(dst.fc.bias))
