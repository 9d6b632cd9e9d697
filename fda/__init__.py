"""fda-bench: Functional Dual Anchors (FDA) model merging and its benchmark harness."""

__version__ = "0.1.0"

from fda.adapt import AdaptLog, AdaptResult  # noqa: E402
from fda.anchors import ConstructLog, ConstructResult  # noqa: E402
from fda.blocks import BlockAdapter, UnknownModelFamilyError, adapter_for, register_adapter  # noqa: E402
from fda.merge import FDAConfig, adapt_block, assemble, construct_block, load_anchors, merge, save_anchors  # noqa: E402

__all__ = [
    "__version__",
    "AdaptLog",
    "AdaptResult",
    "BlockAdapter",
    "ConstructLog",
    "ConstructResult",
    "FDAConfig",
    "UnknownModelFamilyError",
    "adapt_block",
    "adapter_for",
    "assemble",
    "construct_block",
    "load_anchors",
    "merge",
    "register_adapter",
    "save_anchors",
]
