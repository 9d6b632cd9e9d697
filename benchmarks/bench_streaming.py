"""Peak host memory and time of the streaming merge vs. the in-memory merge, per model depth.

For each layer count, writes a synthetic Llama base and experts (sharded safetensors), then runs
each merge in a fresh interpreter that measures its own peak (see ``fda.io.synthetic.rss_probe``).
Prints a Markdown table; ``--out`` writes the rows as JSON (``--md`` the table as a file).

    python benchmarks/bench_streaming.py --layers 4 8 16 32 --out benchmarks/out/streaming.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fda.io.synthetic import make_merge_inputs, rss_probe  # noqa: E402


def run(layers: list[int], hidden: int, intermediate: int, experts: int, shard_size: str, modes: list[str], work: Path) -> list[dict]:
    rows = []
    for n in layers:
        base, exps, nbytes = make_merge_inputs(work / f"L{n}", n, hidden=hidden, intermediate=intermediate, experts=experts, shard_size="64MB")
        layer_bytes = 4 * 4 * hidden * hidden + 4 * 3 * hidden * intermediate + 2 * 4 * hidden
        for mode in modes:
            got = rss_probe(mode, base, exps, work / f"L{n}" / f"out-{mode}", shard_size=shard_size, repo_root=ROOT)
            rows.append({
                "layers": n, "mode": mode, "model_mb": round(nbytes / 2**20, 1), "layer_mb": round(layer_bytes / 2**20, 2),
                "inputs_mb": round((experts + 1) * nbytes / 2**20, 1), "merge_peak_mb": round(got["work_peak_mb"], 1),
                "sampled_peak_mb": round(got["sampled_peak_mb"], 1), "peak_rss_mb": round(got["peak_rss_mb"], 1),
                "maxrss_mb": round(got["maxrss_mb"], 1), "rss_after_imports_mb": round(got["rss_after_imports_mb"], 1),
                "seconds": round(got["seconds"], 2),
            })  # fmt: skip
            print(f"  layers={n} mode={mode}: merge peak {rows[-1]['merge_peak_mb']} MB, ru_maxrss {rows[-1]['maxrss_mb']} MB", file=sys.stderr)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    head = (f"Synthetic Llama, hidden {args.hidden}, MLP {args.intermediate}, {args.experts} experts, fp32, "
            f"output shard cap {args.shard_size}; TA merge. `merge peak` = peak RSS above the post-import RSS "
            f"(VmHWM reset after imports); `sampled` = the same from a 2 ms RSS sampler; `peak RSS` = absolute VmHWM "
            f"(incl. ~220 MB of imports). ru_maxrss is in the JSON only (it counts the import transient and the parent's RSS at fork).\n\n")
    lines = ["| layers | mode | model MB | inputs MB (base+experts) | merge peak MB | sampled MB | peak RSS MB | s |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['mode']} | {r['model_mb']} | {r['inputs_mb']} | {r['merge_peak_mb']} | {r['sampled_peak_mb']} | {r['peak_rss_mb']} | {r['seconds']} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=704)
    p.add_argument("--experts", type=int, default=2)
    p.add_argument("--shard-size", default="8MB", help="output shard cap of the streaming merge")
    p.add_argument("--modes", nargs="+", default=["stream", "inmemory"], choices=["stream", "inmemory", "headers"])
    p.add_argument("--work-dir", type=Path, default=None, help="where to write the synthetic checkpoints (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write rows + settings as JSON")
    p.add_argument("--md", type=Path, default=None, help="write the Markdown table to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        rows = run(args.layers, args.hidden, args.intermediate, args.experts, args.shard_size, args.modes, Path(tmp))
    md = markdown(rows, args)
    print(md)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"settings": settings, "machine": platform.platform(), "rows": rows}, indent=2) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
