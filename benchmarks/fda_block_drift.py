"""Where FDA's adaptation helps and where it hurts, block by block (#18): how far adaptation
moves each block's outputs towards each expert on the anchors it trained on, and on real
inputs of that expert's task.

For block b, expert (task) t, and inputs X (the anchors of (b, t), or the hidden states that
enter block b when the FDA-merged model reads task t's images):

    gap closed = 1 - |f_fda(X) - f_t(X)|^2 / |f_init(X) - f_t(X)|^2

where f_fda, f_init and f_t are block b with the FDA-adapted, the init's and expert t's
tensors. 1: the adapted block reproduces the expert on X; 0: no closer than its init; < 0:
further away than its init. Anchors are what adaptation optimises, so their gap closed is high by
construction; the question is whether real inputs follow. The same inputs feed all three
blocks, so each number isolates one block.

Reads a finished run's work directory (minivision: no padding, so block inputs are exact):

    python benchmarks/fda_block_drift.py --work work/minivision --eseed 0 --seed 0 \\
        --init ta --anchor-init gauss --split validation --out benchmarks/results/drift.md

``--model`` reads another FDA model of the same (init, anchor init, seeds) instead of the fixed
one, e.g. a snapshot of the validated protocol's grid (``.../select/{init}-{anchor init}/
scale{k}/epochs{E}.safetensors``), so the drift can be compared across learning rates and epochs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from fda.api import load_anchors
from fda.blocks import adapter_for
from fda.bench.suites import get_suite
from fda.bench.suites.common import load_split
from fda.bench.suites.minivision import _to_pixels  # the suite's own pixel mapping
from fda.io.checkpoints import load_state_dict


def block_params(adapter, state: dict[str, torch.Tensor], block: int) -> dict[str, torch.Tensor]:
    """Block ``block``'s tensors by local name, from a full state dict."""
    prefix = adapter.block_prefix(block)
    return {k: state[prefix + k].float() for k in adapter.param_names(block)}


def gap_closed(adapter, block: int, x: torch.Tensor, fda: dict, init: dict, expert: dict) -> tuple[float, float]:
    """(gap closed, |f_fda - f_init| / |f_init - f_t|) on inputs ``x`` [n, T, d]."""
    with torch.no_grad():
        y_fda, y_init, y_exp = (adapter.call(block, p, x) for p in (fda, init, expert))
    gap = float(((y_init - y_exp) ** 2).sum())
    if gap == 0.0:
        return math.nan, math.nan
    return 1.0 - float(((y_fda - y_exp) ** 2).sum()) / gap, math.sqrt(float(((y_fda - y_init) ** 2).sum()) / gap)


def block_inputs(model, images: torch.Tensor) -> list[torch.Tensor]:
    """Hidden states entering each encoder layer [n, T, d] when ``model`` (eval mode) reads ``images``."""
    with torch.no_grad():
        hidden = model(pixel_values=_to_pixels(images), output_hidden_states=True).hidden_states
    return list(hidden[:-1])  # hidden[b]: the input of layer b (after the pre-layernorm)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="the suite's work directory, e.g. work/minivision")
    ap.add_argument("--settings", default="{}", help="the suite's settings (JSON), as the run's config")
    ap.add_argument("--eseed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", required=True)
    ap.add_argument("--anchor-init", required=True)
    ap.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    ap.add_argument("--limit", type=int, default=200, help="examples per task")
    ap.add_argument("--model", help="the FDA model to read (default: the run's fixed model, {init}-{anchor init}/merged.safetensors)")
    ap.add_argument("--anchors-dir", help="the anchors --model was adapted on (default: the run's, anchors/{anchor init})")
    ap.add_argument("--label", default="", help="what --model is, for the table's heading (e.g. 'lr x0.1, 50 epochs')")
    ap.add_argument("--out", help="Markdown table (default: stdout)")
    args = ap.parse_args()
    for flag, path in (("--model", args.model), ("--anchors-dir", args.anchors_dir)):
        if path and not Path(path).exists():  # before any model is read
            ap.error(f"{flag} {path}: no such file or directory")
    torch.manual_seed(0)

    work = Path(args.work)
    suite = get_suite("minivision", json.loads(args.settings))
    base = work / "base"
    model = suite.load_encoder(base)
    adapter = adapter_for(model)
    pre = load_state_dict(base)
    eseed = work / f"eseed{args.eseed}"
    if not eseed.is_dir() and args.eseed == 0:  # a run from before expert seeds: no eseed level
        eseed = work
    init = pre if args.init == "pretrained" else load_state_dict(eseed / "merged" / f"{args.init}.safetensors")
    run = eseed / "fda" / f"seed{args.seed}"
    fda_state = load_state_dict(args.model or run / f"{args.init}-{args.anchor_init}" / "merged.safetensors")
    anchors_dir = Path(args.anchors_dir) if args.anchors_dir else run / "anchors" / args.anchor_init
    tasks = suite.tasks
    blocks = range(adapter.num_blocks)

    model.load_state_dict(fda_state, strict=False)  # the FDA model produces the real block inputs
    model.eval()
    rows = []
    for task in tasks:
        expert = load_state_dict(eseed / "experts" / task)
        ds = load_split(work / "data", task, args.split).select(range(args.limit))
        images = torch.from_numpy(np.stack(ds.with_format("numpy")["image"]).astype(np.uint8))
        real = block_inputs(model, images)
        for b in blocks:
            p_fda, p_init, p_exp = (block_params(adapter, s, b) for s in (fda_state, init, expert))
            anchors = load_anchors(anchors_dir / f"block{b}" / f"{task}.safetensors")[0].float()
            on_anchors = gap_closed(adapter, b, anchors, p_fda, p_init, p_exp)
            on_real = gap_closed(adapter, b, real[b], p_fda, p_init, p_exp)
            rows.append((task, b, *on_anchors, *on_real))

    which = f", {args.label}" if args.label else ("" if not args.model else f", {args.model}")
    head = (f"FDA ({args.init}, {args.anchor_init}{which}), expert seed {args.eseed}, FDA seed {args.seed}, "
            f"{args.limit} {args.split} images per task. Gap closed towards the task's expert "
            "(1: reproduces it, 0: no closer than the init, <0: further); moved: |f_fda - f_init| / |f_init - f_expert|.\n\n"
            "| task | block | gap closed (anchors) | moved (anchors) | gap closed (real) | moved (real) |\n|---|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {t} | {b} | {ga:+.3f} | {ma:.3f} | {gr:+.3f} | {mr:.3f} |\n" for t, b, ga, ma, gr, mr in rows)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    blocks_seen = sorted({b for _, b, *_ in rows})
    per_block = ", ".join(f"block {b} {mean([gr for _, bb, _, _, gr, _ in rows if bb == b]):+.2f}" for b in blocks_seen)
    foot = (f"\nMean over tasks and blocks: gap closed {mean([r[2] for r in rows]):+.2f} on the anchors, "
            f"{mean([r[4] for r in rows]):+.2f} on real inputs (moved {mean([r[5] for r in rows]):.2f}); "
            f"{sum(r[4] < 0 for r in rows)} of {len(rows)} (task, block) pairs end further from the expert on real "
            f"inputs than the init. Real inputs per block: {per_block}.\n")
    text = head + body + foot
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
