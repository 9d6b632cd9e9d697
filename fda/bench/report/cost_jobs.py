"""Which jobs the cost table counts and where their files are: the one place that knows the
benchmark and construction-log file names of the workflow's rules (workflow/rules/*.smk; a test
checks them against the rules). Plain Python, so the Snakefile imports it for the ``costs`` rule's
inputs and ``fda-bench costs`` enumerates the same files from a :class:`CostPlan` (hundreds of
paths never pass through one shell command line, whose length Linux caps at 128 KiB).

Benchmark files, below ``logs/benchmarks/{suite}/eseed{e}/`` (``e``: the expert seed; files
from before expert seeds, without that folder, read as expert seed 0)::

    merge/{baseline}.tsv                                     baseline merge
    fda/seed{s}/construct-{ai}.tsv                           construction, coarse (every block, expert)
    fda/seed{s}/construct-{ai}-block{b}-{task}.tsv           construction, fine (and LLM suites)
    fda/seed{s}/adapt-{init}-{ai}.tsv                        adaptation, coarse (every block, assembly)
    fda/seed{s}/adapt-{init}-{ai}-block{b}.tsv               adaptation, fine (and LLM suites)
    fda/seed{s}/assemble-{init}-{ai}.tsv                     assembly, fine (counted as adaptation)
    evaluate/{method}.tsv, evaluate/fda-seed{s}-{init}-{ai}.tsv   evaluation (reported apart)

Each job's log is the same path under ``logs/{suite}/`` with ``.log`` (:func:`log_of`).
Construction logs: ``work/{suite}/eseed{e}/fda/seed{s}/anchors/{ai}/block{b}/{task}.json``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

#: how the construction and adaptation jobs are cut: per (block, expert) / block, one per
#: (seed, anchor init) / (seed, init, anchor init), or no construction job (imported anchors)
GRANULARITIES = ("fine", "coarse", "none")

_NAME = r"[A-Za-z0-9][A-Za-z0-9.+]*"  # a method, init or anchor init: no '-' or '_'
_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("merge", re.compile(rf"merge/(?P<method>{_NAME})\.tsv")),
    ("construct", re.compile(rf"fda/seed(?P<seed>\d+)/construct-(?P<anchor_init>{_NAME})(?:-block(?P<block>\d+)-(?P<task>.+))?\.tsv")),
    ("adapt", re.compile(rf"fda/seed(?P<seed>\d+)/adapt-(?P<init>{_NAME})-(?P<anchor_init>{_NAME})(?:-block(?P<block>\d+))?\.tsv")),
    ("adapt", re.compile(rf"fda/seed(?P<seed>\d+)/assemble-(?P<init>{_NAME})-(?P<anchor_init>{_NAME})\.tsv")),
    ("evaluate", re.compile(rf"evaluate/fda-seed(?P<seed>\d+)-(?P<init>{_NAME})-(?P<anchor_init>{_NAME})\.tsv")),
    ("evaluate", re.compile(rf"evaluate/(?P<method>{_NAME})\.tsv")),
]
_BENCH_ROOT = re.compile(r"(?:^|/)benchmarks/(?P<suite>[^/]+)/(?:eseed(?P<expert_seed>\d+)/)?(?P<rest>.+)$")


@dataclass(frozen=True)
class CostPlan:
    """What one suite's cost table counts, for each of its ``expert_seeds``: the ``baselines``
    (their merges), the evaluated ``methods`` (every configured row, for the evaluation column)
    and, for FDA, the ``seeds``, ``inits``, ``anchor_inits``, ``blocks`` (their number), ``tasks``
    (the experts), and how the ``construct`` and ``adapt`` jobs are cut (:data:`GRANULARITIES`)."""

    baselines: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    expert_seeds: tuple[int, ...] = (0,)
    inits: tuple[str, ...] = ()
    anchor_inits: tuple[str, ...] = ()
    blocks: int = 0
    tasks: tuple[str, ...] = ()
    construct: str = "coarse"
    adapt: str = "coarse"

    def __post_init__(self) -> None:
        if self.construct not in GRANULARITIES or self.adapt not in GRANULARITIES[:2]:
            raise ValueError(f"construct must be one of {GRANULARITIES} and adapt one of {GRANULARITIES[:2]}, "
                             f"got {self.construct!r}, {self.adapt!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CostPlan:
        d = json.loads(text)
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tuples})


def benchmark_files(plan: CostPlan) -> list[str]:
    """The counted jobs' benchmark files, relative to ``logs/benchmarks/{suite}/``: every expert
    seed's (:func:`expert_seed_files`, under ``eseed{e}/``)."""
    return [f"eseed{e}/{p}" for e in plan.expert_seeds for p in expert_seed_files(plan)]


def expert_seed_files(plan: CostPlan) -> list[str]:
    """The counted jobs' benchmark files of one expert seed, relative to ``logs/benchmarks/{suite}/eseed{e}/``."""
    out = [f"merge/{m}.tsv" for m in plan.baselines] + [f"evaluate/{m}.tsv" for m in plan.methods]
    for seed in plan.seeds:
        for ai in plan.anchor_inits:
            d = f"fda/seed{seed}"
            if plan.construct == "fine":
                out += [f"{d}/construct-{ai}-block{b}-{t}.tsv" for b in range(plan.blocks) for t in plan.tasks]
            elif plan.construct == "coarse":
                out.append(f"{d}/construct-{ai}.tsv")
            for init in plan.inits:
                if plan.adapt == "fine":
                    out += [f"{d}/adapt-{init}-{ai}-block{b}.tsv" for b in range(plan.blocks)] + [f"{d}/assemble-{init}-{ai}.tsv"]
                else:
                    out.append(f"{d}/adapt-{init}-{ai}.tsv")
                out.append(f"evaluate/fda-seed{seed}-{init}-{ai}.tsv")
    return out


def anchor_log_files(plan: CostPlan) -> list[str]:
    """The construction logs (FLOPs), relative to ``work/{suite}/``; none for imported anchors."""
    if plan.construct == "none":
        return []
    return [f"eseed{e}/fda/seed{s}/anchors/{ai}/block{b}/{t}.json" for e in plan.expert_seeds for s in plan.seeds
            for ai in plan.anchor_inits for b in range(plan.blocks) for t in plan.tasks]


_ANCHOR_LOG_SEED = re.compile(r"(?:^|/)eseed(?P<expert_seed>\d+)/fda/")


def anchor_log_expert_seed(path: str | os.PathLike) -> int:
    """The expert seed of a construction log, from its path (``.../eseed{e}/fda/...``; 0 without)."""
    m = _ANCHOR_LOG_SEED.search(Path(path).as_posix())
    return int(m["expert_seed"]) if m else 0


@dataclass(frozen=True)
class JobRef:
    """Which job a benchmark file belongs to. ``stage``: merge, construct, adapt (assembly
    included) or evaluate; ``method``: the baseline or reference row, or ``fda``; ``expert_seed``:
    the experts it ran on; FDA jobs also name their ``init`` (adaptation, evaluation),
    ``anchor_init``, ``seed`` and, per block or expert, ``block`` and ``task``."""

    suite: str
    stage: str
    method: str
    init: str = ""
    anchor_init: str = ""
    seed: int | None = None
    expert_seed: int = 0
    block: int | None = None
    task: str = ""


def parse_benchmark_path(path: str | os.PathLike) -> JobRef | None:
    """The job of a benchmark file ``.../benchmarks/{suite}/...tsv``; None for jobs that no method
    row counts (data, experts, cells, tables, figures)."""
    m = _BENCH_ROOT.search(Path(path).as_posix())
    if not m:
        return None
    for stage, pattern in _PATTERNS:
        g = pattern.fullmatch(m["rest"])
        if g:
            d = g.groupdict()
            return JobRef(suite=m["suite"], stage=stage, method=d.get("method") or "fda", init=d.get("init") or "",
                          anchor_init=d.get("anchor_init") or "", seed=_int(d.get("seed")), block=_int(d.get("block")),
                          task=d.get("task") or "", expert_seed=_int(m["expert_seed"]) or 0)
    return None


def _int(v: str | None) -> int | None:
    return None if v is None else int(v)


def log_of(benchmark: str | os.PathLike) -> Path:
    """The job's log beside its benchmark file: ``logs/benchmarks/{suite}/X.tsv`` -> ``logs/{suite}/X.log``."""
    parts = list(Path(benchmark).parts)
    if "benchmarks" not in parts:
        raise ValueError(f"{benchmark}: not under a benchmarks/ directory")
    i = len(parts) - 1 - parts[::-1].index("benchmarks")
    return Path(*parts[:i], *parts[i + 1 :]).with_suffix(".log")
