"""Peak host memory of the streaming merge does not grow with the number of layers.

Each merge runs in a fresh interpreter that reports its own peak: the kernel's VmHWM, reset after
the imports (``/proc/self/clear_refs``), minus the post-import RSS (a 2 ms RSS sampler where the
reset is refused). ``ru_maxrss`` is not used: the import transient (~350 MB with torch) hides the
merge, and on Linux a child's ``ru_maxrss`` starts from its parent's RSS at fork.
"""

from __future__ import annotations

import pytest

from fda.io.synthetic import make_merge_inputs, rss_probe

HIDDEN, INTER = 256, 704  # one decoder layer ≈ 0.8M params ≈ 3.2 MB fp32


def _merge_peak_mb(base, experts, out) -> float:
    return rss_probe("stream", base, experts, out, shard_size="4MB")["work_peak_mb"]


@pytest.mark.slow
def test_peak_rss_is_flat_in_the_number_of_layers(tmp_path):
    peak, model_mb = {}, {}
    for layers in (4, 32):
        base, experts, nbytes = make_merge_inputs(tmp_path / f"L{layers}", layers, hidden=HIDDEN, intermediate=INTER, shard_size="8MB")
        model_mb[layers] = nbytes / 2**20
        peak[layers] = _merge_peak_mb(base, experts, tmp_path / f"L{layers}" / "out")
    assert model_mb[32] / model_mb[4] > 6  # the models really grew ~8x (12.8 MB -> 98.6 MB each)
    # streaming holds ~ (base + 2 experts + output) blocks + a 4 MB shard: ~30 MB at either depth,
    # while loading the 32-layer inputs whole takes 3 x 98.6 MB (the in-memory merge peaks ~440 MB)
    assert peak[32] < 1.5 * peak[4] + 16, (peak, model_mb)
    assert peak[32] < 0.25 * 3 * model_mb[32], (peak, model_mb)
