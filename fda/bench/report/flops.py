"""Analytic FLOP estimates of the optimising methods: FDA's construction and adaptation, WUDI's Adam.

Only matrix products are counted (2 FLOPs per multiply-add); elementwise work (activations,
layer norms, optimiser updates, softmax) is left out: it is a few percent of a transformer block.
docs/cost.md derives every constant; the formulas:

Block forward on one anchor (``BlockShape``: T tokens of width d; P = elements of the block's 2-D
weights, each of which multiplies every token once; self-attention or not)::

    F = 2·T·P + 4·T²·d·[attention]          (QKᵀ and AV: 2·T²·d each, whatever the heads)

Construction, per (block, expert), for n anchors and E objective evaluations (AdamW: one per
step; L-BFGS: one per closure call, line-search ones included; the anchor log's ``loss`` list has
one entry per evaluation)::

    FLOPs = C_CONSTRUCT · E · n · F,     C_CONSTRUCT = 9

one evaluation runs both blocks forward (2F), the first backward of S wrt θ0 with create_graph
(weight and input gradients: 2F) and the outer backward wrt X through both (5F: two products
per weight gradient, one per input gradient, one per forward product of each block).

Adaptation, per block, N pooled anchors (n per expert, summed), ``epochs`` passes::

    FLOPs = (3·epochs + 3) · N · F

forward + backward ≈ 3F per anchor and epoch, plus the targets Y = block_i(X_i) and the pooled
loss before and after training (one forward each). Merged inits train coefficients instead of
weights: the same products.

WUDI (gram form, the default), per merged 2-D key [m, n], K experts with a non-zero τ_i, s steps::

    FLOPs = 2·K·m·n² + K·min(2·m·n², 4·m²·n) + s·2·m·n²

(A = Σ w_i τ_iᵀτ_i, c0, then one [m, n]×[n, n] product per step); the direct form costs
s·4·K·m²·n (forward and backward of Σ_i (τ_m − τ_i)τ_iᵀ).

Checked against ``torch.utils.flop_counter.FlopCounterMode`` (tests/layer_bench/test_cost.py):
the estimate is within -3% (CLIP block) and +5% (BERT layer) of the counted matrix FLOPs, and
17% above them for a Llama MLP, whose input-reading products (two of its three) need no input
gradient in the first backward or during adaptation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

#: matrix-product passes per construction objective evaluation, in units of one block forward
C_CONSTRUCT = 9
#: matrix-product passes per anchor and adaptation epoch (forward + backward)
C_ADAPT_EPOCH = 3
#: forwards per pooled anchor outside the epochs: the targets, the pooled loss before and after
C_ADAPT_FIXED = 3


@dataclass(frozen=True)
class BlockShape:
    """What a block's FLOPs depend on: ``tokens`` T per anchor (1 for ``[n, d]`` anchors),
    ``width`` d, ``matmul_params`` P (elements of the block's 2-D weights), ``attention``
    (self-attention over the T tokens), and ``n_anchors`` n of one expert."""

    tokens: int
    width: int
    matmul_params: int
    attention: bool
    n_anchors: int

    def to_record(self) -> dict[str, Any]:
        """JSON form (the anchor log's ``shape`` entry)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BlockShape:
        return cls(tokens=int(record["tokens"]), width=int(record["width"]), matmul_params=int(record["matmul_params"]),
                   attention=bool(record["attention"]), n_anchors=int(record["n_anchors"]))

    @classmethod
    def from_parameters(cls, anchor_shape: Iterable[int], param_shapes: Iterable[Iterable[int]], attention: bool) -> BlockShape:
        """From the anchors' canonical shape (``[n, T, d]`` or ``[n, d]``) and the shapes of the
        block's parameter tensors."""
        dims = [int(v) for v in anchor_shape]
        if len(dims) not in (2, 3):
            raise ValueError(f"anchors must be [n, T, d] or [n, d], got shape {dims}")
        n, tokens, width = (dims[0], 1, dims[1]) if len(dims) == 2 else dims
        matmul = 0
        for shape in param_shapes:
            s = [int(v) for v in shape]
            if len(s) == 2:
                matmul += s[0] * s[1]
        return cls(tokens=tokens, width=width, matmul_params=matmul, attention=attention, n_anchors=n)


def forward_flops(shape: BlockShape) -> int:
    """F: matrix FLOPs of one block forward on one anchor (``2·T·P + 4·T²·d`` with attention)."""
    attn = 4 * shape.tokens**2 * shape.width if shape.attention else 0
    return 2 * shape.tokens * shape.matmul_params + attn


def construction_flops(shape: BlockShape, evaluations: int) -> int:
    """FLOPs of one (block, expert) construction: ``C_CONSTRUCT · evaluations · n · F``."""
    return C_CONSTRUCT * int(evaluations) * shape.n_anchors * forward_flops(shape)


def adaptation_flops(shape: BlockShape, pooled_anchors: int, epochs: int) -> int:
    """FLOPs of one block's adaptation on ``pooled_anchors`` N (all experts' anchors together):
    ``(3·epochs + 3) · N · F``."""
    return (C_ADAPT_EPOCH * int(epochs) + C_ADAPT_FIXED) * int(pooled_anchors) * forward_flops(shape)


def wudi_key_flops(m: int, n: int, experts: int, steps: int, form: str = "gram") -> int:
    """FLOPs of WUDI on one [m, n] key with ``experts`` non-zero task matrices (see the module docstring)."""
    if form == "gram":
        return 2 * experts * m * n * n + experts * min(2 * m * n * n, 4 * m * m * n) + steps * 2 * m * n * n
    if form == "direct":
        return steps * 4 * experts * m * m * n
    raise ValueError(f"unknown WUDI form {form!r}; expected 'gram' or 'direct'")


def wudi_flops(shapes: Iterable[tuple[int, int]], experts: int, steps: int, form: str = "gram") -> int:
    """FLOPs of a WUDI merge: :func:`wudi_key_flops` summed over the merged 2-D keys ``shapes``."""
    return sum(wudi_key_flops(m, n, experts, steps, form) for m, n in shapes)
