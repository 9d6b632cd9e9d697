"""Cost beside accuracy: the FLOPs formulas (hand counts, and against torch's FLOP counter on tiny
blocks), the benchmark-file grammar (against the workflow's rules), the jobs' resources line, and
per-job / per-row costs, the cost table and the figure on synthetic benchmark files and logs."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from fda.bench.report import cost, cost_jobs, flops, results
from fda.bench.usage import parse_usage, process_usage, usage_line

ROOT = Path(__file__).resolve().parents[2]
BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


# -------------------------------------------------------------------------------- FLOPs by hand


def test_forward_flops_by_hand():
    # T=2 tokens of width 3, 2-D weights with 10 elements: 2·T·P = 40 matmul, 4·T²·d = 48 attention
    att = flops.BlockShape(tokens=2, width=3, matmul_params=10, attention=True, n_anchors=4)
    assert flops.forward_flops(att) == 40 + 48
    mlp = flops.BlockShape(tokens=1, width=3, matmul_params=10, attention=False, n_anchors=4)
    assert flops.forward_flops(mlp) == 20


def test_construction_and_adaptation_flops_by_hand():
    shape = flops.BlockShape(tokens=2, width=3, matmul_params=10, attention=True, n_anchors=4)
    # 9 block forwards per evaluation, 5 evaluations, 4 anchors, 88 FLOPs each
    assert flops.construction_flops(shape, 5) == 9 * 5 * 4 * 88
    # (3 per epoch · 2 epochs + 3) forwards on 12 pooled anchors
    assert flops.adaptation_flops(shape, 12, 2) == 9 * 12 * 88
    assert flops.construction_flops(shape, 0) == 0


def test_wudi_flops_by_hand():
    # m=2, n=3, 2 experts, 5 steps: A 2·2·2·9 = 72, c0 2·min(36, 48) = 72, steps 5·2·2·9 = 180
    assert flops.wudi_key_flops(2, 3, 2, 5) == 72 + 72 + 180
    # a wide matrix (2m < n) takes the cheaper association for c0: min(2·1·16, 4·1·4) = 16
    assert flops.wudi_key_flops(1, 4, 1, 0) == 2 * 16 + 16
    assert flops.wudi_key_flops(2, 3, 2, 5, form="direct") == 5 * 4 * 2 * 4 * 3
    assert flops.wudi_flops([(2, 3), (1, 4)], 2, 5) == flops.wudi_key_flops(2, 3, 2, 5) + flops.wudi_key_flops(1, 4, 2, 5)
    with pytest.raises(ValueError, match="form"):
        flops.wudi_key_flops(1, 1, 1, 1, form="other")


def test_block_shape_from_parameters_and_record():
    shape = flops.BlockShape.from_parameters([4, 2, 3], [(6, 3), (6,), (3, 6), (3,)], attention=True)
    assert shape == flops.BlockShape(tokens=2, width=3, matmul_params=36, attention=True, n_anchors=4)
    assert flops.BlockShape.from_record(json.loads(json.dumps(shape.to_record()))) == shape
    assert flops.BlockShape.from_parameters([8, 3], [(5, 3)], attention=False).tokens == 1  # [n, d] anchors
    with pytest.raises(ValueError, match="anchors"):
        flops.BlockShape.from_parameters([3], [], attention=False)


# -------------------------------------------------------------------------------- FLOPs vs a counter


def _tiny(kind: str):
    import transformers

    if kind == "bert":
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                      vocab_size=50, max_position_embeddings=16)
        return transformers.BertModel(cfg).eval(), "bert", {"n_anchors": 8, "tokens": 6}
    if kind == "clip":
        cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                            image_size=12, patch_size=4)
        return transformers.CLIPVisionModel(cfg).eval(), "clip-vision", {"n_anchors": 8}
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=50, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg).eval(), "llama", {"n_anchors": 16}


@pytest.mark.parametrize("kind, attention, high", [("bert", True, 1.1), ("clip", True, 1.1), ("llama", False, 1.2)])
def test_estimate_matches_torch_flop_counter(kind, attention, high):
    """The analytic estimate against the matrix FLOPs torch counts for one real construction and
    adaptation (the block shape from the construction log's record, as the jobs write it)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import fda
    from fda.bench.cli.common import block_shape_record

    torch.manual_seed(0)
    model, family, sizes = _tiny(kind)
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    expert = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in pre.items()}
    cfg = fda.FDAConfig.for_family(family, construct_steps=3, adapt_epochs=2, adapt_batch=4, progress=False, **sizes)
    with FlopCounterMode(display=False) as counter:
        (res,) = fda.construct_block(model, pre, [expert], 0, "gauss", cfg)
    shape = flops.BlockShape.from_record(block_shape_record(model, 0, cfg.part, res.anchors))
    assert shape.attention is attention and shape.n_anchors == sizes["n_anchors"]
    assert 0.95 <= flops.construction_flops(shape, 3) / counter.get_total_flops() <= high
    with FlopCounterMode(display=False) as counter:
        fda.adapt_block(model, pre, [expert], 0, [res.anchors], "pretrained", None, cfg)
    assert 0.95 <= flops.adaptation_flops(shape, shape.n_anchors, 2) / counter.get_total_flops() <= high


def test_wudi_estimate_matches_torch_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from baselines.wudi import wudi_solve

    torch.manual_seed(0)
    for m, n in ((6, 4), (3, 8)):  # both associations of c0
        taus = [torch.randn(m, n) for _ in range(3)]
        with FlopCounterMode(display=False) as counter:
            wudi_solve(taus, steps=4, lr=1e-3)
        assert counter.get_total_flops() == flops.wudi_key_flops(m, n, 3, 4)


def test_wudi_merge_flops_reads_the_merged_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 5)}, tmp_path / "m.safetensors")
    assert cost.safetensors_shapes(tmp_path / "m.safetensors") == {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 5)}
    got = cost.wudi_merge_flops(tmp_path / "m.safetensors", {"steps": 7, "coverage": "all"}, experts=3)
    assert got == flops.wudi_key_flops(4, 3, 3, 7) + flops.wudi_key_flops(2, 5, 3, 7)
    excluded = cost.wudi_merge_flops(tmp_path / "m.safetensors", {"steps": 7, "exclude": ["^b\\."]}, experts=3)
    assert excluded == flops.wudi_key_flops(4, 3, 3, 7)


# -------------------------------------------------------------------------------- file names


def _rule_files(kind: str) -> dict[str, str]:
    """rule name -> its ``log:`` or ``benchmark:`` path, from workflow/rules/*.smk."""
    out = {}
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n\s*rule(?=[ :])", smk.read_text())[1:]:
            name = re.match(r"\s*(\w*)\s*:", block)
            named = re.search(r'name:\s*\n\s*f"([^"]+)"', block)
            path = re.search(rf'\n\s*{kind}:\s*\n\s*"([^"]+)"', block)
            if path:
                out[(named.group(1) if named else name.group(1)).replace("{_suite}", "S")] = path.group(1)
    return out


SAMPLE = {"suite": "vitb16", "baseline": "wudi", "reference": "individual", "method": "ta", "eseed": "2", "seed": "1",
          "anchorinit": "gauss", "init": "tsvm", "block": "3", "task": "STS-B", "selected": "ties", "point": "2", "scale": "0"}


def test_benchmark_names_of_every_rule_parse_to_their_job():
    """The grammar of cost_jobs against the rules' benchmark directives: each counted rule's file
    parses to its stage and wildcards, the others to None, and each job's log is log_of(benchmark)."""
    benches, logs = _rule_files("benchmark"), _rule_files("log")
    stages = {"merge_baseline": "merge", "llm_merge": "merge", "fda_construct": "construct", "fda_construct_S": "construct",
              "llm_construct": "construct", "fda_adapt_block": "adapt", "fda_adapt": "adapt", "llm_adapt": "adapt",
              "fda_assemble": "adapt", "llm_assemble": "adapt", "evaluate_reference": "evaluate",
              "evaluate_baseline": "evaluate", "evaluate_fda": "evaluate", "llm_evaluate_reference": "evaluate",
              "llm_evaluate_baseline": "evaluate", "llm_evaluate_fda": "evaluate"}
    assert set(stages) <= set(benches), sorted(set(stages) - set(benches))
    for rule, pattern in benches.items():
        path = pattern.format(**SAMPLE)
        ref = cost_jobs.parse_benchmark_path(path)
        if rule not in stages:
            assert ref is None, (rule, path)
            continue
        assert ref is not None and ref.stage == stages[rule] and ref.suite == "vitb16", (rule, path, ref)
        assert "{eseed}" in pattern and ref.expert_seed == 2, (rule, pattern)  # every counted job depends on the experts
        if "{seed}" in pattern:
            assert ref.seed == 1 and ref.anchor_init == "gauss"
        if "{block}" in pattern:
            assert ref.block == 3
        if "{task}" in pattern:
            assert ref.task == "STS-B"
        if "{init}" in pattern:
            assert ref.init == "tsvm"
        assert cost_jobs.log_of(path) == Path(logs[rule].format(**SAMPLE)), rule


@pytest.mark.parametrize("construct, adapt", [("coarse", "coarse"), ("fine", "fine"), ("none", "fine")])
def test_planned_files_parse_back_to_the_plan(construct, adapt):
    plan = cost_jobs.CostPlan(baselines=("ta", "wudi"), methods=("pretrained", "individual", "ta", "wudi"), seeds=(0, 2),
                              inits=("pretrained", "wudi"), anchor_inits=("gauss",), blocks=2, tasks=("a", "STS-B"),
                              construct=construct, adapt=adapt)
    assert cost_jobs.CostPlan.from_json(plan.to_json()) == plan
    refs = [cost_jobs.parse_benchmark_path(f"logs/benchmarks/s/{p}") for p in cost_jobs.benchmark_files(plan)]
    assert all(r is not None for r in refs)
    construct_jobs = [r for r in refs if r.stage == "construct"]
    assert len(construct_jobs) == {"coarse": 2, "fine": 2 * 2 * 2, "none": 0}[construct]
    assert {r.task for r in construct_jobs} <= {"", "a", "STS-B"}
    assert len([r for r in refs if r.stage == "adapt"]) == 2 * 2 * (1 if adapt == "coarse" else 3)
    assert len([r for r in refs if r.stage == "evaluate"]) == 4 + 2 * 2
    logs = cost_jobs.anchor_log_files(plan)
    assert len(logs) == (0 if construct == "none" else 2 * 2 * 2)
    # the same names as the workflow's ANCHOR_LOG pattern
    pattern = re.search(r'ANCHOR_LOG = "([^"]+)"', (ROOT / "workflow/rules/common.smk").read_text()).group(1)
    if logs:
        assert f"work/s/{logs[0]}" == pattern.format(suite="s", eseed=0, seed=0, anchorinit="gauss", block=0, task="a")
    with pytest.raises(ValueError, match="construct"):
        cost_jobs.CostPlan(construct="sometimes")


# -------------------------------------------------------------------------------- resources line


def test_usage_line_round_trips_and_the_last_line_wins():
    line = usage_line({"cpu_s": 1.5, "max_rss_mb": 10.0, "gpu_peak_mb": None})
    text = f"[fda-bench] merge ...\n{usage_line({'cpu_s': 9.0, 'max_rss_mb': 1.0, 'gpu_peak_mb': 2.0})}\nnoise\n{line}\n"
    assert parse_usage(text) == {"cpu_s": 1.5, "max_rss_mb": 10.0, "gpu_peak_mb": None}
    assert parse_usage("no line here") is None
    now = process_usage()
    assert now["cpu_s"] > 0 and now["max_rss_mb"] > 10 and set(now) == {"cpu_s", "max_rss_mb", "gpu_peak_mb"}


def test_gpu_peak_is_torch_allocation_summed_over_devices(monkeypatch):
    """Without a GPU here: a stand-in ``torch`` module (the function never imports torch itself)."""
    import sys
    import types

    from fda.bench import usage

    cuda = types.SimpleNamespace(is_available=lambda: True, is_initialized=lambda: True, device_count=lambda: 2,
                                 max_memory_allocated=lambda d: (d + 1) * 2**20)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert usage.gpu_peak_mb() == 3.0 and usage.process_usage()["gpu_peak_mb"] == 3.0
    cuda.is_initialized = lambda: False  # CUDA never used by this process
    assert usage.gpu_peak_mb() is None
    monkeypatch.delitem(sys.modules, "torch")
    assert usage.gpu_peak_mb() is None


def test_measured_commands_end_with_the_resources_line(capsys):
    from fda.bench.cli import MEASURED_COMMANDS, run

    assert run(argparse.Namespace(command="merge", func=lambda a: 0)) == 0
    assert parse_usage(capsys.readouterr().err) is not None
    assert run(argparse.Namespace(command="cell", func=lambda a: 0)) == 0  # not a counted job
    assert parse_usage(capsys.readouterr().err) is None
    assert run(argparse.Namespace(command="merge", func=lambda a: 2)) == 2  # a failed job prints none
    assert parse_usage(capsys.readouterr().err) is None
    assert {"merge", "fda-construct", "fda-adapt", "llm-construct"} <= MEASURED_COMMANDS


# -------------------------------------------------------------------------------- synthetic workflow outputs

SUITE = "minitext"
TASKS = ["a", "b"]
SHAPE = flops.BlockShape(tokens=2, width=3, matmul_params=10, attention=True, n_anchors=4)
EPOCHS = {"pretrained": 2, "ta": 1}
WUDI_FLOPS = 1000.0


def _bench(path: Path, wall: float, cpu: float, rss: float | str, rows: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCH_HEADER + "".join(f"{wall}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n" for _ in range(rows)))


def _job_log(bench: Path, usage: dict | None) -> None:
    log = cost_jobs.log_of(bench)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("[fda-bench] working\n" + (usage_line(usage) + "\n" if usage else ""))


@pytest.fixture
def run_dir(tmp_path) -> tuple[Path, cost_jobs.CostPlan]:
    """Benchmark files, job logs and construction logs of a coarse run: baselines ta, wudi; FDA from
    pretrained and ta with gauss anchors, expert seed 0, seeds 0 and 1, 2 blocks, experts a and b."""
    plan = cost_jobs.CostPlan(baselines=("ta", "wudi"), methods=("pretrained", "individual", "ta", "wudi"), seeds=(0, 1),
                              inits=("pretrained", "ta"), anchor_inits=("gauss",), blocks=2, tasks=tuple(TASKS))
    _write_run(tmp_path, plan, 0)
    return tmp_path, plan


def _write_run(root: Path, plan: cost_jobs.CostPlan, eseed: int, extra: float = 0.0) -> None:
    """One expert seed's files of ``plan`` under ``root``; ``extra`` seconds added to every wall time."""
    tmp_path = root
    bench = tmp_path / "logs/benchmarks" / SUITE / f"eseed{eseed}"
    _bench(bench / "merge/ta.tsv", 2.0 + extra, 1.5, 100.0)
    _job_log(bench / "merge/ta.tsv", None)  # an old log: the benchmark's numbers count
    _bench(bench / "merge/wudi.tsv", 30.0, 20.0, 300.0)
    _job_log(bench / "merge/wudi.tsv", {"cpu_s": 29.0, "max_rss_mb": 350.0, "gpu_peak_mb": None})  # exact: wins
    for m in plan.methods:
        _bench(bench / f"evaluate/{m}.tsv", 5.0, 4.0, 50.0)
    for seed in plan.seeds:
        _bench(bench / f"fda/seed{seed}/construct-gauss.tsv", 100.0 + seed + extra, 90.0, 200.0)
        _job_log(bench / f"fda/seed{seed}/construct-gauss.tsv", {"cpu_s": 95.0, "max_rss_mb": 210.0, "gpu_peak_mb": 64.0})
        for init in plan.inits:
            _bench(bench / f"fda/seed{seed}/adapt-{init}-gauss.tsv", 10.0, 8.0, "NA")
            _bench(bench / f"evaluate/fda-seed{seed}-{init}-gauss.tsv", 6.0, 5.0, 50.0, rows=2)
        for b in range(plan.blocks):
            for t in TASKS:
                log = tmp_path / f"work/{SUITE}/eseed{eseed}/fda/seed{seed}/anchors/gauss/block{b}/{t}.json"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(json.dumps({"suite": SUITE, "seed": seed, "anchor_init": "gauss", "block": b, "task": t,
                                           "loss": [1.0] * (5 + b + eseed), "shape": SHAPE.to_record()}))


def _jobs(run_dir):
    root, plan = run_dir
    bench, logs = cost.planned_files(plan, root / "logs/benchmarks" / SUITE, root / f"work/{SUITE}")
    return cost.job_costs(bench, logs, adapt_epochs=EPOCHS, merge_flops={"wudi": WUDI_FLOPS})


def test_read_benchmark_na_and_repeats(tmp_path):
    _bench(tmp_path / "x.tsv", 4.0, 3.0, "NA", rows=1)
    got = cost.read_benchmark(tmp_path / "x.tsv")
    assert got["wall_s"] == 4.0 and got["cpu_s"] == 3.0 and math.isnan(got["max_rss_mb"])
    (tmp_path / "r.tsv").write_text(BENCH_HEADER + "2\t0\t10\t1\t1\t1\t0\t0\t0\t1\n4\t0\t30\t1\t1\t1\t0\t0\t0\t3\n")
    assert cost.read_benchmark(tmp_path / "r.tsv") == {"wall_s": 3.0, "cpu_s": 2.0, "max_rss_mb": 30.0}
    (tmp_path / "bad.tsv").write_text("not a benchmark\n")
    with pytest.raises(cost.CostError, match="not a Snakemake benchmark"):
        cost.read_benchmark(tmp_path / "bad.tsv")


def test_missing_planned_files_are_named(run_dir):
    root, plan = run_dir
    (root / f"logs/benchmarks/{SUITE}/eseed0/merge/ta.tsv").unlink()
    with pytest.raises(cost.CostError, match="eseed0/merge/ta.tsv"):
        cost.planned_files(plan, root / "logs/benchmarks" / SUITE, root / f"work/{SUITE}")


def test_job_costs_sources_and_flops(run_dir):
    jobs = _jobs(run_dir).set_index("benchmark")
    assert list(_jobs(run_dir).columns) == cost.JOB_COLUMNS
    ta = jobs[jobs.index.str.endswith("merge/ta.tsv")].iloc[0]
    assert (ta["measured_by"], ta["cpu_s"], ta["max_rss_mb"]) == ("snakemake", 1.5, 100.0) and math.isnan(ta["flops"])
    wudi = jobs[jobs.index.str.endswith("merge/wudi.tsv")].iloc[0]
    assert (wudi["measured_by"], wudi["cpu_s"], wudi["max_rss_mb"], wudi["flops"]) == ("job", 29.0, 350.0, WUDI_FLOPS)
    construct = jobs[jobs.index.str.endswith("seed0/construct-gauss.tsv")].iloc[0]
    # 2 experts x blocks with 5 and 6 evaluations
    assert construct["flops"] == 2 * (flops.construction_flops(SHAPE, 5) + flops.construction_flops(SHAPE, 6))
    assert construct["gpu_peak_mb"] == 64.0
    adapt = jobs[jobs.index.str.endswith("seed1/adapt-ta-gauss.tsv")].iloc[0]
    assert adapt["flops"] == 2 * flops.adaptation_flops(SHAPE, 2 * SHAPE.n_anchors, EPOCHS["ta"])  # 2 blocks, 2 experts pooled
    ev = jobs[jobs.index.str.endswith("evaluate/fda-seed0-ta-gauss.tsv")].iloc[0]
    assert ev["stage"] == "evaluate" and ev["wall_s"] == 6.0 and ev["seed"] == 0


def test_row_costs_attribution(run_dir):
    rows = cost.row_costs(_jobs(run_dir))
    assert list(rows.columns) == cost.ROW_COLUMNS
    by = {(m, i, a, None if pd.isna(s) else int(s)): r for (m, i, a, s), r in rows.set_index(["method", "init", "anchor_init", "seed"]).iterrows()}
    ta = by[("ta", "", "", None)]
    assert (ta["wall_s"], ta["merge_s"], ta["eval_s"], ta["jobs"]) == (2.0, 2.0, 5.0, 1) and math.isnan(ta["flops"])
    assert by[("wudi", "", "", None)]["flops"] == WUDI_FLOPS
    # FDA from TA, seed 1: TA's merge + all of the seed's construction (shared with the other init) + its adaptation
    fda_ta = by[("fda", "ta", "gauss", 1)]
    assert fda_ta["merge_s"] == 2.0 and fda_ta["construct_s"] == 101.0 and fda_ta["adapt_s"] == 10.0
    assert fda_ta["wall_s"] == 2.0 + 101.0 + 10.0 and fda_ta["cpu_s"] == 1.5 + 95.0 + 8.0
    assert fda_ta["max_rss_mb"] == 210.0 and fda_ta["gpu_peak_mb"] == 64.0  # the largest job's peak
    assert fda_ta["eval_s"] == 6.0 and fda_ta["jobs"] == 3 and fda_ta["row"] == "FDA (TA, Gauss)"
    construct = 2 * (flops.construction_flops(SHAPE, 5) + flops.construction_flops(SHAPE, 6))
    assert fda_ta["flops"] == construct + 2 * flops.adaptation_flops(SHAPE, 8, 1)  # TA's closed-form merge adds none
    fda_pre = by[("fda", "pretrained", "gauss", 1)]
    assert fda_pre["construct_s"] == 101.0 and math.isnan(fda_pre["merge_s"]) and fda_pre["wall_s"] == 111.0
    assert fda_pre["flops"] == construct + 2 * flops.adaptation_flops(SHAPE, 8, 2)


def test_unknown_construction_flops_leave_the_fda_row_unknown(run_dir):
    root, _ = run_dir
    log = root / f"work/{SUITE}/eseed0/fda/seed0/anchors/gauss/block1/b.json"
    record = json.loads(log.read_text())
    del record["shape"]  # a log written before the shape was recorded
    log.write_text(json.dumps(record))
    rows = cost.row_costs(_jobs(run_dir)).set_index(["method", "init", "seed"])
    assert math.isnan(rows.loc[("fda", "ta", 0), "flops"]) and not math.isnan(rows.loc[("fda", "ta", 1), "flops"])


def test_rows_are_per_expert_seed_and_the_table_averages_every_run(tmp_path):
    """Two expert seeds (expert seed 1's jobs take 1000 s longer): a row per (expert seed, FDA seed)
    run, FDA from TA counting the TA merge and construction of its own expert seed, FLOPs from its
    own expert seed's construction logs; the table shows the mean over the 2×2 runs."""
    plan = cost_jobs.CostPlan(baselines=("ta", "wudi"), methods=("pretrained", "individual", "ta", "wudi"), seeds=(0, 1),
                              expert_seeds=(0, 1), inits=("pretrained", "ta"), anchor_inits=("gauss",), blocks=2,
                              tasks=tuple(TASKS))
    _write_run(tmp_path, plan, 0)
    _write_run(tmp_path, plan, 1, extra=1000.0)
    jobs = _jobs((tmp_path, plan))
    assert len(jobs) == len(cost_jobs.benchmark_files(plan)) == 2 * len(cost_jobs.expert_seed_files(plan))
    rows = cost.row_costs(jobs).set_index(["method", "init", "expert_seed", "seed"])
    assert rows.loc[("ta", "", 1), "merge_s"].item() == 1002.0
    fda_ta = rows.loc[("fda", "ta", 1, 0)]
    assert fda_ta["merge_s"] == 1002.0 and fda_ta["construct_s"] == 1100.0 and fda_ta["wall_s"] == 1002.0 + 1100.0 + 10.0
    construct = 2 * (flops.construction_flops(SHAPE, 6) + flops.construction_flops(SHAPE, 7))  # expert seed 1's logs
    assert fda_ta["flops"] == construct + 2 * flops.adaptation_flops(SHAPE, 8, 1)
    table = cost.cost_table(cost.row_costs(jobs), _cells(), SUITE, TASKS).set_index("row")
    assert table.loc["FDA (TA, Gauss)", "seeds"] == "2×2" and table.loc["TA", "seeds"] == "2×1"
    assert table.loc["FDA (TA, Gauss)", "wall_s"] == pytest.approx((112.0 + 113.0 + 2112.0 + 2113.0) / 4)
    assert table.loc["TA", "wall_s"] == pytest.approx((2.0 + 1002.0) / 2)


def _cells() -> pd.DataFrame:
    values = {("pretrained", "", "", 0): 0.3, ("individual", "", "", 0): 0.9, ("ta", "", "", 0): 0.5, ("wudi", "", "", 0): 0.6,
              ("fda", "pretrained", "gauss", 0): 0.55, ("fda", "pretrained", "gauss", 1): 0.65,
              ("fda", "ta", "gauss", 0): 0.7, ("fda", "ta", "gauss", 1): 0.72}
    individual = results.raw_frame([{"task": t, "metric": "accuracy", "value": 0.9} for t in TASKS], method="individual")
    frames = []
    for (m, i, a, s), v in values.items():
        raw = results.raw_frame([{"task": t, "metric": "accuracy", "value": v} for t in TASKS], method=m, init=i,
                                anchor_init=a, seed=s)
        frames.append(results.build_cell([raw], individual, suite=SUITE, expert_source="finetuned-here", config_hash="x", version="0"))
    return pd.concat(frames, ignore_index=True)


def test_cost_table_rows_accuracy_and_seed_spread(run_dir):
    table = cost.cost_table(cost.row_costs(_jobs(run_dir)), _cells(), SUITE, TASKS)
    assert list(table["row"]) == ["TA", "WUDI", "FDA (Pretrained, Gauss)", "FDA (TA, Gauss)"]  # the accuracy table's order
    r = table.set_index("row").loc["FDA (TA, Gauss)"]
    assert r["seeds"] == "1×2" and r["wall_s"] == pytest.approx((112.0 + 113.0) / 2)
    assert (r["wall_s min"], r["wall_s max"]) == (112.0, 113.0)
    assert r["Avg"] == pytest.approx(0.71) and (r["Avg min"], r["Avg max"]) == (pytest.approx(0.7), pytest.approx(0.72))
    assert table.set_index("row").loc["TA", "seeds"] == "1×1"


def test_written_table_and_figure(run_dir, tmp_path):
    from fda.bench.report.cost_figure import accuracy_vs_cost, write_cost_figure

    table = cost.cost_table(cost.row_costs(_jobs(run_dir)), _cells(), SUITE, TASKS)
    paths = cost.write_cost_table(table, SUITE, tmp_path / "tables", _cells()["value"])
    md = paths["md"].read_text()
    assert "| FDA (TA, Gauss) | 71.00 | 2.0 | 100.5 | 10.0 | 112.5 |" in md and "in full" in md
    assert paths["tex"].read_text().startswith("% ") and "\\toprule" in paths["tex"].read_text()
    assert pd.read_csv(paths["csv"])["row"].tolist() == table["row"].tolist()
    figs = write_cost_figure(table, SUITE, 100.0, tmp_path / "figures", {"Pretrained": 0.3, "Individual": 0.9})
    assert [p.suffix for p in figs] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in figs)
    import numpy as np

    fig = accuracy_vs_cost(table, SUITE, 100.0, yerr=np.full((2, len(table)), 0.01))  # the hook for other intervals
    assert "95% intervals" in fig._suptitle.get_text()


def test_intervals_become_the_error_bars_and_the_table_s_plus_minus(run_dir, tmp_path):
    import types

    from fda.bench.report.cost_figure import interval_errors, with_intervals

    table = cost.cost_table(cost.row_costs(_jobs(run_dir)), _cells(), SUITE, TASKS)
    known = {("fda", "ta", "gauss"): types.SimpleNamespace(lo=0.69, hi=0.75)}
    ints = types.SimpleNamespace(of=lambda key, column: known.get(key) if column == "Avg" else None)
    table = with_intervals(table, ints)
    err = interval_errors(table)
    j = list(table["row"]).index("FDA (TA, Gauss)")
    assert err[:, j] == pytest.approx([0.71 - 0.69, 0.75 - 0.71]) and not err[:, :j].any()
    md = cost.write_cost_table(table, SUITE, tmp_path, _cells()["value"])["md"].read_text()
    assert "| FDA (TA, Gauss) | 71.00 ±3.00 |" in md and "| TA | 50.00 |" in md


def test_costs_command_end_to_end_loads_no_model_stack(run_dir):
    """``fda-bench costs`` from the plan, in a fresh interpreter: files written, no torch import
    (without --wudi-model)."""
    import subprocess
    import sys

    root, plan = run_dir
    import numpy as np

    from fda.bench.eval.outcomes import Outcome, write_outcomes

    cells = _cells()
    for (m, i), group in cells.groupby(["method", "init"]):
        stem = root / f"results/{SUITE}_{i + '_fda' if m == 'fda' else m}"
        results.write_cell(group.reset_index(drop=True), f"{stem}.csv")
        outcomes = {}
        for (a, e, s, t), v in group[group["headline"]].groupby(["anchor_init", "expert_seed", "seed", "task"])["value"].first().items():
            right = round(v * 20)  # 20 test examples, v of them right
            outcomes[(m, i, a, int(e), int(s), t)] = Outcome(np.arange(20) * (np.arange(20) < right), np.arange(20), "accuracy")
        write_outcomes(outcomes, f"{stem}.npz")
    argv = ["costs", "--suite", SUITE, "--tasks", *TASKS, "--cells", *sorted(str(p) for p in (root / "results").glob("*.csv")),
            "--plan", plan.to_json(), "--benchmarks-dir", f"logs/benchmarks/{SUITE}", "--work-dir", f"work/{SUITE}",
            "--adapt-epochs", "pretrained=2", "--adapt-epochs", "ta=1", "--jobs-out", f"results/costs/{SUITE}.csv",
            "--tables-dir", "results/tables", "--figures-dir", "results/figures",
            "--outcomes", *sorted(str(p) for p in (root / "results").glob("*.npz"))]
    code = ("import sys\nfrom fda.bench.cli import main\nstatus = main(sys.argv[1:])\n"
            "print('HEAVY=' + ','.join(sorted({'torch', 'transformers', 'safetensors'} & set(sys.modules))))\n"
            "raise SystemExit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY=\n" in proc.stdout
    jobs = pd.read_csv(root / f"results/costs/{SUITE}.csv")
    assert len(jobs) == len(cost_jobs.benchmark_files(plan))
    assert (root / f"results/figures/{SUITE}-cost.pdf").is_file()
    table = pd.read_csv(root / f"results/tables/{SUITE}-cost.csv")
    assert (table["Avg lo"] <= table["Avg"] + 1e-9).all() and (table["Avg"] <= table["Avg hi"] + 1e-9).all()
    assert " ±" in (root / f"results/tables/{SUITE}-cost.md").read_text()


def test_the_cost_table_counts_fixed_rows_only(tmp_path):
    """A validated cell beside the fixed ones (docs/selection.md) leaves the cost table as it was:
    its grid jobs are not attributed yet, so it has no row, and TA's Avg stays the fixed row's."""
    plan = cost_jobs.CostPlan(baselines=("ta", "wudi"), methods=("pretrained", "individual", "ta", "wudi"), seeds=(0, 1),
                              expert_seeds=(0, 1), inits=("pretrained", "ta"), anchor_inits=("gauss",), blocks=2,
                              tasks=tuple(TASKS))
    _write_run(tmp_path, plan, 0)
    _write_run(tmp_path, plan, 1, extra=1000.0)
    rows = cost.row_costs(_jobs((tmp_path, plan)))
    fixed = cost.cost_table(rows, _cells(), SUITE, TASKS)
    individual = results.raw_frame([{"task": t, "metric": "accuracy", "value": 0.9} for t in TASKS], method="individual")
    raw = results.raw_frame([{"task": t, "metric": "accuracy", "value": 0.99} for t in TASKS], method="ta",
                            protocol="validated", hparams='{"alpha":0.5}')
    validated = results.build_cell([raw], individual, suite=SUITE, expert_source="x", config_hash="h", version="0")
    both = cost.cost_table(rows, pd.concat([_cells(), validated], ignore_index=True), SUITE, TASKS)
    pd.testing.assert_frame_equal(both, fixed)
