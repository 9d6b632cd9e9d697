"""``fda-bench`` subcommands of the streaming LLM suites (llama13b), registered by
:func:`fda.bench.cli.build_parser`. Each is a thin wrapper around the library (docs/llm.md):

  stream-merge   merge sharded checkpoints block by block      fda.io.streaming.stream_merge
  convert-bin    pickled .bin checkpoint -> sharded safetensors fda.io.streaming.convert_bin_to_safetensors
  llm-construct  FDA anchors of one decoder layer and expert    fda.streamed.construct_layer
  llm-adapt      adapt one decoder layer on every expert's anchors  fda.streamed.adapt_layer
  llm-assemble   the FDA model, streamed                        fda.streamed.assemble_streamed
  llm-eval       generate and score -> raw rows CSV             fda.bench.suites.llama.LlamaSuite.evaluate_dir

Directory outputs are built in a hidden staging directory next to the output (``.NAME.partial``)
and renamed into place when complete, so a reader never sees a partial model. The staging
directory is not a declared output (snakemake does not delete it): with ``--resume`` a killed
``stream-merge`` / ``llm-assemble`` continues there, provided its inputs and settings are unchanged.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from fda.bench.cli.common import (ANCHOR_INITS, INITS, AddCommand, block_shape_record, construct_log_record, fda_config,
                                  inputs_key, json_arg, log, replace_dir, suite_of, suite_task, task_dir, UsageError)

#: the staging directory's record of what it is building (the resume key)
STAGING_KEY = ".fda-bench-staging.json"


# -------------------------------------------------------------------------------- helpers


def _staging_dir(out: Path, key: str, resume: bool) -> Path:
    """The hidden sibling ``out`` is built in. It is kept only with ``resume`` and when it was
    started for the same ``key`` (inputs and settings); otherwise it starts empty."""
    stage = out.with_name(f".{out.name}.partial")
    marker = stage / STAGING_KEY
    if stage.exists() and not (resume and marker.is_file() and json.loads(marker.read_text()) == key):
        shutil.rmtree(stage)
    stage.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(key))
    return stage


def _publish(stage: Path, out: Path) -> None:
    """Rename the finished staging directory onto ``out`` (atomic on one file system)."""
    (stage / STAGING_KEY).unlink()
    replace_dir(stage, out)


def _num_layers(model_dir: Path) -> int:
    """``num_hidden_layers`` of ``model_dir/config.json``."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"{model_dir}: no config.json; --base must be an HF model directory")
    n = json.loads(path.read_text()).get("num_hidden_layers")
    if not isinstance(n, int):
        raise UsageError(f"{path}: no integer num_hidden_layers; is this a decoder LLM?")
    return n


def _check_layers(base: Path, n_blocks: int | None, layer: int | None = None) -> None:
    """The config's ``fda.n_blocks`` and the job's ``--layer`` against the base's layer count."""
    actual = _num_layers(base)
    if n_blocks is not None and n_blocks != actual:
        raise UsageError(f"config says fda.n_blocks={n_blocks} but {base}/config.json has num_hidden_layers={actual}; "
                         f"set fda.n_blocks: {actual}")
    if layer is not None and not 0 <= layer < actual:
        raise UsageError(f"--layer {layer} is out of range 0..{actual - 1} ({base}/config.json)")


def _check_init(args: argparse.Namespace) -> None:
    """A merged init (ta, tsvm, wudi) needs its merged directory; ``pretrained`` takes none."""
    if args.init == "pretrained" and args.init_model:
        raise UsageError("--init pretrained adapts the base itself: drop --init-model")
    if args.init != "pretrained" and not args.init_model:
        raise UsageError(f"--init {args.init} needs --init-model, the {args.init} merge's directory (fda-bench stream-merge)")


def _anchor_files(pairs: Sequence[tuple[str, Path]], tasks: Sequence[str]) -> list[Path]:
    """``--anchors TASK=FILE`` in the experts' order; every expert exactly once."""
    given = dict(pairs)
    if len(given) != len(pairs) or sorted(given) != sorted(tasks):
        raise UsageError(f"--anchors gives tasks {[t for t, _ in pairs]}; need each expert's anchors once: {list(tasks)}")
    return [given[t] for t in tasks]


def _expert_dirs(pairs: Sequence[tuple[str, Path]]) -> tuple[list[str], list[Path]]:
    tasks = [t for t, _ in pairs]
    if len(set(tasks)) != len(tasks):
        raise UsageError(f"--expert names a task twice: {tasks}")
    return tasks, [d for _, d in pairs]


# -------------------------------------------------------------------------------- commands


def cmd_stream_merge(args: argparse.Namespace) -> int:
    from fda.io.streaming import stream_merge

    tasks, dirs = _expert_dirs(args.expert)
    out = Path(args.out)
    key = inputs_key([Path(args.base), *dirs], {"method": args.method, "hparams": args.hparams,
                                                "shard_size": args.shard_size, "vocab_mismatch": args.vocab_mismatch})
    stage = _staging_dir(out, key, args.resume)
    log(f"stream-merge {args.method} over {tasks} with {args.hparams} into {stage}")
    report = stream_merge(args.method, args.base, dirs, stage, hparams=args.hparams, shard_size=args.shard_size,
                          vocab_mismatch=args.vocab_mismatch, resume=args.resume)
    log(f"merged {len(report.blocks_merged)} blocks (kept {len(report.blocks_skipped)} from a killed run), "
        f"{report.total_bytes / 1e9:.2f} GB in {report.seconds:.0f} s")
    _publish(stage, out)
    return 0


def cmd_convert_bin(args: argparse.Namespace) -> int:
    from fda.io.streaming import convert_bin_to_safetensors

    out = Path(args.out)
    stage = _staging_dir(out, "convert-bin", resume=False)
    convert_bin_to_safetensors(args.src, stage, shard_size=args.shard_size)
    _publish(stage, out)
    return 0


def cmd_llm_construct(args: argparse.Namespace) -> int:
    import fda as F
    from fda.io.checkpoints import write_json_atomic
    from fda.streamed import construct_layer, decoder_skeleton

    tasks, dirs = _expert_dirs(args.expert)
    if args.task not in tasks:
        raise UsageError(f"--task {args.task} is not one of the experts {tasks}")
    _check_layers(Path(args.base), args.n_blocks, args.layer)
    cfg = fda_config(args)  # construction settings do not depend on the init
    log(f"construct layer {args.layer} for {args.task} ({args.anchor_init} anchors)")
    # the expert's index in the full list fixes its seed: the same anchors as a whole-model run
    (result,) = construct_layer(args.base, dirs, args.layer, args.anchor_init, config=cfg,
                                experts_subset=[tasks.index(args.task)])
    record = construct_log_record(result, suite=args.suite, block=args.layer, task=args.task,
                                  anchor_init=args.anchor_init, seed=args.seed,
                                  shape=block_shape_record(decoder_skeleton(args.base), args.layer, cfg.part, result.anchors))
    write_json_atomic(record, args.log)
    meta = {"suite": args.suite, "task": args.task, "anchor_init": args.anchor_init, "seed": args.seed, "fda": args.fda}
    F.save_anchors(result, args.out, meta)
    return 0


def cmd_llm_adapt(args: argparse.Namespace) -> int:
    from fda.io.checkpoints import save_state_dict
    from fda.streamed import adapt_layer

    tasks, dirs = _expert_dirs(args.expert)
    anchors = _anchor_files(args.anchors, tasks)
    _check_init(args)
    _check_layers(Path(args.base), args.n_blocks, args.layer)
    cfg = fda_config(args, args.init)
    log(f"adapt layer {args.layer} from {args.init} on {args.anchor_init} anchors of {tasks}")
    result = adapt_layer(args.base, dirs, args.layer, anchors, init=args.init, init_dir=args.init_model, config=cfg)
    save_state_dict(result.params, args.out, {"layer": str(args.layer), "init": args.init, "anchor_init": args.anchor_init,
                                              "seed": str(args.seed), "fda": json.dumps(args.fda, sort_keys=True)})
    return 0


def assembly_source(non_block: str | None, base: str, init_model: str | None) -> str:
    """The checkpoint outside the adapted blocks: the merged init for ``non_block="init"`` (the
    official LLM setting), else the base (as :func:`fda.api.assemble`)."""
    return init_model if non_block == "init" and init_model else base


def cmd_llm_assemble(args: argparse.Namespace) -> int:
    from fda.streamed import assemble_streamed

    _check_init(args)
    if args.n_blocks is not None and len(args.blocks) != args.n_blocks:
        raise UsageError(f"{len(args.blocks)} adapted block files for fda.n_blocks={args.n_blocks}; pass one per block")
    source = assembly_source(fda_config(args, args.init).non_block, args.base, args.init_model)
    out = Path(args.out)
    key = inputs_key([Path(source), *map(Path, args.blocks)], {"shard_size": args.shard_size})
    stage = _staging_dir(out, key, args.resume)
    log(f"assemble {len(args.blocks)} adapted blocks over {source}")
    assemble_streamed(source, args.blocks, stage, shard_size=args.shard_size, resume=args.resume)
    _publish(stage, out)
    return 0


def cmd_llm_eval(args: argparse.Namespace) -> int:
    from fda.bench.eval.outcomes import pop_outcomes, write_evaluation_outcomes
    from fda.bench.report.results import raw_frame, write_csv

    suite = suite_of(args)
    if not hasattr(suite, "evaluate_dir"):
        raise UsageError(f"suite '{args.suite}' is not an LLM suite; use fda-bench evaluate")
    tasks = [suite_task(suite, t) for t in args.tasks]
    experts = dict(args.expert or [])
    gen = Path(args.generations_dir) if args.generations_dir else None
    if args.model:
        log(f"evaluate {args.method} {args.init} {args.anchor_init} ({args.model}) on {tasks}")
        rows = suite.evaluate_dir(args.model, tasks, args.data, limit=args.limit, generations_dir=gen)
    else:  # `individual`: each expert on its own task's benchmarks
        missing = [t for t in tasks if t not in experts]
        if missing:
            raise UsageError(f"without --model every task needs --expert TASK=DIR; missing {missing}")
        rows = []
        for t in tasks:
            log(f"evaluate the {t} expert ({experts[t]}) on its own task")
            rows += suite.evaluate_dir(experts[t], [t], args.data, limit=args.limit, generations_dir=gen / t if gen else None)
    tags = {"method": args.method, "init": args.init, "anchor_init": args.anchor_init, "seed": args.seed,
            "expert_seed": args.expert_seed}
    outcomes = pop_outcomes(rows, **tags)
    if args.outcomes:
        write_evaluation_outcomes(outcomes, [r["task"] for r in rows], args.outcomes, args.suite)
    write_csv(raw_frame(rows, **tags), args.out)
    return 0


# -------------------------------------------------------------------------------- parser


def _fda_flags(sp: argparse.ArgumentParser) -> None:
    """What :func:`fda.bench.cli.common.fda_config` reads, as fda-construct and fda-adapt take it."""
    sp.add_argument("--family", required=True)
    sp.add_argument("--size", default="base", choices=["base", "large"], help="FDAConfig.for_family size")
    sp.add_argument("--fda", type=json_arg, default={}, help="FDAConfig overrides (JSON)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--n-blocks", type=int, help="expected number of decoder layers (checked against config.json)")


def _model_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--base", required=True, help="base model directory (sharded safetensors)")
    sp.add_argument("--expert", type=task_dir, action="append", required=True, metavar="TASK=DIR")


def _stream_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--shard-size", default="5GB", help="output shard cap, e.g. 2GB")
    sp.add_argument("--resume", action="store_true", help="continue a killed run of the same inputs and settings")


def register(add: AddCommand) -> None:
    """Register the LLM subcommands with ``add(name, fn, help) -> subparser`` (fda.bench.cli.build_parser)."""
    sp = add("stream-merge", cmd_stream_merge, "merge sharded checkpoints block by block into a sharded HF directory")
    sp.add_argument("--method", required=True, help="a baselines method: ta, tsvm, wudi, average, ties, isoc or isocts")
    sp.add_argument("--hparams", type=json_arg, default={}, help="method hyperparameters (JSON)")
    _model_flags(sp)
    sp.add_argument("--out", required=True, help="output model directory")
    sp.add_argument("--vocab-mismatch", default="error", choices=["error", "truncate"],
                    help="experts with more embedding rows than the base: refuse, or merge the base's rows")
    _stream_flags(sp)

    sp = add("convert-bin", cmd_convert_bin, "convert a pickled (.bin) HF checkpoint to sharded safetensors")
    sp.add_argument("src", help="directory with pytorch_model.bin or its index")
    sp.add_argument("out", help="output directory")
    sp.add_argument("--shard-size", default="5GB")

    sp = add("llm-construct", cmd_llm_construct, "construct FDA anchors of one decoder layer for one expert")
    sp.add_argument("--suite", required=True, help="suite name (recorded in the construction log)")
    _fda_flags(sp)
    sp.add_argument("--anchor-init", required=True, choices=ANCHOR_INITS)
    _model_flags(sp)
    sp.add_argument("--layer", type=int, required=True)
    sp.add_argument("--task", required=True, help="the expert whose anchors are built")
    sp.add_argument("--out", required=True, help="anchors file (.safetensors)")
    sp.add_argument("--log", required=True, help="construction log (.json, for the construction figures)")

    sp = add("llm-adapt", cmd_llm_adapt, "adapt one decoder layer on the anchors of every expert")
    _fda_flags(sp)
    sp.add_argument("--anchor-init", required=True, choices=ANCHOR_INITS)
    _model_flags(sp)
    sp.add_argument("--init", required=True, choices=INITS)
    sp.add_argument("--init-model", help="the init's merged directory (not for pretrained)")
    sp.add_argument("--layer", type=int, required=True)
    sp.add_argument("--anchors", type=task_dir, action="append", required=True, metavar="TASK=FILE")
    sp.add_argument("--out", required=True, help="adapted tensors of the layer (.safetensors)")

    sp = add("llm-assemble", cmd_llm_assemble, "write the FDA model: the init (or base) with the adapted layers, streamed")
    _fda_flags(sp)
    sp.add_argument("--base", required=True)
    sp.add_argument("--init", required=True, choices=INITS)
    sp.add_argument("--init-model", help="the init's merged directory (not for pretrained)")
    sp.add_argument("--blocks", nargs="+", required=True, help="adapted layer files (llm-adapt)")
    sp.add_argument("--out", required=True, help="output model directory")
    _stream_flags(sp)

    sp = add("llm-eval", cmd_llm_eval, "generate with a model directory and score the benchmarks -> raw rows CSV")
    sp.add_argument("--suite", required=True)
    sp.add_argument("--settings", type=json_arg, default={}, help="the suite's settings (JSON)")
    sp.add_argument("--model", help="model directory; omit for `individual` (each --expert on its own task)")
    sp.add_argument("--tasks", nargs="+", required=True, help="tasks whose benchmarks are scored")
    sp.add_argument("--expert", type=task_dir, action="append", metavar="TASK=DIR")
    sp.add_argument("--data", required=True, help="the suite's prepared data ({benchmark}.jsonl)")
    sp.add_argument("--limit", type=int)
    sp.add_argument("--generations-dir", help="write each benchmark's prompts, completions and scores here")
    sp.add_argument("--outcomes", help="also write per-example pass/fail here (.npz; see fda.bench.eval.outcomes)")
    sp.add_argument("--method", required=True)
    sp.add_argument("--init", default="")
    sp.add_argument("--anchor-init", default="")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--expert-seed", type=int, default=0, help="recorded in every row (linked experts: 0)")
    sp.add_argument("--out", required=True)
