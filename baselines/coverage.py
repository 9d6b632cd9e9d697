"""Parameter coverage: which tensors a method merges, which it averages, which stay at θ0.

A preset maps (method family, key, shape) to a ``Role``:

- ``MERGE``: the method's own rule (SVD merge for ``tsvm``, ``isoc``, ``isocts``, Adam on the interference loss for
  ``wudi``, the elementwise rule for ``ta``/``average``/``ties``);
- ``MEAN``: the mean task vector (1/T)·Σ τ_i (TSV-M's rule for non-matrix tensors);
- ``KEEP``: the tensor stays at the pretrained value θ0.

Presets (see docs/baselines.md for the reasons):

- ``all`` (default; FusionBench semantics): ``tsvm``/``wudi`` merge every 2-D float tensor and
  average the rest; elementwise methods merge everything.
- ``fda-vision``: the official FDA vision scripts (open_clip layout, HF CLIP names mapped too).
- ``fda-nlu``: the official FDA NLU scripts (RoBERTa/BERT).
- ``fda-llm``: Llama-style decoders (our choice; no official WUDI/TSV-M LLM script exists).

User-level ``exclude`` regexes (``re.search`` on the key) force ``KEEP`` on top of any preset.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import HyperparameterError


class Role(str, enum.Enum):
    MERGE = "merge"
    MEAN = "mean"
    KEEP = "keep"


# Method families: the matrix methods treat 2-D tensors specially, the elementwise ones do not.
# "tsvm" is the SVD family: tsvm, isoc and isocts follow the same rules (their official code treats
# tensors alike: 2-D merged except text_projection, everything else averaged).
FAMILIES = ("tsvm", "wudi", "elementwise")

Rule = Callable[[str, tuple[int, ...]], Role]


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    rules: dict[str, Rule]  # family -> rule


def _matrix_else(other: Role, skip: re.Pattern | None = None, skip_role: Role = Role.KEEP) -> Rule:
    """2-D tensors -> MERGE, others -> ``other``; keys matching ``skip`` -> ``skip_role``."""

    def rule(key: str, shape: tuple[int, ...]) -> Role:
        if skip is not None and skip.search(key):
            return skip_role
        return Role.MERGE if len(shape) == 2 else other

    return rule


def _only(select: re.Pattern, unselected: Role = Role.KEEP, deny: re.Pattern | None = None) -> Rule:
    """2-D tensors matching ``select`` (and not ``deny``) -> MERGE, everything else -> ``unselected``."""

    def rule(key: str, shape: tuple[int, ...]) -> Role:
        if len(shape) == 2 and select.search(key) and not (deny is not None and deny.search(key)):
            return Role.MERGE
        return unselected

    return rule


def _everything(skip: re.Pattern | None = None) -> Rule:
    def rule(key: str, shape: tuple[int, ...]) -> Role:
        return Role.KEEP if skip is not None and skip.search(key) else Role.MERGE

    return rule


# FDA Vision/main_wudi.py selects the four linear weights of every open_clip residual block. The HF
# CLIP layout splits the fused q/k/v matrix, so the same layers are q/k/v/out_proj and fc1/fc2 there
# (the merged result differs from the fused layout: WUDI is not invariant to splitting a matrix).
# `self_attn.qkv_proj` is the HF-named fused matrix the CLIP suites merge in (qkv_layout: fused).
VISION_WUDI_KEYS = re.compile(
    r"(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight"
    r"|self_attn\.(q|k|v|qkv|out)_proj\.weight|mlp\.fc1\.weight|mlp\.fc2\.weight)$"
)
# FDA NLU/main_wudi_for_nlu.py: every key except these regexes (so: the 2-D weights of each layer).
NLU_WUDI_DENY = re.compile(r"classifier|bias|LayerNorm|embeddings")
CLASSIFIER = re.compile(r"classifier")
TEXT_PROJECTION = re.compile(r"text_projection")
# Llama decoder linear weights (HF LlamaForCausalLM / LlamaModel names).
LLM_LINEAR_KEYS = re.compile(r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)\.weight$")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "all",
            "FusionBench semantics: tsvm/wudi merge every 2-D tensor and average the rest; ta/average/ties merge all",
            {"tsvm": _matrix_else(Role.MEAN), "wudi": _matrix_else(Role.MEAN), "elementwise": _everything()},
        ),
        Preset(
            "fda-vision",
            "official FDA vision scripts: tsvm SVD-merges 2-D keys except text_projection (averaged), "
            "wudi only the 4 block linear weights (rest θ0)",
            {
                "tsvm": _matrix_else(Role.MEAN, skip=TEXT_PROJECTION, skip_role=Role.MEAN),
                "wudi": _only(VISION_WUDI_KEYS),
                "elementwise": _everything(),
            },
        ),
        Preset(
            "fda-nlu",
            "official FDA NLU scripts: tsvm skips classifier keys (θ0), wudi merges 2-D keys not matching "
            "classifier|bias|LayerNorm|embeddings (rest θ0); ta/average/ties skip classifier keys",
            {
                "tsvm": _matrix_else(Role.MEAN, skip=CLASSIFIER, skip_role=Role.KEEP),
                "wudi": _only(re.compile(r"."), deny=NLU_WUDI_DENY),
                "elementwise": _everything(skip=CLASSIFIER),
            },
        ),
        Preset(
            "fda-llm",
            "Llama decoders (our choice): tsvm/wudi merge the attention and MLP linear weights of every layer; "
            "tsvm averages the rest, wudi keeps the rest at θ0",
            {
                "tsvm": _only(LLM_LINEAR_KEYS, unselected=Role.MEAN),
                "wudi": _only(LLM_LINEAR_KEYS),
                "elementwise": _everything(),
            },
        ),
    )
}


def check_preset(name: str) -> None:
    """Raise ``HyperparameterError`` listing the presets if ``name`` is not one."""
    if name not in PRESETS:
        raise HyperparameterError(f"unknown coverage preset {name!r}; valid presets: {', '.join(PRESETS)}")


def compile_exclude(patterns: Sequence[str]) -> list[re.Pattern]:
    """Compile the user's ``exclude`` regexes; a malformed one is a ``HyperparameterError``."""
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as err:
            raise HyperparameterError(f"exclude pattern {p!r} is not a valid regular expression ({err})") from None
    return out


def role(preset: str, family: str, key: str, shape: tuple[int, ...], exclude: Sequence[re.Pattern] = ()) -> Role:
    """The role of one float tensor under ``preset`` for a method of ``family``."""
    check_preset(preset)
    if family not in FAMILIES:
        raise ValueError(f"unknown method family {family!r}; expected one of {FAMILIES}")
    if any(p.search(key) for p in exclude):
        return Role.KEEP
    return PRESETS[preset].rules[family](key, tuple(shape))
