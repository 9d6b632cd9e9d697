"""Block adapters: how FDA sees one model family as a list of blocks.

An adapter answers, for one model instance (its structure only; weights come from state dicts):

* which blocks there are and the state-dict key prefix of each (``encoder.layer.3.``),
* the local names of a block's parameter tensors, in parameter order,
* how to call one block on a batch of anchors with *given* parameters
  (``torch.func.functional_call``: no module copies, parameters may be autograd leaves),
* the canonical anchor shape (batch-first ``[n, T, d]``; ``[n, d]`` for token-wise MLP blocks),
* the layout the official code used for the ``weight`` init (vision ``[T, n, d]``),
* the "weight rows" pool: 2-D weights whose input width is ``d``, in parameter order.

Every block call must support double backward (construction differentiates a gradient). Flash and
memory-efficient SDPA kernels do not, so all calls run inside :func:`double_backward_context`.

Families: ``clip-vision`` (HF CLIP vision tower), ``openclip`` (open_clip ``ResidualAttentionBlock``
stacks), ``bert`` / ``roberta`` (HF encoders), ``llama`` (decoder MLP by default, whole decoder layer
with ``part="layer"``). Add a family with :func:`register_adapter`.
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

StateDict = dict[str, torch.Tensor]

_KEY_BIAS = re.compile(r"(^|\.)(key|k_proj|k)\.bias$")
# attention output projections (HF CLIP / open_clip, Llama, BERT): width-d inputs that are not the block's
_ATTN_OUT = re.compile(r"(^|\.)((out_proj|o_proj)|attention\.output\.dense)\.weight$")
# separate attention projections, HF names: (prefix, projection, weight|bias)
_SPLIT_QKV = re.compile(r"^((?:.*\.)?)(q_proj|k_proj|v_proj|query|key|value)\.(weight|bias)$")
_QKV_ROLE = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "query": 0, "key": 1, "value": 2}
QKV_LAYOUTS = ("split", "fused")


@dataclass(frozen=True)
class LossTerm:
    """One per-tensor cosine term of the construction loss.

    ``members``: ``(local parameter name, third)`` pairs whose flattened values are concatenated
    in order; ``third`` None takes the whole tensor, 0/1/2 the q/k/v third of its rows (q/k/v
    split out of a fused ``[3d, ...]`` tensor). A fused term lists the q, k, v tensors in that
    order, the row order of open_clip's ``in_proj_weight``, so its cosine is the fused tensor's.
    """

    name: str
    members: tuple[tuple[str, int | None], ...]


@contextlib.contextmanager
def double_backward_context() -> Iterator[None]:
    """Force the SDPA math kernel (the only one with double backward), on CPU and GPU alike."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


class UnknownModelFamilyError(TypeError):
    """No registered adapter recognises the model."""


class BlockAdapter(abc.ABC):
    """One model family's view of a model as a list of blocks (see the module docstring).

    Subclasses set ``family``, ``vision`` and ``official_layout`` and implement ``_find_blocks``,
    ``_call`` and ``default_tokens``.
    """

    family: ClassVar[str]
    #: vision families: the official code reseeds the Gauss draw for every (task, block)
    vision: ClassVar[bool] = False
    #: layout of the official anchor tensor: "TND" (seq-first, vision), "NTD" (text), "ND" (MLP)
    official_layout: ClassVar[str] = "NTD"
    #: sub-block choices (``part``) the family offers; empty: the block is the whole layer
    parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, part: str | None = None):
        if part is not None and part not in self.parts:
            raise ValueError(f"{self.family} adapter: part={part!r} is not available (choices: {list(self.parts) or 'none'})")
        self.model = model
        self.part = part
        self._check_attention(model)
        prefix, blocks = self._find_blocks(model)
        self._prefix = prefix  # e.g. "encoder.layer." (blocks are prefix + f"{l}.")
        self._blocks = list(blocks)
        if not self._blocks:
            raise UnknownModelFamilyError(f"{type(model).__name__}: the {self.family} adapter found no blocks")

    def _has_attention(self) -> bool:
        """Whether the blocks contain attention (the MLP-only Llama block does not)."""
        return True

    def _check_attention(self, model: nn.Module) -> None:
        """HF attention kernels other than eager/SDPA (flash-attention, flex) have no double backward."""
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        if self._has_attention() and impl not in (None, "eager", "sdpa"):
            raise ValueError(
                f"{type(model).__name__} uses attn_implementation={impl!r}, which has no double backward; "
                "load or build the model with attn_implementation='sdpa' (FDA forces the math kernel) or 'eager'"
            )

    # -- structure -------------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether this adapter handles ``model``."""

    @abc.abstractmethod
    def _find_blocks(self, model: nn.Module) -> tuple[str, list[nn.Module]]:
        """(key prefix of the block list ending in '.', block modules)."""

    @abc.abstractmethod
    def default_tokens(self) -> int:
        """Tokens per anchor T when the config leaves it unset."""

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    def block_module(self, block: int) -> nn.Module:
        return self._blocks[self._check(block)]

    def block_prefix(self, block: int) -> str:
        """State-dict key prefix of block ``block``, ending in '.'."""
        return f"{self._prefix}{self._check(block)}."

    def param_names(self, block: int) -> list[str]:
        """Local names of the block's parameter tensors, in parameter order."""
        return [n for n, _ in self.block_module(block).named_parameters()]

    def block_keys(self, block: int) -> list[str]:
        """Full state-dict keys of the block's parameters."""
        pre = self.block_prefix(block)
        return [pre + n for n in self.param_names(block)]

    def all_block_keys(self) -> set[str]:
        return {k for b in range(self.num_blocks) for k in self.block_keys(b)}

    def non_block_keys(self, keys: list[str] | Mapping[str, object]) -> list[str]:
        """Keys of ``keys`` (a state dict or list) that lie outside every block."""
        inside = self.all_block_keys()
        return [k for k in keys if k not in inside]

    @property
    def width(self) -> int:
        """Hidden width d (the anchors' last dimension)."""
        return self._width(self._blocks[0])

    @abc.abstractmethod
    def _width(self, block: nn.Module) -> int: ...

    def anchor_shape(self, n: int, tokens: int) -> tuple[int, ...]:
        """Canonical batch-first anchor shape: ``[n, T, d]`` (``[n, d]`` for ND families)."""
        if self.official_layout == "ND":
            return (n, self.width)
        return (n, tokens, self.width)

    def weight_row_names(self, block: int) -> list[str]:
        """Local names of 2-D weights whose input width is d, in parameter order."""
        d = self.width
        return [n for n, p in self.block_module(block).named_parameters() if p.dim() == 2 and p.shape[1] == d]

    def input_reading_names(self, block: int) -> list[str]:
        """The 2-D weights that read the block's (normalised) input: q, k, v and the first MLP
        layer(s), i.e. :meth:`weight_row_names` without the attention output projection, whose
        input is the attention's output. Used by the ``taskspan`` anchor init."""
        return [n for n in self.weight_row_names(block) if not _ATTN_OUT.search(n)]

    def zero_gradient_names(self, block: int) -> list[str]:
        """Tensors whose induced gradient is identically zero: attention key biases (softmax is
        invariant to a per-query constant, and q·b_k is one). Their (1 - cos) term is a constant 1."""
        return [n for n in self.param_names(block) if _KEY_BIAS.search(n)]

    # -- the q/k/v layout of the construction loss -------------------------------------------------
    def qkv_groups(self, block: int) -> list[tuple[str, tuple[str, ...]]]:
        """The block's attention projections as ``(fused name, member tensors)``: three members
        (q, k, v) where the block stores them apart (HF), one where it stores them fused
        (open_clip ``in_proj``); empty without attention. Found by the HF names ``q_proj``/``k_proj``/
        ``v_proj`` or ``query``/``key``/``value``; override for other names."""
        found: dict[tuple[str, str, str], dict[int, str]] = {}
        for name in self.param_names(block):
            m = _SPLIT_QKV.match(name)
            if m:
                prefix, proj, kind = m.groups()
                style = "qkv_proj" if proj.endswith("_proj") else "qkv"
                found.setdefault((prefix, style, kind), {})[_QKV_ROLE[proj]] = name
        return [(f"{prefix}{style}.{kind}", (roles[0], roles[1], roles[2]))
                for (prefix, style, kind), roles in found.items() if len(roles) == 3]

    def loss_terms(self, block: int, qkv_layout: str | None = None) -> list[LossTerm]:
        """The cosine terms of the construction loss, in parameter order.

        ``qkv_layout``: None (or the block's own layout): one term per stored tensor. ``"fused"``:
        q, k, v weights form one term and q, k, v biases another, as open_clip's ``in_proj``
        (the official vision code's tensors). ``"split"``: a fused ``in_proj`` gives three terms,
        one per third of its rows. Blocks without attention have one term per tensor either way.
        """
        if qkv_layout not in (None, *QKV_LAYOUTS):
            raise ValueError(f"qkv_layout must be one of {QKV_LAYOUTS} or None, got {qkv_layout!r}")
        names = self.param_names(block)
        groups = self.qkv_groups(block)
        native = None if not groups else ("split" if len(groups[0][1]) == 3 else "fused")
        if qkv_layout is None or native is None or qkv_layout == native:
            return [LossTerm(n, ((n, None),)) for n in names]
        terms: list[LossTerm] = []
        if qkv_layout == "fused":
            group_of = {m: g for g in groups for m in g[1]}
            emitted: set[str] = set()
            for n in names:
                if n not in group_of:
                    terms.append(LossTerm(n, ((n, None),)))
                elif group_of[n][0] not in emitted:  # the fused term sits where its first member was
                    fused, members = group_of[n]
                    emitted.add(fused)
                    terms.append(LossTerm(fused, tuple((m, None) for m in members)))
            return terms
        fused_names = {g[1][0] for g in groups}
        for n in names:
            if n in fused_names:
                terms.extend(LossTerm(f"{n}[{role}]", ((n, i),)) for i, role in enumerate("qkv"))
            else:
                terms.append(LossTerm(n, ((n, None),)))
        return terms

    def zero_gradient_terms(self, block: int, terms: list[LossTerm]) -> list[str]:
        """Names of the ``terms`` whose induced gradient is identically zero: every member is a
        key bias (a separate one, or the k third of a fused q/k/v bias)."""
        zero = set(self.zero_gradient_names(block))
        fused = {g[1][0] for g in self.qkv_groups(block) if len(g[1]) == 1}
        dims = {n: p.dim() for n, p in self.block_module(block).named_parameters()}

        def is_zero(name: str, third: int | None) -> bool:
            if third is None:
                return name in zero
            return third == 1 and name in fused and dims[name] == 1

        return [t.name for t in terms if all(is_zero(n, i) for n, i in t.members)]

    # -- calling ---------------------------------------------------------------------------------
    def call(self, block: int, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Run block ``block`` with ``params`` (local names) on canonical anchors ``x``.

        ``x``: ``[n, T, d]`` (or ``[n, d]``); returns the block output in the same layout.
        Buffers of the module are used as they are. Runs in the double-backward context.
        """
        module = self.block_module(block)
        with double_backward_context():
            return self._call(module, dict(params), x)

    @abc.abstractmethod
    def _call(self, module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor: ...

    def _check(self, block: int) -> int:
        if not 0 <= block < len(self._blocks):
            raise IndexError(f"block {block} out of range: {type(self.model).__name__} has {len(self._blocks)} blocks")
        return block


def _first(out: object) -> torch.Tensor:
    """HF layers return a tensor in transformers v5, a tuple in v4: take the hidden states."""
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[index,return-value]


def _find_module_list(model: nn.Module, predicate: Callable[[str, nn.ModuleList], bool]) -> tuple[str, list[nn.Module]]:
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and predicate(name, mod):
            return (f"{name}." if name else ""), list(mod)
    return "", []


# ------------------------------------------------------------------------------------------------
# HF CLIP vision tower


class ClipVisionAdapter(BlockAdapter):
    """HF ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` / ``CLIPModel`` (vision tower only).

    Blocks are ``CLIPEncoderLayer``s (batch-first). T defaults to patches + 1 (class token).
    """

    family = "clip-vision"
    vision = True
    official_layout = "TND"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__name__ in {"CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel", "CLIPVisionTransformer"}

    def _find_blocks(self, model: nn.Module) -> tuple[str, list[nn.Module]]:
        return _find_module_list(model, lambda n, m: n.endswith("encoder.layers") and "text_model" not in n)

    def _vision_config(self):  # noqa: ANN202
        cfg = self.model.config
        return getattr(cfg, "vision_config", cfg)

    def default_tokens(self) -> int:
        cfg = self._vision_config()
        return (cfg.image_size // cfg.patch_size) ** 2 + 1

    def _width(self, block: nn.Module) -> int:
        return block.layer_norm1.normalized_shape[0]

    def weight_row_names(self, block: int) -> list[str]:
        """q, k, v, out_proj, fc1: the row order of open_clip's ``in_proj_weight`` ([q; k; v]),
        so a converted open_clip checkpoint gives the same weight-init anchors (HF declares k, v, q)."""
        names = super().weight_row_names(block)
        order = {f"self_attn.{p}_proj.weight": i for i, p in enumerate("qkv")}
        head = sorted((n for n in names if n in order), key=order.__getitem__)
        return head + [n for n in names if n not in order]

    def _call(self, module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # CLIPEncoderLayer takes an attention mask argument; the vision tower uses none.
        return _first(functional_call(module, params, (x,), {"attention_mask": None}))


# ------------------------------------------------------------------------------------------------
# open_clip ResidualAttentionBlock (ln_1, attn: nn.MultiheadAttention, ln_2, mlp.c_fc/gelu/c_proj)


def _is_openclip_block(m: nn.Module) -> bool:
    mlp = getattr(m, "mlp", None)
    return (
        isinstance(getattr(m, "attn", None), nn.MultiheadAttention)
        and hasattr(m, "ln_1")
        and hasattr(m, "ln_2")
        and mlp is not None
        and hasattr(mlp, "c_fc")
        and hasattr(mlp, "c_proj")
    )


class OpenClipAdapter(BlockAdapter):
    """open_clip visual towers: a ``ModuleList`` of ``ResidualAttentionBlock``s.

    Recognised by structure, so open_clip itself is never imported. The official code calls the
    blocks sequence-first (``[T, n, d]``, ``batch_first=False``); newer open_clip is batch-first.
    The adapter reads ``attn.batch_first`` and transposes canonical anchors as needed.
    """

    family = "openclip"
    vision = True
    official_layout = "TND"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return bool(cls._locate(model)[1])

    @staticmethod
    def _locate(model: nn.Module) -> tuple[str, list[nn.Module]]:
        found = [
            (f"{n}." if n else "", list(m))
            for n, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len(m) and all(_is_openclip_block(b) for b in m)
        ]
        # A full open_clip CLIP has a text transformer of the same block type: take the visual one.
        visual = [f for f in found if f[0].startswith("visual.")]
        return (visual or found or [("", [])])[0]

    def _find_blocks(self, model: nn.Module) -> tuple[str, list[nn.Module]]:
        return self._locate(model)

    def default_tokens(self) -> int:
        visual = getattr(self.model, "visual", self.model)
        pos = getattr(visual, "positional_embedding", None)
        if pos is None:
            raise ValueError("openclip adapter: the model has no positional_embedding; set FDAConfig.tokens explicitly")
        return int(pos.shape[0])

    def _width(self, block: nn.Module) -> int:
        return block.attn.embed_dim

    def qkv_groups(self, block: int) -> list[tuple[str, tuple[str, ...]]]:
        """``nn.MultiheadAttention`` keeps q, k, v fused in ``in_proj_weight`` / ``in_proj_bias``."""
        return [(n, (n,)) for n in self.param_names(block) if n.endswith(("attn.in_proj_weight", "attn.in_proj_bias"))]

    def _call(self, module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        seq_first = not getattr(module.attn, "batch_first", False)
        inp = x.transpose(0, 1) if seq_first else x
        out = functional_call(module, params, (inp,))
        return out.transpose(0, 1) if seq_first else out


# ------------------------------------------------------------------------------------------------
# HF BERT / RoBERTa encoder layers


class BertAdapter(BlockAdapter):
    """HF ``BertModel`` / ``RobertaModel`` and their task wrappers (MiniLM is a ``BertModel``).

    Blocks are the encoder layers, batch-first, called with no attention mask (as the official NLU
    code). Default T = 5 (official ``--token_num 5``).
    """

    family = "bert"
    _classes: ClassVar[tuple[str, ...]] = ("Bert",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        name = type(model).__name__
        return any(name.startswith(c) for c in cls._classes) and cls._locate(model)[1] != []

    @staticmethod
    def _locate(model: nn.Module) -> tuple[str, list[nn.Module]]:
        return _find_module_list(model, lambda n, m: n.endswith("encoder.layer"))

    def _find_blocks(self, model: nn.Module) -> tuple[str, list[nn.Module]]:
        return self._locate(model)

    def default_tokens(self) -> int:
        return 5

    def _width(self, block: nn.Module) -> int:
        return block.attention.self.query.in_features

    def _call(self, module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return _first(functional_call(module, params, (x,), {"attention_mask": None}))


class RobertaAdapter(BertAdapter):
    family = "roberta"
    _classes = ("Roberta", "XLMRoberta")


# ------------------------------------------------------------------------------------------------
# HF Llama: the decoder layer's MLP (official NLG), or the whole decoder layer


class LlamaAdapter(BlockAdapter):
    """HF ``LlamaModel`` / ``LlamaForCausalLM``.

    ``part="mlp"`` (default, official): blocks are ``layers[l].mlp``, anchors are single tokens
    ``[n, d]`` in the MLP's input space. ``part="layer"``: whole decoder layers on ``[n, T, d]``,
    with rotary ``(cos, sin)`` from the model's rotary embedding at positions 0..T-1 and an explicit
    causal mask (so eager and SDPA attention agree).
    """

    family = "llama"
    parts = ("mlp", "layer")

    def __init__(self, model: nn.Module, part: str | None = None):
        super().__init__(model, part or "mlp")

    def _has_attention(self) -> bool:
        return self.part == "layer"

    @property
    def official_layout(self) -> str:  # type: ignore[override]
        return "ND" if self.part == "mlp" else "NTD"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return type(model).__name__.startswith("Llama") and bool(_find_module_list(model, lambda n, m: n.endswith("layers"))[1])

    def _find_blocks(self, model: nn.Module) -> tuple[str, list[nn.Module]]:
        prefix, layers = _find_module_list(model, lambda n, m: n.endswith("layers"))
        if self.part == "mlp":
            return prefix, [lay.mlp for lay in layers]
        return prefix, layers

    def block_prefix(self, block: int) -> str:
        base = super().block_prefix(block)
        return base + "mlp." if self.part == "mlp" else base

    def default_tokens(self) -> int:
        return 1 if self.part == "mlp" else 5

    def _width(self, block: nn.Module) -> int:
        return block.gate_proj.in_features if self.part == "mlp" else block.mlp.gate_proj.in_features

    def _rotary(self) -> nn.Module:
        for name, mod in self.model.named_modules():
            if name.endswith("rotary_emb"):
                return mod
        raise ValueError("llama adapter: no rotary_emb module found in the model")

    def _call(self, module: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.part == "mlp":
            return functional_call(module, params, (x,))
        n, t, _ = x.shape
        pos = torch.arange(t, device=x.device).unsqueeze(0)
        cos, sin = self._rotary()(x, pos)
        mask = torch.full((t, t), torch.finfo(x.dtype).min, device=x.device, dtype=x.dtype).triu(1)[None, None]
        kwargs = {"attention_mask": mask, "position_embeddings": (cos, sin), "position_ids": pos}
        return _first(functional_call(module, params, (x,), kwargs))


# ------------------------------------------------------------------------------------------------
# Registry

_ADAPTERS: list[type[BlockAdapter]] = [ClipVisionAdapter, BertAdapter, RobertaAdapter, LlamaAdapter, OpenClipAdapter]


def register_adapter(adapter: type[BlockAdapter], *, first: bool = True) -> None:
    """Add an adapter class; ``first`` makes it win over the built-in ones."""
    if not (isinstance(adapter, type) and issubclass(adapter, BlockAdapter)):
        raise TypeError("register_adapter expects a BlockAdapter subclass")
    if adapter in _ADAPTERS:
        _ADAPTERS.remove(adapter)
    _ADAPTERS.insert(0 if first else len(_ADAPTERS), adapter)


def families() -> list[str]:
    return [a.family for a in _ADAPTERS]


def registered_parts() -> list[str]:
    """Every ``part`` that some registered family offers (``FDAConfig`` checks ``part`` against them)."""
    return list(dict.fromkeys(p for a in _ADAPTERS for p in a.parts))


def adapter_for(model: nn.Module, part: str | None = None) -> BlockAdapter:
    """The adapter for ``model`` (chosen from its class / structure).

    Raises :class:`UnknownModelFamilyError` with instructions when nothing matches.
    """
    for cls in _ADAPTERS:
        if cls.matches(model):
            return cls(model, part)
    raise UnknownModelFamilyError(
        f"no FDA block adapter for model class {type(model).__name__}. Known families: {', '.join(families())}. "
        "To add one, subclass fda.blocks.BlockAdapter (implement matches, _find_blocks, _width, _call, "
        "default_tokens; set family/vision/official_layout) and call fda.blocks.register_adapter(YourAdapter)."
    )
