"""One entry point: a model directory × benchmarks → tidy rows ``{task, metric, value}``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fda.bench.eval.outcomes import Outcome
from fda.io.checkpoints import write_json_atomic
from fda.bench.eval.llm import code_tasks, gsm8k, math_eval, sandbox as code_sandbox
from fda.bench.eval.llm.data import load_benchmark
from fda.bench.eval.llm.generation import make_generator
from fda.bench.eval.llm.prompts import alpaca_prompt, humaneval_instruction, mbpp_instruction

BENCHMARKS = ("gsm8k", "math", "humaneval", "mbpp")
#: the official evaluation's generation budgets
MAX_NEW_TOKENS = {"gsm8k": 1024, "math": 2048, "humaneval": 2048, "mbpp": 2048}
METRIC = {"gsm8k": "accuracy", "math": "accuracy", "humaneval": "pass@1", "mbpp": "pass@1"}
#: the llama13b suite's tasks (one expert each) and the benchmarks that measure them
TASK_BENCHMARKS = {"math": ("gsm8k", "math"), "code": ("humaneval", "mbpp")}
#: names in result cells and table columns (as the paper prints them)
DISPLAY_NAMES = {"gsm8k": "GSM8K", "math": "MATH", "humaneval": "HumanEval", "mbpp": "MBPP"}


def build_prompt(benchmark: str, example: Mapping) -> str:
    """The Alpaca-style prompt for one example of ``benchmark``."""
    if benchmark == "gsm8k":
        return alpaca_prompt(example["question"], math=True)
    if benchmark == "math":
        return alpaca_prompt(example["problem"], math=True)
    if benchmark == "humaneval":
        return alpaca_prompt(humaneval_instruction(example["prompt"]))
    if benchmark == "mbpp":
        return alpaca_prompt(mbpp_instruction(example["text"], list(example["test_list"])))
    raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")


def score(benchmark: str, examples: Sequence[Mapping], completions: Sequence[str], **sandbox: object) -> tuple[float, list[bool]]:
    """(metric value, per-example correctness) for generated ``completions``."""
    if benchmark == "gsm8k":
        ok = [gsm8k.is_correct(c, e["answer"]) for e, c in zip(examples, completions)]
    elif benchmark == "math":
        ok = [math_eval.is_correct(c, dict(e)) for e, c in zip(examples, completions)]
    elif benchmark in ("humaneval", "mbpp"):
        make = code_tasks.humaneval_task if benchmark == "humaneval" else code_tasks.mbpp_task
        _, results = code_tasks.pass_at_1([make(dict(e), c) for e, c in zip(examples, completions)], **sandbox)
        ok = [r.passed for r in results]
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    return (sum(ok) / len(ok) if ok else 0.0), ok


def evaluate_llm(
    model_dir: str | os.PathLike,
    benchmarks: Sequence[str] = BENCHMARKS,
    *,
    limit: int | None = None,
    data_path: Mapping[str, str | os.PathLike] | None = None,
    backend: str = "hf",
    max_new_tokens: Mapping[str, int] | None = None,
    batch_size: int = 8,
    generations_dir: str | os.PathLike | None = None,
    sandbox: Mapping[str, object] | None = None,
    generate_fn: Callable[[list[str], int], list[str]] | None = None,
) -> list[dict]:
    """Evaluate a causal LM directory on ``benchmarks``; returns tidy rows.

    Rows: ``{"task": "gsm8k", "metric": "accuracy", "value": 0.41, "n": 1319, "outcome": Outcome}``
    (one per benchmark; ``outcome``: per-example pass 1/0, see :mod:`fda.bench.eval.outcomes`).
    ``limit``: first N examples; ``data_path``: ``{benchmark: local .jsonl/.json/.parquet}``;
    ``max_new_tokens``: per-benchmark override of :data:`MAX_NEW_TOKENS`; ``generations_dir``: write
    ``{benchmark}.jsonl`` with prompt, completion, correctness (atomic); ``sandbox``: keyword
    arguments for :func:`fda.bench.eval.llm.sandbox.run_task` (``timeout``, ``memory_mb``, ...,
    ``isolation="none"`` to run generated code unsandboxed, unsafe); ``generate_fn``:
    ``(prompts, max_new_tokens) -> completions`` replacing the built-in backends (tests, servers).
    A sandbox that cannot run here raises :class:`~fda.bench.eval.llm.sandbox.SandboxUnavailableError`
    before any generation.
    """
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; valid: {', '.join(BENCHMARKS)} (AlpacaEval: fda.bench.eval.llm.alpaca_eval)")
    budgets = {**MAX_NEW_TOKENS, **dict(max_new_tokens or {})}
    # load every dataset before the (slow) generation so a missing one fails at once
    data = {b: load_benchmark(b, data_path=(data_path or {}).get(b), limit=limit) for b in benchmarks}
    if any(b in ("humaneval", "mbpp") for b in benchmarks):
        code_sandbox.check_sandbox(**dict(sandbox or {}))  # no bwrap: fail now, not score 0 after generating
    gen = generate_fn or make_generator(model_dir, backend=backend, batch_size=batch_size)  # loads the model once
    rows = []
    for b in benchmarks:
        examples = data[b]
        prompts = [build_prompt(b, e) for e in examples]
        completions = gen(prompts, budgets[b])
        value, ok = score(b, examples, completions, **dict(sandbox or {}))
        if generations_dir is not None:
            path = Path(generations_dir) / f"{b}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            from fda.io.checkpoints import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps({"prompt": p, "completion": c, "correct": k}) + "\n" for p, c, k in zip(prompts, completions, ok)))
        passed = np.asarray(ok, dtype=np.int8)
        row = {"task": b, "metric": METRIC[b], "value": value, "n": len(examples)}
        if len(passed):
            row["outcome"] = Outcome(passed, np.ones_like(passed), METRIC[b])
        rows.append(row)
    return rows


def write_rows(rows: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Save rows as JSON (atomic), without their per-example ``outcome`` (see :mod:`fda.bench.eval.outcomes`)."""
    return write_json_atomic([{k: v for k, v in r.items() if k != "outcome"} for r in rows], path)
