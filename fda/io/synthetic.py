"""Synthetic Llama checkpoints for streaming tests and benchmarks, written block by block.

The tensors have exactly the key names and shapes of ``LlamaForCausalLM`` for the given config, so
``from_pretrained`` loads the result; the weights are random (seeded) and never all in memory:
one decoder layer is generated, written (through :class:`~fda.io.sharded_writer.ShardedWriter`) and
dropped at a time. ``expert_of`` adds a small seeded perturbation to a base, block by block.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from fda.io.sharded_writer import ShardedWriter
from fda.io.stream_source import StreamSource, iter_blocks
from fda.io.streaming import copy_model_files

StateDict = dict[str, torch.Tensor]


def llama_config(layers: int, hidden: int = 64, intermediate: int | None = None, vocab: int = 128, heads: int = 4):  # noqa: ANN201
    """A small ``LlamaConfig`` (kv heads = heads, untied embeddings)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or int(hidden * 2.75), num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def llama_layer_shapes(cfg) -> dict[str, tuple[int, ...]]:  # noqa: ANN001
    """Local key -> shape of one ``LlamaDecoderLayer`` (no biases, Llama default)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    hd = d // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    return {
        "self_attn.q_proj.weight": (d, d), "self_attn.k_proj.weight": (kv, d), "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, d), "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f), "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
    }


def _blocks(cfg, seed: int, dtype: torch.dtype) -> Iterator[tuple[str, StateDict]]:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        yield pre, {pre + k: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in llama_layer_shapes(cfg).items()}
    v, d = cfg.vocab_size, cfg.hidden_size
    yield "rest", {
        "model.embed_tokens.weight": (torch.randn(v, d, generator=g) * 0.02).to(dtype),
        "model.norm.weight": torch.ones(d, dtype=dtype),
        "lm_head.weight": (torch.randn(v, d, generator=g) * 0.02).to(dtype),
    }


def write_synthetic_llama(out_dir: str | os.PathLike, cfg, *, seed: int = 0, shard_size: int | str = "50MB", dtype: torch.dtype = torch.float32) -> Path:  # noqa: ANN001
    """Write a random ``LlamaForCausalLM`` checkpoint (sharded safetensors + index + config)."""
    out = Path(out_dir)
    w = ShardedWriter(out, shard_size=shard_size)
    for name, block in _blocks(cfg, seed, dtype):
        w.add_block(name, block)
    w.finish(metadata={"format": "pt"})
    cfg.dtype = str(dtype).removeprefix("torch.")
    cfg.save_pretrained(out)
    return out


def write_expert(base_dir: str | os.PathLike, out_dir: str | os.PathLike, *, seed: int, scale: float = 0.01, shard_size: int | str = "50MB") -> Path:
    """Write base + a seeded perturbation (``scale`` × N(0,1) × |θ0| mean), one block at a time."""
    g = torch.Generator().manual_seed(seed)
    w = ShardedWriter(out_dir, shard_size=shard_size)
    for name, block in iter_blocks(StreamSource(base_dir)):
        w.add_block(name, {k: t + scale * torch.randn(t.shape, generator=g).to(t.dtype) * t.abs().mean() for k, t in block.items()})
    w.finish(metadata={"format": "pt"})
    copy_model_files(base_dir, out_dir)
    return Path(out_dir)


# --------------------------------------------------------------------------------------------
# Peak-RSS probe: the merge runs in a fresh subprocess, which measures its own peak RSS.

_RSS_CHILD = r"""
import json, os, resource, sys, threading, time
mode, base, out, shard = sys.argv[1:5]
experts = sys.argv[5:]
import torch
import baselines
from fda.io import streaming
from fda.io.checkpoints import load_state_dict, save_state_dict

PAGE = os.sysconf("SC_PAGE_SIZE")

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20

# imports done: reset the kernel's peak-RSS mark (VmHWM) so the peak below is the merge's own
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = True
except OSError:
    reset = False
start = rss()
sampled, stop = [start], []

def sampler():  # backstop where VmHWM cannot be reset; misses only sub-2 ms spikes
    while not stop:
        sampled[0] = max(sampled[0], rss())
        time.sleep(0.002)

thread = threading.Thread(target=sampler, daemon=True)
thread.start()
t0 = time.perf_counter()
if mode == "stream":
    streaming.stream_merge("ta", base, experts, out, hparams={"alpha": 0.5}, shard_size=shard)
elif mode == "inmemory":
    merged = baselines.merge("ta", load_state_dict(base), [load_state_dict(e) for e in experts], alpha=0.5)
    save_state_dict(merged, out + ".safetensors")
    del merged
elif mode == "headers":
    [streaming.StreamSource(p) for p in [base, *experts]]
else:
    raise SystemExit(f"unknown mode {mode}")
dt = time.perf_counter() - t0
stop.append(1)
thread.join()
hwm = status("VmHWM") if reset else None
print(json.dumps({
    "seconds": dt, "rss_after_imports_mb": start, "sampled_peak_mb": sampled[0] - start,
    "work_peak_mb": (hwm - start) if hwm is not None else sampled[0] - start,
    "peak_rss_mb": hwm if hwm is not None else sampled[0],
    # ru_maxrss also counts the import transient and, on Linux, the parent's RSS at fork time
    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def make_merge_inputs(root: str | os.PathLike, layers: int, *, hidden: int, intermediate: int, vocab: int = 256,
                      experts: int = 2, shard_size: int | str = "50MB") -> tuple[Path, list[Path], int]:
    """Write a synthetic base and ``experts`` experts under ``root``; returns (base, experts, bytes per model)."""
    root = Path(root)
    cfg = llama_config(layers, hidden=hidden, intermediate=intermediate, vocab=vocab)
    base = write_synthetic_llama(root / "base", cfg, shard_size=shard_size)
    exps = [write_expert(base, root / f"expert{i}", seed=i + 1, shard_size=shard_size) for i in range(experts)]
    import json

    total = json.loads((base / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    return base, exps, int(total)


def rss_probe(mode: str, base: str | os.PathLike, experts: list, out: str | os.PathLike, *, shard_size: int | str = "8MB",
              repo_root: str | os.PathLike | None = None) -> dict:
    """Run one merge (``stream``, ``inmemory``) or the import-only baseline (``headers``) in a fresh
    interpreter; returns what the child measured itself: ``work_peak_mb`` (peak RSS of the merge
    above the post-import RSS: VmHWM after resetting it via ``/proc/self/clear_refs``, or a 2 ms RSS
    sampler where the kernel refuses the reset), ``peak_rss_mb`` (absolute), ``sampled_peak_mb``,
    ``rss_after_imports_mb``, ``maxrss_mb`` (``ru_maxrss``: includes the import transient and, on
    Linux, the parent's RSS at fork, so it is reported but not used) and ``seconds``."""
    import json
    import subprocess
    import sys

    root = Path(repo_root) if repo_root else Path(__file__).resolve().parents[2]  # holds the fda package
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-c", _RSS_CHILD, mode, str(base), str(out), str(shard_size), *map(str, experts)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"rss probe ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
