"""Shared test set-up: offline hub variables, deterministic torch, few threads."""

import os

# Hub look-ups must fail fast in tests: nothing here may reach a model or dataset hub.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
