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

DEFAULT_OPTIONS = ["adamw:gauss:300:50,300", "adamw:weight:300:50,300", "lbfgs:gauss:100:60", "lbfgs:weight:100:60", "lbfgs:taskspan:100:60"]


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
    n_anchors = args.n_anchors or cfg_names.fda_hparams(section)["n_anchors"]
    # a subset of the experts (the first N) gives cosines only: adaptation needs every expert's anchors
    subset = list(range(min(args.experts or len(b.experts), len(b.experts))))
    with_accuracy = len(subset) == len(b.experts)
    init_acc = None
    for seed in args.seeds:
        for block in blocks:
            for opt in options:
                if (args.suite, block, seed, opt["name"], n_anchors, len(subset)) in done:
                    continue
                if init_acc is None and with_accuracy:
                    init_acc = {i: b.score(s) for i, s in b.inits.items()}
                cfg = fda.FDAConfig.for_family(
                    section["family"],
                    **{**cfg_names.fda_hparams(section), "n_anchors": n_anchors,
                       "construct_steps": opt["evals"], "construct_optimizer": opt["optimizer"], "seed": seed,
                       "progress": False, "sv_every": 0, "qkv_layout": layout},
                )  # fmt: skip
                t0 = time.perf_counter()
                built = fda.construct_block(b.model, b.pre, b.experts, block, opt["anchor_init"], cfg, subset,
                                            snapshot_steps=opt["acc_budgets"] if with_accuracy else ())
                seconds = time.perf_counter() - t0
                evaluations = sum(r.log.loss.numel() for r in built)
                row: dict[str, Any] = {
                    "suite": args.suite, "block": block, "seed": seed, "option": opt["name"], "optimizer": opt["optimizer"],
                    "anchor_init": opt["anchor_init"], "evals": opt["evals"], "n_anchors": cfg.n_anchors, "experts": len(built),
                    "seconds": seconds, "s_per_eval": seconds / max(evaluations, 1), "evaluations": evaluations,
                    "initial_cos": initial_cosine(built), "curve": best_so_far_cosine(built, opt["evals"]),
                    "init_accuracy": init_acc, "accuracy": {},
                }  # fmt: skip
                for s in opt["acc_budgets"] if with_accuracy else ():
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
    for _ in range(args.experts or 2):
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
            if (args.paper_shaped, 0, seed, opt["name"], n, len(experts)) in done:
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


def _spread(xs: list[float], digits: int = 3) -> str:
    """mean, and ± half the range over seeds when there are several."""
    m = _mean(xs)
    return f"{m:.{digits}f}" if len(xs) == 1 else f"{m:.{digits}f} ±{(max(xs) - min(xs)) / 2:.{digits}f}"


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2] if len(ys) % 2 else (ys[len(ys) // 2 - 1] + ys[len(ys) // 2]) / 2


def _reference(rs: list[dict[str, Any]], init: str) -> dict[int, dict[str, Any]]:
    """The AdamW run of ``init`` with at least 300 evaluations, per seed."""
    return {r["seed"]: r for r in rs if r["optimizer"] == "adamw" and r["anchor_init"] == init and r["evals"] >= 300}


def _reach(runs: list[dict[str, Any]], ref: dict[int, dict[str, Any]], level: int) -> list[int | None]:
    """Per run with a same-seed reference: evaluations to the reference's cosine at ``level``."""
    return [evals_to_reach(r["curve"], ref[r["seed"]]["curve"][level - 1]) for r in runs if r["seed"] in ref]


def _reach_cell(counts: list[int | None]) -> str:
    if not counts:
        return ""
    if any(c is None for c in counts):
        return f"> budget ({sum(c is None for c in counts)}/{len(counts)})"
    return str(int(_median([float(c) for c in counts])))  # type: ignore[arg-type]


def _by_kind(rs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One block's runs grouped by optimiser + init, one run per seed (the longest), every curve
    cut to the group's shortest budget: the runs of one kind may differ in budget between seeds
    (e.g. L-BFGS 100 and 120), and a shorter run is a prefix of a longer one (budgets count
    evaluations; tested in tests/layer_method/test_fda_construct_beyond.py)."""
    longest: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rs:
        key = (f"{r['optimizer']}:{r['anchor_init']}", r["seed"])
        if key not in longest or r["evals"] > longest[key]["evals"]:
            longest[key] = r
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (kind, _), r in sorted(longest.items()):
        groups[kind].append(r)
    out = {}
    for kind, runs in groups.items():
        budget = min(r["evals"] for r in runs)
        out[f"{kind}:{budget}"] = [{**r, "evals": budget, "curve": r["curve"][:budget]} for r in runs]
    return out


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: per (suite, block) each option's cosine at common budgets, the evaluations it
    needs to reach the cosine of AdamW at 50 and 300 evaluations (gauss, the paper's default, and
    the option's own init), its one-block accuracies; then a summary over blocks."""
    out = ["# Anchor construction: optimisers and inits, FLOP for FLOP", "",
           "Produced by `benchmarks/bench_construction.py --report` from the JSON lines next to this file.",
           "",
           "*cos at k*: mean alignable induced-gradient cosine of the anchors a run of k objective evaluations returns "
           "(its lowest loss so far; mean over the experts; mean ± half the range over seeds). *to G50 / G300*: "
           "evaluations the option needs to reach the cosine of AdamW + gauss (the paper's default) after 50 / 300 "
           "evaluations, same seed (median over seeds; *> budget*: not within the option's budget, for how many seeds); "
           "*to own 300*: the same against AdamW with the option's own anchor init. *AdamW-gauss equivalent*: the "
           "evaluations AdamW + gauss needs to reach the option's cosine at its full budget, and that over the budget "
           "(the option's speed-up). *s/eval*: wall seconds per "
           "objective evaluation of one expert (1 thread; the machine ran two such processes and other work, so "
           "compare within a row group only). Accuracy: suite mean test accuracy (%) with only this block adapted on the "
           "anchors of that budget, from the pretrained model / from TA (mean over seeds); the other blocks keep the init. "
           "*option*: optimiser:init:budget; runs of one kind with different budgets (seeds run at different times) are "
           "read at the shortest one (a shorter run is a prefix of a longer one).",
           ""]  # fmt: skip
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["suite"], r["block"])].append(r)
    ratios: dict[str, list[float]] = defaultdict(list)  # option -> evals to G300 / 300, per block (median over seeds)
    misses: dict[str, int] = defaultdict(int)
    acc_gap: dict[str, list[float]] = defaultdict(list)  # option -> (acc at its last budget - AdamW gauss 300), per block and init
    for (suite, block), rs in sorted(groups.items()):
        gauss_ref = _reference(rs, "gauss")
        out += [f"## {suite}, block {block}", ""]
        init_acc = next((r.get("init_accuracy") for r in rs if r.get("init_accuracy")), None)
        if init_acc:
            out += ["Without adapting the block: " + ", ".join(f"{k} {v:.1f}" for k, v in init_acc.items()) + ".", ""]
        out += ["| option | seeds | s/eval | cos at 0 | at 25 | at 50 | at 60 | at 100 | at 300 | to G50 | to G300 | to own 300 | AdamW-gauss equivalent | accuracy (pre / TA) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        by_option = _by_kind(rs)
        ref_acc = {}
        for r in gauss_ref.values():
            for init, v in r["accuracy"].get("300", {}).items():
                ref_acc.setdefault(init, []).append(v)
        for name, runs in by_option.items():
            def at(k: int, runs: list[dict[str, Any]] = runs) -> str:
                vals = [r["curve"][k - 1] for r in runs if len(r["curve"]) >= k]
                return _spread(vals) if len(vals) == len(runs) else "–"

            is_ref = runs[0]["optimizer"] == "adamw" and runs[0]["anchor_init"] == "gauss"
            g50, g300 = _reach(runs, gauss_ref, 50), _reach(runs, gauss_ref, 300)
            own = _reference(rs, runs[0]["anchor_init"])
            own300 = [] if runs[0]["optimizer"] == "adamw" else _reach(runs, own, 300)
            kind = f"{runs[0]['optimizer']} + {runs[0]['anchor_init']}"  # options differ per suite only in their budgets
            if not is_ref and g300:
                if any(c is None for c in g300):
                    misses[kind] += 1
                else:
                    ratios[kind].append(_median([float(c) for c in g300]) / 300)  # type: ignore[arg-type]
            # evaluations AdamW + gauss needs to match this option's cosine at its full budget, and that over the budget
            matches = [evals_to_reach(gauss_ref[r["seed"]]["curve"], r["curve"][-1]) for r in runs if r["seed"] in gauss_ref]
            if is_ref or not matches:
                equivalent = ""
            elif any(m is None for m in matches):
                equivalent = f"> 300 at {runs[0]['evals']}"
            else:
                m = _median([float(x) for x in matches])  # type: ignore[arg-type]
                equivalent = f"{m:.0f} at {runs[0]['evals']} ({m / runs[0]['evals']:.1f}x)"
            accs = []
            budgets = sorted({b for r in runs for b in r["accuracy"]}, key=int)
            for bud in budgets:
                pre = [r["accuracy"][bud]["pretrained"] for r in runs if bud in r["accuracy"]]
                ta = [r["accuracy"][bud]["ta"] for r in runs if bud in r["accuracy"]]
                accs.append(f"{bud}: {_mean(pre):.1f} / {_mean(ta):.1f}")
            if budgets and not is_ref and ref_acc:
                last = budgets[-1] if runs[0]["optimizer"] == "adamw" else budgets[0]
                for init, vals in ref_acc.items():
                    mine = [r["accuracy"][last][init] for r in runs if last in r["accuracy"]]
                    acc_gap[f"{kind} @ {last}"].append(_mean(mine) - _mean(vals))
            out.append(f"| {name} | {len(runs)} | {_mean([r['s_per_eval'] for r in runs]):.3f} | {_spread([r['initial_cos'] for r in runs])} | "
                       f"{at(25)} | {at(50)} | {at(60)} | {at(100)} | {at(300)} | {_reach_cell(g50)} | {_reach_cell(g300)} | "
                       f"{_reach_cell(own300)} | {equivalent} | {'; '.join(accs)} |")  # fmt: skip
        out.append("")
    if ratios or misses:
        out += ["## Summary", "",
                "Evaluations to the cosine of 300 AdamW + gauss evaluations, over 300 (per block the median over seeds; "
                "the goal is ≤ 0.20 on every block):", "",
                "| optimiser + init | blocks reaching it | blocks not within budget | median ratio | worst ratio |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name in sorted(set(ratios) | set(misses)):
            rs_ = ratios.get(name, [])
            out.append(f"| {name} | {len(rs_)} | {misses.get(name, 0)} | {_median(rs_):.2f} | {max(rs_):.2f} |" if rs_
                       else f"| {name} | 0 | {misses.get(name, 0)} | – | – |")  # fmt: skip
        out.append("")
    if acc_gap:
        out += ["One-block accuracy minus that of AdamW + gauss at 300 evaluations (points; over blocks and both inits, "
                "each block's value a mean over seeds; the seed-to-seed spread of one-block accuracy is ±0.1 to ±1 point):", "",
                "| optimiser + init @ budget | cases | mean | min | max |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, gaps in sorted(acc_gap.items()):
            out.append(f"| {name} | {len(gaps)} | {_mean(gaps):+.2f} | {min(gaps):+.2f} | {max(gaps):+.2f} |")
    return "\n".join(out) + "\n"


def gap_report(rows: list[dict[str, Any]]) -> str:
    """Markdown: how much of the cosine gap between the embedded default (AdamW + gauss, 50
    evaluations, the suite's anchor count) and the paper's budget (AdamW + gauss, 1200 evaluations,
    64 anchors) each option closes, per (suite, block, seed) of a long run."""
    out = ["# The remaining gap to the paper's construction budget", "",
           "Produced by `benchmarks/bench_construction.py --gap` from the JSON lines next to this file. *paper*: AdamW + gauss, "
           "1200 evaluations, 64 anchors; *default*: AdamW + gauss after 50 evaluations with the suite's anchor count; "
           "closed = (cos − default) / (paper − default), at each option's full budget (the options use the suite's anchor "
           "count). Cosines are means over the experts run (the first N of the suite).", "",
           "| suite | block | seed | experts | paper cos | default cos | option | anchors | evaluations | cos | gap closed |",
           "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["suite"], r["block"], r["seed"], r["experts"])].append(r)
    for (suite, block, seed, experts), rs in sorted(groups.items()):
        paper = next((r for r in rs if r["optimizer"] == "adamw" and r["anchor_init"] == "gauss" and r["n_anchors"] >= 64 and r["evals"] >= 1200), None)
        small = [r for r in rs if r is not paper]
        default = next((r for r in small if r["optimizer"] == "adamw" and r["anchor_init"] == "gauss" and r["evals"] >= 50), None)
        if paper is None or default is None:
            continue
        top, base = paper["curve"][1199], default["curve"][49]
        for r in small:
            budgets = [50, 300] if r is default else [r["evals"]]
            for k in budgets:
                if len(r["curve"]) < k:
                    continue
                c = r["curve"][k - 1]
                out.append(f"| {suite} | {block} | {seed} | {experts} | {top:.3f} | {base:.3f} | {r['optimizer']} + {r['anchor_init']} | "
                           f"{r['n_anchors']} | {k} | {c:.3f} | {(c - base) / (top - base):.0%} |")  # fmt: skip
    return "\n".join(out) + "\n"


def run_check(rows: list[dict[str, Any]], work: str, seed: int = 0) -> str:
    """Markdown: the cosine of the anchors a workflow run built (``WORK/*/fda/seed{seed}/anchors``
    construction logs; mean over experts at the returned anchors) beside AdamW + gauss at 50 and
    300 evaluations of the same block and seed from ``rows``; ✓ marks at least the 300 value."""
    ref = {(r["suite"], r["block"]): r["curve"] for r in rows
           if r["optimizer"] == "adamw" and r["anchor_init"] == "gauss" and r["seed"] == seed and r["evals"] >= 300}  # fmt: skip
    built: dict[tuple, list[float]] = defaultdict(list)
    for f in Path(work).glob(f"*/fda/seed{seed}/anchors/*/block*/*.json"):
        log = json.loads(f.read_text())
        built[(log["suite"], log["block"], log["anchor_init"])].append(log["cos_mean"][log["best_step"]])
    inits = sorted({k[2] for k in built})
    out = ["| suite | block | AdamW gauss 50 | AdamW gauss 300 | " + " | ".join(f"run, {i}" for i in inits) + " |",
           "|---|---:|---:|---:|" + "---:|" * len(inits)]
    for suite, block in sorted(ref):
        curve = ref[(suite, block)]
        cells = []
        for i in inits:
            vals = built.get((suite, block, i))
            cells.append("–" if not vals else f"{_mean(vals):.3f} {'✓' if _mean(vals) >= curve[299] else '✗'}")
        out.append(f"| {suite} | {block} | {curve[49]:.3f} | {curve[299]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def figure(rows: list[dict[str, Any]], path: str) -> None:
    """Cosine against objective evaluations, one panel per (suite, block), one line per option
    (mean over seeds); the dotted line is AdamW + gauss at 300 evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["suite"], r["block"])].append(r)
    keys = sorted(groups)
    cols = 4
    fig, axes = plt.subplots((len(keys) + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((len(keys) + cols - 1) // cols)), squeeze=False)
    names = sorted({r["option"] for r in rows})
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    for ax, key in zip(axes.flat, keys):
        by_option: dict[str, list[list[float]]] = defaultdict(list)
        for r in groups[key]:
            by_option[r["option"]].append(r["curve"])
        for name, curves in by_option.items():
            n = min(len(c) for c in curves)
            ax.plot(range(1, n + 1), [_mean([c[k] for c in curves]) for k in range(n)], color=colours[name], label=name, lw=1.2)
        ref = [r["curve"][299] for r in groups[key] if r["optimizer"] == "adamw" and r["anchor_init"] == "gauss" and len(r["curve"]) >= 300]
        if ref:
            ax.axhline(_mean(ref), color="k", ls=":", lw=0.8)
        ax.set(title=f"{key[0]} block {key[1]}", xlabel="objective evaluations", ylabel="mean cos(∇, τ)", xscale="log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles = {lab: h for ax in axes.flat for h, lab in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=["minitext", "minivision"])
    p.add_argument("--paper-shaped", choices=["vitb32", "bertbase"])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--work", help="the suite's work dir (default work/SUITE)")
    p.add_argument("--blocks", type=int, nargs="*", help="default: every block")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n-anchors", type=int, help="default: the suite's config (paper-shaped: 16)")
    p.add_argument("--experts", type=int, help="paper-shaped: random experts (default 2); suite: the first N experts, "
                   "cosines only (default: all, with accuracies)")
    p.add_argument("--options", type=parse_option, nargs="+", default=[parse_option(o) for o in DEFAULT_OPTIONS])
    p.add_argument("--out", default="benchmarks/results/construction.jsonl")
    p.add_argument("--report", metavar="JSONL", help="print the Markdown report of a results file and exit")
    p.add_argument("--gap", metavar="JSONL", help="print the gap-to-the-paper's-budget report of a long run's file and exit")
    p.add_argument("--check-run", metavar="WORK", help="with --report: instead compare the anchors a workflow run built under "
                   "WORK (e.g. work) with AdamW + gauss at 50 and 300 evaluations")
    p.add_argument("--figure", metavar="PNG", help="with --report: also plot cosine against evaluations here")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.gap:
        print(gap_report(read_rows(args.gap)), end="")
        return 0
    if args.report and args.check_run:
        print(run_check(read_rows(args.report), args.check_run), end="")
        return 0
    if args.report:
        print(report(read_rows(args.report)), end="")
        if args.figure:
            figure(read_rows(args.report), args.figure)
        return 0
    if bool(args.suite) == bool(args.paper_shaped):
        p.error("give exactly one of --suite, --paper-shaped (or --report)")
    if args.threads:
        torch.set_num_threads(args.threads)
    # resume: what the file already holds is skipped (one file per setting, e.g. per anchor count)
    done = {(r["suite"], r["block"], r["seed"], r["option"], r["n_anchors"], r["experts"]) for r in read_rows(args.out)}
    (paper_shaped_runs if args.paper_shaped else suite_runs)(args, args.options, done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
