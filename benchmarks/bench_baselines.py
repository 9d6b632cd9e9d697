"""Speed and memory benchmark of the matrix baselines (TSV-M, WUDI, Iso-C, Iso-CTS) on CLIP ViT-B/32-shaped inputs.

Builds θ0 with the open_clip ViT-B/32 visual-tower keys and shapes (12 blocks, d=768, ≈88M
parameters) and T lazy experts θ0 + τ_i (low rank + noise, regenerated per tensor on access, so
the experts cost no memory: this is the streaming set-up a lazy safetensors reader gives). Each
method runs in its own child process so that its peak RSS (getrusage ru_maxrss) is its own.
Also times WUDI's direct (autograd) form against the Gram form per Adam step on one block. The
machine's 1-minute load average before and after each merge is recorded: on a shared machine a
busy CPU (and, with more torch threads than free cores, OpenMP contention) slows SVDs many times.

    python benchmarks/bench_baselines.py --blocks 1 --out /tmp/bench.json          # quick check
    python benchmarks/bench_baselines.py --out results/bench_baselines.json        # full size
    python benchmarks/bench_baselines.py --methods tsvm,isoc,isocts --no-forms     # a subset

Prints a Markdown table and writes JSON to --out. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import baselines  # noqa: E402
from baselines import synthetic  # noqa: E402
from baselines.inputs import validate  # noqa: E402
from baselines.wudi import gram_adam, gram_terms, wudi_solve  # noqa: E402

# Task vectors at the scale of CLIP fine-tunes (mean |τ| ~ 1e-4..1e-3) on θ0 ~ N(0, 0.02²).
TAU = {"rank": 16, "scale": 2e-3, "noise": 2e-4}
BLOCK_MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def maxrss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def build(blocks: int, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
    # text=False: the zero text leftovers would be skipped by every method anyway (zero in, zero out)
    shapes = synthetic.openclip_vit_shapes(blocks=blocks, text=False)
    return synthetic.pretrained(shapes, seed=seed, dtype=torch.float32, std=0.02), shapes


# --------------------------------------------------------------------------------------------
# Child processes


def child_merge(args: argparse.Namespace) -> dict:
    rss_import = maxrss_mib()
    pre, shapes = build(args.blocks, args.seed)
    experts = [synthetic.SyntheticExpert(pre, i, seed=args.seed, **TAU) for i in range(args.experts)]
    model_mib = sum(t.numel() * t.element_size() for t in pre.values()) / 2**20
    rss_inputs = maxrss_mib()
    hp = {"steps": args.wudi_steps} if args.method == "wudi" else {}
    plan = baselines.coverage_plan(args.method, pre, **hp)
    key_times: dict[str, float] = {}
    last = [time.perf_counter()]

    def progress(done: int, total: int, key: str) -> None:
        now = time.perf_counter()
        key_times[key] = now - last[0]
        last[0] = now

    # merge() reads every expert tensor once to validate it before merging: time that part alone
    t0 = time.perf_counter()
    validate(pre, experts)
    validate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    last[0] = t0 + validate_s  # the first key's time starts after merge()'s own validation
    out = baselines.merge(args.method, pre, experts, progress=progress, **hp)
    wall = time.perf_counter() - t0
    assert all(torch.isfinite(t).all() for t in out.values())
    slowest = sorted(key_times.items(), key=lambda kv: -kv[1])[:4]
    return {
        "method": args.method,
        "hparams": hp,
        "blocks": args.blocks,
        "experts": args.experts,
        "params": sum(t.numel() for t in pre.values()),
        "keys": len(pre),
        "keys_merged": sum(r is baselines.Role.MERGE for r in plan.values()),
        "seconds": wall,
        "validate_seconds": validate_s,
        "seconds_per_block_matrices": {
            m: sum(v for k, v in key_times.items() if k.endswith(m)) / max(args.blocks, 1) for m in BLOCK_MATRICES
        },
        "slowest_keys": slowest,
        "model_mib": model_mib,
        "rss_after_import_mib": rss_import,
        "rss_after_inputs_mib": rss_inputs,
        "peak_rss_mib": maxrss_mib(),
        "peak_over_import_in_models": (maxrss_mib() - rss_import) / model_mib,
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def child_wudiforms(args: argparse.Namespace) -> dict:
    """Seconds per Adam step, direct vs Gram, on the 4 matrices of one ViT-B/32 block (float32)."""
    shapes = synthetic.openclip_vit_shapes(blocks=1, text=False)
    rows = []
    for name in BLOCK_MATRICES:
        key = f"model.visual.transformer.resblocks.0.{name}"
        taus = [synthetic.task_vector(key, shapes[key], i, seed=args.seed, dtype=torch.float32, **TAU) for i in range(args.experts)]
        init = torch.stack(taus).sum(0)
        terms: list = []
        pre_s = _timed(lambda: terms.append(gram_terms(init, taus)))
        a, c0 = terms[0]
        n = args.gram_steps
        gram_s = min(_timed(lambda: gram_adam(init, a, c0, n, 1e-5)) for _ in range(2)) / n
        del a, c0, terms
        d = args.direct_steps
        direct_s = _timed(lambda: wudi_solve(taus, steps=d, form="direct")) / d
        m, k = shapes[key]
        rows.append({
            "matrix": name,
            "shape": [m, k],
            "direct_s_per_step": direct_s,
            "gram_s_per_step": gram_s,
            "gram_precompute_s": pre_s,
            "speedup_per_step": direct_s / gram_s,
            "speedup_300_steps": 300 * direct_s / (pre_s + 300 * gram_s),
            "direct_gflop_per_step": 4 * args.experts * m * m * k / 1e9,
            "gram_gflop_per_step": 2 * m * k * k / 1e9,
            "gram_precompute_gflop": args.experts * (2 * m * k * k + min(2 * m * k * k, 4 * m * m * k)) / 1e9,
        })
    tot_d = sum(r["direct_s_per_step"] for r in rows)
    tot_g = sum(r["gram_s_per_step"] for r in rows)
    tot_p = sum(r["gram_precompute_s"] for r in rows)
    return {
        "experts": args.experts,
        "matrices": rows,
        "block_speedup_per_step": tot_d / tot_g,
        "block_speedup_300_steps": 300 * tot_d / (tot_p + 300 * tot_g),
        "block_direct_s_300_steps": 300 * tot_d,
        "block_gram_s_300_steps": tot_p + 300 * tot_g,
    }


# --------------------------------------------------------------------------------------------
# Parent


def run_child(kind: str, args: argparse.Namespace, method: str = "") -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--method", method or "none", "--blocks", str(args.blocks),
           "--experts", str(args.experts), "--seed", str(args.seed), "--wudi-steps", str(args.wudi_steps),
           "--gram-steps", str(args.gram_steps), "--direct-steps", str(args.direct_steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {kind} {method} failed:\n{proc.stderr}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_before": load_before, "load_after": os.getloadavg()[0]}


def markdown(report: dict) -> str:
    lines = ["| method | blocks | experts | params (M) | keys merged | seconds (of which input checks) | peak RSS (MiB) | one model (MiB) "
             "| (peak − import) / model | load avg before → after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["merges"]:
        load = f"{r['load_before']:.1f} → {r['load_after']:.1f}" if "load_before" in r else "–"
        lines.append(
            f"| {r['method']} | {r['blocks']} | {r['experts']} | {r['params'] / 1e6:.1f} | {r['keys_merged']} | {r['seconds']:.1f} ({r['validate_seconds']:.1f}) "
            f"| {r['peak_rss_mib']:.0f} | {r['model_mib']:.0f} | {r['peak_over_import_in_models']:.2f} | {load} |"
        )
    w = report.get("wudi_forms")
    if w:
        lines += ["", f"WUDI per Adam step on one ViT-B/32 block (T={w['experts']}, float32):", "",
                  "| matrix | shape | direct s/step | Gram s/step | speed-up/step | Gram precompute s | speed-up over 300 steps |",
                  "|---|---|---|---|---|---|---|"]
        for r in w["matrices"]:
            lines.append(
                f"| {r['matrix']} | {r['shape'][0]}×{r['shape'][1]} | {r['direct_s_per_step']:.3f} | {r['gram_s_per_step']:.4f} "
                f"| {r['speedup_per_step']:.1f}× | {r['gram_precompute_s']:.2f} | {r['speedup_300_steps']:.1f}× |"
            )
        lines.append(f"| **block** | | | | **{w['block_speedup_per_step']:.1f}×** | | **{w['block_speedup_300_steps']:.1f}×** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=12, help="residual blocks of the ViT-B/32 tower (12 = full size)")
    ap.add_argument("--experts", type=int, default=8, help="number of experts T")
    ap.add_argument("--methods", default="tsvm,wudi,isoc,isocts", help="comma-separated methods to time (any registered method)")
    ap.add_argument("--wudi-steps", type=int, default=300, help="WUDI Adam steps in the merge run")
    ap.add_argument("--gram-steps", type=int, default=10, help="Gram-form steps timed per matrix")
    ap.add_argument("--direct-steps", type=int, default=2, help="direct-form steps timed per matrix (each is slow)")
    ap.add_argument("--no-forms", action="store_true", help="skip the WUDI direct-vs-Gram comparison")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the children (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the JSON report here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        if args.threads:
            torch.set_num_threads(args.threads)
        result = child_merge(args) if args.child == "merge" else child_wudiforms(args)
        print(json.dumps(result))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        baselines.method_spec(m)  # fail fast on a typo, listing the valid names
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("child", "method", "out")},
        "task_vectors": TAU,
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
        },
        "merges": [],
    }
    for m in methods:
        print(f"running {m} ...", file=sys.stderr, flush=True)
        report["merges"].append(run_child("merge", args, m))
    if not args.no_forms:
        print("timing WUDI direct vs Gram ...", file=sys.stderr, flush=True)
        report["wudi_forms"] = run_child("wudiforms", args)
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
