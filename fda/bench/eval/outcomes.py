"""Per-example outcomes of an evaluation: what each test example got, kept beside the scores so
that intervals and paired tests can be recomputed without evaluating again.

An evaluation's headline row may carry ``"outcome": Outcome(...)``: the model's prediction and
the reference for every test example of that task (class ids, regression scores, or 1/0 for
pass/fail), in the order of the suite's test split, which is the same for every evaluated model
of a suite and data seed. That shared order is what makes comparisons paired.

Files are NumPy ``.npz`` archives (no pickles: loaded with ``allow_pickle=False``), one entry per
(method, init, anchor init, expert seed, seed, task) and field::

    "ta|||1|0|tech|predictions"   int64 [n]     "ta|||1|0|tech|references"   int64 [n]
    "ta|||1|0|tech|metric"        str   []      (the headline metric's name, e.g. "accuracy")

Files written before expert seeds name five fields (``"ta|||0|tech|predictions"``): they read as
expert seed 0.

A row of another protocol than ``fixed`` (the config's values; docs/selection.md) names it after the
task: ``"ta|||0|0|tech|validated|predictions"``. Fixed rows keep the names above, so their files are
byte-identical to those written before protocols, and every name without one reads as ``fixed``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fda.io.atomic import atomic_path

#: (method, init, anchor_init, expert_seed, seed, task, protocol); a key without the protocol (six
#: parts, as before protocols existed) is a ``fixed`` row's (:func:`full_key`)
OutcomeKey = tuple[str, str, str, int, int, str, str]
#: the position of the task in an :data:`OutcomeKey`
TASK = 5
#: the position of the protocol in an :data:`OutcomeKey`
PROTOCOL = 6
#: the protocol of keys and files that name none
FIXED = "fixed"
_FIELDS = ("predictions", "references", "metric")
_SEP = "|"


def full_key(key: tuple) -> OutcomeKey:
    """``key`` with its protocol: a six-part key (from before protocols) is a ``fixed`` row's."""
    if len(key) == 6:
        return (*key, FIXED)  # type: ignore[return-value]
    if len(key) != 7:
        raise OutcomeError(f"outcome key {key!r} must have 6 or 7 parts (method, init, anchor_init, expert_seed, "
                           "seed, task[, protocol])")
    return tuple(key)  # type: ignore[return-value]


class OutcomeError(ValueError):
    """An outcomes file is missing, malformed or disagrees with its evaluation."""


@dataclass(frozen=True, eq=False)
class Outcome:
    """One task's per-example results. ``predictions`` and ``references``: [n] arrays in the test
    split's order; ``metric``: the headline metric they give (a name in :data:`METRICS`)."""

    predictions: np.ndarray
    references: np.ndarray
    metric: str

    def __post_init__(self) -> None:
        p, r = np.asarray(self.predictions), np.asarray(self.references)
        if p.ndim != 1 or p.shape != r.shape or not len(p):
            raise OutcomeError(f"outcome for {self.metric!r}: predictions {p.shape} and references {r.shape} "
                               "must be equal-length, non-empty 1-D arrays")
        if p.dtype.kind == "f" and not np.isfinite(p).all():
            raise OutcomeError(f"outcome for {self.metric!r}: non-finite predictions")
        if self.metric not in METRICS:
            raise OutcomeError(f"outcome metric {self.metric!r} has no resampling rule; known: {sorted(METRICS)}")
        object.__setattr__(self, "predictions", p)
        object.__setattr__(self, "references", r)

    def __eq__(self, other: object) -> bool:
        """Equal when the metric and every prediction and reference are (arrays compared whole)."""
        if not isinstance(other, Outcome):
            return NotImplemented
        return (self.metric == other.metric and np.array_equal(self.predictions, other.predictions)
                and np.array_equal(self.references, other.references))

    __hash__ = object.__hash__

    def score(self, index: np.ndarray | None = None) -> float:
        """The metric on all examples, or on the examples at ``index`` ([m] ints, repeats allowed)."""
        p, r = self.predictions, self.references
        if index is not None:
            p, r = p[index], r[index]
        return METRICS[self.metric](p, r)

    def resampled(self, index: np.ndarray) -> np.ndarray:
        """The metric on every row of ``index`` ([B, n] example indices): [B] values."""
        if self.metric in DECOMPOSABLE:  # a mean of per-example values: one vectorised gather
            return (self.predictions == self.references)[index].mean(axis=1)  # bool gather: 1 byte per draw
        return np.array([self.score(row) for row in index])


def _accuracy(p: np.ndarray, r: np.ndarray) -> float:
    return float(np.mean(p == r))


def _f1macro(p: np.ndarray, r: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(r, p, average="macro", labels=np.unique(r), zero_division=0))


def _glue(name: str):
    def fn(p: np.ndarray, r: np.ndarray) -> float:
        from fda.bench.eval.glue_metrics import accuracy, f1, matthews, pearson, spearman

        if name == "matthews":
            return matthews(p, r)
        if name == "accf1":
            return (accuracy(p, r) + f1(p, r)) / 2
        if name == "corr":
            if np.ptp(p) == 0 or np.ptp(r) == 0:  # a constant resample has no correlation
                return 0.0
            return (pearson(p, r) + spearman(p, r)) / 2
        raise KeyError(name)

    return fn


#: headline metrics a resample can recompute: name -> fn(predictions [m], references [m]) -> float
METRICS = {"accuracy": _accuracy, "pass@1": _accuracy, "f1macro": _f1macro,
           "matthews": _glue("matthews"), "accf1": _glue("accf1"), "corr": _glue("corr")}
#: metrics that are the mean of a per-example 1/0 (prediction == reference)
DECOMPOSABLE = {"accuracy", "pass@1"}


def _name(key: tuple, field: str) -> str:
    method, init, anchor_init, expert_seed, seed, task, protocol = full_key(key)
    for part in (method, init, anchor_init, task, protocol):
        if _SEP in part:
            raise OutcomeError(f"name {part!r} contains {_SEP!r}")
    extra = [] if protocol == FIXED else [protocol]  # fixed rows: the names of before protocols
    return _SEP.join([method, init, anchor_init, str(int(expert_seed)), str(int(seed)), task, *extra, field])


def _parse_name(name: str) -> tuple[OutcomeKey, str] | None:
    """``(key, field)`` of an entry name; a five-field name from before expert seeds is expert
    seed 0, a name without a protocol is ``fixed``. None when the name is not an outcome entry."""
    fields = name.split(_SEP)
    if len(fields) == 6:  # written before expert seeds: method|init|anchor_init|seed|task|field
        fields = [*fields[:3], "0", *fields[3:]]
    if len(fields) == 7:  # no protocol: fixed
        fields = [*fields[:6], FIXED, fields[6]]
    if len(fields) != 8 or fields[7] not in _FIELDS or not all(f.lstrip("-").isdigit() for f in fields[3:5]):
        return None
    method, init, anchor_init, expert_seed, seed, task, protocol, field = fields
    return (method, init, anchor_init, int(expert_seed), int(seed), task, protocol), field


def write_outcomes(outcomes: Mapping[OutcomeKey, Outcome], path: str | os.PathLike) -> Path:
    """Write ``outcomes`` to ``path`` (.npz, compressed, atomic); keys of six parts are ``fixed`` rows'."""
    arrays: dict[str, np.ndarray] = {}
    for key, o in outcomes.items():
        arrays[_name(key, "predictions")] = o.predictions
        arrays[_name(key, "references")] = o.references
        arrays[_name(key, "metric")] = np.array(o.metric)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return Path(path)


def read_outcomes(path: str | os.PathLike) -> dict[OutcomeKey, Outcome]:
    """The outcomes stored in ``path``; :class:`OutcomeError` naming the file if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise OutcomeError(f"{path}: not a readable outcomes file ({e}); rebuild it by re-running its evaluation") from e
    parts: dict[OutcomeKey, dict[str, np.ndarray]] = {}
    for name, arr in arrays.items():
        parsed = _parse_name(name)
        if parsed is None:
            raise OutcomeError(f"{path}: unexpected entry {name!r}")
        key, field = parsed
        parts.setdefault(key, {})[field] = arr
    out = {}
    for key, f in parts.items():
        if set(f) != set(_FIELDS):
            raise OutcomeError(f"{path}: {key} lacks {sorted(set(_FIELDS) - set(f))}")
        try:
            out[key] = Outcome(f["predictions"], f["references"], str(f["metric"]))
        except OutcomeError as e:
            raise OutcomeError(f"{path}: {key}: {e}") from e
    return out


def merge_outcomes(paths: Iterable[str | os.PathLike]) -> dict[OutcomeKey, Outcome]:
    """All outcomes of several files (seven-part keys); a key stored twice is an error."""
    out: dict[OutcomeKey, Outcome] = {}
    for p in paths:
        for key, o in read_outcomes(p).items():
            if key in out:
                raise OutcomeError(f"{p}: outcomes for {key} are already in another file")
            out[key] = o
    return out


def pop_outcomes(rows: list[dict], *, method: str, init: str = "", anchor_init: str = "",
                 seed: int = 0, expert_seed: int = 0, protocol: str = FIXED) -> dict[OutcomeKey, Outcome]:
    """Take the ``"outcome"`` entries out of evaluation ``rows`` (in place), keyed by what was
    evaluated, under which protocol, and each row's task."""
    out: dict[OutcomeKey, Outcome] = {}
    for r in rows:
        o = r.pop("outcome", None)
        if o is not None:
            out[(method, init, anchor_init, int(expert_seed), int(seed), str(r["task"]), protocol)] = o
    return out


def write_evaluation_outcomes(outcomes: Mapping[OutcomeKey, Outcome], tasks: Iterable[str], path: str | os.PathLike,
                              suite: str) -> Path:
    """Write an evaluation's outcomes, refusing if a task has none (a suite without per-example
    results cannot give intervals; it should say so rather than write a partial file)."""
    have = {k[TASK] for k in outcomes}
    missing = [t for t in tasks if t not in have]
    if missing:
        raise OutcomeError(f"suite '{suite}' returned no per-example outcomes for {missing}; drop --outcomes "
                           "or give its evaluate() headline rows an 'outcome'")
    return write_outcomes(outcomes, path)


def outcomes_path(csv_path: str | os.PathLike) -> Path:
    """Where the outcomes of the evaluation or cell at ``csv_path`` live: the same name, ``.npz``."""
    return Path(csv_path).with_suffix(".npz")
