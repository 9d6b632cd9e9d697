"""Does the q/k/v layout of FDA's construction loss change the merge? Measured on a built suite.

The construction loss sums one cosine per tensor, so storing attention q, k, v as one matrix
(open_clip's ``in_proj``, the official vision code) or as three (HF) gives different objectives
(``FDAConfig.qkv_layout``, docs/fda.md). The workflow runs every suite in one layout, so this
benchmark runs the whole FDA merge of a suite the workflow has already built (``work/{suite}``:
base, experts, baseline merges) once per layout, everything else as the workflow's settings:

* per layout: every block's anchors constructed once (shared by the inits, as in the workflow);
  the mean alignable gradient cosine at the best step is reported, but the two layouts' cosines
  are over different terms (12 vs 16 per CLIP block), so they are not comparable to each other;
* per (layout, init): all blocks adapted and assembled, then the mean accuracy over the tasks,
  with the same scorer as the workflow's evaluation.

With the layout the suite records (``split`` for the embedded suites) and the workflow's seed 0
the numbers are those of ``results/{suite}_{init}_fda.csv`` for that anchor init.
Markdown to stdout and ``--md``, JSON to ``--out``. Example (about 10 minutes on 2 cores)::

    snakemake --cores 2 results/minivision_ta.csv results/minivision_tsvm.csv results/minivision_wudi.csv
    python benchmarks/bench_qkv_layout.py --suite minivision --inits pretrained ta tsvm wudi
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fda  # noqa: E402
from bench_reduction import load_built_suite, publish  # noqa: E402
from fda.bench.config import naming as cfg_names  # noqa: E402
from fda.bench.config import suite_views as cfg_views  # noqa: E402


def best_cosine(result: fda.ConstructResult) -> float:
    """Mean alignable cosine at the step whose anchors were kept (-1: no steps, the initial ones)."""
    return float(result.log.mean_cos()[max(result.best_step, 0)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    b = load_built_suite(args.config, args.suite, args.work, args.inits)
    family, n_blocks = b.section["family"], b.section["fda"]["n_blocks"]
    report: dict[str, Any] = {"suite": args.suite, "anchor_init": args.anchor_init, "seed": args.seed, "tasks": b.tasks,
                              "recorded_layout": cfg_views.merge_layout(b.config, args.suite),
                              "init_accuracy": {i: b.score(s) for i, s in b.inits.items()},
                              "adapt_settings": {i: {k: v for k, v in cfg_names.fda_hparams(b.section, i).items() if k in cfg_names.ADAPT_FIELDS}
                                                 for i in b.inits}, "layouts": {}}
    for layout in args.layouts:
        cfg = fda.FDAConfig.for_family(family, **{**cfg_names.fda_hparams(b.section), "seed": args.seed,
                                                  "progress": False, "sv_every": 0, "qkv_layout": layout})
        t0 = time.perf_counter()
        anchors, cosines = [], []
        for block in range(n_blocks):
            built = fda.construct_block(b.model, b.pre, b.experts, block, args.anchor_init, cfg)
            anchors.append([r.anchors for r in built])
            cosines.append(sum(best_cosine(r) for r in built) / len(built))
        entry: dict[str, Any] = {"construct_s": time.perf_counter() - t0, "block_cos": cosines,
                                 "terms": len(built[0].log.param_names), "settings": built[0].settings, "accuracy": {}}
        print(f"[bench] {layout}: constructed {n_blocks} blocks in {entry['construct_s']:.0f} s, "
              f"cos {[round(c, 3) for c in cosines]}", file=sys.stderr, flush=True)
        for init, init_state in b.inits.items():
            acfg = fda.FDAConfig.for_family(family, init=init, **{**cfg_names.fda_hparams(b.section, init), "seed": args.seed,
                                                                  "progress": False, "qkv_layout": layout})
            start = None if init == "pretrained" else init_state
            adapted = [fda.adapt_block(b.model, b.pre, b.experts, block, anchors[block], init, start, acfg)
                       for block in range(n_blocks)]
            entry["accuracy"][init] = b.score(fda.assemble(b.pre, start, adapted, b.model, acfg))
            print(f"[bench] {layout} {init}: {entry['accuracy'][init]:.2f}", file=sys.stderr, flush=True)
        report["layouts"][layout] = entry
    return report


def markdown(report: dict[str, Any]) -> str:
    inits = list(report["init_accuracy"])
    layouts = report["layouts"]
    lines = [
        f"### {report['suite']}: FDA with the construction loss in each q/k/v layout "
        f"({report['anchor_init']} anchors, seed {report['seed']}, {len(report['tasks'])} tasks, "
        f"the suite records `{report['recorded_layout']}`)",
        "",
        "Mean accuracy over the tasks (%). The init row is the starting merge itself.",
        "",
        "| | " + " | ".join(inits) + " |",
        "|---|" + "---:|" * len(inits),
        "| init (no FDA) | " + " | ".join(f"{report['init_accuracy'][i]:.1f}" for i in inits) + " |",
    ]
    for layout, e in layouts.items():
        lines.append(f"| FDA, `{layout}` loss | " + " | ".join(f"{e['accuracy'][i]:.1f}" for i in inits) + " |")
    lines += ["", "| layout | loss terms per block | mean alignable cos per block (own terms) | construction s |",
              "|---|---:|---|---:|"]
    for layout, e in layouts.items():
        lines.append(f"| `{layout}` | {e['terms']} | {', '.join(f'{c:.3f}' for c in e['block_cos'])} | {e['construct_s']:.0f} |")
    first = next(iter(layouts.values()))["settings"]
    shown = ("n_anchors", "tokens", "construct_steps", "construct_lr", "sigma", "seed", "zero_grad")
    lines += ["", "Construction: " + ", ".join(f"{k} {first[k]}" for k in shown if k in first) + ". Adaptation, the suite's "
              "settings per init: " + "; ".join(f"{i}: {json.dumps(h, sort_keys=True)}" for i, h in report["adapt_settings"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", required=True)
    p.add_argument("--config", default="config/config.yaml", help="workflow config (the suite's FDA settings)")
    p.add_argument("--work", help="the suite's work dir (default work/SUITE)")
    p.add_argument("--anchor-init", default="gauss", choices=["gauss", "weight"])
    p.add_argument("--layouts", nargs="+", default=["split", "fused"], choices=["split", "fused"])
    p.add_argument("--inits", nargs="+", default=["pretrained", "ta"])
    p.add_argument("--seed", type=int, default=0, help="FDA seed (the workflow's first seed is 0)")
    p.add_argument("--out", help="JSON report")
    p.add_argument("--md", help="also write the Markdown table here")
    args = p.parse_args(argv)
    publish(run(args), markdown, args.out, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
