"""TSV-M and WUDI properties on random low-rank task vectors with real key names (small widths).

Each property is checked against an independent, literal re-implementation of the reference
algorithm written here (no shortcuts: zero padding, no transposition, hand-written Adam), so the
package's speed tricks (transpose-to-tall, no padding, Gram form) are covered by the comparison.
"""

from __future__ import annotations

import pytest
import torch

import baselines
from baselines import Role, synthetic
from baselines.tsvm import combine_factors, tsvm_bases, tsvm_matrix
from baselines.wudi import wudi_loss, wudi_solve

F64 = torch.float64


def vit(num_experts: int, dtype: torch.dtype = F64, **kw):
    shapes = synthetic.openclip_vit_shapes(d=8, blocks=2, tokens=5, patch=2, embed=6, vocab=7)
    return synthetic.make_models(shapes, num_experts, dtype, **kw)


def bert(num_experts: int, dtype: torch.dtype = F64):
    return synthetic.make_models(synthetic.bert_shapes(d=8, layers=2), num_experts, dtype)


def taus_of(pre, experts, key):
    return [e[key] - pre[key] for e in experts]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def matrix_keys(pre):
    return [k for k, t in pre.items() if t.ndim == 2]


# --------------------------------------------------------------------------------------------
# TSV-M


def tsvm_reference(taus: list[torch.Tensor]) -> torch.Tensor:
    """The official algorithm as written: r-column blocks zero-padded, Vᵀ row-stacked, no transpose."""
    t_count = len(taus)
    m, n = taus[0].shape
    r = min(m, n)
    k = r // t_count
    u_cat = torch.zeros(m, r, dtype=taus[0].dtype)
    s_cat = torch.zeros(r, dtype=taus[0].dtype)
    vt_cat = torch.zeros(r, n, dtype=taus[0].dtype)
    for i, t in enumerate(taus):
        u, s, vh = torch.linalg.svd(t, full_matrices=False)
        u_cat[:, i * k:(i + 1) * k] = u[:, :k]
        s_cat[i * k:(i + 1) * k] = s[:k]
        vt_cat[i * k:(i + 1) * k, :] = vh[:k, :]
    pu, _, qu = torch.linalg.svd(u_cat, full_matrices=False)
    pv, _, qv = torch.linalg.svd(vt_cat, full_matrices=False)
    return torch.linalg.multi_dot([pu, qu, torch.diag(s_cat), pv, qv])


@pytest.mark.parametrize("num_experts", [3, 4])
def test_tsvm_matches_the_literal_reference(num_experts):
    # T=3 exercises zero padding (T·k < r) and k=1 on the 5×8 positional embedding; c_proj is wide.
    pre, ex = vit(num_experts, zero_keys=())
    out = baselines.merge("tsvm", pre, ex, alpha=1.0)
    for key in matrix_keys(pre):
        expected = pre[key] + tsvm_reference(taus_of(pre, ex, key))
        assert rel(out[key] - pre[key], expected - pre[key]) < 1e-10, key


def test_tsvm_averages_non_matrix_tensors_and_scales_everything_by_alpha():
    pre, ex = vit(3)
    out = baselines.merge("tsvm", pre, ex, alpha=0.7)
    for key, t in pre.items():
        taus = taus_of(pre, ex, key)
        if t.ndim != 2:
            torch.testing.assert_close(out[key], t + 0.7 * torch.stack(taus).mean(0), rtol=1e-12, atol=1e-14)
    k = "model.visual.proj"
    torch.testing.assert_close(out[k] - pre[k], 0.7 * tsvm_matrix(taus_of(pre, ex, k), 3), rtol=1e-10, atol=1e-14)


def test_tsvm_task_order_invariance():
    pre, ex = vit(4)
    a = baselines.merge("tsvm", pre, ex)
    b = baselines.merge("tsvm", pre, [ex[2], ex[0], ex[3], ex[1]])
    for key in pre:
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)


def test_tsvm_sign_invariance_of_singular_vector_pairs():
    g = torch.Generator().manual_seed(1)
    m, n, k, t_count = 12, 9, 2, 4
    us = [torch.linalg.qr(torch.randn(m, k, generator=g, dtype=F64))[0] for _ in range(t_count)]
    vs = [torch.linalg.qr(torch.randn(n, k, generator=g, dtype=F64))[0] for _ in range(t_count)]
    ss = [torch.rand(k, generator=g, dtype=F64).sort(descending=True).values + 0.1 for _ in range(t_count)]
    u0, s0, v0 = combine_factors(us, ss, vs)
    signs = [torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0).to(F64) for _ in range(t_count)]
    u1, s1, v1 = combine_factors([u * d for u, d in zip(us, signs)], ss, [v * d for v, d in zip(vs, signs)])
    assert not torch.allclose(u0, u1)  # the bases did change...
    torch.testing.assert_close((u1 * s1) @ v1.T, (u0 * s0) @ v0.T, rtol=1e-12, atol=1e-14)  # ...the merge did not
    # flipping U alone (not the pair) is a different input and must change the result
    u2, s2, v2 = combine_factors([us[0] * signs[0]] + us[1:], ss, vs)
    if (signs[0] < 0).any():
        assert not torch.allclose((u2 * s2) @ v2.T, (u0 * s0) @ v0.T)


def test_tsvm_negation_and_transpose_equivariance():
    pre, ex = vit(3)
    key = "model.visual.transformer.resblocks.1.attn.out_proj.weight"  # square: no internal transpose
    taus = taus_of(pre, ex, key)
    base = tsvm_matrix(taus)
    torch.testing.assert_close(tsvm_matrix([-t for t in taus]), -base, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(tsvm_matrix([t.T for t in taus]), base.T, rtol=1e-10, atol=1e-14)
    wide = "model.visual.transformer.resblocks.0.mlp.c_proj.weight"
    taus = taus_of(pre, ex, wide)
    torch.testing.assert_close(tsvm_matrix([t.T.contiguous() for t in taus]), tsvm_matrix(taus).T, rtol=1e-10, atol=1e-14)


def test_tsvm_single_expert_returns_the_expert():
    pre, ex = vit(1, zero_keys=())
    out = baselines.merge("tsvm", pre, ex)
    for key in pre:
        torch.testing.assert_close(out[key], ex[0][key], rtol=1e-12, atol=1e-12)


def test_tsvm_bases_are_orthonormal():
    pre, ex = vit(3)
    for key in ("model.visual.transformer.resblocks.0.mlp.c_proj.weight", "model.visual.transformer.resblocks.0.attn.in_proj_weight"):
        u, s, v = tsvm_bases(taus_of(pre, ex, key))
        m, n = pre[key].shape
        c = 3 * (min(m, n) // 3)
        assert u.shape == (m, c) and v.shape == (n, c) and s.shape == (c,)
        torch.testing.assert_close(u.T @ u, torch.eye(c, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(v.T @ v, torch.eye(c, dtype=F64), rtol=0, atol=1e-12)
        assert (s >= 0).all()


def test_tsvm_rank_zero_gives_a_zero_delta():
    # T=8 and token_type_embeddings 1×d: k = floor(1/8) = 0, so the merged delta is exactly zero
    pre, ex = bert(8)
    key = "bert.embeddings.token_type_embeddings.weight"
    assert any(not torch.equal(e[key], pre[key]) for e in ex)
    out = baselines.merge("tsvm", pre, ex)
    assert torch.equal(out[key], pre[key])
    pos = "bert.embeddings.position_embeddings.weight"  # 12×8: k = 1, non-zero
    assert not torch.equal(out[pos], pre[pos])


def test_tsvm_skips_zero_experts_without_nan():
    pre, ex = vit(3)
    key = "model.visual.transformer.resblocks.0.mlp.c_fc.weight"
    ex[1][key] = pre[key].clone()  # expert 1 did not touch this tensor
    out = baselines.merge("tsvm", pre, ex)
    taus = taus_of(pre, ex, key)
    torch.testing.assert_close(out[key] - pre[key], tsvm_matrix([taus[0], taus[2]], num_tasks=3), rtol=1e-10, atol=1e-14)


def test_tsvm_float32_agrees_with_float64():
    pre, ex = vit(3, torch.float32)
    a = baselines.merge("tsvm", pre, ex)  # auto: float32 compute
    b = baselines.merge("tsvm", pre, ex, dtype="float64")
    for key in matrix_keys(pre):
        if any(z in key for z in synthetic.ZERO_KEYS):
            continue
        assert rel(a[key] - pre[key], b[key] - pre[key]) < 1e-4, key


def test_tsvm_fda_vision_averages_text_projection():
    pre, ex = vit(3, zero_keys=())
    out = baselines.merge("tsvm", pre, ex, coverage="fda-vision")
    k = "model.text_projection"
    torch.testing.assert_close(out[k], pre[k] + torch.stack(taus_of(pre, ex, k)).mean(0), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# WUDI


def wudi_reference(taus: list[torch.Tensor], steps: int, lr: float) -> torch.Tensor:
    """Explicit gradient and hand-written Adam (β 0.9/0.999, ε 1e-8, bias-corrected)."""
    tm = torch.stack(taus).sum(0)
    m1 = torch.zeros_like(tm)
    m2 = torch.zeros_like(tm)
    for step in range(1, steps + 1):
        g = sum(2 * (tm - t) @ t.T @ t / t.pow(2).sum() for t in taus)
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        tm = tm - lr * (m1 / (1 - 0.9**step)) / ((m2 / (1 - 0.999**step)).sqrt() + 1e-8)
    return tm


@pytest.mark.parametrize("form", ["gram", "direct"])
@pytest.mark.parametrize("key", ["attn.in_proj_weight", "mlp.c_proj.weight"])  # tall 24×8, wide 8×32
def test_wudi_matches_the_reference_adam(form, key):
    pre, ex = vit(3)
    taus = taus_of(pre, ex, f"model.visual.transformer.resblocks.0.{key}")
    got = wudi_solve(taus, steps=60, lr=1e-4, form=form).tau
    want = wudi_reference(taus, 60, 1e-4)
    init = torch.stack(taus).sum(0)
    assert rel(got - init, want - init) < 1e-8  # compare the movement, not just the (large) init
    assert rel(got - init, torch.zeros_like(init) + init) > 1e-3  # and it did move


@pytest.mark.parametrize("shape", [(24, 8), (8, 32)])
def test_wudi_gram_equals_direct_in_float64(shape):
    g = torch.Generator().manual_seed(3)
    taus = [0.02 * torch.randn(shape[0], 2, generator=g, dtype=F64) @ torch.randn(2, shape[1], generator=g, dtype=F64)
            + 1e-3 * torch.randn(shape, generator=g, dtype=F64) for _ in range(4)]
    a = wudi_solve(taus, steps=300, lr=1e-5, form="gram", record_loss=True)
    b = wudi_solve(taus, steps=300, lr=1e-5, form="direct", record_loss=True)
    init = torch.stack(taus).sum(0)
    assert rel(a.tau - init, b.tau - init) < 1e-8
    assert rel(torch.tensor(a.losses), torch.tensor(b.losses)) < 1e-8
    assert abs(a.losses[-1] - float(wudi_loss(a.tau, taus))) < 1e-8 * a.losses[-1]


def test_wudi_loss_decreases():
    pre, ex = vit(4)
    taus = taus_of(pre, ex, "model.visual.transformer.resblocks.1.mlp.c_fc.weight")
    losses = wudi_solve(taus, steps=300, lr=1e-5, record_loss=True).losses
    assert len(losses) == 301
    assert losses[-1] < 0.9 * losses[0]
    assert sum(b <= a for a, b in zip(losses, losses[1:])) > 0.9 * 300  # non-increasing on (almost) every step


def test_wudi_zero_steps_is_the_sum_of_task_vectors():
    pre, ex = vit(3)
    out = baselines.merge("wudi", pre, ex, steps=0)
    for key, t in pre.items():
        taus = taus_of(pre, ex, key)
        want = t + (sum(taus) if t.ndim == 2 else torch.stack(taus).mean(0))  # coverage "all": mean off-matrix
        torch.testing.assert_close(out[key], want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("form", ["gram", "direct"])
def test_wudi_single_expert_returns_the_expert(form):
    pre, ex = vit(1, torch.float32)
    for key in matrix_keys(pre):
        tau = ex[0][key] - pre[key]
        assert torch.equal(wudi_solve([tau], steps=50, form=form).tau, tau), key  # zero gradient: no Adam step at all
    out = baselines.merge("wudi", pre, ex, form=form, steps=50)
    for key in pre:
        torch.testing.assert_close(out[key], ex[0][key], rtol=0, atol=1e-6)  # θ0 + (θ1 − θ0) up to rounding


def test_wudi_fda_vision_leaves_every_other_key_at_pretrained():
    pre, ex = vit(3, zero_keys=())
    out = baselines.merge("wudi", pre, ex, coverage="fda-vision", steps=5)
    plan = baselines.coverage_plan("wudi", pre, coverage="fda-vision")
    assert sum(r is Role.MERGE for r in plan.values()) == 8
    for key in pre:
        if plan[key] is Role.MERGE:
            assert not torch.equal(out[key], pre[key]), key
        else:
            assert torch.equal(out[key], pre[key]), key


def test_wudi_fda_nlu_merges_only_layer_weights():
    pre, ex = bert(3)
    out = baselines.merge("wudi", pre, ex, coverage="fda-nlu", steps=2, alpha=0.5)
    k = "bert.encoder.layer.0.attention.self.query.weight"
    taus = taus_of(pre, ex, k)
    torch.testing.assert_close(out[k], pre[k] + 0.5 * wudi_solve(taus, steps=2).tau, rtol=1e-12, atol=1e-14)
    for k in ("bert.encoder.layer.0.attention.self.query.bias", "bert.embeddings.word_embeddings.weight",
              "bert.encoder.layer.1.output.LayerNorm.weight", "classifier.weight"):
        assert torch.equal(out[k], pre[k]), k


def test_wudi_drops_zero_task_terms():
    pre, ex = vit(3)
    key = "model.visual.transformer.resblocks.0.attn.out_proj.weight"
    ex[2][key] = pre[key].clone()
    out = baselines.merge("wudi", pre, ex, steps=20)
    taus = taus_of(pre, ex, key)
    assert torch.isfinite(out[key]).all()
    torch.testing.assert_close(out[key] - pre[key], wudi_solve(taus[:2], steps=20).tau, rtol=1e-12, atol=1e-14)


def test_merge_accepts_lazy_experts():
    shapes = synthetic.openclip_vit_shapes(d=8, blocks=1, tokens=5, patch=2, embed=6, vocab=7)
    pre = synthetic.pretrained(shapes, dtype=torch.float32)
    lazy = [synthetic.SyntheticExpert(pre, i) for i in range(3)]
    eager = [{k: e[k] for k in pre} for e in lazy]
    a = baselines.merge("tsvm", pre, lazy)
    b = baselines.merge("tsvm", pre, eager)
    for k in pre:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method, hp", [("wudi", {"form": "direct", "steps": 3}), ("tsvm", {}), ("ta", {})])
def test_parameters_as_inputs_give_plain_tensors(method, hp):
    # dict(model.named_parameters()) holds nn.Parameters: the merge must not build or return a graph
    pre, ex = vit(2, torch.float32)
    pre = {k: torch.nn.Parameter(v) for k, v in pre.items()}
    ex = [{k: torch.nn.Parameter(v) for k, v in e.items()} for e in ex]
    out = baselines.merge(method, pre, ex, **hp)
    assert not any(t.requires_grad for t in out.values())
    plain = baselines.merge(method, {k: v.detach() for k, v in pre.items()}, [{k: v.detach() for k, v in e.items()} for e in ex], **hp)
    for k in pre:
        assert torch.equal(out[k], plain[k]), k
