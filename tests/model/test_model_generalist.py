import dataclasses

import pytest
import torch

from genba.model.config import get_preset
from tests.fixtures import build_model, toy_batch, toy_spec


def test_shapes_mixed_embodiments(debug_cfg, specs):
    model = build_model(debug_cfg, specs)
    batch = toy_batch(debug_cfg, specs, B=3)
    batch["drive"] = {k: v[:2] for k, v in batch["drive"].items()}  # unequal batch sizes per embodiment
    loss, metrics = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"loss", "loss/action", "loss/arm", "loss/drive"} <= set(metrics)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters()), "every parameter gets a gradient"
    out = model.sample_actions(batch)
    assert out["arm"].shape == (3, debug_cfg.chunk, 3) and out["drive"].shape == (2, debug_cfg.chunk, 2)


def test_masked_loss_ignores_padding(debug_cfg, specs):
    model = build_model(debug_cfg, specs)
    batch = toy_batch(debug_cfg, specs)
    for b in batch.values():
        b["action_is_pad"][:, -2:] = True
    torch.manual_seed(1)
    ref, _ = model.loss(batch)
    for b in batch.values():
        b["action"][:, -2:] = 1e3  # garbage where padded
    torch.manual_seed(1)
    again, _ = model.loss(batch)
    assert torch.allclose(ref, again)
    batch["arm"]["action"][:, 0] += 5.0  # a valid step does count
    torch.manual_seed(1)
    assert not torch.allclose(ref, model.loss(batch)[0])


def test_padded_history_uses_pad_token(specs):
    cfg = get_preset("debug")
    model = build_model(cfg, specs)
    batch = toy_batch(cfg, specs)
    batch["arm"]["observation.state_is_pad"][:, 0] = True
    ref = model.sample_actions(batch)["arm"]
    batch["arm"]["observation.state"][:, 0] = 99.0  # padded frame's value must not matter
    assert torch.allclose(ref, model.sample_actions(batch)["arm"])


def test_init_deterministic_and_after_to_empty(specs):
    cfg = get_preset("debug")
    a, b, c = build_model(cfg, specs, seed=3), build_model(cfg, specs, seed=3), build_model(cfg, specs, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    reversed_specs = dict(reversed(list(specs.items())))  # spec order must not change weights
    sd = build_model(cfg, reversed_specs, seed=3).state_dict()
    assert all(torch.equal(sa[k], sd[k]) for k in sa)


def test_cached_language_summary_matches(specs):
    cfg = get_preset("debug")
    model = build_model(cfg, specs).eval()
    batch = toy_batch(cfg, specs)
    ref = model.sample_actions(batch)
    for b in batch.values():
        b["lang_summary"] = model.encode_language(b.pop("lang_tokens"), b.pop("lang_mask"))
    out = model.sample_actions(batch)
    assert all(torch.allclose(ref[n], out[n], atol=1e-6) for n in ref)


def test_repeated_instructions_are_encoded_once_with_the_same_values_and_gradients(specs):
    from genba.data.transforms import TokenizeInstruction

    cfg = get_preset("debug")
    model = build_model(cfg, specs)
    tok = TokenizeInstruction(cfg.max_lang_len)
    texts = ["open the drawer", "引き出しを開ける", "open the drawer", "push", "push", "open the drawer"]
    samples = [tok({"instruction": t}) for t in texts]
    tokens = torch.stack([torch.as_tensor(x["lang_tokens"]) for x in samples])  # (6, L)
    mask = torch.stack([torch.as_tensor(x["lang_mask"]) for x in samples])
    calls = []
    hook = model.lang.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    shared = model.encode_language(tokens, mask)  # (6, S, D) from 3 encoder rows
    hook.remove()
    assert calls == [3]
    weight = torch.randn_like(shared)
    (shared * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.lang.named_parameters()}
    model.zero_grad()
    each = model.lang(tokens, mask.bool())  # every row encoded on its own (the definition)
    (each * weight).sum().backward()
    torch.testing.assert_close(shared, each, atol=1e-6, rtol=1e-5)
    for n, p in model.lang.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")  # noqa: B023


def test_instruction_changes_the_output_english_and_japanese(specs):
    cfg = get_preset("debug")
    model = build_model(cfg, specs)
    en = model.sample_actions(toy_batch(cfg, specs, text="open the drawer"))["arm"]
    ja = model.sample_actions(toy_batch(cfg, specs, text="引き出しを開ける"))["arm"]
    assert torch.isfinite(ja).all() and not torch.allclose(en, ja)


def test_add_embodiment_keeps_trunk(specs):
    cfg = get_preset("debug")
    model = build_model(cfg, specs)
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    new = toy_spec("crane", 5, 4)
    model.add_embodiment(new)
    assert all(torch.equal(before[k], v) for k, v in model.trunk.state_dict().items())
    batch = toy_batch(cfg, {"crane": new})
    assert model.sample_actions(batch)["crane"].shape == (3, cfg.chunk, 4)
    with pytest.raises(ValueError, match="already"):
        model.add_embodiment(new)


def test_bad_batch_errors_name_the_input(specs):
    cfg = get_preset("debug")
    model = build_model(cfg, specs)
    batch = toy_batch(cfg, specs)
    with pytest.raises(KeyError, match="robot"):
        model.loss({"robot": batch["arm"]})
    batch["arm"]["observation.state"] = batch["arm"]["observation.state"][..., :5]
    with pytest.raises(ValueError, match="observation.state"):
        model.loss(batch)


@pytest.mark.parametrize("head,steps,lr,factor", [("l1", 120, 3e-3, 0.3), ("flow", 150, 5e-3, 0.6)])
def test_overfits_a_tiny_batch(specs, head, steps, lr, factor):
    """A few steps on one batch: the sampled chunks approach the targets (for both heads)."""
    cfg = dataclasses.replace(get_preset("debug"), head=head)
    model = build_model(cfg, specs)
    batch = toy_batch(cfg, specs, B=2)

    def error() -> float:
        out = model.sample_actions(batch, generator=torch.Generator().manual_seed(0))
        return sum((out[n] - batch[n]["action"]).abs().mean().item() for n in out) / len(out)

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    torch.manual_seed(0)
    first = error()
    for _ in range(steps):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert error() < factor * first, (first, error())


def test_language_alone_separates_tasks_that_share_every_state():
    """Two instructions on identical states demand opposite actions: only the instruction can tell them
    apart (Meta-World reach / push / pick-place share a scene), so a model that ignores it stays at 0."""
    cfg = get_preset("debug")
    spec = toy_spec("arm", 5, 2)
    model = build_model(cfg, {"arm": spec})
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = {sign: toy_batch(cfg, {"arm": spec}, B=16, seed=1, text=text)["arm"]
               for sign, text in ((1.0, "reach the goal"), (-1.0, "押して動かす"))}
    for sign, b in batches.items():
        b["action"] = torch.full_like(b["action"], sign)
    for _ in range(60):
        for b in batches.values():
            loss, _ = model.loss({"arm": b})
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        means = {sign: model.sample_actions({"arm": b})["arm"].mean().item() for sign, b in batches.items()}
    assert means[1.0] > 0.5 and means[-1.0] < -0.5, means


def test_observation_linear_path_starts_at_zero_and_adds_to_the_head(specs):
    cfg = get_preset("debug")  # the L1 head
    assert cfg.obs_linear
    fresh = build_model(cfg, specs, linear=False)
    plain = build_model(dataclasses.replace(cfg, obs_linear=False), specs, linear=False)
    batch = toy_batch(cfg, specs, B=3)
    for b in batch.values():
        b["observation.state_is_pad"][:] = False
    for name, out in fresh.sample_actions(batch).items():  # zero at init: the model starts as without it
        assert torch.equal(out, plain.sample_actions(batch)[name])
    model = build_model(cfg, specs)  # random linear weights
    with torch.no_grad():
        for head in model.heads.values():  # the head itself outputs exactly zero
            head.fc2.weight.zero_()
            head.fc2.bias.zero_()
    for name, out in model.sample_actions(batch).items():
        lin = model.heads[name].obs_linear.fc
        want = batch[name]["observation.state"].flatten(1) @ lin.weight.T + lin.bias
        torch.testing.assert_close(out, want.view_as(out))
        # the loss is the head's error on the residual: target = linear part -> zero loss for this embodiment
        batch[name]["action"] = want.view_as(out).detach().clone()
        batch[name]["action_is_pad"][:] = False
    _, metrics = model.loss(batch)
    assert all(metrics[f"loss/{n}"] < 1e-6 for n in specs)


def test_old_configs_without_the_linear_path_still_build(specs):
    cfg = dataclasses.replace(get_preset("debug"), obs_linear=False)  # checkpoints written before it existed
    model = build_model(cfg, specs)
    assert all(h.obs_linear is None for h in model.heads.values())
    assert not any("obs_linear" in k for k in model.state_dict())
