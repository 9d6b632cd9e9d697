"""Input validation and task-vector access shared by all methods.

``validate(pretrained, experts, names)`` checks everything up front (keys, shapes, dtypes,
NaN/inf) so a bad expert fails in seconds rather than after a 30-minute SVD sweep. Task vectors
are then computed **per key** on demand (``MergeInputs.task_vectors``), never for the whole model
at once: peak memory stays at the inputs plus one key's working set plus the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .errors import MergeInputError
from .finite import check_finite

StateDict = dict[str, torch.Tensor]

_ENCODER_FIX = (
    "pass the encoder only: the keys the experts share with the pretrained model "
    "(heads are kept apart and never merged), e.g. {k: expert[k] for k in pretrained}"
)


@dataclass(frozen=True)
class MergeInputs:
    """Validated inputs of one merge.

    ``float_keys``: keys of floating-point tensors (merged); ``other_keys``: integer/bool buffers
    (copied from ``pretrained``, never merged).
    """

    pretrained: Mapping[str, torch.Tensor]
    experts: Sequence[Mapping[str, torch.Tensor]]
    names: Sequence[str] | None
    float_keys: list[str]
    other_keys: list[str]

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def label(self, i: int) -> str:
        return expert_label(i, self.names)

    def task_vectors(self, key: str, dtype: torch.dtype, device: torch.device | str | None = None) -> "TaskVectors":
        """τ_i[key] = θ_i[key] − θ0[key] for every expert, in ``dtype`` on ``device``, computed on access."""
        return TaskVectors(self, key, dtype, device if device is not None else self.pretrained[key].device)


class TaskVectors(Sequence):
    """The T task vectors of one key, each computed when indexed or iterated (nothing cached).

    Methods that can work one expert at a time (sums, per-task SVDs, Gram accumulation) iterate and
    hold one τ_i at a time; the others take ``list(taus)``. Shapes: each item is [*shape of the key].
    """

    def __init__(self, inputs: MergeInputs, key: str, dtype: torch.dtype, device: torch.device | str):
        self._inputs, self.key, self.dtype, self.device = inputs, key, dtype, device
        self._base = inputs.pretrained[key].to(device=device, dtype=dtype)

    @property
    def shape(self) -> torch.Size:
        return self._base.shape

    def __len__(self) -> int:
        return len(self._inputs.experts)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._inputs.experts[i][self.key].to(device=self.device, dtype=self.dtype) - self._base

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def expert_label(i: int, names: Sequence[str] | None) -> str:
    """'expert 2' or "expert 2 ('mnist')" for messages."""
    return f"expert {i} ({names[i]!r})" if names is not None and i < len(names) else f"expert {i}"


def validate(pretrained: object, experts: object, names: object = None) -> MergeInputs:
    """Check the inputs of ``merge``; raise ``MergeInputError`` naming expert and key on any problem."""
    if not isinstance(pretrained, Mapping):
        raise MergeInputError(f"pretrained must be a state dict (mapping str -> tensor), got {type(pretrained).__name__}")
    if len(pretrained) == 0:
        raise MergeInputError("pretrained state dict is empty: nothing to merge")
    if isinstance(experts, Mapping):
        raise MergeInputError("experts must be a list of state dicts, got a single state dict: wrap it as [expert]")
    if not isinstance(experts, Sequence) or isinstance(experts, (str, bytes)):
        raise MergeInputError(f"experts must be a list of state dicts, got {type(experts).__name__}")
    if len(experts) < 1:
        raise MergeInputError("at least one expert is needed, got an empty list: pass the fine-tuned state dicts to merge")
    if names is not None:
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise MergeInputError(f"names must be a list of str (one per expert), got {names!r}")
        if len(names) != len(experts):
            raise MergeInputError(f"names has {len(names)} entries but there are {len(experts)} experts: give one name per expert")
    check_pretrained(pretrained)
    float_keys = [k for k, t in pretrained.items() if t.is_floating_point()]
    other_keys = [k for k, t in pretrained.items() if not t.is_floating_point()]
    for i, expert in enumerate(experts):
        check_expert(expert_label(i, names), expert, pretrained)
    return MergeInputs(pretrained, experts, names, float_keys, other_keys)


def check_pretrained(pretrained: Mapping[str, torch.Tensor], who: str = "pretrained model") -> None:
    """Every value of ``pretrained`` is a tensor, and every float tensor is finite (``MergeInputError``).
    Each tensor is read once (``pretrained`` may be a lazy mapping)."""
    for key, t in pretrained.items():
        if not isinstance(t, torch.Tensor):
            raise MergeInputError(f"{who}: tensor {key!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.is_floating_point():
            check_finite(who, key, t)


def check_expert(who: str, expert: object, pretrained: Mapping[str, torch.Tensor]) -> None:
    """``expert`` has exactly the keys, shapes and dtypes of ``pretrained``, and finite float values.

    ``who`` names it in messages (``expert_label(i, names)``, or a file). Every tensor is read once
    (experts may be lazy mappings). Raises ``MergeInputError`` naming ``who``, the key and the fix.
    """
    if not isinstance(expert, Mapping):
        raise MergeInputError(f"{who} is a {type(expert).__name__}, not a state dict (mapping str -> tensor)")
    missing = [k for k in pretrained if k not in expert]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MergeInputError(
            f"{who} has no tensor {missing[0]!r}{more} that the pretrained model has: experts must have the "
            f"pretrained model's architecture; check that the right checkpoint was loaded and that key prefixes match"
        )
    extra = [k for k in expert if k not in pretrained]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise MergeInputError(f"{who} has tensor {extra[0]!r}{more} that the pretrained model lacks: {_ENCODER_FIX}")
    for key, base in pretrained.items():
        t = expert[key]  # read once: experts may be lazy (each access loads or generates the tensor)
        if not isinstance(t, torch.Tensor):
            raise MergeInputError(f"{who}: tensor {key!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.shape != base.shape:
            raise MergeInputError(
                f"{who}: tensor {key!r} has shape {tuple(t.shape)} but the pretrained model has {tuple(base.shape)}: "
                f"experts must be fine-tunes of the same architecture (a resized vocabulary or head must be cut "
                f"back or excluded before merging)"
            )
        if t.dtype != base.dtype:
            raise MergeInputError(
                f"{who}: tensor {key!r} is {t.dtype} but the pretrained model's is {base.dtype}: load all "
                f"checkpoints in one dtype (e.g. expert = {{k: v.to(pretrained[k].dtype) for k, v in expert.items()}})"
            )
        if t.is_floating_point():
            check_finite(who, key, t)


_check_finite = check_finite  # the former private name
