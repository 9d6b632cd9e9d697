"""``FDAConfig`` checks its fields when it is built: wrong types, out-of-range values, unknown enum
values and unknown fields are an ``FDAConfigError`` (a ``ValueError``) naming the field, the value and
the valid names or range, never a TypeError from torch later. The official values are unchanged."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fda import FDAConfig
from fda.config import FDAConfigError


def test_the_error_is_a_value_error():
    assert issubclass(FDAConfigError, ValueError)


def test_defaults_and_every_family_build():
    FDAConfig()
    for family in ("clip-vision", "openclip", "bert", "roberta", "llama"):
        for init in ("pretrained", "ta", "tsvm", "wudi"):
            for size in ("base", "large"):
                FDAConfig.for_family(family, init=init, size=size)


def test_official_defaults_did_not_move():
    d = FDAConfig()
    assert (d.n_anchors, d.tokens, d.construct_steps, d.construct_lr, d.sigma, d.similarity) == (64, None, 1200, 1e-2, 0.01, "cos")
    assert (d.adapt_epochs, d.adapt_lr, d.adapt_batch, d.adapt_loss, d.ta_lambda) == (125, 5e-5, 128, "mse", 0.3)
    assert (d.train_mode, d.non_block, d.seed, d.part, d.batching, d.device, d.progress, d.sv_every) == (
        None, None, 0, None, "auto", None, True, 0)  # fmt: skip
    assert (d.zero_grad, d.qkv_layout, d.init_hparams, d.gauss_shared, d.family, d.init) == (None, None, {}, None, None, "pretrained")
    v = FDAConfig.for_family("clip-vision", init="ta")
    assert (v.adapt_lr, v.adapt_epochs, v.zero_grad, v.qkv_layout, v.train_mode) == (1e-2, 100, "constant", "fused", True)
    llm = FDAConfig.for_family("llama")
    assert (llm.n_anchors, llm.construct_steps, llm.adapt_lr, llm.adapt_batch, llm.non_block) == (8192, 200, 1e-5, 8192, "init")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("n_anchors", 0, ">= 1"),
        ("n_anchors", -3, ">= 1"),
        ("n_anchors", "64", "an int"),
        ("n_anchors", 64.0, "an int"),
        ("n_anchors", True, "an int"),
        ("adapt_batch", 0, ">= 1"),
        ("tokens", 0, ">= 1"),
        ("tokens", "5", "an int"),
        ("construct_steps", -1, ">= 0"),
        ("construct_steps", 1.5, "an int"),
        ("adapt_epochs", -1, ">= 0"),
        ("adapt_epochs", "100", "an int"),
        ("sv_every", -2, ">= 0"),
        ("seed", "0", "an int"),
        ("adapt_lr", "fast", "positive finite number"),
        ("adapt_lr", "1e-5", "positive finite number"),
        ("adapt_lr", 0.0, "positive finite number"),
        ("adapt_lr", -1e-3, "positive finite number"),
        ("adapt_lr", math.inf, "positive finite number"),
        ("adapt_lr", math.nan, "positive finite number"),
        ("construct_lr", 0, "positive finite number"),
        ("construct_lr", None, "positive finite number"),
        ("sigma", -0.01, "positive finite number"),
        ("ta_lambda", math.nan, "finite number"),
        ("ta_lambda", "0.3", "finite number"),
        ("progress", "yes", "True or False"),
        ("train_mode", 1, "True, False or None"),
        ("gauss_shared", "no", "True, False or None"),
        ("similarity", "cosine", "'cos', 'mse', 'l1'"),
        ("adapt_loss", "huber", "'cos', 'mse', 'l1'"),
        ("batching", "threads", "'auto', 'vmap', 'loop'"),
        ("non_block", "merged", "'pretrained', 'init'"),
        ("zero_grad", "drop", "'keep', 'constant'"),
        ("qkv_layout", "merged", "'split', 'fused'"),
        ("family", "gpt2", "'bert'"),
        ("init", "", "'pretrained'"),
        ("init", 3, "'pretrained'"),
        ("part", "attention", "'mlp', 'layer'"),
        ("device", "gpu0", "torch device"),
        ("device", 0, "torch device"),
        ("init_hparams", ["alpha"], "dict"),
    ],
)
def test_bad_field_names_field_value_and_valid_range(field, value, expected):
    with pytest.raises(FDAConfigError) as err:
        FDAConfig(**{field: value})
    msg = str(err.value)
    assert f"FDAConfig.{field}" in msg and repr(value) in msg and expected in msg, msg
    # for_family checks its overrides the same way (family and init are its own arguments)
    with pytest.raises(FDAConfigError, match=f"FDAConfig.{field}" if field not in ("family", "init") else field):
        if field == "family":
            FDAConfig.for_family(value)
        else:
            FDAConfig.for_family("bert", **{field: value})


def test_unknown_field_lists_the_valid_ones():
    with pytest.raises(FDAConfigError) as err:
        FDAConfig(bogus=1)
    msg = str(err.value)
    assert "'bogus'" in msg and "n_anchors" in msg and "adapt_lr" in msg and "qkv_layout" in msg
    with pytest.raises(FDAConfigError, match="'adapt_lrr'.*valid fields: .*adapt_lr"):
        FDAConfig.for_family("roberta", init="ta", adapt_lrr=1e-3)


def test_for_family_arguments_are_checked():
    with pytest.raises(FDAConfigError, match="unknown family 'gpt2'.*bert"):
        FDAConfig.for_family("gpt2")
    with pytest.raises(FDAConfigError, match="size must be one of 'base', 'large', got 'xl'"):
        FDAConfig.for_family("roberta", size="xl")
    with pytest.raises(FDAConfigError, match="init"):
        FDAConfig.for_family("roberta", init=None)


def test_replace_and_resolved_check_too():
    cfg = FDAConfig.for_family("bert")
    with pytest.raises(FDAConfigError, match="adapt_batch"):
        dataclasses.replace(cfg, adapt_batch=0)
    cfg.adapt_loss = "huber"  # mutated after building: caught when the config is used
    with pytest.raises(FDAConfigError, match="adapt_loss"):
        cfg.validate()


def test_valid_numbers_of_other_numeric_types_are_kept_as_given():
    cfg = FDAConfig(adapt_lr=1, construct_lr=2, ta_lambda=-0.5, seed=-1, sigma=1)
    assert cfg.adapt_lr == 1 and type(cfg.adapt_lr) is int  # not converted: metadata stays as given
    np = pytest.importorskip("numpy")
    FDAConfig(n_anchors=np.int64(8), adapt_lr=np.float32(1e-3))
