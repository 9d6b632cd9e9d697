"""Shared test set-up: offline hub variables, deterministic torch, few threads; the local smoke
run that several test directories share."""

import os
import sys
import time
from pathlib import Path

# Hub look-ups must fail fast in tests: nothing here may reach a model or dataset hub.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# tests/layer_bench/test_workflow.py's snakemake helpers, for fixtures and tests outside that
# directory (pytest's prepend mode puts a test module's own directory on sys.path only)
sys.path.insert(0, str(Path(__file__).resolve().parent / "layer_bench"))


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def tiny_clip(tmp_path):
    """``tmp_path`` holding a 2-block HF CLIP vision base (``base/``, the vitb32 suite's model
    class) and one expert of it (``mnist.safetensors``): the inputs of an FDA block job."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from fda.io.checkpoints import save_state_dict

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=8, projection_dim=8)
    base = CLIPVisionModelWithProjection(cfg)
    base.save_pretrained(tmp_path / "base")
    expert = {k: v + 0.05 * torch.randn_like(v) for k, v in base.state_dict().items()}
    save_state_dict(expert, tmp_path / "mnist.safetensors")
    return tmp_path


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke workflow run locally once per session (`snakemake --cores 2 all --config
    smoke=true`; minutes): tests/cluster/test_slurm.py compares a SLURM run's cells with its
    cells, and tests/layer_bench/test_workflow_e2e.py's checks and reruns (which leave the cells
    byte-identical) can use the same run. Returns (workdir, wall seconds, console output)."""
    from test_workflow import snakemake

    work = tmp_path_factory.mktemp("smoke")
    start = time.monotonic()
    proc = snakemake("--cores", "2", "--config", "smoke=true", cwd=work)
    return work, time.monotonic() - start, proc.stdout + proc.stderr
