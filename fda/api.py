"""The FDA public API: typed config with the paper's defaults, per-block steps, the one-call merge.

``model`` is always an ``nn.Module`` of the pretrained architecture, used for structure only;
the weights come from the state dicts (``pretrained``, ``experts``, ``init_state``). State dicts
may also be :class:`fda.io.checkpoints.LazyCheckpoint` objects: only the block in hand is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from fda.adapt import ADAPT_LOSSES, AdaptResult, adapt
from fda.anchors import ANCHOR_INITS, SIMILARITIES, ConstructResult, construct_anchors, derive_seed, init_anchors
from fda.blocks import QKV_LAYOUTS, BlockAdapter, adapter_for
from fda.io.checkpoints import LazyCheckpoint, read_metadata, save_state_dict

StateDict = dict[str, torch.Tensor]
StateLike = Union[Mapping[str, torch.Tensor], LazyCheckpoint]

#: family -> defaults kind
_KIND = {"clip-vision": "vision", "openclip": "vision", "bert": "text", "roberta": "text", "llama": "llm"}


@dataclass
class FDAConfig:
    """All FDA settings. ``FDAConfig.for_family(family, init=...)`` gives the official values.

    Construction: ``n_anchors`` (64), ``tokens`` (None: from the model — vision patches+1, text 5,
    Llama MLP 1), ``construct_steps`` (1200; LLM 200), ``construct_lr`` (1e-2, AdamW defaults
    incl. wd 0.01), ``sigma`` (0.01, gauss init), ``similarity`` (``cos``|``mse``|``l1``),
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
    """

    family: str | None = None
    init: str = "pretrained"
    n_anchors: int = 64
    tokens: int | None = None
    construct_steps: int = 1200
    construct_lr: float = 1e-2
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

    @classmethod
    def for_family(cls, family: str, *, init: str = "pretrained", size: str = "base", **overrides: Any) -> FDAConfig:
        """Official defaults for ``family`` (``clip-vision``, ``openclip``, ``bert``, ``roberta``,
        ``llama``) and ``init`` (``pretrained`` or a merged init). ``size="large"`` selects the
        RoBERTa-large schedule (25 / 15 epochs, TA λ 0.2). ``overrides`` replace any field."""
        kind = _KIND.get(family)
        if kind is None:
            raise ValueError(f"unknown family {family!r}; known: {sorted(_KIND)} (or build FDAConfig(...) directly)")
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
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.adapt_loss not in ADAPT_LOSSES:
            raise ValueError(f"adapt_loss must be one of {ADAPT_LOSSES}, got {self.adapt_loss!r}")
        if self.non_block not in (None, "pretrained", "init"):
            raise ValueError(f"non_block must be 'pretrained' or 'init', got {self.non_block!r}")
        if self.zero_grad not in (None, "keep", "constant"):
            raise ValueError(f"zero_grad must be 'keep' or 'constant', got {self.zero_grad!r}")
        if self.qkv_layout not in (None, *QKV_LAYOUTS):
            raise ValueError(f"qkv_layout must be 'split' or 'fused', got {self.qkv_layout!r}")
        if self.batching not in ("auto", "vmap", "loop"):
            raise ValueError(f"batching must be 'auto', 'vmap' or 'loop', got {self.batching!r}")
        for name in ("n_anchors", "adapt_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("construct_steps", "adapt_epochs", "sv_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    def construction_metadata(self) -> dict[str, Any]:
        keys = ("family", "n_anchors", "tokens", "construct_steps", "construct_lr", "sigma", "similarity", "gauss_shared", "seed", "part", "zero_grad", "qkv_layout", "batching")
        return {k: getattr(self, k) for k in keys}


# ------------------------------------------------------------------------------------------------
# helpers


def _adapter(model: nn.Module, config: FDAConfig) -> tuple[BlockAdapter, FDAConfig]:
    adapter = adapter_for(model, config.part)
    return adapter, config.resolved(adapter)


def _block_tensors(state: StateLike, adapter: BlockAdapter, block: int) -> StateDict:
    """The block's tensors by local name, read lazily when ``state`` is a LazyCheckpoint."""
    prefix, names = adapter.block_prefix(block), adapter.param_names(block)
    keys = [prefix + n for n in names]
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(f"state dict lacks block {block} tensors {missing[:3]} (model class {type(adapter.model).__name__})")
    got = state.tensors(keys) if isinstance(state, LazyCheckpoint) else {k: state[k] for k in keys}
    return {n: got[prefix + n] for n in names}


def _device(config: FDAConfig) -> torch.device:
    return torch.device(config.device) if config.device else torch.device("cpu")


def _expert_list(experts: Sequence[StateLike] | Mapping[str, StateLike]) -> list[StateLike]:
    return list(experts.values()) if isinstance(experts, Mapping) and not isinstance(experts, LazyCheckpoint) else list(experts)


# ------------------------------------------------------------------------------------------------
# construction


def construct_block(
    model: nn.Module,
    pretrained: StateLike,
    experts: Sequence[StateLike] | Mapping[str, StateLike],
    block: int,
    anchor_init: str,
    config: FDAConfig | None = None,
    experts_subset: Sequence[int] | None = None,
    *,
    snapshot_steps: Sequence[int] = (),
) -> list[ConstructResult]:
    """Construct anchors for ``block`` and each expert (all of ``experts_subset`` at once).

    Experts are indexed by position in ``experts`` (a mapping is taken in its order); seeds derive
    from that index, so a subset gives the same anchors as the full run. Returns one
    :class:`~fda.anchors.ConstructResult` per chosen expert; ``anchors`` is canonical
    ``[n, T, d]`` (``[n, d]`` for the Llama MLP). ``snapshot_steps``: step budgets whose anchors
    are kept too (``ConstructResult.budget_anchors``; see :func:`fda.anchors.construct_anchors`).
    """
    if anchor_init not in ANCHOR_INITS:
        raise ValueError(f"anchor_init must be one of {ANCHOR_INITS}, got {anchor_init!r}")
    config = config or FDAConfig.for_family(adapter_for(model).family)
    adapter, cfg = _adapter(model, config)
    all_experts = _expert_list(experts)
    ids = list(range(len(all_experts))) if experts_subset is None else list(experts_subset)
    theta0 = _block_tensors(pretrained, adapter, block)
    thetas = [_block_tensors(all_experts[i], adapter, block) for i in ids]
    inits = []
    for i, th in zip(ids, thetas):
        # official vision: one Gauss draw (seed) for every block and task; else one per (block, expert)
        shared = anchor_init == "gauss" and cfg.gauss_shared
        seed = cfg.seed if shared else derive_seed(cfg.seed, anchor_init, block, i)
        inits.append(init_anchors(anchor_init, adapter, block, th, n=cfg.n_anchors, tokens=cfg.tokens, sigma=cfg.sigma, seed=seed))
    dev = _device(cfg)
    results = construct_anchors(
        adapter, block, theta0, thetas, torch.stack(inits).to(dev),
        steps=cfg.construct_steps, lr=cfg.construct_lr, similarity_kind=cfg.similarity, batching=cfg.batching,
        sv_every=cfg.sv_every, progress=cfg.progress, expert_ids=ids, zero_grad=str(cfg.zero_grad),
        snapshot_steps=snapshot_steps, qkv_layout=cfg.qkv_layout,
    )  # fmt: skip
    for res in results:
        res.settings = {**cfg.construction_metadata(), "anchor_init": anchor_init, "layout": "canonical"}
    return results


def save_anchors(result: ConstructResult, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write one (block, expert)'s anchors atomically: tensor ``anchors`` (canonical layout).

    Metadata (JSON-encoded values): the resolved construction settings (``result.settings``),
    then ``metadata`` (wins on a clash), then block, expert, best loss/step and the log summary.
    """
    meta: dict[str, Any] = {**result.settings, **(metadata or {})}
    meta.update(block=result.block, expert=result.expert, best_loss=result.best_loss, best_step=result.best_step,
                log=result.log.summary())  # fmt: skip
    encoded = {k: json.dumps(v, sort_keys=True, default=str) for k, v in meta.items()}
    save_state_dict({"anchors": result.anchors}, path, metadata=encoded)


def load_anchors(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read anchors written by :func:`save_anchors`: ``(tensor, metadata)`` with JSON values decoded."""
    from fda.io.checkpoints import load_state_dict

    tensor = load_state_dict(path)["anchors"]
    meta: dict[str, Any] = {}
    for k, v in read_metadata(path).items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensor, meta


# ------------------------------------------------------------------------------------------------
# adaptation and assembly


def adapt_block(
    model: nn.Module,
    pretrained: StateLike,
    experts: Sequence[StateLike] | Mapping[str, StateLike],
    block: int,
    anchors: Sequence[torch.Tensor],
    init: str,
    init_state: StateLike | None,
    config: FDAConfig | None = None,
) -> AdaptResult:
    """Adapt ``block`` on the pooled ``anchors`` (one canonical tensor per expert, same order).

    ``init="pretrained"`` trains the block's weights; ``"ta"`` trains one coefficient tensor per
    expert and tensor (from ``config.ta_lambda``; ``init_state`` optional, it is the TA merge and
    the exact starting point; None or the ``pretrained`` object itself means θ0 + λ Σ τ_i);
    any other init needs ``init_state`` (the merged model) and trains one coefficient tensor over
    its delta. Returns :class:`~fda.adapt.AdaptResult` with the block's full keys.
    """
    config = config or FDAConfig.for_family(adapter_for(model).family, init=init)
    adapter, cfg = _adapter(model, config)
    all_experts = _expert_list(experts)
    dev = _device(cfg)
    if init_state is pretrained and init != "pretrained":
        # callers pass the pretrained state as "no merged init": fine for TA (θ0 + λ Σ τ_i is
        # rebuilt from the experts), meaningless for a delta init (δ = 0)
        if init != "ta":
            raise ValueError(f"adaptation from init {init!r} needs the merged model as init_state, got the pretrained state")
        init_state = None
    init_block = _block_tensors(init_state, adapter, block) if init_state is not None and init != "pretrained" else None
    return adapt(
        adapter, block, _block_tensors(pretrained, adapter, block), [_block_tensors(e, adapter, block) for e in all_experts],
        [a.to(dev, torch.float32) for a in anchors], init=init, init_block=init_block, epochs=cfg.adapt_epochs,
        lr=cfg.adapt_lr, batch_size=cfg.adapt_batch, loss=cfg.adapt_loss, train_mode=bool(cfg.train_mode),
        ta_lambda=cfg.ta_lambda, seed=derive_seed(cfg.seed, "adapt", block), progress=cfg.progress,
    )  # fmt: skip


AdaptedLike = Union[Sequence[Union[AdaptResult, Mapping[str, torch.Tensor]]], Mapping[Any, Any]]


def _adapted_tensors(adapted: AdaptedLike) -> StateDict:
    """Flatten adapted blocks: AdaptResults, state dicts (full keys), a mapping block -> either,
    or one flat state dict."""
    if isinstance(adapted, Mapping):
        values = list(adapted.values())
        if all(isinstance(v, torch.Tensor) for v in values):
            return dict(adapted)
        items = values
    else:
        items = list(adapted)
    out: StateDict = {}
    for item in items:
        part = item.params if isinstance(item, AdaptResult) else item
        dup = out.keys() & part.keys()
        if dup:
            raise KeyError(f"adapted tensors given twice: {sorted(dup)[:3]}")
        out.update(part)
    return out


def assemble(
    pretrained: StateLike,
    init_state: StateLike | None,
    adapted_blocks: AdaptedLike,
    model: nn.Module,
    config: FDAConfig | None = None,
) -> StateDict:
    """The merged state dict: adapted block tensors, everything else by ``config.non_block``.

    ``adapted_blocks``: :class:`AdaptResult` objects, block state dicts (full keys), a mapping
    block index -> either of those, or one flat state dict.

    ``non_block="pretrained"`` keeps θ0 outside the blocks (official vision/text); ``"init"`` takes
    the merged init's values (official LLM). Block keys without an adapted value fall back the
    same way. Output dtypes are the pretrained ones.
    """
    config = config or FDAConfig.for_family(adapter_for(model).family)
    adapter, cfg = _adapter(model, config)
    source = init_state if cfg.non_block == "init" and init_state is not None else pretrained
    keys = list(pretrained.keys())
    base = source.tensors(keys) if isinstance(source, LazyCheckpoint) else {k: source[k] for k in keys}
    out: StateDict = {k: v.detach().clone() for k, v in base.items()}
    updates = _adapted_tensors(adapted_blocks)
    unknown = [k for k in updates if k not in out]
    if unknown:
        raise KeyError(f"adapted tensors not in the pretrained state: {unknown[:3]}")
    for k, v in updates.items():
        dtype = out[k].dtype if isinstance(pretrained, LazyCheckpoint) else pretrained[k].dtype
        out[k] = v.detach().to("cpu", dtype).clone()
    return out


#: family -> the baselines coverage preset of the official FDA scripts
_COVERAGE = {"clip-vision": "fda-vision", "openclip": "fda-vision", "bert": "fda-nlu", "roberta": "fda-nlu", "llama": "fda-llm"}


def _baseline_init(init: str, pretrained: StateLike, experts: list[StateLike], cfg: FDAConfig) -> StateDict:
    """``baselines.merge(init, ...)`` with λ = ``cfg.ta_lambda`` for TA and the family's official
    coverage preset, unless ``cfg.init_hparams`` says otherwise."""
    import baselines  # lazy: FDA from pretrained needs no baselines

    hparams = dict(cfg.init_hparams)
    fields = {f.name for f in dataclasses.fields(baselines.method_spec(init).hparams)}
    if init == "ta" and "alpha" in fields:
        hparams.setdefault("alpha", cfg.ta_lambda)
    if "coverage" in fields and cfg.family in _COVERAGE:
        hparams.setdefault("coverage", _COVERAGE[cfg.family])
    load = lambda s: {k: s.tensor(k) for k in s.keys()} if isinstance(s, LazyCheckpoint) else dict(s)  # noqa: E731
    return baselines.merge(init, load(pretrained), [load(e) for e in experts], **hparams)


def merge(
    model: nn.Module,
    pretrained: StateLike,
    experts: Sequence[StateLike] | Mapping[str, StateLike],
    *,
    init: str = "pretrained",
    anchor_init: str = "gauss",
    config: FDAConfig | None = None,
    init_state: StateLike | None = None,
) -> StateDict:
    """FDA in one call, in memory, block by block: construct, adapt, assemble.

    ``init``: ``pretrained`` or a ``baselines`` method (``ta``, ``tsvm``, ``wudi``, ...); its merged
    state is computed with ``baselines.merge`` unless ``init_state`` is given. Returns the full
    merged state dict (keys and dtypes of ``pretrained``).
    """
    config = config or FDAConfig.for_family(adapter_for(model).family, init=init)
    if config.init != init:
        warnings.warn(f"FDAConfig was made for init={config.init!r} but merge runs init={init!r}; "
                      f"use FDAConfig.for_family(..., init={init!r}) for that init's official schedule", stacklevel=2)
        config = dataclasses.replace(config, init=init)
    adapter, cfg = _adapter(model, config)
    all_experts = _expert_list(experts)
    if init != "pretrained" and init_state is None:
        init_state = _baseline_init(init, pretrained, all_experts, cfg)
    results = []
    for block in tqdm(range(adapter.num_blocks), desc="FDA blocks", disable=not cfg.progress):
        built = construct_block(model, pretrained, all_experts, block, anchor_init, cfg)
        results.append(adapt_block(model, pretrained, all_experts, block, [r.anchors for r in built], init, init_state, cfg))
    return assemble(pretrained, init_state, results, model, cfg)
