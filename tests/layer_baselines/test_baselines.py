"""Contract tests of the baselines package: registry, input errors, coverage, TA, averaging, TIES.

TSV-M and WUDI properties live in test_baselines_matrix.py, Iso-C and Iso-CTS ones in test_iso.py. State dicts use real key names
(open_clip ViT, HF BERT) with small widths.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

import baselines
from baselines import HyperparameterError, MergeInputError, Role, UnknownMethodError, synthetic
from baselines.registry import RegistrationError, hparam, register

ALL_METHODS = ["average", "isoc", "isocts", "ta", "ties", "tsvm", "wudi"]
FAST = {"wudi": {"steps": 3}}  # keep the table-driven tests fast; WUDI's schedule is tested elsewhere


# --------------------------------------------------------------------------------------------
# Builders: small state dicts with the real key names and layouts (baselines.synthetic)


def openclip_shapes(d: int = 8, blocks: int = 2, tokens: int = 5, patch: int = 2, embed: int = 6):
    return synthetic.openclip_vit_shapes(d=d, blocks=blocks, tokens=tokens, patch=patch, embed=embed, vocab=7)


def bert_shapes(d: int = 8, layers: int = 2):
    return synthetic.bert_shapes(d=d, layers=layers)


def make_models(shapes, num_experts, dtype=torch.float64, **kw):
    return synthetic.make_models(shapes, num_experts, dtype, **kw)


def tiny(dtype: torch.dtype = torch.float32, num_experts: int = 3):
    return make_models(openclip_shapes(d=4, blocks=1, tokens=3, embed=4), num_experts, dtype)


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_the_seven_methods():
    assert baselines.list_methods() == ALL_METHODS
    assert set(baselines.METHODS) == set(ALL_METHODS)
    for name in ALL_METHODS:
        spec = baselines.method_spec(name)
        assert spec.name == name and dataclasses.is_dataclass(spec.hparams)
        for f in dataclasses.fields(spec.hparams):
            assert f.default is not dataclasses.MISSING and f.metadata["help"], (name, f.name)


def test_default_hyperparameters_follow_the_references():
    d = {m: baselines.method_spec(m).defaults() for m in ALL_METHODS}
    assert d["ta"]["alpha"] == 0.3 and d["tsvm"]["alpha"] == 1.0 and d["wudi"]["alpha"] == 1.0
    assert (d["wudi"]["steps"], d["wudi"]["lr"], d["wudi"]["form"]) == (300, 1e-5, "gram")
    assert (d["ties"]["topk"], d["ties"]["merge_func"], d["ties"]["alpha"]) == (20.0, "sum", 0.3)
    # Iso: the paper's ViT-B/32 α (tuned on validation there) and its common-space fraction
    assert d["isoc"]["alpha"] == 1.3 and (d["isocts"]["alpha"], d["isocts"]["common_space_fraction"]) == (1.5, 0.8)
    assert all(d[m]["coverage"] == "all" and d[m]["exclude"] == () for m in ALL_METHODS)


def test_unknown_method_lists_valid_names():
    pre, ex = tiny()
    with pytest.raises(UnknownMethodError) as err:
        baselines.merge("tsv", pre, ex)
    assert isinstance(err.value, ValueError)
    for name in ALL_METHODS:
        assert name in str(err.value)


def test_unknown_hyperparameter_lists_valid_ones():
    pre, ex = tiny()
    with pytest.raises(HyperparameterError) as err:
        baselines.merge("wudi", pre, ex, iters=10)
    msg = str(err.value)
    assert "'iters'" in msg
    for name in ("alpha", "steps", "lr", "form", "coverage", "exclude", "dtype", "device"):
        assert name in msg


@pytest.mark.parametrize(
    "method, hparams, expected",
    [
        ("ta", {"alpha": "0.3"}, "alpha"),
        ("ta", {"alpha": True}, "alpha"),
        ("tsvm", {"alpha": float("nan")}, "alpha"),
        ("ties", {"alpha": float("inf")}, "alpha"),
        ("wudi", {"steps": 1.5}, "steps"),
        ("wudi", {"steps": -1}, "steps"),
        ("wudi", {"lr": 0.0}, "lr"),
        ("wudi", {"form": "fast"}, "form"),
        ("tsvm", {"coverage": "fda-audio"}, "fda-vision"),  # lists the presets
        ("tsvm", {"exclude": "classifier"}, "exclude"),  # a bare string would iterate as characters
        ("tsvm", {"exclude": ["("]}, "regular expression"),
        ("ties", {"topk": 0}, "topk"),
        ("ties", {"merge_func": "median"}, "merge_func"),
        ("average", {"dtype": "float16"}, "dtype"),
        ("isoc", {"alpha": float("nan")}, "alpha"),
        ("isoc", {"common_space_fraction": 0.8}, "no hyperparameter 'common_space_fraction'"),  # Iso-CTS only
        ("isocts", {"alpha": float("-inf")}, "alpha"),
        ("isocts", {"common_space_fraction": 1.5}, r"common_space_fraction must be a number in \[0, 1\], got 1.5"),
        ("isocts", {"common_space_fraction": -0.1}, r"in \[0, 1\], got -0.1"),
        ("isocts", {"common_space_fraction": float("nan")}, r"in \[0, 1\], got nan"),
        ("isocts", {"common_space_fraction": "0.8"}, "common_space_fraction' must be float"),
        ("isocts", {"coverage": "fda-audio"}, "fda-vision"),
    ],
)
def test_bad_hyperparameter_values_are_refused(method, hparams, expected):
    pre, ex = tiny()
    with pytest.raises(HyperparameterError, match=expected):
        baselines.merge(method, pre, ex, **hparams)


def test_hyperparameter_types_are_coerced_sensibly():
    pre, ex = tiny(torch.float64)
    a = baselines.merge("ta", pre, ex, alpha=1, exclude=["ln_"])  # int for float, list for tuple
    b = baselines.merge("ta", pre, ex, alpha=1.0, exclude=("ln_",))
    for k in pre:
        assert torch.equal(a[k], b[k])


def test_bad_registration_fails_loudly():
    @dataclass
    class NoHelp:
        x: float = 1.0

    @dataclass
    class NoDefault:
        x: float = dataclasses.field(metadata={"help": "h"})

    @dataclass
    class WrongDefault:
        x: int = hparam(0.5, "an int with a float default")

    @dataclass
    class Fine:
        x: float = hparam(1.0, "fine")

    fn = lambda inputs, hp, progress: {}  # noqa: E731
    with pytest.raises(RegistrationError, match="registered twice"):
        register("ta", fn, Fine, "dup")
    with pytest.raises(RegistrationError, match="no '_'"):
        register("my_method", fn, Fine, "bad name")
    with pytest.raises(RegistrationError, match="help"):
        register("nohelp", fn, NoHelp, "s")
    with pytest.raises(RegistrationError, match="default"):
        register("nodefault", fn, NoDefault, "s")
    with pytest.raises(RegistrationError, match="type"):
        register("wrongdefault", fn, WrongDefault, "s")
    assert baselines.list_methods() == ALL_METHODS  # nothing half-registered


# --------------------------------------------------------------------------------------------
# Output contract, table-driven over all methods


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_output_has_every_key_same_dtype_and_fresh_storage(method, dtype):
    pre, ex = tiny(dtype)
    pre["model.visual.position_ids"] = torch.arange(3)
    for e in ex:
        e["model.visual.position_ids"] = torch.arange(3)
    snapshot = {k: v.clone() for k, v in pre.items()}
    out = baselines.merge(method, pre, ex, **FAST.get(method, {}))
    assert list(out) == list(pre)
    for k in pre:
        assert out[k].dtype == pre[k].dtype and out[k].shape == pre[k].shape, k
        assert torch.isfinite(out[k].float()).all(), k
        out[k].add_(1) if out[k].is_floating_point() else out[k].add_(1)
        assert torch.equal(pre[k], snapshot[k]), f"{method} output shares storage with the input for {k}"
    # something was merged: the 2-D block weights moved away from θ0
    w = "model.visual.transformer.resblocks.0.mlp.c_fc.weight"
    assert not torch.equal(out[w] - 1, pre[w])


def test_integer_buffers_are_copied_from_pretrained():
    pre, ex = tiny()
    pre["ids"] = torch.arange(5)
    pre["mask"] = torch.tensor([True, False])
    for i, e in enumerate(ex):
        e["ids"] = torch.arange(5) + i  # e.g. BatchNorm counters legitimately differ: not merged
        e["mask"] = torch.tensor([True, False])
    out = baselines.merge("ta", pre, ex)
    assert torch.equal(out["ids"], torch.arange(5)) and out["ids"].dtype == torch.int64
    assert torch.equal(out["mask"], pre["mask"])


def test_progress_callback_sees_every_key():
    pre, ex = tiny()
    seen = []
    baselines.merge("average", pre, ex, progress=lambda done, total, key: seen.append((done, total, key)))
    assert [s[2] for s in seen] == list(pre) and seen[-1][:2] == (len(pre), len(pre))


# --------------------------------------------------------------------------------------------
# Input errors: each names the expert (index and name) and the tensor key

KEY = "model.visual.transformer.resblocks.0.attn.out_proj.weight"
NAMES = ["mnist", "svhn", "dtd"]


def _break(kind: str, pre, ex):
    if kind == "missing":
        del ex[1][KEY]
    elif kind == "extra":
        ex[1]["classifier.weight"] = torch.zeros(2, 2)
    elif kind == "shape":
        ex[1][KEY] = torch.zeros(5, 4)
    elif kind == "nan":
        ex[1][KEY][0, 0] = float("nan")
    elif kind == "inf":
        ex[1][KEY][1, 2] = float("inf")
    elif kind == "dtype":
        ex[1][KEY] = ex[1][KEY].double()
    elif kind == "notensor":
        ex[1][KEY] = ex[1][KEY].tolist()
    return pre, ex


@pytest.mark.parametrize(
    "kind, key, fix",
    [
        ("missing", KEY, "architecture"),
        ("extra", "classifier.weight", "encoder only"),
        ("shape", KEY, "(5, 4)"),
        ("nan", KEY, "non-finite"),
        ("inf", KEY, "non-finite"),
        ("dtype", KEY, "one dtype"),
        ("notensor", KEY, "torch.Tensor"),
    ],
)
def test_bad_expert_is_named_with_key_and_fix(kind, key, fix):
    pre, ex = _break(kind, *tiny())
    for names in (NAMES, None):
        with pytest.raises(MergeInputError) as err:
            baselines.merge("ta", pre, ex, names=names)
        msg = str(err.value)
        assert isinstance(err.value, ValueError)
        assert "expert 1" in msg and key in msg and fix in msg, msg
        assert ("'svhn'" in msg) == (names is not None), msg


def test_non_finite_pretrained_is_named():
    pre, ex = tiny()
    pre["model.visual.proj"][0, 0] = float("nan")
    with pytest.raises(MergeInputError, match=r"pretrained model: tensor 'model.visual.proj'"):
        baselines.merge("tsvm", pre, ex)


@pytest.mark.parametrize(
    "experts, names, expected",
    [
        ([], None, "at least one expert"),
        ("dict", None, r"wrap it as \[expert\]"),
        ("ok", ["a"], "one name per expert"),
        ("ok", "abc", "list of str"),
    ],
)
def test_bad_expert_list(experts, names, expected):
    pre, ex = tiny()
    if experts == "dict":
        experts = ex[0]
    elif experts == "ok":
        experts = ex
    with pytest.raises(MergeInputError, match=expected):
        baselines.merge("average", pre, experts, names=names)


def test_empty_or_non_mapping_pretrained():
    with pytest.raises(MergeInputError, match="empty"):
        baselines.merge("ta", {}, [{}])
    with pytest.raises(MergeInputError, match="state dict"):
        baselines.merge("ta", [torch.zeros(2)], [{}])


# --------------------------------------------------------------------------------------------
# Coverage presets and exclude


def test_coverage_plan_fda_vision():
    pre, _ = make_models(openclip_shapes(), 1)
    wudi = baselines.coverage_plan("wudi", pre, coverage="fda-vision")
    merged = {k for k, r in wudi.items() if r is Role.MERGE}
    assert merged == {
        f"model.visual.transformer.resblocks.{b}.{n}"
        for b in range(2)
        for n in ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    }
    assert all(r is Role.KEEP for k, r in wudi.items() if k not in merged)
    tsvm = baselines.coverage_plan("tsvm", pre, coverage="fda-vision")
    assert tsvm["model.text_projection"] is Role.MEAN  # 2-D but averaged, as the official script
    assert tsvm["model.visual.positional_embedding"] is Role.MERGE and tsvm["model.visual.proj"] is Role.MERGE
    assert tsvm["model.visual.conv1.weight"] is Role.MEAN and tsvm["model.logit_scale"] is Role.MEAN
    allc = baselines.coverage_plan("tsvm", pre)
    assert allc["model.text_projection"] is Role.MERGE


def test_coverage_fda_vision_maps_hf_clip_names():
    p = "vision_model.encoder.layers.0."
    shapes = {p + f"self_attn.{n}_proj.weight": (8, 8) for n in ("q", "k", "v", "out")}
    shapes.update({p + "self_attn.q_proj.bias": (8,), p + "mlp.fc1.weight": (32, 8), p + "mlp.fc2.weight": (8, 32),
                   "vision_model.embeddings.position_embedding.weight": (5, 8), "visual_projection.weight": (6, 8)})
    pre, _ = make_models(shapes, 1)
    plan = baselines.coverage_plan("wudi", pre, coverage="fda-vision")
    assert {k for k, r in plan.items() if r is Role.MERGE} == {k for k in shapes if k.startswith(p) and "bias" not in k}


def test_coverage_fda_nlu():
    pre, _ = make_models(bert_shapes(), 1)
    wudi = baselines.coverage_plan("wudi", pre, coverage="fda-nlu")
    merged = {k for k, r in wudi.items() if r is Role.MERGE}
    assert merged and all(k.startswith("bert.encoder.layer.") and k.endswith(".weight") and "LayerNorm" not in k for k in merged)
    assert len(merged) == 2 * 6
    tsvm = baselines.coverage_plan("tsvm", pre, coverage="fda-nlu")
    assert tsvm["classifier.weight"] is Role.KEEP and tsvm["classifier.bias"] is Role.KEEP
    assert tsvm["bert.embeddings.word_embeddings.weight"] is Role.MERGE
    assert tsvm["bert.embeddings.LayerNorm.weight"] is Role.MEAN
    ta = baselines.coverage_plan("ta", pre, coverage="fda-nlu")
    assert ta["classifier.weight"] is Role.KEEP and ta["bert.embeddings.LayerNorm.bias"] is Role.MERGE


def test_coverage_fda_llm():
    shapes = {"model.embed_tokens.weight": (20, 8), "model.norm.weight": (8,), "lm_head.weight": (20, 8)}
    for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
        shapes[f"model.layers.0.{n}.weight"] = (8, 8)
    shapes["model.layers.0.mlp.down_proj.weight"] = (8, 8)
    shapes["model.layers.0.input_layernorm.weight"] = (8,)
    pre, _ = make_models(shapes, 1)
    plan = baselines.coverage_plan("wudi", pre, coverage="fda-llm")
    assert {k for k, r in plan.items() if r is Role.MERGE} == {k for k in shapes if k.startswith("model.layers.0.") and "proj" in k}
    assert plan["lm_head.weight"] is Role.KEEP and plan["model.embed_tokens.weight"] is Role.KEEP


def test_exclude_keeps_keys_at_pretrained_for_every_method():
    pre, ex = tiny()
    for method in ALL_METHODS:
        out = baselines.merge(method, pre, ex, exclude=[r"\.proj$", "ln_"], **FAST.get(method, {}))
        for k in pre:
            if k.endswith(".proj") or "ln_" in k:
                assert torch.equal(out[k], pre[k]), (method, k)
            elif method != "ties" and not any(z in k for z in synthetic.ZERO_KEYS):
                assert not torch.equal(out[k], pre[k]), (method, k)  # TIES may trim a whole small tensor


def test_coverage_that_selects_nothing_is_an_error():
    pre, ex = make_models(bert_shapes(), 2)
    with pytest.raises(HyperparameterError, match="selects no tensor"):
        baselines.merge("wudi", pre, ex, coverage="fda-vision")
    with pytest.raises(HyperparameterError, match="selects no tensor"):
        baselines.merge("ta", pre, ex, exclude=["."])


# --------------------------------------------------------------------------------------------
# TA and averaging


def test_ta_is_exact_in_float64():
    pre, ex = make_models(openclip_shapes(), 4, torch.float64, zero_keys=())
    out = baselines.merge("ta", pre, ex, alpha=0.3)
    for k in pre:
        tau_sum = (ex[0][k] - pre[k]) + (ex[1][k] - pre[k]) + (ex[2][k] - pre[k]) + (ex[3][k] - pre[k])
        torch.testing.assert_close(out[k], pre[k] + 0.3 * tau_sum, rtol=1e-15, atol=1e-15)
        assert out[k].dtype == torch.float64


def test_ta_fda_nlu_keeps_classifier_and_alpha_scales():
    pre, ex = make_models(bert_shapes(), 3, torch.float64)
    out = baselines.merge("ta", pre, ex, alpha=0.2, coverage="fda-nlu")
    assert torch.equal(out["classifier.weight"], pre["classifier.weight"])
    k = "bert.encoder.layer.1.output.dense.weight"
    torch.testing.assert_close(out[k] - pre[k], 0.2 * sum(e[k] - pre[k] for e in ex), rtol=1e-12, atol=1e-15)


def test_average_is_the_mean_of_the_experts():
    pre, ex = make_models(bert_shapes(), 5, torch.float64)
    out = baselines.merge("average", pre, ex)
    for k in pre:
        torch.testing.assert_close(out[k], torch.stack([e[k] for e in ex]).mean(0), rtol=1e-12, atol=1e-14)


def test_average_equals_ta_with_alpha_one_over_t():
    pre, ex = make_models(openclip_shapes(), 4, torch.float64)
    a = baselines.merge("average", pre, ex)
    b = baselines.merge("ta", pre, ex, alpha=0.25)
    for k in pre:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------
# TIES, worked by hand


def _ties_case():
    """Three experts, two tensors (6 entries per task vector), θ0 = 1."""
    taus = [
        {"l.weight": [[5.0, -1.0], [2.0, 0.5]], "l.bias": [-4.0, 0.1]},
        {"l.weight": [[3.0, 2.0], [-6.0, 0.2]], "l.bias": [1.0, -0.3]},
        {"l.weight": [[-1.0, -3.0], [1.0, 0.4]], "l.bias": [2.0, -0.2]},
    ]
    pre = {"l.weight": torch.ones(2, 2, dtype=torch.float64), "l.bias": torch.ones(2, dtype=torch.float64)}
    ex = [{k: pre[k] + torch.tensor(v, dtype=torch.float64) for k, v in t.items()} for t in taus]
    return pre, ex


@pytest.mark.parametrize(
    "merge_func, weight, bias",
    [
        # topk 50% of 6 entries = 3 kept per task, kthvalue(3) threshold global over weight+bias,
        # entries equal to the threshold kept:
        #   τ1 |.| sorted .1 .5 1 2 4 5 -> thr 1 -> keeps 5, -1, 2, -4   (4 entries: the tie at 1)
        #   τ2 |.| sorted .2 .3 1 2 3 6 -> thr 2 -> keeps 3, 2, -6
        #   τ3 |.| sorted .2 .4 1 1 2 3 -> thr 1 -> keeps -1, -3, 1, 2
        # Summed trimmed: w [[7, -2], [-3, 0]], b [-2, 0] -> signs [[+, -], [-, 0]], [-, 0].
        # Agreeing entries: w00 {5, 3}, w01 {-1, -3}, w10 {-6}, b0 {-4}; w11 and b1 are trimmed everywhere.
        ("sum", [[8.0, -4.0], [-6.0, 0.0]], [-4.0, 0.0]),
        ("mean", [[4.0, -2.0], [-6.0, 0.0]], [-4.0, 0.0]),
        ("max", [[5.0, -3.0], [-6.0, 0.0]], [-4.0, 0.0]),
    ],
)
def test_ties_by_hand(merge_func, weight, bias):
    pre, ex = _ties_case()
    out = baselines.merge("ties", pre, ex, topk=50, merge_func=merge_func, alpha=0.5)
    torch.testing.assert_close(out["l.weight"], 1 + 0.5 * torch.tensor(weight, dtype=torch.float64))
    torch.testing.assert_close(out["l.bias"], 1 + 0.5 * torch.tensor(bias, dtype=torch.float64))


def test_ties_threshold_is_global_not_per_tensor():
    pre = {"w": torch.zeros(4, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)}
    ex = [{"w": torch.tensor([10.0, -20.0, 30.0, 40.0], dtype=torch.float64), "b": torch.tensor([1.0, -2.0], dtype=torch.float64)}]
    out = baselines.merge("ties", pre, ex, topk=50, alpha=1.0)
    # threshold = 3rd smallest |.| of all 6 entries = 10, entries >= 10 kept (the reference code's
    # convention: floor(P*k)+1 entries when distinct): all of "w", nothing of "b". A per-tensor
    # trim would have kept b's -2.
    assert out["w"].tolist() == [10.0, -20.0, 30.0, 40.0]
    assert out["b"].tolist() == [0.0, 0.0]


def test_ties_keep_all_is_sign_filtered_sum():
    pre, ex = _ties_case()
    out = baselines.merge("ties", pre, ex, topk=100, alpha=1.0)
    # nothing trimmed: w00 = sum of positives 5 + 3 (sum 7 > 0), b1 = -0.3 + -0.2 (sum -0.4 < 0)
    assert out["l.weight"][0, 0].item() == 1 + 8.0
    assert math.isclose(out["l.bias"][1].item(), 1 - 0.5, rel_tol=1e-12)


def test_ties_election_ties_take_the_majority_sign():
    from baselines.ties import ties_tensor

    trimmed = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.0, -3.0]])  # entry 0 sums to exactly 0
    torch.testing.assert_close(ties_tensor(trimmed, 1.0, "sum"), torch.tensor([1.0, 2.0, -3.0]))
    torch.testing.assert_close(ties_tensor(trimmed, -1.0, "sum"), torch.tensor([-1.0, 2.0, -3.0]))


def test_ties_merge_resolves_zero_sum_elections_with_the_global_majority():
    pre = {"w": torch.zeros(3, dtype=torch.float64)}
    ex = [{"w": torch.tensor(v, dtype=torch.float64)} for v in ([1.0, 5.0, 6.0], [-1.0, 3.0, 2.0])]
    # nothing trimmed; sums [0, 8, 8] -> signs [0, +, +]; the majority (+) decides entry 0 -> expert 0's +1
    out = baselines.merge("ties", pre, ex, topk=100, alpha=1.0)
    assert out["w"].tolist() == [1.0, 8.0, 8.0]
    ex = [{"w": -e["w"]} for e in ex]  # mirrored: majority (-) picks expert 0's -1
    assert baselines.merge("ties", pre, ex, topk=100, alpha=1.0)["w"].tolist() == [-1.0, -8.0, -8.0]
