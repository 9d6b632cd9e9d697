"""Synthetic state dicts with real key names and shapes, for tests and benchmarks.

``openclip_vit_shapes`` / ``bert_shapes`` give the key layouts of the models FDA merges (small
widths for tests, real widths for benchmarks). ``make_models`` materialises θ0 and T experts;
``SyntheticExpert`` is a lazy expert (a Mapping that regenerates each tensor on access from a
seed), so a benchmark can feed 8 ViT-B/32-sized experts to ``merge`` while holding only θ0.
Task vectors: low rank + small noise on 2-D tensors (like real fine-tunes), small noise elsewhere,
exactly zero on the keys named in ``zero_keys`` (the open_clip text leftovers).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping

import torch

Shapes = dict[str, tuple[int, ...]]
ZERO_KEYS = ("text_projection", "logit_scale", "token_embedding")


def openclip_vit_shapes(
    d: int = 768, blocks: int = 12, tokens: int = 50, patch: int = 32, embed: int = 512, text: bool = True, vocab: int = 16
) -> Shapes:
    """open_clip ``ImageEncoder`` keys (prefix ``model.``). Defaults: ViT-B/32's visual tower.

    ``text`` adds the text leftovers of FDA checkpoints (zero task vectors in practice); ``vocab``
    is the token_embedding row count (49408 in real checkpoints; small by default).
    """
    v = "model.visual."
    s: Shapes = {
        v + "class_embedding": (d,),
        v + "positional_embedding": (tokens, d),
        v + "proj": (d, embed),
        v + "conv1.weight": (d, 3, patch, patch),
        v + "ln_pre.weight": (d,),
        v + "ln_pre.bias": (d,),
    }
    for b in range(blocks):
        p = f"{v}transformer.resblocks.{b}."
        s.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.in_proj_weight": (3 * d, d), p + "attn.in_proj_bias": (3 * d,),
            p + "attn.out_proj.weight": (d, d), p + "attn.out_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (4 * d, d), p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (d, 4 * d), p + "mlp.c_proj.bias": (d,),
        })
    s.update({v + "ln_post.weight": (d,), v + "ln_post.bias": (d,)})
    if text:
        s.update({"model.token_embedding.weight": (vocab, embed), "model.text_projection": (embed, embed), "model.logit_scale": ()})
    return s


def bert_shapes(d: int = 768, layers: int = 12, vocab: int = 30, positions: int = 12, classifier: int = 3) -> Shapes:
    """HF ``BertModel``-style keys (prefix ``bert.``) plus a ``classifier`` head of ``classifier`` classes."""
    e = "bert.embeddings."
    s: Shapes = {
        e + "word_embeddings.weight": (vocab, d),
        e + "position_embeddings.weight": (positions, d),
        e + "token_type_embeddings.weight": (1, d),
        e + "LayerNorm.weight": (d,), e + "LayerNorm.bias": (d,),
    }
    for layer in range(layers):
        p = f"bert.encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            s[p + name + ".weight"] = (d, d)
            s[p + name + ".bias"] = (d,)
        s.update({
            p + "attention.output.LayerNorm.weight": (d,), p + "attention.output.LayerNorm.bias": (d,),
            p + "intermediate.dense.weight": (4 * d, d), p + "intermediate.dense.bias": (4 * d,),
            p + "output.dense.weight": (d, 4 * d), p + "output.dense.bias": (d,),
            p + "output.LayerNorm.weight": (d,), p + "output.LayerNorm.bias": (d,),
        })
    if classifier:
        s.update({"classifier.weight": (classifier, d), "classifier.bias": (classifier,)})
    return s


def _generator(seed: int, expert: int, key: str) -> torch.Generator:
    # crc32, not hash(): stable across processes (PYTHONHASHSEED)
    return torch.Generator().manual_seed((seed * 1_000_003 + expert * 7919 + zlib.crc32(key.encode())) % (2**63))


def task_vector(
    key: str, shape: tuple[int, ...], expert: int, *, seed: int = 0, rank: int = 2, scale: float = 0.02,
    noise: float = 1e-3, zero_keys: tuple[str, ...] = ZERO_KEYS, dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Deterministic τ for (expert, key): ``scale``·(rank-``rank`` product)/rank + ``noise``·N(0, 1) for 2-D."""
    if any(z in key for z in zero_keys):
        return torch.zeros(shape, dtype=dtype)
    g = _generator(seed, expert + 1, key)
    if len(shape) == 2:
        a = torch.randn(shape[0], rank, generator=g, dtype=dtype)
        b = torch.randn(rank, shape[1], generator=g, dtype=dtype)
        return scale * (a @ b) / rank + noise * torch.randn(shape, generator=g, dtype=dtype)
    return (scale / 2) * torch.randn(shape, generator=g, dtype=dtype)


def pretrained(shapes: Shapes, *, seed: int = 0, dtype: torch.dtype = torch.float64, std: float = 1.0) -> dict[str, torch.Tensor]:
    """θ0 ~ std·N(0, 1) for every key (generated in ``dtype`` directly)."""
    return {k: std * torch.randn(s, generator=_generator(seed, 0, k), dtype=dtype) for k, s in shapes.items()}


def make_models(
    shapes: Shapes, num_experts: int, dtype: torch.dtype = torch.float64, *, seed: int = 0, **tau_kwargs
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """θ0 and ``num_experts`` materialised experts θ0 + τ_i (τ in float64, then cast to ``dtype``)."""
    pre64 = pretrained(shapes, seed=seed)
    experts = [
        {k: (pre64[k] + task_vector(k, s, i, seed=seed, **tau_kwargs)).to(dtype) for k, s in shapes.items()}
        for i in range(num_experts)
    ]
    return {k: t.to(dtype) for k, t in pre64.items()}, experts


class SyntheticExpert(Mapping):
    """A lazy expert θ0 + τ_i: each ``[key]`` regenerates the tensor (nothing is cached).

    Holds a reference to ``pretrained`` only, so T lazy experts cost no memory beyond one tensor
    in use. τ is generated in float32 (``make_models`` uses float64), so values match
    ``make_models`` only to float32 rounding.
    """

    def __init__(self, pretrained: Mapping[str, torch.Tensor], index: int, *, seed: int = 0, **tau_kwargs):
        self._pre = pretrained
        self._index = index
        self._seed = seed
        self._kw = tau_kwargs

    def __getitem__(self, key: str) -> torch.Tensor:
        base = self._pre[key]
        tau = task_vector(key, tuple(base.shape), self._index, seed=self._seed, dtype=torch.float32, **self._kw)
        return (base.float() + tau).to(base.dtype) if base.is_floating_point() else base.clone()

    def __contains__(self, key: object) -> bool:  # Mapping's default would generate the tensor
        return key in self._pre

    def __iter__(self) -> Iterator[str]:
        return iter(self._pre)

    def __len__(self) -> int:
        return len(self._pre)
