"""FDA construction: objective, initialisations, best-anchor selection, batching, determinism, files."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_fda_models import BUILDERS, D, TinyOpenClipVisual, states, tiny_bert, tiny_clip, tiny_llama

import fda
from fda import FDAConfig
from fda import anchors as anchors_mod
from fda.anchors import derive_seed, gauss_anchors, weight_anchors, weight_row_pool
from fda.blocks import adapter_for

STEPS = 40


def small_config(family: str, **kw) -> FDAConfig:
    kw.setdefault("tokens", {"bert": 3, "roberta": 3}.get(family))  # vision/llama: the model's own T
    return FDAConfig.for_family(family, n_anchors=8, construct_steps=STEPS, progress=False, **kw)


# ------------------------------------------------------------------------------------------------
# the objective does its job on every family


@pytest.mark.parametrize("family", [*BUILDERS, "llama-layer"])
@pytest.mark.parametrize("anchor_init", ["gauss", "weight"])
def test_construction_aligns_the_induced_gradient_with_the_task_vector(family, anchor_init):
    part = "layer" if family == "llama-layer" else None
    family = "llama" if part else family
    model = BUILDERS[family]()
    pre, experts = states(model, 2)
    cfg = small_config(family, part=part, **({"tokens": 4} if part else {}))
    results = fda.construct_block(model, pre, experts, 1, anchor_init, cfg)
    for res in results:
        curve = res.log.mean_cos()
        assert res.log.loss.shape == (STEPS,) and res.log.cos.shape == (STEPS, len(res.log.param_names))
        # "far above the start": at least +0.15 absolute and 1.5x (starting values are 0.1-0.3)
        assert curve.max() > curve[0] + 0.15 and curve.max() > 1.5 * curve[0], (family, curve[0], curve.max())
        assert res.best_loss == pytest.approx(float(res.log.loss.min()))
        assert res.anchors.shape == adapter_for(model, part).anchor_shape(8, res.anchors.shape[1] if res.anchors.dim() == 3 else 1)
        assert torch.isfinite(res.anchors).all()


def test_unalignable_key_bias_is_reported_not_nan():
    model = tiny_bert()
    pre, experts = states(model, 1)
    (res,) = fda.construct_block(model, pre, experts, 0, "gauss", small_config("bert", zero_grad="constant"))
    assert res.log.unalignable == ["attention.self.key.bias"]
    col = res.log.param_names.index("attention.self.key.bias")
    assert torch.isfinite(res.log.cos).all()
    assert (res.log.cos[:, col] == 0).all()  # held at its exact value: 1 - cos = 1
    assert res.log.grad_norm[:, col].max() < 1e-6 * res.log.grad_norm.max()  # and it is zero up to round-off
    assert (res.log.loss >= 1).all()


def test_cosine_with_a_zero_gradient_is_zero_not_nan():
    g = torch.zeros(5, requires_grad=True)
    c = anchors_mod._flat_cos(g, torch.randn(5))
    (grad,) = torch.autograd.grad(c, g)
    assert c.item() == 0.0 and torch.isfinite(grad).all()


# ------------------------------------------------------------------------------------------------
# selection of the best anchors


class _ScriptedObjective:
    """Stands in for the real objective: a fixed loss sequence, recording the X it was given."""

    script = [5.0, 3.0, 1.0, 4.0, 2.0]  # best at step 2, last step not the best
    seen: list[torch.Tensor] = []

    def __init__(self, adapter, block, theta0, experts, kind, batching, zero_grad="keep"):
        self.names = ["w"]
        self.unalignable: list[str] = []
        self.calls = 0
        _ScriptedObjective.seen = []

    def __call__(self, X):
        _ScriptedObjective.seen.append(X.detach().clone())
        value = self.script[self.calls]
        self.calls += 1
        E = X.shape[0]
        # a loss that ignores X, and a gradient that moves it: selection must follow the loss alone
        return torch.full((E,), value), torch.zeros(E, 1), torch.zeros(E, 1), torch.ones_like(X)


def test_best_anchors_are_those_evaluated_at_the_best_step(monkeypatch):
    monkeypatch.setattr(anchors_mod, "_Objective", _ScriptedObjective)
    model = tiny_bert()
    pre, experts = states(model, 1)
    cfg = dataclasses.replace(small_config("bert"), construct_steps=len(_ScriptedObjective.script))
    (res,) = fda.construct_block(model, pre, experts, 0, "gauss", cfg)
    assert res.best_step == 2
    torch.testing.assert_close(res.anchors, _ScriptedObjective.seen[2][0], rtol=0, atol=0)
    assert not torch.equal(res.anchors, _ScriptedObjective.seen[-1][0])  # the anchors did move
    assert res.best_loss == 1.0


def test_zero_steps_returns_the_initial_anchors():
    model = tiny_llama()
    pre, experts = states(model, 1)
    (res,) = fda.construct_block(model, pre, experts, 0, "gauss", dataclasses.replace(small_config("llama"), construct_steps=0))
    assert torch.equal(res.anchors, res.initial) and res.best_step == -1 and math.isnan(res.best_loss)


# ------------------------------------------------------------------------------------------------
# batching and determinism


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("family", ["clip-vision", "bert", "openclip"])
def test_batched_experts_equal_one_at_a_time(family, batching):
    # the stacked [E, ...] anchors with one AdamW and summed losses must equal E separate runs;
    # same backend both ways (vmap and loop agree only up to round-off: see the next test)
    model = BUILDERS[family]()
    pre, experts = states(model, 3)
    cfg = dataclasses.replace(small_config(family), construct_steps=15, batching=batching)
    together = fda.construct_block(model, pre, experts, 0, "weight", cfg)
    for i in range(3):
        (alone,) = fda.construct_block(model, pre, experts, 0, "weight", cfg, experts_subset=[i])
        assert alone.expert == together[i].expert == i
        torch.testing.assert_close(alone.anchors, together[i].anchors, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alone.log.loss, together[i].log.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["clip-vision", "llama", "openclip", "bert"])
def test_vmap_and_python_loop_agree(family):
    model = BUILDERS[family]()
    pre, experts = states(model, 2)
    # key biases held constant: their round-off-level gradient differs between backends
    cfg = dataclasses.replace(small_config(family), construct_steps=10, batching="vmap", zero_grad="constant")
    a = fda.construct_block(model, pre, experts, 0, "gauss", cfg)
    b = fda.construct_block(model, pre, experts, 0, "gauss", dataclasses.replace(cfg, batching="loop"))
    for x, y in zip(a, b):
        torch.testing.assert_close(x.anchors, y.anchors, rtol=1e-4, atol=1e-5)


def test_construction_is_deterministic():
    model = tiny_clip()
    pre, experts = states(model, 2)
    cfg = dataclasses.replace(small_config("clip-vision"), construct_steps=5)
    a = fda.construct_block(model, pre, experts, 1, "weight", cfg)
    b = fda.construct_block(model, pre, experts, 1, "weight", cfg)
    for x, y in zip(a, b):
        assert torch.equal(x.anchors, y.anchors) and torch.equal(x.log.cos, y.log.cos)


def test_singular_value_snapshots():
    model = tiny_bert()
    pre, experts = states(model, 1)
    cfg = dataclasses.replace(small_config("bert"), construct_steps=6, sv_every=3)
    (res,) = fda.construct_block(model, pre, experts, 0, "gauss", cfg)
    assert res.log.sv_steps == [0, 3, 6]
    for s in res.log.sv:
        assert s.shape == (min(8 * 3, D),) and s[0] == pytest.approx(1.0) and (s[:-1] >= s[1:]).all()


def test_budget_anchors_equal_shorter_runs():
    # one long run answers "what would s steps give": its snapshot at s is the s-step run's result
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = dataclasses.replace(small_config("bert"), construct_steps=8)
    long = fda.construct_block(model, pre, experts, 1, "gauss", cfg, snapshot_steps=[0, 3, 8])
    for s in (0, 3, 8):
        short = fda.construct_block(model, pre, experts, 1, "gauss", dataclasses.replace(cfg, construct_steps=s))
        for lg, sh in zip(long, short, strict=True):
            assert torch.equal(lg.budget_anchors[s], sh.anchors), s
    assert torch.equal(long[0].budget_anchors[0], long[0].initial)
    assert torch.equal(long[0].budget_anchors[8], long[0].anchors)
    assert not torch.equal(long[0].budget_anchors[3], long[0].initial)  # construction moved them
    with pytest.raises(ValueError, match="snapshot_steps"):
        fda.construct_block(model, pre, experts, 1, "gauss", cfg, snapshot_steps=[9])


# ------------------------------------------------------------------------------------------------
# initialisations


def test_gauss_reproduces_the_official_vision_draw_and_is_shared():
    model = tiny_clip()
    pre, experts = states(model, 2)
    cfg = dataclasses.replace(small_config("clip-vision"), construct_steps=0)
    T = adapter_for(model).default_tokens()
    torch.manual_seed(0)
    official = torch.randn(T, 8, D) * 0.01  # Vision/utils.py: manual_seed(0) inside initialize_X, [T, n, d]
    inits = [r.initial for b in (0, 1) for r in fda.construct_block(model, pre, experts, b, "gauss", cfg)]
    for x in inits:
        assert torch.equal(x, official.permute(1, 0, 2))


def test_gauss_text_draws_differ_per_block_and_expert_but_repeat():
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = dataclasses.replace(small_config("bert"), construct_steps=0)
    a = fda.construct_block(model, pre, experts, 0, "gauss", cfg)
    b = fda.construct_block(model, pre, experts, 1, "gauss", cfg)
    assert not torch.equal(a[0].initial, a[1].initial) and not torch.equal(a[0].initial, b[0].initial)
    assert torch.equal(a[1].initial, fda.construct_block(model, pre, experts, 0, "gauss", cfg, experts_subset=[1])[0].initial)
    assert a[0].initial.std().item() == pytest.approx(0.01, rel=0.2)


def test_weight_init_padding_reproduces_the_official_layout():
    # open_clip block, d=32: pool = in_proj (96) + out_proj (32) + c_fc (128) = 256 rows < n*T = 8*40
    model = TinyOpenClipVisual(tokens=40)
    ad = adapter_for(model)
    _, (expert,) = states(model, 1)
    block = {k[len(ad.block_prefix(0)) :]: v for k, v in expert.items() if k.startswith(ad.block_prefix(0))}
    pool = weight_row_pool(ad, 0, block)
    assert pool.shape == (256, D)
    torch.testing.assert_close(pool[:96], block["attn.in_proj_weight"], rtol=0, atol=0)
    n, T = 8, 40
    x = weight_anchors(ad, 0, block, n, T, torch.Generator().manual_seed(0))
    assert x.shape == (n, T, D)
    official = x.permute(1, 0, 2).reshape(n * T, D)  # back to [T, n, d], row-major rows
    torch.testing.assert_close(official[:256], pool, rtol=0, atol=0)  # all rows, natural order
    # row r is token r // n of anchor r % n
    for r in (0, 1, 9, 100, 255):
        assert torch.equal(x[r % n, r // n], pool[r])
    # the rest are means of two pool rows
    pad = official[256:]
    for row in pad:  # some pool_i + pool_j == 2 * row
        assert torch.cdist(pool, 2 * row - pool, p=float("inf")).min() < 1e-6


def test_weight_init_subset_path_takes_distinct_rows():
    model = tiny_llama()
    ad = adapter_for(model)
    _, (expert,) = states(model, 1)
    block = {k[len(ad.block_prefix(0)) :]: v for k, v in expert.items() if k.startswith(ad.block_prefix(0))}
    pool = weight_row_pool(ad, 0, block)  # gate + up: 96 rows
    x = weight_anchors(ad, 0, block, 40, 1, torch.Generator().manual_seed(3))
    assert x.shape == (40, D)
    match = (x[:, None] == pool[None]).all(-1)
    assert (match.sum(1) >= 1).all() and len(set(match.float().argmax(1).tolist())) == 40


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "gauss", 1, 2) == derive_seed(0, "gauss", 1, 2)
    assert len({derive_seed(0, "gauss", b, e) for b in range(4) for e in range(4)}) == 16


def test_gauss_anchor_shape_for_text():
    ad = adapter_for(tiny_bert())
    assert gauss_anchors(ad, 4, 5, 0.01, torch.Generator().manual_seed(0)).shape == (4, 5, D)


# ------------------------------------------------------------------------------------------------
# files


def test_save_and_load_anchors_round_trip(tmp_path):
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = dataclasses.replace(small_config("bert"), construct_steps=3)
    res = fda.construct_block(model, pre, experts, 1, "weight", cfg)[1]
    path = tmp_path / "anchors" / "block1" / "taskb.safetensors"
    meta = {"anchor_init": "weight", "task": "taskb", **cfg.construction_metadata()}
    fda.save_anchors(res, path, meta)
    tensor, got = fda.load_anchors(path)
    assert torch.equal(tensor, res.anchors)
    for k, v in meta.items():
        assert got[k] == v
    assert got["block"] == 1 and got["expert"] == 1 and got["best_step"] == res.best_step
    assert got["best_loss"] == pytest.approx(res.best_loss)
    assert got["log"]["steps"] == 3 and got["log"]["unalignable"] == ["attention.self.key.bias"]
    # resolved settings are saved even when the caller passes none
    fda.save_anchors(res, tmp_path / "bare.safetensors")
    _, bare = fda.load_anchors(tmp_path / "bare.safetensors")
    assert bare["tokens"] == 3 and bare["anchor_init"] == "weight" and bare["zero_grad"] == "keep" and bare["n_anchors"] == 8
    assert not list(path.parent.glob(".*tmp"))  # atomic write left no temporary file
