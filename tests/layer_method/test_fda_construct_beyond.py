"""Construction options BEYOND the paper: the L-BFGS optimiser and the ``taskspan`` anchor init.

The paper's defaults (AdamW, gauss / weight) are covered by test_fda_construct.py; here: that the
new options are budgeted in objective evaluations, keep the best-anchor and snapshot contracts,
stay per-expert independent, fail clearly on bad settings, and that ``taskspan`` draws tokens
from the task vector's row span at the weight rows' scale.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_fda_models import BUILDERS, D, states, tiny_bert, tiny_clip

import fda
from fda import FDAConfig, FDAConfigError
from fda.anchors import _Objective, task_span_anchors, weight_row_pool
from fda.blocks import adapter_for


def lbfgs_config(family: str, steps: int = 24, **kw) -> FDAConfig:
    kw.setdefault("tokens", {"bert": 3, "roberta": 3}.get(family))
    return FDAConfig.for_family(family, n_anchors=8, construct_steps=steps, construct_optimizer="lbfgs", progress=False, **kw)


def _count_evaluations(monkeypatch) -> list[int]:
    """Patch the per-expert objective to count its calls; returns the (live) counter."""
    calls = [0]
    original = fda.anchors._Objective.one

    def counting(self, e, xe):
        calls[0] += 1
        return original(self, e, xe)

    monkeypatch.setattr(fda.anchors._Objective, "one", counting)
    return calls


# ------------------------------------------------------------------------------------------------
# L-BFGS


@pytest.mark.parametrize("family", ["clip-vision", "bert", "openclip", "llama"])
def test_lbfgs_spends_exactly_its_budget_of_evaluations_and_aligns(family, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    model = BUILDERS[family]()
    pre, experts = states(model, 2)
    results = fda.construct_block(model, pre, experts, 1, "gauss", lbfgs_config(family))
    assert calls[0] == 2 * 24  # line-search evaluations count against the budget
    for res in results:
        curve = res.log.mean_cos()
        assert res.log.loss.shape == (24,) and res.log.cos.shape == (24, len(res.log.param_names))
        assert curve.max() > curve[0] + 0.15, (family, curve[0], curve.max())
        assert res.best_loss == pytest.approx(float(res.log.loss.min()))
        assert res.best_step == int(res.log.loss.argmin())
        assert res.settings["construct_optimizer"] == "lbfgs" and res.settings["lbfgs_history"] == 20
        assert torch.isfinite(res.anchors).all()


def test_lbfgs_beats_adamw_at_an_equal_evaluation_budget():
    # the reason the option exists; a tiny block, so a modest claim: a lower loss at 30 evaluations
    model = tiny_clip()
    pre, experts = states(model, 2)
    lb = fda.construct_block(model, pre, experts, 1, "gauss", lbfgs_config("clip-vision", steps=30))
    ad = fda.construct_block(model, pre, experts, 1, "gauss", dataclasses.replace(lbfgs_config("clip-vision", steps=30), construct_optimizer="adamw"))
    for a, b in zip(lb, ad):
        assert a.best_loss < b.best_loss, (a.best_loss, b.best_loss)


def test_lbfgs_best_anchors_have_the_best_loss_seen():
    # the best anchors (trial points included) re-evaluate to the best logged loss
    model = tiny_bert()
    pre, experts = states(model, 1)
    (res,) = fda.construct_block(model, pre, experts, 0, "weight", lbfgs_config("bert", steps=12))
    ad = adapter_for(model)
    obj = _Objective(ad, 0, _block_tensors(pre, ad, 0), [_block_tensors(experts[0], ad, 0)], "cos", "loop", "keep", "split")
    loss, *_ = obj.one(0, res.anchors.clone().requires_grad_(True))
    assert float(loss) == pytest.approx(res.best_loss, rel=1e-5)


def test_lbfgs_experts_are_independent():
    # one L-BFGS per expert: a subset run gives each expert the anchors of the full run
    model = tiny_clip()
    pre, experts = states(model, 3)
    cfg = lbfgs_config("clip-vision", steps=10)
    together = fda.construct_block(model, pre, experts, 0, "taskspan", cfg)
    (alone,) = fda.construct_block(model, pre, experts, 0, "taskspan", cfg, experts_subset=[2])
    assert torch.equal(alone.anchors, together[2].anchors) and torch.equal(alone.log.loss, together[2].log.loss)


def test_lbfgs_budget_snapshots_equal_shorter_runs():
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = lbfgs_config("bert", steps=14)
    long = fda.construct_block(model, pre, experts, 1, "gauss", cfg, snapshot_steps=[0, 5, 14])
    for s in (0, 5, 14):
        short = fda.construct_block(model, pre, experts, 1, "gauss", dataclasses.replace(cfg, construct_steps=s))
        for lg, sh in zip(long, short, strict=True):
            assert torch.equal(lg.budget_anchors[s], sh.anchors), s
            assert torch.equal(lg.log.loss[:s], sh.log.loss)  # a shorter run is a prefix of a longer one
    assert torch.equal(long[0].budget_anchors[0], long[0].initial)


def test_lbfgs_singular_value_snapshots_end_with_the_returned_anchors():
    model = tiny_bert()
    pre, experts = states(model, 1)
    (res,) = fda.construct_block(model, pre, experts, 0, "gauss", lbfgs_config("bert", steps=6, sv_every=3))
    assert res.log.sv_steps == [0, 3, 6]
    s = torch.linalg.svdvals(res.anchors.reshape(-1, D))
    torch.testing.assert_close(res.log.sv[-1], s / s[0])


def test_lbfgs_settings_are_checked():
    with pytest.raises(FDAConfigError, match="batching"):
        lbfgs_config("clip-vision", batching="vmap")
    with pytest.raises(FDAConfigError, match="construct_optimizer must be one of 'adamw', 'lbfgs'"):
        FDAConfig(construct_optimizer="newton")
    with pytest.raises(FDAConfigError, match="lbfgs_history must be an int >= 1"):
        FDAConfig(construct_optimizer="lbfgs", lbfgs_history=0)


def test_default_optimizer_is_the_papers():
    cfg = FDAConfig.for_family("clip-vision")
    assert cfg.construct_optimizer == "adamw"
    assert cfg.construction_metadata()["construct_optimizer"] == "adamw"


# ------------------------------------------------------------------------------------------------
# taskspan init


def _block_tensors(state: dict, adapter, block: int) -> dict:
    pre = adapter.block_prefix(block)
    return {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}


def test_taskspan_tokens_lie_along_a_rank_one_task_vector_at_the_weight_rows_scale():
    model = tiny_clip()
    ad = adapter_for(model)
    pre = _block_tensors(model.state_dict(), ad, 0)
    direction = torch.randn(D, generator=torch.Generator().manual_seed(3))
    direction /= direction.norm()
    finetuned = dict(pre)
    for i, name in enumerate(ad.input_reading_names(0)):  # every input-reading delta reads along `direction`
        rows = pre[name].shape[0]
        finetuned[name] = pre[name] + 0.1 * (i + 1) * torch.outer(torch.randn(rows), direction)
    x = task_span_anchors(ad, 0, pre, finetuned, n=6, tokens=5, sigma=1e-4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 5, D)
    tokens = x.reshape(-1, D)
    cos = (tokens @ direction).abs() / tokens.norm(dim=1)
    assert cos.min() > 0.99
    target = weight_row_pool(ad, 0, finetuned).norm(dim=1).median()
    torch.testing.assert_close(tokens.norm(dim=1), target.expand(30), rtol=1e-3, atol=0)


def test_taskspan_reads_q_k_v_and_the_first_mlp_layer_only():
    for model, expected in ((tiny_clip(), {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "mlp.fc1.weight"}),
                            (tiny_bert(), {"attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
                                           "intermediate.dense.weight"})):  # fmt: skip
        assert set(adapter_for(model).input_reading_names(0)) == expected


def test_taskspan_of_an_untouched_block_is_isotropic_and_finite():
    model = tiny_clip()
    ad = adapter_for(model)
    pre = _block_tensors(model.state_dict(), ad, 0)
    x = task_span_anchors(ad, 0, pre, dict(pre), n=4, tokens=5, sigma=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and x.shape == (4, 5, D)
    assert torch.linalg.matrix_rank(x.reshape(-1, D)) == min(20, D)


def test_taskspan_is_seeded_per_block_and_expert_and_repeats():
    model = tiny_bert()
    pre, experts = states(model, 2)
    cfg = dataclasses.replace(lbfgs_config("bert"), construct_steps=0)
    a = fda.construct_block(model, pre, experts, 0, "taskspan", cfg)
    b = fda.construct_block(model, pre, experts, 0, "taskspan", cfg)
    assert torch.equal(a[0].initial, b[0].initial) and not torch.equal(a[0].initial, a[1].initial)


def test_taskspan_starts_closer_to_the_task_vector_than_gauss():
    # the init's point: a higher induced-gradient cosine before any step
    model = tiny_clip()
    pre, experts = states(model, 2)
    cfg = dataclasses.replace(lbfgs_config("clip-vision"), construct_steps=1)
    span = fda.construct_block(model, pre, experts, 1, "taskspan", cfg)
    gauss = fda.construct_block(model, pre, experts, 1, "gauss", cfg)
    for s, g in zip(span, gauss):
        assert float(s.log.mean_cos()[0]) > float(g.log.mean_cos()[0])


def test_lbfgs_non_finite_loss_names_the_block_expert_and_evaluation(monkeypatch):
    # a line-search trial point whose outputs are NaN stops the run with a clear error
    from baselines.errors import NonFiniteError

    original = fda.anchors._Objective.one
    calls = [0]

    def poisoned(self, e, xe):
        calls[0] += 1
        loss, cos, gnorm, gx = original(self, e, xe)
        return (loss * float("nan"), cos, gnorm, gx) if calls[0] == 4 else (loss, cos, gnorm, gx)

    monkeypatch.setattr(fda.anchors._Objective, "one", poisoned)
    model = tiny_bert()
    pre, experts = states(model, 1)
    with pytest.raises(NonFiniteError, match=r"block 0, expert 0: .* objective evaluation 3 of 10 with construct_optimizer='lbfgs'"):
        fda.construct_block(model, pre, experts, 0, "gauss", lbfgs_config("bert", steps=10))
