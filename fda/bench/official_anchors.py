"""The FDA authors' released anchors (``.npy`` files of github.com/Sphere-AI-Lab/FDA) as this
project's anchor files, so that adaptation can start from them without constructing.

What the official scripts write (HEAD 8cbe5f8), one file per (task, layer), ``layer = block + 1``:

======  ==========================================  ============================================
kind    path under the release folder               content
======  ==========================================  ============================================
vision  ``{run}/{Task}/dual_anchors_layer_{l}.npy``  float32 ``[T, n, d]`` (open_clip runs blocks
                                                     sequence-first; ``Vision/construct_fda.py``)
nlu     ``{run}/{task}/dual_anchors_layer_{l}.npy``  a 0-d object array: a pickled dict ``input``
                                                     ``[n, T, d]``, ``gt`` ``[n, T, d]`` (the
                                                     finetuned layer's output), ``attention_mask``
                                                     ``[n, 1, T, T]`` zeros (``NLU/construct_fda.py``)
nlg     ``{task}/{run}/dual_anchors_layer_{l}.npy``  float32 ``[n, d]`` MLP inputs
                                                     (``NLG/construct_fda.py``)
======  ==========================================  ============================================

``run`` is ``{name}-anchor-{n}-scale-{σ|1.0}-opt-{steps}-{lr}`` (vision, NLU; ``name``
``init_by_gauss_random`` or ``init_by_weights``, NLU with a ``_pos`` suffix) or
``{name}-scale-{σ}-gen-{steps}-lr-{lr}-anchor-{n}`` (NLG). The hub releases
(``SphereLab/FDA_for_Vision``: ``ViT-B-32/``, ``ViT-L-14/``; ``SphereLab/FDA_for_NLU``) hold one
folder per model with these run folders in it.

Imported files are the canonical ``[n, T, d]`` (``[n, d]``) tensor ``anchors``, as
:func:`fda.save_anchors` writes, with metadata naming their origin (``anchor_source: official``,
the release, run, file and layout). NLU's ``gt`` is not kept: adaptation recomputes the targets
from the expert block, as the official vision and NLG scripts do. NLU pickles are read with
:mod:`fda.io.safe_npy`, which runs nothing from the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where files are read: the CLI's help and config checks stay light
    import torch

#: config family -> the official script family whose files it reads
OFFICIAL_KINDS: dict[str, str] = {"clip-vision": "vision", "openclip": "vision", "bert": "nlu", "roberta": "nlu",
                                  "llama": "nlg"}
#: official file layout per script family (fda.anchors.official_to_canonical's names)
OFFICIAL_LAYOUTS: dict[str, str] = {"vision": "TND", "nlu": "NTD", "nlg": "ND"}
#: anchor init -> the official ``--name`` its run folders start with (the official releases
#: have only these two)
RUN_PREFIXES: dict[str, str] = {"gauss": "init_by_gauss_random", "weight": "init_by_weights"}
FILE_NAME = "dual_anchors_layer_{layer}.npy"

_NUM = r"[0-9.]+(?:[eE][-+]?[0-9]+)?"
_RUN_VISION_NLU = re.compile(rf"^(?P<name>init_by_\w+?)-anchor-(?P<n>\d+)-scale-(?P<scale>{_NUM})-opt-(?P<steps>\d+)-(?P<lr>{_NUM})$")
_RUN_NLG = re.compile(rf"^(?P<name>init_by_\w+?)-scale-(?P<scale>{_NUM})-(?:gen|opt)-(?P<steps>\d+)-lr-(?P<lr>{_NUM})-anchor-(?P<n>\d+)$")


class OfficialAnchorsError(ValueError):
    """Official anchor files that cannot be found or read as the official scripts write them (one of
    the CLI's project errors: printed as one line)."""


@dataclass(frozen=True)
class OfficialRelease:
    """One official run's files for the blocks and tasks asked for.

    ``files[(block, task)]`` is the ``.npy`` file of ``task`` (a workflow task name) and ``block``
    (0-based); ``task_dirs[task]`` the official folder name it was matched to."""

    root: Path
    kind: str
    anchor_init: str
    run: str
    files: dict[tuple[int, str], Path]
    task_dirs: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)


def official_kind(family: str) -> str:
    """``vision``, ``nlu`` or ``nlg``: which official scripts' files a config family reads."""
    try:
        return OFFICIAL_KINDS[family]
    except KeyError:
        raise OfficialAnchorsError(f"family {family!r} has no official anchors; families with released or "
                                   f"scripted ones: {', '.join(OFFICIAL_KINDS)}") from None


def parse_run_name(name: str) -> dict[str, Any]:
    """The construction settings an official run folder's name states (empty if it states none):
    ``official_name``, ``n_anchors``, ``sigma`` (Gauss runs), ``construct_steps``, ``construct_lr``."""
    m = _RUN_VISION_NLU.match(name) or _RUN_NLG.match(name)
    if not m:
        return {}
    out: dict[str, Any] = {"official_name": m["name"], "n_anchors": int(m["n"]), "construct_steps": int(m["steps"]),
                           "construct_lr": float(m["lr"])}
    if "gauss" in m["name"] or "random" in m["name"]:
        out["sigma"] = float(m["scale"])
    return out


def _norm(name: str) -> str:
    """Folder names compared without case and punctuation: ``SST-2`` matches ``sst2``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _subdirs(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise OfficialAnchorsError(f"cannot list the official anchors folder {path}: {err.strerror or err}") from err


def _match_dir(parent: Path, wanted: str, what: str) -> str:
    """The folder under ``parent`` named ``wanted`` (case and punctuation aside)."""
    names = _subdirs(parent)
    hits = [n for n in names if _norm(n) == _norm(wanted)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise OfficialAnchorsError(f"{parent}: several folders match {what} {wanted!r}: {', '.join(hits)}; name one "
                                   "with TASK=FOLDER")
    raise OfficialAnchorsError(f"{parent}: no folder for {what} {wanted!r} (folders: {', '.join(names) or 'none'}); "
                               "name it with TASK=FOLDER")


def _pick_run(parent: Path, anchor_init: str, run: str | None) -> str:
    """The run folder of ``anchor_init`` under ``parent``: ``run`` if given, else the only one
    whose name starts with the official name of that init."""
    if run is not None:
        if not (parent / run).is_dir():
            raise OfficialAnchorsError(f"{parent}: no run folder {run!r} (folders: {', '.join(_subdirs(parent)) or 'none'})")
        return run
    prefix = RUN_PREFIXES[anchor_init]
    found = [n for n in _subdirs(parent) if n.startswith(prefix)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise OfficialAnchorsError(f"{parent}: no official {anchor_init} run (a folder named {prefix}-anchor-...; "
                                   f"folders: {', '.join(_subdirs(parent)) or 'none'})")
    raise OfficialAnchorsError(f"{parent}: several {anchor_init} runs ({', '.join(found)}); choose one (config: "
                               f"fda.anchors.runs.{anchor_init}; CLI: --run)")


def locate(root: str | os.PathLike, family: str, anchor_init: str, tasks: Sequence[str], n_blocks: int, *,
           run: str | None = None, task_dirs: Mapping[str, str] | None = None) -> OfficialRelease:
    """Find the official files of ``anchor_init`` for blocks ``0..n_blocks-1`` and ``tasks``.

    ``root`` is the release folder of one model (holding the run folders; NLG: the task folders)
    or, for vision and NLU, a run folder itself. Task folders are matched by name without case and
    punctuation (``SST-2`` -> ``sst2``) unless ``task_dirs`` names them. Every missing folder or
    file is an :class:`OfficialAnchorsError` that names it."""
    root = Path(root)
    kind = official_kind(family)
    if anchor_init not in RUN_PREFIXES:
        raise OfficialAnchorsError(f"anchor init {anchor_init!r} has no official anchors; the official releases "
                                   f"have {', '.join(RUN_PREFIXES)}")
    if not root.is_dir():
        raise OfficialAnchorsError(f"official anchors folder not found: {root}")
    named = dict(task_dirs or {})
    dirs: dict[str, Path] = {}
    chosen: dict[str, str] = {}
    runs: set[str] = set()
    if kind == "nlg":  # {task}/{run}/...
        for t in tasks:
            chosen[t] = named.get(t) or _match_dir(root, t, "task")
            r = _pick_run(root / chosen[t], anchor_init, run)
            runs.add(r)
            dirs[t] = root / chosen[t] / r
        if len(runs) > 1:
            raise OfficialAnchorsError(f"{root}: the tasks' {anchor_init} runs differ ({', '.join(sorted(runs))}); "
                                       "choose one with --run / fda.anchors.runs")
        run_name = runs.pop() if runs else (run or "")
    else:  # {run}/{task}/...
        here = {_norm(n) for n in _subdirs(root)}
        is_run = run is None and (bool(parse_run_name(root.name)) or all(_norm(named.get(t, t)) in here for t in tasks))
        if is_run and parse_run_name(root.name) and not root.name.startswith(RUN_PREFIXES[anchor_init]):
            raise OfficialAnchorsError(f"{root} is a run folder of other anchors than {anchor_init} "
                                       f"(its name does not start with {RUN_PREFIXES[anchor_init]})")
        run_name = root.name if is_run else _pick_run(root, anchor_init, run)
        run_dir = root if is_run else root / run_name
        for t in tasks:
            chosen[t] = named.get(t) or _match_dir(run_dir, t, "task")
            dirs[t] = run_dir / chosen[t]
    files = {(b, t): dirs[t] / FILE_NAME.format(layer=b + 1) for b in range(n_blocks) for t in tasks}
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise OfficialAnchorsError(f"{len(missing)} official anchor file(s) missing for {anchor_init} anchors of "
                                   f"{n_blocks} blocks x {len(tasks)} tasks: {shown}")
    return OfficialRelease(root, kind, anchor_init, run_name, files, chosen, parse_run_name(run_name))


def resolve_release(spec: str | os.PathLike) -> Path:
    """The local folder of a release given as a source spec: a path (``file:``) or a hub dataset
    ``hf:owner/name[/subfolder][@revision]`` (offline: from the HF cache only, failing at once with
    the command that fetches it)."""
    from fda.bench.sources import resolve_source

    return resolve_source(spec, repo_type="dataset")


def configured_release(options: Mapping[str, Any], anchor_init: str) -> OfficialRelease:
    """:func:`locate` with a suite's ``fda.anchors`` options
    (:func:`fda.bench.config.suite_views.official_anchor_options`)."""
    return locate(resolve_release(options["spec"]), options["family"], anchor_init, options["tasks"],
                  options["n_blocks"], run=options.get("runs", {}).get(anchor_init), task_dirs=options.get("task_dirs"))


# -------------------------------------------------------------------------------- reading


def read_official(path: str | os.PathLike, kind: str) -> torch.Tensor:
    """One official file as canonical float32 anchors: vision ``[T, n, d]`` -> ``[n, T, d]``; NLU's
    dict ``input`` ``[n, T, d]`` as is; NLG ``[n, d]`` as is. Wrong shapes and non-finite values
    are an :class:`OfficialAnchorsError` naming the file."""
    import numpy as np
    import torch

    from fda.anchors import official_to_canonical
    from fda.io.safe_npy import load_npy, load_npy_object

    src = os.fspath(path)
    if kind == "nlu":
        obj = load_npy_object(path)
        if isinstance(obj, Mapping):
            if "input" not in obj:
                raise OfficialAnchorsError(f"{src}: the pickled dict has no 'input' (keys: {', '.join(map(str, obj))}); "
                                           "not an NLU anchors file of the official construct_fda.py")
            obj = obj["input"]
        arr = obj
    else:
        arr = load_npy(path)
    want = 2 if kind == "nlg" else 3
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or arr.ndim != want:
        what = f"{arr.dtype} array of shape {tuple(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise OfficialAnchorsError(f"{src}: expected a {want}-D float array ({'[n, d]' if want == 2 else '[T, n, d]' if kind == 'vision' else '[n, T, d]'}), "
                                   f"found a {what}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise OfficialAnchorsError(f"{src}: the anchors hold non-finite values")
    return official_to_canonical(x, OFFICIAL_LAYOUTS[kind]).contiguous()


# -------------------------------------------------------------------------------- importing


def anchor_path(out_dir: str | os.PathLike, block: int, task: str) -> Path:
    """Where the workflow's adaptation reads one (block, task)'s anchors (fda-construct's layout)."""
    return Path(out_dir) / f"block{block}" / f"{task}.safetensors"


def import_release(release: OfficialRelease, out_dir: str | os.PathLike, *, origin: str,
                   extra: Mapping[str, Any] | None = None,
                   per_file: Mapping[tuple[int, str], Mapping[str, Any]] | None = None,
                   skip_if: Mapping[tuple[int, str], bool] | None = None,
                   log: Any = None) -> dict[tuple[int, str], Path]:
    """Convert every file of ``release`` into ``out_dir/block{b}/{task}.safetensors``.

    Metadata (JSON-encoded values, as :func:`fda.save_anchors` writes them): ``extra`` and
    ``per_file[(block, task)]``, then ``anchor_source: official``, ``origin`` (where the release
    came from, e.g. a hub id), the run folder, the official file (relative to the release folder),
    task folder, layout and the settings the run's name states. All files imported together must
    have one shape (else an error naming the odd one). ``skip_if[(block, task)]`` true: that file
    is already imported."""
    from fda.io.checkpoints import save_state_dict

    out: dict[tuple[int, str], Path] = {}
    shape: tuple[int, ...] | None = None
    first: Path | None = None
    for (block, task), src in sorted(release.files.items()):
        dst = anchor_path(out_dir, block, task)
        out[(block, task)] = dst
        if skip_if and skip_if.get((block, task)):
            continue
        x = read_official(src, release.kind)
        if shape is None:
            shape, first = tuple(x.shape), src
        elif tuple(x.shape) != shape:
            raise OfficialAnchorsError(f"{src}: canonical shape {tuple(x.shape)} differs from {shape} of {first}; "
                                       "one run's files share one shape")
        n_stated = release.settings.get("n_anchors")
        if n_stated is not None and x.shape[0] != n_stated:
            raise OfficialAnchorsError(f"{src}: {x.shape[0]} anchors, but the run folder {release.run!r} states {n_stated}")
        meta: dict[str, Any] = {**(extra or {}), **(per_file or {}).get((block, task), {}), **release.settings,
                                "anchor_source": "official", "origin": origin, "anchor_init": release.anchor_init,
                                "task": task, "block": block, "official_run": release.run,
                                "official_file": os.path.relpath(src, release.root), "official_task": release.task_dirs[task],
                                "official_kind": release.kind, "official_layout": OFFICIAL_LAYOUTS[release.kind],
                                "tokens": int(x.shape[1]) if x.dim() == 3 else 1}
        save_state_dict({"anchors": x}, dst, {k: json.dumps(v, sort_keys=True, default=str) for k, v in meta.items()})
        if log is not None:
            log(f"block {block} {task}: {os.path.relpath(src, release.root)} -> {dst} {tuple(x.shape)}")
    return out


__all__ = ["FILE_NAME", "OFFICIAL_KINDS", "OFFICIAL_LAYOUTS", "RUN_PREFIXES", "OfficialAnchorsError", "OfficialRelease",
           "anchor_path", "configured_release", "import_release", "locate", "official_kind", "parse_run_name",
           "read_official", "resolve_release"]
