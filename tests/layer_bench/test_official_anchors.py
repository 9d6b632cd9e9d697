"""The FDA authors' released anchors (#16 §2): files written by a re-statement of the official saving
code (official_saving.py) are imported into canonical anchor files, adaptation from them equals
adaptation from the same anchors constructed here, bad releases are refused with messages that name
the file, and a suite configured with `fda.anchors.source: official` skips construction."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from official_saving import (  # tests/layer_bench on sys.path
    save_nlg,
    save_nlu,
    save_vision,
    vision_nlu_run_dir,
)

import fda
from fda.anchors import canonical_to_official
from fda.bench import cli
from fda.bench.config import load as cfg_load
from fda.bench.config.vocabulary import ConfigError
from fda.bench.official_anchors import (
    OfficialAnchorsError,
    import_release,
    locate,
    parse_run_name,
)

ROOT = Path(__file__).resolve().parents[2]
N, T, D = 4, 3, 32  # anchors, tokens, width of the tiny blocks


def _anchors(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.01


def _vision_release(root: Path, tasks=("MNIST", "EuroSAT"), layers=2, name="init_by_gauss_random", steps=1200):
    """A ViT release folder (root/ViT-T) with one run; returns (model folder, canonical anchors by (block, task))."""
    run = vision_nlu_run_dir(root, "ViT-T", name, N, 0.01, steps, 1e-2)
    want = {}
    for b in range(layers):
        for k, t in enumerate(tasks):
            x = _anchors(10 * b + k, (N, T, D))  # canonical [n, T, d]
            save_vision(run, t, b, canonical_to_official(x, "TND"))  # the official [T, n, d]
            want[(b, t)] = x
    return root / "ViT-T", want


def _nlu_release(root: Path, tasks=("cola", "sst2"), layers=2, model="roberta-base", name="init_by_gauss_random_pos"):
    run = vision_nlu_run_dir(root, model, name, N, 0.01, 1200, 1e-2)
    want = {}
    for b in range(layers):
        for k, t in enumerate(tasks):
            x = _anchors(100 + 10 * b + k, (N, T, D))
            save_nlu(run, t, b, x, gt=torch.tanh(x))  # gt: any finetuned-layer output
            want[(b, t)] = x
    return root / model, want


# -------------------------------------------------------------------------------- the official layouts


def test_the_restated_saving_code_writes_the_release_layout(tmp_path):
    model_dir, _ = _vision_release(tmp_path)
    run = model_dir / "init_by_gauss_random-anchor-4-scale-0.01-opt-1200-0.01"  # as on SphereLab/FDA_for_Vision
    assert np.load(run / "MNIST/dual_anchors_layer_1.npy").shape == (T, N, D)
    nlu_dir, _ = _nlu_release(tmp_path / "nlu", name="init_by_weights_pos")
    assert (nlu_dir / "init_by_weights_pos-anchor-4-scale-1.0-opt-1200-0.01/cola/dual_anchors_layer_2.npy").is_file()
    assert parse_run_name(run.name) == {"official_name": "init_by_gauss_random", "n_anchors": 4, "construct_steps": 1200,
                                        "construct_lr": 0.01, "sigma": 0.01}
    assert parse_run_name("init_by_weights-scale-0.01-gen-200-lr-0.01-anchor-8192")["n_anchors"] == 8192  # NLG
    assert "sigma" not in parse_run_name("init_by_weights_pos-anchor-64-scale-1.0-opt-1200-0.01")


def test_vision_release_imports_sequence_first_files_as_canonical_anchors(tmp_path, capsys):
    model_dir, want = _vision_release(tmp_path / "release")
    out = tmp_path / "anchors"
    argv = ["import-anchors", "--src", str(model_dir), "--family", "openclip", "--anchor-init", "gauss",
            "--task", "MNIST", "--task", "EuroSAT", "--n-blocks", "2", "--suite", "vitb32",
            "--origin", "hf:SphereLab/FDA_for_Vision/ViT-B-32", "--out-dir", str(out)]
    assert cli.main(argv) == 0
    for (b, t), x in want.items():
        got, meta = fda.load_anchors(out / f"block{b}/{t}.safetensors")
        assert torch.equal(got, x)  # [T, n, d] on disk -> [n, T, d] here, bit for bit
        assert meta["anchor_source"] == "official" and meta["origin"] == "hf:SphereLab/FDA_for_Vision/ViT-B-32"
        assert meta["official_run"] == "init_by_gauss_random-anchor-4-scale-0.01-opt-1200-0.01"
        assert meta["official_file"] == f"{meta['official_run']}/{t}/dual_anchors_layer_{b + 1}.npy"
        assert meta["official_layout"] == "TND" and meta["tokens"] == T and meta["n_anchors"] == N
        assert meta["sigma"] == 0.01 and meta["construct_steps"] == 1200 and meta["suite"] == "vitb32"
    manifest = json.loads((out / "official.json").read_text())
    assert manifest["run"].startswith("init_by_gauss_random") and len(manifest["files"]) == 4
    # a second run finds every file imported from the same source and rewrites none
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert cli.main(argv) == 0
    assert "4 of 4 files already imported" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before


def test_nlg_release_has_task_folders_outside_the_run(tmp_path):
    want = {}
    for b in range(2):
        for k, t in enumerate(("math", "code")):
            x = _anchors(200 + 10 * b + k, (8, D))
            save_nlg(tmp_path, t, "init_by_weights", 0.01, 200, 0.01, 8, b, x)
            want[(b, t)] = x
    release = locate(tmp_path, "llama", "weight", ["math", "code"], 2)
    assert release.run == "init_by_weights-scale-0.01-gen-200-lr-0.01-anchor-8"
    files = import_release(release, tmp_path / "out", origin="local")
    for bt, x in want.items():
        got, meta = fda.load_anchors(files[bt])
        assert torch.equal(got, x) and meta["official_layout"] == "ND" and meta["tokens"] == 1


# -------------------------------------------------------------------------------- adaptation


def _tiny_bert():
    import transformers

    cfg = transformers.BertConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=50, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    experts = [{k: v + 0.05 * torch.randn(v.shape, generator=g) * (v.abs().mean() + 1e-2) if v.is_floating_point() else v
                for k, v in pre.items()} for _ in range(2)]
    return model, pre, experts


def test_adapting_from_imported_nlu_anchors_equals_adapting_from_the_same_anchors(tmp_path):
    """The NLU pickled dicts are read without running them, and adaptation from the imported files
    is bit for bit the adaptation from the tensors the official code saved."""
    model_dir, want = _nlu_release(tmp_path / "release", tasks=("rte", "mrpc"))
    release = locate(model_dir, "bert", "gauss", ["RTE", "MRPC"], 2)  # folders matched without case
    assert release.task_dirs == {"RTE": "rte", "MRPC": "mrpc"}
    files = import_release(release, tmp_path / "anchors", origin=str(model_dir))
    model, pre, experts = _tiny_bert()
    cfg = fda.FDAConfig.for_family("bert", n_anchors=N, tokens=T, adapt_epochs=2, adapt_batch=4, progress=False)
    for block in range(2):
        imported = [fda.load_anchors(files[(block, t)])[0] for t in ("RTE", "MRPC")]
        direct = [want[(block, t)] for t in ("rte", "mrpc")]
        a = fda.adapt_block(model, pre, experts, block, imported, "pretrained", None, cfg)
        b = fda.adapt_block(model, pre, experts, block, direct, "pretrained", None, cfg)
        assert a.params.keys() == b.params.keys()
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
        assert any(not torch.equal(a.params[k], pre[k]) for k in a.params)  # it did adapt


# -------------------------------------------------------------------------------- refusals


def test_missing_files_runs_and_folders_are_named(tmp_path):
    model_dir, _ = _vision_release(tmp_path)
    run = "init_by_gauss_random-anchor-4-scale-0.01-opt-1200-0.01"
    with pytest.raises(OfficialAnchorsError, match=r"4 official anchor file\(s\) missing .*dual_anchors_layer_3\.npy"):
        locate(model_dir, "openclip", "gauss", ["MNIST", "EuroSAT"], 4)
    with pytest.raises(OfficialAnchorsError, match=r"no folder for task 'SVHN' \(folders: EuroSAT, MNIST\)"):
        locate(model_dir, "openclip", "gauss", ["SVHN"], 1)
    with pytest.raises(OfficialAnchorsError, match="no official weight run"):
        locate(model_dir, "openclip", "weight", ["MNIST"], 1)
    with pytest.raises(OfficialAnchorsError, match="'taskspan' has no official anchors"):
        locate(model_dir, "openclip", "taskspan", ["MNIST"], 1)
    _vision_release(tmp_path, steps=800)  # a second gauss run of the same model
    with pytest.raises(OfficialAnchorsError, match=r"several gauss runs .*choose one"):
        locate(model_dir, "openclip", "gauss", ["MNIST"], 1)
    assert locate(model_dir, "openclip", "gauss", ["MNIST"], 1, run=run).run == run
    # a run folder given directly is used as is, unless it is another init's
    assert locate(model_dir / run, "openclip", "gauss", ["MNIST"], 2).run == run
    weights = vision_nlu_run_dir(tmp_path, "ViT-T", "init_by_weights", N, 0.01, 1200, 1e-2)
    save_vision(weights, "MNIST", 0, _anchors(0, (T, N, D)))
    with pytest.raises(OfficialAnchorsError, match="run folder of other anchors than gauss"):
        locate(weights, "openclip", "gauss", ["MNIST"], 1)


def test_files_that_are_not_official_anchors_are_refused(tmp_path):
    model_dir, _ = _vision_release(tmp_path, tasks=("MNIST",), layers=1)
    f = next(model_dir.rglob("dual_anchors_layer_1.npy"))
    np.save(f, np.zeros((N, D), np.float32))  # 2-D where the vision layout is [T, n, d]
    with pytest.raises(OfficialAnchorsError, match=r"expected a 3-D float array \(\[T, n, d\]\)"):
        import_release(locate(model_dir, "openclip", "gauss", ["MNIST"], 1), tmp_path / "o", origin="x")
    np.save(f, np.full((T, N, D), np.nan, np.float32))
    with pytest.raises(OfficialAnchorsError, match="non-finite"):
        import_release(locate(model_dir, "openclip", "gauss", ["MNIST"], 1), tmp_path / "o", origin="x")


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_release_file_with_a_malicious_pickle_is_refused_without_running_it(tmp_path, capsys):
    model_dir, _ = _nlu_release(tmp_path, tasks=("cola",), layers=1)
    f = next(model_dir.rglob("dual_anchors_layer_1.npy"))
    marker = tmp_path / "pwned"
    evil = np.empty((), dtype=object)
    evil[()] = {"input": np.zeros((N, T, D), np.float32), "gt": _Payload(str(marker))}
    with open(f, "wb") as fh:  # the object-array .npy np.save writes, with this dict
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(evil, fh, protocol=3)
    code = cli.main(["import-anchors", "--src", str(model_dir), "--family", "roberta", "--anchor-init", "gauss",
                     "--task", "cola", "--n-blocks", "1", "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "refused to unpickle the global" in err and "dual_anchors_layer_1.npy" in err
    assert not marker.exists() and not (tmp_path / "o/block0/cola.safetensors").exists()


# -------------------------------------------------------------------------------- the suite setting


def _minitext_config(release: Path | None, **anchors) -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg = {"suites": {"minitext": cfg["suites"]["minitext"]}}
    fda_section = cfg["suites"]["minitext"]["fda"]
    fda_section["anchor_inits"] = ["gauss"]
    if release is not None:
        fda_section["anchors"] = {"source": "official", "path": str(release), **anchors}
    return cfg


def _minitext_release(tmp_path: Path) -> Path:
    """An NLU-layout release for every minitext task and block (width and tokens do not matter here)."""
    cfg = cfg_load.validate_config(_minitext_config(None))
    s = cfg["suites"]["minitext"]
    tasks, n_blocks = s["tasks"], s["fda"]["n_blocks"]
    model_dir, _ = _nlu_release(tmp_path, tasks=tuple(tasks), layers=n_blocks, model="minilm")
    return model_dir


def test_official_anchor_settings_are_checked_before_any_job(tmp_path):
    release = _minitext_release(tmp_path)
    ok = cfg_load.validate_config(_minitext_config(release))
    assert ok["suites"]["minitext"]["fda"]["anchors"]["source"] == "official"

    def error(cfg) -> str:
        with pytest.raises(ConfigError) as err:
            cfg_load.validate_config(cfg)
        return str(err.value)

    bad = _minitext_config(release)
    bad["suites"]["minitext"]["fda"]["anchor_inits"] = ["gauss", "taskspan"]
    assert "suites.minitext.fda.anchor_inits: taskspan: no official anchors exist" in error(bad)
    missing = _minitext_config(tmp_path / "nowhere")
    assert "suites.minitext.fda.anchors: local source not found" in error(missing)
    next(release.rglob("dual_anchors_layer_2.npy")).unlink()
    assert "1 official anchor file(s) missing" in error(_minitext_config(release))
    both = _minitext_config(release, hub="SphereLab/FDA_for_NLU")
    assert "exactly one of path" in error(both)
    stray = _minitext_config(None)
    stray["suites"]["minitext"]["fda"]["anchors"] = {"source": "constructed", "path": "x"}
    assert "path only apply to source: official" in error(stray)
    uncached = _minitext_config(None)
    uncached["suites"]["minitext"]["fda"]["anchors"] = {"source": "official", "hub": "SphereLab/FDA_for_NLU",
                                                        "subfolder": "roberta-base"}
    msg = error(uncached)
    assert "cannot resolve dataset 'hf:SphereLab/FDA_for_NLU/roberta-base'" in msg and "--repo-type dataset" in msg


def test_the_workflow_imports_instead_of_constructing(tmp_path):
    """Dry run: an official-anchors suite has import jobs and no construction job; adaptation reads
    the imported folder; the cell records the source; no construction figures are asked for."""
    from test_workflow import dry_run

    release = _minitext_release(tmp_path / "assets")
    cfgfile = tmp_path / "official.yaml"
    cfgfile.write_text(yaml.safe_dump(_minitext_config(release)))
    jobs = dry_run(tmp_path, "--configfile", str(cfgfile), "--config", "smoke=true")
    rules = {j["rule"] for j in jobs}
    assert "fda_import_anchors_minitext" in rules and "fda_adapt" in rules
    assert not {r for r in rules if r.startswith("fda_construct") or r == "construction_figures"}
    imports = [j for j in jobs if j["rule"] == "fda_import_anchors_minitext"]
    assert [j["wildcards"] for j in imports] == [{"suite": "minitext", "anchorinit": "gauss"}]
    assert all(o.startswith("work/minitext/fda/official/anchors/gauss/block") for o in imports[0]["output"])


@pytest.mark.slow
def test_a_glue_suite_adapts_from_official_anchors_end_to_end(tmp_path):
    """The real workflow on a tiny RoBERTa GLUE suite whose anchors are an NLU release: import,
    adapt, evaluate, and a cell and table row that say where the anchors came from."""
    from test_paper_suites import build_glue, build_glue_expert, build_roberta
    from test_workflow import snakemake

    from fda.bench.report.results import read_cells
    from fda.bench.report.tables import build_table

    assets = tmp_path / "assets"
    roberta = build_roberta(assets)  # width 32, 2 layers: the release's shapes
    data = {"rte": build_glue(assets / "rte", seed=1), "mrpc": build_glue(assets / "mrpc", seed=2)}
    experts = {"RTE": build_glue_expert(roberta, assets / "e_rte", 1), "MRPC": build_glue_expert(roberta, assets / "e_mrpc", 2)}
    model_dir, want = _nlu_release(assets / "FDA_for_NLU", tasks=("rte", "mrpc"))
    config = {"suites": {"robertab": {
        "family": "roberta", "expert_source": "local", "tasks": ["RTE", "MRPC"],
        "base": {"path": str(roberta)}, "experts": {t: {"path": str(p)} for t, p in experts.items()},
        "settings": {"datasets": {t: str(p) for t, p in data.items()}, "device": "cpu", "max_length": 32,
                     "batch_size": 8, "progress": False},
        "eval_limit": 8,
        "methods": {"pretrained": {}, "individual": {}},
        "fda": {"inits": ["pretrained"], "anchor_inits": ["gauss"], "n_blocks": 2,
                "hparams": {"n_anchors": N, "tokens": T, "adapt_epochs": 1, "adapt_batch": 4, "device": "cpu",
                            "progress": False},
                "anchors": {"source": "official", "path": str(model_dir)}},
    }}}
    work = tmp_path / "run"
    work.mkdir()
    (work / "official.yaml").write_text(yaml.safe_dump(config))
    snakemake("results/robertab_pretrained_fda.csv", "--cores", "1", "--configfile", str(work / "official.yaml"), cwd=work)

    assert not (work / "work/robertab/eseed0/fda/seed0/anchors").exists()  # nothing was constructed
    for (b, t), x in want.items():
        task = {"rte": "RTE", "mrpc": "MRPC"}[t]
        got, meta = fda.load_anchors(work / f"work/robertab/fda/official/anchors/gauss/block{b}/{task}.safetensors")
        assert torch.equal(got, x) and meta["official_task"] == t and meta["suite"] == "robertab"
    cell = read_cells([work / "results/robertab_pretrained_fda.csv"])
    assert set(cell["anchor_source"]) == {"official"} and set(cell["anchor_init"]) == {"gauss"}
    assert cell["value"].notna().all()
    assert build_table(cell, "robertab")["row"].tolist() == ["FDA (Pretrained, Gauss, official anchors)"]


def test_adaptation_refuses_anchors_of_another_model(tiny_clip, capsys):
    """Imported anchors whose tokens or width do not fit the model's blocks (ViT-B/32's 50 tokens
    on a ViT-B/16, say) stop fda-adapt with a message naming the file; fitting ones adapt."""
    tmp = tiny_clip  # HF CLIP vision base: width 16, 16 px images in 8 px patches -> 5 tokens
    fit, misfit = tmp / "fit", tmp / "misfit"
    for root, tokens in ((fit, 5), (misfit, 50)):
        run = vision_nlu_run_dir(root, "ViT-T", "init_by_gauss_random", 2, 0.01, 1200, 1e-2)
        save_vision(run, "MNIST", 0, _anchors(tokens, (tokens, 2, 16)))
        assert cli.main(["import-anchors", "--src", str(root / "ViT-T"), "--family", "openclip", "--anchor-init", "gauss",
                         "--task", "MNIST", "--n-blocks", "1", "--out-dir", str(root / "anchors")]) == 0
    common = ["fda-adapt", "--suite", "vitb32", "--settings", json.dumps({"qkv_layout": "fused"}), "--family", "openclip",
              "--fda", json.dumps({"n_anchors": 2, "adapt_epochs": 1, "adapt_batch": 2, "progress": False}),
              "--anchor-init", "gauss", "--n-blocks", "2", "--base", str(tmp / "base"),
              "--expert", f"MNIST={tmp / 'mnist.safetensors'}", "--init", "pretrained", "--block", "0"]
    assert cli.main([*common, "--anchors-dir", str(fit / "anchors"), "--blocks-dir", str(fit / "blocks")]) == 0
    assert (fit / "blocks/block0.safetensors").is_file()
    code = cli.main([*common, "--anchors-dir", str(misfit / "anchors"), "--blocks-dir", str(misfit / "blocks")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and "MNIST.safetensors: anchors of shape (2, 50, 16) do not fit" in err
    assert "T = 5 tokens" in err
