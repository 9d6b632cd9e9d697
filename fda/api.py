"""The FDA public API: per-block construction and adaptation, assembly, the one-call merge
(the typed settings are :mod:`fda.config`).

``model`` is always an ``nn.Module`` of the pretrained architecture, used for structure only;
the weights come from the state dicts (``pretrained``, ``experts``, ``init_state``). State dicts
may also be :class:`fda.io.checkpoints.LazyCheckpoint` objects: only the block in hand is read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from baselines.errors import MergeInputError
from baselines.finite import check_finite, check_result
from baselines.inputs import check_expert, check_pretrained, expert_label
from fda.adapt import AdaptResult, adapt
from fda.anchors import (
    ANCHOR_INITS,
    ConstructResult,
    StepCallback,
    construct_anchors,
    derive_seed,
    init_anchors,
)
from fda.blocks import (
    BlockAdapter,
    adapter_for,
)
from fda.config import FDAConfig, FDAConfigError, is_int  # noqa: F401  (FDAConfigError: re-exported)
from fda.io.checkpoints import LazyCheckpoint, read_metadata, save_state_dict

StateDict = dict[str, torch.Tensor]
StateLike = Union[Mapping[str, torch.Tensor], LazyCheckpoint]

# ------------------------------------------------------------------------------------------------
# helpers


def _adapter(model: nn.Module, config: FDAConfig) -> tuple[BlockAdapter, FDAConfig]:
    adapter = adapter_for(model, config.part)
    return adapter, config.resolved(adapter)


def _block_tensors(state: StateLike, adapter: BlockAdapter, block: int, who: str = "state dict") -> StateDict:
    """The block's tensors by local name, read lazily when ``state`` is a LazyCheckpoint."""
    prefix, names = adapter.block_prefix(block), adapter.param_names(block)
    keys = [prefix + n for n in names]
    missing = [k for k in keys if k not in state]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise MergeInputError(
            f"{who} lacks block {block} tensors {missing[:3]}{more} (model class {type(adapter.model).__name__}): "
            f"every state dict must have the model's keys; check the checkpoint and its key prefixes"
        )
    got = state.tensors(keys) if isinstance(state, LazyCheckpoint) else {k: state[k] for k in keys}
    return {n: got[prefix + n] for n in names}


def _device(config: FDAConfig) -> torch.device:
    return torch.device(config.device) if config.device else torch.device("cpu")


def _expert_list(experts: Sequence[StateLike] | Mapping[str, StateLike]) -> list[StateLike]:
    return list(experts.values()) if isinstance(experts, Mapping) and not isinstance(experts, LazyCheckpoint) else list(experts)


def _expert_names(experts: Sequence[StateLike] | Mapping[str, StateLike]) -> list[str] | None:
    """Names for messages: the keys of a mapping of experts, else None (experts are named by index)."""
    return [str(k) for k in experts] if isinstance(experts, Mapping) and not isinstance(experts, LazyCheckpoint) else None


def _label(who: str, state: object) -> str:
    """``who``, plus the path of a lazily read checkpoint: ``expert 1 at /work/e1``."""
    return f"{who} at {state.path}" if isinstance(state, LazyCheckpoint) else who


def _expert_who(i: int, names: Sequence[str] | None, state: object) -> str:
    return _label(expert_label(i, names), state)


def _require_experts(experts: list[StateLike]) -> None:
    if not experts:
        raise MergeInputError("at least one expert is needed, got none: pass the fine-tuned state dicts to merge")


class _LazyView(Mapping):
    """A LazyCheckpoint as a read-only mapping (each access reads the tensor), for the input checks."""

    def __init__(self, ckpt: LazyCheckpoint):
        self._ckpt = ckpt

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._ckpt:
            raise KeyError(key)
        return self._ckpt.tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ckpt.keys())

    def __len__(self) -> int:
        return len(self._ckpt.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._ckpt


def _mapping(state: StateLike) -> Mapping[str, torch.Tensor]:
    return _LazyView(state) if isinstance(state, LazyCheckpoint) else state


def _meta(state: StateLike) -> Mapping[str, torch.Tensor]:
    """Shapes and dtypes of ``state`` without reading values (meta tensors for a LazyCheckpoint)."""
    if not isinstance(state, LazyCheckpoint):
        return state
    return {k: torch.empty(state.shape(k), dtype=state.torch_dtype(k), device="meta") for k in state.keys()}  # noqa: SIM118 - a LazyCheckpoint, not a dict


def _check_block_inputs(adapter: BlockAdapter, block: int, theta0: StateDict, who0: str,
                        others: Sequence[tuple[str, StateDict]]) -> None:
    """``baselines``' input checks on one block (full keys in messages): θ0 finite, every other block
    (experts, a merged init) with θ0's shapes and dtypes and finite. ``MergeInputError`` names who and the key."""
    prefix = adapter.block_prefix(block)
    full0 = {prefix + n: t for n, t in theta0.items()}
    check_pretrained(full0, who0)
    for who, th in others:
        check_expert(who, {prefix + n: t for n, t in th.items()}, full0)


def _read_blocks(adapter: BlockAdapter, block: int, pretrained: StateLike, experts: list[StateLike],
                 ids: Sequence[int], names: Sequence[str] | None, check: bool) -> tuple[StateDict, list[StateDict]]:
    """θ0's and the chosen experts' block tensors (local names), checked unless ``check`` is False."""
    who0 = _label("pretrained model", pretrained)
    whos = [_expert_who(i, names, experts[i]) for i in ids]
    theta0 = _block_tensors(pretrained, adapter, block, who0)
    thetas = [_block_tensors(experts[i], adapter, block, who) for i, who in zip(ids, whos)]
    if check:
        _check_block_inputs(adapter, block, theta0, who0, list(zip(whos, thetas)))
    return theta0, thetas


def _check_anchors(adapter: BlockAdapter, block: int, anchors: Sequence[torch.Tensor], experts: list[StateLike],
                   names: Sequence[str] | None) -> None:
    if len(anchors) != len(experts):
        raise MergeInputError(f"{len(anchors)} anchor sets for {len(experts)} experts: pass one anchor tensor per expert, in the experts' order")
    ndim = len(adapter.anchor_shape(1, 1))
    for i, a in enumerate(anchors):
        who = f"anchors of {_expert_who(i, names, experts[i])}"
        if not isinstance(a, torch.Tensor) or not a.is_floating_point():
            raise MergeInputError(f"{who}: expected a float tensor, got {type(a).__name__ if not isinstance(a, torch.Tensor) else a.dtype}")
        if a.ndim != ndim or a.shape[-1] != adapter.width or a.shape[0] < 1:
            raise MergeInputError(
                f"{who}: shape {tuple(a.shape)}, but block {block} of this {adapter.family} model takes anchors of shape "
                f"{('[n, T, d]' if ndim == 3 else '[n, d]')} with d = {adapter.width} (canonical layout, fda.load_anchors)"
            )
        check_finite(who, "anchors", a, fix="re-run the construction of this (block, expert)")


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
    on_step: StepCallback | None = None,
) -> list[ConstructResult]:
    """Construct anchors for ``block`` and each expert (all of ``experts_subset`` at once).

    Experts are indexed by position in ``experts`` (a mapping is taken in its order); seeds derive
    from that index, so a subset gives the same anchors as the full run. Returns one
    :class:`~fda.anchors.ConstructResult` per chosen expert; ``anchors`` is canonical
    ``[n, T, d]`` (``[n, d]`` for the Llama MLP). ``snapshot_steps``: step budgets whose anchors
    are kept too (``ConstructResult.budget_anchors``; see :func:`fda.anchors.construct_anchors`).
    ``on_step(done, total)``: the block's progress after every step (for a display).

    The block's tensors are checked as ``baselines.merge`` checks its inputs (``MergeInputError``
    naming the expert and key); a construction loss that becomes NaN/inf is a ``NonFiniteError``
    naming ``construct_lr`` and the block.
    """
    return _construct_block(model, pretrained, experts, block, anchor_init, config, experts_subset, snapshot_steps, check=True, on_step=on_step)


def _construct_block(model, pretrained, experts, block, anchor_init, config, experts_subset, snapshot_steps, *, check: bool,
                     on_step: StepCallback | None = None):
    if anchor_init not in ANCHOR_INITS:
        raise ValueError(f"anchor_init must be one of {ANCHOR_INITS}, got {anchor_init!r}")
    config = config or FDAConfig.for_family(adapter_for(model).family)
    adapter, cfg = _adapter(model, config)
    all_experts, names = _expert_list(experts), _expert_names(experts)
    _require_experts(all_experts)
    ids = list(range(len(all_experts))) if experts_subset is None else list(experts_subset)
    bad = [i for i in ids if not is_int(i) or not 0 <= i < len(all_experts)]
    if bad or not ids:
        raise MergeInputError(f"experts_subset {ids} must hold expert indices in 0..{len(all_experts) - 1} (at least one), got {bad or 'none'}")
    theta0, thetas = _read_blocks(adapter, block, pretrained, all_experts, ids, names, check)
    inits = []
    for i, th in zip(ids, thetas):
        # official vision: one Gauss draw (seed) for every block and task; else one per (block, expert)
        shared = anchor_init == "gauss" and cfg.gauss_shared
        seed = cfg.seed if shared else derive_seed(cfg.seed, anchor_init, block, i)
        inits.append(init_anchors(anchor_init, adapter, block, th, n=cfg.n_anchors, tokens=cfg.tokens, sigma=cfg.sigma, seed=seed, pretrained=theta0))
        check_result(f"FDA construction of block {block}", f"the initial {anchor_init} anchor tensor of {_expert_who(i, names, all_experts[i])}",
                     inits[-1], {"sigma": cfg.sigma} if anchor_init == "gauss" else {})
    dev = _device(cfg)
    results = construct_anchors(
        adapter, block, theta0, thetas, torch.stack(inits).to(dev),
        steps=cfg.construct_steps, lr=cfg.construct_lr, similarity_kind=cfg.similarity, batching=cfg.batching,
        sv_every=cfg.sv_every, progress=cfg.progress, expert_ids=ids, zero_grad=str(cfg.zero_grad),
        snapshot_steps=snapshot_steps, qkv_layout=cfg.qkv_layout, optimizer=cfg.construct_optimizer, lbfgs_history=cfg.lbfgs_history,
        on_step=on_step,
    )  # fmt: skip
    for res in results:
        res.settings = {**cfg.construction_metadata(), "anchor_init": anchor_init, "layout": "canonical"}
    return results


def save_anchors(result: ConstructResult, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write one (block, expert)'s anchors atomically: tensor ``anchors`` (canonical layout).

    Metadata (JSON-encoded values): the resolved construction settings (``result.settings``),
    then ``metadata`` (wins on a clash), then block, expert, best loss/step and the log summary.
    Non-finite anchors are a ``NonFiniteError``; no file is written.
    """
    check_result(f"save_anchors({os.fspath(path)!r})", f"the anchor tensor of block {result.block}, expert {result.expert}", result.anchors,
                 {k: result.settings[k] for k in ("construct_lr", "sigma") if k in result.settings},
                 fix="not written; construct them again (a lower construct_lr)")
    meta: dict[str, Any] = {**result.settings, **(metadata or {})}
    meta.update(block=result.block, expert=result.expert, best_loss=result.best_loss, best_step=result.best_step,
                log=result.log.summary())  # fmt: skip
    encoded = {k: json.dumps(v, sort_keys=True, default=str) for k, v in meta.items()}
    save_state_dict({"anchors": result.anchors}, path, metadata=encoded)


def load_anchors(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read anchors written by :func:`save_anchors`: ``(tensor, metadata)`` with JSON values decoded.

    Non-finite anchors are a ``MergeInputError`` naming the file."""
    from fda.io.checkpoints import load_state_dict

    tensor = load_state_dict(path)["anchors"]
    check_finite(f"anchors file {os.fspath(path)}", "anchors", tensor, fix="the file is corrupt; construct these anchors again")
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
    *,
    on_step: StepCallback | None = None,
    snapshot_epochs: Sequence[int] = (),
    heldout_anchors: Sequence[torch.Tensor] | None = None,
) -> AdaptResult:
    """Adapt ``block`` on the pooled ``anchors`` (one canonical tensor per expert, same order).

    ``init="pretrained"`` trains the block's weights; ``"ta"`` trains one coefficient tensor per
    expert and tensor (from ``config.ta_lambda``; ``init_state`` optional, it is the TA merge and
    the exact starting point; None or the ``pretrained`` object itself means θ0 + λ Σ τ_i);
    any other init needs ``init_state`` (the merged model) and trains one coefficient tensor over
    its delta. Returns :class:`~fda.adapt.AdaptResult` with the block's full keys.

    Inputs (block tensors, the merged init's block, the anchors) are checked as ``baselines.merge``
    checks its inputs (``MergeInputError``); a loss or adapted tensor that becomes NaN/inf is a
    ``NonFiniteError`` naming ``adapt_lr`` and the block. ``on_step(done, total)``: the block's
    progress after every epoch (for a display). ``snapshot_epochs``: also return the block after
    each of these epochs (``AdaptResult.snapshots``; an epoch grid from one run);
    ``heldout_anchors``: per expert, anchors not trained on, whose loss is logged
    (``log.heldout_loss``; :func:`fda.adapt.adapt`).
    """
    return _adapt_block(model, pretrained, experts, block, anchors, init, init_state, config, check=True, on_step=on_step,
                        snapshot_epochs=snapshot_epochs, heldout=heldout_anchors)


def _adapt_block(model, pretrained, experts, block, anchors, init, init_state, config, *, check: bool,
                 on_step: StepCallback | None = None, snapshot_epochs: Sequence[int] = (),
                 heldout: Sequence[torch.Tensor] | None = None) -> AdaptResult:
    config = config or FDAConfig.for_family(adapter_for(model).family, init=init)
    adapter, cfg = _adapter(model, config)
    all_experts, names = _expert_list(experts), _expert_names(experts)
    _require_experts(all_experts)
    if check:
        _check_anchors(adapter, block, anchors, all_experts, names)
        if heldout is not None:  # the same checks: one set per expert, canonical shape, finite
            _check_anchors(adapter, block, heldout, all_experts, names)
    dev = _device(cfg)
    if init_state is pretrained and init != "pretrained":
        # callers pass the pretrained state as "no merged init": fine for TA (θ0 + λ Σ τ_i is
        # rebuilt from the experts), meaningless for a delta init (δ = 0)
        if init != "ta":
            raise ValueError(f"adaptation from init {init!r} needs the merged model as init_state, got the pretrained state")
        init_state = None
    who_init = _label("merged init (init_state)", init_state)
    init_block = _block_tensors(init_state, adapter, block, who_init) if init_state is not None and init != "pretrained" else None
    theta0, thetas = _read_blocks(adapter, block, pretrained, all_experts, range(len(all_experts)), names, check)
    if check and init_block is not None:
        _check_block_inputs(adapter, block, theta0, _label("pretrained model", pretrained), [(who_init, init_block)])
    return adapt(
        adapter, block, theta0, thetas,
        [a.to(dev, torch.float32) for a in anchors], init=init, init_block=init_block, epochs=cfg.adapt_epochs,
        lr=cfg.adapt_lr, batch_size=cfg.adapt_batch, loss=cfg.adapt_loss, train_mode=bool(cfg.train_mode),
        ta_lambda=cfg.ta_lambda, seed=derive_seed(cfg.seed, "adapt", block), progress=cfg.progress,
        on_step=on_step, snapshot_epochs=snapshot_epochs,
        heldout=[a.to(dev, torch.float32) for a in heldout] if heldout is not None else None,
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


def _shape(state: StateLike, key: str) -> tuple[int, ...]:
    return tuple(state.shape(key)) if isinstance(state, LazyCheckpoint) else tuple(state[key].shape)


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

    Every output tensor is checked once: a non-finite value taken from ``pretrained`` / ``init_state``
    is a ``MergeInputError`` naming it and the key, a non-finite adapted tensor (after the cast to
    the output dtype) a ``NonFiniteError`` naming ``adapt_lr``; an adapted tensor of the wrong
    shape is a ``MergeInputError``.
    """
    config = config or FDAConfig.for_family(adapter_for(model).family)
    adapter, cfg = _adapter(model, config)
    source = init_state if cfg.non_block == "init" and init_state is not None else pretrained
    who = _label("pretrained model" if source is pretrained else "merged init (init_state)", source)
    keys = list(pretrained.keys())
    missing = [k for k in keys if k not in source]
    if missing:
        raise MergeInputError(f"{who} lacks {len(missing)} tensor(s) of the pretrained model, e.g. {missing[:3]}: "
                              f"non_block={cfg.non_block!r} takes every non-adapted tensor from it")  # fmt: skip
    base = source.tensors(keys) if isinstance(source, LazyCheckpoint) else {k: source[k] for k in keys}
    out: StateDict = {k: v.detach().clone() for k, v in base.items()}
    if source is not pretrained:
        for k in keys:
            if tuple(out[k].shape) != _shape(pretrained, k):
                raise MergeInputError(f"{who}: tensor {k!r} has shape {tuple(out[k].shape)} but the pretrained model has {_shape(pretrained, k)}")
    updates = _adapted_tensors(adapted_blocks)
    unknown = [k for k in updates if k not in out]
    if unknown:
        raise KeyError(f"adapted tensors not in the pretrained state: {unknown[:3]}")
    for k, v in updates.items():
        if tuple(v.shape) != _shape(pretrained, k):
            raise MergeInputError(f"adapted tensor {k!r} has shape {tuple(v.shape)} but the pretrained model has {_shape(pretrained, k)}")
        dtype = out[k].dtype if isinstance(pretrained, LazyCheckpoint) else pretrained[k].dtype
        out[k] = v.detach().to("cpu", dtype).clone()
    for k, t in out.items():
        if k in updates:
            check_result("FDA assemble", f"the adapted tensor {k!r}", t, {"adapt_lr": cfg.adapt_lr},
                         fix="adaptation diverged (or left the output dtype's range): lower adapt_lr and adapt this block again")
        else:
            check_finite(who, k, t)
    return out


#: family -> the baselines coverage preset of the official FDA scripts
_COVERAGE = {"clip-vision": "fda-vision", "openclip": "fda-vision", "bert": "fda-nlu", "roberta": "fda-nlu", "llama": "fda-llm"}


def _baseline_init(init: str, pretrained: StateLike, experts: list[StateLike], cfg: FDAConfig,
                   names: Sequence[str] | None = None) -> StateDict:
    """``baselines.merge(init, ...)`` with λ = ``cfg.ta_lambda`` for TA and the family's official
    coverage preset, unless ``cfg.init_hparams`` says otherwise."""
    import baselines

    hparams = _baseline_init_hparams(init, cfg)
    load = lambda s: {k: s.tensor(k) for k in s.keys()} if isinstance(s, LazyCheckpoint) else dict(s)  # noqa: E731
    return baselines.merge(init, load(pretrained), [load(e) for e in experts], names=names, **hparams)


def _baseline_init_hparams(init: str, cfg: FDAConfig) -> dict[str, Any]:
    """The hyperparameters ``_baseline_init`` passes, checked (unknown method or hyperparameter, bad
    type or range: the ``baselines`` errors) without merging anything."""
    import baselines

    hparams = dict(cfg.init_hparams)
    spec = baselines.method_spec(init)
    fields = {f.name for f in dataclasses.fields(spec.hparams)}
    if init == "ta" and "alpha" in fields:
        hparams.setdefault("alpha", cfg.ta_lambda)
    if "coverage" in fields and cfg.family in _COVERAGE:
        hparams.setdefault("coverage", _COVERAGE[cfg.family])
    baselines.build_hparams(spec, hparams)
    return hparams


def _check_merge_inputs(pretrained: StateLike, experts: list[StateLike], names: Sequence[str] | None,
                        init_state: StateLike | None) -> None:
    """``baselines``' input checks on the whole model (each tensor read once; lazy inputs stay lazy)."""
    check_pretrained(_mapping(pretrained), _label("pretrained model", pretrained))
    meta = _meta(pretrained)
    for i, e in enumerate(experts):
        check_expert(_expert_who(i, names, e), _mapping(e), meta)
    if init_state is not None and init_state is not pretrained:
        check_expert(_label("merged init (init_state)", init_state), _mapping(init_state), meta)


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

    The inputs are checked once up front as ``baselines.merge`` checks them (keys, shapes, dtypes,
    NaN/inf, at least one expert: ``MergeInputError`` naming the expert and key); the result is
    checked as :func:`assemble` does, and a diverging construction or adaptation stops with a
    ``NonFiniteError`` naming ``construct_lr`` / ``adapt_lr`` and the block.
    """
    config = config or FDAConfig.for_family(adapter_for(model).family, init=init)
    if config.init != init:
        warnings.warn(f"FDAConfig was made for init={config.init!r} but merge runs init={init!r}; "
                      f"use FDAConfig.for_family(..., init={init!r}) for that init's official schedule", stacklevel=2)
        config = dataclasses.replace(config, init=init)
    if anchor_init not in ANCHOR_INITS:
        raise ValueError(f"anchor_init must be one of {ANCHOR_INITS}, got {anchor_init!r}")
    adapter, cfg = _adapter(model, config)
    all_experts, names = _expert_list(experts), _expert_names(experts)
    _require_experts(all_experts)
    if init != "pretrained" and init_state is None:
        _baseline_init_hparams(init, cfg)  # a bad init or hyperparameter fails before the input pass
    _check_merge_inputs(pretrained, all_experts, names, init_state)
    if init != "pretrained" and init_state is None:
        init_state = _baseline_init(init, pretrained, all_experts, cfg, names)
    results = []
    for block in tqdm(range(adapter.num_blocks), desc="FDA blocks", disable=not cfg.progress):
        built = _construct_block(model, pretrained, experts, block, anchor_init, cfg, None, (), check=False)
        anchors = [r.anchors for r in built]
        results.append(_adapt_block(model, pretrained, experts, block, anchors, init, init_state, cfg, check=False))
    return assemble(pretrained, init_state, results, model, cfg)
