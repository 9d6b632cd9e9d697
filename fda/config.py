"""FDA's typed settings: :class:`FDAConfig` with the paper's and the official code's values per
model family (``FDAConfig.for_family``), every field checked when the config is built."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from fda.adapt import ADAPT_LOSSES
from fda.anchors import CONSTRUCT_OPTIMIZERS, SIMILARITIES, ZERO_GRAD_POLICIES
from fda.blocks import QKV_LAYOUTS, BlockAdapter, families, registered_parts

#: family -> defaults kind
_KIND = {"clip-vision": "vision", "openclip": "vision", "bert": "text", "roberta": "text", "llama": "llm"}
_BATCHINGS = ("auto", "vmap", "loop")
_NON_BLOCK = ("pretrained", "init")
_SIZES = ("base", "large")


class FDAConfigError(ValueError):
    """An ``FDAConfig`` field (or a ``FDAConfig.for_family`` argument) that is unknown, of the wrong
    type or out of range. The message names the field, the value and the valid names or range."""


def is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _bad(name: str, value: object, expected: str) -> FDAConfigError:
    return FDAConfigError(f"FDAConfig.{name} must be {expected}, got {value!r} ({type(value).__name__})")


def _choices(values: Sequence[str]) -> str:
    return "one of " + ", ".join(repr(v) for v in values)


@dataclass
class FDAConfig:
    """All FDA settings. ``FDAConfig.for_family(family, init=...)`` gives the official values.

    Construction: ``n_anchors`` (64), ``tokens`` (None: from the model — vision patches+1, text 5,
    Llama MLP 1), ``construct_steps`` (1200; LLM 200: the budget in objective evaluations, for
    every optimiser), ``construct_lr`` (1e-2, AdamW defaults incl. wd 0.01),
    ``construct_optimizer`` (``adamw``, the official; ``lbfgs``, BEYOND the paper: strong-Wolfe
    L-BFGS per expert with ``lbfgs_history`` (20) curvature pairs, ``construct_lr`` unused),
    ``sigma`` (0.01: the gauss init's σ and the ``taskspan`` init's noise), ``similarity`` (``cos``|``mse``|``l1``),
    ``gauss_shared`` (None: family default — vision reuses one draw seeded with ``seed`` for every
    block and expert as the official code; text/LLM draw per (block, expert) from a derived seed).

    Adaptation: ``adapt_epochs``, ``adapt_lr``, ``adapt_batch``, ``adapt_loss`` (``cos``|``mse``|
    ``l1``, sum reduction), ``ta_lambda`` (TA init coefficient), ``train_mode`` (dropout during
    adaptation; None: official per family and init), ``non_block`` (``pretrained``|``init``; None:
    official per family).

    Engineering: ``seed``, ``part`` (Llama ``mlp``|``layer``), ``batching`` (``auto``|``vmap``|
    ``loop``: how the experts of one block are batched; same result; auto = vmap for >1 expert on CUDA, else loop), ``device``, ``progress``,
    ``sv_every`` (anchor singular values every k construction steps; 0 = off),
    ``zero_grad`` (tensors with an identically zero induced gradient, i.e. attention key biases:
    ``keep`` leaves them in the loss with their round-off gradient, as the official RoBERTa code;
    ``constant`` holds their 1 - cos at 1. None: ``constant`` for HF CLIP — the official open_clip
    blocks have no separate key bias, and the isolated round-off term makes HF CLIP trajectories
    depend on summation order — ``keep`` elsewhere; it matters only where a key bias is its own
    loss term, i.e. HF blocks with ``qkv_layout="split"``), ``qkv_layout`` (the q/k/v layout of the
    construction loss's per-tensor cosines: ``fused`` treats q, k, v weights and biases as one
    tensor each, as open_clip's ``in_proj`` in the official vision code; ``split`` as three, as HF
    stores them; None: as the model stores them. Official: ``fused`` for vision, ``split`` for
    text and LLM; it does not touch adaptation, which matches block outputs), ``init_hparams``
    (extra hyperparameters for ``baselines.merge`` when ``fda.merge`` computes the merged init).

    Every field is checked when the config is built (``__post_init__``; again by ``resolved``):
    a wrong type, an out-of-range value, an unknown choice or an unknown field raise
    :class:`FDAConfigError` naming the field, the value and the valid names or range.
    """

    family: str | None = None
    init: str = "pretrained"
    n_anchors: int = 64
    tokens: int | None = None
    construct_steps: int = 1200
    construct_lr: float = 1e-2
    construct_optimizer: Literal["adamw", "lbfgs"] = "adamw"
    lbfgs_history: int = 20
    sigma: float = 0.01
    similarity: Literal["cos", "mse", "l1"] = "cos"
    gauss_shared: bool | None = None
    adapt_epochs: int = 125
    adapt_lr: float = 5e-5
    adapt_batch: int = 128
    adapt_loss: Literal["cos", "mse", "l1"] = "mse"
    ta_lambda: float = 0.3
    train_mode: bool | None = None
    non_block: Literal["pretrained", "init"] | None = None
    seed: int = 0
    part: str | None = None
    batching: Literal["auto", "vmap", "loop"] = "auto"
    device: str | None = None
    progress: bool = True
    sv_every: int = 0
    zero_grad: Literal["keep", "constant"] | None = None
    qkv_layout: Literal["split", "fused"] | None = None
    init_hparams: dict[str, Any] = field(default_factory=dict)

    def __new__(cls, *args: Any, **kwargs: Any) -> FDAConfig:  # noqa: PYI034 - dataclasses.replace needs the class
        # an unknown field would otherwise be a bare TypeError from the generated __init__
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise FDAConfigError(f"FDAConfig has no field {', '.join(map(repr, unknown))}; valid fields: {', '.join(names)}")
        if len(args) > len(names):
            raise FDAConfigError(f"FDAConfig takes at most {len(names)} fields, got {len(args)} positional values; pass them by name")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def for_family(cls, family: str, *, init: str = "pretrained", size: str = "base", **overrides: Any) -> FDAConfig:
        """Official defaults for ``family`` (``clip-vision``, ``openclip``, ``bert``, ``roberta``,
        ``llama``) and ``init`` (``pretrained`` or a merged init). ``size="large"`` selects the
        RoBERTa-large schedule (25 / 15 epochs, TA λ 0.2). ``overrides`` replace any field."""
        kind = _KIND.get(family) if isinstance(family, str) else None
        if kind is None:
            raise FDAConfigError(f"unknown family {family!r}; known: {sorted(_KIND)} (or build FDAConfig(...) directly)")
        if not isinstance(init, str) or not init:
            raise FDAConfigError(f"FDAConfig.for_family: init must be 'pretrained' or a merged init's name (str), got {init!r}")
        if size not in _SIZES:
            raise FDAConfigError(f"FDAConfig.for_family: size must be {_choices(_SIZES)}, got {size!r}")
        merged = init != "pretrained"
        v: dict[str, Any] = {"family": family, "init": init}
        if kind == "vision":
            # Vision/construct.sh, Vision/adapt.sh; merged-init lr 1e-2 (TA script), TSV/WUDI assumed the same
            v.update(construct_steps=1200, adapt_epochs=100, adapt_lr=1e-2 if merged else 1e-5, adapt_batch=128,
                     adapt_loss="cos", ta_lambda=0.3, train_mode=True, non_block="pretrained",
                     zero_grad="constant" if family == "clip-vision" else "keep",
                     qkv_layout="fused")  # the official blocks are open_clip's (fused in_proj)
        elif kind == "text":
            large = size == "large"
            epochs = (15 if large else 100) if merged else (25 if large else 125)
            v.update(construct_steps=1200, adapt_epochs=epochs, adapt_lr=1e-2 if merged else 5e-5, adapt_batch=128,
                     adapt_loss="mse", ta_lambda=0.2 if large else 0.3,
                     # official NLU: eval mode from pretrained, train mode (dropout) from a merged init
                     train_mode=merged, non_block="pretrained", zero_grad="keep", qkv_layout="split")
        else:
            # NLG scripts: MLP anchors 8192 x 1 token, 200 steps; adaptation 50 epochs, lr 1e-2, batch 8192.
            # The official LLM path only adapts from a TA merge (λ 0.5) and keeps its non-MLP tensors.
            # From pretrained (no official run) weights are trained with lr 1e-5, the vision value.
            v.update(n_anchors=8192, construct_steps=200, adapt_epochs=50, adapt_lr=1e-2 if merged else 1e-5,
                     adapt_batch=8192, adapt_loss="cos", ta_lambda=0.5, train_mode=True, non_block="init",
                     zero_grad="keep", qkv_layout="split")
        v.update(overrides)
        return cls(**v)

    def resolved(self, adapter: BlockAdapter) -> FDAConfig:
        """A copy with every ``None`` filled in from ``adapter`` and the family defaults."""
        family = self.family or adapter.family
        # a registered family without official defaults: eval mode, θ0 outside the blocks, official zero_grad
        ref = (
            FDAConfig.for_family(family, init=self.init)
            if family in _KIND
            else FDAConfig(family=family, init=self.init, train_mode=False, non_block="pretrained", zero_grad="keep")
        )
        cfg = dataclasses.replace(self, family=family)
        if cfg.tokens is None:
            cfg.tokens = adapter.default_tokens()
        if cfg.gauss_shared is None:
            cfg.gauss_shared = adapter.vision
        if cfg.train_mode is None:
            cfg.train_mode = ref.train_mode
        if cfg.non_block is None:
            cfg.non_block = ref.non_block
        if cfg.zero_grad is None:
            cfg.zero_grad = ref.zero_grad
        if cfg.qkv_layout is None:
            cfg.qkv_layout = ref.qkv_layout
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check every field's type and range; raise :class:`FDAConfigError` naming the field, the value
        and the valid names or range. Run when the config is built, and again by ``resolved``."""
        for name, low in (("n_anchors", 1), ("adapt_batch", 1), ("construct_steps", 0), ("adapt_epochs", 0), ("sv_every", 0), ("lbfgs_history", 1)):
            v = getattr(self, name)
            if not is_int(v) or v < low:
                raise _bad(name, v, f"an int >= {low}")
        if self.tokens is not None and (not is_int(self.tokens) or self.tokens < 1):
            raise _bad("tokens", self.tokens, "an int >= 1, or None (from the model)")
        if not is_int(self.seed):
            raise _bad("seed", self.seed, "an int")
        for name in ("construct_lr", "adapt_lr", "sigma"):
            v = getattr(self, name)
            if not _is_real(v) or not (math.isfinite(v) and v > 0):
                raise _bad(name, v, "a positive finite number (float)")
        if not _is_real(self.ta_lambda) or not math.isfinite(self.ta_lambda):
            raise _bad("ta_lambda", self.ta_lambda, "a finite number (float)")
        if not isinstance(self.progress, bool):
            raise _bad("progress", self.progress, "True or False")
        for name in ("gauss_shared", "train_mode"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise _bad(name, v, "True, False or None (the family's default)")
        for name, valid in (("similarity", SIMILARITIES), ("adapt_loss", ADAPT_LOSSES), ("batching", _BATCHINGS), ("construct_optimizer", CONSTRUCT_OPTIMIZERS)):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in valid:
                raise _bad(name, v, _choices(valid))
        if self.construct_optimizer == "lbfgs" and self.batching == "vmap":
            raise _bad("batching", self.batching, "'auto' or 'loop' with construct_optimizer='lbfgs' (L-BFGS runs one expert at a time)")
        for name, valid in (("non_block", _NON_BLOCK), ("zero_grad", ZERO_GRAD_POLICIES), ("qkv_layout", QKV_LAYOUTS)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or v not in valid):
                raise _bad(name, v, _choices(valid) + " or None (the family's default)")
        known = families()
        if self.family is not None and (not isinstance(self.family, str) or self.family not in known):
            raise _bad("family", self.family, _choices(known) + " or None (from the model)")
        if not isinstance(self.init, str) or not self.init:
            raise _bad("init", self.init, "'pretrained' or a merged init's name (a baselines method: ta, tsvm, wudi, ...)")
        parts = registered_parts()
        if self.part is not None and (not isinstance(self.part, str) or self.part not in parts):
            raise _bad("part", self.part, (_choices(parts) + " or None" if parts else "None (no family offers parts)"))
        if self.device is not None:
            if not isinstance(self.device, (str, torch.device)):
                raise _bad("device", self.device, "a torch device name such as 'cpu' or 'cuda:0', or None (CPU)")
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise _bad("device", self.device, "a torch device name such as 'cpu' or 'cuda:0', or None (CPU)") from None
        if not isinstance(self.init_hparams, Mapping) or not all(isinstance(k, str) for k in self.init_hparams):
            raise _bad("init_hparams", self.init_hparams, "a dict of baselines hyperparameters (str keys)")

    def construction_metadata(self) -> dict[str, Any]:
        keys = ("family", "n_anchors", "tokens", "construct_steps", "construct_lr", "construct_optimizer", "lbfgs_history", "sigma",
                "similarity", "gauss_shared", "seed", "part", "zero_grad", "qkv_layout", "batching")
        return {k: getattr(self, k) for k in keys}
