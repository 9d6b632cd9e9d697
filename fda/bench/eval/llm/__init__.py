"""LLM evaluation of merged Llama models: GSM8K, MATH, HumanEval, MBPP (+ AlpacaEval files).

    from fda.bench.eval.llm import evaluate_llm
    rows = evaluate_llm("merged/", ["gsm8k", "mbpp"], limit=100)
    # [{"task": "gsm8k", "metric": "accuracy", "value": 0.41, "n": 100}, ...]

Modules: ``prompts`` (Alpaca template), ``gsm8k`` / ``math_eval`` (answer extraction and
scoring), ``code_tasks`` + ``sandbox`` (code post-processing and locked-down execution),
``generation`` (HF batched greedy, vLLM optional), ``data`` (hub or local files), ``evaluate``.
"""

from fda.bench.eval.llm.evaluate import (
    BENCHMARKS,
    DISPLAY_NAMES,
    MAX_NEW_TOKENS,
    TASK_BENCHMARKS,
    build_prompt,
    evaluate_llm,
    score,
    write_rows,
)

__all__ = ["BENCHMARKS", "DISPLAY_NAMES", "MAX_NEW_TOKENS", "TASK_BENCHMARKS", "build_prompt", "evaluate_llm", "score", "write_rows"]
