"""FDA adaptation, assembly and the one-call API."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_fda_models import BUILDERS, states, tiny_bert, tiny_clip, tiny_llama

import fda
from fda import FDAConfig
from fda.adapt import adapt_loss
from fda.blocks import adapter_for
from fda.io.checkpoints import LazyCheckpoint, save_state_dict


def small_config(family: str, init: str = "pretrained", **kw) -> FDAConfig:
    tokens = {"bert": 3, "roberta": 3}.get(family)
    base = dict(n_anchors=16, tokens=tokens, construct_steps=30, progress=False, adapt_epochs=20, adapt_batch=8)
    base.update(kw)
    return FDAConfig.for_family(family, init=init, **base)


def ta_merge(pre, experts, lam):
    return {k: (v + sum(lam * (e[k] - v) for e in experts)) if v.is_floating_point() else v for k, v in pre.items()}


def block_cos(adapter, block, update_from, update_to, target):
    keys = adapter.block_keys(block)
    u = torch.cat([(update_to[k] - update_from[k]).flatten() for k in keys])
    t = torch.cat([(target[k] - update_from[k]).flatten() for k in keys])
    return float(F.cosine_similarity(u, t, dim=0))


# ------------------------------------------------------------------------------------------------
# losses


def test_adaptation_losses_use_sum_reduction():
    out, y = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    assert adapt_loss(out, y, "mse") == pytest.approx(float(((out - y) ** 2).sum()), rel=1e-5)
    assert adapt_loss(out, y, "l1") == pytest.approx(float((out - y).abs().sum()), rel=1e-5)
    cos = F.cosine_similarity(out.reshape(4, -1), y.reshape(4, -1), dim=-1)
    assert adapt_loss(out, y, "cos") == pytest.approx(-float(cos.sum()), rel=1e-5)
    with pytest.raises(ValueError, match="cos"):
        adapt_loss(out, y, "huber")


# ------------------------------------------------------------------------------------------------
# adaptation


@pytest.mark.parametrize(("family", "init"), [("bert", "pretrained"), ("clip-vision", "pretrained"), ("llama", "ta"), ("bert", "tsvm")])
def test_adaptation_lowers_its_loss(family, init):
    model = BUILDERS[family]()
    pre, experts = states(model, 2)
    init_state = ta_merge(pre, experts, 0.3) if init != "pretrained" else None
    cfg = small_config(family, init, adapt_lr=1e-3 if init == "pretrained" else 1e-2, train_mode=False)
    built = fda.construct_block(model, pre, experts, 0, "gauss", cfg)
    res = fda.adapt_block(model, pre, experts, 0, [r.anchors for r in built], init, init_state, cfg)
    assert res.log.final_loss < res.log.initial_loss
    assert res.log.epoch_loss.shape == (cfg.adapt_epochs,)
    assert res.log.loss.shape == (cfg.adapt_epochs * 4,)  # 32 pooled anchors / batch 8
    assert set(res.params) == set(adapter_for(model).block_keys(0))


@pytest.mark.parametrize("family", ["bert", "clip-vision", "llama"])
@pytest.mark.parametrize("init", ["ta", "tsvm", "wudi", "isoc", "isocts"])
def test_zero_epochs_from_a_merged_init_reproduce_the_merge_exactly(family, init):
    model = BUILDERS[family]()
    pre, experts = states(model, 3)
    if init == "ta":
        merged = ta_merge(pre, experts, 0.3)
    else:  # any merged model: a random point near θ0
        merged = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in pre.items()}
    cfg = small_config(family, init, adapt_epochs=0, ta_lambda=0.3)
    anchors = [torch.randn(adapter_for(model).anchor_shape(4, 3)) for _ in experts]
    res = fda.adapt_block(model, pre, experts, 1, anchors, init, merged, cfg)
    for k, v in res.params.items():
        assert torch.equal(v, merged[k]), k


def test_ta_init_without_init_state_is_the_ta_merge():
    model = tiny_llama()
    pre, experts = states(model, 2)
    cfg = small_config("llama", "ta", adapt_epochs=0, ta_lambda=0.4)
    res = fda.adapt_block(model, pre, experts, 0, [torch.randn(4, 32) for _ in experts], "ta", None, cfg)
    expected = ta_merge(pre, experts, 0.4)
    for k, v in res.params.items():
        torch.testing.assert_close(v, expected[k])


@pytest.mark.parametrize("family", ["bert", "clip-vision", "openclip"])
def test_one_expert_from_pretrained_moves_towards_that_expert(family):
    model = BUILDERS[family]()
    pre, experts = states(model, 1)
    cfg = small_config(family, adapt_lr=1e-3, adapt_epochs=30)
    built = fda.construct_block(model, pre, experts, 0, "gauss", cfg)
    res = fda.adapt_block(model, pre, experts, 0, [r.anchors for r in built], "pretrained", None, cfg)
    assert block_cos(adapter_for(model), 0, pre, {**pre, **res.params}, experts[0]) > 0.1


def test_adaptation_is_deterministic_with_dropout_on():
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = small_config("bert", "ta", adapt_epochs=3)
    assert cfg.train_mode is True  # official NLU merged init: train mode (dropout)
    anchors = [torch.randn(8, 3, 32) for _ in experts]
    a = fda.adapt_block(model, pre, experts, 0, anchors, "ta", None, cfg)
    b = fda.adapt_block(model, pre, experts, 0, anchors, "ta", None, cfg)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    c = fda.adapt_block(model, pre, experts, 0, anchors, "ta", None, dataclasses.replace(cfg, train_mode=False))
    assert not all(torch.equal(a.params[k], c.params[k]) for k in a.params)  # dropout did something


@pytest.mark.parametrize(("init", "train_mode"), [("ta", True), ("pretrained", False)])
def test_snapshots_equal_shorter_runs_exactly(init, train_mode):
    """One run with snapshots gives every shorter run of an epoch grid (dropout on included)."""
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = small_config("bert", init, adapt_epochs=6, adapt_lr=1e-3, train_mode=train_mode)
    anchors = [torch.randn(8, 3, 32) for _ in experts]
    held = [torch.randn(4, 3, 32) for _ in experts]
    full = fda.adapt_block(model, pre, experts, 0, anchors, init, None, cfg, snapshot_epochs=[0, 2, 5],
                           heldout_anchors=held)
    assert sorted(full.snapshots) == [0, 2, 5]
    for e in (0, 2, 5):
        short = fda.adapt_block(model, pre, experts, 0, anchors, init, None, dataclasses.replace(cfg, adapt_epochs=e))
        assert all(torch.equal(full.snapshots[e][k], short.params[k]) for k in short.params), e
    plain = fda.adapt_block(model, pre, experts, 0, anchors, init, None, cfg)
    assert all(torch.equal(full.params[k], plain.params[k]) for k in plain.params)  # snapshots change nothing
    assert sorted(full.log.heldout_loss) == [0, 2, 5, 6]
    assert full.log.to_dict()["heldout_loss"].keys() == {"0", "2", "5", "6"}
    assert "heldout_loss" not in plain.log.to_dict()  # logs without held-out anchors are as before


def test_heldout_loss_is_the_pooled_loss_on_anchors_never_trained_on():
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = small_config("bert", "pretrained", adapt_epochs=4, adapt_lr=1e-3, train_mode=False)
    anchors = [torch.randn(8, 3, 32) for _ in experts]
    # held-out anchors equal to the training anchors: their loss is the pooled training loss
    same = fda.adapt_block(model, pre, experts, 0, anchors, "pretrained", None, cfg, heldout_anchors=anchors)
    assert same.log.heldout_loss[0] == pytest.approx(same.log.initial_loss, rel=1e-6)
    assert same.log.heldout_loss[4] == pytest.approx(same.log.final_loss, rel=1e-6)


def test_snapshot_epochs_outside_the_run_are_refused():
    model = tiny_bert()
    pre, experts = states(model, 1)
    cfg = small_config("bert", adapt_epochs=3)
    for bad in ([4], [-1], [1, 1]):
        with pytest.raises(ValueError, match="snapshot epochs"):
            fda.adapt_block(model, pre, experts, 0, [torch.randn(4, 3, 32)], "pretrained", None, cfg, snapshot_epochs=bad)
    with pytest.raises(ValueError, match="anchor"):
        fda.adapt_block(model, pre, experts, 0, [torch.randn(4, 3, 32)], "pretrained", None, cfg,
                        heldout_anchors=[torch.randn(2, 3, 32)] * 2)
    with pytest.raises(ValueError, match="NaN|non-finite"):
        fda.adapt_block(model, pre, experts, 0, [torch.randn(4, 3, 32)], "pretrained", None, cfg,
                        heldout_anchors=[torch.full((2, 3, 32), float("nan"))])


def test_merged_init_other_than_ta_needs_its_state():
    model = tiny_bert()
    pre, experts = states(model, 1)
    with pytest.raises(ValueError, match="init_state"):
        fda.adapt_block(model, pre, experts, 0, [torch.randn(4, 3, 32)], "wudi", None, small_config("bert", "wudi"))


# ------------------------------------------------------------------------------------------------
# config defaults


def test_family_defaults_follow_the_official_scripts():
    v = FDAConfig.for_family("clip-vision")
    assert (v.n_anchors, v.construct_steps, v.construct_lr, v.sigma, v.similarity) == (64, 1200, 1e-2, 0.01, "cos")
    assert (v.adapt_epochs, v.adapt_lr, v.adapt_batch, v.adapt_loss, v.non_block) == (100, 1e-5, 128, "cos", "pretrained")
    t = FDAConfig.for_family("roberta")
    assert (t.adapt_epochs, t.adapt_lr, t.adapt_loss, t.train_mode) == (125, 5e-5, "mse", False)
    tm = FDAConfig.for_family("roberta", init="ta")
    assert (tm.adapt_epochs, tm.adapt_lr, tm.train_mode, tm.ta_lambda) == (100, 1e-2, True, 0.3)
    large = FDAConfig.for_family("roberta", init="ta", size="large")
    assert (large.adapt_epochs, large.ta_lambda) == (15, 0.2)
    llm = FDAConfig.for_family("llama", init="ta")
    assert (llm.n_anchors, llm.construct_steps, llm.adapt_epochs, llm.adapt_lr, llm.adapt_batch, llm.non_block) == (
        8192, 200, 50, 1e-2, 8192, "init")  # fmt: skip
    resolved = FDAConfig.for_family("clip-vision").resolved(adapter_for(tiny_clip()))
    assert resolved.tokens == 10 and resolved.gauss_shared is True
    assert FDAConfig().resolved(adapter_for(tiny_bert())).family == "bert"
    with pytest.raises(ValueError, match="unknown family"):
        FDAConfig.for_family("gpt2")


# ------------------------------------------------------------------------------------------------
# assembly and the one-call API


@pytest.mark.parametrize("non_block", ["pretrained", "init"])
def test_assemble_applies_the_non_block_policy(non_block):
    model = tiny_clip()
    ad = adapter_for(model)
    pre, experts = states(model, 2)
    init_state = ta_merge(pre, experts, 0.3)
    adapted = {k: torch.full_like(pre[k], 7.0) for k in ad.block_keys(1)}
    out = fda.assemble(pre, init_state, adapted, model, small_config("clip-vision", "ta", non_block=non_block))
    src = pre if non_block == "pretrained" else init_state
    for k in out:
        expected = adapted[k] if k in adapted else src[k]
        assert torch.equal(out[k], expected), k
    assert set(out) == set(pre)


def test_merge_end_to_end_from_pretrained_and_from_a_given_init():
    model = tiny_bert()
    ad = adapter_for(model)
    pre, experts = states(model, 2)
    cfg = small_config("bert", construct_steps=5, adapt_epochs=2, adapt_lr=1e-3)
    merged = fda.merge(model, pre, experts, init="pretrained", anchor_init="weight", config=cfg)
    assert set(merged) == set(pre)
    assert all(merged[k].dtype == pre[k].dtype for k in pre)
    changed = {k for k in pre if not torch.equal(merged[k], pre[k])}
    assert changed and changed <= ad.all_block_keys()
    init_state = ta_merge(pre, experts, 0.3)
    cfg_ta = small_config("bert", "ta", construct_steps=3, adapt_epochs=0, non_block="init")
    merged_ta = fda.merge(model, pre, experts, init="ta", config=cfg_ta, init_state=init_state)
    assert all(torch.equal(merged_ta[k], init_state[k]) for k in pre)  # zero epochs: the init itself


def test_lazy_checkpoints_give_the_same_anchors(tmp_path):
    model = tiny_llama()
    pre, experts = states(model, 2)
    save_state_dict(pre, tmp_path / "pre.safetensors")
    for i, e in enumerate(experts):
        save_state_dict(e, tmp_path / f"e{i}.safetensors")
    lazy = [LazyCheckpoint(tmp_path / f"e{i}.safetensors") for i in range(2)]
    cfg = small_config("llama", construct_steps=3)
    a = fda.construct_block(model, LazyCheckpoint(tmp_path / "pre.safetensors"), lazy, 1, "weight", cfg)
    b = fda.construct_block(model, pre, experts, 1, "weight", cfg)
    assert all(torch.equal(x.anchors, y.anchors) for x, y in zip(a, b))


def test_merge_computes_the_init_with_baselines():
    baselines = pytest.importorskip("baselines")
    if "ta" not in getattr(baselines, "METHODS", {}):
        pytest.skip("baselines.merge('ta') is not available yet")
    model = tiny_llama()
    pre, experts = states(model, 2)
    cfg = small_config("llama", "ta", construct_steps=2, adapt_epochs=0, ta_lambda=0.5)
    merged = fda.merge(model, pre, experts, init="ta", config=cfg)
    expected = baselines.merge("ta", pre, experts, alpha=0.5, coverage="fda-llm")
    for k in pre:  # blocks: zero epochs keep the init; outside: the LLM keeps the init too
        assert torch.equal(merged[k], expected[k]), k


@pytest.mark.parametrize(("family", "preset"), [("clip-vision", "fda-vision"), ("bert", "fda-nlu")])
@pytest.mark.parametrize("init", ["isoc", "isocts"])
def test_merge_computes_an_iso_init_with_the_familys_coverage(family, preset, init):
    """Iso-C / Iso-CTS are merged inits like TSV-M and WUDI: fda.merge computes them with
    baselines (the family's coverage preset, the method's default α) and, with zero epochs,
    returns them unchanged in the blocks; a short adaptation moves the coefficients."""
    import baselines

    model = BUILDERS[family]()
    ad = adapter_for(model)
    pre, experts = states(model, 3)
    expected = baselines.merge(init, pre, experts, coverage=preset)
    cfg = small_config(family, init, construct_steps=2, adapt_epochs=0)
    merged = fda.merge(model, pre, experts, init=init, config=cfg)
    for k in ad.all_block_keys():
        assert torch.equal(merged[k], expected[k]), k
    cfg = small_config(family, init, construct_steps=2, adapt_epochs=2, adapt_lr=1e-2)
    built = fda.construct_block(model, pre, experts, 0, "gauss", cfg)
    res = fda.adapt_block(model, pre, experts, 0, [r.anchors for r in built], init, expected, cfg)
    assert res.log.final_loss < res.log.initial_loss


def test_assemble_accepts_block_state_dicts_by_index():
    model = tiny_bert()
    ad = adapter_for(model)
    pre, experts = states(model, 1)
    blocks = {b: {k: torch.full_like(pre[k], float(b + 1)) for k in ad.block_keys(b)} for b in range(2)}
    out = fda.assemble(pre, None, blocks, model, small_config("bert"))
    assert all(torch.equal(out[k], blocks[b][k]) for b in blocks for k in blocks[b])
    with pytest.raises(KeyError, match="twice"):
        fda.assemble(pre, None, [blocks[0], blocks[0]], model, small_config("bert"))


def test_pretrained_passed_as_init_state():
    model = tiny_llama()
    pre, experts = states(model, 2)
    cfg = small_config("llama", "ta", adapt_epochs=0, ta_lambda=0.5)
    anchors = [torch.randn(4, 32) for _ in experts]
    res = fda.adapt_block(model, pre, experts, 0, anchors, "ta", pre, cfg)  # TA: rebuilt from the experts
    expected = ta_merge(pre, experts, 0.5)
    assert all(torch.allclose(v, expected[k]) and not torch.equal(v, pre[k]) for k, v in res.params.items())
    with pytest.raises(ValueError, match="merged model"):
        fda.adapt_block(model, pre, experts, 0, anchors, "wudi", pre, small_config("llama", "wudi"))
    import json

    assert json.dumps(res.log.tolist())  # JSON-able log
