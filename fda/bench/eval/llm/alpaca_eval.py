"""AlpacaEval (optional, off by default): write generations in the ``alpaca_eval`` format.

Judging needs an external LLM judge (an API key), so the harness only produces the file::

    alpaca_eval --model_outputs outputs.json --annotators_config weighted_alpaca_eval_gpt4_turbo

Each entry is ``{"instruction", "output", "generator", "dataset"}`` as ``alpaca_eval`` expects.
Instructions come from a local copy of ``tatsu-lab/alpaca_eval`` (``alpaca_eval.json``, the file
the FDA repo vendors) passed as ``data_path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fda.io.checkpoints import write_json_atomic
from fda.bench.eval.llm.data import load_local
from fda.bench.eval.llm.prompts import alpaca_prompt


def write_alpaca_eval_outputs(data_path: str | os.PathLike, out_path: str | os.PathLike, *, generator: str,
                              generate_fn: Callable[[list[str], int], list[str]], max_new_tokens: int = 2048,
                              limit: int | None = None) -> Path:
    """Generate answers for AlpacaEval instructions and write ``alpaca_eval``'s JSON (atomic)."""
    rows = load_local(data_path)[:limit]
    completions = generate_fn([alpaca_prompt(r["instruction"]) for r in rows], max_new_tokens)
    out = [{"instruction": r["instruction"], "output": c.strip(), "generator": generator, "dataset": r.get("dataset", "")}
           for r, c in zip(rows, completions)]
    return write_json_atomic(out, out_path)
