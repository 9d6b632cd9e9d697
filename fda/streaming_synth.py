"""Synthetic Llama checkpoints for streaming tests and benchmarks, written block by block.

The tensors have exactly the key names and shapes of ``LlamaForCausalLM`` for the given config, so
``from_pretrained`` loads the result; the weights are random (seeded) and never all in memory:
one decoder layer is generated, written (through :class:`~fda.sharded_writer.ShardedWriter`) and
dropped at a time. ``expert_of`` adds a small seeded perturbation to a base, block by block.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from fda.sharded_writer import ShardedWriter
from fda.streaming import StreamSource, copy_model_files, iter_blocks

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
