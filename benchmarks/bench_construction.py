"""Cheaper anchors: construction optimisers and anchor inits, FLOP for FLOP, on every block.

For each block of an embedded suite the workflow has built (``work/{suite}``: base, experts, TA
merge), each seed and each *option* ``optimizer:anchor_init:evals[:acc_budgets]`` this runs one
construction of all experts with a budget of ``evals`` objective evaluations (line-search ones
included, so budgets compare FLOP for FLOP) and records:

* the best-so-far induced-gradient cosine after every evaluation (mean over the block's alignable
  tensors and the experts, at the anchors the run would return at that budget);
* wall seconds per evaluation (the whole run divided by the evaluations of all experts);
* at each accuracy budget: the suite's mean test accuracy when only this block is adapted on the
  anchors of that budget, from the pretrained model and from the TA merge (the other blocks keep
  the init's values; adaptation settings from the workflow config).

Every finished (block, seed, option) is appended to ``--out`` (JSON lines) at once, so a long run
can be stopped and resumed; ``--report`` turns the file into Markdown: per block the evaluations
each option needs to reach the cosine of AdamW at 50 and 300 evaluations, and accuracies side by
side. Example (both suites, two seeds; hours on 2 cores, run in the background)::

    snakemake --cores 2 work/minitext/merged/ta.safetensors work/minivision/merged/ta.safetensors
    python benchmarks/bench_construction.py --suite minivision --seeds 0 1 --out benchmarks/results/construction.jsonl
    python benchmarks/bench_construction.py --report benchmarks/results/construction.jsonl > benchmarks/results/construction.md

``--paper-shaped vitb32|bertbase`` instead runs one paper-shaped block (d 768; ViT-B/32 50 tokens,
BERT-base 5) with random low-rank experts: cosine against evaluations only (no accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fda  # noqa: E402
from fda.bench.config import naming as cfg_names  # noqa: E402
from fda.bench.config import suite_views as cfg_views  # noqa: E402

DEFAULT_OPTIONS = ["adamw:gauss:300:50,300", "adamw:weight:300:50,300", "lbfgs:gauss:100:60", "lbfgs:weight:100:60", "lbfgs:task_span:100:60"]


def parse_option(text: str) -> dict[str, Any]:
    """``optimizer:anchor_init:evals[:b1,b2,...]`` -> dict (accuracy budgets default to none)."""
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"option {text!r}: expected optimizer:anchor_init:evals[:acc_budget,...]")
    budgets = [int(b) for b in parts[3].split(",")] if len(parts) == 4 and parts[3] else []
    opt, init, evals = parts[0], parts[1], int(parts[2])
    if any(b > evals for b in budgets):
        raise argparse.ArgumentTypeError(f"option {text!r}: accuracy budgets must not exceed {evals} evaluations")
    return {"name": text, "optimizer": opt, "anchor_init": init, "evals": evals, "acc_budgets": budgets}


def best_so_far_cosine(results: list[fda.ConstructResult], evals: int) -> list[float]:
    """Mean over experts of the alignable cosine of the anchors a run of k evaluations returns
    (its lowest loss so far), k = 1..evals (a run that stopped early keeps its last value)."""
    per_expert = []
    for r in results:
        loss, cos = r.log.loss, r.log.mean_cos()
        curve, best, at = [], float("inf"), 0.0
        for k in range(evals):
            if k < loss.numel() and float(loss[k]) < best:
                best, at = float(loss[k]), float(cos[k])
            curve.append(at)
        per_expert.append(curve)
    return [sum(c[k] for c in per_expert) / len(per_expert) for k in range(evals)]


def initial_cosine(results: list[fda.ConstructResult]) -> float:
    return sum(float(r.log.mean_cos()[0]) for r in results) / len(results)


# ------------------------------------------------------------------------------------------------
# one suite, every block


def suite_runs(args: argparse.Namespace, options: list[dict[str, Any]], done: set[tuple]) -> None:
    from bench_reduction import load_built_suite, with_block

    b = load_built_suite(args.config, args.suite, args.work, ["pretrained", "ta"])
    section = b.section
    layout = cfg_views.merge_layout(b.config, args.suite)
    n_blocks = int(section["fda"]["n_blocks"])
    blocks = args.blocks if args.blocks else list(range(n_blocks))
    init_acc = None
    for seed in args.seeds:
        for block in blocks:
            for opt in options:
                key = (args.suite, block, seed, opt["name"])
                if key in done:
                    continue
                if init_acc is None:
                    init_acc = {i: b.score(s) for i, s in b.inits.items()}
                cfg = fda.FDAConfig.for_family(
                    section["family"],
                    **{**cfg_names.fda_hparams(section), "n_anchors": args.n_anchors or cfg_names.fda_hparams(section)["n_anchors"],
                       "construct_steps": opt["evals"], "construct_optimizer": opt["optimizer"], "seed": seed,
                       "progress": False, "sv_every": 0, "qkv_layout": layout},
                )  # fmt: skip
                t0 = time.perf_counter()
                built = fda.construct_block(b.model, b.pre, b.experts, block, opt["anchor_init"], cfg, snapshot_steps=opt["acc_budgets"])
                seconds = time.perf_counter() - t0
                evaluations = sum(r.log.loss.numel() for r in built)
                row: dict[str, Any] = {
                    "suite": args.suite, "block": block, "seed": seed, "option": opt["name"], "optimizer": opt["optimizer"],
                    "anchor_init": opt["anchor_init"], "evals": opt["evals"], "n_anchors": cfg.n_anchors, "experts": len(built),
                    "seconds": seconds, "s_per_eval": seconds / max(evaluations, 1), "evaluations": evaluations,
                    "initial_cos": initial_cosine(built), "curve": best_so_far_cosine(built, opt["evals"]),
                    "init_accuracy": init_acc, "accuracy": {},
                }  # fmt: skip
                for s in opt["acc_budgets"]:
                    anchors = [r.budget_anchors[s] for r in built]
                    accs = {}
                    for init, init_state in b.inits.items():
                        acfg = fda.FDAConfig.for_family(section["family"], init=init,
                                                        **{**cfg_names.fda_hparams(section, init), "n_anchors": cfg.n_anchors, "progress": False})
                        adapted = fda.adapt_block(b.model, b.pre, b.experts, block, anchors, init, init_state, acfg)
                        accs[init] = b.score(with_block(init_state, adapted.params))
                    row["accuracy"][str(s)] = accs
                append(args.out, row)
                print(f"[bench] {args.suite} block {block} seed {seed} {opt['name']}: {seconds:.0f} s, cos {row['curve'][-1]:.3f}, "
                      f"acc {row['accuracy']}", file=sys.stderr, flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# one paper-shaped block, random experts


def paper_shaped_runs(args: argparse.Namespace, options: list[dict[str, Any]], done: set[tuple]) -> None:
    from bench_fda import build

    model, n, tokens = build(args.paper_shaped, tiny=False)
    n = args.n_anchors or 16
    ad = fda.blocks.adapter_for(model)
    prefix = ad.block_prefix(0)
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    experts = []
    for _ in range(args.experts):
        ex = dict(pre)
        for k, v in pre.items():
            if k.startswith(prefix) and v.dim() == 2:  # rank-8 task vectors, as fine-tuning leaves them
                u, w = torch.randn(v.shape[0], 8, generator=gen), torch.randn(8, v.shape[1], generator=gen)
                ex[k] = v + 0.02 * v.std() * (u @ w) / 8**0.5
            elif k.startswith(prefix):
                ex[k] = v + 0.02 * v.std().clamp_min(1e-3) * torch.randn(v.shape, generator=gen)
        experts.append(ex)
    for seed in args.seeds:
        for opt in options:
            key = (args.paper_shaped, 0, seed, opt["name"])
            if key in done:
                continue
            cfg = fda.FDAConfig(n_anchors=n, tokens=tokens, construct_steps=opt["evals"], construct_optimizer=opt["optimizer"],
                                seed=seed, progress=False, qkv_layout="fused" if args.paper_shaped == "vitb32" else "split")  # fmt: skip
            t0 = time.perf_counter()
            built = fda.construct_block(model, pre, experts, 0, opt["anchor_init"], cfg)
            seconds = time.perf_counter() - t0
            evaluations = sum(r.log.loss.numel() for r in built)
            row = {"suite": args.paper_shaped, "block": 0, "seed": seed, "option": opt["name"], "optimizer": opt["optimizer"],
                   "anchor_init": opt["anchor_init"], "evals": opt["evals"], "n_anchors": n, "experts": len(built),
                   "seconds": seconds, "s_per_eval": seconds / max(evaluations, 1), "evaluations": evaluations,
                   "initial_cos": initial_cosine(built), "curve": best_so_far_cosine(built, opt["evals"]), "accuracy": {}}  # fmt: skip
            append(args.out, row)
            print(f"[bench] {args.paper_shaped} seed {seed} {opt['name']}: {seconds:.0f} s, cos {row['curve'][-1]:.3f}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# files and report


def append(path: str, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_rows(path: str) -> list[dict[str, Any]]:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def evals_to_reach(curve: list[float], target: float) -> int | None:
    """The smallest budget (evaluations) whose best-so-far cosine reaches ``target``; None if never."""
    return next((k + 1 for k, c in enumerate(curve) if c >= target - 1e-9), None)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _spread(xs: list[float]) -> str:
    """mean, and ± half the range over seeds when there are several."""
    m = _mean(xs)
    return f"{m:.3f}" if len(xs) == 1 else f"{m:.3f} ±{(max(xs) - min(xs)) / 2:.3f}"


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: per (suite, block), each option's cosine at its budgets, evaluations to the
    AdamW-gauss 50- and 300-evaluation cosines (and the ratio to 300), and accuracies."""
    out = ["# Anchor construction: optimisers and inits, FLOP for FLOP", "",
           "Cosine: mean alignable induced-gradient cosine of the anchors a run of that many objective evaluations returns "
           "(mean over experts; mean ± half the range over seeds). *to 50 / to 300*: evaluations each option needs to reach the "
           "cosine of the paper's optimiser and init (AdamW, gauss) after 50 / 300 evaluations of the same seed (median over seeds; "
           "— never within its budget); *ratio*: that count over 300. Accuracy: suite mean test accuracy (%) with only this block "
           "adapted on the anchors, from the pretrained model / from TA, at the budget shown.", ""]  # fmt: skip
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["suite"], r["block"])].append(r)
    summary: dict[str, list[float]] = defaultdict(list)
    for (suite, block), rs in sorted(groups.items()):
        ref = {r["seed"]: r["curve"] for r in rs if r["optimizer"] == "adamw" and r["anchor_init"] == "gauss" and r["evals"] >= 300}
        out += [f"## {suite}, block {block}", ""]
        init_acc = next((r.get("init_accuracy") for r in rs if r.get("init_accuracy")), None)
        if init_acc:
            out += ["Without adapting the block: " + ", ".join(f"{k} {v:.1f}" for k, v in init_acc.items()) + ".", ""]
        out += ["| option | seeds | s/eval | cos at 0 | cos at 50 | cos at 60 | cos at 100 | cos at 300 | to 50 | to 300 | ratio | accuracy (pre / TA) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        by_option: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            by_option[r["option"]].append(r)
        for name, runs in by_option.items():
            def at(k: int) -> str:
                vals = [r["curve"][k - 1] for r in runs if len(r["curve"]) >= k]
                return _spread(vals) if len(vals) == len(runs) else "–"

            reach = {}
            for level in (50, 300):
                counts = [evals_to_reach(r["curve"], ref[r["seed"]][level - 1]) for r in runs if r["seed"] in ref]
                known = sorted(c for c in counts if c is not None)
                reach[level] = "—" if not counts or len(known) < len(counts) else str(known[len(known) // 2])
                if counts and len(known) == len(counts) and level == 300:
                    summary[name].append(known[len(known) // 2] / 300)
            ratio = f"{int(reach[300]) / 300:.2f}" if reach[300] not in ("—",) else "—"
            accs = []
            budgets = sorted({b for r in runs for b in r["accuracy"]}, key=int)
            for bud in budgets:
                pre = [r["accuracy"][bud]["pretrained"] for r in runs if bud in r["accuracy"]]
                ta = [r["accuracy"][bud]["ta"] for r in runs if bud in r["accuracy"]]
                accs.append(f"{bud}: {_mean(pre):.1f} / {_mean(ta):.1f}")
            init0 = _spread([r["initial_cos"] for r in runs])
            out.append(f"| {name} | {len(runs)} | {_mean([r['s_per_eval'] for r in runs]):.3f} | {init0} | {at(50)} | {at(60)} | {at(100)} | "
                       f"{at(300)} | {reach[50]} | {reach[300]} | {ratio} | {'; '.join(accs)} |")  # fmt: skip
        out.append("")
    if summary:
        out += ["## Summary: evaluations to the 300-evaluation AdamW-gauss cosine, over 300", "",
                "| option | blocks reaching it | median ratio | worst ratio |", "|---|---:|---:|---:|"]
        for name, ratios in summary.items():
            out.append(f"| {name} | {len(ratios)} | {sorted(ratios)[len(ratios) // 2]:.2f} | {max(ratios):.2f} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=["minitext", "minivision"])
    p.add_argument("--paper-shaped", choices=["vitb32", "bertbase"])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--work", help="the suite's work dir (default work/SUITE)")
    p.add_argument("--blocks", type=int, nargs="*", help="default: every block")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n-anchors", type=int, help="default: the suite's config (paper-shaped: 16)")
    p.add_argument("--experts", type=int, default=2, help="paper-shaped: random experts")
    p.add_argument("--options", type=parse_option, nargs="+", default=[parse_option(o) for o in DEFAULT_OPTIONS])
    p.add_argument("--out", default="benchmarks/results/construction.jsonl")
    p.add_argument("--report", metavar="JSONL", help="print the Markdown report of a results file and exit")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.report:
        print(report(read_rows(args.report)), end="")
        return 0
    if bool(args.suite) == bool(args.paper_shaped):
        p.error("give exactly one of --suite, --paper-shaped (or --report)")
    if args.threads:
        torch.set_num_threads(args.threads)
    # resume: what the file already holds is skipped (one file per setting, e.g. per anchor count)
    done = {(r["suite"], r["block"], r["seed"], r["option"]) for r in read_rows(args.out)}
    (paper_shaped_runs if args.paper_shaped else suite_runs)(args, args.options, done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
