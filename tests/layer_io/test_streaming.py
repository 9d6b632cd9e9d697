"""Block-streaming merges over sharded safetensors: exactness, HF compatibility, crash safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fda.io import checkpoints
from fda.io.checkpoints import SAFETENSORS_INDEX, load_state_dict
from fda.io.sharded_writer import PROGRESS_FILE, ShardedWriter, parse_size
from fda.io.stream_source import (
    REST_BLOCK,
    StreamingError,
    StreamSource,
    iter_blocks,
    plan_blocks,
    plan_reads,
    read_block,
)
from fda.io.streaming import convert_bin_to_safetensors, stream_merge
from fda.io.synthetic import llama_config, write_expert, write_synthetic_llama
from fda.io.streaming_ties import kth_largest_abs_multi

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
    """A tiny random Llama (3 layers, hidden 32) and two experts, as SHARDED HF directories."""
    root = tmp_path_factory.mktemp("llama")
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = llama_config(3, hidden=32, vocab=64)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(root / "base", max_shard_size="40KB")  # transformers' own sharded format
    experts = [write_expert(root / "base", root / f"e{i}", seed=i + 1, scale=0.05, shard_size="30KB") for i in range(2)]
    return root / "base", experts


def _ta(pre, experts):
    return {k: pre[k] + 0.5 * sum(e[k] - pre[k] for e in experts) for k in pre}


def test_inputs_really_are_sharded(llama_dirs):
    base, experts = llama_dirs
    for d in (base, *experts):
        idx = json.loads((d / SAFETENSORS_INDEX).read_text())
        assert len(set(idx["weight_map"].values())) > 2, d


def test_plan_blocks_orders_layers_numerically_and_puts_rest_last():
    keys = ["lm_head.weight", "model.layers.10.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight", "model.norm.weight", "model.embed_tokens.weight"]
    blocks = plan_blocks(keys)
    assert list(blocks) == ["model.layers.2.", "model.layers.10.", REST_BLOCK]
    assert blocks[REST_BLOCK] == ["lm_head.weight", "model.norm.weight", "model.embed_tokens.weight"]


def test_each_shard_opened_once_per_source_and_block(llama_dirs, monkeypatch):
    base, experts = llama_dirs
    sources = [StreamSource(base), *[StreamSource(e) for e in experts]]
    opened: list[str] = []
    real = checkpoints.safe_open

    def counting(path, *a, **k):
        opened.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(checkpoints, "safe_open", counting)
    keys = plan_blocks(sources[0].keys())["model.layers.1."]
    plan = plan_reads(sources, [keys] * 3)
    parts = read_block(sources, [keys] * 3)
    assert len(opened) == len(plan) == len({(r.source, r.shard) for r in plan})
    assert len(opened) == len(set(opened))  # no shard file opened twice
    for s, p in zip(sources, parts):
        assert set(p) == set(keys)
        assert torch.equal(p[keys[0]], s.tensor(keys[0]))


def test_stream_merge_equals_in_memory_reference_and_loads(llama_dirs, tmp_path):
    from transformers import LlamaForCausalLM

    base, experts = llama_dirs
    rep = stream_merge(_ta, base, experts, tmp_path / "out", shard_size="20KB")
    pre, exps = load_state_dict(base), [load_state_dict(e) for e in experts]
    ref, got = _ta(pre, exps), load_state_dict(tmp_path / "out")
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert rep.blocks_merged == ["model.layers.0.", "model.layers.1.", "model.layers.2.", REST_BLOCK]
    # index: every key once, shard files exist, HF names, total_size is the bytes of all tensors
    idx = json.loads((tmp_path / "out" / SAFETENSORS_INDEX).read_text())
    assert set(idx["weight_map"]) == set(ref)
    files = sorted(set(idx["weight_map"].values()))
    assert len(files) > 1 and all((tmp_path / "out" / f).is_file() for f in files)
    assert all(f.endswith(f"-of-{len(files):05d}.safetensors") for f in files)
    assert idx["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ref.values())
    assert not (tmp_path / "out" / PROGRESS_FILE).exists()
    # config copied: loads with from_pretrained and computes with the merged weights
    model = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[1, 5, 7, 9]])
    sd = model.state_dict()
    assert torch.equal(sd["model.layers.2.mlp.down_proj.weight"], ref["model.layers.2.mlp.down_proj.weight"])
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize(
    "method,hparams",
    [("ta", {"alpha": 0.5}), ("average", {}), ("tsvm", {}), ("wudi", {"steps": 20}), ("ties", {}),
     ("ties", {"topk": 7.0, "merge_func": "mean", "alpha": 1.0}),
     ("ties", {"exclude": ("lm_head", "norm"), "topk": 50.0}), ("ta", {"coverage": "fda-llm"})],
)
def test_stream_merge_equals_baselines(llama_dirs, tmp_path, method, hparams):
    baselines = pytest.importorskip("baselines")
    if not hasattr(baselines, "merge"):
        pytest.skip("baselines.merge not available yet")
    base, experts = llama_dirs
    stream_merge(method, base, experts, tmp_path / "out", hparams=hparams, shard_size="50KB")
    pre, exps = load_state_dict(base), [load_state_dict(e) for e in experts]
    ref, got = baselines.merge(method, pre, exps, **hparams), load_state_dict(tmp_path / "out")
    assert got.keys() == ref.keys()
    bad = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not bad, f"{method}: streamed result differs on {bad[:3]}"


def test_radix_selection_is_exact():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5000, generator=g)
    a[:50] = a[50]  # ties around one value
    b = torch.randn(777, generator=g, dtype=torch.float64) * 1e-6
    for x, dt in ((a, torch.float32), (b, torch.float64)):
        srt = x.abs().sort(descending=True).values
        for k in (1, 2, 17, x.numel() // 5, x.numel()):
            got = kth_largest_abs_multi(lambda x=x: ([c] for c in x.split(333)), [k], dt)[0]
            assert got == float(srt[k - 1]), (dt, k)


def test_writer_flushes_at_cap_and_killed_writer_leaves_no_index(tmp_path):
    out = tmp_path / "w"
    w = ShardedWriter(out, shard_size=4000)
    for i in range(5):
        w.add_block(f"b{i}", {f"b{i}.w": torch.full((10, 30), float(i))})  # 1200 B each
    # 6000 B added with a 4000 B cap: one shard flushed, the rest buffered; no index yet
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert shards == ["model-00001.safetensors"]
    assert not (out / SAFETENSORS_INDEX).exists()
    del w  # "killed": finish() never ran
    assert not (out / SAFETENSORS_INDEX).exists()
    # resume keeps the flushed complete blocks and only asks for the rest
    w2 = ShardedWriter(out, shard_size=4000, resume=True)
    assert w2.done_blocks == {"b0", "b1", "b2"}
    for i in range(3, 5):
        w2.add_block(f"b{i}", {f"b{i}.w": torch.full((10, 30), float(i))})
    w2.finish()
    sd = load_state_dict(out)
    assert sorted(sd) == [f"b{i}.w" for i in range(5)] and all(float(sd[f"b{i}.w"][0, 0]) == i for i in range(5))


def test_fresh_writer_removes_stale_index_first(tmp_path):
    out = tmp_path / "w"
    w = ShardedWriter(out, shard_size=10**6)
    w.add_block("a", {"a": torch.zeros(3)})
    w.finish()
    assert (out / SAFETENSORS_INDEX).exists()
    ShardedWriter(out, shard_size=10**6)  # a new run starts: the old index must go at once
    assert not (out / SAFETENSORS_INDEX).exists()
    assert not list(out.glob("model-*.safetensors"))


_KILL_SCRIPT = """
import os, sys
from fda.io.streaming import stream_merge
calls = []
def _ta(pre, exps):  # the test's _ta (a resumed merge continues only the same method)
    calls.append(1)
    if len(calls) == 3:
        os._exit(17)  # die like a SIGKILL-ed job: no cleanup, no finally blocks
    return {k: pre[k] + 0.5 * sum(e[k] - pre[k] for e in exps) for k in pre}
stream_merge(_ta, sys.argv[1], sys.argv[2:4], sys.argv[4], shard_size=2000)
"""


def test_killed_stream_merge_leaves_no_index_and_resumes(llama_dirs, tmp_path):
    base, experts = llama_dirs
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(base), *map(str, experts), str(out)], env=env, cwd=REPO, capture_output=True)
    assert proc.returncode == 17, proc.stderr.decode()[-2000:]
    assert not (out / SAFETENSORS_INDEX).exists()
    assert list(out.glob("model-*.safetensors"))  # it had flushed some shards
    rep = stream_merge(_ta, base, experts, out, shard_size=2000, resume=True)
    # blocks 0 and 1 were merged before the kill; those entirely in flushed shards are kept
    order = ["model.layers.0.", "model.layers.1.", "model.layers.2.", REST_BLOCK]
    assert 1 <= len(rep.blocks_skipped) <= 2
    assert rep.blocks_skipped + rep.blocks_merged == order
    ref = _ta(load_state_dict(base), [load_state_dict(e) for e in experts])
    got = load_state_dict(out)
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    idx = json.loads((out / SAFETENSORS_INDEX).read_text())
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == sorted(set(idx["weight_map"].values()))


def test_bad_inputs_name_the_file_key_and_fix(llama_dirs, tmp_path):
    base, experts = llama_dirs
    sd = load_state_dict(experts[0])
    del sd["model.layers.1.mlp.up_proj.weight"]
    checkpoints.save_state_dict(sd, tmp_path / "missing.safetensors")
    with pytest.raises(StreamingError, match=r"expert 1 .*missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        stream_merge(_ta, base, [experts[0], tmp_path / "missing.safetensors"], tmp_path / "o1")
    sd = load_state_dict(experts[0])
    sd["model.embed_tokens.weight"] = torch.cat([sd["model.embed_tokens.weight"], torch.zeros(1, 32)])
    sd["lm_head.weight"] = torch.cat([sd["lm_head.weight"], torch.zeros(1, 32)])
    checkpoints.save_state_dict(sd, tmp_path / "bigvocab.safetensors")
    with pytest.raises(StreamingError, match="vocab_mismatch='truncate'"):
        stream_merge(_ta, base, [experts[1], tmp_path / "bigvocab.safetensors"], tmp_path / "o2")
    rep = stream_merge(_ta, base, [experts[1], tmp_path / "bigvocab.safetensors"], tmp_path / "o3", vocab_mismatch="truncate")
    got = load_state_dict(rep.out_dir)
    assert got["lm_head.weight"].shape == load_state_dict(base)["lm_head.weight"].shape
    with pytest.raises(StreamingError, match="is an input checkpoint"):
        stream_merge(_ta, base, experts, base)
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size("lots")


def test_bin_checkpoint_is_refused_then_converted(llama_dirs, tmp_path):
    base, experts = llama_dirs
    sd = load_state_dict(base)
    keys = sorted(sd)
    src = tmp_path / "bin"
    src.mkdir()
    half = len(keys) // 2
    wm = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k] for k in part}, src / name)
        wm.update({k: name for k in part})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (src / "config.json").write_text((base / "config.json").read_text())
    with pytest.raises(StreamingError, match="convert_bin_to_safetensors"):
        StreamSource(src)
    convert_bin_to_safetensors(src, tmp_path / "st", shard_size="30KB")
    got = load_state_dict(tmp_path / "st")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert (tmp_path / "st" / "config.json").is_file()
    assert [n for n, _ in iter_blocks(tmp_path / "st")][-1] == REST_BLOCK


def test_streamed_fda_layer_jobs_equal_in_memory(llama_dirs, tmp_path):
    from transformers import LlamaForCausalLM

    import fda.api as fda_api

    from fda.streamed import adapt_layer, assemble_streamed, construct_layer

    base, experts = llama_dirs
    stream_merge(_ta, base, experts, tmp_path / "ta")
    cfg = fda_api.FDAConfig.for_family("llama", init="ta", n_anchors=16, construct_steps=4, adapt_epochs=2, adapt_batch=8, progress=False)
    paths = [tmp_path / f"a{i}.safetensors" for i in range(2)]
    res = construct_layer(base, experts, 2, "weight", config=cfg, out_paths=paths)
    full = LlamaForCausalLM.from_pretrained(base)
    pre, exps, ta = load_state_dict(base), [load_state_dict(e) for e in experts], load_state_dict(tmp_path / "ta")
    ref = fda_api.construct_block(full, pre, exps, 2, "weight", cfg)
    assert [tuple(r.anchors.shape) for r in res] == [(16, 32)] * 2
    assert all(torch.equal(a.anchors, b.anchors) for a, b in zip(res, ref))
    ad = adapt_layer(base, experts, 2, paths, init="ta", init_dir=tmp_path / "ta", config=cfg, out_path=tmp_path / "blk2.safetensors")
    adr = fda_api.adapt_block(full, pre, exps, 2, [r.anchors for r in ref], "ta", ta, cfg)
    assert set(ad.params) == {f"model.layers.2.mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    assert all(torch.allclose(ad.params[k], adr.params[k]) for k in ad.params)
    assemble_streamed(tmp_path / "ta", [tmp_path / "blk2.safetensors"], tmp_path / "fda", shard_size="30KB")
    got = load_state_dict(tmp_path / "fda")
    assert torch.allclose(got["model.layers.2.mlp.up_proj.weight"], ad.params["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], ta["model.layers.1.mlp.up_proj.weight"])  # TA outside
    LlamaForCausalLM.from_pretrained(tmp_path / "fda")


def test_resume_of_a_finished_merge_does_nothing_and_typos_fail_before_io(llama_dirs, tmp_path):
    base, experts = llama_dirs
    first = stream_merge(_ta, base, experts, tmp_path / "out", shard_size="30KB")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    again = stream_merge(_ta, base, experts, tmp_path / "out", shard_size="30KB", resume=True)
    assert again.blocks_merged == [] and again.blocks_skipped == first.blocks_merged
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir() if p.name in before and not p.name.endswith(".json")}
    assert all(after[n] == before[n] for n in after)  # shards untouched
    baselines = pytest.importorskip("baselines")
    with pytest.raises(baselines.HyperparameterError, match="alpha"):
        stream_merge("ta", base, experts, tmp_path / "typo", hparams={"alhpa": 0.5})
    with pytest.raises(baselines.UnknownMethodError, match="ties"):
        stream_merge("tiez", base, experts, tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_resume_never_keeps_the_output_of_another_merge(llama_dirs, tmp_path):
    """``resume`` continues the same merge only: other hyperparameters (finished or killed run) merge anew."""
    from fda.io.checkpoints import load_state_dict

    base, experts = llama_dirs
    out = tmp_path / "out"
    stream_merge("ta", base, experts, out, hparams={"alpha": 0.3}, shard_size="30KB")
    again = stream_merge("ta", base, experts, out, hparams={"alpha": 0.9}, shard_size="30KB", resume=True)
    assert again.blocks_skipped == [] and again.blocks_merged
    fresh = stream_merge("ta", base, experts, tmp_path / "fresh", hparams={"alpha": 0.9}, shard_size="30KB")
    got, want = load_state_dict(out), load_state_dict(fresh.out_dir)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    # a killed run's flushed blocks of other settings are not reused either
    (out / "model.safetensors.index.json").unlink()
    from fda.io.sharded_writer import PROGRESS_FILE, ShardedWriter

    writer = ShardedWriter(tmp_path / "killed", shard_size="30KB", run_key="another merge")
    for name, block in list(iter_blocks(StreamSource(fresh.out_dir)))[:2]:
        writer.add_block(name, {k: v + 1 for k, v in block.items()})
    writer.flush()
    assert (tmp_path / "killed" / PROGRESS_FILE).is_file()
    resumed = stream_merge("ta", base, experts, tmp_path / "killed", hparams={"alpha": 0.9}, shard_size="30KB", resume=True)
    assert resumed.blocks_skipped == []
    got = load_state_dict(tmp_path / "killed")
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("method,hparams", [("ta", {"alpha": 0.5}), ("ties", {"topk": 10.0})])
def test_stream_merge_bf16_checkpoints_equal_baselines(tmp_path, method, hparams):
    """bf16 storage, fp32 compute (baselines' default): thresholds and results still exact."""
    baselines = pytest.importorskip("baselines")
    base = write_synthetic_llama(tmp_path / "base", llama_config(2, hidden=32, vocab=64), shard_size="10KB", dtype=torch.bfloat16)
    experts = [write_expert(base, tmp_path / f"e{i}", seed=i + 5, scale=0.1, shard_size="10KB") for i in range(2)]
    stream_merge(method, base, experts, tmp_path / "out", hparams=hparams, shard_size="10KB")
    pre, exps = load_state_dict(base), [load_state_dict(e) for e in experts]
    ref, got = baselines.merge(method, pre, exps, **hparams), load_state_dict(tmp_path / "out")
    assert all(got[k].dtype == torch.bfloat16 for k in got)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert (tmp_path / "out" / "config.json").is_file()


def test_non_float_tensors_are_copied_from_the_base_and_not_merged(tmp_path):
    seen: list[set[str]] = []

    def ta(pre, exps):
        seen.append(set(pre))
        return _ta(pre, exps)

    def state(shift: float) -> dict[str, torch.Tensor]:
        return {"model.layers.0.w": torch.full((4, 4), shift), "model.layers.0.ids": torch.arange(4), "model.norm.weight": torch.ones(4) * shift}

    for name, shift in (("base", 0.0), ("e0", 1.0), ("e1", 3.0)):
        checkpoints.save_state_dict(state(shift), tmp_path / f"{name}.safetensors")
    rep = stream_merge(ta, tmp_path / "base.safetensors", [tmp_path / "e0.safetensors", tmp_path / "e1.safetensors"], tmp_path / "out")
    got = load_state_dict(rep.out_dir)
    assert torch.equal(got["model.layers.0.ids"], torch.arange(4))
    assert torch.allclose(got["model.layers.0.w"], torch.full((4, 4), 2.0))
    assert "model.layers.0.ids" not in set().union(*seen)
