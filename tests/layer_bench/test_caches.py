"""Caches and files that cannot lie: block caches keyed by the method's code, a block never beside
the log of another run, stale temporaries of killed writes removed, outputs world-readable."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fda.io.atomic import atomic_dir, atomic_path, remove_stale_temporaries
from fda.io.checkpoints import save_state_dict

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ the method's code hash


def _hash_of(root: Path) -> str:
    code = "from fda.bench.provenance import method_code_hash; print(method_code_hash())"
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_method_code_hash_follows_the_method_not_the_harness(tmp_path):
    for name in ("fda", "baselines"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    before = _hash_of(tmp_path)
    assert len(before) == 16
    (tmp_path / "fda" / "bench" / "report" / "tables.py").write_text("# harness edit\n", encoding="utf-8")
    assert _hash_of(tmp_path) == before  # editing the harness recomputes no anchor
    anchors = tmp_path / "fda" / "anchors.py"
    anchors.write_text(anchors.read_text() + "\n# a method edit\n")
    changed = _hash_of(tmp_path)
    assert changed != before
    ta = tmp_path / "baselines" / "ta.py"
    ta.write_text(ta.read_text() + "\n# an init edit\n")
    assert _hash_of(tmp_path) != changed


# ------------------------------------------------------------------ FDA block jobs


def _job(kind: str, root: Path, fda_hp: dict, *extra: str) -> list[str]:
    return [kind, "--suite", "vitb32", "--family", "openclip", "--fda", json.dumps(fda_hp), "--anchor-init", "gauss",
            "--n-blocks", "2", "--base", str(root / "base"), "--expert", f"MNIST={root / 'mnist.safetensors'}",
            "--block", "1", *extra]


HP = {"n_anchors": 2, "construct_steps": 2, "adapt_epochs": 1, "progress": False}


def _construct(root: Path, hp: dict = HP) -> list[str]:
    return _job("fda-construct", root, hp, "--out-dir", str(root / "anchors"), "--cache-dir", str(root / "cache"))


def test_anchor_cache_is_recomputed_after_a_change_of_the_method(tiny_clip, monkeypatch, capsys):
    from fda.bench import cli, provenance

    cli.main(_construct(tiny_clip))
    assert "construct block 1" in capsys.readouterr().err
    shutil.rmtree(tiny_clip / "anchors")  # snakemake deletes a rerun job's outputs
    cli.main(_construct(tiny_clip))
    assert "cached anchors" in capsys.readouterr().err
    shutil.rmtree(tiny_clip / "anchors")
    monkeypatch.setattr(provenance, "method_code_version", lambda: "0.1.0+edited")
    cli.main(_construct(tiny_clip))
    err = capsys.readouterr().err
    assert "construct block 1" in err and "cached" not in err


def test_a_killed_construction_leaves_no_anchors_beside_a_newer_log(tiny_clip, monkeypatch):
    import fda
    from fda.bench import cli

    cli.main(_construct(tiny_clip))
    anchors = tiny_clip / "cache" / "block1" / "MNIST.safetensors"
    old_key = json.loads(anchors.with_suffix(".json").read_text())["cache_key"]
    assert anchors.is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the log and the anchors")

    monkeypatch.setattr(fda, "save_anchors", killed)
    shutil.rmtree(tiny_clip / "anchors")
    with pytest.raises(KeyboardInterrupt):
        cli.main(_construct(tiny_clip, {**HP, "construct_steps": 3}))
    assert json.loads(anchors.with_suffix(".json").read_text())["cache_key"] != old_key  # the new run's log
    assert not anchors.exists(), "the old anchors must not survive beside the new run's log"


def test_a_killed_adaptation_leaves_no_block_beside_another_log(tiny_clip, monkeypatch):
    from fda.bench import cli
    from fda.io import checkpoints

    cli.main(_construct(tiny_clip))
    blocks = tiny_clip / "blocks"

    def adapt(hp: dict) -> list[str]:
        return _job("fda-adapt", tiny_clip, hp, "--init", "pretrained", "--anchors-dir", str(tiny_clip / "anchors"),
                    "--blocks-dir", str(blocks))

    cli.main(adapt(HP))
    block, log = blocks / "block1.safetensors", blocks / "block1.json"
    assert checkpoints.read_metadata(block)["cache_key"] == json.loads(log.read_text())["cache_key"]

    real_save = checkpoints.save_state_dict

    def killed(state, path, *args, **kwargs):
        if Path(path).name == "block1.safetensors":
            raise KeyboardInterrupt("killed between the log and the block")
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_state_dict", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.main(adapt({**HP, "adapt_epochs": 2}))
    assert not block.exists(), "the old block must not survive beside the new run's log"
    monkeypatch.setattr(checkpoints, "save_state_dict", real_save)
    cli.main(adapt({**HP, "adapt_epochs": 2}))  # the rerun completes the pair
    assert checkpoints.read_metadata(block)["cache_key"] == json.loads(log.read_text())["cache_key"]


# ------------------------------------------------------------------ temporaries and modes


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid now (reuse within the test is improbable)


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    target = tmp_path / "block0.safetensors"
    dead = _dead_pid()
    stale_file = tmp_path / f".{target.name}.{dead}.abc123.tmp"
    stale_dir = tmp_path / f".{target.name}.{dead}.def456.tmp"
    live = tmp_path / f".{target.name}.{os.getppid()}.ghi789.tmp"  # a writer that is still running
    other = tmp_path / f".other.safetensors.{dead}.jkl.tmp"  # another file's temporary
    stale_file.write_text("half a tensor")
    stale_dir.mkdir()
    (stale_dir / "x").write_text("half a directory")
    live.write_text("in progress")
    other.write_text("not ours")
    with atomic_path(target) as tmp:
        tmp.write_text("complete")
    assert target.read_text() == "complete"
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other.exists()
    assert remove_stale_temporaries(target) == []


def test_outputs_get_the_umask_mode_not_private_ones(tmp_path):
    from fda.bench.cli.common import replace_dir

    old = os.umask(0o022)
    try:
        for write_with in ("replace_dir", "atomic_dir"):
            out = tmp_path / write_with
            if write_with == "replace_dir":
                tmp = tmp_path / f".{write_with}.tmp"
                tmp.mkdir(mode=0o700)
                _private_file(tmp)
                replace_dir(tmp, out)
            else:
                with atomic_dir(out) as tmp:
                    _private_file(tmp)
            assert stat.S_IMODE(out.stat().st_mode) == 0o755
            assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def _private_file(directory: Path) -> None:
    """What HF ``save_pretrained`` leaves: a 0600 safetensors file."""
    path = directory / "model.safetensors"
    path.write_bytes(b"weights")
    path.chmod(0o600)


# ------------------------------------------------------------------ evaluation


def test_evaluate_refuses_a_non_finite_model(tmp_path):
    """A NaN merge must never become a chance-level number in a result cell."""
    from fda.bench.cli import build_parser
    from fda.bench.cli.evaluation import cmd_evaluate
    from fda.io.checkpoints import CheckpointError

    state = {"encoder.weight": torch.ones(4, 4), "encoder.bias": torch.tensor([0.0, float("nan"), 1.0, 2.0])}
    save_state_dict(state, tmp_path / "merged.safetensors")
    out = tmp_path / "eval.csv"
    args = build_parser().parse_args(
        ["evaluate", "--suite", "minitext", "--model", str(tmp_path / "merged.safetensors"), "--tasks", "tech",
         "--base", str(tmp_path / "base"), "--data", str(tmp_path / "data"), "--expert", f"tech={tmp_path / 'tech'}",
         "--method", "ta", "--out", str(out)])
    with pytest.raises(CheckpointError, match=r"merged\.safetensors: 1 tensor\(s\) hold NaN/inf \('encoder\.bias'\)"):
        cmd_evaluate(args)
    assert not out.exists()


def test_adapted_block_cache_follows_the_experts(tiny_clip, capsys):
    """Adaptation matches the experts' block outputs: a changed expert file is never answered from
    the block cache, even when its anchors were kept."""
    from fda.bench import cli

    cli.main(_construct(tiny_clip))
    adapt = _job("fda-adapt", tiny_clip, HP, "--init", "pretrained", "--anchors-dir", str(tiny_clip / "anchors"),
                 "--blocks-dir", str(tiny_clip / "blocks"))
    cli.main(adapt)
    cli.main(adapt)
    assert "block 1: cached" in capsys.readouterr().err
    expert = tiny_clip / "mnist.safetensors"
    from fda.io.checkpoints import load_state_dict

    save_state_dict({k: v * 1.01 for k, v in load_state_dict(expert).items()}, expert)
    cli.main(adapt)
    err = capsys.readouterr().err
    assert "adapt block 1" in err and "cached" not in err


def test_every_rule_that_runs_the_method_reruns_when_its_code_changes():
    """Snakemake's params trigger reruns a job when a param changes: every rule that merges,
    constructs, adapts or assembles must take the method's code version as a param."""
    import re

    commands = ("fda-bench merge", "fda-bench fda-construct", "fda-bench fda-adapt", "fda-bench fda-assemble",
                "fda-bench stream-merge", "fda-bench llm-construct", "fda-bench llm-adapt", "fda-bench llm-assemble")
    found = 0
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for rule in re.split(r"(?m)^(?=\s*rule\b)", smk.read_text()):
            if any(c in rule for c in commands):
                found += 1
                assert re.search(r"(?m)^\s*code=METHOD_CODE,", rule), f"{smk.name}: a rule running the method lacks code=METHOD_CODE:\n{rule[:300]}"
    assert found >= 10  # merge, 2 construct, 3 adapt/assemble, 4 LLM rules
