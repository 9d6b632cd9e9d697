"""The small benchmark helpers: job_times (stage sums of Snakemake benchmark files), and the pure
parts of bench_reduction (budget cosine, one-block replacement, Markdown) and bench_qkv_layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_qkv_layout  # noqa: E402
import bench_reduction  # noqa: E402
import job_times  # noqa: E402
from fda.anchors import ConstructLog, ConstructResult  # noqa: E402

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _tsv(path: Path, seconds: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds}\n")


def test_job_times_sums_by_suite_and_stage(tmp_path):
    _tsv(tmp_path / "mt/prepare_expert/a.tsv", 10.0, 100)
    _tsv(tmp_path / "mt/prepare_expert/b.tsv", 5.0, 300)
    _tsv(tmp_path / "mt/fda/seed0/construct-gauss.tsv", 7.0, 50)
    _tsv(tmp_path / "mt/construction-figures-gauss.tsv", 1.0, 20)  # a figure job, not construction
    _tsv(tmp_path / "mt/fda/seed0/adapt-ta-gauss.tsv", 3.0, 40)
    _tsv(tmp_path / "mt/eseed0/fda/seed0/select/ta-gauss/adapt-scale1.tsv", 4.0, 60)  # a grid run, not the fixed one
    _tsv(tmp_path / "mt/eseed0/select/ta/merge-point2.tsv", 2.0, 30)
    got = job_times.summarise(tmp_path)
    assert got[("mt", "experts (fine-tuning)")] == [2, 15.0, 300.0]
    assert got[("mt", "FDA construction")] == [1, 7.0, 50.0]
    assert got[("mt", "FDA adaptation")] == [1, 3.0, 40.0]
    assert got[("mt", "selection (validated rows)")] == [2, 6.0, 60.0]
    assert got[("mt", "cells, tables, figures")] == [1, 1.0, 20.0]
    assert "**32**" in job_times.markdown(got)


def _result(losses: list[float], mean_cos: list[float]) -> ConstructResult:
    steps = len(losses)
    cos = torch.tensor(mean_cos).unsqueeze(1).repeat(1, 2)  # two tensors, equal cosines
    log = ConstructLog(["w", "b"], torch.tensor(losses), cos, torch.zeros(steps, 2), [], [], [])
    return ConstructResult(0, 0, torch.zeros(1), torch.zeros(1), min(losses), 0, log)


def test_budget_cosine_is_the_cosine_at_the_best_step_within_the_budget():
    r = _result([5.0, 3.0, 4.0, 1.0], [0.1, 0.5, 0.4, 0.9])
    assert bench_reduction.budget_cosine(r, 0) == pytest.approx(0.1)  # the initial anchors
    assert bench_reduction.budget_cosine(r, 3) == pytest.approx(0.5)  # best of steps 0..2 is step 1
    assert bench_reduction.budget_cosine(r, 4) == pytest.approx(0.9)


def test_with_block_replaces_only_the_block_and_keeps_dtypes():
    state = {"a": torch.zeros(2, dtype=torch.float16), "b": torch.ones(2)}
    out = bench_reduction.with_block(state, {"a": torch.full((2,), 3.0)})
    assert out["a"].dtype == torch.float16 and out["a"].tolist() == [3.0, 3.0]
    assert out["b"] is state["b"] and state["a"].tolist() == [0.0, 0.0]


def test_reduction_markdown_lists_every_run_and_the_adaptation_settings():
    report = {"suite": "s", "block": 1, "anchor_init": "gauss", "steps": 4, "tasks": ["x", "y"],
              "init_accuracy": {"ta": 50.0}, "adapt_settings": {"ta": {"adapt_lr": 0.01}},
              "runs": [{"n_anchors": 8, "budget": 0, "cos": 0.1, "acc_ta": 51.0},
                       {"n_anchors": 8, "budget": 4, "cos": 0.7, "acc_ta": 53.25}]}
    md = bench_reduction.markdown(report)
    assert "| 8 | 0 | 0.100 | 51.0 |" in md and "| 8 | 4 | 0.700 | 53.2 |" in md
    assert '"adapt_lr": 0.01' in md


def test_qkv_layout_cosine_is_taken_at_the_kept_anchors():
    r = _result([5.0, 3.0, 4.0, 1.0], [0.1, 0.5, 0.4, 0.9])
    r.best_step = 3
    assert bench_qkv_layout.best_cosine(r) == pytest.approx(0.9)
    r.best_step = -1  # zero steps: the initial anchors
    assert bench_qkv_layout.best_cosine(r) == pytest.approx(0.1)


def test_qkv_layout_markdown_has_a_row_per_layout_and_a_column_per_init():
    entry = lambda acc, terms: {"construct_s": 12.0, "block_cos": [0.5, 0.25], "terms": terms, "accuracy": acc,  # noqa: E731
                                "settings": {"n_anchors": 4, "construct_steps": 3, "qkv_layout": "x"}}
    report = {"suite": "s", "anchor_init": "gauss", "tasks": ["x"], "recorded_layout": "split", "seed": 0,
              "init_accuracy": {"pretrained": 40.0, "ta": 50.0},
              "adapt_settings": {"pretrained": {}, "ta": {"adapt_lr": 0.01}},
              "layouts": {"split": entry({"pretrained": 41.0, "ta": 52.5}, 16),
                          "fused": entry({"pretrained": 42.0, "ta": 49.0}, 12)}}
    md = bench_qkv_layout.markdown(report)
    assert "| init (no FDA) | 40.0 | 50.0 |" in md
    assert "| FDA, `split` loss | 41.0 | 52.5 |" in md and "| FDA, `fused` loss | 42.0 | 49.0 |" in md
    assert "| `fused` | 12 | 0.500, 0.250 | 12 |" in md and '"adapt_lr": 0.01' in md
    assert "Construction: n_anchors 4, construct_steps 3." in md
