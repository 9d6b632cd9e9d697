"""What every ``fda-bench`` command family shares: argument types and argument groups, the log
line, the suite of a job, expert loading, the FDA settings, construction logs, cache keys and
atomic file placement.

The one module the family modules import from (they never import each other), so it imports no
family module. Heavy imports (torch, the suites, the library) stay inside the functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fda.bench.config.vocabulary import ANCHOR_INITS, FDA_INITS  # the --anchor-init/--init choices (a names-only module)

#: ``add(name, fn, help) -> subparser``: how :func:`fda.bench.cli.build_parser` lets a family
#: module register a subcommand (each family's ``register(add)``)
AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]

#: the FDA inits, the ``--init`` choices of fda-adapt, fda-assemble, llm-adapt and llm-assemble
INITS = list(FDA_INITS)


# -------------------------------------------------------------------------------- argument types


class UsageError(ValueError):
    """A command's arguments that do not fit each other or its inputs (``--init`` without
    ``--init-model``, a block beyond the model, a task given twice): the message says which and how
    to fix it, and ``fda-bench`` prints it as one line (exit 2)."""


def json_arg(text: str) -> dict[str, Any]:
    """A JSON object argument (settings, hyperparameters, a source spec): ``{"alpha": 0.3}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"alpha\": 0.3}}', got {type(value).__name__} {text!r}")
    return value


def task_dir(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected TASK=DIR, got {text!r}")
    task, path = text.split("=", 1)
    return task, Path(path)


# -------------------------------------------------------------------------------- argument groups


def suite_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--suite", required=True, help="suite name (config key)")
    sp.add_argument("--settings", type=json_arg, default={}, help="the suite's settings (JSON)")


def config_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("configfile", nargs="+", help="config YAML file(s); later ones update earlier ones")
    sp.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. smoke=true")


def fda_args(sp: argparse.ArgumentParser) -> None:
    """What every FDA block job takes (fda-construct, fda-adapt, fda-assemble); :func:`fda_config` reads it."""
    suite_args(sp)
    sp.add_argument("--family", required=True)
    sp.add_argument("--size", default="base", choices=["base", "large"], help="FDAConfig.for_family size")
    sp.add_argument("--fda", type=json_arg, default={}, help="FDAConfig overrides (JSON)")
    sp.add_argument("--anchor-init", required=True, choices=ANCHOR_INITS)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--n-blocks", type=int, help="expected number of blocks (checked against the model)")
    sp.add_argument("--base", required=True)
    sp.add_argument("--expert", type=task_dir, action="append", required=True, metavar="TASK=DIR")


# -------------------------------------------------------------------------------- suites and experts


def log(msg: str) -> None:
    print(f"[fda-bench] {msg}", file=sys.stderr, flush=True)


def suite_of(args: argparse.Namespace):
    """The suite a job names (``--suite``, ``--settings``)."""
    from fda.bench.suites import get_suite

    return get_suite(args.suite, args.settings)


def suite_task(suite, task: str) -> str:
    """The suite's id for a workflow task name: the paper suites' configs use the tables' display
    names (``SST-2``), the suites their ids (``sst2``). An unknown task is a ``ConfigError``."""
    from fda.bench.config.suite_views import suite_task_id

    return suite_task_id(suite.name, task)


def load_experts(pairs: Sequence[tuple[str, Path]]):
    """``--expert TASK=DIR`` pairs -> ``(tasks, state dicts)``."""
    from fda.io.checkpoints import load_state_dict

    return [t for t, _ in pairs], [load_state_dict(d) for _, d in pairs]


# -------------------------------------------------------------------------------- FDA settings and blocks


def fda_config(args: argparse.Namespace, init: str = "pretrained"):
    """``FDAConfig.for_family(family, init, size)`` (the paper's values) with the configured
    overrides and the seed. Construction uses ``init="pretrained"``: its settings do not depend
    on the init, and the anchors are shared by every init. Jobs given a suite's ``--settings``
    construct in the suite's q/k/v layout unless ``--fda`` sets ``qkv_layout``: one layout per
    suite, recorded in every result row."""
    from fda import FDAConfig

    fields = {f.name for f in dataclasses.fields(FDAConfig)}
    unknown = sorted(set(args.fda) - fields)
    if unknown:
        raise UsageError(f"unknown FDA hyperparameter(s) {unknown}; FDAConfig fields: {', '.join(sorted(fields))}")
    overrides = {**args.fda, "seed": args.seed}
    if "qkv_layout" not in overrides and hasattr(args, "settings"):
        overrides["qkv_layout"] = suite_of(args).qkv_layout
    return FDAConfig.for_family(args.family, init=init, size=args.size, **overrides)


def count_blocks(model) -> int | None:
    """Number of blocks the block adapter lists, when it says so (checked against ``n_blocks``)."""
    from fda.blocks import adapter_for

    adapter = adapter_for(model)
    for name in ("num_blocks", "n_blocks"):
        v = getattr(adapter, name, None)
        if v is not None:
            return int(v() if callable(v) else v)
    blocks = getattr(adapter, "blocks", None)
    if callable(blocks):
        return len(list(blocks(model)))
    return None


def check_blocks(model, n_blocks: int | None, blocks: Sequence[int]) -> None:
    """The config's ``fda.n_blocks`` against the model, and the job's blocks against ``n_blocks``."""
    if n_blocks is None:
        return
    actual = count_blocks(model)
    if actual is not None and actual != n_blocks:
        raise UsageError(f"config says fda.n_blocks={n_blocks} but the model has {actual} blocks; fix the config")
    bad = [b for b in blocks if not 0 <= b < n_blocks]
    if bad:
        raise UsageError(f"block(s) {bad} out of range 0..{n_blocks - 1}")


# -------------------------------------------------------------------------------- logs and cache keys


def to_list(x: Any) -> Any:
    """Tensors / arrays / nested containers -> JSON-able lists and floats."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, dict):
        return {str(k): to_list(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_list(v) for v in x]
    return x


def construct_log_record(result: Any, **meta: Any) -> dict[str, Any]:
    """The JSON log written next to each anchors file (format: fda.bench.report.figures.read_construct_log),
    from a ``fda.ConstructResult`` and its ``ConstructLog``."""
    clog = result.log  # not `log`: that is this module's log line
    loss = [float(v) for v in to_list(clog.loss)]
    cos_rows = to_list(clog.cos)  # [steps, P]
    names = list(clog.param_names)
    cos = {n: [float(r[k]) for r in cos_rows] for k, n in enumerate(names)}
    cos_mean = [float(v) for v in to_list(clog.mean_cos())] if loss else []
    return {**meta, "optimizer": result.settings.get("construct_optimizer", "adamw"),
            "best_step": int(result.best_step), "best_loss": float(result.best_loss),
            "steps": list(range(len(loss))), "loss": loss, "cos_mean": cos_mean, "cos": cos,
            "unalignable": list(clog.unalignable), "sv_steps": [int(x) for x in clog.sv_steps],
            "singular_values": [to_list(v) for v in clog.sv]}


def block_shape_record(model: Any, block: int, part: str | None, anchors: Any) -> dict[str, Any]:
    """What the FLOPs estimate of the cost table needs about one constructed block (the
    construction log's ``shape``): anchor count, tokens and width from ``anchors`` (canonical
    ``[n, T, d]`` or ``[n, d]``), the elements of the block's 2-D weights, and whether it has
    self-attention (:class:`fda.bench.report.flops.BlockShape`). ``model`` may be a meta-device
    skeleton."""
    from fda.bench.report.flops import BlockShape
    from fda.blocks import adapter_for

    adapter = adapter_for(model, part)
    shapes = [tuple(p.shape) for _, p in adapter.block_module(block).named_parameters()]
    return BlockShape.from_parameters(tuple(anchors.shape), shapes, bool(adapter.qkv_groups(block))).to_record()


def inputs_key(paths: Sequence[Path], extra: Any) -> str:
    """Cache key of a job's finished piece (anchors, an adapted block, a resumable merge): the
    settings, (path, size, mtime) of every input file, and the code that computes it (package
    version + hash of the method's source), so an edited method never answers from the cache."""
    from fda.bench.config.naming import config_hash
    from fda.bench.provenance import method_code_version

    stats = []
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        stats += [(str(q), q.stat().st_size, q.stat().st_mtime_ns) for q in files]
    return config_hash({"extra": extra, "files": stats, "code": method_code_version()})


# -------------------------------------------------------------------------------- atomic outputs


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place (rename is atomic on one file system). Its files get
    the mode a plain ``open`` would give them: some writers (HF ``save_pretrained``'s safetensors
    files) create them private (0600), and the workflow's outputs are world-readable like the rest."""
    from fda.io.atomic import normalize_modes

    normalize_modes(tmp)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)


def link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link where possible, else a copy."""
    from fda.io.checkpoints import atomic_path

    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
