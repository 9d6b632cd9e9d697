"""Paper-scale suites on tiny models of the same architecture, through the Suite contract:
prepare data/base/experts from local sources (FusionBench-style HF dirs, task_vectors open_clip
files, RoBERTa classifiers, the fine-tuning recipe), merge, evaluate with each task's own head."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from torch import nn

from fda.io.checkpoints import CheckpointError, load_state_dict, save_state_dict
from fda.bench.openclip_convert import hf_to_openclip_visual, is_fused
from fda.bench.sources import SourceError
from fda.bench.suites.clip_vision import ClipVisionSettings, VitB16Suite, VitB32Suite, VitL14Suite
from fda.bench.suites.glue import GlueSettings, RobertaBaseSuite, build_classifier
from fda.bench.eval.zeroshot import load_head

VWORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "photo", "of", "the", "number", ":", '"', ".", "centered", "satellite",
          "annual", "crop", "land", "forest", "river", "0", "1", "2"]
TWORDS = ["<s>", "<pad>", "</s>", "<unk>"] + "the a cat dog sat on mat is not good bad very movie film was".split()


def _word_tokenizer(words, single, pair, specials):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=[(s, vocab[s]) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>")


# ------------------------------------------------------------------ tiny CLIP world


def build_clip(tmp_path):
    """A tiny CLIPModel dir (ViT: width 32, 2 layers, 4 heads, 32 px, patch 8; text tower) with a
    word-level tokenizer and a CLIPImageProcessor, as openai/clip-vit-* dirs are laid out."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(VWORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=24, projection_dim=16, eos_token_id=2, bos_token_id=1, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                           patch_size=8, hidden_act="quick_gelu"),  # no projection_dim here, as in openai/clip-vit-* configs
        projection_dim=16,
    )
    d = tmp_path / "clip"
    CLIPModel(cfg).save_pretrained(str(d))
    _word_tokenizer(VWORDS, "<bos> $A <eos>", "<bos> $A <eos> $B <eos>", ["<bos>", "<eos>"]).save_pretrained(str(d))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(d))
    return d


def build_images(path, names, n=12, seed=0):
    import datasets
    from PIL import Image

    rng = np.random.RandomState(seed)
    images = [Image.fromarray((rng.rand(28, 28) * 255).astype("uint8")) for _ in range(n)]  # grey, like MNIST
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": images, "label": [i % len(names) for i in range(n)]}, features=feats)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(path))
    return path


def build_fb_expert(clip_dir, out, seed, v4_layout=False):
    """A FusionBench-style expert: a CLIPVisionModel dir (no visual_projection) = base tower + noise.
    transformers v5 saves its keys as ``embeddings.*``; the hub files (v4) as ``vision_model.*``."""
    from transformers import CLIPModel, CLIPVisionModel

    clip = CLIPModel.from_pretrained(str(clip_dir))
    g = torch.Generator().manual_seed(seed)
    model = CLIPVisionModel(clip.config.vision_config)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in clip.vision_model.state_dict().items()}
    model.load_state_dict(state)
    model.save_pretrained(str(out))
    if v4_layout:
        save_state_dict({"vision_model." + k: v for k, v in state.items()}, out / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def clip_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clipworld")
    clip = build_clip(tmp)
    return {
        "clip": clip,
        "data": {"mnist": build_images(tmp / "mnist", ["0", "1", "2"], seed=1),
                 "eurosat": build_images(tmp / "eurosat", ["AnnualCrop", "Forest", "River"], seed=2)},
        "experts": {"mnist": build_fb_expert(clip, tmp / "fb_mnist", 1),
                    "eurosat": build_fb_expert(clip, tmp / "fb_eurosat", 2, v4_layout=True)},
    }


class Node(nn.Module):
    """A bare module tree (pickled like task_vectors' ImageEncoder: classes unknown to the loader)."""


def module_from_state(state):
    root = Node()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, Node())
            node = node._modules[part]
        node.register_parameter(leaf, nn.Parameter(value.clone()))
    return root


def _ta(pre, experts, lam=0.3):
    return {k: pre[k] + lam * sum(e[k] - pre[k] for e in experts) for k in pre}


def _run_suite(suite, work, tasks):
    suite.prepare_data(work / "data", 0)
    suite.prepare_base(work / "base", work / "data", 0)
    for t in tasks:
        suite.prepare_expert(t, work / "base", work / "data", work / "experts" / t, 0)
    return work / "base", work / "data", {t: work / "experts" / t for t in tasks}


def test_vitb32_fusionbench_merge_and_evaluate(clip_world, tmp_path):
    tasks = ["mnist", "eurosat"]
    suite = VitB32Suite({"base": str(clip_world["clip"]), "tasks": tasks, "experts": {t: str(p) for t, p in clip_world["experts"].items()},
                         "datasets": {t: str(p) for t, p in clip_world["data"].items()}, "device": "cpu", "batch_size": 5,
                         "head_cache": str(tmp_path / "cache"), "progress": False})
    assert suite.qkv_layout == "split" and suite.provenance()["expert_source"] == "fusionbench"
    assert suite.expert_spec("cars") == "hf:tanganke/clip-vit-base-patch32_stanford-cars"
    base, data, experts = _run_suite(suite, tmp_path / "work", tasks)

    # heads: zero-shot, class names from the dataset features (EuroSAT names made descriptive)
    w, _, meta = load_head(experts["eurosat"] / "head.safetensors")
    assert w.shape == (3, 16) and json.loads(meta["classnames"]) == ["annual crop land", "forest", "river"]
    assert torch.allclose(w.norm(dim=1), w.norm(dim=1)[0].expand(3))  # rows share the logit scale

    pre = load_state_dict(base)
    exp = {t: load_state_dict(d) for t, d in experts.items()}
    assert set(exp["mnist"]) == set(pre)  # visual_projection added from the base
    assert torch.equal(exp["mnist"]["visual_projection.weight"], pre["visual_projection.weight"])
    assert not torch.equal(exp["mnist"]["vision_model.encoder.layers.0.mlp.fc1.weight"], pre["vision_model.encoder.layers.0.mlp.fc1.weight"])

    merged = suite.from_merge_layout(_ta(suite.to_merge_layout(pre), [suite.to_merge_layout(e) for e in exp.values()]))
    for t in tasks:
        rows = suite.evaluate(merged, t, base, data, experts[t])
        assert rows[0]["metric"] == "accuracy" and 0.0 <= rows[0]["value"] <= 1.0 and rows[1]["metric"] == "loss"

    # evaluate == a hand-run of the expert model + head + processor
    from transformers import CLIPImageProcessorPil

    model = suite.load_encoder(experts["mnist"])
    proc = CLIPImageProcessorPil.from_pretrained(str(base))
    import datasets

    ds = datasets.load_from_disk(str(clip_world["data"]["mnist"]))["test"]
    px = proc(images=[im.convert("RGB") for im in ds["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model(pixel_values=px).image_embeds, dim=-1)
    head = load_head(experts["mnist"] / "head.safetensors")[0]
    want = float(((emb @ head.t()).argmax(1) == torch.tensor(ds["label"])).float().mean())
    got = suite.evaluate(exp["mnist"], "mnist", base, data, experts["mnist"])[0]["value"]
    assert got == pytest.approx(want)

    # head swap: the same encoder with another task's head predicts differently
    p_own, _ = suite.predict(pre, "mnist", base, data, experts["mnist"])
    p_other, _ = suite.predict(pre, "mnist", base, data, experts["eurosat"])
    assert p_own != p_other

    # limit
    assert len(suite.predict(pre, "mnist", base, data, experts["mnist"], limit=4)[0]) == 4


def test_vit_taskvectors_source_fused_layout(clip_world, tmp_path):
    """The paper's checkpoint family: open_clip-layout files (a converted .safetensors, a plain
    weights-only .pt, a stored head), merged in the fused q/k/v layout."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(str(clip_world["clip"]))
    base_tower = {k: v for k, v in clip.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    tv = tmp_path / "ViT-B-32"
    (tv / "MNIST").mkdir(parents=True)
    (tv / "EuroSAT").mkdir()
    torch.save(hf_to_openclip_visual(base_tower, prefix="model.visual."), tv / "zeroshot.pt")
    for task, folder, seed in (("mnist", "MNIST", 1), ("eurosat", "EuroSAT", 2)):
        g = torch.Generator().manual_seed(seed)
        ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base_tower.items()}
        oc = hf_to_openclip_visual(ft, prefix="model.visual.")
        if task == "mnist":
            torch.save(module_from_state(oc), tv / folder / "finetuned.pt")  # a pickled module, as task_vectors ships
        else:
            save_state_dict(oc, tv / folder / "finetuned.safetensors")
    stored = torch.randn(3, 16)
    torch.save({"weight": stored, "bias": torch.zeros(3)}, tv / "head_MNIST.pt")

    tasks = ["mnist", "eurosat"]
    settings = {"base": str(clip_world["clip"]), "expert_source": "taskvectors", "taskvectors_dir": str(tv), "tasks": tasks,
                "datasets": {t: str(p) for t, p in clip_world["data"].items()}, "device": "cpu", "head_cache": "",
                "progress": False, "copy_data": True}
    untrusted = VitB32Suite(settings)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        _run_suite(untrusted, tmp_path / "untrusted", tasks)
    suite = VitB32Suite({**settings, "trust_pickle": True})
    assert suite.qkv_layout == "fused" and suite.provenance()["qkv_layout"] == "fused"
    with pytest.warns(RuntimeWarning, match="trust_pickle"):
        base, data, experts = _run_suite(suite, tmp_path / "work", tasks)
    assert (data / "mnist" / "dataset_dict.json").is_file()  # copy_data
    assert torch.equal(load_head(experts["mnist"] / "head.safetensors")[0], stored)  # stored head used
    assert load_head(experts["eurosat"] / "head.safetensors")[2]["kind"] == "zeroshot"  # no head file: zero-shot

    pre = load_state_dict(base)
    torch.testing.assert_close(pre["visual_projection.weight"], base_tower["visual_projection.weight"])
    fused_pre = suite.to_merge_layout(pre)
    assert is_fused(fused_pre) and fused_pre["vision_model.encoder.layers.1.self_attn.qkv_proj.weight"].shape == (96, 32)
    merged_fused = _ta(fused_pre, [suite.to_merge_layout(load_state_dict(experts[t])) for t in tasks])
    r_fused = suite.evaluate(merged_fused, "eurosat", base, data, experts["eurosat"])  # fused state accepted as is
    r_split = suite.evaluate(suite.from_merge_layout(merged_fused), "eurosat", base, data, experts["eurosat"])
    assert r_fused == r_split


def test_vision_settings_errors(clip_world):
    with pytest.raises(ValueError, match=r"unknown settings key.*'bogus'.*valid keys"):
        VitB32Suite({"bogus": 1})
    with pytest.raises(ValueError, match="unknown task"):
        VitB32Suite({"tasks": ["imagenet"]})
    with pytest.raises(ValueError, match="taskvectors_dir"):
        VitB32Suite({"expert_source": "taskvectors"})
    assert VitL14Suite({}).expert_spec("dtd") == "hf:tanganke/clip-vit-large-patch14_dtd"
    assert VitL14Suite({}).base_source == "hf:openai/clip-vit-large-patch14"
    assert ClipVisionSettings.smoke().limit == 64


def test_vision_expert_shape_mismatch_names_file_and_key(clip_world, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    bad = tmp_path / "bad"
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    CLIPVisionModel(cfg).save_pretrained(str(bad))
    suite = VitB32Suite({"base": str(clip_world["clip"]), "tasks": ["mnist"], "experts": {"mnist": str(bad)},
                         "datasets": {"mnist": str(clip_world["data"]["mnist"])}, "device": "cpu", "head_cache": "", "progress": False})
    suite.prepare_data(tmp_path / "data", 0)
    suite.prepare_base(tmp_path / "base", tmp_path / "data", 0)
    with pytest.raises(SourceError, match=r"bad.*fc1\.(weight|bias)' has shape"):
        suite.prepare_expert("mnist", tmp_path / "base", tmp_path / "data", tmp_path / "exp", 0)
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------ tiny RoBERTa world


def build_roberta(tmp_path):
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(TWORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    d = tmp_path / "roberta"
    RobertaForMaskedLM(cfg).save_pretrained(str(d))
    _word_tokenizer(TWORDS, "<s> $A </s>", "<s> $A </s> </s> $B </s>", ["<s>", "</s>"]).save_pretrained(str(d))
    return d


def build_glue(path, regression=False, n_train=40, n_val=16, seed=0):
    import datasets

    rng = np.random.RandomState(seed)
    words = TWORDS[4:]

    def sent():
        return " ".join(rng.choice(words, size=rng.randint(3, 8)))

    def split(n):
        s1, s2 = [sent() for _ in range(n)], [sent() for _ in range(n)]
        if regression:
            labels = [float(len(set(a.split()) & set(b.split()))) for a, b in zip(s1, s2)]
            return datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "label": labels})
        feats = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                   "label": datasets.ClassLabel(names=["no", "yes"])})
        labels = [int("good" in a) for a in s1]
        return datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "label": labels}, features=feats)

    datasets.DatasetDict({"train": split(n_train), "validation": split(n_val)}).save_to_disk(str(path))
    return path


def build_glue_expert(base, out, seed, num_labels=2):
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(seed)
    model = RobertaForSequenceClassification.from_pretrained(str(base), num_labels=num_labels)
    with torch.no_grad():
        for p in model.roberta.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def glue_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("glueworld")
    base = build_roberta(tmp)
    return {
        "base": base,
        "data": {"rte": build_glue(tmp / "rte", seed=1), "mrpc": build_glue(tmp / "mrpc", seed=2),
                 "stsb": build_glue(tmp / "stsb", regression=True, seed=3)},
        "experts": {"rte": build_glue_expert(base, tmp / "e_rte", 1), "mrpc": build_glue_expert(base, tmp / "e_mrpc", 2)},
    }


def test_robertab_merge_and_evaluate_with_recipe(glue_world, tmp_path):
    tasks = ["mrpc", "stsb", "rte"]
    suite = RobertaBaseSuite({"base": str(glue_world["base"]), "tasks": tasks,
                              "experts": {"rte": str(glue_world["experts"]["rte"]), "mrpc": str(glue_world["experts"]["mrpc"])},
                              "datasets": {t: str(p) for t, p in glue_world["data"].items()}, "device": "cpu", "progress": False,
                              "max_length": 32, "batch_size": 8, "epochs": 2, "train_batch_size": 8, "max_train_samples": 16,
                              "max_val_samples": 8})
    assert suite.expert_spec("stsb") == "recipe:finetune"
    assert suite.provenance()["expert_source"] == "finetune+local"
    base, data, experts = _run_suite(suite, tmp_path / "work", tasks)

    prov = json.loads((experts["stsb"] / "provenance.json").read_text())
    assert prov["recipe"]["lr"] == 1e-5 and prov["recipe"]["train_examples"] == 16 and len(prov["recipe"]["heldout_scores"]) == 2
    assert load_state_dict(experts["stsb"] / "head.safetensors")["out_proj.weight"].shape == (1, 32)

    pre = load_state_dict(base)
    assert not any(k.startswith(("roberta.", "pooler.", "classifier.")) for k in pre)
    exp = {t: load_state_dict(d) for t, d in experts.items()}
    assert all(set(e) == set(pre) for e in exp.values())
    # the recipe moved the encoder (lr 1e-5, 4 steps: small but non-zero)
    assert any(not torch.equal(exp["stsb"][k], pre[k]) for k in pre)

    merged = _ta(pre, list(exp.values()))
    names = {t: suite.evaluate(merged, t, base, data, experts[t])[0]["metric"] for t in tasks}
    assert names == {"mrpc": "accf1", "stsb": "corr", "rte": "accuracy"}

    # evaluate(expert) == the original RobertaForSequenceClassification expert, run by hand
    from transformers import AutoTokenizer, RobertaForSequenceClassification
    import datasets

    ref = RobertaForSequenceClassification.from_pretrained(str(glue_world["experts"]["rte"])).eval()
    tok = AutoTokenizer.from_pretrained(str(base))
    val = datasets.load_from_disk(str(glue_world["data"]["rte"]))["validation"]
    enc = tok(list(val["sentence1"]), list(val["sentence2"]), truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = (ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(1) == torch.tensor(list(val["label"]))).float().mean()
    got = suite.evaluate(exp["rte"], "rte", base, data, experts["rte"])[0]["value"]
    assert got == pytest.approx(float(want))

    # head swap: same encoder, rte data, rte head vs mrpc head -> different predictions
    p_own, _ = suite.predict(pre, "rte", base, data, experts["rte"])
    p_other, _ = suite.predict(pre, "rte", base, data, experts["mrpc"])
    assert p_own != p_other
    assert len(suite.predict(pre, "rte", base, data, experts["rte"], limit=5)[0]) == 5


def test_glue_selection_split_is_the_recipes_heldout_slice(glue_world, tmp_path):
    """With every expert fine-tuned here, split="validation" scores the recipe's held-out slice of
    train (which the experts never trained on), not GLUE's validation split (our test split); with a
    fetched expert it is refused, naming why (docs/selection.md)."""
    import datasets

    settings = {"base": str(glue_world["base"]), "tasks": ["rte"], "datasets": {"rte": str(glue_world["data"]["rte"])},
                "device": "cpu", "progress": False, "max_length": 32, "batch_size": 8, "epochs": 1, "train_batch_size": 8,
                "max_train_samples": 16, "max_val_samples": 3}
    suite = RobertaBaseSuite(settings)
    assert suite.expert_spec("rte") == "recipe:finetune" and suite.selection_unavailable() is None
    base, data, experts = _run_suite(suite, tmp_path / "work", ["rte"])
    state = load_state_dict(experts["rte"])
    val = suite.evaluate(state, "rte", base, data, experts["rte"], split="validation")[0]["outcome"]
    test = suite.evaluate(state, "rte", base, data, experts["rte"])[0]["outcome"]
    train = datasets.load_from_disk(str(glue_world["data"]["rte"]))["train"]
    held_out = suite.heldout_indices(len(train))
    assert len(val.references) == len(held_out) == 3 and len(test.references) == 16
    np.testing.assert_array_equal(val.references, np.asarray(train["label"])[held_out])
    prov = json.loads((experts["rte"] / "provenance.json").read_text())
    assert prov["recipe"]["heldout_examples"] == 3  # the slice the recipe held out is the one selection scores
    fetched = RobertaBaseSuite({**settings, "experts": {"rte": str(glue_world["experts"]["rte"])}})
    with pytest.raises(ValueError, match="experts of rte are fetched"):
        fetched.evaluate(state, "rte", base, data, experts["rte"], split="validation")


def test_glue_expert_wrong_num_labels_and_settings(glue_world, tmp_path):
    wrong = build_glue_expert(glue_world["base"], tmp_path / "three", 3, num_labels=3)
    suite = RobertaBaseSuite({"base": str(glue_world["base"]), "tasks": ["rte"], "experts": {"rte": str(wrong)},
                              "datasets": {"rte": str(glue_world["data"]["rte"])}, "device": "cpu", "progress": False})
    suite.prepare_data(tmp_path / "data", 0)
    suite.prepare_base(tmp_path / "base", tmp_path / "data", 0)
    with pytest.raises(SourceError, match=r"classifier\.out_proj\.weight' has 3 rows.*rte needs 2"):
        suite.prepare_expert("rte", tmp_path / "base", tmp_path / "data", tmp_path / "exp", 0)
    with pytest.raises(ValueError, match="unknown setting"):
        RobertaBaseSuite({"learning_rate": 1e-5})
    assert RobertaBaseSuite({"expert_pattern": "hf:SphereLab/nlu_models_in_FDA/{task}/{model}_lr1e-05"}).expert_spec("cola") == \
        "hf:SphereLab/nlu_models_in_FDA/cola/roberta-base_lr1e-05"
    assert GlueSettings.smoke().tasks == ["rte", "mrpc"]


def test_build_classifier_regression_head(glue_world, tmp_path):
    from transformers import RobertaModel

    enc = RobertaModel.from_pretrained(str(glue_world["base"]), add_pooling_layer=False).state_dict()
    head = {"dense.weight": torch.randn(32, 32), "dense.bias": torch.zeros(32), "out_proj.weight": torch.randn(1, 32), "out_proj.bias": torch.zeros(1)}
    model = build_classifier(glue_world["base"], enc, head, where="t")
    assert model.config.problem_type == "regression" and model.num_labels == 1
    with pytest.raises(ValueError, match="missing"):
        build_classifier(glue_world["base"], {k: v for k, v in enc.items() if "layer.1." not in k}, head, where="t")
    with torch.no_grad():
        assert math.isfinite(float(model(input_ids=torch.tensor([[0, 5, 6, 2]])).logits[0, 0]))


def test_glue_expert_dtype_checked_or_cast(glue_world, tmp_path):
    from transformers import RobertaForSequenceClassification

    half = tmp_path / "half"
    RobertaForSequenceClassification.from_pretrained(str(glue_world["experts"]["rte"])).half().save_pretrained(str(half))
    settings = {"base": str(glue_world["base"]), "tasks": ["rte"], "experts": {"rte": str(half)},
                "datasets": {"rte": str(glue_world["data"]["rte"])}, "device": "cpu", "progress": False}
    suite = RobertaBaseSuite(settings)
    suite.prepare_data(tmp_path / "data", 0)
    suite.prepare_base(tmp_path / "base", tmp_path / "data", 0)
    with pytest.raises(SourceError, match=r"half.*has dtype torch.float16, expected torch.float32"):
        suite.prepare_expert("rte", tmp_path / "base", tmp_path / "data", tmp_path / "exp", 0)
    RobertaBaseSuite({**settings, "check_dtype": False}).prepare_expert("rte", tmp_path / "base", tmp_path / "data", tmp_path / "exp", 0)
    assert all(v.dtype == torch.float32 for v in load_state_dict(tmp_path / "exp").values())


def test_classnames_resolution():
    import datasets

    from fda.bench.suites.vision_classnames import FALLBACK_CLASSNAMES, TEMPLATES, VISION_TASKS, resolve_classnames

    feats = datasets.Features({"label": datasets.ClassLabel(names=["/a/abbey", "/b/bar_indoor"])})
    assert resolve_classnames("sun397", feats, "label") == (["abbey", "bar indoor"], "dataset")
    ids = datasets.Features({"label": datasets.ClassLabel(names=[str(i) for i in range(43)])})
    names, origin = resolve_classnames("gtsrb", ids, "label")
    assert origin == "fallback" and names[14] == "stop"
    assert resolve_classnames("mnist", datasets.Features({"label": datasets.ClassLabel(names=["0", "1"])}), "label")[0] == ["0", "1"]
    plain = datasets.Features({"label": datasets.Value("int64")})
    assert resolve_classnames("dtd", plain, "label") == (FALLBACK_CLASSNAMES["dtd"], "fallback")
    assert resolve_classnames("cars", plain, "label", ["a car"]) == (["a car"], "settings")
    with pytest.raises(ValueError, match="classnames: {cars"):
        resolve_classnames("cars", plain, "label")
    assert {len(FALLBACK_CLASSNAMES[t]) for t in ("gtsrb", "dtd", "resisc45", "eurosat")} == {43, 47, 45, 10}
    assert set(TEMPLATES) == set(VISION_TASKS) and all("{}" in t for ts in TEMPLATES.values() for t in ts)
    assert [len(TEMPLATES[t]) for t in ("mnist", "sun397", "eurosat", "dtd", "resisc45")] == [1, 2, 3, 8, 18]


def test_default_hub_sources_fail_fast_offline(tmp_path, monkeypatch):
    import time

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"ylecun/mnist.*load_dataset"):
        VitB32Suite({"tasks": ["mnist"], "progress": False}).prepare_data(tmp_path / "data", 0)
    with pytest.raises(SourceError, match=r"openai/clip-vit-base-patch16.*hf download openai/clip-vit-base-patch16"):
        VitB16Suite({"tasks": ["mnist"]}).prepare_base(tmp_path / "b", tmp_path / "data", 0)
    with pytest.raises(SourceError, match=r"nyu-mll/glue"):
        RobertaBaseSuite({"tasks": ["cola"]}).prepare_data(tmp_path / "gdata", 0)
    with pytest.raises(SourceError, match=r"FacebookAI/roberta-base"):
        RobertaBaseSuite({"tasks": ["cola"]}).prepare_base(tmp_path / "gb", tmp_path / "gdata", 0)
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
