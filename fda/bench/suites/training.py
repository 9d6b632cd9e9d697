"""Shared fine-tuning loop: AdamW, linear warm-up then cosine decay, seeded batch order.

Determinism: the batch order comes from a ``torch.Generator`` seeded with ``seed``; dropout and
initialisations draw from torch's global generator, which ``seeded`` re-seeds inside a
``fork_rng`` block (the caller's RNG state is left untouched). On CPU, results are then
bit-identical across runs on the same machine with the same torch version and the same
``torch.get_num_threads()`` (reduction order depends on the thread count).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded to ``seed``; restore the outer state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def batches(n_items: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` index batches [batch_size] over ``n_items``: seeded epochs of permutations."""
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n_items, generator=g), 0
    for _ in range(steps):
        if pos + batch_size > n_items:
            perm, pos = torch.randperm(n_items, generator=g), 0
        yield perm[pos:pos + batch_size]
        pos += batch_size


def train(param_groups: list[dict], step_loss: Callable[[torch.Tensor], torch.Tensor], *, n_items: int,
          steps: int, batch_size: int, seed: int, warmup_frac: float = 0.1, weight_decay: float = 0.01,
          grad_clip: float = 1.0) -> dict[str, float]:
    """Minimise ``step_loss(batch_indices)`` for ``steps`` AdamW steps. Returns a small log summary.

    ``param_groups``: AdamW groups, each with its own peak ``lr``; all follow the same schedule.
    """
    params = [p for g in param_groups for p in g["params"]]
    opt = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    peaks = [g["lr"] for g in opt.param_groups]
    warmup = max(1, int(round(warmup_frac * steps)))
    t0, first, last = time.perf_counter(), float("nan"), float("nan")
    for step, idx in enumerate(batches(n_items, min(batch_size, n_items), steps, seed)):
        mult = cosine_with_warmup(step, steps, warmup)
        for g, peak in zip(opt.param_groups, peaks):
            g["lr"] = peak * mult
        loss = step_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        last = float(loss.detach())
        if step == 0:
            first = last
    return {"loss_first": first, "loss_last": last, "steps": float(steps), "seconds": time.perf_counter() - t0}
