"""open_clip ↔ HF CLIP vision conversion, fused/split q-k-v, and the task_vectors pickle path."""

from __future__ import annotations

import os
import re
from pathlib import Path
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fda.io.checkpoints import CheckpointError, load_state_dict
from fda.bench.openclip_convert import (
    ConversionError,
    convert_taskvectors_encoder,
    convert_taskvectors_dir,
    convert_taskvectors_head,
    main,
    fuse_qkv,
    hf_to_openclip_visual,
    is_fused,
    load_taskvectors_object,
    openclip_visual_to_hf,
    split_qkv,
    to_layout,
)

D, HEADS, LAYERS, PATCH, IMG, EMB = 32, 4, 2, 8, 32, 16
GRID = IMG // PATCH


def openclip_state(prefix: str = "visual.", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random open_clip ViT image tower state dict (shapes of open_clip's VisionTransformer)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "conv1.weight": r(D, 3, PATCH, PATCH),
        "class_embedding": r(D),
        "positional_embedding": r(GRID * GRID + 1, D),
        "ln_pre.weight": 1 + r(D), "ln_pre.bias": r(D),
        "ln_post.weight": 1 + r(D), "ln_post.bias": r(D),
        "proj": r(D, EMB),
    }
    for layer in range(LAYERS):
        b = f"transformer.resblocks.{layer}."
        sd |= {
            b + "ln_1.weight": 1 + r(D), b + "ln_1.bias": r(D),
            b + "attn.in_proj_weight": r(3 * D, D, scale=0.2), b + "attn.in_proj_bias": r(3 * D),
            b + "attn.out_proj.weight": r(D, D, scale=0.2), b + "attn.out_proj.bias": r(D),
            b + "ln_2.weight": 1 + r(D), b + "ln_2.bias": r(D),
            b + "mlp.c_fc.weight": r(4 * D, D, scale=0.2), b + "mlp.c_fc.bias": r(4 * D),
            b + "mlp.c_proj.weight": r(D, 4 * D, scale=0.2), b + "mlp.c_proj.bias": r(D),
        }
    return {prefix + k: v for k, v in sd.items()}


def openclip_visual_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """open_clip's ViT image forward restated in plain torch: conv1 patches, class token,
    positional embedding, ln_pre, residual blocks (nn.MultiheadAttention, QuickGELU MLP), ln_post on
    the class token, projection. ``sd`` has no prefix. Returns [B, EMB]."""
    x = F.conv2d(x, sd["conv1.weight"], stride=PATCH)            # [B, D, g, g]
    x = x.flatten(2).transpose(1, 2)                              # [B, g*g, D]
    cls = sd["class_embedding"].expand(x.shape[0], 1, D)
    x = torch.cat([cls, x], dim=1) + sd["positional_embedding"]
    x = F.layer_norm(x, (D,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    for layer in range(LAYERS):
        b = f"transformer.resblocks.{layer}."
        attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        attn.load_state_dict({"in_proj_weight": sd[b + "attn.in_proj_weight"], "in_proj_bias": sd[b + "attn.in_proj_bias"],
                              "out_proj.weight": sd[b + "attn.out_proj.weight"], "out_proj.bias": sd[b + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (D,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (D,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"])
        h = F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)                          # QuickGELU (OpenAI weights)
        x = x + F.linear(h, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    pooled = F.layer_norm(x[:, 0], (D,), sd["ln_post.weight"], sd["ln_post.bias"])
    return pooled @ sd["proj"]


def hf_tower():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=D, intermediate_size=4 * D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                           image_size=IMG, patch_size=PATCH, projection_dim=EMB, hidden_act="quick_gelu")
    return CLIPVisionModelWithProjection(cfg).eval()


def test_openclip_to_hf_outputs_equal():
    oc = openclip_state()
    hf_state = openclip_visual_to_hf(oc)
    model = hf_tower()
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    x = torch.randn(3, 3, IMG, IMG)
    with torch.no_grad():
        want = openclip_visual_forward({k[len("visual."):]: v for k, v in oc.items()}, x)
        got = model(pixel_values=x).image_embeds
    assert want.shape == got.shape == (3, EMB)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_prefix_detection_and_text_leftovers_dropped():
    oc = openclip_state(prefix="model.visual.")
    oc["model.token_embedding.weight"] = torch.zeros(10, D)
    oc["model.logit_scale"] = torch.tensor(4.6)
    hf_state = openclip_visual_to_hf(oc)
    assert "visual_projection.weight" in hf_state and not any("token" in k or "logit" in k for k in hf_state)
    assert torch.equal(hf_state["visual_projection.weight"], oc["model.visual.proj"].t())


def test_hf_openclip_round_trip_exact():
    oc = openclip_state()
    back = hf_to_openclip_visual(openclip_visual_to_hf(oc))
    assert set(back) == set(oc)
    assert all(torch.equal(back[k], oc[k]) for k in oc)


def test_unknown_openclip_key_is_named():
    oc = openclip_state()
    oc["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(D)
    with pytest.raises(ConversionError, match="ls_1.gamma"):
        openclip_visual_to_hf(oc)


def test_fused_split_round_trip_exact():
    hf_state = openclip_visual_to_hf(openclip_state())
    fused = fuse_qkv(hf_state)
    assert is_fused(fused) and not any(re.search(r"\.[qkv]_proj\.", k) for k in fused)
    w = fused["vision_model.encoder.layers.0.self_attn.qkv_proj.weight"]
    assert w.shape == (3 * D, D)
    # the fused matrix is exactly open_clip's in_proj_weight
    assert torch.equal(w, openclip_state()["visual.transformer.resblocks.0.attn.in_proj_weight"])
    back = split_qkv(fused)
    assert set(back) == set(hf_state)
    assert all(torch.equal(back[k], hf_state[k]) for k in hf_state)
    assert to_layout(fused, "fused").keys() == fused.keys()  # idempotent
    with pytest.raises(ValueError, match="qkv_layout"):
        to_layout(hf_state, "diagonal")  # type: ignore[arg-type]


def test_fuse_refuses_incomplete_triple():
    hf_state = openclip_visual_to_hf(openclip_state())
    del hf_state["vision_model.encoder.layers.1.self_attn.v_proj.bias"]
    with pytest.raises(ConversionError, match="layers.1.self_attn"):
        fuse_qkv(hf_state)


# ------------------------------------------------------------------ task_vectors pickles


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS)
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(D, 4 * D), gelu=QuickGELU(), c_proj=nn.Linear(4 * D, D)))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock() for _ in range(LAYERS)])


class VisualTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, D, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(D))
        self.positional_embedding = nn.Parameter(torch.randn(GRID * GRID + 1, D))
        self.ln_pre = nn.LayerNorm(D)
        self.transformer = Transformer()
        self.ln_post = nn.LayerNorm(D)
        self.proj = nn.Parameter(torch.randn(D, EMB))


class CLIP(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = VisualTransformer()
        self.logit_scale = nn.Parameter(torch.tensor(4.6))


class ImageEncoder(nn.Module):
    """Same attribute layout as task_vectors' pickled ImageEncoder (model.visual...)."""

    def __init__(self):
        super().__init__()
        self.model = CLIP()


class ClassificationHead(nn.Linear):
    def __init__(self, weights):
        super().__init__(weights.shape[1], weights.shape[0])
        self.normalize = True
        self.weight = nn.Parameter(weights.clone())
        self.bias = nn.Parameter(torch.zeros(weights.shape[0]))

    def forward(self, x):
        return super().forward(F.normalize(x, dim=-1))


def test_pickled_module_needs_trust_then_converts(tmp_path):
    enc = ImageEncoder()
    torch.save(enc, tmp_path / "finetuned.pt")
    with pytest.raises(CheckpointError, match="trust_pickle"):
        convert_taskvectors_encoder(tmp_path / "finetuned.pt", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.warns(RuntimeWarning, match="trust_pickle=True"):
        convert_taskvectors_encoder(tmp_path / "finetuned.pt", tmp_path / "out.safetensors", trust_pickle=True)
    got = load_state_dict(tmp_path / "out.safetensors")
    want = openclip_visual_to_hf(enc.state_dict())
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_plain_state_dict_needs_no_trust(tmp_path):
    oc = openclip_state(prefix="model.visual.")
    torch.save(oc, tmp_path / "zeroshot.pt")
    convert_taskvectors_encoder(tmp_path / "zeroshot.pt", tmp_path / "z.safetensors")
    assert torch.equal(load_state_dict(tmp_path / "z.safetensors")["vision_model.embeddings.class_embedding"],
                       oc["model.visual.class_embedding"])


def test_head_conversion(tmp_path):
    w = torch.randn(5, EMB)
    torch.save(ClassificationHead(w), tmp_path / "head_MNIST.pt")
    with pytest.warns(RuntimeWarning):
        convert_taskvectors_head(tmp_path / "head_MNIST.pt", tmp_path / "head.safetensors", trust_pickle=True)
    head = load_state_dict(tmp_path / "head.safetensors")
    assert set(head) == {"weight"} and torch.equal(head["weight"], w)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_allowlist_refuses_functions_even_when_trusted(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="refusing global"):
        load_taskvectors_object(tmp_path / "evil.pt", trust_pickle=True)


class _EvilTorch:
    """A pickle that runs a shell command through a torch function (not a weights rebuilder)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import torch.utils.collect_env

        return (torch.utils.collect_env.run, (f"touch {self.marker}",))


def test_allowlist_refuses_torch_functions_that_run_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _EvilTorch(marker)}, tmp_path / "evil.pt")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="refusing global torch.utils.collect_env.run"):
        load_taskvectors_object(tmp_path / "evil.pt", trust_pickle=True)
    assert not marker.exists()


def _import_openclip(monkeypatch):
    """open_clip if installed (the optional extra); without torchvision, behind a module stub
    (only open_clip's image transforms need it, and they are not used here)."""
    import importlib.machinery
    import importlib.util
    import sys
    from unittest import mock

    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip not installed (optional extra: pip install --no-deps open_clip_torch ftfy wcwidth)")
    if importlib.util.find_spec("torchvision") is None:
        for name in ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops", "torchvision.ops.misc"]:
            stub = mock.MagicMock()
            stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
            monkeypatch.setitem(sys.modules, name, stub)
    import open_clip

    return open_clip


def test_against_real_openclip(monkeypatch, tmp_path):
    """Where open_clip is installed: its own ViT (QuickGELU) vs HF on the converted state dict."""
    import json

    open_clip = _import_openclip(monkeypatch)
    cfg = {"embed_dim": EMB, "quick_gelu": True,
           "vision_cfg": {"image_size": IMG, "layers": LAYERS, "width": D, "patch_size": PATCH, "head_width": D // HEADS},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "FdaTinyViT.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "FdaTinyViT.json"))
    model = open_clip.create_model("FdaTinyViT").eval()
    with torch.no_grad():  # random init leaves some tensors at zero/one: randomise everything
        for p in model.visual.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 and p.shape[0] == D else 0.0))
    hf = hf_tower()
    missing, unexpected = hf.load_state_dict(openclip_visual_to_hf(model.state_dict()), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).image_embeds, model.encode_image(x), atol=1e-5, rtol=1e-4)
    # and the plain-torch restatement used by the offline test agrees with open_clip itself
    with torch.no_grad():
        plain = openclip_visual_forward({k[len("visual."):]: v for k, v in model.state_dict().items() if k.startswith("visual.")}, x)
    torch.testing.assert_close(plain, model.encode_image(x), atol=1e-5, rtol=1e-4)
    # a pickled open_clip module (as task_vectors ships them) converts through the stub unpickler
    torch.save(model, tmp_path / "finetuned.pt")
    with pytest.warns(RuntimeWarning):
        convert_taskvectors_encoder(tmp_path / "finetuned.pt", tmp_path / "ft.safetensors", trust_pickle=True)
    got, want = load_state_dict(tmp_path / "ft.safetensors"), openclip_visual_to_hf(model.state_dict())
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_convert_dir_and_cli(tmp_path, capsys):
    root = tmp_path / "ViT-B-32"
    (root / "MNIST").mkdir(parents=True)
    torch.save(openclip_state(prefix="model.visual.", seed=1), root / "zeroshot.pt")
    torch.save(openclip_state(prefix="model.visual.", seed=2), root / "MNIST" / "finetuned.pt")
    torch.save(ClassificationHead(torch.randn(10, EMB)), tmp_path / "head_MNIST.pt")  # heads sit one level up
    assert main([str(root), str(tmp_path / "out"), "--tasks", "mnist"]) == 2  # the pickled head needs trust
    assert "trust_pickle" in capsys.readouterr().out
    with pytest.warns(RuntimeWarning):
        assert main([str(root), str(tmp_path / "out"), "--tasks", "mnist", "--trust-pickle"]) == 0
    done = convert_taskvectors_dir(root, tmp_path / "out", tasks=["mnist"])  # already converted: nothing to unpickle
    assert sorted(done) == ["head:mnist", "mnist", "zeroshot"]
    assert load_state_dict(done["head:mnist"])["weight"].shape == (10, EMB)
    assert "visual_projection.weight" in load_state_dict(done["mnist"])
