"""FDA stage 2: adapt one block on the pooled anchors of all experts (reference §4.2).

Targets ``Y_i = block_θi(X_i)``; the pooled pairs are shuffled every epoch with a seeded
generator and cut into batches (last batch kept, as a ``DataLoader`` with ``drop_last=False``).

* ``init="pretrained"``: every block tensor starts at θ0 and is trained (Adam, no weight decay).
* ``init="ta"``: one elementwise coefficient tensor per expert and tensor, starting at λ;
  merged = θ0 + Σ_i α_i ⊙ τ_i.
* any other merged init (``tsvm``, ``wudi``, ...): one coefficient tensor per tensor over the merged
  delta δ = merged − θ0, starting at 1; merged = θ0 + α ⊙ δ.

Merged-init blocks are written as ``init + Σ (α_i − α_i⁰) ⊙ τ_i`` — mathematically the same
function of α with the same gradients, but at α = α⁰ it returns the merged init *bit for bit*.

Loss per batch, on flattened samples: ``cos`` = −Σ_b cos(out_b, y_b); ``mse`` = Σ (out − y)²;
``l1`` = Σ |out − y| (sum reductions, as the official code; its learning rates assume them).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from baselines.errors import NonFiniteError
from baselines.finite import check_result, nonfinite_kind
from fda.anchors import StepCallback, module_mode
from fda.blocks import BlockAdapter

StateDict = dict[str, torch.Tensor]
ADAPT_LOSSES = ("cos", "mse", "l1")


def adapt_loss(out: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Batch loss with SUM reduction over ``[B, ...]`` outputs and targets."""
    if kind == "cos":
        return -F.cosine_similarity(out.flatten(1), y.flatten(1), dim=-1).sum()
    if kind == "mse":
        return F.mse_loss(out, y, reduction="sum")
    if kind == "l1":
        return F.l1_loss(out, y, reduction="sum")
    raise ValueError(f"unknown adaptation loss {kind!r}; expected one of {ADAPT_LOSSES}")


@dataclass
class AdaptLog:
    """``loss [steps]``: per-batch losses; ``epoch_loss [epochs]``: their mean per epoch;
    ``initial_loss``: the pooled loss before training (eval mode), ``final_loss``: after."""

    loss: torch.Tensor
    epoch_loss: torch.Tensor
    initial_loss: float
    final_loss: float
    #: pooled loss on held-out anchors (never trained on) after 0, each snapshot and the last epoch
    heldout_loss: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (``heldout_loss`` only when held-out anchors were given)."""
        out: dict[str, object] = {"loss": self.loss.tolist(), "epoch_loss": self.epoch_loss.tolist(),
                                  "initial_loss": self.initial_loss, "final_loss": self.final_loss}
        if self.heldout_loss:
            out["heldout_loss"] = {str(e): v for e, v in sorted(self.heldout_loss.items())}
        return out

    # generic converters (e.g. the CLI's) call ``.tolist()`` on anything that has it
    tolist = to_dict


@dataclass
class AdaptResult:
    """Adapted block: ``params`` maps the block's FULL state-dict keys to detached tensors;
    ``snapshots[e]``: the same after epoch ``e`` of the run, for each requested snapshot epoch
    (what a run of ``e`` epochs gives: the learning rate is constant, so a shorter run is a prefix)."""

    block: int
    params: StateDict
    log: AdaptLog
    snapshots: dict[int, StateDict] = field(default_factory=dict)


class _Parameterisation:
    """The trainable object: weights (pretrained init) or elementwise coefficients (merged init)."""

    def __init__(
        self,
        names: Sequence[str],
        theta0: Mapping[str, torch.Tensor],
        experts: Sequence[Mapping[str, torch.Tensor]],
        init: str,
        init_block: Mapping[str, torch.Tensor] | None,
        ta_lambda: float,
    ):
        self.names = list(names)
        self.init = init
        if init == "pretrained":
            self.weights = {k: theta0[k].detach().clone().requires_grad_(True) for k in self.names}
            self.trainable = list(self.weights.values())
            return
        if init == "ta":
            # per expert, per tensor: α_i starts at λ over τ_i
            self.deltas = [{k: ex[k] - theta0[k] for k in self.names} for ex in experts]
            self.alpha0 = ta_lambda
            self.base = (
                {k: init_block[k].detach() for k in self.names}
                if init_block is not None
                else {k: theta0[k] + sum(ta_lambda * d[k] for d in self.deltas) for k in self.names}
            )
        else:
            if init_block is None:
                raise ValueError(f"adaptation from init {init!r} needs the merged init's state (init_state)")
            self.deltas = [{k: init_block[k].detach() - theta0[k] for k in self.names}]
            self.alpha0 = 1.0
            self.base = {k: init_block[k].detach() for k in self.names}
        self.alphas = [{k: torch.full_like(d[k], self.alpha0).requires_grad_(True) for k in self.names} for d in self.deltas]
        self.trainable = [a for al in self.alphas for a in al.values()]

    def params(self) -> dict[str, torch.Tensor]:
        if self.init == "pretrained":
            return self.weights
        return {
            k: self.base[k] + sum((al[k] - self.alpha0) * d[k] for al, d in zip(self.alphas, self.deltas)) for k in self.names
        }


def adapt(
    adapter: BlockAdapter,
    block: int,
    theta0: Mapping[str, torch.Tensor],
    experts: Sequence[Mapping[str, torch.Tensor]],
    anchors: Sequence[torch.Tensor],
    *,
    init: str,
    init_block: Mapping[str, torch.Tensor] | None,
    epochs: int,
    lr: float,
    batch_size: int,
    loss: str,
    train_mode: bool,
    ta_lambda: float,
    seed: int,
    progress: bool = True,
    on_step: StepCallback | None = None,
    snapshot_epochs: Sequence[int] = (),
    heldout: Sequence[torch.Tensor] | None = None,
) -> AdaptResult:
    """Adapt block ``block`` on ``anchors[i]`` (canonical, expert i's anchors).

    ``theta0``, ``experts[i]``, ``init_block``: the block's tensors by local name. Targets are
    computed in eval mode; training runs with the block in ``train_mode`` (dropout on or off).
    Returns the adapted tensors under the block's full keys, detached, on the anchors' device.
    ``on_step(done, total)`` is called after every epoch (``total = epochs``), e.g. for progress.
    ``snapshot_epochs``: also keep the tensors after each of these epochs (0..epochs; 0 = the
    start), so one run gives every shorter run of an epoch grid. ``heldout[i]``: anchors of expert
    i that are not trained on; their pooled loss is logged after epoch 0, each snapshot and the
    last epoch (``log.heldout_loss``): a selection signal that uses no task data.
    """
    if len(anchors) != len(experts):
        raise ValueError(f"{len(anchors)} anchor sets for {len(experts)} experts")
    if heldout is not None and len(heldout) != len(experts):
        raise ValueError(f"{len(heldout)} held-out anchor sets for {len(experts)} experts")
    snaps = sorted({int(e) for e in snapshot_epochs})
    if len(snaps) != len(snapshot_epochs) or any(e < 0 or e > epochs for e in snaps):
        raise ValueError(f"snapshot epochs must be distinct epochs in 0..{epochs} (adapt_epochs), got {list(snapshot_epochs)}")
    # out-of-range settings fail before any work (FDAConfig checks them too; adapt can be called directly)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"adapt_lr must be a positive finite number, got {lr!r}")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"adapt_epochs must be >= 0 and adapt_batch >= 1, got {epochs} and {batch_size}")
    where = f"FDA adaptation of block {block}"
    names = adapter.param_names(block)
    module = adapter.block_module(block)
    dev = anchors[0].device
    cast = lambda sd: {k: sd[k].detach().to(dev, anchors[0].dtype) for k in names}  # noqa: E731
    th0 = cast(theta0)
    exs = [cast(e) for e in experts]
    with torch.no_grad(), module_mode(module, False):
        X = torch.cat([a.detach() for a in anchors])
        Y = torch.cat([adapter.call(block, ex, a.detach()) for ex, a in zip(exs, anchors)])
    param = _Parameterisation(names, th0, exs, init, cast(init_block) if init_block is not None else None, ta_lambda)
    opt = torch.optim.Adam(param.trainable, lr=lr) if epochs else None  # no weight decay, as the official code
    gen = torch.Generator().manual_seed(seed)

    if heldout is not None:
        held = [a.detach().to(dev, anchors[0].dtype) for a in heldout]
        with torch.no_grad(), module_mode(module, False):
            X_held = torch.cat(held)
            Y_held = torch.cat([adapter.call(block, ex, a) for ex, a in zip(exs, held)])

    def pooled_loss(x: torch.Tensor = X, y: torch.Tensor = Y) -> float:
        with torch.no_grad(), module_mode(module, False):
            return float(adapt_loss(adapter.call(block, param.params(), x), y, loss))

    prefix = adapter.block_prefix(block)
    snapshots: dict[int, StateDict] = {}
    heldout_loss: dict[int, float] = {}

    def checkpoint(epoch: int) -> None:
        """Keep the snapshot and the held-out loss due after ``epoch`` epochs."""
        if epoch in snaps:
            with torch.no_grad():
                snapshots[epoch] = {prefix + k: v.detach().clone() for k, v in param.params().items()}
        if heldout is not None and (epoch in snaps or epoch in (0, epochs)):
            heldout_loss[epoch] = pooled_loss(X_held, Y_held)  # eval mode: draws no random numbers

    initial = pooled_loss()
    if not math.isfinite(initial):
        # before any step: the starting point (or the anchors) already gives NaN/inf outputs
        if init == "ta" and init_block is None:  # the start θ0 + λ Σ τ_i is scaled by ta_lambda
            cause = f" with ta_lambda={ta_lambda!r}: the starting block θ0 + ta_lambda·Σ τ_i gives NaN/inf outputs; lower ta_lambda"
        else:
            cause = f": the starting block ({init} init) or the anchors give NaN/inf outputs; check the anchors and the block's weights"
        raise NonFiniteError(f"{where}: the adaptation loss is non-finite ({initial}) before any step{cause}")
    step_losses: list[torch.Tensor] = []
    epoch_losses: list[torch.Tensor] = []
    bar = tqdm(range(epochs), desc=f"adapt block {block}", disable=not progress, leave=False)
    # pooled_loss switches the block to eval mode and back, so snapshots taken mid-run leave dropout as it was
    checkpoint(0)
    # dropout (train_mode) draws from the global RNG: fork it and seed it, so runs repeat exactly
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), module_mode(module, train_mode):
        torch.manual_seed(seed)
        for _ in bar:
            perm = torch.randperm(X.shape[0], generator=gen).to(dev)
            batch_losses = []
            for start in range(0, X.shape[0], batch_size):
                idx = perm[start : start + batch_size]
                value = adapt_loss(adapter.call(block, param.params(), X[idx]), Y[idx], loss)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                batch_losses.append(value.detach())  # no float(): it would synchronise a GPU per batch
            step_losses += batch_losses
            epoch_losses.append(torch.stack(batch_losses).mean())
            # one host sync per epoch: a diverged run stops here, not after the remaining epochs
            if not bool(torch.isfinite(epoch_losses[-1])):
                bad = torch.stack(batch_losses)
                raise NonFiniteError(
                    f"{where}: the adaptation loss became non-finite in epoch {len(epoch_losses)} of {epochs} (batch "
                    f"losses {nonfinite_kind(bad)}) with adapt_lr={lr!r}: adaptation diverged; lower adapt_lr"
                )
            if progress:
                bar.set_postfix(loss=float(epoch_losses[-1]))
            checkpoint(len(epoch_losses))
            if on_step is not None:
                on_step(len(epoch_losses), epochs)
    final = pooled_loss()
    with torch.no_grad():
        out = {prefix + k: v.detach().clone() for k, v in param.params().items()}
    for state in (out, *snapshots.values()):
        for k, v in state.items():
            check_result(where, f"the adapted tensor {k!r}", v, {"adapt_lr": lr}, fix="adaptation diverged; lower adapt_lr")
    if not math.isfinite(final):
        raise NonFiniteError(f"{where}: the final adaptation loss is non-finite ({final}) with adapt_lr={lr!r}: adaptation diverged; lower adapt_lr")
    as_tensor = lambda xs: torch.stack(xs).cpu() if xs else torch.empty(0)  # noqa: E731
    log = AdaptLog(as_tensor(step_losses), as_tensor(epoch_losses), initial, final, heldout_loss)
    return AdaptResult(block, out, log, snapshots)
