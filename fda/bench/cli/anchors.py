"""``fda-bench import-anchors``: the FDA authors' released anchors (the official scripts' ``.npy``
files) as this project's anchor files, which ``fda-adapt`` / ``llm-adapt`` read like constructed
ones. No model is loaded; finished files whose source is unchanged are kept."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fda.bench.cli.common import AddCommand, UsageError, log


def _task_pairs(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """``TASK`` or ``TASK=FOLDER`` -> (tasks in order, the folders named explicitly)."""
    tasks: list[str] = []
    folders: dict[str, str] = {}
    for item in items:
        task, _, folder = item.partition("=")
        if not task or task in tasks:
            raise UsageError(f"--task {item!r}: give each task once, as TASK or TASK=FOLDER")
        tasks.append(task)
        if folder:
            folders[task] = folder
    return tasks, folders


def cmd_import_anchors(args: argparse.Namespace) -> int:
    from fda.bench.cli.common import inputs_key
    from fda.bench.official_anchors import (
        anchor_path,
        import_release,
        locate,
        resolve_release,
    )
    from fda.io.checkpoints import read_metadata, write_json_atomic

    tasks, folders = _task_pairs(args.task)
    if args.n_blocks < 1:
        raise UsageError(f"--n-blocks {args.n_blocks}: need at least one block")
    root = resolve_release(args.src)
    release = locate(root, args.family, args.anchor_init, tasks, args.n_blocks, run=args.run, task_dirs=folders)
    log(f"importing {args.anchor_init} anchors of run {release.run!r} ({release.kind} layout) from {root}: "
        f"{args.n_blocks} blocks x {len(tasks)} tasks")
    origin = args.origin or str(args.src)
    extra = {"suite": args.suite} if args.suite else {}
    keys = {bt: inputs_key([src], {"origin": origin, "extra": extra, "run": release.run})
            for bt, src in release.files.items()}

    def done(bt: tuple[int, str]) -> bool:
        p = anchor_path(args.out_dir, *bt)
        return p.is_file() and read_metadata(p).get("cache_key") == json.dumps(keys[bt])

    skip = {bt: done(bt) for bt in release.files}
    if any(skip.values()):
        log(f"{sum(skip.values())} of {len(skip)} files already imported from the same source")
    import_release(release, args.out_dir, origin=origin, extra=extra, skip_if=skip, log=log,
                   per_file={bt: {"cache_key": key} for bt, key in keys.items()})
    write_json_atomic({"origin": origin, "root": str(root), "run": release.run, "kind": release.kind,
                       "anchor_init": args.anchor_init, "settings": release.settings, "task_dirs": release.task_dirs,
                       "files": {f"block{b}/{t}": str(p) for (b, t), p in sorted(release.files.items())}},
                      Path(args.out_dir) / "official.json")
    return 0


def register(add: AddCommand) -> None:
    """Register import-anchors (see :func:`fda.bench.cli.build_parser`)."""
    from fda.bench.official_anchors import (  # names only: no torch
        OFFICIAL_KINDS,
        RUN_PREFIXES,
    )

    sp = add("import-anchors", cmd_import_anchors,
             "convert the FDA authors' released anchors (.npy) into this project's anchor files")
    sp.add_argument("--src", required=True,
                    help="the release folder of one model: a local path or a hub dataset hf:owner/name/subfolder[@rev] "
                         "(e.g. hf:SphereLab/FDA_for_Vision/ViT-B-32); it holds the run folders "
                         "(init_by_gauss_random-anchor-64-scale-0.01-opt-1200-0.01, ...) or is one")
    sp.add_argument("--family", required=True, choices=list(OFFICIAL_KINDS),
                    help="model family: which official layout the files have (vision [T,n,d], NLU dict, NLG [n,d])")
    sp.add_argument("--anchor-init", required=True, choices=list(RUN_PREFIXES))
    sp.add_argument("--task", action="append", required=True, metavar="TASK[=FOLDER]",
                    help="a task, in order; its folder is matched without case and punctuation (SST-2 -> sst2) "
                         "unless given")
    sp.add_argument("--n-blocks", type=int, required=True, help="import blocks 0..N-1 (official layers 1..N)")
    sp.add_argument("--run", help="the run folder, when the release holds several for this anchor init")
    sp.add_argument("--suite", help="recorded in the files' metadata")
    sp.add_argument("--origin", help="recorded as the files' origin (default: --src)")
    sp.add_argument("--out-dir", required=True, help="writes OUT_DIR/block{b}/{task}.safetensors and OUT_DIR/official.json")
