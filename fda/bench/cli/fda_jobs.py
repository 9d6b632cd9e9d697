"""``fda-bench fda-construct``, ``fda-adapt``, ``fda-assemble``: the FDA block jobs of the encoder
suites. Each finished block is cached under a key of its inputs and settings, so a killed coarse
job redoes no finished block."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, TextIO

from fda.bench.cli.common import (INITS, AddCommand, block_shape_record, check_blocks, construct_log_record, fda_args,
                                  fda_config, inputs_key, link_or_copy, load_experts, log, suite_of, to_list, UsageError)
from fda.bench.progress import JobProgress

PROGRESS_HELP = "also write progress lines (per block and step, with the time left) to this open file descriptor, e.g. 3 with `3>&2`"


def open_progress_fd(fd: int | None) -> TextIO | None:
    """A line-buffered text stream on ``fd`` (left open on exit), or None without one."""
    if fd is None:
        return None
    try:
        os.fstat(fd)
    except OSError as err:
        raise UsageError(f"--progress-fd {fd}: that file descriptor is not open; open it in the shell, e.g. `{fd}>&2`") from err
    return open(fd, "w", buffering=1, closefd=False)  # noqa: SIM115 - the shell's fd: it closes it


def _block_job_inputs(args: argparse.Namespace):
    """What every FDA block job loads: the encoder skeleton (blocks checked against the config),
    the base state dict, and the experts: ``(model, pretrained, tasks, experts)``."""
    from fda.io.checkpoints import load_state_dict

    model = suite_of(args).load_encoder(Path(args.base))
    check_blocks(model, args.n_blocks, args.block)
    tasks, experts = load_experts(args.expert)
    return model, load_state_dict(args.base), tasks, experts


def cmd_fda_construct(args: argparse.Namespace) -> int:
    import fda as F
    from fda.io.checkpoints import read_metadata, write_json_atomic

    model, pre, tasks, experts = _block_job_inputs(args)
    want = args.task or tasks
    subset = [tasks.index(t) for t in want]
    cfg = fda_config(args)
    out_dir = Path(args.out_dir)
    # With --cache-dir, finished blocks are kept outside the job's declared outputs (snakemake
    # deletes those before a rerun), so a killed coarse job redoes no finished block.
    work_dir = Path(args.cache_dir) if args.cache_dir else out_dir
    key = inputs_key([Path(args.base)] + [d for _, d in args.expert],
                     {"fda": args.fda, "size": args.size, "family": args.family, "seed": args.seed,
                      "anchor_init": args.anchor_init, "qkv_layout": cfg.qkv_layout})
    files_of = {b: {t: work_dir / f"block{b}" / f"{t}.safetensors" for t in want} for b in args.block}
    cached = {b for b, files in files_of.items()
              if all(f.is_file() and read_metadata(f).get("cache_key") == json.dumps(key) for f in files.values())}
    progress = JobProgress(f"fda-construct {args.suite} seed{args.seed} {args.anchor_init}",
                           [b for b in args.block if b not in cached], open_progress_fd(args.progress_fd))
    for block in args.block:
        files = files_of[block]
        if block in cached:
            log(f"block {block}: cached anchors in {work_dir}")
        else:
            log(f"construct block {block} for {want} ({args.anchor_init} anchors)")
            results = F.construct_block(model, pre, experts, block, args.anchor_init, cfg, experts_subset=subset,
                                        on_step=progress.step(block))
            for task, res in zip(want, results, strict=True):
                meta = {"suite": args.suite, "task": task, "anchor_init": args.anchor_init, "seed": args.seed,
                        "fda": args.fda, "cache_key": key}
                record = construct_log_record(res, suite=args.suite, block=block, task=task,
                                              anchor_init=args.anchor_init, seed=args.seed, cache_key=key,
                                              shape=block_shape_record(model, block, cfg.part, res.anchors))
                # Old anchors go first, the new ones last: whenever anchors exist, the log beside
                # them was written by the same run (a kill in between leaves no anchors: redone).
                files[task].unlink(missing_ok=True)
                write_json_atomic(record, files[task].with_suffix(".json"))
                F.save_anchors(res, files[task], meta)  # last: its presence marks the pair complete
            progress.finished(block)
        if work_dir != out_dir:
            for task, f in files.items():
                for src in (f.with_suffix(".json"), f):
                    link_or_copy(src, out_dir / f"block{block}" / src.name)
    return 0


def cmd_fda_adapt(args: argparse.Namespace) -> int:
    import fda as F
    from fda.io.checkpoints import load_state_dict, read_metadata, save_state_dict, write_json_atomic

    cfg = fda_config(args, args.init)
    snaps = snapshot_epochs(args, cfg)  # before any model is read
    model, pre, tasks, experts = _block_job_inputs(args)
    init_state = load_state_dict(args.init_model) if args.init_model else pre
    blocks_dir, anchors_dir = Path(args.blocks_dir), Path(args.anchors_dir)
    anchor_files = {b: [anchors_dir / f"block{b}" / f"{t}.safetensors" for t in tasks] for b in args.block}
    # the experts too: adaptation matches their block outputs, not only the anchors built from them
    models = [Path(args.base)] + [d for _, d in args.expert] + ([Path(args.init_model)] if args.init_model else [])
    keys = {b: inputs_key(anchor_files[b] + models, {"fda": args.fda, "init": args.init, "seed": args.seed, "tasks": tasks})
            for b in args.block}
    # per block, the files it writes and their cache keys: the adapted block, or one per snapshot epoch
    outputs = {b: ({blocks_dir / f"epochs{e}" / f"block{b}.safetensors": json.dumps({"key": keys[b], "epoch": e})
                    for e in snaps} if snaps else {blocks_dir / f"block{b}.safetensors": keys[b]})
               for b in args.block}
    cached = {b for b, files in outputs.items()
              if all(p.is_file() and read_metadata(p).get("cache_key") == k for p, k in files.items())}
    label = f"fda-adapt {args.suite} seed{args.seed} {args.init} {args.anchor_init}"
    if snaps:  # a grid run of the validated protocol: told apart from the fixed run on the console
        label += f" (grid: lr {cfg.adapt_lr:g}, epochs {','.join(map(str, snaps))})"
    progress = JobProgress(label, [b for b in args.block if b not in cached], open_progress_fd(args.progress_fd))
    for block in args.block:
        if block in cached:
            log(f"block {block}: cached ({', '.join(map(str, outputs[block]))})")  # a killed coarse job resumes here
            continue
        anchors = [F.load_anchors(f)[0] for f in anchor_files[block]]
        check_anchor_shapes(model, cfg, anchor_files[block], anchors)
        log(f"adapt block {block} from {args.init} on {args.anchor_init} anchors"
            + (f", keeping epochs {snaps}" if snaps else ""))
        result = F.adapt_block(model, pre, experts, block, anchors, args.init, init_state, cfg, on_step=progress.step(block),
                               snapshot_epochs=snaps)
        states = [result.snapshots[e] for e in snaps] if snaps else [result.params]
        # The old block goes first and the new one last, after its log: a block on disk always has
        # the log of the run that wrote it (a kill in between leaves no block, which is redone).
        for path in outputs[block]:
            path.unlink(missing_ok=True)
        write_json_atomic({"block": block, "init": args.init, "anchor_init": args.anchor_init, "cache_key": keys[block],
                           "snapshot_epochs": snaps, "log": to_list(getattr(result, "log", None))},
                          blocks_dir / f"block{block}.json")
        for (path, key), state in zip(outputs[block].items(), states, strict=True):
            save_state_dict(state, path, {"cache_key": key, "block": str(block), "init": args.init,
                                          "anchor_init": args.anchor_init, "seed": str(args.seed)})
        progress.finished(block)
    if args.assemble:
        _assemble(args, model, pre, init_state, cfg)
    for e in snaps:  # one model per snapshot epoch: the run of e epochs
        _assemble(args, model, pre, init_state, cfg, blocks_dir / f"epochs{e}", Path(args.snapshot_dir) / f"epochs{e}.safetensors", e)
    return 0


def snapshot_epochs(args: argparse.Namespace, cfg) -> list[int]:
    """``--snapshot-epochs`` checked (ascending; each in 1..adapt_epochs, with ``--snapshot-dir``
    and without ``--assemble``), or [] without it."""
    snaps = sorted(set(args.snapshot_epochs or []))
    if not snaps:
        return []
    if not args.snapshot_dir:
        raise UsageError("--snapshot-epochs needs --snapshot-dir (where the model of each epoch is written)")
    if args.assemble:
        raise UsageError("--snapshot-epochs writes one model per epoch to --snapshot-dir; drop --assemble")
    if snaps[0] < 1 or snaps[-1] > cfg.adapt_epochs:
        raise UsageError(f"--snapshot-epochs {snaps}: each must lie in 1..{cfg.adapt_epochs} (adapt_epochs); "
                         "raise adapt_epochs to the largest")
    return snaps


def check_anchor_shapes(model, cfg, files: list[Path], anchors: list) -> None:
    """Each anchors file fits the model's blocks: width d and, for token anchors, T tokens per
    anchor (imported anchors of another model, e.g. ViT-B/32's 50 tokens on a ViT-B/16, are
    refused by name instead of adapting on the wrong inputs)."""
    from fda.blocks import adapter_for

    adapter = adapter_for(model, cfg.part)
    tokens = cfg.resolved(adapter).tokens
    for f, x in zip(files, anchors, strict=True):
        want = adapter.anchor_shape(int(x.shape[0]), tokens)
        if tuple(x.shape) != want:
            raise UsageError(f"{f}: anchors of shape {tuple(x.shape)} do not fit this model's blocks, which take "
                             f"{want} ([n, T, d] with T = {tokens} tokens, d = {adapter.width}); construct or import the "
                             "anchors of this model")


def _assemble(args: argparse.Namespace, model, pre, init_state, cfg, blocks_dir: Path | None = None,
              out: str | Path | None = None, epochs: int | None = None) -> None:
    """Assemble the ``n_blocks`` adapted blocks of ``blocks_dir`` (default ``--blocks-dir``) into
    the merged model ``out`` (default ``--assemble``); ``epochs``: a snapshot's, recorded in its
    metadata in place of the run's."""
    import fda as F
    from fda.io.checkpoints import load_state_dict, save_state_dict

    blocks_dir = Path(blocks_dir or args.blocks_dir)
    adapted: dict[str, Any] = {}  # every adapted block's tensors, by state-dict key
    for b in range(args.n_blocks):
        adapted.update(load_state_dict(blocks_dir / f"block{b}.safetensors"))
    merged = F.assemble(pre, init_state, adapted, model, cfg)
    fda = {**args.fda, "adapt_epochs": epochs} if epochs is not None else args.fda
    save_state_dict(merged, out or args.assemble, {"method": "fda", "init": args.init, "anchor_init": args.anchor_init,
                                                   "seed": str(args.seed), "fda": json.dumps(fda, sort_keys=True)})


def cmd_fda_assemble(args: argparse.Namespace) -> int:
    from fda.io.checkpoints import load_state_dict

    suite = suite_of(args)
    model = suite.load_encoder(Path(args.base))
    pre = load_state_dict(args.base)
    init_state = load_state_dict(args.init_model) if args.init_model else pre
    _assemble(args, model, pre, init_state, fda_config(args, args.init))
    return 0


def register(add: AddCommand) -> None:
    """Register fda-construct, fda-adapt and fda-assemble (see :func:`fda.bench.cli.build_parser`)."""
    sp = add("fda-construct", cmd_fda_construct, "construct FDA anchors for some blocks (and experts)")
    fda_args(sp)
    sp.add_argument("--block", type=int, action="append", required=True)
    sp.add_argument("--task", action="append", help="only these experts (default: all)")
    sp.add_argument("--out-dir", required=True, help="writes OUT_DIR/block{b}/{task}.safetensors and .json")
    sp.add_argument("--cache-dir", help="build (and resume) blocks here, then link them into OUT_DIR")
    sp.add_argument("--progress-fd", type=int, metavar="FD", help=PROGRESS_HELP)

    sp = add("fda-adapt", cmd_fda_adapt, "adapt blocks on the anchors; each finished block is cached")
    fda_args(sp)
    sp.add_argument("--init", required=True, choices=INITS)
    sp.add_argument("--init-model", help="the init's merged encoder (not for pretrained)")
    sp.add_argument("--anchors-dir", required=True)
    sp.add_argument("--block", type=int, action="append", required=True)
    sp.add_argument("--blocks-dir", required=True, help="writes BLOCKS_DIR/block{b}.safetensors and .json")
    sp.add_argument("--assemble", help="then assemble all n-blocks blocks into this merged file")
    sp.add_argument("--snapshot-epochs", type=int, nargs="+", metavar="E",
                    help="keep each block after these epochs too (an epoch grid from one run; validated protocol): "
                         "blocks in BLOCKS_DIR/epochs{E}/, one model per epoch in --snapshot-dir")
    sp.add_argument("--snapshot-dir", help="with --snapshot-epochs: writes SNAPSHOT_DIR/epochs{E}.safetensors")
    sp.add_argument("--progress-fd", type=int, metavar="FD", help=PROGRESS_HELP)

    sp = add("fda-assemble", cmd_fda_assemble, "assemble adapted blocks into the merged encoder")
    fda_args(sp)
    sp.add_argument("--init", required=True, choices=INITS)
    sp.add_argument("--init-model")
    sp.add_argument("--blocks-dir", required=True)
    sp.add_argument("--assemble", required=True, metavar="OUT")
