"""Exact TIES-Merging over streamed checkpoints: global per-task top-k thresholds without storing |τ|.

TIES (``baselines.ties``) trims every task vector to its top ``topk`` % entries by magnitude over
the *whole model*. In memory, ``baselines`` flattens one |τ_i| (a model's worth of floats: 52 GB for
Llama-2-13B in fp32). Streaming keeps one block, so each task's threshold is found by an exact
**radix selection** on the bit pattern of |τ| (for non-negative IEEE floats the bit pattern read as
an integer orders like the value): 16 bits per pass, so 2 passes for float32 (4 for float64), each
streaming base + all experts block by block with 65536 counters per task; no per-entry storage.

The threshold is the same order statistic ``baselines.ties.trim_threshold`` takes (the
``(keep + 1)``-th largest |τ_i|, ``keep = int(P · topk / 100)``), so entries kept are identical. One
more pass computes the majority sign that breaks exact election ties, then the merge pass calls
``baselines``' own per-key loop (``engine.run_per_key`` + ``ties.ties_tensor``) block by block.
Total: 4 reads of base + experts for float32 (2 threshold, 1 majority, 1 merge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]
_BITS_PER_PASS = 16
_BINS = 1 << _BITS_PER_PASS


def _bits(x: torch.Tensor, flat_dtype: torch.dtype) -> torch.Tensor:
    """int64 bit patterns of |x| in ``flat_dtype`` (float32 or float64; monotone in |x|)."""
    a = x.detach().abs().to(flat_dtype).contiguous().reshape(-1)
    return a.view(torch.int32).to(torch.int64) if flat_dtype == torch.float32 else a.view(torch.int64)


def kth_largest_abs_multi(chunks: Callable[[], Iterable[Sequence[torch.Tensor]]], ks: Sequence[int],
                          flat_dtype: torch.dtype = torch.float32) -> list[float]:
    """Exact k-th largest |value| for several streams at once.

    ``chunks()`` (called once per radix pass) yields tuples ``(x_0, ..., x_{T-1})``: the next piece
    of each of the T streams. ``ks[t]`` is 1-based (1 = the maximum). Values are compared in
    ``flat_dtype``. Returns one float per stream.
    """
    total_bits = 32 if flat_dtype == torch.float32 else 64
    n_tasks = len(ks)
    prefix = [0] * n_tasks  # bits fixed so far (high part)
    rank = list(ks)  # rank still sought inside the current bucket
    counts = [0] * n_tasks
    for level in range(total_bits // _BITS_PER_PASS):
        shift = total_bits - _BITS_PER_PASS * (level + 1)
        hists = [torch.zeros(_BINS, dtype=torch.int64) for _ in range(n_tasks)]
        for piece in chunks():
            for t, x in enumerate(piece):
                b = _bits(x, flat_dtype)
                if level == 0:
                    counts[t] += b.numel()
                else:
                    b = b[(b >> (shift + _BITS_PER_PASS)) == prefix[t]]
                if b.numel():
                    hists[t] += torch.bincount((b >> shift) & (_BINS - 1), minlength=_BINS)
        for t in range(n_tasks):
            if level == 0 and not 1 <= ks[t] <= counts[t]:
                raise ValueError(f"stream {t}: k = {ks[t]} outside 1..{counts[t]}")
            h = hists[t]
            above = torch.flip(torch.cumsum(torch.flip(h, [0]), 0), [0]) - h  # entries in higher buckets
            bucket = int(torch.nonzero((above < rank[t]) & (above + h >= rank[t])).max())
            rank[t] -= int(above[bucket])
            prefix[t] = (prefix[t] << _BITS_PER_PASS) | bucket
    out = []
    for p in prefix:
        if flat_dtype == torch.float32:
            out.append(float(torch.tensor([p], dtype=torch.int64).to(torch.int32).view(torch.float32)))
        else:
            out.append(float(torch.tensor([p], dtype=torch.int64).view(torch.float64)))
    return out


def ties_block_fn(base: Any, experts: Sequence[Any], blocks: Mapping[str, list[str]], truncate: Mapping[str, int],
                  hparams: Mapping[str, Any]) -> Callable[[StateDict, list[StateDict]], StateDict]:
    """A per-block merge equal to ``baselines.merge("ties", ...)`` on the whole model.

    Runs the threshold and majority passes now (streaming ``base`` / ``experts``, the
    :class:`fda.io.streaming.StreamSource` inputs); the returned function merges one block.
    """
    import baselines
    from baselines import coverage as cov
    from baselines import engine
    from baselines.coverage import Role
    from baselines.finite import check_finite
    from baselines.inputs import validate
    from baselines.registry import build_hparams
    from baselines.ties import ties_tensor
    from fda.io.stream_source import is_float_key, read_block, source_label

    hp = build_hparams(baselines.method_spec("ties"), dict(hparams))
    # the coverage plan depends only on key names and shapes: compute it from the headers
    plan = {k: cov.role(hp.coverage, "elementwise", k, tuple(base.shape(k)), hp.exclude_patterns)
            for ks in blocks.values() for k in ks if is_float_key(base, k)}
    engine.check_plan_selects(plan, "ties", hp)
    merge_keys = {b: [k for k in ks if plan.get(k) is Role.MERGE] for b, ks in blocks.items()}
    torch_dtype = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    cdt = {k: engine.compute_dtype(hp.dtype, torch_dtype.get(base.dtype(k), torch.float32)) for ks in merge_keys.values() for k in ks}
    flat_dtype = torch.float64 if any(d == torch.float64 for d in cdt.values()) else torch.float32
    n_entries = sum(math.prod(base.shape(k)) for ks in merge_keys.values() for k in ks)
    m = len(experts)

    sources = [base, *experts]
    checked = [False]  # the first pass checks every value it reads (NaN/inf would poison the thresholds)

    def taus_per_key() -> Iterable[list[torch.Tensor]]:
        for keys in merge_keys.values():
            if not keys:
                continue
            parts = read_block(sources, [keys] * (m + 1))
            if not checked[0]:
                for src, part in zip(sources, parts):
                    for k in keys:
                        check_finite(source_label(src), k, part[k][: truncate[k]] if k in truncate and src is not base else part[k])
            for k in keys:
                dev = hp.device if hp.device is not None else "cpu"
                pre = parts[0][k].to(dev, cdt[k])
                yield [(p[k][: truncate[k]] if k in truncate else p[k]).to(dev, cdt[k]) - pre for p in parts[1:]]
            del parts
        checked[0] = True

    keep = int(n_entries * hp.topk / 100.0)
    if keep >= n_entries:
        thresholds = [-math.inf] * m
    else:
        # baselines: kthvalue(P - keep) ascending == the (keep + 1)-th largest
        thresholds = kth_largest_abs_multi(taus_per_key, [keep + 1] * m, flat_dtype)

    def trimmed(taus: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.where(t.abs() >= thr, t, torch.zeros_like(t)) for t, thr in zip(taus, thresholds)])

    sign_total = 0.0
    for taus in taus_per_key():
        sign_total += float(torch.sign(trimmed(taus).sum(0)).sum())
    majority = math.copysign(1.0, sign_total) if sign_total != 0 else 0.0

    def fn(pre: StateDict, exps: list[StateDict]) -> StateDict:
        inputs = validate(pre, exps)
        block_plan = {k: plan[k] for k in pre if k in plan}
        return engine.run_per_key(inputs, hp, block_plan, lambda taus, key: ties_tensor(trimmed(taus), majority, hp.merge_func), hp.alpha,
                                  method="ties", scaling={"alpha": hp.alpha})

    fn.thresholds = thresholds  # type: ignore[attr-defined]
    fn.majority = majority  # type: ignore[attr-defined]
    return fn
