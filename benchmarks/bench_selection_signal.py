"""Choosing FDA's adaptation learning rate and epochs without task data (#18): the loss on
held-out anchors against validation accuracy.

For each (init, anchor init) of a finished run and each learning rate of a grid, every block is
adapted once on a part of its anchors with snapshots at every epoch of the grid
(``fda.adapt_block(..., snapshot_epochs, heldout_anchors)``: a snapshot is what a run of that many
epochs gives). Each (lr, epochs) point is then scored two ways:

- **held-out anchor gain** (no task data): per block, how much adaptation lowered the pooled loss
  on the held-out anchors, relative to its value before adaptation, ``(L_0 - L_e) / |L_0|``,
  averaged over blocks (higher is better; sign-safe for the cosine loss, which is negative);
- **validation accuracy** (task data, the validated protocol): the assembled model's mean accuracy
  over the suite's tasks on the validation split.

Each criterion picks its best point (ties: the first in grid order); the table reports both picks,
whether they agree, and the test accuracy of each pick and of the fixed setting (read only, never
used to choose). Holding anchors out changes what is trained on, so every model here adapts on
``1 - heldout`` of the anchors, the fixed-setting row included.

    python benchmarks/bench_selection_signal.py --work work/minivision --eseed 0 --seed 0 \\
        --inits pretrained ta tsvm --anchor-inits gauss weight --out benchmarks/results/selection_signal_minivision.md
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import numpy as np
import torch

import fda
from fda.bench.config.load import load_config
from fda.bench.config.naming import fda_hparams
from fda.bench.config.suite_views import effective_suite
from fda.bench.suites import get_suite
from fda.blocks import adapter_for
from fda.io.checkpoints import load_state_dict


def mean_accuracy(suite, state, tasks, work: Path, eseed_dir: Path, split: str) -> float:
    """Mean over tasks of the headline metric of ``state`` on ``split``."""
    rows = [suite.evaluate(state, t, work / "base", work / "data", eseed_dir / "experts" / t, split=split)[0] for t in tasks]
    return float(np.mean([r["value"] for r in rows]))


def first_best(scores: dict, better) -> tuple:
    """The first key (in insertion order) whose score is best under ``better(a, b)``: a beats b."""
    best = None
    for k, v in scores.items():
        if best is None or better(v, scores[best]):
            best = k
    return best


def run(args: argparse.Namespace) -> str:
    config = load_config([args.config], ["smoke=true"] if args.smoke else [])
    section = effective_suite(config, args.suite)
    suite = get_suite(args.suite, section["settings"])
    work = Path(args.work)
    eseed_dir = work / f"eseed{args.eseed}"
    if not eseed_dir.is_dir() and args.eseed == 0:  # a run from before expert seeds
        eseed_dir = work
    tasks = list(section["tasks"])
    model = suite.load_encoder(work / "base")
    adapter = adapter_for(model)
    pre = load_state_dict(work / "base")
    experts = [load_state_dict(eseed_dir / "experts" / t) for t in tasks]
    run_dir = eseed_dir / "fda" / f"seed{args.seed}"
    epochs = sorted(set(args.epochs))
    lines = []
    for init, anchor_init in itertools.product(args.inits, args.anchor_inits):
        hp = {**fda_hparams(section, init), "seed": args.seed, "progress": False, "qkv_layout": suite.qkv_layout}
        base_cfg = fda.FDAConfig.for_family(section["family"], init=init, **hp)
        init_state = pre if init == "pretrained" else load_state_dict(eseed_dir / "merged" / f"{init}.safetensors")
        fixed = (base_cfg.adapt_lr, base_cfg.adapt_epochs)
        val, sig, test = {}, {}, {}
        t0 = time.perf_counter()
        for factor in args.lr_factors:
            lr = base_cfg.adapt_lr * factor
            cfg = fda.FDAConfig.for_family(section["family"], init=init, **{**hp, "adapt_lr": lr, "adapt_epochs": max(epochs + [fixed[1]])})
            snaps: dict[int, dict] = {e: {} for e in epochs + [fixed[1]]}
            held_gain = {e: [] for e in snaps}
            for b in range(adapter.num_blocks):
                anchors = [fda.load_anchors(run_dir / "anchors" / anchor_init / f"block{b}" / f"{t}.safetensors")[0] for t in tasks]
                k = max(1, round(args.heldout * anchors[0].shape[0]))
                train, held = [a[:-k] for a in anchors], [a[-k:] for a in anchors]
                res = fda.adapt_block(model, pre, experts, b, train, init, init_state, cfg,
                                      snapshot_epochs=sorted(snaps), heldout_anchors=held)
                for e in snaps:
                    snaps[e].update(res.snapshots[e])
                    l0 = res.log.heldout_loss[0]
                    held_gain[e].append((l0 - res.log.heldout_loss[e]) / abs(l0))
            for e in sorted(snaps):
                merged = fda.assemble(pre, init_state, snaps[e], model, cfg)
                key = (factor, e)
                if e in epochs:
                    sig[key] = float(np.mean(held_gain[e]))
                    val[key] = mean_accuracy(suite, merged, tasks, work, eseed_dir, "validation")
                if e in epochs or (factor == 1.0 and e == fixed[1]):
                    test[key] = mean_accuracy(suite, merged, tasks, work, eseed_dir, "test")
        by_val = first_best(val, lambda a, b: a > b)
        by_sig = first_best(sig, lambda a, b: a > b)
        fixed_test = test.get((1.0, fixed[1]), math.nan)
        lines.append({"init": init, "anchor_init": anchor_init, "by_val": by_val, "by_sig": by_sig,
                      "agree": by_val == by_sig, "val_of_val": val[by_val], "val_of_sig": val[by_sig],
                      "test_of_val": test[by_val], "test_of_sig": test[by_sig], "test_fixed": fixed_test,
                      "seconds": time.perf_counter() - t0, "points": {f"{f}x lr, {e} ep": [val[(f, e)], sig[(f, e)]] for f, e in val}})
    return render(lines, args)


def render(lines: list[dict], args: argparse.Namespace) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    pick = lambda k: f"{k[0]:g}× lr, {k[1]} ep"  # noqa: E731
    head = (f"{args.suite}, expert seed {args.eseed}, FDA seed {args.seed}; {1 - args.heldout:.0%} of each (block, expert)'s "
            f"anchors trained on, {args.heldout:.0%} held out; lr factors {args.lr_factors} of the configured lr, epochs "
            f"{sorted(set(args.epochs))}. Accuracy in % (mean over tasks). Test columns are read after the choice, never used for it.\n\n"
            "| init | anchors | validation picks | held-out anchors pick | same | val acc (val pick / anchor pick) | "
            "test acc (val pick / anchor pick / fixed) | s |\n|---|---|---|---|---|---|---|---:|\n")
    body = "".join(
        f"| {r['init']} | {r['anchor_init']} | {pick(r['by_val'])} | {pick(r['by_sig'])} | {'yes' if r['agree'] else 'no'} | "
        f"{pct(r['val_of_val'])} / {pct(r['val_of_sig'])} | {pct(r['test_of_val'])} / {pct(r['test_of_sig'])} / {pct(r['test_fixed'])} | "
        f"{r['seconds']:.0f} |\n" for r in lines)
    agree = sum(r["agree"] for r in lines)
    lost = ", ".join(f"{100 * (r['test_of_val'] - r['test_of_sig']):+.1f}" for r in lines)
    foot = (f"\nThe two criteria pick the same point in {agree} of {len(lines)} cases. Test accuracy of the "
            f"validation pick minus the held-out-anchor pick, per line: {lost} points.\n")
    detail = "\n<details><summary>every point: validation accuracy, held-out anchor gain</summary>\n\n" + "".join(
        f"- {r['init']}, {r['anchor_init']}: " + "; ".join(f"{k}: {100 * v:.1f}% / {s:.3f}" for k, (v, s) in r["points"].items()) + "\n"
        for r in lines) + "\n</details>\n"
    return head + body + foot + detail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="minivision")
    ap.add_argument("--config", default="config/config.yaml", help="the run's config (FDA settings, tasks)")
    ap.add_argument("--smoke", action="store_true", help="the run used --config smoke=true")
    ap.add_argument("--work", required=True, help="the suite's work directory of a finished run, e.g. work/minivision")
    ap.add_argument("--eseed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inits", nargs="+", default=["pretrained", "ta", "tsvm"])
    ap.add_argument("--anchor-inits", nargs="+", default=["gauss", "weight"])
    ap.add_argument("--lr-factors", type=float, nargs="+", default=[0.1, 1.0, 10.0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[5, 15, 25, 50, 75, 100, 125],
                    help="the official code's suggested grid")
    ap.add_argument("--heldout", type=float, default=0.25, help="fraction of each (block, expert)'s anchors held out")
    ap.add_argument("--out", help="Markdown file (default: stdout)")
    args = ap.parse_args()
    if 1.0 not in args.lr_factors:
        ap.error("--lr-factors must include 1.0 (the configured lr: the fixed setting)")
    torch.manual_seed(0)
    text = run(args)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
