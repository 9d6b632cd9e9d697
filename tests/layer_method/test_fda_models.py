"""Tiny models of every FDA block family, and the adapter tests (structure, double backward).

The builders are imported by the other ``test_fda_*`` modules.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from fda.blocks import BlockAdapter, UnknownModelFamilyError, adapter_for, double_backward_context, register_adapter

D = 32  # hidden width of every tiny model


# ------------------------------------------------------------------------------------------------
# builders


def tiny_bert(cls_name: str = "BertModel") -> nn.Module:
    import transformers

    cfg = transformers.BertConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=50, max_position_embeddings=16)  # fmt: skip
    return getattr(transformers, cls_name)(cfg).eval()


def tiny_roberta() -> nn.Module:
    import transformers

    cfg = transformers.RobertaConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                     vocab_size=50, max_position_embeddings=20, num_labels=3)  # fmt: skip
    return transformers.RobertaForSequenceClassification(cfg).eval()


def tiny_clip(cls_name: str = "CLIPVisionModel") -> nn.Module:
    import transformers

    vcfg = transformers.CLIPVisionConfig(hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         image_size=12, patch_size=4, projection_dim=16)  # fmt: skip
    if cls_name == "CLIPModel":
        tcfg = transformers.CLIPTextConfig(hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           vocab_size=50, max_position_embeddings=8, projection_dim=16,
                                           bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
        cfg = transformers.CLIPConfig(text_config=tcfg.to_dict(), vision_config=vcfg.to_dict(), projection_dim=16)
        return transformers.CLIPModel(cfg).eval()
    return getattr(transformers, cls_name)(vcfg).eval()


def tiny_llama() -> nn.Module:
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=D, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=50, max_position_embeddings=32)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


class ResidualAttentionBlock(nn.Module):
    """Same structure and forward as open_clip's block (pre-LN, GELU MLP, sequence-first MHA)."""

    def __init__(self, d: int, heads: int, batch_first: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=batch_first)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * d, d))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TinyOpenClipVisual(nn.Module):
    """open_clip ``VisionTransformer``-like: ``positional_embedding`` and ``transformer.resblocks``."""

    def __init__(self, tokens: int = 5, layers: int = 2, batch_first: bool = False):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(tokens, D) * 0.02)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([ResidualAttentionBlock(D, 4, batch_first) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(D)
        self.proj = nn.Parameter(torch.randn(D, 16) * 0.02)


BUILDERS = {
    "bert": tiny_bert,
    "roberta": tiny_roberta,
    "clip-vision": tiny_clip,
    "llama": tiny_llama,
    "openclip": TinyOpenClipVisual,
}


def states(model: nn.Module, n_experts: int, scale: float = 0.05, seed: int = 1) -> tuple[dict, list[dict]]:
    """(pretrained, experts): the model's floating tensors plus random task vectors of relative size ``scale``."""
    gen = torch.Generator().manual_seed(seed)
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = []
    for _ in range(n_experts):
        ex = {}
        for k, v in pre.items():
            if v.is_floating_point():
                noise = torch.randn(v.shape, generator=gen)
                ex[k] = v + scale * noise * (v.abs().mean() + 1e-2)
            else:
                ex[k] = v.clone()
        experts.append(ex)
    return pre, experts


# ------------------------------------------------------------------------------------------------
# adapter structure


@pytest.mark.parametrize(
    ("builder", "family", "prefix"),
    [
        (lambda: tiny_bert("BertModel"), "bert", "encoder.layer.1."),
        (lambda: tiny_bert("BertForSequenceClassification"), "bert", "bert.encoder.layer.1."),
        (tiny_roberta, "roberta", "roberta.encoder.layer.1."),
        (lambda: tiny_clip("CLIPVisionModel"), "clip-vision", "encoder.layers.1."),  # flat in transformers v5
        (lambda: tiny_clip("CLIPVisionModelWithProjection"), "clip-vision", "vision_model.encoder.layers.1."),
        (lambda: tiny_clip("CLIPModel"), "clip-vision", "vision_model.encoder.layers.1."),
        (tiny_llama, "llama", "model.layers.1.mlp."),
        (TinyOpenClipVisual, "openclip", "transformer.resblocks.1."),
    ],
)
def test_adapter_lists_blocks_with_state_dict_prefixes(builder, family, prefix):
    model = builder()
    ad = adapter_for(model)
    assert ad.family == family
    assert ad.num_blocks == 2
    assert ad.block_prefix(1) == prefix
    sd = model.state_dict()
    assert all(k in sd for k in ad.block_keys(1))
    outside = ad.non_block_keys(sd)
    assert outside and not any(k.startswith(prefix) for k in outside)
    assert set(outside) | ad.all_block_keys() == {k for k in sd if k in outside or k in ad.all_block_keys()}
    assert ad.width == D


def test_weight_row_pools_follow_the_reference():
    assert adapter_for(tiny_bert()).weight_row_names(0) == [
        "attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
        "attention.output.dense.weight", "intermediate.dense.weight",
    ]  # fmt: skip
    # HF declares k, v, q; the pool follows open_clip's in_proj row order q, k, v
    assert adapter_for(tiny_clip()).weight_row_names(0) == [
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.out_proj.weight", "mlp.fc1.weight",
    ]  # fmt: skip
    assert adapter_for(tiny_llama()).weight_row_names(0) == ["gate_proj.weight", "up_proj.weight"]
    assert adapter_for(TinyOpenClipVisual()).weight_row_names(0) == ["attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight"]


def test_default_tokens_and_anchor_shapes():
    assert adapter_for(tiny_clip()).default_tokens() == (12 // 4) ** 2 + 1
    assert adapter_for(tiny_bert()).default_tokens() == 5
    llama = adapter_for(tiny_llama())
    assert llama.default_tokens() == 1 and llama.anchor_shape(8, 1) == (8, D)
    assert adapter_for(TinyOpenClipVisual(tokens=7)).default_tokens() == 7
    assert adapter_for(tiny_llama(), part="layer").anchor_shape(4, 3) == (4, 3, D)


def test_openclip_sequence_first_and_batch_first_agree():
    seq = TinyOpenClipVisual(batch_first=False)
    bat = TinyOpenClipVisual(batch_first=True)
    bat.load_state_dict(seq.state_dict())
    x = torch.randn(3, 5, D)
    a, b = adapter_for(seq), adapter_for(bat)
    params = dict(a.block_module(0).named_parameters())
    expected = seq.transformer.resblocks[0](x.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(a.call(0, params, x), expected)
    torch.testing.assert_close(b.call(0, params, x), expected)


def test_llama_layer_call_matches_the_model_layer():
    model = tiny_llama()
    ad = adapter_for(model, part="layer")
    x = torch.randn(2, 4, D)
    pos = torch.arange(4)[None]
    pe = model.model.rotary_emb(x, pos)
    mask = torch.full((4, 4), torch.finfo(x.dtype).min).triu(1)[None, None]
    with double_backward_context():
        expected = model.model.layers[0](x, attention_mask=mask, position_embeddings=pe, position_ids=pos)
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(ad.call(0, dict(ad.block_module(0).named_parameters()), x), expected)


# ------------------------------------------------------------------------------------------------
# double backward through every adapter


@pytest.mark.parametrize("family", [*BUILDERS, "llama-layer"])
def test_double_backward_through_each_adapter(family):
    model = tiny_llama() if family == "llama-layer" else BUILDERS[family]()
    ad = adapter_for(model, part="layer" if family == "llama-layer" else None)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in ad.block_module(0).named_parameters()}
    x = torch.randn(ad.anchor_shape(3, 4), requires_grad=True)
    out = ad.call(0, params, x)
    grads = torch.autograd.grad(out.square().mean(), list(params.values()), create_graph=True)
    second = sum(g.square().sum() for g in grads)
    (gx,) = torch.autograd.grad(second, x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# registry


def test_unknown_family_error_says_how_to_add_an_adapter():
    with pytest.raises(UnknownModelFamilyError, match="register_adapter") as info:
        adapter_for(nn.Sequential(nn.Linear(3, 3)))
    assert "Sequential" in str(info.value) and "bert" in str(info.value)


def test_attention_without_double_backward_is_refused():
    model = tiny_bert()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="double backward"):
        adapter_for(model)
    llama = tiny_llama()
    llama.config._attn_implementation = "flash_attention_2"
    assert adapter_for(llama).num_blocks == 2  # the MLP block has no attention
    with pytest.raises(ValueError, match="eager"):
        adapter_for(llama, part="layer")


def test_part_is_checked():
    with pytest.raises(ValueError, match="part"):
        adapter_for(tiny_bert(), part="mlp")
    with pytest.raises(ValueError, match="choices"):
        adapter_for(tiny_llama(), part="attention")


def test_register_adapter_adds_a_family():
    class MLPStack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(D, D) for _ in range(3)])

    class MLPStackAdapter(BlockAdapter):
        family = "mlpstack"
        official_layout = "ND"

        @classmethod
        def matches(cls, model):
            return isinstance(model, MLPStack)

        def _find_blocks(self, model):
            return "layers.", list(model.layers)

        def default_tokens(self):
            return 1

        def _width(self, block):
            return block.in_features

        def _call(self, module, params, x):
            return torch.func.functional_call(module, params, (x,))

    register_adapter(MLPStackAdapter)
    try:
        ad = adapter_for(MLPStack())
        assert ad.family == "mlpstack" and ad.num_blocks == 3 and ad.block_keys(2) == ["layers.2.weight", "layers.2.bias"]
    finally:
        from fda import blocks

        blocks._ADAPTERS.remove(MLPStackAdapter)


# ------------------------------------------------------------------------------------------------
# real open_clip (optional extra; not installed in CI): run only where the package is present


def _import_open_clip(monkeypatch):
    import importlib.machinery
    import importlib.util
    from unittest import mock

    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (optional extra)")
    if importlib.util.find_spec("torchvision") is None:
        # open_clip imports torchvision at module level for its image transforms only: stub it
        for name in ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops", "torchvision.ops.misc"]:
            stub = mock.MagicMock()
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            monkeypatch.setitem(sys.modules, name, stub)
    return pytest.importorskip("open_clip")


def test_real_open_clip_model(monkeypatch):
    open_clip = _import_open_clip(monkeypatch)
    model = open_clip.model.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=16, patch_size=8, width=D, layers=2, head_width=8),
        text_cfg=dict(context_length=8, vocab_size=50, width=D, heads=4, layers=1),
    ).eval()
    ad = adapter_for(model)
    assert ad.family == "openclip" and ad.num_blocks == 2
    assert ad.block_prefix(1) == "visual.transformer.resblocks.1."
    assert ad.default_tokens() == (16 // 8) ** 2 + 1
    block = model.visual.transformer.resblocks[0]
    x = torch.randn(3, ad.default_tokens(), D)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in block.named_parameters()}
    seq_first = not block.attn.batch_first
    expected = block(x.transpose(0, 1)).transpose(0, 1) if seq_first else block(x)
    torch.testing.assert_close(ad.call(0, params, x), expected)
    x2 = x.clone().requires_grad_(True)
    grads = torch.autograd.grad(ad.call(0, params, x2).square().mean(), list(params.values()), create_graph=True)
    (gx,) = torch.autograd.grad(sum(g.square().sum() for g in grads), x2)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
    # and the whole pipeline on it: construction on the visual tower, weight-row pool as the reference
    import fda

    assert ad.weight_row_names(0) == ["attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight"]
    pre, experts = states(model, 1)
    cfg = fda.FDAConfig.for_family("openclip", n_anchors=4, construct_steps=10, progress=False)
    (res,) = fda.construct_block(model, pre, experts, 1, "weight", cfg)
    assert res.anchors.shape == (4, ad.default_tokens(), D) and res.log.mean_cos().max() > res.log.mean_cos()[0]
