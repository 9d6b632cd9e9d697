"""``fda-bench``: the command line the Snakemake rules call. Each subcommand is a thin wrapper:
parse arguments, load inputs, call the library, write outputs atomically.

Subcommands (``fda-bench <cmd> -h`` for arguments):

  validate-config  check config files (+ KEY=VALUE overrides) against the workflow schema
  cells            list the result cells a config asks for
  prepare-data     write a suite's datasets
  prepare-base     write a suite's pretrained encoder
  prepare-expert   fetch, copy or fine-tune one task's expert
  merge            merge experts with a baseline (ta, tsvm, wudi, average, ties)
  fda-construct    construct FDA anchors for some blocks (and experts)
  fda-adapt        adapt some blocks on the anchors (per-block cache), optionally assemble
  fda-assemble     assemble adapted blocks into the merged encoder
  evaluate         evaluate an encoder (or each expert on its own task) -> raw rows
  cell             raw rows -> one tidy result cell
  aggregate        result cells -> paper-shaped tables (CSV, Markdown, LaTeX)
  figures          result cells -> method comparison and heatmap (PNG, PDF)
  construction-figures  construction logs -> curves and singular value spectra

LLM suites (llama13b; fda/bench/cli_llm.py): stream-merge, convert-bin, llm-construct, llm-adapt,
llm-assemble, llm-eval.

Heavy imports (torch, transformers, the suites) happen inside the commands that need them, so
``validate-config`` and ``cells`` answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: commands that may put tensors on a GPU (they lease a GPU slot, see fda.bench.gpu)
GPU_COMMANDS = {"prepare-base", "prepare-expert", "merge", "fda-construct", "fda-adapt", "fda-assemble", "evaluate",
                "stream-merge", "llm-construct", "llm-adapt", "llm-eval"}


# -------------------------------------------------------------------------------- helpers


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err


def _task_dir(text: str) -> tuple[str, Path]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected TASK=DIR, got {text!r}")
    task, path = text.split("=", 1)
    return task, Path(path)


def _log(msg: str) -> None:
    print(f"[fda-bench] {msg}", file=sys.stderr, flush=True)


def _suite(args: argparse.Namespace):
    from fda.bench.suites import get_suite

    return get_suite(args.suite, args.settings)


def _suite_task(suite, task: str) -> str:
    """The suite's id for a workflow task name: the paper suites' configs use the tables' display
    names (``SST-2``), the suites their ids (``sst2``)."""
    from fda.bench.workflow_config import ConfigError, suite_task_id

    try:
        return suite_task_id(suite.name, task)
    except ConfigError as err:
        raise SystemExit(str(err)) from err


def _experts(pairs: Sequence[tuple[str, Path]]):
    from fda.io.checkpoints import load_state_dict

    return [t for t, _ in pairs], [load_state_dict(d) for _, d in pairs]


def _fda_config(args: argparse.Namespace, init: str = "pretrained"):
    """``FDAConfig.for_family(family, init, size)`` (the paper's values) with the configured
    overrides and the seed. Construction uses ``init="pretrained"``: its settings do not depend
    on the init, and the anchors are shared by every init. Jobs given a suite's ``--settings``
    construct in the suite's q/k/v layout unless ``--fda`` sets ``qkv_layout``: one layout per
    suite, recorded in every result row."""
    from fda import FDAConfig

    fields = {f.name for f in dataclasses.fields(FDAConfig)}
    unknown = sorted(set(args.fda) - fields)
    if unknown:
        raise SystemExit(f"unknown FDA hyperparameter(s) {unknown}; FDAConfig fields: {', '.join(sorted(fields))}")
    overrides = {**args.fda, "seed": args.seed}
    if "qkv_layout" not in overrides and hasattr(args, "settings"):
        overrides["qkv_layout"] = _suite(args).qkv_layout
    return FDAConfig.for_family(args.family, init=init, size=args.size, **overrides)


def _count_blocks(model) -> int | None:
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


def _check_blocks(model, n_blocks: int | None, blocks: Sequence[int]) -> None:
    if n_blocks is None:
        return
    actual = _count_blocks(model)
    if actual is not None and actual != n_blocks:
        raise SystemExit(f"config says fda.n_blocks={n_blocks} but the model has {actual} blocks; fix the config")
    bad = [b for b in blocks if not 0 <= b < n_blocks]
    if bad:
        raise SystemExit(f"block(s) {bad} out of range 0..{n_blocks - 1}")


def _to_list(x: Any) -> Any:
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
        return {str(k): _to_list(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_list(v) for v in x]
    return x


def construct_log_record(result: Any, **meta: Any) -> dict[str, Any]:
    """The JSON log written next to each anchors file (format: fda.bench.report.figures.read_construct_log),
    from a ``fda.ConstructResult`` and its ``ConstructLog``."""
    log = result.log
    loss = [float(v) for v in _to_list(log.loss)]
    cos_rows = _to_list(log.cos)  # [steps, P]
    names = list(log.param_names)
    cos = {n: [float(r[k]) for r in cos_rows] for k, n in enumerate(names)}
    cos_mean = [float(v) for v in _to_list(log.mean_cos())] if loss else []
    return {**meta, "best_step": int(result.best_step), "best_loss": float(result.best_loss),
            "steps": list(range(len(loss))), "loss": loss, "cos_mean": cos_mean, "cos": cos,
            "unalignable": list(log.unalignable), "sv_steps": [int(x) for x in log.sv_steps],
            "singular_values": [_to_list(v) for v in log.sv]}


def _inputs_key(paths: Sequence[Path], extra: Any) -> str:
    """Cache key of an adapted block: settings plus (path, size, mtime) of every input file."""
    from fda.bench.workflow_config import config_hash

    stats = []
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        stats += [(str(q), q.stat().st_size, q.stat().st_mtime_ns) for q in files]
    return config_hash({"extra": extra, "files": stats})


# -------------------------------------------------------------------------------- commands


def cmd_validate_config(args: argparse.Namespace) -> int:
    from fda.bench.workflow_config import ConfigError, cells, load_config

    try:
        config = load_config(args.configfile, args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    n = len(cells(config))
    print(f"ok: {', '.join(args.configfile)} ({len(config['suites'])} suites, {n} result cells, smoke={config['smoke']})")
    return 0


def cmd_cells(args: argparse.Namespace) -> int:
    from fda.bench.workflow_config import ConfigError, cells, load_config

    try:
        config = load_config(args.configfile, args.config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    print("\n".join(cells(config)))
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")  # build under a temporary name, then rename
    shutil.rmtree(tmp, ignore_errors=True)
    _suite(args).prepare_data(tmp, args.seed)
    _replace_dir(tmp, out)
    return 0


def cmd_prepare_base(args: argparse.Namespace) -> int:
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _suite(args).prepare_base(tmp, Path(args.data), args.seed)
    _replace_dir(tmp, out)
    return 0


def cmd_prepare_expert(args: argparse.Namespace) -> int:
    from fda.bench.workflow_config import suite_takes_sources

    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    source = args.source or {}
    # The paper suites fetch, convert and verify their experts themselves (the configured source
    # reaches them through --settings); for the embedded suites a {path} expert is a ready
    # directory to copy.
    if "path" in source and not suite_takes_sources(args.suite):
        src = Path(source["path"])
        if not (src / "head.safetensors").is_file():
            raise SystemExit(f"expert for task {args.task}: {src} must be an HF encoder directory with head.safetensors")
        shutil.copytree(src, tmp)
    else:
        suite = _suite(args)
        suite.prepare_expert(_suite_task(suite, args.task), Path(args.base), Path(args.data), tmp, args.seed)
    _replace_dir(tmp, out)
    return 0


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished directory into place (rename is atomic on one file system)."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)


def cmd_merge(args: argparse.Namespace) -> int:
    import baselines

    from fda.io.checkpoints import load_state_dict, save_state_dict

    pre = load_state_dict(args.base)
    tasks, experts = _experts(args.expert)
    # TSV-M and WUDI are not invariant to splitting a matrix: merge in the suite's layout (fused
    # q/k/v for the paper's CLIP checkpoints), store in the canonical HF layout.
    suite = _suite(args) if args.suite else None
    layout = suite.qkv_layout if suite is not None else "split"
    if suite is not None and hasattr(suite, "to_merge_layout"):
        pre, experts = suite.to_merge_layout(pre), [suite.to_merge_layout(e) for e in experts]
    _log(f"merge {args.method} over {tasks} with {args.hparams} (qkv layout {layout})")
    merged = baselines.merge(args.method, pre, experts, **args.hparams)
    if suite is not None and hasattr(suite, "from_merge_layout"):
        merged = suite.from_merge_layout(merged)
    save_state_dict(merged, args.out, {"method": args.method, "hparams": json.dumps(args.hparams, sort_keys=True),
                                       "tasks": ",".join(tasks), "qkv_layout": str(layout)})
    return 0


def _block_job_inputs(args: argparse.Namespace):
    """What every FDA block job loads: the encoder skeleton (blocks checked against the config),
    the base state dict, and the experts: ``(model, pretrained, tasks, experts)``."""
    from fda.io.checkpoints import load_state_dict

    model = _suite(args).load_encoder(Path(args.base))
    _check_blocks(model, args.n_blocks, args.block)
    tasks, experts = _experts(args.expert)
    return model, load_state_dict(args.base), tasks, experts


def cmd_fda_construct(args: argparse.Namespace) -> int:
    import fda as F
    from fda.io.checkpoints import read_metadata, write_json_atomic

    model, pre, tasks, experts = _block_job_inputs(args)
    want = args.task or tasks
    subset = [tasks.index(t) for t in want]
    cfg = _fda_config(args)
    out_dir = Path(args.out_dir)
    # With --cache-dir, finished blocks are kept outside the job's declared outputs (snakemake
    # deletes those before a rerun), so a killed coarse job redoes no finished block.
    work_dir = Path(args.cache_dir) if args.cache_dir else out_dir
    key = _inputs_key([Path(args.base)] + [d for _, d in args.expert],
                      {"fda": args.fda, "size": args.size, "family": args.family, "seed": args.seed,
                       "anchor_init": args.anchor_init, "qkv_layout": cfg.qkv_layout})
    for block in args.block:
        files = {t: work_dir / f"block{block}" / f"{t}.safetensors" for t in want}
        if all(f.is_file() and read_metadata(f).get("cache_key") == json.dumps(key) for f in files.values()):
            _log(f"block {block}: cached anchors in {work_dir}")
        else:
            _log(f"construct block {block} for {want} ({args.anchor_init} anchors)")
            results = F.construct_block(model, pre, experts, block, args.anchor_init, cfg, experts_subset=subset)
            for task, res in zip(want, results, strict=True):
                meta = {"suite": args.suite, "task": task, "anchor_init": args.anchor_init, "seed": args.seed,
                        "fda": args.fda, "cache_key": key}
                record = construct_log_record(res, suite=args.suite, block=block, task=task,
                                              anchor_init=args.anchor_init, seed=args.seed)
                write_json_atomic(record, files[task].with_suffix(".json"))
                F.save_anchors(res, files[task], meta)  # last: its presence marks the pair complete
        if work_dir != out_dir:
            for task, f in files.items():
                for src in (f.with_suffix(".json"), f):
                    _link_or_copy(src, out_dir / f"block{block}" / src.name)
    return 0


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link where possible, else a copy."""
    from fda.io.checkpoints import atomic_path

    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def cmd_fda_adapt(args: argparse.Namespace) -> int:
    import fda as F
    from fda.io.checkpoints import load_state_dict, read_metadata, save_state_dict, write_json_atomic

    model, pre, tasks, experts = _block_job_inputs(args)
    init_state = load_state_dict(args.init_model) if args.init_model else pre
    cfg = _fda_config(args, args.init)
    blocks_dir, anchors_dir = Path(args.blocks_dir), Path(args.anchors_dir)
    for block in args.block:
        path = blocks_dir / f"block{block}.safetensors"
        anchor_files = [anchors_dir / f"block{block}" / f"{t}.safetensors" for t in tasks]
        inputs = anchor_files + [Path(args.base)] + ([Path(args.init_model)] if args.init_model else [])
        key = _inputs_key(inputs, {"fda": args.fda, "init": args.init, "seed": args.seed, "tasks": tasks})
        if path.is_file() and read_metadata(path).get("cache_key") == key:
            _log(f"block {block}: cached ({path})")  # a killed coarse job resumes here
            continue
        anchors = [F.load_anchors(f)[0] for f in anchor_files]
        _log(f"adapt block {block} from {args.init} on {args.anchor_init} anchors")
        result = F.adapt_block(model, pre, experts, block, anchors, args.init, init_state, cfg)
        save_state_dict(result.params, path, {"cache_key": key, "block": str(block), "init": args.init,
                                              "anchor_init": args.anchor_init, "seed": str(args.seed)})
        write_json_atomic({"block": block, "init": args.init, "anchor_init": args.anchor_init,
                           "log": _to_list(getattr(result, "log", None))}, blocks_dir / f"block{block}.json")
    if args.assemble:
        _assemble(args, model, pre, init_state, cfg)
    return 0


def _assemble(args: argparse.Namespace, model, pre, init_state, cfg) -> None:
    import fda as F
    from fda.io.checkpoints import load_state_dict, save_state_dict

    blocks_dir = Path(args.blocks_dir)
    adapted: dict[str, Any] = {}  # every adapted block's tensors, by state-dict key
    for b in range(args.n_blocks):
        adapted.update(load_state_dict(blocks_dir / f"block{b}.safetensors"))
    merged = F.assemble(pre, init_state, adapted, model, cfg)
    save_state_dict(merged, args.assemble, {"method": "fda", "init": args.init, "anchor_init": args.anchor_init,
                                            "seed": str(args.seed), "fda": json.dumps(args.fda, sort_keys=True)})


def cmd_fda_assemble(args: argparse.Namespace) -> int:
    from fda.io.checkpoints import load_state_dict

    suite = _suite(args)
    model = suite.load_encoder(Path(args.base))
    pre = load_state_dict(args.base)
    init_state = load_state_dict(args.init_model) if args.init_model else pre
    _assemble(args, model, pre, init_state, _fda_config(args, args.init))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fda.io.checkpoints import load_state_dict
    from fda.bench.report.results import raw_frame, write_csv

    suite = _suite(args)
    experts = dict(args.expert)
    rows: list[dict[str, Any]] = []
    shared = load_state_dict(args.model) if args.model else None
    for task in args.tasks:
        # `individual`: each task's own expert; otherwise the one merged encoder on every task
        state = shared if shared is not None else load_state_dict(experts[task])
        _log(f"evaluate {args.method} {args.init} {args.anchor_init} on {task}")
        got = suite.evaluate(state, _suite_task(suite, task), Path(args.base), Path(args.data), experts[task], limit=args.limit)
        rows += [{**r, "task": task} for r in got]  # rows carry the workflow's task name
    df = raw_frame(rows, method=args.method, init=args.init, anchor_init=args.anchor_init, seed=args.seed)
    write_csv(df, args.out)
    return 0


def cmd_cell(args: argparse.Namespace) -> int:
    from fda.bench.report.results import build_cell, read_raw, write_cell

    raw = [read_raw(p) for p in args.raw]
    cell = build_cell(raw, read_raw(args.individual), suite=args.suite, expert_source=args.expert_source,
                      config_hash=args.config_hash, qkv_layout=args.qkv_layout)
    write_cell(cell, args.out)
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from fda.bench.report.results import read_cells
    from fda.bench.report.tables import write_tables

    paths = write_tables(read_cells(args.cells), args.suite, args.tasks, args.out_dir, args.paper)
    _log(f"wrote {len(paths)} table files to {args.out_dir}")
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from fda.bench.report.figures import write_cell_figures
    from fda.bench.report.results import read_cells

    paths = write_cell_figures(read_cells(args.cells), args.suite, args.tasks, args.out_dir)
    _log(f"wrote {len(paths)} figure files to {args.out_dir}")
    return 0


def cmd_construction_figures(args: argparse.Namespace) -> int:
    from fda.bench.report.figures import write_construction_figures

    paths = write_construction_figures(args.suite, args.anchor_init, args.logs, args.out_dir)
    _log(f"wrote {len(paths)} figure files to {args.out_dir}")
    return 0


# -------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fda-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from fda import __version__

    p.add_argument("--version", action="version", version=f"fda-bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        return sp

    def suite_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--suite", required=True, help="suite name (config key)")
        sp.add_argument("--settings", type=_json_arg, default={}, help="the suite's settings (JSON)")

    def config_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("configfile", nargs="+", help="config YAML file(s); later ones update earlier ones")
        sp.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. smoke=true")

    config_args(add("validate-config", cmd_validate_config, "check config files against the workflow schema"))
    config_args(add("cells", cmd_cells, "list the result cells a config asks for"))

    sp = add("prepare-data", cmd_prepare_data, "write a suite's datasets")
    suite_args(sp)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("prepare-base", cmd_prepare_base, "write a suite's pretrained encoder (HF directory)")
    suite_args(sp)
    sp.add_argument("--data", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("prepare-expert", cmd_prepare_expert, "fetch, copy or fine-tune one task's expert")
    suite_args(sp)
    sp.add_argument("--task", required=True)
    sp.add_argument("--source", type=_json_arg, default={}, help='expert spec (JSON): {"path": DIR}, {"hub": ID} or {"recipe": ...}')
    sp.add_argument("--base", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("merge", cmd_merge, "merge experts with a baseline method (in the suite's merge layout)")
    sp.add_argument("--suite", help="suite name: merge in its layout (to_merge_layout/from_merge_layout) when it has one")
    sp.add_argument("--settings", type=_json_arg, default={}, help="the suite's settings (JSON)")
    sp.add_argument("--method", required=True)
    sp.add_argument("--hparams", type=_json_arg, default={}, help="method hyperparameters (JSON)")
    sp.add_argument("--base", required=True)
    sp.add_argument("--expert", type=_task_dir, action="append", required=True, metavar="TASK=DIR")
    sp.add_argument("--out", required=True)

    def fda_args(sp: argparse.ArgumentParser) -> None:
        suite_args(sp)
        sp.add_argument("--family", required=True)
        sp.add_argument("--size", default="base", choices=["base", "large"], help="FDAConfig.for_family size")
        sp.add_argument("--fda", type=_json_arg, default={}, help="FDAConfig overrides (JSON)")
        sp.add_argument("--anchor-init", required=True, choices=["gauss", "weight"])
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--n-blocks", type=int, help="expected number of blocks (checked against the model)")
        sp.add_argument("--base", required=True)
        sp.add_argument("--expert", type=_task_dir, action="append", required=True, metavar="TASK=DIR")

    sp = add("fda-construct", cmd_fda_construct, "construct FDA anchors for some blocks (and experts)")
    fda_args(sp)
    sp.add_argument("--block", type=int, action="append", required=True)
    sp.add_argument("--task", action="append", help="only these experts (default: all)")
    sp.add_argument("--out-dir", required=True, help="writes OUT_DIR/block{b}/{task}.safetensors and .json")
    sp.add_argument("--cache-dir", help="build (and resume) blocks here, then link them into OUT_DIR")

    sp = add("fda-adapt", cmd_fda_adapt, "adapt blocks on the anchors; each finished block is cached")
    fda_args(sp)
    sp.add_argument("--init", required=True, choices=["pretrained", "ta", "tsvm", "wudi"])
    sp.add_argument("--init-model", help="the init's merged encoder (not for pretrained)")
    sp.add_argument("--anchors-dir", required=True)
    sp.add_argument("--block", type=int, action="append", required=True)
    sp.add_argument("--blocks-dir", required=True, help="writes BLOCKS_DIR/block{b}.safetensors and .json")
    sp.add_argument("--assemble", help="then assemble all n-blocks blocks into this merged file")

    sp = add("fda-assemble", cmd_fda_assemble, "assemble adapted blocks into the merged encoder")
    fda_args(sp)
    sp.add_argument("--init", required=True, choices=["pretrained", "ta", "tsvm", "wudi"])
    sp.add_argument("--init-model")
    sp.add_argument("--blocks-dir", required=True)
    sp.add_argument("--assemble", required=True, metavar="OUT")

    sp = add("evaluate", cmd_evaluate, "evaluate an encoder on the suite's tasks -> raw rows CSV")
    suite_args(sp)
    sp.add_argument("--model", help="merged encoder (safetensors/HF dir); omit for `individual`")
    sp.add_argument("--tasks", nargs="+", required=True)
    sp.add_argument("--base", required=True)
    sp.add_argument("--data", required=True)
    sp.add_argument("--expert", type=_task_dir, action="append", required=True, metavar="TASK=DIR")
    sp.add_argument("--limit", type=int)
    sp.add_argument("--method", required=True)
    sp.add_argument("--init", default="")
    sp.add_argument("--anchor-init", default="")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)

    sp = add("cell", cmd_cell, "raw evaluation rows -> one tidy result cell")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--raw", action="append", required=True)
    sp.add_argument("--individual", required=True, help="raw rows of the individual experts (for `normalized`)")
    sp.add_argument("--expert-source", required=True)
    sp.add_argument("--qkv-layout", default="split", choices=["split", "fused"], help="q/k/v layout the merges ran in")
    sp.add_argument("--config-hash", required=True)
    sp.add_argument("--out", required=True)

    sp = add("aggregate", cmd_aggregate, "result cells -> paper-shaped tables")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--tasks", nargs="+", required=True, help="column order")
    sp.add_argument("--cells", nargs="+", required=True)
    sp.add_argument("--paper", help="paper numbers CSV (default: the packaged paper_tables.csv)")
    sp.add_argument("--out-dir", required=True)

    sp = add("figures", cmd_figures, "result cells -> method comparison and per-task heatmap")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--tasks", nargs="+", required=True)
    sp.add_argument("--cells", nargs="+", required=True)
    sp.add_argument("--out-dir", required=True)

    sp = add("construction-figures", cmd_construction_figures,
             "construction logs -> loss/cosine curves and anchor singular value spectra")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--anchor-init", required=True)
    sp.add_argument("--logs", nargs="+", required=True, help="construction logs (JSON next to the anchors)")
    sp.add_argument("--out-dir", required=True)

    from fda.bench.cli_llm import add_llm_commands  # here: fda.bench.cli_llm imports this module's helpers

    add_llm_commands(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in GPU_COMMANDS:
        from fda.bench.gpu import gpu_slot

        with gpu_slot() as slot:
            if slot is not None:
                _log(f"pinned to GPU {slot}")
            return int(args.func(args) or 0)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
