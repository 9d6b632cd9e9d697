"""Wall time and memory of a full FDA merge of paper-sized encoders, with random weights.

Builds an HF ``CLIPVisionModel`` shaped like CLIP ViT-B/32 (12 layers, width 768, 12 heads, MLP
3072, 224 px, patch 32: 50 tokens) and a ``RobertaModel`` shaped like RoBERTa-base (12 layers,
768, 12 heads, 3072), optionally ViT-B/16 (197 tokens), ViT-L/14 (24 layers, 1024, 16 heads,
4096, 257 tokens) and RoBERTa-large (24 layers, 1024), all with seeded random weights. The
experts are θ0 + τ_i with seeded random task vectors (low-rank or gaussian). It then runs the
library's own FDA path, block by block, exactly as ``fda.merge`` does (``fda.construct_block``,
``fda.adapt_block``, ``fda.assemble``), with the paper's settings from
``fda.FDAConfig.for_family`` unless overridden, and reports

* **measured**: seconds of construction and adaptation per block, of the assembly and of the
  whole timed merge; the rate per construction step and per adaptation epoch; peak memory per
  phase (CUDA: max allocated during the phase; CPU: the process's peak RSS so far);
* **extrapolated** (arithmetic on the measured rates, not measured): the merge over all blocks at
  the run's settings, one merge at the paper's settings, and one whole paper suite (every merge
  init and anchor init of config/paper.yaml).

Each block's construction and adaptation also run once with zero steps / epochs, untimed in the
merge total: that is their fixed cost (initial anchors, copying the block's tensors to the device;
adaptation targets and the pooled losses before and after), so the rate per step or epoch is
``(seconds - fixed seconds) / steps`` and a short run's fixed cost is not multiplied by the
paper's 1200 steps (for adaptation it is about one epoch's worth).

Markdown to stdout, JSON to ``--out``. On a GPU, the paper's settings for ViT-B/32 and
RoBERTa-base (every block, 1200 steps):

    python benchmarks/bench_fda_merge.py --device cuda --init ta --out bench_fda_merge.json

Quick rates on a CPU (1 block, 2 steps, 1 epoch; the rest extrapolated):

    python benchmarks/bench_fda_merge.py --device cpu --init ta --construct-steps 2 --adapt-epochs 1 --blocks 1

``--tiny`` shrinks every shape for a smoke test. On a CPU the peak RSS is per process and
monotonic: run one model per process for each model's own peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import fda  # noqa: E402
from fda.adapt import AdaptResult  # noqa: E402
from fda.blocks import BlockAdapter  # noqa: E402

StateDict = dict[str, torch.Tensor]
T = TypeVar("T")

#: every paper suite merges eight experts: eight vision tasks or eight GLUE tasks (docs/paper-suites.md)
PAPER_EXPERTS = 8
#: the FDA merges of one paper suite (config/paper.yaml, ``fda.inits`` x ``fda.anchor_inits``).
#: Anchors depend on the anchor init only, so the workflow constructs them once per anchor init and
#: every merge init adapts on them.
SUITE_INITS = ("pretrained", "ta", "tsvm", "wudi")
SUITE_ANCHOR_INITS = ("gauss", "weight")


# ------------------------------------------------------------------------------------------------
# models and experts


@dataclass(frozen=True)
class ModelSpec:
    """The shape of one encoder. ``kind``: ``clip`` (HF ``CLIPVisionModel``, ``(image/patch)² + 1``
    tokens per anchor) or ``roberta`` (HF ``RobertaModel``, 5 tokens per anchor, the FDA default).
    ``size`` selects ``FDAConfig.for_family``'s schedule (RoBERTa-large has its own)."""

    name: str
    label: str
    kind: str
    layers: int
    width: int
    heads: int
    mlp: int
    image: int = 224
    patch: int = 32
    vocab: int = 50265
    size: str = "base"

    @property
    def family(self) -> str:
        """The FDA adapter family of the HF model built from this spec."""
        return "clip-vision" if self.kind == "clip" else "roberta"


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("vitb32", "ViT-B/32", "clip", layers=12, width=768, heads=12, mlp=3072, patch=32),
        ModelSpec("vitb16", "ViT-B/16", "clip", layers=12, width=768, heads=12, mlp=3072, patch=16),
        ModelSpec("vitl14", "ViT-L/14", "clip", layers=24, width=1024, heads=16, mlp=4096, patch=14),
        ModelSpec("robertab", "RoBERTa-base", "roberta", layers=12, width=768, heads=12, mlp=3072),
        ModelSpec("robertal", "RoBERTa-large", "roberta", layers=24, width=1024, heads=16, mlp=4096, size="large"),
    )
}


def tiny_spec(spec: ModelSpec) -> ModelSpec:
    """The same architecture at smoke-test size: 2 layers, width 64, 10 image tokens, vocab 128."""
    return dataclasses.replace(spec, label=f"{spec.label} (tiny)", layers=2, width=64, heads=4, mlp=256, image=48, patch=16, vocab=128)


def build_model(spec: ModelSpec, seed: int) -> nn.Module:
    """The HF model of ``spec`` with seeded random weights, in eval mode, with eager attention as the
    paper suites load it (fda/bench/suites/clip_vision.py, glue.py)."""
    import transformers  # lazy: importing it takes seconds

    torch.manual_seed(seed)  # HF initialises the weights from the global RNG
    if spec.kind == "clip":
        cfg = transformers.CLIPVisionConfig(
            hidden_size=spec.width, intermediate_size=spec.mlp, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
            image_size=spec.image, patch_size=spec.patch, hidden_act="quick_gelu", attn_implementation="eager",
        )  # fmt: skip
        return transformers.CLIPVisionModel(cfg).eval()
    cfg = transformers.RobertaConfig(
        vocab_size=spec.vocab, hidden_size=spec.width, num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
        intermediate_size=spec.mlp, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, attn_implementation="eager",
    )  # fmt: skip
    return transformers.RobertaModel(cfg, add_pooling_layer=False).eval()  # the suites' encoder has no pooler


def task_vector(w: torch.Tensor, kind: str, rank: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """A random task vector shaped like ``w`` with root-mean-square ``scale`` x rms(w).

    ``lowrank``: a 2-D ``w`` [m, n] gets ``U @ V / sqrt(r)`` (U [m, r], V [r, n], unit-variance
    entries), the structure fine-tuning updates tend to have; 1-D tensors (biases, LayerNorm) and
    ``gaussian`` get i.i.d. N(0, 1) noise.
    """
    # HF initialises biases to zero: measured against rms(w) alone they would get τ = 0, whose
    # cosine FDA defines as 0, so a floor keeps every tensor in play
    ref = float(w.float().pow(2).mean().sqrt().clamp_min(1e-2))
    if kind == "lowrank" and w.ndim == 2:
        r = min(rank, *w.shape)
        noise = torch.randn(w.shape[0], r, generator=gen) @ torch.randn(r, w.shape[1], generator=gen) / math.sqrt(r)
    else:
        noise = torch.randn(w.shape, generator=gen)
    return (scale * ref * noise).to(w.dtype)


def block_keys(adapter: BlockAdapter) -> list[str]:
    """Full state-dict keys of every block tensor, in block order."""
    return [adapter.block_prefix(b) + name for b in range(adapter.num_blocks) for name in adapter.param_names(b)]


def make_experts(pretrained: StateDict, adapter: BlockAdapter, n: int, kind: str, rank: int, scale: float, seed: int) -> list[StateDict]:
    """``n`` expert state dicts: θ0 + τ_i on every block tensor.

    Tensors outside the blocks are θ0's own objects (shared, not copied): FDA never reads an
    expert's non-block tensors (``non_block="pretrained"`` takes them from θ0 for both families,
    and the TA init is rebuilt per block), so sharing saves memory, e.g. RoBERTa's 38.6M-parameter
    embedding per expert, without changing what is timed.
    """
    gen = torch.Generator().manual_seed(seed)
    keys = block_keys(adapter)
    experts = []
    for _ in range(n):
        expert = dict(pretrained)
        expert.update({k: pretrained[k] + task_vector(pretrained[k], kind, rank, scale, gen) for k in keys})
        experts.append(expert)
    return experts


# ------------------------------------------------------------------------------------------------
# measurement


def sync(device: torch.device) -> None:
    """Wait for queued CUDA kernels, so that clocks read after it include them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mem_mb(device: torch.device) -> float:
    """CUDA: max allocated since the last reset (:func:`measure` resets it per phase). CPU: the
    process's peak RSS so far (Linux ``ru_maxrss`` is in KiB); it cannot be reset, so it is
    monotonic over the run."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], T], device: torch.device) -> tuple[T, float, float]:
    """``(fn(), wall seconds, peak memory MiB)``; CUDA is synchronised before both clock reads."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start, peak_mem_mb(device)


def run_config(spec: ModelSpec, args: argparse.Namespace, device: torch.device) -> fda.FDAConfig:
    """The paper's settings for ``spec`` and ``args.init``, with the command line's overrides."""
    overrides: dict[str, Any] = {"device": str(device), "progress": False, "batching": args.batching}
    for field in ("construct_steps", "adapt_epochs", "n_anchors"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    return fda.FDAConfig.for_family(spec.family, init=args.init, size=spec.size, **overrides)


def time_block(
    model: nn.Module, pretrained: StateDict, experts: list[StateDict], block: int, cfg: fda.FDAConfig, anchor_init: str, device: torch.device
) -> tuple[AdaptResult, dict[str, float]]:
    """Construct and adapt one block, each once with zero steps / epochs (the fixed cost) and once
    with ``cfg``'s. Returns the adapted block and its seconds and peak memory (MiB)."""
    zero = dataclasses.replace(cfg, construct_steps=0, adapt_epochs=0)
    construct = lambda c: fda.construct_block(model, pretrained, experts, block, anchor_init, c)  # noqa: E731
    _, c_fixed, _ = measure(lambda: construct(zero), device)
    built, c_s, c_mem = measure(lambda: construct(cfg), device)
    anchors = [r.anchors for r in built]  # E x canonical [n, T, d]
    # init_state None: TA is rebuilt as θ0 + λ Σ τ_i per block; "pretrained" needs none
    adapt = lambda c: fda.adapt_block(model, pretrained, experts, block, anchors, cfg.init, None, c)  # noqa: E731
    _, a_fixed, _ = measure(lambda: adapt(zero), device)
    adapted, a_s, a_mem = measure(lambda: adapt(cfg), device)
    row = dict(construct_s=c_s, construct_fixed_s=c_fixed, construct_peak_mb=c_mem, adapt_s=a_s, adapt_fixed_s=a_fixed, adapt_peak_mb=a_mem)
    return adapted, row


def warm_up(model: nn.Module, pretrained: StateDict, experts: list[StateDict], cfg: fda.FDAConfig, anchor_init: str) -> None:
    """One construction step and one adaptation epoch on block 0, untimed: CUDA context, cuBLAS
    handles and kernel selection would otherwise be charged to the first timed block."""
    once = dataclasses.replace(cfg, construct_steps=1, adapt_epochs=1)
    built = fda.construct_block(model, pretrained, experts, 0, anchor_init, once)
    fda.adapt_block(model, pretrained, experts, 0, [r.anchors for r in built], cfg.init, None, once)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def summarise(rows: list[dict[str, float]], assembly_s: float, assembly_mb: float, steps: int, epochs: int) -> dict[str, Any]:
    """The measured phases of the timed blocks: totals, per-block means, rates per step / epoch.

    A rate is ``(mean seconds - mean fixed seconds) / steps``, floored at 0 (timing noise can make
    the difference negative when a step costs next to nothing)."""
    c_block, c_fixed = mean([r["construct_s"] for r in rows]), mean([r["construct_fixed_s"] for r in rows])
    a_block, a_fixed = mean([r["adapt_s"] for r in rows]), mean([r["adapt_fixed_s"] for r in rows])
    construction, adaptation = sum(r["construct_s"] for r in rows), sum(r["adapt_s"] for r in rows)
    return dict(
        construction_s=construction, adaptation_s=adaptation, assembly_s=assembly_s,
        total_s=construction + adaptation + assembly_s,
        construct_s_per_block=c_block, construct_fixed_s_per_block=c_fixed, construct_s_per_step=max(c_block - c_fixed, 0.0) / steps,
        adapt_s_per_block=a_block, adapt_fixed_s_per_block=a_fixed, adapt_s_per_epoch=max(a_block - a_fixed, 0.0) / epochs,
        peak_mem_mb=dict(construction=max(r["construct_peak_mb"] for r in rows), adaptation=max(r["adapt_peak_mb"] for r in rows),
                         assembly=assembly_mb),
    )  # fmt: skip


def extrapolate(measured: dict[str, Any], n_blocks: int, experts: int, n_anchors: int, paper: dict[str, Any]) -> dict[str, Any]:
    """Wall times from the measured rates (arithmetic, not measurements).

    * ``run_all_blocks``: this run's settings over all ``n_blocks`` (the timed blocks' mean per
      block x ``n_blocks``, plus the measured assembly);
    * ``paper_merge``: one merge (this init and anchor init) at the paper's settings, per block
      ``scale x (fixed + rate x paper steps or epochs)``, x ``n_blocks``;
    * ``paper_suite``: every merge of a paper suite: construction once per anchor init, adaptation
      and assembly once per (merge init, anchor init), each init with its own paper epochs.

    ``scale`` = (paper experts x paper anchors) / (experts x anchors): both costs are taken as
    linear in the anchors processed; it is 1 (exact) when the run uses the paper's counts.
    Other inits' epochs are costed at this init's rate per epoch.
    """
    m = measured
    scale = paper["experts"] * paper["n_anchors"] / (experts * n_anchors)
    construct_block = scale * (m["construct_fixed_s_per_block"] + m["construct_s_per_step"] * paper["construct_steps"])

    def adapt_block(init: str) -> float:
        return scale * (m["adapt_fixed_s_per_block"] + m["adapt_s_per_epoch"] * paper["adapt_epochs"][init])

    def phases(construction: float, adaptation: float, assembly: float) -> dict[str, float]:
        return dict(construction_s=construction, adaptation_s=adaptation, assembly_s=assembly, total_s=construction + adaptation + assembly)

    inits, anchor_inits = paper["suite_inits"], paper["suite_anchor_inits"]
    return dict(
        scale=scale,
        run_all_blocks=phases(n_blocks * m["construct_s_per_block"], n_blocks * m["adapt_s_per_block"], m["assembly_s"]),
        paper_merge=phases(n_blocks * construct_block, n_blocks * adapt_block(paper["init"]), m["assembly_s"]),
        paper_suite=dict(
            merges=len(inits) * len(anchor_inits),
            **phases(len(anchor_inits) * n_blocks * construct_block,
                     len(anchor_inits) * n_blocks * sum(adapt_block(i) for i in inits),
                     len(anchor_inits) * len(inits) * m["assembly_s"]),
        ),
    )  # fmt: skip


def paper_settings(spec: ModelSpec, init: str, suite_inits: Sequence[str], suite_anchor_inits: Sequence[str]) -> dict[str, Any]:
    """The paper's counts for ``spec``: steps, anchors, experts, and epochs per merge init."""
    cfg = lambda i: fda.FDAConfig.for_family(spec.family, init=i, size=spec.size)  # noqa: E731
    return dict(
        init=init, experts=PAPER_EXPERTS, n_anchors=cfg(init).n_anchors, construct_steps=cfg(init).construct_steps,
        adapt_epochs={i: cfg(i).adapt_epochs for i in dict.fromkeys([init, *suite_inits])},
        suite_inits=list(suite_inits), suite_anchor_inits=list(suite_anchor_inits),
    )  # fmt: skip


def bench_model(spec: ModelSpec, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Build ``spec``, merge its first ``args.blocks`` blocks with FDA, time every phase."""
    cfg = run_config(spec, args, device)

    def setup() -> tuple[nn.Module, StateDict, list[StateDict]]:
        model = build_model(spec, args.seed)
        pretrained = {k: v.detach() for k, v in model.state_dict().items()}
        experts = make_experts(pretrained, fda.adapter_for(model), args.experts, args.tv_kind, args.tv_rank, args.tv_scale, args.seed + 1)
        return model, pretrained, experts

    # state dicts stay on the CPU, as the workflow's checkpoints do: the library copies each
    # block's tensors to the device, and that copy is part of the measured time
    (model, pretrained, experts), setup_s, _ = measure(setup, torch.device("cpu"))
    adapter = fda.adapter_for(model)
    n_blocks = adapter.num_blocks
    timed_blocks = args.blocks or n_blocks
    if timed_blocks > n_blocks:
        raise SystemExit(f"--blocks {timed_blocks}: {spec.label} has {n_blocks} blocks")
    resolved = cfg.resolved(adapter)
    warmup = args.warmup if args.warmup is not None else device.type == "cuda"
    if warmup:
        warm_up(model, pretrained, experts, cfg, args.anchor_init)
    rows, adapted = [], []
    for block in range(timed_blocks):
        result, row = time_block(model, pretrained, experts, block, cfg, args.anchor_init, device)
        adapted.append(result)
        rows.append({"block": block, **row})
        print(f"  {spec.label} block {block}: construction {row['construct_s']:.2f} s, adaptation {row['adapt_s']:.2f} s",
              file=sys.stderr, flush=True)  # fmt: skip
    # untimed blocks keep θ0 in the assembly, which copies the whole state dict either way
    _, assembly_s, assembly_mb = measure(lambda: fda.assemble(pretrained, None, adapted, model, cfg), device)
    measured = summarise(rows, assembly_s, assembly_mb, cfg.construct_steps, cfg.adapt_epochs)
    paper = paper_settings(spec, args.init, args.suite_inits, args.suite_anchor_inits)
    shape = [resolved.n_anchors, resolved.tokens, spec.width]
    return dict(
        model=spec.name, label=spec.label, family=spec.family, size=spec.size,
        params=sum(v.numel() for v in pretrained.values()), block_params=sum(pretrained[k].numel() for k in block_keys(adapter)),
        n_blocks=n_blocks, blocks_timed=timed_blocks, experts=args.experts, anchors=shape, init=args.init, anchor_init=args.anchor_init,
        settings=dict(construct_steps=cfg.construct_steps, adapt_epochs=cfg.adapt_epochs, n_anchors=cfg.n_anchors,
                      construct_lr=cfg.construct_lr, adapt_lr=cfg.adapt_lr, adapt_batch=cfg.adapt_batch, batching=cfg.batching),
        paper=paper, setup_s=setup_s, blocks=rows, measured=measured,
        extrapolated=extrapolate(measured, n_blocks, args.experts, cfg.n_anchors, paper),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# report


def duration(seconds: float) -> str:
    """``seconds`` in s below 2 min, then min below 2 h, h below 2 days, else days."""
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Two tables, measured then extrapolated, and the formulas behind the second."""
    r0 = records[0]
    out = [
        f"FDA full merge on {meta['device']} ({meta['threads']} threads, torch {meta['torch']}, load average "
        f"{meta['loadavg'][0]:.1f} at start); init {r0['init']}, anchor init {r0['anchor_init']}, {r0['experts']} experts, random weights",
        "",
        "**Measured**",
        "",
        "Peak memory: " + ("CUDA max allocated during each phase." if meta["device_type"] == "cuda"
                           else "the process's peak RSS at the end of each phase (monotonic over the run)."),
        "",
        "| model | blocks timed | anchors n×T×d | steps / epochs | construction s/block (fixed + s/step) | "
        "adaptation s/block (fixed + s/epoch) | assembly s | total s | peak MiB construct / adapt / assemble |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        m, s = r["measured"], r["settings"]
        mem = m["peak_mem_mb"]
        out.append(
            f"| {r['label']} | {r['blocks_timed']} of {r['n_blocks']} | {'×'.join(map(str, r['anchors']))} | "
            f"{s['construct_steps']} / {s['adapt_epochs']} | {m['construct_s_per_block']:.2f} "
            f"({m['construct_fixed_s_per_block']:.2f} + {m['construct_s_per_step']:.3f}/step) | {m['adapt_s_per_block']:.2f} "
            f"({m['adapt_fixed_s_per_block']:.2f} + {m['adapt_s_per_epoch']:.3f}/epoch) | {m['assembly_s']:.2f} | {m['total_s']:.2f} | "
            f"{mem['construction']:.0f} / {mem['adaptation']:.0f} / {mem['assembly']:.0f} |"
        )
    p = r0["paper"]
    inits, anchor_inits = p["suite_inits"], p["suite_anchor_inits"]
    out += [
        "",
        f"**Extrapolated** from the measured rates (not measured). Paper settings: {p['experts']} experts, {p['n_anchors']} anchors, "
        f"{p['construct_steps']} construction steps; suite = {len(inits)} merge inits ({', '.join(inits)}) × "
        f"{len(anchor_inits)} anchor inits ({', '.join(anchor_inits)}).",
        "",
        "| model | this run, all blocks | paper merge: construction | adaptation (epochs) | total | "
        "paper suite: construction | adaptation | total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        x, merge, suite = r["extrapolated"], r["extrapolated"]["paper_merge"], r["extrapolated"]["paper_suite"]
        run = "measured: " if r["blocks_timed"] == r["n_blocks"] else ""
        out.append(
            f"| {r['label']} | {run}{duration(x['run_all_blocks']['total_s'])} | {duration(merge['construction_s'])} | "
            f"{duration(merge['adaptation_s'])} ({r['paper']['adapt_epochs'][r['init']]}) | **{duration(merge['total_s'])}** | "
            f"{duration(suite['construction_s'])} | {duration(suite['adaptation_s'])} | **{duration(suite['total_s'])}** |"
        )
    out += [
        "",
        "Per block: construction = scale × (fixed + s/step × paper steps), adaptation = scale × (fixed + s/epoch × paper epochs); "
        "× blocks; + assembly. Suite: construction × anchor inits; adaptation summed over merge inits (each with its paper "
        "epochs, at this init's rate) × anchor inits; assembly × merges. scale = (paper experts × anchors) / (run's): "
        + ", ".join(f"{r['label']} {r['extrapolated']['scale']:g}" for r in records)
        + ". Not included: loading checkpoints, computing the TSV-M / WUDI inits, evaluation.",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# command line


def positive(text: str) -> int:
    """argparse type: an integer >= 1 (a rate per step or epoch needs at least one)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(SPECS), default=["vitb32", "robertab"], help="default: vitb32 robertab")
    p.add_argument("--experts", type=positive, default=PAPER_EXPERTS, help=f"experts merged (default {PAPER_EXPERTS}, the paper's)")
    p.add_argument("--init", choices=["pretrained", "ta"], default="ta",
                   help="merge init (default ta; tsvm/wudi cost as ta per epoch but need a baseline merge first)")
    p.add_argument("--anchor-init", choices=["gauss", "weight"], default="gauss")
    p.add_argument("--construct-steps", type=positive, default=None, help="override the paper's 1200")
    p.add_argument("--adapt-epochs", type=positive, default=None, help="override the paper's epochs for the family and init")
    p.add_argument("--n-anchors", type=positive, default=None, help="override the paper's 64 (--tiny: 8)")
    p.add_argument("--blocks", type=positive, default=None, help="time only the first k blocks; the rest is extrapolated")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batching", choices=["auto", "vmap", "loop"], default="auto")
    p.add_argument("--threads", type=positive, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="one untimed step and epoch on block 0 first (default: on CUDA only)")
    p.add_argument("--tv-kind", choices=["lowrank", "gaussian"], default="lowrank", help="random task vectors (default lowrank)")
    p.add_argument("--tv-rank", type=positive, default=16, help="rank of low-rank task vectors (default 16)")
    p.add_argument("--tv-scale", type=float, default=0.02, help="task-vector rms relative to the weight's (default 0.02)")
    p.add_argument("--suite-inits", nargs="+", default=list(SUITE_INITS), help="merge inits of one suite (config/paper.yaml)")
    p.add_argument("--suite-anchor-inits", nargs="+", default=list(SUITE_ANCHOR_INITS), help="anchor inits of one suite")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="2 layers, width 64, 8 anchors: a smoke test")
    p.add_argument("--out", type=Path, default=None, help="write the records as JSON here")
    args = p.parse_args(argv)
    if args.tiny and args.n_anchors is None:
        args.n_anchors = 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", device_type=device.type, threads=torch.get_num_threads(),
        cpus=os.cpu_count(), loadavg=list(os.getloadavg()), nice=os.nice(0), torch=torch.__version__, platform=platform.platform(),
        argv=sys.argv[1:] if argv is None else list(argv), tiny=args.tiny,
    )  # fmt: skip
    records = []
    for name in args.models:
        spec = tiny_spec(SPECS[name]) if args.tiny else SPECS[name]
        records.append(bench_model(spec, args, device))
    print(markdown(records, meta))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "models": records}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
