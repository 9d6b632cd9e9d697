"""GLUE metrics of the DARE/MergeLM protocol the FDA paper uses, with scikit-learn and scipy.

=====  =========================================  ==========================
task   headline metric (row name)                 extra rows
=====  =========================================  ==========================
cola   Matthews correlation (``matthews``)         ``accuracy``
sst2   accuracy (``accuracy``)
mrpc   mean of accuracy and F1 (``accf1``)         ``accuracy``, ``f1``
stsb   mean of Pearson and Spearman (``corr``)     ``pearson``, ``spearman``
qqp    mean of accuracy and F1 (``accf1``)         ``accuracy``, ``f1``
mnli   accuracy, validation_matched (``accuracy``)
qnli   accuracy (``accuracy``)
rte    accuracy (``accuracy``)
=====  =========================================  ==========================

Values are on a 0-1 scale (the paper reports 4 decimals on that scale). F1 is for the positive
class 1, as in GLUE.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GLUE_TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
HEADLINE = {"cola": "matthews", "sst2": "accuracy", "mrpc": "accf1", "stsb": "corr", "qqp": "accf1",
            "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy"}
NUM_LABELS = {"cola": 2, "sst2": 2, "mrpc": 2, "stsb": 1, "qqp": 2, "mnli": 3, "qnli": 2, "rte": 2}


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def f1(preds: Sequence[int], labels: Sequence[int]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0.0))


def matthews(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation; 0 when a confusion-matrix margin is empty (sklearn's convention)."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(np.asarray(preds, float), np.asarray(labels, float)).statistic)


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(preds, float), np.asarray(labels, float)).statistic)


def glue_metrics(task: str, preds: Sequence, labels: Sequence) -> dict[str, float]:
    """All metrics of ``task``, headline first (dict order). ``preds`` are class ids, or floats for
    ``stsb``. Raises ``ValueError`` for an unknown task or mismatched lengths."""
    if task not in HEADLINE:
        raise ValueError(f"unknown GLUE task '{task}'; valid: {GLUE_TASKS}")
    if len(preds) != len(labels) or len(labels) == 0:
        raise ValueError(f"{task}: {len(preds)} predictions for {len(labels)} labels (need equal, non-zero)")
    if task == "stsb":
        p, s = pearson(preds, labels), spearman(preds, labels)
        return {"corr": (p + s) / 2, "pearson": p, "spearman": s}
    preds = [int(x) for x in preds]
    labels = [int(x) for x in labels]
    if task in ("mrpc", "qqp"):
        a, f = accuracy(preds, labels), f1(preds, labels)
        return {"accf1": (a + f) / 2, "accuracy": a, "f1": f}
    if task == "cola":
        return {"matthews": matthews(preds, labels), "accuracy": accuracy(preds, labels)}
    return {"accuracy": accuracy(preds, labels)}


def metric_rows(task: str, preds: Sequence, labels: Sequence) -> list[dict]:
    """``glue_metrics`` as result rows ``{"task", "metric", "value"}``, headline first."""
    return [{"task": task, "metric": k, "value": v} for k, v in glue_metrics(task, preds, labels).items()]
