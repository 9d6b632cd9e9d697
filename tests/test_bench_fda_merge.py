"""Smoke test of benchmarks/bench_fda_merge.py: tiny shapes, a few steps, on the CPU.

Checks the JSON's phases and times, and recomputes the extrapolation from the measured numbers it
reports (an independent re-statement of the formulas in the script's docstring and Markdown).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fda_merge.py"
STEPS, EPOCHS, EXPERTS = 2, 2, 2


def load_script() -> ModuleType:
    """The benchmark as a module (benchmarks/ is not a package)."""
    if "bench_fda_merge" in sys.modules:
        return sys.modules["bench_fda_merge"]
    spec = importlib.util.spec_from_file_location("bench_fda_merge", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fda_merge"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """(JSON, Markdown) of one tiny run: ViT-B/32 and RoBERTa-base shapes, first block timed of 2."""
    out = tmp_path_factory.mktemp("bench") / "merge.json"
    bench = load_script()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = bench.main(["--tiny", "--models", "vitb32", "robertab", "--experts", str(EXPERTS), "--init", "ta",
                         "--construct-steps", str(STEPS), "--adapt-epochs", str(EPOCHS), "--blocks", "1",
                         "--device", "cpu", "--threads", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    return json.loads(out.read_text()), stdout.getvalue()


def test_phases_and_times(report: tuple[dict, str]) -> None:
    data, _ = report
    assert [r["model"] for r in data["models"]] == ["vitb32", "robertab"]
    for r in data["models"]:
        assert (r["n_blocks"], r["blocks_timed"], r["experts"]) == (2, 1, EXPERTS)
        assert r["settings"]["construct_steps"] == STEPS and r["settings"]["adapt_epochs"] == EPOCHS
        assert r["anchors"] == ([8, 10, 64] if r["family"] == "clip-vision" else [8, 5, 64])
        m = r["measured"]
        for key in ("construction_s", "adaptation_s", "assembly_s", "total_s", "construct_s_per_block", "adapt_s_per_block",
                    "construct_fixed_s_per_block", "adapt_fixed_s_per_block"):  # fmt: skip
            assert m[key] > 0, key
        assert m["construct_s_per_step"] >= 0 and m["adapt_s_per_epoch"] >= 0  # floored differences
        assert set(m["peak_mem_mb"]) == {"construction", "adaptation", "assembly"}
        assert all(v > 0 for v in m["peak_mem_mb"].values())
        assert m["total_s"] == pytest.approx(m["construction_s"] + m["adaptation_s"] + m["assembly_s"])
        (block,) = r["blocks"]
        assert block["construct_s"] == pytest.approx(m["construction_s"]) and block["adapt_s"] == pytest.approx(m["adaptation_s"])


def test_extrapolation_arithmetic(report: tuple[dict, str]) -> None:
    data, _ = report
    for r in data["models"]:
        m, p, x = r["measured"], r["paper"], r["extrapolated"]
        # the paper's counts, as FDAConfig.for_family gives them
        assert (p["experts"], p["n_anchors"], p["construct_steps"]) == (8, 64, 1200)
        assert p["adapt_epochs"] == ({"ta": 100, "pretrained": 100, "tsvm": 100, "wudi": 100} if r["family"] == "clip-vision"
                                     else {"ta": 100, "pretrained": 125, "tsvm": 100, "wudi": 100})  # fmt: skip
        # the rates: (seconds - fixed seconds) / steps, per block
        assert m["construct_s_per_step"] == pytest.approx(max(m["construct_s_per_block"] - m["construct_fixed_s_per_block"], 0) / STEPS)
        assert m["adapt_s_per_epoch"] == pytest.approx(max(m["adapt_s_per_block"] - m["adapt_fixed_s_per_block"], 0) / EPOCHS)
        scale = (8 * 64) / (EXPERTS * 8)  # paper experts x anchors over the run's (tiny: 8 anchors)
        assert x["scale"] == pytest.approx(scale)
        blocks = r["n_blocks"]
        construct = blocks * scale * (m["construct_fixed_s_per_block"] + 1200 * m["construct_s_per_step"])
        adapt = {i: blocks * scale * (m["adapt_fixed_s_per_block"] + e * m["adapt_s_per_epoch"]) for i, e in p["adapt_epochs"].items()}
        merge = x["paper_merge"]
        assert merge["construction_s"] == pytest.approx(construct)
        assert merge["adaptation_s"] == pytest.approx(adapt["ta"])
        assert merge["total_s"] == pytest.approx(construct + adapt["ta"] + m["assembly_s"])
        suite = x["paper_suite"]  # 2 anchor inits x 4 merge inits; anchors shared by the merge inits
        assert suite["merges"] == 8
        assert suite["construction_s"] == pytest.approx(2 * construct)
        assert suite["adaptation_s"] == pytest.approx(2 * sum(adapt.values()))
        assert suite["total_s"] == pytest.approx(2 * construct + 2 * sum(adapt.values()) + 8 * m["assembly_s"])
        run = x["run_all_blocks"]  # 1 block timed of 2
        assert run["total_s"] == pytest.approx(blocks * (m["construct_s_per_block"] + m["adapt_s_per_block"]) + m["assembly_s"])
        assert all(math.isfinite(v) and v > 0 for v in (merge["total_s"], suite["total_s"], run["total_s"]))


def test_markdown_labels(report: tuple[dict, str]) -> None:
    _, md = report
    assert "**Measured**" in md and "**Extrapolated** from the measured rates (not measured)" in md
    assert "ViT-B/32 (tiny)" in md and "RoBERTa-base (tiny)" in md
    assert "1 of 2" in md  # the timed blocks are stated


def test_blocks_beyond_the_model_are_refused() -> None:
    with pytest.raises(SystemExit, match="has 2 blocks"):
        load_script().main(["--tiny", "--models", "robertab", "--blocks", "3", "--construct-steps", "1", "--adapt-epochs", "1",
                            "--device", "cpu"])  # fmt: skip
