"""No silent NaN/inf in any merge path.

Inputs: every entry point (``baselines.merge``, ``fda.merge``, ``construct_block``, ``adapt_block``,
``assemble``, ``load_anchors``, the streamed layer jobs and ``stream_merge``) rejects a non-finite
input tensor with ``MergeInputError`` naming the expert (index, name or path) and the key.
Outputs: a non-finite result is a ``NonFiniteError`` naming the hyperparameters that scale it
(``alpha``, ``adapt_lr``, ``construct_lr``, ``sigma``, ``ta_lambda``), and nothing is written.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_fda_models import states, tiny_bert, tiny_clip, tiny_llama

import baselines
import fda
from baselines import HyperparameterError, MergeInputError, NonFiniteError
from fda import FDAConfig
from fda.blocks import adapter_for
from fda.io.checkpoints import SAFETENSORS_INDEX, LazyCheckpoint, save_state_dict

QUERY = "encoder.layer.1.attention.self.query.weight"  # a block tensor of tiny BERT's block 1
EMB = "embeddings.word_embeddings.weight"  # outside the blocks


def small(family: str = "bert", init: str = "pretrained", **kw) -> FDAConfig:
    base = {"n_anchors": 8, "tokens": 3 if family == "bert" else None, "construct_steps": 3, "adapt_epochs": 3, "adapt_batch": 4,
            "progress": False}
    return FDAConfig.for_family(family, init=init, **{**base, **kw})


def poisoned(state: dict, key: str, value: float = math.nan) -> dict:
    out = dict(state)
    out[key] = state[key].clone()
    out[key].view(-1)[0] = value
    return out


@pytest.fixture(scope="module")
def bert():
    model = tiny_bert()
    pre, experts = states(model, 2)
    return model, pre, experts


# ------------------------------------------------------------------------------------------------
# baselines: outputs and hyperparameters


@pytest.mark.parametrize("method", ["ta", "tsvm", "ties", "wudi"])
def test_overflowing_alpha_is_an_error_naming_alpha_and_the_key(bert, method):
    _, pre, experts = bert
    hp = {"alpha": 1e300, **({"steps": 2} if method == "wudi" else {})}
    with pytest.raises(NonFiniteError) as err:
        baselines.merge(method, pre, experts, **hp)
    msg = str(err.value)
    assert msg.startswith(f"{method}: the merged tensor '") and "alpha=1e+300" in msg and "lower alpha" in msg, msg
    if method == "wudi":  # WUDI's Adam schedule also scales the result
        assert "lr=1e-05" in msg and "steps=2" in msg


def test_overflow_in_the_stored_dtype_names_it(bert):
    _, pre, experts = bert
    half = lambda sd: {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    with pytest.raises(NonFiniteError, match=r"stored as float16\) with alpha=1000000.0: lower alpha"):
        baselines.merge("ta", half(pre), [half(e) for e in experts], alpha=1e6)


def test_average_of_finite_inputs_is_checked_too(bert, monkeypatch):
    _, pre, experts = bert
    from baselines import engine

    monkeypatch.setattr(engine, "mean_task_vector", lambda taus: torch.full(taus.shape, math.inf))
    with pytest.raises(NonFiniteError, match=r"^average: the merged tensor '.*' is non-finite \(inf"):
        baselines.merge("average", pre, experts)


def test_out_of_range_alpha_fails_before_any_work(bert):
    _, pre, experts = bert
    for method in ("ta", "tsvm", "ties", "wudi"):
        with pytest.raises(HyperparameterError, match="alpha"):
            baselines.merge(method, pre, [poisoned(experts[0], QUERY)], alpha=math.inf)  # before the input check


def test_baselines_input_nan_names_expert_and_key(bert):
    _, pre, experts = bert
    with pytest.raises(MergeInputError, match=rf"expert 1 \('b'\): tensor '{QUERY}' has 1 non-finite"):
        baselines.merge("ta", pre, [experts[0], poisoned(experts[1], QUERY)], names=["a", "b"])


# ------------------------------------------------------------------------------------------------
# FDA inputs: each entry point


def test_construct_block_names_the_expert_and_key(bert):
    model, pre, experts = bert
    bad = {"mnist": experts[0], "svhn": poisoned(experts[1], QUERY, math.inf)}
    with pytest.raises(MergeInputError, match=rf"expert 1 \('svhn'\): tensor '{QUERY}' has 1 non-finite"):
        fda.construct_block(model, pre, bad, 1, "gauss", small())
    # a subset is named by the expert's real index
    with pytest.raises(MergeInputError, match=rf"expert 1: tensor '{QUERY}'"):
        fda.construct_block(model, pre, [experts[0], poisoned(experts[1], QUERY)], 1, "gauss", small(), experts_subset=[1])
    with pytest.raises(MergeInputError, match=rf"pretrained model: tensor '{QUERY}'"):
        fda.construct_block(model, poisoned(pre, QUERY), experts, 1, "gauss", small())


def test_construct_block_checks_shapes_dtypes_and_expert_count(bert):
    model, pre, experts = bert
    wrong = dict(experts[1])
    wrong[QUERY] = experts[1][QUERY].double()
    with pytest.raises(MergeInputError, match=rf"expert 1: tensor '{QUERY}' is torch.float64"):
        fda.construct_block(model, pre, [experts[0], wrong], 1, "gauss", small())
    wrong[QUERY] = experts[1][QUERY][:, :5]
    with pytest.raises(MergeInputError, match=rf"expert 1: tensor '{QUERY}' has shape \(32, 5\)"):
        fda.construct_block(model, pre, [experts[0], wrong], 1, "gauss", small())
    with pytest.raises(MergeInputError, match="at least one expert"):
        fda.construct_block(model, pre, [], 1, "gauss", small())
    with pytest.raises(MergeInputError, match="experts_subset"):
        fda.construct_block(model, pre, experts, 1, "gauss", small(), experts_subset=[2])
    missing = {k: v for k, v in experts[0].items() if k != QUERY}
    with pytest.raises(MergeInputError, match=rf"expert 0 lacks block 1 tensors \['{QUERY}'\]"):
        fda.construct_block(model, pre, [missing], 1, "gauss", small())


def test_construct_block_names_a_lazy_expert_by_its_path(bert, tmp_path):
    model, pre, experts = bert
    save_state_dict(poisoned(experts[1], QUERY), tmp_path / "e1.safetensors")
    lazy = [experts[0], LazyCheckpoint(tmp_path / "e1.safetensors")]
    with pytest.raises(MergeInputError, match=rf"expert 1 at .*e1.safetensors: tensor '{QUERY}'"):
        fda.construct_block(model, pre, lazy, 1, "gauss", small())


def test_adapt_block_checks_experts_init_state_and_anchors(bert):
    model, pre, experts = bert
    anchors = [torch.randn(8, 3, 32) for _ in experts]
    with pytest.raises(MergeInputError, match=rf"expert 0: tensor '{QUERY}'"):
        fda.adapt_block(model, pre, [poisoned(experts[0], QUERY), experts[1]], 1, anchors, "pretrained", None, small())
    init_state = poisoned(baselines.merge("ta", pre, experts), QUERY)
    with pytest.raises(MergeInputError, match=rf"merged init \(init_state\): tensor '{QUERY}'"):
        fda.adapt_block(model, pre, experts, 1, anchors, "tsvm", init_state, small(init="tsvm"))
    bad = [anchors[0], anchors[1].clone()]
    bad[1][0, 0, 0] = math.nan
    with pytest.raises(MergeInputError, match=r"anchors of expert 1: tensor 'anchors' has 1 non-finite"):
        fda.adapt_block(model, pre, experts, 1, bad, "pretrained", None, small())
    with pytest.raises(MergeInputError, match="1 anchor sets for 2 experts"):
        fda.adapt_block(model, pre, experts, 1, anchors[:1], "pretrained", None, small())
    with pytest.raises(MergeInputError, match=r"anchors of expert 0: shape \(8, 3, 16\)"):
        fda.adapt_block(model, pre, experts, 1, [torch.randn(8, 3, 16)] * 2, "pretrained", None, small())


def test_merge_checks_the_whole_model_before_any_work(bert, monkeypatch):
    model, pre, experts = bert
    import fda.api

    def no_work(*a, **k):
        raise AssertionError("construction ran before the input check")

    monkeypatch.setattr(fda.api, "construct_anchors", no_work)
    # a tensor outside the blocks, which FDA from pretrained never reads per block
    with pytest.raises(MergeInputError, match=rf"expert 1 \('b'\): tensor '{EMB}'"):
        fda.merge(model, pre, {"a": experts[0], "b": poisoned(experts[1], EMB)}, config=small())
    extra = {**experts[1], "classifier.weight": torch.zeros(2, 32)}
    with pytest.raises(MergeInputError, match="'classifier.weight'.*pretrained model lacks"):
        fda.merge(model, pre, [experts[0], extra], config=small())
    with pytest.raises(MergeInputError, match="at least one expert"):
        fda.merge(model, pre, [], config=small())
    with pytest.raises(MergeInputError, match=rf"merged init \(init_state\): tensor '{EMB}'"):
        fda.merge(model, pre, experts, init="tsvm", init_state=poisoned(pre, EMB), config=small(init="tsvm"))


def test_merge_checks_the_init_hyperparameters_before_reading_inputs(bert):
    model, pre, experts = bert
    bad = [experts[0], poisoned(experts[1], EMB)]  # would be a MergeInputError if read first
    with pytest.raises(HyperparameterError, match="alpha"):
        fda.merge(model, pre, bad, init="ta", config=small(init="ta", init_hparams={"alpha": math.nan}))
    with pytest.raises(baselines.UnknownMethodError, match="tsvmm"):
        fda.merge(model, pre, bad, init="tsvmm", config=small(init="tsvmm"))


def test_assemble_checks_what_it_writes(bert):
    model, pre, experts = bert
    keys = adapter_for(model).block_keys(1)
    adapted = {k: pre[k] + 0.01 for k in keys}
    cfg = small(adapt_lr=1e-3)
    fda.assemble(pre, None, adapted, model, cfg)  # fine
    with pytest.raises(NonFiniteError, match=rf"FDA assemble: the adapted tensor '{QUERY}' is non-finite \(NaN.* with adapt_lr=0.001"):
        fda.assemble(pre, None, poisoned(adapted, QUERY), model, cfg)
    with pytest.raises(MergeInputError, match=rf"pretrained model: tensor '{EMB}'"):
        fda.assemble(poisoned(pre, EMB), None, adapted, model, cfg)
    init_state = baselines.merge("ta", pre, experts)
    with pytest.raises(MergeInputError, match=rf"merged init \(init_state\): tensor '{EMB}'"):
        fda.assemble(pre, poisoned(init_state, EMB), adapted, model, small(non_block="init"))
    with pytest.raises(MergeInputError, match=rf"adapted tensor '{QUERY}' has shape \(32, 5\)"):
        fda.assemble(pre, None, {**adapted, QUERY: adapted[QUERY][:, :5]}, model, cfg)


def test_assemble_catches_an_overflow_of_the_output_dtype(bert):
    model, pre, _ = bert
    half = {k: v.half() if v.is_floating_point() else v for k, v in pre.items()}
    adapted = {QUERY: torch.full_like(pre[QUERY], 1e6)}  # finite in fp32, inf in fp16
    with pytest.raises(NonFiniteError, match=r"stored as float16"):
        fda.assemble(half, None, adapted, model, small())


def test_anchor_files_are_checked_on_save_and_load(bert, tmp_path):
    model, pre, experts = bert
    (res,) = fda.construct_block(model, pre, experts, 0, "gauss", small(construct_steps=1), experts_subset=[0])
    res.anchors[0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="anchor tensor of block 0, expert 0 is non-finite"):
        fda.save_anchors(res, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()
    save_state_dict({"anchors": res.anchors}, tmp_path / "bad.safetensors")  # written by someone else
    with pytest.raises(MergeInputError, match=r"anchors file .*bad.safetensors: tensor 'anchors' has 1 non-finite"):
        fda.load_anchors(tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------------------------
# FDA: diverging hyperparameters stop with an error naming them


def test_adapt_lr_that_diverges_stops_within_one_epoch(bert):
    model, pre, experts = bert
    anchors = [torch.randn(8, 3, 32) for _ in experts]
    with pytest.raises(NonFiniteError) as err:
        fda.adapt_block(model, pre, experts, 1, anchors, "pretrained", None, small(adapt_lr=1e30, adapt_epochs=50))
    msg = str(err.value)
    assert "block 1" in msg and "epoch 1 of 50" in msg and "adapt_lr=1e+30" in msg and "lower adapt_lr" in msg, msg


def test_adapt_lr_that_diverges_from_a_merged_init_on_llama():
    model = tiny_llama()
    pre, experts = states(model, 2)
    with pytest.raises(NonFiniteError, match=r"block 0: .*epoch 1 of 40.*adapt_lr=1e\+30"):
        fda.adapt_block(model, pre, experts, 0, [torch.randn(8, 32) for _ in experts], "ta", None,
                        small("llama", "ta", adapt_lr=1e30, adapt_epochs=40))  # fmt: skip


def test_adapted_tensors_are_checked_even_when_the_loss_stays_finite(bert, monkeypatch):
    """One batch per epoch, one epoch: the only loss is taken before the step; the result is checked."""
    model, pre, experts = bert
    import fda.adapt

    real = fda.adapt.adapt_loss
    monkeypatch.setattr(fda.adapt, "adapt_loss", lambda out, y, kind: real(out, y, kind) * 0 + 1.0)  # constant loss
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, closure=None: [p.data.fill_(math.nan) for g in self.param_groups for p in g["params"]])
    with pytest.raises(NonFiniteError, match=r"block 1: the adapted tensor '.*' is non-finite \(NaN.* with adapt_lr=0.001"):
        fda.adapt_block(model, pre, experts, 1, [torch.randn(2, 3, 32)] * 2, "pretrained", None,
                        small(adapt_lr=1e-3, adapt_epochs=1, adapt_batch=8))  # fmt: skip


def test_ta_lambda_that_overflows_the_start_is_named():
    model = tiny_llama()
    pre, experts = states(model, 2)
    with pytest.raises(NonFiniteError, match=r"before any step with ta_lambda=1e\+38.*lower ta_lambda"):
        fda.adapt_block(model, pre, experts, 0, [torch.randn(8, 32) for _ in experts], "ta", None, small("llama", "ta", ta_lambda=1e38))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_construct_lr_that_diverges_stops_at_once(family):
    model = tiny_bert() if family == "bert" else tiny_llama()
    pre, experts = states(model, 2)
    with pytest.raises(NonFiniteError) as err:
        fda.construct_block(model, pre, experts, 1, "gauss", small(family, construct_lr=1e30, construct_steps=50))
    msg = str(err.value)
    assert "block 1" in msg and "of 50 with construct_lr=1e+30" in msg and "lower construct_lr" in msg, msg
    assert "step 1 of 50" in msg or "step 2 of 50" in msg, msg


def test_sigma_that_overflows_the_gauss_anchors_is_named(bert):
    model, pre, experts = bert
    with pytest.raises(NonFiniteError, match=r"initial gauss anchor tensor of expert 0 is non-finite \(inf.* with sigma=1e\+39"):
        fda.construct_block(model, pre, experts, 1, "gauss", small(sigma=1e39))


def test_merge_stops_on_divergence_and_returns_nothing(bert):
    model, pre, experts = bert
    with pytest.raises(NonFiniteError, match="adapt_lr=1e\\+30"):
        fda.merge(model, pre, experts, anchor_init="weight", config=small(adapt_lr=1e30, adapt_epochs=20))


# ------------------------------------------------------------------------------------------------
# streamed paths


def _poison_dir(d, key: str, value: float = math.nan) -> None:
    """Set one value of ``key`` in a sharded safetensors directory (rewriting its shard)."""
    shard = d / json.loads((d / SAFETENSORS_INDEX).read_text())["weight_map"][key]
    sd = load_file(str(shard))
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = value
    save_file(sd, str(shard), metadata={"format": "pt"})


@pytest.fixture()
def llama_dirs(tmp_path):
    from fda.io.synthetic import llama_config, write_expert, write_synthetic_llama

    base = write_synthetic_llama(tmp_path / "base", llama_config(2, hidden=32, vocab=64), shard_size="20KB")
    return base, [write_expert(base, tmp_path / f"e{i}", seed=i + 1, scale=0.05, shard_size="20KB") for i in range(2)]


UP = "model.layers.1.mlp.up_proj.weight"


@pytest.mark.parametrize("method", ["ta", "ties"])
def test_stream_merge_names_the_source_path_and_key(llama_dirs, tmp_path, method):
    from fda.io.streaming import stream_merge

    base, experts = llama_dirs
    _poison_dir(experts[1], UP)
    with pytest.raises(MergeInputError, match=rf"expert1 \(.*e1\): tensor '{UP}' has 1 non-finite"):
        stream_merge(method, base, experts, tmp_path / "out", shard_size="20KB")
    assert not (tmp_path / "out" / SAFETENSORS_INDEX).exists()
    if method == "ties":  # its threshold pass reads every merged tensor before anything is written
        assert not list((tmp_path / "out").glob("*.safetensors"))


def test_stream_merge_checks_the_base_and_callables(llama_dirs, tmp_path):
    from fda.io.streaming import stream_merge

    base, experts = llama_dirs
    with pytest.raises(NonFiniteError, match=r"stream_merge\(nan_merge\): the merged tensor '.*' \(block model.layers.0.\)"):
        def nan_merge(pre, exps):
            return {k: torch.full_like(v, math.nan) for k, v in pre.items()}

        stream_merge(nan_merge, base, experts, tmp_path / "out")
    with pytest.raises(NonFiniteError, match="ta: the merged tensor .* with alpha=1e\\+300"):
        stream_merge("ta", base, experts, tmp_path / "out2", hparams={"alpha": 1e300})
    _poison_dir(base, "model.norm.weight", math.inf)
    with pytest.raises(MergeInputError, match=r"base \(.*base\): tensor 'model.norm.weight'"):
        stream_merge("ta", base, experts, tmp_path / "out3")
    for out in ("out", "out2", "out3"):
        assert not (tmp_path / out / SAFETENSORS_INDEX).exists()


def test_streamed_layer_jobs_check_inputs_and_outputs(llama_dirs, tmp_path):
    from fda.streamed import adapt_layer, assemble_streamed, construct_layer

    base, experts = llama_dirs
    cfg = small("llama", "ta")
    paths = [tmp_path / f"a{i}.safetensors" for i in range(2)]
    construct_layer(base, experts, 1, "gauss", config=cfg, out_paths=paths)
    with pytest.raises(NonFiniteError, match=r"block 1: .*adapt_lr=1e\+30"):
        adapt_layer(base, experts, 1, paths, init="ta", config=small("llama", "ta", adapt_lr=1e30, adapt_epochs=20),
                    out_path=tmp_path / "never.safetensors")  # fmt: skip
    assert not (tmp_path / "never.safetensors").exists()
    good = adapt_layer(base, experts, 1, paths, init="ta", config=cfg, out_path=tmp_path / "blk1.safetensors")

    # an anchors file with NaN: the error names the file
    bad_anchor = load_file(str(paths[1]))
    bad_anchor["anchors"][0, 0] = math.nan
    save_file(bad_anchor, str(tmp_path / "bad.safetensors"))
    with pytest.raises(MergeInputError, match=r"anchors file .*bad.safetensors"):
        adapt_layer(base, experts, 1, [paths[0], tmp_path / "bad.safetensors"], init="ta", config=cfg)

    # assembling an adapted block with NaN (or of the wrong shape) writes no model
    nan_block = {k: v.clone() for k, v in good.params.items()}
    nan_block[UP].view(-1)[0] = math.nan
    save_state_dict(nan_block, tmp_path / "nan.safetensors")
    with pytest.raises(NonFiniteError, match=rf"assemble_streamed\(.*nan.safetensors\): the adapted tensor '{UP}'"):
        assemble_streamed(base, [tmp_path / "nan.safetensors"], tmp_path / "fda")
    assert not (tmp_path / "fda" / SAFETENSORS_INDEX).exists()
    save_state_dict({UP: good.params[UP][:, :4]}, tmp_path / "narrow.safetensors")
    from fda.io.stream_source import StreamingError

    with pytest.raises(StreamingError, match=rf"adapted tensor '{UP}' has shape"):
        assemble_streamed(base, [tmp_path / "narrow.safetensors"], tmp_path / "fda2")

    # a non-finite tensor of the source (the TA merge, or base) outside the adapted ones
    assemble_streamed(base, [tmp_path / "blk1.safetensors"], tmp_path / "fine")
    _poison_dir(base, "model.norm.weight")
    with pytest.raises(MergeInputError, match=r"source \(.*base\): tensor 'model.norm.weight'"):
        assemble_streamed(base, [tmp_path / "blk1.safetensors"], tmp_path / "fda3")
    assert not (tmp_path / "fda3" / SAFETENSORS_INDEX).exists()

    # an expert layer with NaN: construction names the expert's path and the key
    _poison_dir(experts[0], UP)
    with pytest.raises(MergeInputError, match=rf"expert 0 at .*e0: tensor '{UP}'"):
        construct_layer(base, experts, 1, "gauss", config=cfg)


def test_clip_family_input_check():
    model = tiny_clip()
    pre, experts = states(model, 2)
    key = "encoder.layers.0.self_attn.k_proj.bias"
    with pytest.raises(MergeInputError, match=rf"expert 1: tensor '{key}'"):
        fda.construct_block(model, pre, [experts[0], poisoned(experts[1], key)], 0, "weight", small("clip-vision"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_is_finite_agrees_with_isfinite_all(dtype):
    # is_finite goes through aminmax for speed: one NaN or inf anywhere, alone or together, any dtype
    from baselines.finite import is_finite

    gen = torch.Generator().manual_seed(0)
    for bad in (None, float("nan"), float("inf"), float("-inf")):
        for where in (0, 17, 99):
            t = torch.randn(100, generator=gen).to(dtype)
            if bad is not None:
                t[where] = bad
            assert is_finite(t) == bool(torch.isfinite(t).all()), (dtype, bad, where)
    t = torch.randn(10).to(dtype)
    t[2], t[5] = float("nan"), float("inf")
    assert not is_finite(t)
    assert is_finite(torch.empty(0, dtype=dtype)) and is_finite(torch.tensor([1, 2])) and is_finite(torch.tensor(3.0, dtype=dtype))
