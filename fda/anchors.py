"""FDA stage 1: anchor initialisation and construction (one block, many experts at once).

Objective, exactly as the official code (reference §2.2), for expert i and block l:

* ``S(X) = mean_j cos(flat(block_θ0(x_j)), flat(block_θi(x_j)))`` (``similarity="cos"``), or
  ``-mean (out0 - outi)^2`` (``"mse"``), or ``-mean |out0 - outi|`` (``"l1"``);
* ``g_p = dS/dθ0[p]`` for every parameter tensor p of the block, with ``create_graph=True``;
* ``L(X) = Σ_p (1 - cos(g_p, τ_p))``, minimised over X with AdamW (PyTorch defaults, wd 0.01);
  p runs over the block's tensors in the layout the official code saw them: ``qkv_layout="fused"``
  makes q, k, v one tensor (open_clip's ``in_proj``, the official vision blocks) on a model that
  stores them apart, ``"split"`` the reverse (:meth:`fda.blocks.BlockAdapter.loss_terms`);
* the best X seen is returned (the loss is evaluated before the step, so it belongs to that X).

Speed-ups over the official loop, none of which changes the result:

* all experts of a block are optimised together: anchors are stacked ``[E, n, ...]`` and the
  per-expert losses are summed. The losses are independent, so the sum's gradient wrt ``X[e]``
  is expert e's own gradient, and AdamW is elementwise, so one optimiser on the stack equals E
  optimisers. With ``batching="vmap"`` the E block calls are one vectorised call;
* only X is differentiated in the outer backward (``autograd.grad(loss, X)``): the finetuned
  parameters never require grad and the pretrained ones get no second-order gradient;
* the block's tensors are taken once, for the whole run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap
from tqdm.auto import tqdm

from baselines.errors import NonFiniteError
from baselines.finite import check_result, nonfinite_kind
from fda.blocks import BlockAdapter, LossTerm

# on_step(done, total): the work done so far on one block, for progress displays
StepCallback = Callable[[int, int], None]

StateDict = dict[str, torch.Tensor]

SIMILARITIES = ("cos", "mse", "l1")
#: gauss and weight are the paper's; taskspan is BEYOND it (see :func:`task_span_anchors`)
ANCHOR_INITS = ("gauss", "weight", "taskspan")
#: adamw is the paper's and the official code's; lbfgs is BEYOND it (see :func:`construct_anchors`)
CONSTRUCT_OPTIMIZERS = ("adamw", "lbfgs")
# cosine of a zero vector: 0 instead of NaN (same eps as torch's cosine_similarity default)
COS_EPS = 1e-8
# what to do with tensors whose induced gradient is identically zero (attention key biases):
# "keep" (official) differentiates their round-off-level gradient like any other tensor;
# "constant" treats their (1 - cos) as the constant 1 it is in exact arithmetic
ZERO_GRAD_POLICIES = ("keep", "constant")


# ------------------------------------------------------------------------------------------------
# Seeds and layouts


def derive_seed(seed: int, *parts: object) -> int:
    """A deterministic 63-bit seed for one (block, expert, stream): fan-out jobs need no shared RNG."""
    digest = hashlib.sha256("/".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def official_to_canonical(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Official anchor layout -> canonical batch-first (``TND`` [T,n,d] -> [n,T,d]; others unchanged)."""
    return x.permute(1, 0, 2).contiguous() if layout == "TND" else x


def canonical_to_official(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Inverse of :func:`official_to_canonical` (for files meant for the official scripts)."""
    return x.permute(1, 0, 2).contiguous() if layout == "TND" else x


def _official_shape(layout: str, n: int, tokens: int, d: int) -> tuple[int, ...]:
    return {"TND": (tokens, n, d), "NTD": (n, tokens, d), "ND": (n, d)}[layout]


# ------------------------------------------------------------------------------------------------
# Initialisation


def gauss_anchors(adapter: BlockAdapter, n: int, tokens: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``σ·N(0, 1)`` anchors, canonical shape.

    Drawn in the official layout and then permuted, so a generator seeded with 0 reproduces a CPU
    re-statement of the official vision draw (``torch.manual_seed(0); randn(T, n, d)``) bit for
    bit. The official runs drew on CUDA, whose generator gives other numbers (docs/fda.md).
    """
    shape = _official_shape(adapter.official_layout, n, tokens, adapter.width)
    x = torch.randn(shape, generator=generator, dtype=torch.float32)
    return official_to_canonical(x * sigma, adapter.official_layout)


def weight_row_pool(adapter: BlockAdapter, block: int, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Rows of the block's 2-D weights with input width d, stacked in parameter order: ``[R, d]``."""
    names = adapter.weight_row_names(block)
    if not names:
        raise ValueError(f"{adapter.family} block {block}: no 2-D weight with input width {adapter.width} for the 'weight' init")
    return torch.cat([params[nm].detach().float() for nm in names], dim=0)


def weight_anchors(
    adapter: BlockAdapter, block: int, finetuned: Mapping[str, torch.Tensor], n: int, tokens: int, generator: torch.Generator
) -> torch.Tensor:
    """The official ``weight`` init from the FINETUNED block's weight rows, canonical shape.

    ``need = n·T`` rows. Pool ≥ need: a random subset without replacement (``randperm``).
    Pool < need: every pool row in natural order, then ``need - R`` rows that are each the mean of
    two uniformly drawn pool rows (one ``randint(0, R, (k, 2))``: from the same generator state, the
    pairs of the official loop of ``randint(0, R, (2,))`` calls, in its order). The rows are
    reshaped row-major to the official layout (vision ``[T, n, d]``: row r is token ``r // n`` of
    anchor ``r % n``) and converted to canonical.
    No scaling.
    """
    pool = weight_row_pool(adapter, block, finetuned)
    rows, d = pool.shape
    need = n * (1 if adapter.official_layout == "ND" else tokens)
    if rows >= need:
        chosen = pool[torch.randperm(rows, generator=generator)[:need]]
    else:
        pairs = torch.randint(0, rows, (need - rows, 2), generator=generator)
        chosen = torch.cat([pool, (pool[pairs[:, 0]] + pool[pairs[:, 1]]) / 2], dim=0)
    return official_to_canonical(chosen.reshape(_official_shape(adapter.official_layout, n, tokens, d)), adapter.official_layout)


def task_span_anchors(
    adapter: BlockAdapter,
    block: int,
    pretrained: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, torch.Tensor],
    n: int,
    tokens: int,
    sigma: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """BEYOND the paper: tokens drawn from the row span of the expert's task vector, canonical shape.

    The anchors' gradient must align with τ; a token x enters the gradient of a weight W that reads
    the block input as (∂S/∂(Wx)) xᵀ, so tokens in the span of τ_W's rows start closer to it than
    isotropic noise. With ``M [R, d]`` the block's input-reading weight deltas (q, k, v and the
    first MLP layer: :meth:`~fda.blocks.BlockAdapter.input_reading_names`), each divided by its
    Frobenius norm and stacked, every token is ``Mᵀz`` with ``z ~ N(0, I_R)`` (covariance ``MᵀM``),
    rescaled to the median row norm of the finetuned block's width-d weights (the ``weight`` init's
    pool, so both start at the same scale), plus ``N(0, σ²)`` noise. A block whose deltas are all
    zero draws ``z`` in ``R^d`` instead (isotropic tokens at the same scale).
    """
    names = adapter.input_reading_names(block)
    if not names:
        raise ValueError(f"{adapter.family} block {block}: no weight reads the block input (width {adapter.width}) for the 'taskspan' init")
    deltas = [finetuned[k].detach().float() - pretrained[k].detach().float() for k in names]
    rows = [delta / norm for delta, norm in ((d, d.norm()) for d in deltas) if float(norm) > 0]
    m = torch.cat(rows, dim=0) if rows else torch.eye(adapter.width)  # [R, d]
    count = n * (1 if adapter.official_layout == "ND" else tokens)
    x = torch.randn(count, m.shape[0], generator=generator) @ m  # [count, d]
    target = weight_row_pool(adapter, block, finetuned).norm(dim=1).median()
    x = x * (target / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny))
    x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.reshape(adapter.anchor_shape(n, tokens))


def init_anchors(
    kind: str,
    adapter: BlockAdapter,
    block: int,
    finetuned: Mapping[str, torch.Tensor],
    *,
    n: int,
    tokens: int,
    sigma: float,
    seed: int,
    pretrained: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Initial anchors for one (block, expert); ``seed`` seeds a private ``torch.Generator``.
    ``pretrained`` (the block's θ0 tensors) is needed by ``taskspan`` only."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return gauss_anchors(adapter, n, tokens, sigma, gen)
    if kind == "weight":
        return weight_anchors(adapter, block, finetuned, n, tokens, gen)
    if kind == "taskspan":
        if pretrained is None:
            raise ValueError("the 'taskspan' anchor init needs the pretrained block (pretrained=...)")
        return task_span_anchors(adapter, block, pretrained, finetuned, n, tokens, sigma, gen)
    raise ValueError(f"unknown anchor init {kind!r}; expected one of {ANCHOR_INITS}")


# ------------------------------------------------------------------------------------------------
# Objective


def similarity(out0: torch.Tensor, outi: torch.Tensor, kind: str) -> torch.Tensor:
    """S between the pretrained and finetuned block outputs ``[n, ...]`` (scalar; higher = closer)."""
    if kind == "cos":
        return F.cosine_similarity(out0.flatten(1), outi.flatten(1), dim=-1).mean()
    if kind == "mse":
        return -F.mse_loss(out0, outi)
    if kind == "l1":
        return -F.l1_loss(out0, outi)
    raise ValueError(f"unknown similarity {kind!r}; expected one of {SIMILARITIES}")


def _flat_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of two tensors as flat vectors; 0 (not NaN) when one of them is zero."""
    return F.cosine_similarity(a.reshape(-1), b.reshape(-1), dim=0, eps=COS_EPS)


@contextlib.contextmanager
def module_mode(module: nn.Module, train: bool) -> Iterator[None]:
    """Temporarily set ``module.train(train)`` (dropout), restoring the previous flags after."""
    saved = [(m, m.training) for m in module.modules()]
    module.train(train)
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _term_vector(tensors: Mapping[str, torch.Tensor], term: LossTerm, lead: int) -> torch.Tensor:
    """The members of ``term`` flattened and concatenated: ``[*lead dims, size]``. ``lead``: leading
    batch dimensions kept (1 for expert-stacked tensors); a member's third slices its rows."""
    parts = []
    for name, third in term.members:
        x = tensors[name]
        if third is not None:
            rows = x.shape[lead] // 3
            x = x.narrow(lead, third * rows, rows)
        parts.append(x.reshape(*x.shape[:lead], -1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=lead)


class _Objective:
    """Per-expert construction losses and their anchor gradients for stacked anchors ``X [E, ...]``.

    The loss sums 1 - cos over :class:`~fda.blocks.LossTerm` s: the block's tensors, or with
    ``qkv_layout`` its attention q/k/v fused or split (see ``BlockAdapter.loss_terms``).
    """

    def __init__(
        self,
        adapter: BlockAdapter,
        block: int,
        theta0: Mapping[str, torch.Tensor],
        experts: Sequence[Mapping[str, torch.Tensor]],
        kind: str,
        batching: str,
        zero_grad: str = "keep",
        qkv_layout: str | None = None,
    ):
        self.adapter, self.block, self.kind, self.batching = adapter, block, kind, batching
        self.names = adapter.param_names(block)
        if zero_grad not in ZERO_GRAD_POLICIES:
            raise ValueError(f"zero_grad must be one of {ZERO_GRAD_POLICIES}, got {zero_grad!r}")
        self.terms = adapter.loss_terms(block, qkv_layout)
        self.term_names = [t.name for t in self.terms]
        self.unalignable = adapter.zero_gradient_terms(block, self.terms)
        # 1 where the term's cosine counts, 0 where it is held at its exact value 0
        self.mask = torch.tensor([0.0 if zero_grad == "constant" and n in self.unalignable else 1.0 for n in self.term_names])
        E = len(experts)
        self.theta0 = {k: theta0[k].detach() for k in self.names}
        # finetuned params: plain tensors, never leaves needing grad
        self.thetas = [{k: ex[k].detach() for k in self.names} for ex in experts]
        taus = [{k: ex[k] - self.theta0[k] for k in self.names} for ex in self.thetas]
        self.taus = [[_term_vector(tau, t, 0) for t in self.terms] for tau in taus]
        if batching == "vmap":
            # θ0 seen once per expert through a stride-0 view (no copies): the gradient wrt the view,
            # d(Σ_e S_e)/dθ0_rep[e], is expert e's own gradient
            leaf = {k: v.detach().requires_grad_(True) for k, v in self.theta0.items()}
            self.theta0_rep = {k: v.unsqueeze(0).expand(E, *v.shape) for k, v in leaf.items()}
            self.theta_stack = {k: torch.stack([t[k] for t in self.thetas]) for k in self.names}
            self.tau_stack = [torch.stack([t[p] for t in self.taus]) for p in range(len(self.terms))]
            self.thetas, self.taus = [], []  # stacked copies only: one block per expert resident
        elif batching == "loop":
            # detach() shares storage: the leaf costs no copy of the block
            self.theta0_leaf = {k: v.detach().requires_grad_(True) for k, v in self.theta0.items()}
        else:
            raise ValueError(f"unknown batching {batching!r}; expected 'auto', 'vmap' or 'loop'")

    def _sim(self, p0: Mapping[str, torch.Tensor], pi: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out0 = self.adapter.call(self.block, p0, x)
        outi = self.adapter.call(self.block, pi, x)
        return similarity(out0, outi, self.kind)

    def __call__(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss [E], cos [E, P], grad_norm [E, P], dloss/dX [E, ...]) for the anchors ``X``; P terms."""
        if self.batching == "vmap":
            S = vmap(self._sim)(self.theta0_rep, self.theta_stack, X)  # [E]
            grads = dict(zip(self.names, torch.autograd.grad(S.sum(), [self.theta0_rep[k] for k in self.names], create_graph=True)))
            g_terms = [_term_vector(grads, t, 1) for t in self.terms]  # [E, size] each
            cos = torch.stack([vmap(_flat_cos)(g, t) for g, t in zip(g_terms, self.tau_stack)], dim=1)  # [E, P]
            cos = cos * self.mask.to(cos.device)
            loss = (1 - cos).sum(dim=1)
            (gx,) = torch.autograd.grad(loss.sum(), [X])  # only X: no second-order weight gradients
            gnorm = torch.stack([g.detach().norm(dim=1) for g in g_terms], dim=1)
            return loss.detach(), cos.detach(), gnorm, gx
        # one expert at a time, each graph freed before the next: peak memory of one expert
        outs = [self.one(e, X[e]) for e in range(len(self.thetas))]
        return tuple(torch.stack(parts) for parts in zip(*outs))  # type: ignore[return-value]

    def one(self, e: int, xe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss [], cos [P], grad_norm [P], dloss/dxe) of expert ``e`` alone (``batching="loop"``);
        ``xe``: its anchors, a tensor that requires grad (a row of the stack, or its own leaf)."""
        leaves = [self.theta0_leaf[k] for k in self.names]
        S = self._sim(self.theta0_leaf, self.thetas[e], xe)
        grads = dict(zip(self.names, torch.autograd.grad(S, leaves, create_graph=True)))
        g_terms = [_term_vector(grads, t, 0) for t in self.terms]
        cos = torch.stack([_flat_cos(g, t) for g, t in zip(g_terms, self.taus[e])]) * self.mask.to(xe.device)
        loss = (1 - cos).sum()
        (gx,) = torch.autograd.grad(loss, [xe])
        return loss.detach(), cos.detach(), torch.stack([g.detach().norm() for g in g_terms]), gx


# ------------------------------------------------------------------------------------------------
# Results


@dataclass
class ConstructLog:
    """Per-step record of one expert's construction.

    ``loss [steps]`` and ``cos [steps, P]`` / ``grad_norm [steps, P]`` belong to the anchors
    *before* that step; ``param_names`` gives the P columns: the loss terms (the block's tensors,
    or q/k/v fused or split as ``qkv_layout`` asked). ``unalignable`` names the terms
    whose induced gradient is identically zero (attention key biases): their cosine is round-off
    (or 0 with ``zero_grad="constant"``) and caps the mean cosine at (P - u)/P — not a failure.
    ``sv`` holds normalised singular values (divided by the largest) of the anchors reshaped
    ``[n·T, d]`` at ``sv_steps``.
    """

    param_names: list[str]
    loss: torch.Tensor
    cos: torch.Tensor
    grad_norm: torch.Tensor
    unalignable: list[str] = field(default_factory=list)
    sv_steps: list[int] = field(default_factory=list)
    sv: list[torch.Tensor] = field(default_factory=list)

    def mean_cos(self, alignable_only: bool = True) -> torch.Tensor:
        """Per-step mean cosine over the tensors (by default leaving out the unalignable ones): ``[steps]``."""
        keep = [i for i, n in enumerate(self.param_names) if not (alignable_only and n in self.unalignable)]
        return self.cos[:, keep].mean(dim=1)

    def summary(self) -> dict[str, object]:
        """A JSON-friendly digest (for anchor file metadata)."""
        out: dict[str, object] = {"steps": int(self.loss.numel()), "unalignable": self.unalignable}
        if self.loss.numel():
            out.update(
                initial_loss=float(self.loss[0]),
                final_loss=float(self.loss[-1]),
                initial_mean_cos=float(self.mean_cos()[0]),
                best_mean_cos=float(self.mean_cos().max()),
            )
        return out


@dataclass
class ConstructResult:
    """Constructed anchors of one (block, expert).

    ``anchors``: canonical ``[n, T, d]`` (``[n, d]`` for MLP-only blocks), the best X seen;
    ``initial``: the starting anchors (for the "unconstructed anchors" control);
    ``best_loss`` / ``best_step``: its loss and the step at which it was evaluated (-1: no steps);
    ``budget_anchors``: ``{s: anchors}`` for the ``snapshot_steps`` asked of
    :func:`construct_anchors`: the best X of the first ``s`` steps, i.e. what a run of ``s`` steps
    returns (the optimiser has no schedule, so a shorter run is a prefix of a longer one).
    """

    block: int
    expert: int
    anchors: torch.Tensor
    initial: torch.Tensor
    best_loss: float
    best_step: int
    log: ConstructLog
    #: the resolved construction settings (``fda.construct_block`` fills them; saved as metadata)
    settings: dict[str, object] = field(default_factory=dict)
    budget_anchors: dict[int, torch.Tensor] = field(default_factory=dict)


def _normalised_sv(x: torch.Tensor) -> torch.Tensor:
    s = torch.linalg.svdvals(x.detach().reshape(-1, x.shape[-1]).float())
    return s / s[0].clamp_min(torch.finfo(s.dtype).tiny)


def _diverged(where: str, loss: torch.Tensor, ids: Sequence[int], step: int, steps: int, lr: float, optimizer: str = "adamw") -> None:
    """Raise ``NonFiniteError`` for a non-finite construction loss ``[E]`` at ``step``."""
    bad = [ids[e] for e in range(loss.numel()) if not math.isfinite(float(loss[e]))]
    experts = f"expert{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}"  # original indices
    if step == 0:  # before any update: the anchors' start, not the learning rate
        raise NonFiniteError(
            f"{where}, {experts}: the construction loss is non-finite (per-expert losses {nonfinite_kind(loss)}) at step 0, before any "
            f"update: the initial anchors (anchor init, sigma) or the block's weights give NaN/inf outputs or gradients"
        )
    if optimizer == "lbfgs":
        raise NonFiniteError(
            f"{where}, {experts}: the construction loss became non-finite (per-expert losses {nonfinite_kind(loss)}) at objective "
            f"evaluation {step} of {steps} with construct_optimizer='lbfgs': its line search stepped the anchors to NaN/inf "
            f"outputs; use construct_optimizer='adamw' for this block"
        )
    raise NonFiniteError(
        f"{where}, {experts}: the construction loss became non-finite (per-expert losses {nonfinite_kind(loss)}) at step {step} of "
        f"{steps} with construct_lr={lr!r}: the anchors diverged; lower construct_lr"
    )


@dataclass
class _Trace:
    """What one construction run kept, per expert: the best anchors, the per-evaluation logs and
    the budget snapshots (``kept[e][s]``: the best of the first ``s`` evaluations)."""

    best: list[torch.Tensor] = field(default_factory=list)
    best_loss: list[float] = field(default_factory=list)
    best_step: list[int] = field(default_factory=list)
    loss: list[torch.Tensor] = field(default_factory=list)  # [evaluations] each
    cos: list[torch.Tensor] = field(default_factory=list)  # [evaluations, P] each
    grad_norm: list[torch.Tensor] = field(default_factory=list)  # [evaluations, P] each
    sv_steps: list[list[int]] = field(default_factory=list)
    sv: list[list[torch.Tensor]] = field(default_factory=list)
    kept: list[dict[int, torch.Tensor]] = field(default_factory=list)


def _run_adamw(objective: _Objective, init: torch.Tensor, steps: int, lr: float, budgets: list[int], sv_every: int,
               where: str, ids: Sequence[int], progress: bool, block: int, on_step: StepCallback | None) -> _Trace:
    """The official optimiser: AdamW (PyTorch defaults, wd 0.01) on the stacked anchors ``[E, ...]``,
    one objective evaluation per step."""
    E, dev = init.shape[0], init.device
    X = init.detach().clone().requires_grad_(True)
    opt = torch.optim.AdamW([X], lr=lr)  # PyTorch defaults, weight_decay=0.01, as the official code
    best = X.detach().clone()
    best_loss = torch.full((E,), math.inf, device=dev)
    best_step = torch.full((E,), -1, dtype=torch.long, device=dev)
    losses, coss, norms = [], [], []
    sv_steps: list[int] = []
    svs: list[list[torch.Tensor]] = [[] for _ in range(E)]
    kept: dict[int, torch.Tensor] = {}  # budget s -> best [E, ...] of steps 0..s-1

    def snapshot(step: int) -> None:
        sv_steps.append(step)
        for e in range(E):
            svs[e].append(_normalised_sv(X[e]).cpu())

    bar = tqdm(range(steps), desc=f"construct block {block}", disable=not progress, leave=False)
    for step in bar:
        if step in budgets:
            kept[step] = best.clone()
        if sv_every and step % sv_every == 0:
            snapshot(step)
        # per-expert losses are independent: the summed loss's gradient wrt X[e] is expert e's own
        loss, cos, gnorm, grad = objective(X)
        X.grad = grad
        with torch.no_grad():
            improved = loss < best_loss
            best_loss = torch.where(improved, loss, best_loss)
            best_step = torch.where(improved, torch.full_like(best_step, step), best_step)
            best[improved] = X.detach()[improved]
        losses.append(loss.cpu())  # (a host copy: the check below adds no GPU sync)
        if not bool(torch.isfinite(losses[-1]).all()):
            _diverged(where, losses[-1], ids, step, steps, lr)
        coss.append(cos.cpu())
        norms.append(gnorm.cpu())
        opt.step()
        opt.zero_grad(set_to_none=True)
        if progress:  # float() would synchronise a GPU every step
            bar.set_postfix(loss=float(loss.mean()), cos=float(cos.mean()))
        if on_step is not None:
            on_step(step + 1, steps)
    if sv_every:
        snapshot(steps)
    if steps in budgets:
        kept[steps] = best.clone()
    P = len(objective.terms)
    L = torch.stack(losses, dim=1) if losses else torch.empty(E, 0)
    C = torch.stack(coss, dim=1) if coss else torch.empty(E, 0, P)
    N = torch.stack(norms, dim=1) if norms else torch.empty(E, 0, P)
    return _Trace(
        best=list(best), best_loss=[float(v) for v in best_loss], best_step=[int(v) for v in best_step],
        loss=list(L), cos=list(C), grad_norm=list(N), sv_steps=[list(sv_steps) for _ in range(E)], sv=svs,
        kept=[{s: kept[s][e] for s in budgets} for e in range(E)],
    )  # fmt: skip


class _BudgetSpent(Exception):
    """Raised by the L-BFGS closure when the evaluation budget is used up (ends the step early)."""


def _run_lbfgs(objective: _Objective, init: torch.Tensor, steps: int, history: int, budgets: list[int], sv_every: int,
               where: str, ids: Sequence[int], progress: bool, block: int, on_step: StepCallback | None) -> _Trace:
    """BEYOND the paper: PyTorch's L-BFGS (strong-Wolfe line search, ``history`` pairs), one
    expert at a time, for at most ``steps`` objective evaluations each, line-search ones included.

    L-BFGS is not elementwise: one optimiser on the stacked anchors would couple the experts
    through its line search and curvature pairs, so each expert gets its own (on a CPU this costs
    what the per-expert objective loop costs anyway; on a GPU it gives up vmap's batching). The
    best anchors over all evaluations are kept, trial points included. A run whose line search
    makes no progress (torch's tolerances met) stops before its budget.
    """
    trace = _Trace()
    bar = tqdm(total=init.shape[0] * steps, desc=f"construct block {block} (L-BFGS)", disable=not progress, leave=False)
    E = init.shape[0]
    for e in range(E):
        # progress counts evaluations over all experts: expert e's n-th is e * steps + n of E * steps
        count = None if on_step is None else (lambda n, e=e: on_step(e * steps + n, E * steps))
        _lbfgs_expert(objective, e, init[e], steps, history, budgets, sv_every, where, ids[e], bar, trace, count)
    bar.close()
    return trace


def _lbfgs_expert(objective: _Objective, e: int, x0: torch.Tensor, steps: int, history: int, budgets: list[int], sv_every: int,
                  where: str, expert_id: int, bar: tqdm, trace: _Trace, on_eval: Callable[[int], None] | None) -> None:
    """One expert's L-BFGS run (see :func:`_run_lbfgs`), appended to ``trace``."""
    P = len(objective.terms)
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=steps, max_eval=steps, history_size=history, line_search_fn="strong_wolfe")
    best, best_loss, best_step = x.detach().clone(), math.inf, -1
    losses: list[torch.Tensor] = []
    coss: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    sv_steps: list[int] = []
    svs: list[torch.Tensor] = []
    kept: dict[int, torch.Tensor] = {}

    def closure() -> torch.Tensor:
        nonlocal best, best_loss, best_step
        count = len(losses)
        if count >= steps:
            raise _BudgetSpent
        if count in budgets:
            kept[count] = best.clone()
        if sv_every and count % sv_every == 0:
            sv_steps.append(count)
            svs.append(_normalised_sv(x).cpu())
        loss, cos, gnorm, gx = objective.one(e, x)
        losses.append(loss.cpu())
        if not math.isfinite(float(losses[-1])):
            _diverged(where, losses[-1].reshape(1), [expert_id], count, steps, 1.0, "lbfgs")
        coss.append(cos.cpu())
        norms.append(gnorm.cpu())
        if float(losses[-1]) < best_loss:
            best, best_loss, best_step = x.detach().clone(), float(losses[-1]), count
        x.grad = gx
        bar.update(1)
        if on_eval is not None:
            on_eval(len(losses))
        return loss

    with contextlib.suppress(_BudgetSpent):
        while len(losses) < steps:
            before = len(losses)
            opt.step(closure)
            if len(losses) - before <= 1:  # converged at its first evaluation: nothing left to gain
                break
    bar.update(steps - len(losses))
    if on_eval is not None and len(losses) < steps:  # an early stop: the rest of the budget is done
        on_eval(steps)
    if sv_every:  # the final snapshot: the returned (best) anchors
        sv_steps.append(len(losses))
        svs.append(_normalised_sv(best).cpu())
    trace.best.append(best)
    trace.best_loss.append(best_loss)
    trace.best_step.append(best_step)
    trace.loss.append(torch.stack(losses) if losses else torch.empty(0))
    trace.cos.append(torch.stack(coss) if coss else torch.empty(0, P))
    trace.grad_norm.append(torch.stack(norms) if norms else torch.empty(0, P))
    trace.sv_steps.append(sv_steps)
    trace.sv.append(svs)
    # a budget at or past the last evaluation (the full budget, or past an early stop) is the final best
    trace.kept.append({s: kept.get(s, best) for s in budgets})


def construct_anchors(
    adapter: BlockAdapter,
    block: int,
    theta0: Mapping[str, torch.Tensor],
    experts: Sequence[Mapping[str, torch.Tensor]],
    init: torch.Tensor,
    *,
    steps: int,
    lr: float,
    similarity_kind: str = "cos",
    batching: str = "auto",
    sv_every: int = 0,
    progress: bool = True,
    expert_ids: Sequence[int] | None = None,
    zero_grad: str = "keep",
    snapshot_steps: Sequence[int] = (),
    qkv_layout: str | None = None,
    optimizer: str = "adamw",
    lbfgs_history: int = 20,
    on_step: StepCallback | None = None,
) -> list[ConstructResult]:
    """Construct the anchors of E experts of one block together.

    ``theta0`` / ``experts[e]``: the block's tensors by local name (``adapter.param_names``);
    ``init``: stacked initial anchors ``[E, *anchor_shape]``. ``steps``: the budget in objective
    evaluations, whatever the optimiser (so budgets compare FLOP for FLOP). ``optimizer``:
    ``adamw`` (the official: one evaluation per step, ``lr``) or ``lbfgs`` (BEYOND the paper:
    strong-Wolfe L-BFGS with ``lbfgs_history`` pairs, one expert at a time, ``lr`` unused; see
    :func:`_run_lbfgs`). ``batching`` (AdamW): ``vmap`` (one vectorised call for all experts),
    ``loop`` (a Python loop inside each step) or ``auto`` (vmap for E > 1 on CUDA, else loop);
    all give the same anchors up to float round-off; L-BFGS always loops. Runs on ``init``'s device
    and dtype, with the block in eval mode (no dropout, as the official construction).
    ``snapshot_steps``: budgets s (0 <= s <= steps) whose best-so-far anchors are kept in
    ``budget_anchors`` (the best of the first s evaluations; what an s-evaluation AdamW run returns,
    as AdamW has no schedule; for L-BFGS a prefix of the longer run, e.g. for a budget study; s = 0
    is the initial anchors). ``qkv_layout``: the q/k/v layout of the loss's per-tensor cosines
    (None: as the block stores them; see :meth:`fda.blocks.BlockAdapter.loss_terms`).
    ``on_step(done, total)``: called after every step with the block's work done so far (AdamW:
    steps of all experts at once; L-BFGS: evaluations over the experts, ``total = E * steps``),
    e.g. for a progress display. Returns one :class:`ConstructResult` per expert, in order.
    """
    E = len(experts)
    if init.shape[0] != E:
        raise ValueError(f"init has {init.shape[0]} anchor sets for {E} experts")
    # out-of-range settings fail before any work (FDAConfig checks them too; this can be called directly)
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"construct_lr must be a positive finite number, got {lr!r}")
    if steps < 0:
        raise ValueError(f"construct_steps must be >= 0, got {steps}")
    if optimizer not in CONSTRUCT_OPTIMIZERS:
        raise ValueError(f"construct_optimizer must be one of {CONSTRUCT_OPTIMIZERS}, got {optimizer!r}")
    if optimizer == "lbfgs":
        if batching == "vmap":
            raise ValueError("construct_optimizer='lbfgs' runs one expert at a time (its line search is per expert): use batching 'auto' or 'loop'")
        if isinstance(lbfgs_history, bool) or not isinstance(lbfgs_history, numbers.Integral) or lbfgs_history < 1:
            raise ValueError(f"lbfgs_history must be an int >= 1, got {lbfgs_history!r}")
        batching = "loop"
    where = f"FDA construction of block {block}"
    check_result(where, "the initial anchor tensor", init, {}, fix="the anchor init (sigma, or the expert's weights) gives NaN/inf")
    if batching == "auto":
        # vmap turns every matmul into bmm: on a GPU that saves E-fold kernel launches; on a CPU it
        # saves nothing (same FLOPs, bmm no faster than mm), so plain per-expert calls are used
        batching = "vmap" if E > 1 and init.device.type == "cuda" else "loop"
    ids = list(expert_ids) if expert_ids is not None else list(range(E))
    budgets = sorted(set(int(s) for s in snapshot_steps))
    if budgets and not 0 <= budgets[0] <= budgets[-1] <= steps:
        raise ValueError(f"snapshot_steps must lie in 0..{steps} (the construction steps), got {budgets}")
    dev = init.device
    to_dev = lambda sd: {k: v.to(dev, init.dtype) for k, v in sd.items()}  # noqa: E731
    objective = _Objective(adapter, block, to_dev(theta0), [to_dev(e) for e in experts], similarity_kind, batching, zero_grad, qkv_layout)
    with module_mode(adapter.block_module(block), False):
        if optimizer == "adamw":
            trace = _run_adamw(objective, init, steps, lr, budgets, sv_every, where, ids, progress, block, on_step)
        else:
            trace = _run_lbfgs(objective, init, steps, lbfgs_history, budgets, sv_every, where, ids, progress, block, on_step)
    best = torch.stack(trace.best) if E else init
    check_result(where, "the constructed anchor tensor", best, {"construct_lr": lr} if optimizer == "adamw" else {"construct_optimizer": optimizer})
    return [
        ConstructResult(
            block=block,
            expert=ids[e],
            anchors=trace.best[e].detach().clone(),
            initial=init[e].detach().clone(),
            best_loss=trace.best_loss[e] if trace.loss[e].numel() else math.nan,
            best_step=trace.best_step[e],
            log=ConstructLog(list(objective.term_names), trace.loss[e], trace.cos[e], trace.grad_norm[e], list(objective.unalignable),
                             trace.sv_steps[e], trace.sv[e]),
            budget_anchors={s: t.detach().clone() for s, t in trace.kept[e].items()},
        )
        for e in range(E)
    ]  # fmt: skip
