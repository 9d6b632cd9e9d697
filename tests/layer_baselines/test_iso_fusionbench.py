"""Parity of ``isoc`` / ``isocts`` with FusionBench's ``iso_c`` / ``iso_cts`` on random task vectors.

FusionBench is a test-time comparison only, never a dependency: the test is skipped when its
source cannot be found. Install it without its dependencies (its ``torch`` requirement would pull
a CUDA build) into a directory of its own and point ``FUSION_BENCH_SRC`` there::

    pip install --no-deps --target /tmp/fb fusion-bench==0.2.33
    FUSION_BENCH_SRC=/tmp/fb pytest tests/layer_baselines/test_iso_fusionbench.py -s

Importing ``fusion_bench`` needs omegaconf, lightning, transformers, ...; when that fails, only the
file with the two functions (``fusion_bench/method/isotropic_merging/iso_utils.py``) is loaded,
with stand-ins for its two imports from ``fusion_bench.utils`` (a timing context manager and a
type alias). ``-s`` prints the relative errors.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch

import baselines
from baselines import synthetic

ISO_UTILS = Path("fusion_bench", "method", "isotropic_merging", "iso_utils.py")


def _candidate_roots() -> list[Path]:
    roots = [Path(p) for p in os.environ.get("FUSION_BENCH_SRC", "").split(os.pathsep) if p]
    try:
        spec = importlib.util.find_spec("fusion_bench")  # locates the package without importing it
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        roots.append(Path(spec.origin).parents[1])
    return roots


def _load_iso_utils():
    with contextlib.suppress(Exception):
        # the whole package, if its dependencies are installed
        from fusion_bench.method.isotropic_merging import iso_utils

        return iso_utils
    for root in _candidate_roots():
        path = root / ISO_UTILS
        if not path.is_file():
            continue
        utils = types.ModuleType("fusion_bench.utils")
        utils.timeit_context = lambda *a, **k: contextlib.nullcontext()
        utils_type = types.ModuleType("fusion_bench.utils.type")
        utils_type.StateDictType = dict
        stubs = {"fusion_bench": types.ModuleType("fusion_bench"), "fusion_bench.utils": utils, "fusion_bench.utils.type": utils_type}
        with mock.patch.dict(sys.modules, stubs):
            spec = importlib.util.spec_from_file_location("fusionbench_iso_utils", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        return module
    return None


FB = _load_iso_utils()
pytestmark = pytest.mark.skipif(FB is None, reason="fusion_bench not found (set FUSION_BENCH_SRC; see the module docstring)")


def _models(num_experts: int, dtype: torch.dtype):
    # d = 64: block matrices have r = 64, so Iso-CTS has a common and a task-specific part
    # (T = 8: c = 48, k = 2; T = 3: c = 52, k = 4); text_projection non-zero, as FusionBench sees it
    shapes = synthetic.openclip_vit_shapes(d=64, blocks=2, tokens=7, patch=4, embed=32, vocab=11)
    return synthetic.make_models(shapes, num_experts, dtype, zero_keys=())


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # FusionBench prints a line per key
        return fn(*args, **kwargs)


def _rel_errors(ours: dict, pre: dict, reference: dict) -> dict[str, float]:
    out = {}
    for key, ref in reference.items():
        delta = (ours[key] - pre[key]).double()
        out[key] = float((delta - ref.double()).norm() / ref.double().norm().clamp_min(1e-300))
    return out


CASES = [(8, torch.float64, 1e-10), (3, torch.float64, 1e-10), (8, torch.float32, 1e-4), (3, torch.float32, 1e-4)]


@pytest.mark.parametrize("num_experts, dtype, tol", CASES, ids=[f"T{t}-{str(d)[6:]}" for t, d, _ in CASES])
@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_merged_delta_matches_fusionbench(method, num_experts, dtype, tol):
    pre, ex = _models(num_experts, dtype)
    tvs = [{k: e[k] - pre[k] for k in pre} for e in ex]
    if method == "isoc":
        ref = _quiet(FB.iso_c, tvs, accelerator="cpu")
        ours = baselines.merge("isoc", pre, ex, alpha=1.0)
    else:
        ref = _quiet(FB.iso_cts, tvs, common_space_fraction=0.8, accelerator="cpu")
        ours = baselines.merge("isocts", pre, ex, alpha=1.0, common_space_fraction=0.8)
    # θ0 + τ − θ0 is not τ in float32: compare against FusionBench on the same task vectors
    errs = _rel_errors(ours, pre, ref)
    matrices = {k: e for k, e in errs.items() if pre[k].ndim == 2}
    worst = max(matrices, key=matrices.get)
    print(f"\n{method} T={num_experts} {dtype}: max relative error of the merged delta over {len(matrices)} 2-D keys "
          f"{matrices[worst]:.1e} ({worst}); over the {len(errs) - len(matrices)} averaged keys {max(e for k, e in errs.items() if k not in matrices):.1e}")
    assert max(errs.values()) < tol, {k: e for k, e in errs.items() if e >= tol}


@pytest.mark.parametrize("method", ["isoc", "isocts"])
def test_excluded_keys_match_fda_vision(method):
    """FusionBench's ``exclude_keys`` (exact names, averaged) is our fda-vision text_projection rule."""
    pre, ex = _models(4, torch.float64)
    tvs = [{k: e[k] - pre[k] for k in pre} for e in ex]
    kw = {"common_space_fraction": 0.8} if method == "isocts" else {}
    fn = FB.iso_cts if method == "isocts" else FB.iso_c
    ref = _quiet(fn, tvs, accelerator="cpu", exclude_keys=["model.text_projection"], **kw)
    ours = baselines.merge(method, pre, ex, alpha=1.0, coverage="fda-vision", **kw)
    errs = _rel_errors(ours, pre, ref)
    assert max(errs.values()) < 1e-10, errs
