"""FDA construction speed: this library against a plain re-statement of the official loop.

For a ViT-B/32-shaped open_clip block (64 anchors x 50 tokens x 768) and a BERT-base-shaped layer
(64 x 5 x 768), random weights and random task vectors, it measures

* seconds per construction step: the official-style loop (one expert, both blocks' parameters
  requiring grad, closure-driven AdamW, ``loss.backward()``), ``fda`` with one expert, and ``fda``
  with ``--experts`` experts batched in one computation;
* expert-steps per second and the speed-up per expert-step over the reference;
* achieved FLOP/s (FLOPs of one step counted with ``torch.utils.flop_counter``) against the
  machine's measured dense matmul FLOP/s (a 2048² fp32 matmul in the same run);
* peak memory (process RSS; CUDA peak allocation on GPU);
* that the anchors equal the reference's after a few steps (max relative difference).

Markdown to stdout, JSON to ``--out``. Example (the full run, a few minutes on a laptop CPU):

    python benchmarks/bench_fda.py --steps 5 --experts 8 --out bench_fda.json

``--tiny`` shrinks every shape for a smoke test.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fda.anchors import construct_anchors  # noqa: E402
from fda.blocks import adapter_for, double_backward_context  # noqa: E402

# ------------------------------------------------------------------------------------------------
# blocks


class ResidualAttentionBlock(nn.Module):
    """open_clip's block (pre-LN, sequence-first ``nn.MultiheadAttention``, GELU MLP)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * d, d))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class VisualTower(nn.Module):
    """One-block open_clip ``VisionTransformer`` stand-in (the adapter needs only the structure)."""

    def __init__(self, d: int, heads: int, tokens: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(tokens, d))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([ResidualAttentionBlock(d, heads)])


def build(family: str, tiny: bool, width: int | None = None) -> tuple[nn.Module, int, int]:
    """(model with one block, anchors n, tokens T). ``width`` overrides d (heads = d / 64)."""
    d, heads, n = (64, 4, 8) if tiny else (768, 12, 64)
    if width:
        d, heads = width, max(1, width // 64)
    if family == "vitb32":
        tokens = 10 if tiny else 50
        return VisualTower(d, heads, tokens).eval(), n, tokens
    if family == "bertbase":
        from transformers import BertConfig, BertModel

        cfg = BertConfig(hidden_size=d, num_attention_heads=heads, intermediate_size=4 * d, num_hidden_layers=1, vocab_size=8)
        return BertModel(cfg).eval(), n, 5
    raise ValueError(family)


# ------------------------------------------------------------------------------------------------
# the reference: the official per-expert loop, re-stated


def reference_construct(
    adapter, theta0: dict, theta_i: dict, x0: torch.Tensor, steps: int, lr: float, constant: frozenset = frozenset()
) -> torch.Tensor:
    """One expert, as the official code: two module copies with requires_grad parameters, X in the
    official layout, ``optimizer.step(closure)`` with ``loss.backward()``. Returns the best X in
    canonical layout. ``constant``: tensors whose 1 - cos is held at 1 (for the identity check
    with ``zero_grad="constant"``; the official code has none)."""
    pre = copy.deepcopy(adapter.block_module(0))
    fin = copy.deepcopy(adapter.block_module(0))
    pre.load_state_dict(theta0, strict=False)
    fin.load_state_dict(theta_i, strict=False)
    for m in (pre, fin):
        m.eval()
        m.requires_grad_(True)  # as the official code: both blocks' parameters require grad
    seq_first = adapter.official_layout == "TND"
    X = (x0.transpose(0, 1) if seq_first else x0).clone().requires_grad_(True)
    names = [n for n, _ in pre.named_parameters()]
    taus = [theta_i[n] - theta0[n] for n in names]
    opt = torch.optim.AdamW([X], lr=lr)
    best = {"loss": float("inf"), "x": X.detach().clone()}

    def call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = module(x) if seq_first else module(x, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out

    def closure() -> torch.Tensor:
        opt.zero_grad()
        o0, oi = call(pre, X), call(fin, X)
        if seq_first:
            o0, oi = o0.transpose(0, 1), oi.transpose(0, 1)
        S = F.cosine_similarity(o0.reshape(o0.shape[0], -1), oi.reshape(oi.shape[0], -1), dim=-1).mean()
        grads = torch.autograd.grad(S, list(pre.parameters()), create_graph=True)
        loss = sum(
            1 - (0 if n in constant else F.cosine_similarity(g.reshape(-1), t.reshape(-1), dim=0)) for n, g, t in zip(names, grads, taus)
        )
        _ = sum((g.norm() - t.norm()) ** 2 for g, t in zip(grads, taus))  # logged only, as the official code
        loss.backward()
        if loss.item() < best["loss"]:
            best["loss"], best["x"] = loss.item(), X.detach().clone()
        return loss

    with double_backward_context():
        for _ in range(steps):
            opt.step(closure)
    return best["x"].transpose(0, 1) if seq_first else best["x"]


# ------------------------------------------------------------------------------------------------
# measurement helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    return timed_both(fn, device)[0]


def timed_both(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds). CPU time is steadier than wall time on a shared machine."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def matmul_flops(device: torch.device, size: int = 2048, reps: int = 5) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * size**3 / best


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------------
# one family


def bench_family(family: str, args: argparse.Namespace, device: torch.device, peak: float) -> list[dict]:
    torch.manual_seed(0)
    model, n, tokens = build(family, args.tiny, args.width)
    model.to(device)
    ad = adapter_for(model)
    theta0 = {k: v.detach() for k, v in ad.block_module(0).named_parameters()}
    gen = torch.Generator().manual_seed(1)
    experts = [
        {k: v + 0.01 * v.abs().mean() * torch.randn(v.shape, generator=gen).to(device) for k, v in theta0.items()}
        for _ in range(args.experts)
    ]
    shape = ad.anchor_shape(n, tokens)
    init = torch.randn((args.experts, *shape), generator=gen).to(device) * 0.01
    kw = dict(lr=1e-2, similarity_kind="cos", progress=False, batching=args.batching)

    def ours(E: int, steps: int, zero_grad: str = "keep"):
        return construct_anchors(ad, 0, theta0, experts[:E], init[:E], steps=steps, zero_grad=zero_grad, **kw)

    rows = []
    # correctness first: the same anchors as the reference after a few steps. Tensors with an
    # identically zero gradient (BERT's key bias) put round-off into the official objective, which
    # Adam amplifies; the check therefore holds them constant on both sides.
    check_steps = min(args.steps, 3)
    constant = frozenset(ad.zero_gradient_names(0))
    ref_x = reference_construct(ad, theta0, experts[0], init[0], check_steps, 1e-2, constant)
    our_x = ours(1, check_steps, "constant")[0].anchors
    rel_diff = float((ref_x - our_x).abs().max() / ref_x.abs().max())

    flops_ours = count_flops(lambda: ours(1, 1))
    flops_ref = count_flops(lambda: reference_construct(ad, theta0, experts[0], init[0], 1, 1e-2))

    def record(impl: str, E: int, seconds: tuple[float, float], flops_per_expert_step: int) -> None:
        per_step, cpu_per_step = seconds[0] / args.steps, seconds[1] / args.steps
        rows.append(
            dict(family=family, impl=impl, experts=E, anchors=list(shape), s_per_step=per_step, cpu_s_per_step=cpu_per_step,
                 expert_steps_per_s=E / per_step, flops_per_expert_step=flops_per_expert_step,
                 achieved_flops=flops_per_expert_step * E / per_step, peak_fraction=flops_per_expert_step * E / per_step / peak,
                 peak_mem_mb=peak_mem_mb(device), anchors_rel_diff_vs_reference=rel_diff if impl != "reference" else 0.0)  # fmt: skip
        )
        print(f"  {family} {impl} E={E}: {per_step:.3f} s/step", file=sys.stderr, flush=True)

    if not args.skip_reference:
        reference_construct(ad, theta0, experts[0], init[0], 1, 1e-2)  # warm-up
        record("reference", 1, timed_both(lambda: reference_construct(ad, theta0, experts[0], init[0], args.steps, 1e-2), device), flops_ref)
    ours(1, 1)
    record("fda", 1, timed_both(lambda: ours(1, args.steps), device), flops_ours)
    if args.experts > 1:
        ours(args.experts, 1)
        record("fda", args.experts, timed_both(lambda: ours(args.experts, args.steps), device), flops_ours)
    ref = next((r for r in rows if r["impl"] == "reference"), None)
    for r in rows:
        r["speedup_per_expert_step"] = r["expert_steps_per_s"] / ref["expert_steps_per_s"] if ref else None
        # the same from process CPU time (per expert-step), steadier on a shared machine
        r["cpu_speedup_per_expert_step"] = (ref["cpu_s_per_step"] / (r["cpu_s_per_step"] / r["experts"])) if ref else None
    return rows


def markdown(rows: list[dict], peak: float, meta: dict) -> str:
    out = [
        f"FDA construction speed ({meta['device']}, {meta['threads']} threads, torch {meta['torch']}); "
        f"matmul 2048² peak {peak / 1e9:.1f} GFLOP/s; {meta['steps']} timed steps",
        "",
        "| block | impl | experts | anchors | s/step | expert-steps/s | speed-up / expert-step | CPU-time speed-up | GFLOP/s | % of matmul | peak mem MB | anchors rel. diff vs ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sp = f"{r['speedup_per_expert_step']:.2f}x" if r["speedup_per_expert_step"] else "-"
        csp = f"{r['cpu_speedup_per_expert_step']:.2f}x" if r["cpu_speedup_per_expert_step"] else "-"
        out.append(
            f"| {r['family']} | {r['impl']} | {r['experts']} | {'x'.join(map(str, r['anchors']))} | {r['s_per_step']:.3f} | "
            f"{r['expert_steps_per_s']:.2f} | {sp} | {csp} | {r['achieved_flops'] / 1e9:.1f} | {100 * r['peak_fraction']:.0f}% | "
            f"{r['peak_mem_mb']:.0f} | {r['anchors_rel_diff_vs_reference']:.1e} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["vitb32", "bertbase", "all"], default="all")
    p.add_argument("--steps", type=int, default=5, help="timed construction steps per measurement (default 5)")
    p.add_argument("--experts", type=int, default=8, help="experts batched in one construction (default 8)")
    p.add_argument("--batching", choices=["auto", "vmap", "loop"], default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (d=64, n=8) for a smoke test")
    p.add_argument("--width", type=int, default=None, help="override the hidden width d (heads = d/64)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak = matmul_flops(device)
    families = ["vitb32", "bertbase"] if args.family == "all" else [args.family]
    rows = [r for fam in families for r in bench_family(fam, args, device, peak)]
    meta = dict(device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device), threads=torch.get_num_threads(),
                torch=torch.__version__, platform=platform.platform(), steps=args.steps, tiny=args.tiny, batching=args.batching,
                matmul_flops=peak)  # fmt: skip
    print(markdown(rows, peak, meta))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
