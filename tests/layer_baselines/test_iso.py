"""Iso-C and Iso-CTS properties on random task vectors with real key names (small widths).

Each method is compared with a literal re-statement of the official algorithm written here
(full-size zero-filled slots, no transposition, the official size rule), so the package's shortcuts
(SVDs on the tall orientation, no slot padding, skipped zero experts) are covered. Parity with
FusionBench's own functions is in test_iso_fusionbench.py (skipped without fusion_bench).

Task vectors are low rank + noise, so every summed matrix has full rank: the isotropic spectrum
gives every singular direction the same weight, so the result is unique only where no singular
value is (numerically) zero.
"""

from __future__ import annotations

import math

import pytest
import torch

import baselines
from baselines import HyperparameterError, MergeInputError, NonFiniteError, iso, synthetic
from baselines.iso import isoc_matrix, isocts_bases, isocts_matrix, isocts_sizes
from test_baselines_matrix import matrix_keys, rel, taus_of  # tests/ dirs are on sys.path (pytest prepend mode)

F64 = torch.float64
BLOCK = "model.visual.transformer.resblocks.0."
# [3d, d] tall, [d, 4d] wide, [d, d] square; with d = 32 and T = 3 or 4 Iso-CTS has both parts
KEYS = (BLOCK + "attn.in_proj_weight", BLOCK + "mlp.c_proj.weight", BLOCK + "attn.out_proj.weight")


def vit(num_experts: int, dtype: torch.dtype = F64, d: int = 32, **kw):
    shapes = synthetic.openclip_vit_shapes(d=d, blocks=1, tokens=5, patch=2, embed=12, vocab=7)
    return synthetic.make_models(shapes, num_experts, dtype, **kw)


# --------------------------------------------------------------------------------------------
# Literal re-statements of the official iso-merging code (danielm1405/iso-merging src/utils/iso.py)


def isoc_reference(taus: list[torch.Tensor]) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    return torch.linalg.multi_dot([u, torch.diag(torch.full_like(s, float(s.mean()))), vh])


def isocts_reference(taus: list[torch.Tensor], fraction: float = 0.8) -> torch.Tensor:
    t_count = len(taus)
    r = min(taus[0].shape)
    c = int(r * fraction)
    c = r - round((r - c) / t_count) * t_count
    k = int((r - c) / t_count)
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    u_all = torch.zeros_like(u)
    s_all = torch.zeros_like(s)
    vh_all = torch.zeros_like(vh)
    for i, t in enumerate(taus):
        w = t - u[:, :c] @ u[:, :c].T @ t
        u_t, s_t, vh_t = torch.linalg.svd(w, full_matrices=False)
        u_all[:, i * k:(i + 1) * k] = u_t[:, :k]
        s_all[i * k:(i + 1) * k] = s_t[:k]
        vh_all[i * k:(i + 1) * k] = vh_t[:k]
    u_all[:, t_count * k:] = u[:, :c]
    s_all[t_count * k:] = s[:c]
    vh_all[t_count * k:] = vh[:c]
    pu, _, qu = torch.linalg.svd(u_all, full_matrices=False)
    pv, _, qv = torch.linalg.svd(vh_all, full_matrices=False)
    return float(s_all.mean()) * (pu @ qu) @ (pv @ qv)


# --------------------------------------------------------------------------------------------
# Against the literal reference


@pytest.mark.parametrize("num_experts", [1, 3, 4, 8])
def test_both_match_the_literal_reference(num_experts):
    # d = 32: r = 32 for the block matrices (T=3: c=26, k=2; T=4: c=24, k=2; T=8: c=24, k=1);
    # the 5×32 positional embedding and 32×12 proj exercise r < T·k-ish corner sizes
    pre, ex = vit(num_experts, zero_keys=())
    out_c = baselines.merge("isoc", pre, ex, alpha=1.0)
    out_cts = baselines.merge("isocts", pre, ex, alpha=1.0)
    for key in matrix_keys(pre):
        taus = taus_of(pre, ex, key)
        assert rel(out_c[key] - pre[key], isoc_reference(taus)) < 1e-10, key
        assert rel(out_cts[key] - pre[key], isocts_reference(taus)) < 1e-10, key


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_isocts_common_space_fraction_matches_the_reference(fraction):
    pre, ex = vit(4, zero_keys=())
    out = baselines.merge("isocts", pre, ex, alpha=1.0, common_space_fraction=fraction)
    for key in KEYS:
        taus = taus_of(pre, ex, key)
        assert rel(out[key] - pre[key], isocts_reference(taus, fraction)) < 1e-10, (key, fraction)


def test_sizes_follow_the_official_rule():
    def official(r, t, f):
        c = int(r * f)
        return r - round((r - c) / t) * t

    for r in range(80):
        for t in (1, 2, 3, 7, 8, 14, 20):
            for f in (0.0, 0.1, 0.5, 0.8, 0.95, 1.0):
                c, k = isocts_sizes(r, t, f)
                assert c + t * k == r and c >= 0 and k >= 0
                if official(r, t, f) >= 0:  # where the official rule is well defined, it is ours
                    assert c == official(r, t, f), (r, t, f)
    assert isocts_sizes(768, 8) == (616, 19) and isocts_sizes(1024, 8) == (816, 26)
    assert isocts_sizes(12, 8, 0.0) == (4, 1)  # official: k = round(1.5) = 2, c = -4 (broken); capped


# --------------------------------------------------------------------------------------------
# Spectrum, invariances, special cases


def test_the_merged_spectrum_is_isotropic():
    pre, ex = vit(4)
    for key in KEYS:
        taus = taus_of(pre, ex, key)
        s_sum = torch.linalg.svdvals(sum(taus))
        for merged in (isoc_matrix(taus), isocts_matrix(taus, 4)):
            s = torch.linalg.svdvals(merged)
            r = min(merged.shape)
            assert s.shape == (r,)
            torch.testing.assert_close(s, torch.full_like(s, float(s[0])), rtol=1e-10, atol=0)
        # Iso-C keeps the sum's singular vectors and its mean singular value
        torch.testing.assert_close(torch.linalg.svdvals(isoc_matrix(taus)), torch.full_like(s_sum, float(s_sum.mean())), rtol=1e-10, atol=0)
        # Iso-CTS: the mean of the c common and T·k task-specific values it gathered
        u, s_cat, v = isocts_bases(taus, 4)
        assert u.shape[1] == v.shape[1] == s_cat.numel() == min(pre[key].shape)
        torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1], dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(v.T @ v, torch.eye(v.shape[1], dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.linalg.svdvals(isocts_matrix(taus, 4)), torch.full_like(s_sum, float(s_cat.mean())), rtol=1e-10, atol=0)


@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_task_order_invariance(method):
    pre, ex = vit(4)
    a = baselines.merge(method, pre, ex)
    b = baselines.merge(method, pre, [ex[2], ex[0], ex[3], ex[1]])
    for key in pre:
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_any_valid_choice_of_singular_vector_signs_gives_the_same_merge(method, monkeypatch):
    """Every SVD inside the methods may flip the sign of any (u_j, v_j) pair: the merge must not move.
    (Iso-CTS concatenates per-task vectors, like TSV-M; with a flat spectrum polar(U D)·polar(V D)ᵀ
    = polar(U)·polar(V)ᵀ.)"""
    pre, ex = vit(4)
    plain = baselines.merge(method, pre, ex)
    real_svd = iso._svd
    g = torch.Generator().manual_seed(7)
    flipped = []

    def flipping_svd(x):
        u, s, vh = real_svd(x)
        d = torch.where(torch.rand(s.numel(), generator=g) < 0.5, -1.0, 1.0).to(u.dtype)
        flipped.append(bool((d < 0).any()))
        return u * d, s, d[:, None] * vh

    monkeypatch.setattr(iso, "_svd", flipping_svd)
    signed = baselines.merge(method, pre, ex)
    assert any(flipped)
    for key in pre:
        torch.testing.assert_close(signed[key], plain[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [isoc_matrix, lambda taus: isocts_matrix(taus, len(taus))], ids=["isoc", "isocts"])
def test_negating_every_task_vector_negates_the_merge(fn):
    pre, ex = vit(3)
    for key in KEYS:
        taus = taus_of(pre, ex, key)
        torch.testing.assert_close(fn([-t for t in taus]), -fn(taus), rtol=1e-10, atol=1e-14)


def test_transpose_equivariance_holds_for_isoc_only():
    pre, ex = vit(3)
    for key in KEYS:
        taus = taus_of(pre, ex, key)
        transposed = [t.T.contiguous() for t in taus]
        torch.testing.assert_close(isoc_matrix(transposed), isoc_matrix(taus).T, rtol=1e-10, atol=1e-14)
        # Iso-CTS takes each task's residual in the column space: the [out, in] orientation matters
        assert rel(isocts_matrix(transposed, 3), isocts_matrix(taus, 3).T) > 1e-3, key


def test_a_single_expert_gets_its_own_flattened_spectrum():
    pre, ex = vit(1, zero_keys=())
    out_c = baselines.merge("isoc", pre, ex, alpha=1.0)
    out_cts = baselines.merge("isocts", pre, ex, alpha=1.0)
    for key, t in pre.items():
        tau = ex[0][key] - t
        if t.ndim == 2:
            u, s, vh = torch.linalg.svd(tau, full_matrices=False)
            want = s.mean() * (u @ vh)
            torch.testing.assert_close(out_c[key] - t, want, rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(out_cts[key] - t, want, rtol=1e-10, atol=1e-14)  # T = 1: Iso-CTS is Iso-C
        else:
            torch.testing.assert_close(out_c[key], ex[0][key], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(out_cts[key], ex[0][key], rtol=1e-12, atol=1e-14)


def test_isocts_with_the_whole_rank_common_is_isoc():
    pre, ex = vit(4)
    a = baselines.merge("isocts", pre, ex, alpha=1.0, common_space_fraction=1.0)
    b = baselines.merge("isoc", pre, ex, alpha=1.0)
    for key in pre:
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method, alpha", [("isoc", 0.7), ("isocts", 1.9)])
def test_non_matrix_tensors_are_averaged_and_alpha_scales_everything(method, alpha):
    pre, ex = vit(3)
    out = baselines.merge(method, pre, ex, alpha=alpha)
    one = baselines.merge(method, pre, ex, alpha=1.0)
    for key, t in pre.items():
        if t.ndim != 2:
            torch.testing.assert_close(out[key], t + alpha * torch.stack(taus_of(pre, ex, key)).mean(0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(out[key] - t, alpha * (one[key] - t), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_fda_vision_averages_text_projection_and_zero_keys_stay_at_pretrained(method):
    pre, ex = vit(3, zero_keys=("token_embedding",))
    out = baselines.merge(method, pre, ex, coverage="fda-vision")
    k = "model.text_projection"
    torch.testing.assert_close(out[k], pre[k] + baselines.method_spec(method).defaults()["alpha"] * torch.stack(taus_of(pre, ex, k)).mean(0),
                               rtol=1e-12, atol=1e-14)
    assert torch.equal(out["model.token_embedding.weight"], pre["model.token_embedding.weight"])  # zero in, θ0 out
    plan = baselines.coverage_plan(method, pre, coverage="fda-vision")
    assert plan[k] is baselines.Role.MEAN and plan[KEYS[0]] is baselines.Role.MERGE


def test_isocts_leaves_zero_experts_out_without_nan():
    pre, ex = vit(3)
    key = KEYS[0]
    ex[1][key] = pre[key].clone()  # expert 1 did not touch this tensor
    out = baselines.merge("isocts", pre, ex, alpha=1.0)
    taus = taus_of(pre, ex, key)
    assert torch.isfinite(out[key]).all()
    torch.testing.assert_close(out[key] - pre[key], isocts_matrix([taus[0], taus[2]], num_tasks=3), rtol=1e-10, atol=1e-14)
    _, s, _ = isocts_bases(taus, 3)
    c, k = isocts_sizes(32, 3)
    assert s.numel() == c + 2 * k  # the zero expert's k slots are not filled with arbitrary vectors


def test_cancelling_task_vectors_give_a_zero_delta():
    # τ_2 = −τ_1 exactly (θ0 = 0 on the key, so no rounding in θ_i − θ0): Σ τ_i = 0. Iso-CTS's
    # common subspace would be arbitrary singular vectors of the zero matrix; both give zero.
    pre, ex = vit(2)
    key = KEYS[1]
    pre[key] = torch.zeros_like(pre[key])
    ex[1][key] = -ex[0][key]
    for method in ("isoc", "isocts"):
        out = baselines.merge(method, pre, ex)
        assert torch.equal(out[key], pre[key]), method


@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_float32_agrees_with_float64(method):
    pre, ex = vit(4, torch.float32)
    a = baselines.merge(method, pre, ex)  # auto: float32 compute
    b = baselines.merge(method, pre, ex, dtype="float64")
    for key in matrix_keys(pre):
        if any(z in key for z in synthetic.ZERO_KEYS):
            continue
        assert a[key].dtype == torch.float32
        assert rel(a[key] - pre[key], b[key] - pre[key]) < 1e-4, key


@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_lazy_experts_give_the_same_merge(method):
    shapes = synthetic.openclip_vit_shapes(d=16, blocks=1, tokens=5, patch=2, embed=6, vocab=7)
    pre = synthetic.pretrained(shapes, dtype=torch.float32)
    lazy = [synthetic.SyntheticExpert(pre, i) for i in range(3)]
    eager = [{k: e[k] for k in pre} for e in lazy]
    a, b = baselines.merge(method, pre, lazy), baselines.merge(method, pre, eager)
    for k in pre:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("method", ["isoc", "isocts"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_expert_is_named_before_any_work(method, bad):
    pre, ex = vit(3, torch.float32)
    ex[2][KEYS[1]][0, 3] = bad
    with pytest.raises(MergeInputError) as err:
        baselines.merge(method, pre, ex, names=["a", "b", "c"])
    msg = str(err.value)
    assert "expert 2 ('c')" in msg and KEYS[1] in msg and "non-finite" in msg


@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_an_overflowing_alpha_is_a_named_non_finite_error(method):
    pre, ex = vit(2, torch.float32)
    with pytest.raises(NonFiniteError, match=rf"{method}: the merged tensor .* with alpha=1e\+300"):
        baselines.merge(method, pre, ex, alpha=1e300)


def test_bad_hyperparameters_are_refused_before_the_inputs_are_read():
    with pytest.raises(HyperparameterError, match=r"common_space_fraction must be a number in \[0, 1\]"):
        baselines.merge("isocts", {}, [], common_space_fraction=2.0)
    with pytest.raises(HyperparameterError, match="alpha must be a finite number"):
        baselines.merge("isoc", {}, [], alpha=math.nan)
    with pytest.raises(HyperparameterError, match="selects no tensor"):
        pre, ex = vit(2)
        baselines.merge("isoc", pre, ex, exclude=["."])
