"""Where models, experts and datasets come from, and checks that what arrived is what we expect.

A *source spec* is a string:

- ``hf:owner/name`` or plain ``owner/name``: a Hugging Face Hub repository. A subfolder and a
  revision may follow: ``hf:owner/name/sub/folder@v1.0``.
- a local path (absolute, ``./``/``../``/``~`` relative, ``file:``-prefixed, or any existing path):
  an HF model directory, a checkpoint file, or a ``save_to_disk`` dataset directory.
- ``recipe:<name>``: no file to fetch; the suite builds the artefact (e.g. fine-tunes an expert).

Hub resolution respects ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` (models) and
``HF_DATASETS_OFFLINE`` (datasets): offline, only the local cache is read and a miss fails at
once with a message naming the repository and the command that downloads it.

The module also holds the small helpers both paper suites share: typed settings parsing, the
device choice and dataset-split loading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from fda.bench.settings import parse
from fda.io.atomic import atomic_dir
from fda.io.checkpoints import CheckpointError, LazyCheckpoint, load_state_dict, resolve_weight_files

SourceKind = Literal["hub", "local", "recipe"]

_TRUE = {"1", "true", "yes", "on"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceError(CheckpointError):
    """A source cannot be resolved (not cached offline, not found) or fails verification."""


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class Source:
    """A parsed source spec. ``value`` is the repo id, the local path or the recipe name."""

    kind: SourceKind
    value: str
    subfolder: str | None = None
    revision: str | None = None

    def describe(self) -> str:
        """The spec written back in canonical form (used in provenance columns)."""
        if self.kind == "hub":
            sub = f"/{self.subfolder}" if self.subfolder else ""
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf:{self.value}{sub}{rev}"
        if self.kind == "recipe":
            return f"recipe:{self.value}"
        return str(self.value)


def parse_source(spec: str | os.PathLike) -> Source:
    """Parse a source spec (see the module docstring). Raises ``SourceError`` on an empty spec."""
    if isinstance(spec, os.PathLike):
        return Source("local", str(Path(spec)))
    text = str(spec).strip()
    if not text:
        raise SourceError("empty source spec: give a hub id (hf:owner/name), a local path or recipe:<name>")
    if text.startswith("recipe:"):
        name = text[len("recipe:"):].strip()
        if not name:
            raise SourceError(f"source '{spec}': a recipe needs a name, e.g. recipe:finetune")
        return Source("recipe", name)
    if text.startswith("file:"):
        return Source("local", str(Path(text[len("file:"):]).expanduser()))
    if text.startswith("hf:"):
        return _parse_hub(text[len("hf:"):], spec)
    if text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists():
        return Source("local", str(Path(text).expanduser()))
    head = "/".join(text.split("@", 1)[0].split("/")[:2])
    if _REPO_ID.match(head):
        return _parse_hub(text, spec)
    return Source("local", text)


def _parse_hub(text: str, spec: object) -> Source:
    body, _, revision = text.partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or not _REPO_ID.match("/".join(parts[:2])):
        raise SourceError(f"source '{spec}': a hub id looks like hf:owner/name[/subfolder][@revision]")
    return Source("hub", "/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)


# --------------------------------------------------------------------------------------------
# Resolution


def hub_offline(repo_type: str = "model") -> bool:
    """True when the offline variables forbid network look-ups for this kind of repository."""
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
    if repo_type == "dataset":
        names = ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"]
    return any(os.environ.get(n, "").strip().lower() in _TRUE for n in names)


def download_hint(source: Source, repo_type: str = "model") -> str:
    """The command that puts ``source`` where resolution finds it."""
    kind = " --repo-type dataset" if repo_type == "dataset" else ""
    rev = f" --revision {source.revision}" if source.revision else ""
    local = source.value.replace("/", "__")
    return (
        f"on a machine with network run `hf download {source.value}{kind}{rev}` (older clients: "
        f"`huggingface-cli download {source.value}{kind}{rev}`) to fill the HF cache, or "
        f"`hf download {source.value}{kind}{rev} --local-dir ./models/{local}` and set the source to that local path"
    )


def resolve_source(
    spec: str | os.PathLike | Source,
    *,
    repo_type: str = "model",
    allow_patterns: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """A local path for ``spec``: the path itself, or the hub snapshot (its subfolder if given).

    Hub ids are resolved with ``huggingface_hub.snapshot_download``; offline only the cache is read
    (``local_files_only=True``), so a miss fails within seconds. Raises ``SourceError`` naming the
    repository and how to fetch it; a ``recipe:`` spec raises too (suites handle recipes).
    """
    src = spec if isinstance(spec, Source) else parse_source(spec)
    if src.kind == "recipe":
        raise SourceError(f"source '{src.describe()}' is a recipe: it is built by the suite, not fetched")
    if src.kind == "local":
        path = Path(src.value).expanduser()
        if not path.exists():
            raise SourceError(f"local source not found: {path} (fix the path, or give a hub id such as hf:owner/name)")
        return path
    return _resolve_hub(src, repo_type, allow_patterns, cache_dir)


def _resolve_hub(src: Source, repo_type: str, allow_patterns: list[str] | None, cache_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline(repo_type)
    patterns = allow_patterns
    if src.subfolder and patterns is not None:
        patterns = [f"{src.subfolder}/{p}" for p in patterns]
    elif src.subfolder:
        patterns = [f"{src.subfolder}/*"]
    try:
        root = snapshot_download(
            src.value,
            repo_type=repo_type,
            revision=src.revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            local_files_only=offline,
            etag_timeout=10,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        why = "not in the local HF cache and the hub is off (offline variables set)" if offline else f"download failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        raise SourceError(f"cannot resolve {repo_type} '{src.describe()}': {why}. Fix: {download_hint(src, repo_type)}") from err
    path = Path(root) / src.subfolder if src.subfolder else Path(root)
    if not path.exists():
        raise SourceError(f"hub source '{src.describe()}': subfolder '{src.subfolder}' is not in the snapshot at {root}")
    return path


MODEL_PATTERNS = ["*.json", "*.txt", "*.safetensors", "*.model"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]


def resolve_model_dir(spec: str | os.PathLike | Source, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Like :func:`resolve_source` for model repositories, without fetching every framework's
    weights: configs, tokenizer files and safetensors first; pickled ``.bin`` weights only when a
    repository has no safetensors (TF/Flax/ONNX files are never fetched)."""
    src = spec if isinstance(spec, Source) else parse_source(spec)
    if src.kind != "hub":
        return resolve_source(src)
    path = resolve_source(src, allow_patterns=MODEL_PATTERNS, cache_dir=cache_dir)
    if path.is_dir() and not any(path.glob("*.safetensors")):
        path = resolve_source(src, allow_patterns=MODEL_PATTERNS + PICKLE_PATTERNS, cache_dir=cache_dir)
    return path


# --------------------------------------------------------------------------------------------
# Verification


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> None:
    """Raise ``SourceError`` naming the file if its sha256 differs from ``expected``."""
    got = sha256_file(path)
    if got.lower() != expected.strip().lower():
        raise SourceError(
            f"{path}: sha256 mismatch (expected {expected.strip().lower()}, got {got}); the file is corrupt or a "
            "different version: re-download it, or update the sha256 in the config if the new file is intended"
        )


def verify_source_sha256(path: str | os.PathLike, want: str | Mapping[str, str] | None) -> None:
    """Check a resolved source against the config's sha256: one hash (the file itself, or the
    weights file of an HF directory) or ``{file name inside the directory: hash}``."""
    if not want:
        return
    p = Path(path)
    if isinstance(want, str):
        if p.is_dir():
            files = [f for f in resolve_weight_files(p) if f.suffix in (".safetensors", ".bin", ".pt", ".pth")]
            if len(files) != 1:
                raise SourceError(f"{p}: one sha256 given but the directory has {len(files)} weight files; give {{file name: sha256}}")
            p = files[0]
        verify_sha256(p, want)
        return
    for name, digest in want.items():
        f = p / name if p.is_dir() else p
        if not f.is_file():
            raise SourceError(f"{p}: file '{name}' listed with a sha256 in the config is missing")
        verify_sha256(f, digest)


TensorSpec = tuple[tuple[int, ...], torch.dtype | str]


def tensor_specs(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """``{key: (shape, dtype)}`` of a state dict: the reference a checkpoint is checked against."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def checkpoint_specs(path: str | os.PathLike) -> dict[str, TensorSpec]:
    """``{key: (shape, dtype)}`` of a checkpoint; safetensors headers only, no tensor data read."""
    files = resolve_weight_files(path)
    if all(f.suffix == ".safetensors" for f in files):
        lazy = LazyCheckpoint(path)
        return {k: (lazy.shape(k), lazy.dtype(k)) for k in lazy.keys()}
    return tensor_specs(load_state_dict(path))


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _as_dtype(d: torch.dtype | str) -> torch.dtype | str:
    return _ST_DTYPES.get(d, d) if isinstance(d, str) else d


def verify_specs(
    found: Mapping[str, TensorSpec],
    expected: Mapping[str, TensorSpec],
    *,
    where: str,
    check_dtype: bool = True,
    allow_extra: bool = False,
) -> None:
    """Check keys, shapes and (optionally) dtypes of ``found`` against ``expected``.

    Raises ``SourceError`` naming ``where`` (a file or directory) and the first offending keys.
    """
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        raise SourceError(
            f"{where}: {len(missing)} expected tensor(s) missing, e.g. {missing[:5]} (found {len(found)} tensors"
            f"{', unexpected: ' + str(extra[:5]) if extra else ''}); is this a checkpoint of the right model, in the right layout?"
        )
    if extra and not allow_extra:
        raise SourceError(f"{where}: {len(extra)} unexpected tensor(s), e.g. {extra[:5]}; the checkpoint is not of the base architecture")
    for key, (shape, dtype) in expected.items():
        fshape, fdtype = found[key]
        if tuple(fshape) != tuple(shape):
            raise SourceError(f"{where}: tensor '{key}' has shape {tuple(fshape)}, expected {tuple(shape)} (as in the base model)")
        if check_dtype and _as_dtype(fdtype) != _as_dtype(dtype):
            raise SourceError(f"{where}: tensor '{key}' has dtype {fdtype}, expected {dtype}; convert the checkpoint or relax the dtype check")


def verify_checkpoint(
    path: str | os.PathLike,
    expected: Mapping[str, TensorSpec],
    *,
    sha256: str | Mapping[str, str] | None = None,
    check_dtype: bool = True,
    allow_extra: bool = False,
) -> None:
    """Verify a checkpoint file or HF directory: optional sha256 (one hash for a single file, or
    ``{file name: hash}`` for files inside a directory), then keys, shapes and dtypes."""
    p = Path(path)
    if sha256:
        hashes = {p.name: sha256} if isinstance(sha256, str) else dict(sha256)
        for name, digest in hashes.items():
            f = p if p.is_file() and name in (p.name, "") else p / name
            if not f.is_file():
                raise SourceError(f"{p}: file '{name}' listed with a sha256 in the config is missing")
            verify_sha256(f, digest)
    verify_specs(checkpoint_specs(p), expected, where=str(p), check_dtype=check_dtype, allow_extra=allow_extra)


# --------------------------------------------------------------------------------------------
# Shared suite helpers: typed settings, device, dataset splits


def parse_settings(cls: type, mapping: Mapping[str, Any] | None, *, suite: str) -> Any:
    """Build the settings dataclass ``cls`` from a config mapping (:func:`fda.bench.settings.parse`:
    unknown keys and wrong types raise ``SettingsError`` naming the key); an instance passes through."""
    return mapping if isinstance(mapping, cls) else parse(cls, dict(mapping or {}), suite=suite)


def resolve_device(setting: str | None) -> torch.device:
    """``"auto"``/None → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if setting in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{setting}' requested but CUDA is not available; use device: cpu or auto")
    return dev


@dataclass(frozen=True)
class DatasetSpec:
    """One split of one dataset: ``source`` is a hub dataset id or a ``save_to_disk`` directory."""

    source: str
    config: str | None = None
    split: str = "test"

    def describe(self) -> str:
        cfg = f":{self.config}" if self.config else ""
        return f"{self.source}{cfg}[{self.split}]"


def load_split(spec: DatasetSpec, *, cache_dir: str | None = None):
    """Load one split as a ``datasets.Dataset``.

    A local directory is read with ``load_from_disk`` (a ``DatasetDict`` is indexed by split; a
    plain ``Dataset`` is taken as is). A hub id goes through ``datasets.load_dataset``, which reads
    only its cache when ``HF_DATASETS_OFFLINE`` is set; a miss raises ``SourceError`` with the fix.
    """
    import datasets

    src = parse_source(spec.source)
    if src.kind == "recipe":
        raise SourceError(f"dataset source '{spec.source}' cannot be a recipe")
    if src.kind == "local":
        path = resolve_source(src)
        try:
            obj = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as err:
            raise SourceError(f"{path}: not a `datasets.save_to_disk` directory ({err})") from err
        if isinstance(obj, datasets.DatasetDict):
            if spec.split not in obj:
                raise SourceError(f"{path}: no split '{spec.split}' (splits: {sorted(obj)}); set the split or fix the directory")
            return obj[spec.split]
        return obj
    name = src.value if not src.subfolder else f"{src.value}/{src.subfolder}"
    try:
        return datasets.load_dataset(name, spec.config, split=spec.split, revision=src.revision, cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError, OSError, ValueError) as err:
        offline = hub_offline("dataset")
        why = "not in the local datasets cache and the hub is off (offline variables set)" if offline else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        cfg = f", '{spec.config}'" if spec.config else ""
        raise SourceError(
            f"cannot load dataset '{spec.describe()}': {why}. Fix: with network run "
            f"`python -c \"import datasets; datasets.load_dataset('{name}'{cfg}, split='{spec.split}')\"` once to fill the cache "
            f"(or `hf download {name} --repo-type dataset`), or point the suite's dataset setting at a local "
            "`save_to_disk` directory"
        ) from err


# --------------------------------------------------------------------------------------------
# Directories written atomically, prepared task data




DATA_MARKER = "source.json"


def prepare_task_data(task_dir: str | os.PathLike, specs: Mapping[str, DatasetSpec], *, copy: bool) -> dict[str, Any]:
    """Resolve every split of one task (filling the HF cache when online; failing fast offline)
    and record it under ``task_dir``: ``copy=True`` writes a ``DatasetDict`` with ``save_to_disk``;
    otherwise only ``source.json`` (dataset ids, configs, splits, row counts, fingerprints) is
    written and later reads go through the HF datasets cache. Returns the marker content."""
    import datasets

    loaded = {name: load_split(spec) for name, spec in specs.items()}
    marker = {
        "copied": copy,
        "splits": {
            name: {**dataclasses.asdict(spec), "num_rows": len(ds), "fingerprint": getattr(ds, "_fingerprint", "")}
            for (name, spec), ds in zip(specs.items(), loaded.values())
        },
    }
    with atomic_dir(task_dir) as tmp:
        if copy:
            datasets.DatasetDict(loaded).save_to_disk(str(tmp))
        (tmp / DATA_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return marker


def open_task_split(task_dir: str | os.PathLike | None, split: str, fallback: DatasetSpec):
    """One split of a task as prepared by :func:`prepare_task_data` (the saved copy, or the spec in
    ``source.json``); ``fallback`` when ``task_dir`` was not prepared."""
    import datasets

    if task_dir is not None:
        d = Path(task_dir)
        if (d / "dataset_dict.json").is_file():
            obj = datasets.load_from_disk(str(d))
            if split not in obj:
                raise SourceError(f"{d}: no split '{split}' in the prepared data (splits: {sorted(obj)}); re-run prepare_data")
            return obj[split]
        marker = d / DATA_MARKER
        if marker.is_file():
            splits = json.loads(marker.read_text())["splits"]
            if split in splits:
                entry = splits[split]
                return load_split(DatasetSpec(entry["source"], entry.get("config"), entry["split"]))
    return load_split(fallback)


def torch_dtype(name: str) -> torch.dtype | str:
    """``"float32"``/``"bfloat16"``/``"float16"`` → torch dtype; ``"auto"`` (the checkpoint's) passes through."""
    if name == "auto":
        return "auto"
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ValueError(f"dtype '{name}' is not a floating torch dtype (use float32, bfloat16, float16 or auto)")
    return dt


def cast_like(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors of ``state`` cast to the dtype of the same key in ``reference``."""
    return {k: v.to(reference[k].dtype) if v.is_floating_point() and k in reference else v for k, v in state.items()}
