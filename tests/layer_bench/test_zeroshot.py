"""Zero-shot head construction on a tiny CLIP: normalisation, scaling, template averaging, cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fda.bench.eval.zeroshot import (
    build_zeroshot_head,
    cached_zeroshot_head,
    head_cache_path,
    load_head,
    template_hash,
    zeroshot_logits,
)

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "photo", "of", "the", "cat", "dog", "bird", "texture", "pattern", "."]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, projection_dim=8, eos_token_id=2, bos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                           patch_size=8, projection_dim=8, hidden_act="quick_gelu"),
        projection_dim=8, logit_scale_init_value=math.log(20.0),
    )
    return CLIPModel(cfg).eval()


def _embed_one(model, tok, text):
    """Projected embedding of a single text, unbatched (no padding): the hand reference."""
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.text_model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        return model.text_projection(out.pooler_output)[0]


def test_rows_normalised_and_scaled():
    model, tok = tiny_clip(), tiny_tokenizer()
    head = build_zeroshot_head(model, tok, ["cat", "dog", "bird"], ["a photo of the {} ."], progress=False)
    assert head.shape == (3, 8)
    torch.testing.assert_close(head.norm(dim=1), torch.full((3,), 20.0))
    # one template: each row is 20 * the normalised text embedding of that prompt
    for row, name in zip(head, ["cat", "dog", "bird"]):
        torch.testing.assert_close(row, 20.0 * F.normalize(_embed_one(model, tok, f"a photo of the {name} ."), dim=0), atol=1e-5, rtol=1e-5)


def test_template_averaging_by_hand():
    model, tok = tiny_clip(), tiny_tokenizer()
    templates = ["a photo of the {} .", "{} texture", "the {} pattern ."]  # different lengths: padding must not matter
    head = build_zeroshot_head(model, tok, ["cat", "dog"], templates, progress=False)
    for row, name in zip(head, ["cat", "dog"]):
        embs = [F.normalize(_embed_one(model, tok, t.format(name)), dim=0) for t in templates]
        want = 20.0 * F.normalize((embs[0] + embs[1] + embs[2]) / 3, dim=0)
        torch.testing.assert_close(row, want, atol=1e-5, rtol=1e-5)
    # the average differs from any single template's row (averaging really happened)
    single = build_zeroshot_head(model, tok, ["cat", "dog"], templates[:1], progress=False)
    assert not torch.allclose(head, single, atol=1e-3)


def test_logits_and_argmax():
    w = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    logits = zeroshot_logits(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), w)
    torch.testing.assert_close(logits, torch.tensor([[1.2, 1.6], [2.0, 0.0]]))  # normalised image embeds
    assert logits.argmax(1).tolist() == [1, 0]


def test_bad_template():
    with pytest.raises(ValueError, match="placeholder"):
        build_zeroshot_head(tiny_clip(), tiny_tokenizer(), ["cat"], ["no slot"], progress=False)


def test_cache_hit_skips_model_and_key_depends_on_templates(tmp_path):
    model, tok = tiny_clip(), tiny_tokenizer()
    calls = []

    def factory():
        calls.append(1)
        return model

    h1, p1 = cached_zeroshot_head(tmp_path, "hf:tiny/clip", "pets", factory, lambda: tok, ["cat", "dog"], ["a photo of the {} ."], progress=False)
    h2, p2 = cached_zeroshot_head(tmp_path, "hf:tiny/clip", "pets", factory, lambda: tok, ["cat", "dog"], ["a photo of the {} ."], progress=False)
    assert len(calls) == 1 and p1 == p2 and torch.equal(h1, h2)
    weight, bias, meta = load_head(p1)
    assert bias is None and meta["template_hash"] == template_hash(["a photo of the {} ."], ["cat", "dog"])
    assert head_cache_path(tmp_path, "hf:tiny/clip", "pets", ["{} texture"], ["cat", "dog"]) != p1
    assert head_cache_path(tmp_path, "hf:other/clip", "pets", ["a photo of the {} ."], ["cat", "dog"]) != p1
