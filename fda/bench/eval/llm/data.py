"""Benchmark data: hub datasets (offline-aware) or local jsonl / json / parquet files.

Hub sources (the usual public copies; the FDA repo vendors the same test sets as jsonl):

==========  =====================================  ===========  =====
benchmark   dataset id                             config       split
==========  =====================================  ===========  =====
gsm8k       ``openai/gsm8k``                       ``main``     test (1319)
math        ``EleutherAI/hendrycks_math``          7 subjects   test (5000)
humaneval   ``openai/openai_humaneval``            –            test (164)
mbpp        ``google-research-datasets/mbpp``      ``full``     test (500)
==========  =====================================  ===========  =====

(``hendrycks/competition_math`` was taken down; EleutherAI's copy has the same 5000 test problems
split into subject configs.) Offline (``HF_DATASETS_OFFLINE=1``) a dataset that is not cached fails
at once with :class:`LLMEvalDataError`, which says what to download or how to pass ``data_path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra", "precalculus")
HUB = {
    "gsm8k": ("openai/gsm8k", ("main",), "test"),
    "math": ("EleutherAI/hendrycks_math", MATH_SUBJECTS, "test"),
    "humaneval": ("openai/openai_humaneval", (None,), "test"),
    "mbpp": ("google-research-datasets/mbpp", ("full",), "test"),
}
#: fields each benchmark needs (after the light renames in :func:`_normalise`)
REQUIRED = {"gsm8k": ("question", "answer"), "math": ("problem",), "humaneval": ("prompt", "test", "entry_point"), "mbpp": ("text", "test_list")}


class LLMEvalDataError(RuntimeError):
    """A benchmark's data is missing or malformed (the message names the file or dataset and the fix)."""


def load_local(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``.jsonl``, ``.json`` (a list) or ``.parquet`` file."""
    p = Path(path)
    if not p.is_file():
        raise LLMEvalDataError(f"data file not found: {p}")
    if p.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise LLMEvalDataError(f"{p}:{n}: not valid JSON ({err})") from err
        return rows
    if p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise LLMEvalDataError(f"{p}: expected a JSON list of objects")
        return data
    if p.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(p).to_dict(orient="records")
    raise LLMEvalDataError(f"{p}: unsupported data format '{p.suffix}' (use .jsonl, .json or .parquet)")


def load_hub(benchmark: str) -> list[dict]:
    """The benchmark's test split from the hub cache (fails fast offline, naming what to fetch)."""
    import datasets

    repo, configs, split = HUB[benchmark]
    rows: list[dict] = []
    for cfg in configs:
        try:
            ds = datasets.load_dataset(repo, cfg, split=split) if cfg else datasets.load_dataset(repo, split=split)
        except Exception as err:  # noqa: BLE001 - datasets raises ConnectionError, FileNotFoundError, ...
            cfg_arg = f", '{cfg}'" if cfg else ""
            raise LLMEvalDataError(
                f"{benchmark}: cannot load dataset '{repo}'{f' config {cfg!r}' if cfg else ''} split '{split}' "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Offline, download it first on a "
                f"connected machine (`python -c \"import datasets; datasets.load_dataset('{repo}'{cfg_arg}, split='{split}')"
                f".to_json('{benchmark}.jsonl')\"`) and pass data_path={{'{benchmark}': '{benchmark}.jsonl'}}, or populate the "
                f"HF datasets cache (`huggingface-cli download --repo-type dataset {repo}`)."
            ) from err
        rows += [dict(r) for r in ds]
    return rows


def _normalise(benchmark: str, rows: list[dict], source: str) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        r = dict(r)
        if benchmark == "gsm8k" and "question" not in r and "query" in r:
            r["question"] = r["query"]
        if benchmark == "math" and "problem" not in r and "instruction" in r:
            r["problem"] = r["instruction"]
        if benchmark == "mbpp":
            r.setdefault("text", r.get("prompt", ""))
            if isinstance(r.get("test_list"), str):
                r["test_list"] = json.loads(r["test_list"])
            r["test_list"] = list(r.get("test_list") or [])
        missing = [f for f in REQUIRED[benchmark] if f not in r]
        if missing:
            raise LLMEvalDataError(f"{source}, row {i}: {benchmark} rows need fields {list(REQUIRED[benchmark])}; missing {missing}")
        out.append(r)
    return out


def load_benchmark(benchmark: str, *, data_path: str | os.PathLike | None = None, limit: int | None = None) -> list[dict]:
    """Rows of ``benchmark``'s test set, from ``data_path`` if given, else the hub (first ``limit`` rows)."""
    if benchmark not in HUB:
        raise LLMEvalDataError(f"unknown benchmark {benchmark!r}; valid: {', '.join(HUB)}")
    rows = load_local(data_path) if data_path else load_hub(benchmark)
    if limit is not None:
        rows = rows[:limit]
    return _normalise(benchmark, rows, str(data_path or HUB[benchmark][0]))
