"""The ``llama13b`` suite: Llama-2-13B with a math and a code expert (the paper's NLG setting).

Unlike the other suites it never holds a model in memory. Base and experts are sharded HF
directories linked (not copied) into the workflow's work directory; merges stream them block by
block (:mod:`fda.io.streaming`, ``fda-bench stream-merge``); FDA runs one job per decoder layer
(:mod:`fda.streamed`); evaluation generates with a model *directory* (:mod:`fda.bench.eval.llm`).

Tasks are the experts (``math``, ``code``). Result rows are the benchmarks that score them
(``math``: GSM8K, MATH; ``code``: HumanEval, MBPP, see ``settings.benchmarks``) under their
display names, so ``individual`` is each expert on its own task's benchmarks and the pretrained and
merged models are scored on all of them.

Data (``prepare_data``): one ``{benchmark}.jsonl`` per benchmark, from ``settings.data_path`` (local
files, for offline machines) or the hub (:func:`fda.bench.eval.llm.data.load_hub`, which fails fast
offline naming the dataset and the export command).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from fda.bench.suites.base import Row, StateDict, Suite, no_expert_seeds

DEFAULT_BASE = "hf:meta-llama/Llama-2-13b-hf"
#: the experts of the FDA paper's NLG experiments (config/paper.yaml names the same)
DEFAULT_EXPERTS = {"math": "hf:vanillaOVO/WizardMath-13B-V1.0", "code": "hf:layoric/llama-2-13b-code-alpaca"}
#: weight files a linked directory leaves out when it has safetensors (pickles are never read)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

#: shard cap of a converted ``.bin`` checkpoint (save_pretrained's default): fixed, so that no
#: merge setting is an input of the fetch jobs, whose outputs everything downstream depends on
CONVERT_SHARD_SIZE = "5GB"

#: settings each kind of job reads. The workflow passes every job only its keys, so editing an
#: evaluation or merge setting never refetches a 13B model (and so never reruns everything).
JOB_SETTINGS = {
    "data": ("preset", "tasks", "benchmarks", "data_path"),
    "fetch": ("preset", "tasks", "base", "experts"),
    "eval": ("preset", "tasks", "benchmarks", "limit", "max_new_tokens", "batch_size", "backend"),
}


def _h(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class LlamaSettings:
    """Settings of ``llama13b``. Sources: hub ids (``hf:owner/name``) or local HF directories."""

    base: str = _h("base model source", default=DEFAULT_BASE)
    experts: dict[str, str] = _h("per-task expert source {task: source}", default_factory=lambda: dict(DEFAULT_EXPERTS))
    tasks: list[str] | None = _h("tasks (experts) in table order: math, code (the default)", default=None)
    benchmarks: dict[str, list[str]] = _h("per task, the benchmarks scoring it, over the default "
                                          "(math: gsm8k, math; code: humaneval, mbpp)", default_factory=dict)
    data_path: dict[str, str] = _h("{benchmark: local .jsonl/.json/.parquet} (relative to the working directory); "
                                   "the others come from the hub", default_factory=dict)
    limit: int | None = _h("evaluate on the first N examples of each benchmark", default=None)
    max_new_tokens: dict[str, int] = _h("per-benchmark generation budget (default GSM8K 1024, others 2048)", default_factory=dict)
    batch_size: int = _h("generation batch size (backend hf)", default=8)
    backend: Literal["hf", "vllm"] = _h("generation backend (vllm: GPU, optional)", default="hf")
    shard_size: str = _h("shard cap of merged and FDA checkpoints", default="2GB")
    # WizardMath-13B adds a pad token (32001 rows): merges use the base's first 32000 rows
    vocab_mismatch: Literal["error", "truncate"] = _h("experts with a larger vocabulary than the base: merge the "
                                                      "base's rows (truncate) or refuse (error)", default="truncate")

    def __post_init__(self) -> None:
        problems = _benchmark_problems(self) + _task_problems(self) + _number_problems(self)
        if problems:
            raise ValueError(f"suite 'llama13b': {'; '.join(problems)}")

    @classmethod
    def smoke(cls, **overrides: Any) -> LlamaSettings:
        """A quick look: 8 examples per benchmark, 256 new tokens."""
        from fda.bench.eval.llm.evaluate import BENCHMARKS

        return cls(**{"limit": 8, "max_new_tokens": {b: 256 for b in BENCHMARKS}, **overrides})


def _benchmark_problems(cfg: LlamaSettings) -> list[str]:
    """Benchmark names in ``benchmarks``, ``data_path`` and ``max_new_tokens``."""
    from fda.bench.eval.llm.evaluate import BENCHMARKS

    valid = f"(valid: {', '.join(BENCHMARKS)})"
    out = []
    for task, names in cfg.benchmarks.items():
        bad = sorted(set(names) - set(BENCHMARKS))
        if bad or not names:
            out.append(f"benchmarks.{task}: {f'unknown benchmark(s) {bad}' if bad else 'empty list'} {valid}")
    for key in ("data_path", "max_new_tokens"):
        bad = sorted(set(getattr(cfg, key)) - set(BENCHMARKS))
        if bad:
            out.append(f"{key}: unknown benchmark(s) {bad} {valid}")
    return out


def _task_problems(cfg: LlamaSettings) -> list[str]:
    """Task names in ``tasks``, ``experts`` and ``benchmarks``: the suite's two experts."""
    from fda.bench.eval.llm.evaluate import TASK_BENCHMARKS

    unknown = sorted((set(cfg.tasks or ()) | set(cfg.experts) | set(cfg.benchmarks)) - set(TASK_BENCHMARKS))
    return [f"unknown task(s) {unknown} (tasks: {', '.join(TASK_BENCHMARKS)})"] if unknown else []


def _number_problems(cfg: LlamaSettings) -> list[str]:
    """Counts are positive; ``shard_size`` parses."""
    from fda.io.sharded_writer import parse_size

    out = []
    if (cfg.limit is not None and cfg.limit < 1) or cfg.batch_size < 1 or min(cfg.max_new_tokens.values(), default=1) < 1:
        out.append("limit, batch_size and max_new_tokens must be positive")
    try:
        parse_size(cfg.shard_size)
    except ValueError as err:
        out.append(f"shard_size: {err}")
    return out


def job_settings(settings: dict[str, Any], stage: str) -> dict[str, Any]:
    """The keys of ``settings`` a ``stage`` job reads (``data``, ``fetch``, ``eval``; JOB_SETTINGS)."""
    if stage not in JOB_SETTINGS:
        raise ValueError(f"unknown llama13b job stage {stage!r}; valid: {', '.join(JOB_SETTINGS)}")
    return {k: v for k, v in settings.items() if k in JOB_SETTINGS[stage]}


class LlamaSuite(Suite):
    """Llama-2-13B (any ``LlamaForCausalLM``): math + code experts scored by generation."""

    name = "llama13b"
    family = "llama"
    no_validation = "the streaming LLM rules have no selection path, and its benchmarks are scored whole (docs/llm.md)"
    #: Llama's q/k/v are separate Linear layers: merges run in the checkpoint's own layout
    qkv_layout = "split"

    def __init__(self, settings: dict[str, Any] | LlamaSettings | None = None):
        from fda.bench.settings import parse  # noqa: PLC0415

        cfg = settings if isinstance(settings, LlamaSettings) else parse(LlamaSettings, settings, suite=self.name)
        super().__init__(dataclasses.asdict(cfg))
        self.cfg = cfg

    # ------------------------------------------------------------------ names
    @property
    def tasks(self) -> list[str]:
        from fda.bench.eval.llm.evaluate import TASK_BENCHMARKS

        return list(self.cfg.tasks if self.cfg.tasks is not None else TASK_BENCHMARKS)

    def benchmarks(self, task: str) -> list[str]:
        """Benchmark ids that score ``task`` (``math`` -> ``["gsm8k", "math"]``)."""
        from fda.bench.eval.llm.evaluate import TASK_BENCHMARKS

        self._check_task(task)
        return list(self.cfg.benchmarks.get(task, TASK_BENCHMARKS[task]))

    @property
    def result_tasks(self) -> list[str]:
        """The task names of result rows and table columns: every task's benchmarks, display names."""
        from fda.bench.eval.llm.evaluate import DISPLAY_NAMES

        return [DISPLAY_NAMES[b] for t in self.tasks for b in self.benchmarks(t)]

    def expert_spec(self, task: str) -> str:
        self._check_task(task)
        if task not in self.cfg.experts:
            raise ValueError(f"suite '{self.name}': no expert source for task '{task}'; set experts.{task} in the config")
        return self.cfg.experts[task]

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"suite '{self.name}': unknown task '{task}'; tasks: {self.tasks}")

    # ------------------------------------------------------------------ data
    def prepare_data(self, out_dir: Path, seed: int) -> None:
        """Write ``out_dir/{benchmark}.jsonl`` (normalised rows of the whole test set) for every
        benchmark of the tasks, and ``source.json`` (where each came from, row counts). ``seed``
        is unused: the test sets are fixed."""
        from fda.io.atomic import write_json_atomic

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        benchmarks = dict.fromkeys(b for t in self.tasks for b in self.benchmarks(t))
        write_json_atomic({b: self._write_benchmark(b, out) for b in benchmarks}, out / "source.json")

    def _write_benchmark(self, benchmark: str, out: Path) -> dict[str, Any]:
        """``out/{benchmark}.jsonl`` from ``settings.data_path`` or the hub; returns its provenance."""
        from fda.io.atomic import atomic_path
        from fda.bench.eval.llm.data import HUB, LLMEvalDataError, load_benchmark

        local = self.cfg.data_path.get(benchmark)
        if local and not Path(local).is_file():
            raise LLMEvalDataError(f"settings.data_path.{benchmark}: {local} is not a file (relative paths start at the "
                                   f"working directory {Path.cwd()}); fix the path or drop the key to use the hub")
        rows = load_benchmark(benchmark, data_path=local)
        with atomic_path(out / f"{benchmark}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True, default=_plain) + "\n" for r in rows), encoding="utf-8")
        return {"source": str(Path(local).resolve()) if local else f"hf:{HUB[benchmark][0]}", "rows": len(rows)}

    # ------------------------------------------------------------------ base and experts
    def prepare_base(self, out_dir: Path, data_dir: Path, seed: int) -> None:
        """Link the base model's files into ``out_dir`` (``.bin``-only checkpoints: converted)."""
        fetch_checkpoint(self.cfg.base, Path(out_dir), shard_size=CONVERT_SHARD_SIZE)

    def prepare_expert(self, task: str, base_dir: Path, data_dir: Path, out_dir: Path, seed: int,
                       expert_seed: int = 0) -> None:
        """Link ``task``'s expert into ``out_dir``, then check its tensor headers against the base
        (every key, shape and dtype), so a wrong expert fails before any merge. A larger
        vocabulary passes here; the merges apply ``vocab_mismatch`` (not an input of this job).
        Linked experts have only expert seed 0."""
        no_expert_seeds(self.name, expert_seed, "its experts are linked checkpoints")
        from fda.io.stream_source import StreamSource, check_compatible

        fetch_checkpoint(self.expert_spec(task), Path(out_dir), shard_size=CONVERT_SHARD_SIZE)
        check_compatible(StreamSource(base_dir, "base"), [StreamSource(out_dir, task)], vocab_mismatch="truncate")

    # ------------------------------------------------------------------ model and evaluation
    def load_encoder(self, model_dir: Path) -> nn.Module:
        """The ``LlamaForCausalLM`` structure on the meta device (weights are streamed, never loaded)."""
        from fda.streamed import decoder_skeleton

        return decoder_skeleton(model_dir)

    def evaluate(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, expert_dir: Path,
                 *, limit: int | None = None, split: str = "test") -> list[Row]:
        """Not for this suite: a 13B state dict is never held in memory; use :meth:`evaluate_dir`."""
        raise NotImplementedError(f"suite '{self.name}' scores model directories: LlamaSuite.evaluate_dir "
                                  "(fda-bench llm-eval), not in-memory state dicts")

    def evaluate_dir(self, model_dir: str | os.PathLike, tasks: Sequence[str], data_dir: str | os.PathLike, *,
                     limit: int | None = None, generations_dir: str | os.PathLike | None = None) -> list[Row]:
        """Generate with ``model_dir`` on the benchmarks of ``tasks`` (data from ``prepare_data``'s
        ``data_dir``; the model is loaded once). Rows ``{"task": "GSM8K", "metric", "value", "n"}``
        in task and benchmark order. ``limit`` overrides ``settings.limit``."""
        from fda.bench.eval.llm.evaluate import DISPLAY_NAMES, evaluate_llm

        benchmarks = [b for t in tasks for b in self.benchmarks(t)]
        rows = evaluate_llm(model_dir, benchmarks, limit=limit if limit is not None else self.cfg.limit,
                            data_path={b: Path(data_dir) / f"{b}.jsonl" for b in benchmarks}, backend=self.cfg.backend,
                            max_new_tokens=self.cfg.max_new_tokens, batch_size=self.cfg.batch_size,
                            generations_dir=generations_dir)
        return [{**r, "task": DISPLAY_NAMES[r["task"]]} for r in rows]


def _plain(value: Any) -> Any:
    """JSON fallback for parquet rows (numpy arrays and scalars)."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


# --------------------------------------------------------------------------------------------
# Checkpoint directories: linked, or converted from .bin


def fetch_checkpoint(spec: str, out_dir: Path, *, shard_size: str) -> Path:
    """Make ``out_dir`` an HF model directory with sharded safetensors for source ``spec``
    (``hf:owner/name`` via the hub cache, failing fast offline; or a local directory).

    Safetensors checkpoints are linked file by file (hard links, symbolic where the file system
    refuses; 26 GB are never copied); ``.bin``-only ones are converted shard by shard
    (:func:`fda.io.streaming.convert_bin_to_safetensors`, ``weights_only`` loading). Returns ``out_dir``.
    """
    from fda.io.checkpoints import PICKLE_INDEX, PICKLE_WEIGHTS, SAFETENSORS_INDEX, SAFETENSORS_WEIGHTS
    from fda.bench.sources import SourceError, resolve_model_dir
    from fda.io.streaming import convert_bin_to_safetensors

    src = resolve_model_dir(spec)
    if not (src / "config.json").is_file():
        raise SourceError(f"{src} (source '{spec}'): not an HF model directory (no config.json); "
                          "llama13b sources are hub ids or local LlamaForCausalLM directories")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (src / SAFETENSORS_INDEX).is_file() or (src / SAFETENSORS_WEIGHTS).is_file():
        link_files(src, out_dir)
    elif (src / PICKLE_INDEX).is_file() or (src / PICKLE_WEIGHTS).is_file():
        convert_bin_to_safetensors(src, out_dir, shard_size=shard_size)
    else:
        raise SourceError(f"{src} (source '{spec}'): no {SAFETENSORS_INDEX}, {SAFETENSORS_WEIGHTS}, "
                          f"{PICKLE_INDEX} or {PICKLE_WEIGHTS}")
    return out_dir


def link_files(src: Path, out_dir: Path) -> list[Path]:
    """Link every top-level file of ``src`` but pickled weights and hidden files into ``out_dir``.

    Hub snapshots are symlinks into the cache's blobs: the link points at the resolved blob, so
    it stays valid whatever happens to the snapshot folder.
    """
    from fda.io.checkpoints import PICKLE_INDEX

    linked = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name.startswith(".") or f.name.endswith(_PICKLE_SUFFIXES) or f.name == PICKLE_INDEX:
            continue
        dst = out_dir / f.name
        real = f.resolve()
        if dst.is_symlink() or dst.exists():  # left by a killed run: link afresh
            dst.unlink()
        try:
            os.link(real, dst)
        except OSError:  # another file system (or no hard links): a symbolic link
            os.symlink(real, dst)
        linked.append(dst)
    return linked
