"""The streaming LLM suite (llama13b) through the workflow: the streaming-suite predicate, the
suite's settings and job slices, the LLM commands of `fda-bench` (argument errors, atomic
directory outputs, .bin conversion, linking instead of copying, a hub id failing fast offline),
the per-layer DAG of config/paper.yaml, and the real rules on a tiny sharded Llama with a math and
a code expert, from local files to result cells and tables.

The end-to-end test is slow (~20 jobs, each a Python process): `pytest -m slow tests/layer_bench/test_llm_workflow.py`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fda.bench import cli
from fda.bench.cli import llm as cli_llm
from fda.bench.cli.common import UsageError
from fda.bench.config import load as cfg_load
from fda.bench.config import naming as cfg_names
from fda.bench.config import suite_views as cfg_views
from fda.bench.config.vocabulary import ConfigError
from fda.io.checkpoints import SAFETENSORS_INDEX, load_state_dict
from fda.bench.eval.llm.data import LLMEvalDataError
from fda.bench.report.results import read_cells
from fda.bench.sources import SourceError
from fda.io.synthetic import llama_config, write_expert, write_synthetic_llama
from fda.bench.suites.llama import LlamaSuite, fetch_checkpoint, job_settings
from test_workflow import ROOT, dry_run, snakemake  # tests/ on sys.path

PAPER = ROOT / "config" / "paper.yaml"
BENCHMARK_NAMES = ["GSM8K", "MATH", "HumanEval", "MBPP"]
TINY_FDA = {"n_anchors": 16, "construct_steps": 3, "adapt_epochs": 2, "adapt_batch": 16, "sv_every": 1,
            "device": "cpu", "progress": False}


# ------------------------------------------------------------------ tiny sharded Llama world


def _tokenizer(out_dir: Path) -> int:
    """A byte-level BPE tokenizer trained here on a few strings (no hub), saved in ``out_dir``
    with <pad>/<s>/</s>/<unk> = ids 0..3 (the synthetic Llama config's pad, bos, eos). Returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Below is an instruction that describes a task.", "### Response: Let's think step by step.",
                             "The answer is 42", "def add(a, b):\n    return a + b"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(out_dir))
    return tok.get_vocab_size()


def build_llama(root: Path, *, layers: int = 2) -> tuple[Path, dict[str, Path]]:
    """A random Llama (hidden 64) saved as sharded safetensors with an index and a tokenizer, and
    two experts (math, code) perturbing it, all sharded the same way."""
    base = root / "llama-base"
    base.mkdir(parents=True)
    cfg = llama_config(layers, hidden=64, vocab=_tokenizer(base))
    cfg.max_position_embeddings = 1024  # room for the Alpaca prompts in byte-level tokens
    write_synthetic_llama(base, cfg, shard_size="100KB")
    experts = {t: write_expert(base, root / f"llama-{t}", seed=seed, scale=0.05, shard_size="100KB")
               for seed, t in enumerate(["math", "code"], start=1)}
    return base, experts


def build_benchmarks(root: Path) -> dict[str, Path]:
    """Two examples of each benchmark, with the fields fda.bench.eval.llm.data expects."""
    rows = {
        "gsm8k": [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(2)],
        "math": [{"problem": f"Compute ${i}+{i}$.", "solution": f"It is $\\boxed{{{2 * i}}}$."} for i in range(2)],
        "humaneval": [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(a):\n    \"\"\"Return a + {i}.\"\"\"\n",
                       "entry_point": f"f{i}", "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n"}
                      for i in range(2)],
        "mbpp": [{"task_id": i, "text": f"Write a function g{i}(a) returning a * {i}.",
                  "test_list": [f"assert g{i}(2) == {2 * i}"], "test_setup_code": ""} for i in range(2)],
    }
    paths = {}
    for b, examples in rows.items():
        paths[b] = root / f"{b}.jsonl"
        paths[b].write_text("".join(json.dumps(r) + "\n" for r in examples))
    return paths


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    return build_llama(tmp_path_factory.mktemp("llama"))


# ------------------------------------------------------------------ the streaming predicate and settings (fast)


def _section(**over) -> dict:
    section = {"family": "llama", "expert_source": "local", "tasks": ["math", "code"], "base": {"path": "/m/base"},
               "experts": {"math": {"path": "/m/math"}, "code": {"hub": "owner/code"}},
               "methods": {"pretrained": {}, "ta": {"alpha": 0.5}}, "fda": {"inits": ["ta"], "n_blocks": 2}}
    section.update(over)
    return section


def test_streaming_suites_are_decided_by_family():
    paper = cfg_load.load_config([PAPER])
    assert cfg_views.streaming_suites(paper) == ["llama13b"]
    assert [s for s in paper["suites"] if cfg_views.is_streaming(paper, s)] == ["llama13b"]
    assert cfg_views.streaming_suites(cfg_load.load_config([ROOT / "config" / "config.yaml"])) == []
    assert cfg_views.STREAMING_FAMILIES == {"llama"}


@pytest.mark.parametrize("suite, section, match", [
    ("llama13b", _section(family="roberta"), r"llama13b.family: 'roberta' does not fit suite 'llama13b' \(a 'llama' suite\)"),
    ("robertab", {"family": "llama", "expert_source": "local", "tasks": ["RTE"], "methods": {"ta": {}}},
     r"robertab.family: 'llama' does not fit suite 'robertab'"),
], ids=["llama-suite-not-streaming", "streaming-family-on-an-in-memory-suite"])
def test_a_streaming_family_needs_a_streaming_suite(suite, section, match):
    with pytest.raises(ConfigError, match=match):
        cfg_load.validate_config({"suites": {suite: section}})


def test_config_sources_and_result_tasks_of_the_llama_suite():
    cfg = cfg_load.validate_config({"suites": {"llama13b": _section()}})
    assert cfg_views.suite_settings_for(cfg, "llama13b") == {"tasks": ["math", "code"], "base": "file:/m/base",
                                                      "experts": {"math": "file:/m/math", "code": "hf:owner/code"}}
    assert cfg_views.result_tasks(cfg, "llama13b") == BENCHMARK_NAMES
    one = cfg_load.validate_config({"suites": {"llama13b": _section(tasks=["code"], experts={"code": {"path": "/m/code"}},
                                                              settings={"benchmarks": {"code": ["mbpp"]}})}})
    assert cfg_views.result_tasks(one, "llama13b") == ["MBPP"]
    paper = cfg_load.load_config([PAPER])
    assert cfg_views.stream_options(paper, "llama13b") == {"shard_size": "2GB", "vocab_mismatch": "truncate"}
    assert cfg_views.merge_layout(paper, "llama13b") == "split"


@pytest.mark.parametrize("settings, match", [
    ({"benchmarks": {"math": ["gsm8k", "aime"]}}, r"benchmarks.math: unknown benchmark\(s\) \['aime'\]"),
    ({"benchmarks": {"chat": ["gsm8k"]}}, r"unknown task\(s\) \['chat'\] \(tasks: math, code\)"),
    ({"data_path": {"gsm8k8": "x.jsonl"}}, r"data_path: unknown benchmark\(s\) \['gsm8k8'\]"),
    ({"batch_size": 0}, r"must be positive"),
    ({"shard_size": "lots"}, r"shard_size: cannot parse size 'lots'"),
    ({"backend": "tgi"}, r"setting 'backend': expected one of \['hf', 'vllm'\]"),
    ({"limt": 3}, r"llama13b.settings.limt: unknown key 'limt'; allowed keys: .*limit"),
])
def test_bad_llama_settings_name_the_key(settings, match):
    with pytest.raises(ConfigError, match=match):
        cfg_load.validate_config({"suites": {"llama13b": _section(settings=settings)}})


def test_jobs_get_only_the_settings_they_read():
    """Editing an evaluation or merge setting changes those jobs' params only (no 13B refetch)."""
    settings = {"limit": 5, "data_path": {"gsm8k": "g.jsonl"}, "shard_size": "1GB", "vocab_mismatch": "error"}
    cfg = cfg_load.validate_config({"suites": {"llama13b": _section(settings=settings)}})
    fetch, data, ev = (cfg_views.job_settings(cfg, "llama13b", s) for s in ("fetch", "data", "eval"))
    assert fetch == {"tasks": ["math", "code"], "base": "file:/m/base",
                     "experts": {"math": "file:/m/math", "code": "hf:owner/code"}}
    assert data == {"tasks": ["math", "code"], "data_path": {"gsm8k": "g.jsonl"}}
    assert ev == {"tasks": ["math", "code"], "limit": 5}
    assert cfg_views.stream_options(cfg, "llama13b") == {"shard_size": "1GB", "vocab_mismatch": "error"}
    with pytest.raises(ValueError, match="unknown llama13b job stage 'merge'"):
        job_settings({}, "merge")


# ------------------------------------------------------------------ the LLM commands (fast)


def _run(*argv: str) -> int:
    return cli.main(list(argv))


def _fda_args(base: Path, experts: dict[str, Path]) -> list[str]:
    """The FDA flags of llm-construct / llm-adapt (llm-assemble: without experts)."""
    out = ["--family", "llama", "--fda", json.dumps(TINY_FDA), "--base", str(base)]
    for t, d in experts.items():
        out += ["--expert", f"{t}={d}"]
    return out


@pytest.mark.parametrize("argv, match", [
    (["llm-construct", "--suite", "llama13b", "--anchor-init", "gauss", "--layer", "0", "--task", "chat"],
     r"--task chat is not one of the experts \['math', 'code'\]"),
    (["llm-construct", "--suite", "llama13b", "--anchor-init", "gauss", "--layer", "2", "--task", "math"],
     r"--layer 2 is out of range 0..1 \(.*llama-base/config.json\)"),
    (["llm-construct", "--suite", "llama13b", "--anchor-init", "gauss", "--layer", "0", "--task", "math", "--n-blocks", "40"],
     r"fda.n_blocks=40 but .*config.json has num_hidden_layers=2; set fda.n_blocks: 2"),
    (["llm-adapt", "--anchor-init", "gauss", "--init", "pretrained", "--layer", "0", "--anchors", "math=a.safetensors"],
     r"--anchors gives tasks \['math'\]; need each expert's anchors once: \['math', 'code'\]"),
    (["llm-adapt", "--anchor-init", "gauss", "--init", "ta", "--layer", "0", "--anchors", "math=a", "--anchors", "code=b"],
     r"--init ta needs --init-model"),
    (["llm-adapt", "--anchor-init", "gauss", "--init", "pretrained", "--init-model", "m", "--layer", "0",
      "--anchors", "math=a", "--anchors", "code=b"], r"--init pretrained adapts the base itself: drop --init-model"),
    (["llm-assemble", "--init", "pretrained", "--blocks", "b0.safetensors", "--n-blocks", "2"],
     r"1 adapted block files for fda.n_blocks=2"),
], ids=["construct-task", "construct-layer", "construct-n-blocks", "adapt-anchors", "adapt-init-model",
        "adapt-pretrained-init-model", "assemble-blocks"])
def test_llm_command_argument_errors(llama, argv, match, tmp_path):
    base, experts = llama
    fda = _fda_args(base, {} if argv[0] == "llm-assemble" else experts)
    argv = [*argv, *fda, "--out", str(tmp_path / "out")]
    if argv[0] == "llm-construct":
        argv += ["--log", str(tmp_path / "log.json")]
    with pytest.raises(UsageError, match=match):
        _run("--debug", *argv)
    assert not (tmp_path / "out").exists()


def test_llm_eval_argument_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match=r"without --model every task needs --expert TASK=DIR; missing \['code'\]"):
        _run("--debug", "llm-eval", "--suite", "llama13b", "--tasks", "math", "code", "--expert", "math=m", "--data", "d",
             "--method", "individual", "--out", str(tmp_path / "rows.csv"))
    # without --debug: one line naming the problem, exit 2, no traceback
    assert _run("llm-eval", "--suite", "minitext", "--model", "m", "--tasks", "tech", "--data", "d",
                "--method", "ta", "--out", str(tmp_path / "rows.csv")) == 2
    err = capsys.readouterr().err
    assert "fda-bench llm-eval: error: suite 'minitext' is not an LLM suite; use fda-bench evaluate" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # argparse: experts are required
        _run("stream-merge", "--method", "ta", "--base", "b", "--out", str(tmp_path / "m"))
    assert info.value.code == 2


def test_staging_directory_is_kept_only_for_the_same_key(tmp_path):
    out = tmp_path / "merged"
    stage = cli_llm._staging_dir(out, "key-1", resume=False)
    (stage / "model-00001.safetensors").write_text("partial")
    assert (cli_llm._staging_dir(out, "key-1", resume=True) / "model-00001.safetensors").exists()
    assert not (cli_llm._staging_dir(out, "key-2", resume=True) / "model-00001.safetensors").exists()
    (stage / "model-00001.safetensors").write_text("partial")
    assert not (cli_llm._staging_dir(out, "key-2", resume=False) / "model-00001.safetensors").exists()


def test_stream_merge_command_publishes_a_sharded_directory(llama, tmp_path):
    import baselines

    base, experts = llama
    out = tmp_path / "merged" / "ta"
    args = ["stream-merge", "--method", "ta", "--hparams", json.dumps({"alpha": 0.5}), "--base", str(base),
            *[f"--expert={t}={d}" for t, d in experts.items()], "--out", str(out), "--shard-size", "100KB", "--resume"]
    assert _run(*args) == 0
    index = json.loads((out / SAFETENSORS_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded
    assert not (tmp_path / "merged" / ".ta.partial").exists() and not (out / cli_llm.STAGING_KEY).exists()
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    want = baselines.merge("ta", load_state_dict(base), [load_state_dict(d) for d in experts.values()], alpha=0.5)
    got = load_state_dict(out)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_fetch_links_safetensors_and_converts_bin(llama, tmp_path):
    base, _ = llama
    linked = fetch_checkpoint(f"file:{base}", tmp_path / "linked", shard_size="5GB")
    for f in base.iterdir():
        assert (linked / f.name).samefile(f), f.name  # a link, not a copy
    fetch_checkpoint(f"file:{base}", tmp_path / "linked", shard_size="5GB")  # again over a killed run's links
    assert all((linked / f.name).samefile(f) for f in base.iterdir())
    # a .bin-only checkpoint (pickled state dict + config) is converted to sharded safetensors
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    state = load_state_dict(base)
    torch.save(state, pickled / "pytorch_model.bin")
    (pickled / "config.json").write_text((base / "config.json").read_text())
    converted = fetch_checkpoint(str(pickled), tmp_path / "converted", shard_size="100KB")
    assert len(set(json.loads((converted / SAFETENSORS_INDEX).read_text())["weight_map"].values())) > 1
    assert not list(converted.glob("*.bin")) and (converted / "config.json").is_file()
    got = load_state_dict(converted)
    assert all(torch.equal(got[k], state[k]) for k in state)
    with pytest.raises(SourceError, match=r"not an HF model directory \(no config.json\)"):
        fetch_checkpoint(str(tmp_path / "linked" / "config.json"), tmp_path / "x", shard_size="5GB")


def test_convert_bin_command(llama, tmp_path):
    base, _ = llama
    src = tmp_path / "bin"
    src.mkdir()
    torch.save(load_state_dict(base), src / "pytorch_model.bin")
    assert _run("convert-bin", str(src), str(tmp_path / "out"), "--shard-size", "100KB") == 0
    assert (tmp_path / "out" / SAFETENSORS_INDEX).is_file() and not (tmp_path / ".out.partial").exists()


def test_expert_check_names_the_tensor(llama, tmp_path):
    """prepare-expert refuses an expert whose tensors do not fit the base (before any merge)."""
    base, experts = llama
    small = tmp_path / "small"
    write_synthetic_llama(small, llama_config(2, hidden=32, vocab=64))
    suite = LlamaSuite({"base": f"file:{base}", "experts": {"math": f"file:{small}", "code": f"file:{experts['code']}"}})
    with pytest.raises(ValueError, match=r"expert 0 \(.*math\).*shape"):
        suite.prepare_expert("math", base, tmp_path, tmp_path / "math", 0)


def test_prepare_data_writes_each_benchmark_once(tmp_path):
    data = build_benchmarks(tmp_path)
    suite = LlamaSuite({"benchmarks": {"math": ["gsm8k"]}, "data_path": {b: str(p) for b, p in data.items()}})
    suite.prepare_data(tmp_path / "data", seed=0)
    written = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert written == ["gsm8k.jsonl", "humaneval.jsonl", "mbpp.jsonl", "source.json"]  # math: gsm8k only
    rows = [json.loads(line) for line in (tmp_path / "data" / "mbpp.jsonl").read_text().splitlines()]
    assert [r["test_list"] for r in rows] == [["assert g0(2) == 0"], ["assert g1(2) == 2"]]
    assert json.loads((tmp_path / "data" / "source.json").read_text())["gsm8k"] == {"source": str(data["gsm8k"]), "rows": 2}
    missing = LlamaSuite({"tasks": ["math"], "data_path": {"gsm8k": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(LLMEvalDataError, match=r"settings.data_path.gsm8k: .*nope.jsonl is not a file"):
        missing.prepare_data(tmp_path / "data2", seed=0)


def test_hub_id_offline_fails_fast_naming_the_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = json.dumps({"base": "hf:meta-llama/Llama-2-13b-hf"})
    t0 = time.perf_counter()
    # a SourceError: the CLI prints it as one line (exit status 2); --debug shows the traceback
    assert _run("prepare-base", "--suite", "llama13b", "--settings", settings, "--data", str(tmp_path),
                "--out", str(tmp_path / "base")) == 2
    err = capsys.readouterr().err
    assert err.startswith("fda-bench prepare-base: error: ") and "hf download meta-llama/Llama-2-13b-hf" in err
    with pytest.raises(SourceError, match=r"not in the local HF cache.*hf download meta-llama/Llama-2-13b-hf"):
        _run("--debug", "prepare-base", "--suite", "llama13b", "--settings", settings, "--data", str(tmp_path),
             "--out", str(tmp_path / "base"))
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "base").exists()


# ------------------------------------------------------------------ the DAG of config/paper.yaml (fast)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llmdag")


def test_paper_llama_cell_fans_out_per_layer(scratch):
    jobs = dry_run(scratch, "results/llama13b_ta_fda.csv", "--configfile", str(PAPER))
    rules = Counter(j["rule"] for j in jobs)
    layers, experts, anchor_inits = 40, 2, 2
    assert rules == Counter({
        "llm_prepare_data": 1, "llm_prepare_base": 1, "llm_prepare_expert": experts,
        "llm_merge": 1,                                          # the ta init only
        "llm_construct": layers * experts * anchor_inits,        # one job per (layer, expert) and anchor init
        "llm_adapt": layers * anchor_inits, "llm_assemble": anchor_inits,
        "llm_evaluate_reference": 1, "llm_evaluate_fda": anchor_inits, "cell_fda": 1,
    })
    assert {j["wildcards"]["suite"] for j in jobs if j["wildcards"]} == {"llama13b"}
    assert [j["output"] for j in jobs if j["rule"] == "llm_merge"] == [["work/llama13b/eseed0/merged/ta"]]
    assert {j["wildcards"]["reference"] for j in jobs if j["rule"] == "llm_evaluate_reference"} == {"individual"}
    construct = {(j["wildcards"]["anchorinit"], int(j["wildcards"]["block"]), j["wildcards"]["task"])
                 for j in jobs if j["rule"] == "llm_construct"}
    assert construct == {(a, b, t) for a in ("gauss", "weight") for b in range(layers) for t in ("math", "code")}


# ------------------------------------------------------------------ the real rules (slow)


def tiny_config(root: Path) -> dict:
    base, experts = build_llama(root)
    data = build_benchmarks(root)
    return {"suites": {"llama13b": {
        "family": "llama", "expert_source": "local", "tasks": ["math", "code"],
        "base": {"path": str(base)}, "experts": {t: {"path": str(d)} for t, d in experts.items()},
        "settings": {"data_path": {b: str(p) for b, p in data.items()}, "limit": 2, "max_new_tokens": {b: 4 for b in data},
                     "batch_size": 2, "backend": "hf", "shard_size": "100KB"},
        "methods": {"pretrained": {}, "individual": {}, "ta": {"alpha": 0.5, "coverage": "fda-llm"}},
        "fda": {"inits": ["ta"], "anchor_inits": ["gauss"], "n_blocks": 2, "hparams": TINY_FDA},
    }}}


@pytest.mark.slow
def test_llama_suite_runs_through_the_workflow(tmp_path):
    from transformers import LlamaForCausalLM

    config = tiny_config(tmp_path / "assets")
    work = tmp_path / "run"
    work.mkdir()
    (work / "tiny.yaml").write_text(yaml.safe_dump(config))
    cells = cfg_names.cells(cfg_load.validate_config(config))
    assert sorted(cells) == sorted(f"results/llama13b_{m}.csv" for m in ("pretrained", "individual", "ta", "ta_fda"))
    figures = ["results/figures/llama13b-methods.png", "results/figures/llama13b-construction-gauss.png"]
    snakemake(*cells, "results/tables/llama13b.csv", *figures, "--cores", "2", "--configfile", str(work / "tiny.yaml"), cwd=work)
    w = work / "work" / "llama13b"
    e = w / "eseed0"  # linked experts: one expert seed, 0

    # base and experts are links to the configured files, not copies
    src = Path(config["suites"]["llama13b"]["base"]["path"])
    assert (w / "base" / SAFETENSORS_INDEX).samefile(src / SAFETENSORS_INDEX)
    # one construction job per (layer, expert), with its log; one adaptation job per layer
    for layer in range(2):
        assert (e / f"fda/seed0/ta-gauss/blocks/block{layer}.safetensors").is_file()
        for task in ("math", "code"):
            anchors = e / f"fda/seed0/anchors/gauss/block{layer}/{task}.safetensors"
            assert load_state_dict(anchors)["anchors"].shape == (TINY_FDA["n_anchors"], 64)
            assert json.loads(anchors.with_suffix(".json").read_text())["task"] == task
            assert (work / f"logs/llama13b/eseed0/fda/seed0/construct-gauss-block{layer}-{task}.log").is_file()

    # the FDA model: a sharded HF directory over the TA merge with adapted MLPs (non_block init, part mlp)
    fda_dir, ta_dir = e / "fda/seed0/ta-gauss/merged", e / "merged/ta"
    for d in (fda_dir, ta_dir):
        assert len(set(json.loads((d / SAFETENSORS_INDEX).read_text())["weight_map"].values())) > 1, d
    LlamaForCausalLM.from_pretrained(str(fda_dir))
    fda, ta, base = load_state_dict(fda_dir), load_state_dict(ta_dir), load_state_dict(w / "base")
    assert set(fda) == set(ta) == set(base)
    mlp = [k for k in fda if ".mlp." in k]
    assert len(mlp) == 2 * 3
    for k in fda:
        assert torch.equal(fda[k], ta[k]) != (k in mlp), k  # MLPs adapted, everything else the TA merge's
    assert not torch.equal(ta["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])

    # result cells: one headline row per benchmark, finite values; the table's columns are the benchmarks
    for name, method in (("llama13b_ta", "ta"), ("llama13b_ta_fda", "fda"), ("llama13b_individual", "individual"),
                         ("llama13b_pretrained", "pretrained")):
        df = read_cells([work / "results" / f"{name}.csv"])
        assert sorted(df["task"]) == sorted(BENCHMARK_NAMES) and df["headline"].all(), name
        assert set(df["method"]) == {method} and set(df["expert_source"]) == {"local"}, name
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in df["value"]), name
        assert set(df["metric"]) == {"accuracy", "pass@1"}, name
    # `individual` scores each expert on its own task's benchmarks: the same (task, metric) keys as
    # every merged model, so `normalized` has a reference for every row
    keys = lambda name: set(read_cells([work / f"results/{name}.csv"])[["task", "metric"]].itertuples(index=False))  # noqa: E731
    assert keys("llama13b_individual") == keys("llama13b_ta") == keys("llama13b_ta_fda")
    fda_cell = read_cells([work / "results/llama13b_ta_fda.csv"])
    assert set(fda_cell["init"]) == {"ta"} and set(fda_cell["anchor_init"]) == {"gauss"}
    table = pd.read_csv(work / "results/tables/llama13b.csv")
    assert [c for c in table.columns if c in BENCHMARK_NAMES] == BENCHMARK_NAMES
    assert all((work / f).stat().st_size > 0 for f in figures)  # the shared figure rules read the LLM cells and logs
    # every completion is kept for reading, two examples per benchmark (settings.limit)
    gen = (e / "eval/generations/ta/gsm8k.jsonl").read_text().splitlines()
    assert len(gen) == 2 and "completion" in json.loads(gen[0])
