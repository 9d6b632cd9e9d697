"""What the scaled-down FDA settings of an embedded suite cost, measured on one block.

The default run cannot afford the paper's construction (64 anchors x 1200 steps for every block,
expert and anchor init) on a 2-core CPU, so config/config.yaml uses fewer anchors and steps. This
benchmark shows what that reduction gives up on one block of a suite the workflow has already
built (``work/{suite}``: base, experts, baseline merges):

* one long construction per anchor count (AdamW has no schedule, so the best anchors after ``s``
  steps of the long run are exactly what an ``s``-step run returns: ``snapshot_steps``);
* for each step budget ``s``: the induced-gradient cosine of the anchors (mean over the block's
  alignable tensors and the experts, at the best step within the budget) and the accuracy of the
  merged model when only this block is adapted on those anchors (the other blocks keep the
  init's values), averaged over the suite's tasks, for each init;
* ``s = 0`` is the *unconstructed anchors* control: adaptation on the initial gauss / weight-row
  anchors. The gap to it is what construction contributes.

Adaptation uses the suite's settings from the workflow config (``fda.hparams`` + ``per_init``).
Markdown to stdout and ``--md``, JSON to ``--out``. Example (about 15 minutes on 2 cores)::

    snakemake --cores 2 results/minivision_ta.csv          # base, experts, TA merge
    python benchmarks/bench_reduction.py --suite minivision --block 1 --n-anchors 32 64 \\
        --steps 400 --budgets 0 25 50 100 200 400 --inits pretrained ta
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fda  # noqa: E402
from fda.bench.config import load as cfg_load  # noqa: E402
from fda.bench.config import naming as cfg_names  # noqa: E402
from fda.bench.config import suite_views as cfg_views  # noqa: E402
from fda.io.checkpoints import load_state_dict  # noqa: E402
from fda.bench.suites import get_suite  # noqa: E402


def budget_cosine(result: fda.ConstructResult, budget: int) -> float:
    """Mean alignable cosine of the anchors a ``budget``-step run returns (best loss so far)."""
    losses = result.log.loss[: max(budget, 1)]
    return float(result.log.mean_cos()[int(torch.argmin(losses))])


def with_block(state: dict[str, torch.Tensor], block_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with one block's tensors replaced (the other blocks keep the init's values)."""
    out = dict(state)
    out.update({k: v.to(out[k].dtype) for k, v in block_tensors.items()})
    return out


class Scorer:
    """Mean accuracy over the suite's tasks, each with its expert's head (as the workflow scores)."""

    def __init__(self, suite, work: Path, tasks: list[str]):  # noqa: ANN001 - fda.bench.suites.Suite
        self.suite, self.work, self.tasks = suite, work, tasks

    def __call__(self, state: dict[str, torch.Tensor]) -> float:
        accs = []
        for task in self.tasks:
            rows = self.suite.evaluate(state, task, self.work / "base", self.work / "data", self.work / "experts" / task)
            accs.append(next(r["value"] for r in rows if r["metric"] == "accuracy"))
        return 100.0 * sum(accs) / len(accs)


@dataclass
class BuiltSuite:
    """What the workflow built for a suite under ``work/{suite}``, loaded: the config section,
    the encoder skeleton, θ0, the experts (in task order), the baseline merges asked for
    (``inits``; ``pretrained`` is θ0) and a :class:`Scorer`."""

    config: dict[str, Any]
    section: dict[str, Any]
    tasks: list[str]
    model: torch.nn.Module
    pre: dict[str, torch.Tensor]
    experts: list[dict[str, torch.Tensor]]
    inits: dict[str, dict[str, torch.Tensor]]
    score: Scorer


def load_built_suite(config_path: str, name: str, work: str | None, inits: list[str]) -> BuiltSuite:
    config = cfg_load.load_config([config_path])
    section = cfg_views.effective_suite(config, name)
    tasks = list(section["tasks"])
    root = Path(work or f"work/{name}")
    suite = get_suite(name, cfg_views.suite_settings_for(config, name))
    pre = load_state_dict(root / "base")
    states = {i: (pre if i == "pretrained" else load_state_dict(root / "merged" / f"{i}.safetensors")) for i in inits}
    return BuiltSuite(config, section, tasks, suite.load_encoder(root / "base"), pre,
                      [load_state_dict(root / "experts" / t) for t in tasks], states, Scorer(suite, root, tasks))


def run(args: argparse.Namespace) -> dict[str, Any]:
    b = load_built_suite(args.config, args.suite, args.work, args.inits)
    section, model, pre, experts, inits, score = b.section, b.model, b.pre, b.experts, b.inits, b.score
    report: dict[str, Any] = {"suite": args.suite, "block": args.block, "anchor_init": args.anchor_init,
                              "steps": args.steps, "budgets": args.budgets, "tasks": b.tasks,
                              "init_accuracy": {i: score(s) for i, s in inits.items()}, "runs": [],
                              "adapt_settings": {i: cfg_names.fda_hparams(section, i) for i in inits}}
    layout = cfg_views.merge_layout(b.config, args.suite)  # as the workflow's construction jobs
    for n in args.n_anchors:
        cfg = fda.FDAConfig.for_family(section["family"], **{**cfg_names.fda_hparams(section), "n_anchors": n,
                                                              "construct_steps": args.steps, "progress": False,
                                                              "sv_every": 0, "qkv_layout": layout})
        t0 = time.perf_counter()
        built = fda.construct_block(model, pre, experts, args.block, args.anchor_init, cfg, snapshot_steps=args.budgets)
        seconds = time.perf_counter() - t0
        print(f"[bench] n={n}: construction of {len(experts)} experts x {args.steps} steps took {seconds:.0f} s",
              file=sys.stderr, flush=True)
        for s in args.budgets:
            row: dict[str, Any] = {"n_anchors": n, "budget": s,
                                   "cos": sum(budget_cosine(r, s) for r in built) / len(built),
                                   "construct_s_per_expert_step": seconds / (len(experts) * args.steps)}
            anchors = [r.budget_anchors[s] for r in built]
            for init, init_state in inits.items():
                acfg = fda.FDAConfig.for_family(section["family"], init=init,
                                                **{**cfg_names.fda_hparams(section, init), "n_anchors": n, "progress": False})
                adapted = fda.adapt_block(model, pre, experts, args.block, anchors, init, init_state, acfg)
                row[f"acc_{init}"] = score(with_block(init_state, adapted.params))
            report["runs"].append(row)
            print(f"[bench] {row}", file=sys.stderr, flush=True)
    return report


def markdown(report: dict[str, Any]) -> str:
    inits = list(report["init_accuracy"])
    head = ["anchors", "steps", "grad cos"] + [f"acc ({i} + block {report['block']} adapted)" for i in inits]
    lines = [
        f"### {report['suite']}, block {report['block']}, {report['anchor_init']} anchors "
        f"({len(report['tasks'])} tasks, one construction of {report['steps']} steps per anchor count)",
        "",
        "Accuracy without adapting the block: " + ", ".join(f"{i} {a:.1f}" for i, a in report["init_accuracy"].items()) + ".",
        "Steps 0 = the unconstructed anchors (control).",
        "Adaptation settings (config overrides per init): "
        + "; ".join(f"{i}: {json.dumps(h, sort_keys=True)}" for i, h in report.get("adapt_settings", {}).items()) + ".",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
    ]
    for r in report["runs"]:
        cells = [str(r["n_anchors"]), str(r["budget"]), f"{r['cos']:.3f}"] + [f"{r[f'acc_{i}']:.1f}" for i in inits]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", required=True, choices=["minitext", "minivision"])
    p.add_argument("--config", default="config/config.yaml", help="workflow config (adaptation settings)")
    p.add_argument("--work", help="the suite's work dir (default work/SUITE)")
    p.add_argument("--block", type=int, default=1)
    p.add_argument("--anchor-init", default="gauss", choices=["gauss", "weight"])
    p.add_argument("--n-anchors", type=int, nargs="+", default=[32, 64])
    p.add_argument("--steps", type=int, default=400, help="length of the long construction")
    p.add_argument("--budgets", type=int, nargs="+", default=[0, 25, 50, 100, 200, 400])
    p.add_argument("--inits", nargs="+", default=["pretrained", "ta"])
    p.add_argument("--out", help="JSON report")
    p.add_argument("--md", help="also write the Markdown table here")
    args = p.parse_args(argv)
    if max(args.budgets) > args.steps:
        p.error(f"--budgets must not exceed --steps {args.steps}")
    torch.manual_seed(0)
    publish(run(args), markdown, args.out, args.md)
    return 0


def publish(report: dict[str, Any], render: Any, out: str | None, md_path: str | None) -> None:
    """Add the machine to ``report``, print ``render(report)`` (Markdown) and write the JSON to
    ``out`` and the Markdown to ``md_path`` when given."""
    report["machine"] = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    md = render(report)
    print(md)
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    if md_path:
        Path(md_path).write_text(md)


if __name__ == "__main__":
    sys.exit(main())
