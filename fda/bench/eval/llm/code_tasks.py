"""HumanEval / MBPP: turn a completion into a :class:`CodeTask` and score pass@1 in the sandbox.

A task keeps the model's code (``solution``, run in the candidate sandbox) apart from the
benchmark's tests (run in the judge sandbox); see :mod:`fda.bench.eval.llm.sandbox`.

Post-processing (:func:`extract_code`): take the first fenced code block if there is one
(```` ```python ... ``` ````), else the raw completion; then keep only top-level imports, functions,
classes and assignments (``ast``), dropping example calls, prints, asserts and ``__main__`` blocks
that would fail or pollute the run. If the code does not parse, it is cut at the first top-level
line that is not part of a definition.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from fda.bench.eval.llm.sandbox import CodeTask, ExecResult, run_tasks

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)


def strip_fences(completion: str) -> str:
    """The first fenced block's content, or the completion itself."""
    m = _FENCE.search(completion)
    return m.group(1) if m else completion


def keep_definitions(code: str) -> str:
    """Only the top-level definitions/imports/assignments of ``code`` (see module docstring)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        lines, out = code.split("\n"), []
        for line in lines:
            if line and not line[0].isspace() and not line.startswith(("def ", "class ", "import ", "from ", "@", "#", ")")) and out:
                break
            out.append(line)
        return "\n".join(out).rstrip() + "\n"
    lines = code.split("\n")
    kept = []
    for node in tree.body:
        if isinstance(node, _KEEP):
            start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno]) - 1
            kept.append("\n".join(lines[start : node.end_lineno]))
    return "\n".join(kept).rstrip() + "\n"


def extract_code(completion: str) -> str:
    """Runnable code from a model completion (fences stripped, definitions kept)."""
    return keep_definitions(strip_fences(completion))


def humaneval_task(example: dict, completion: str) -> CodeTask:
    """The task for one HumanEval problem: the solution, and ``check(entry_point)`` as the tests.

    If the completion defines ``entry_point`` itself, it follows the whole prompt (whose imports and
    helpers it may use; its definition replaces the prompt's stub); otherwise the completion is
    taken as the body that continues the prompt. The judge runs the prompt as trusted setup, so the
    tests' helpers (``encode_cyclic``, ``poly``) are the prompt's, whatever the completion redefines.
    """
    entry = example["entry_point"]
    raw = strip_fences(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", raw, re.MULTILINE):
        solution = example["prompt"] + "\n\n" + keep_definitions(raw)
    else:
        solution = example["prompt"] + raw
    return CodeTask(solution=solution, tests=f"{example['test']}\n\ncheck({entry})\n", setup=example["prompt"], entry_point=entry)


def mbpp_entry_point(example: dict) -> str | None:
    """The function an MBPP problem tests: the one its reference ``code`` defines and its asserts
    call, when there is exactly one (None without reference code). It is forwarded to the solution
    even when it shadows a builtin (MBPP 126 tests a ``sum``)."""
    try:
        defined = {n.name for n in ast.parse(example.get("code") or "").body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        called = {n.id for t in example.get("test_list") or [] for n in ast.walk(ast.parse(t)) if isinstance(n, ast.Name)}
    except SyntaxError:
        return None
    tested = defined & called
    return tested.pop() if len(tested) == 1 else None


def mbpp_task(example: dict, completion: str) -> CodeTask:
    """The task for one MBPP problem: the extracted solution, its ``assert`` lines and setup code."""
    tests = list(example.get("test_list") or [])
    if not tests:
        raise ValueError(f"MBPP example {example.get('task_id')!r} has no test_list")
    return CodeTask(solution=extract_code(completion), tests="\n".join(tests) + "\n", setup=example.get("test_setup_code") or "",
                    entry_point=mbpp_entry_point(example))


def pass_at_1(tasks: Sequence[CodeTask], **sandbox_kwargs: object) -> tuple[float, list[ExecResult]]:
    """Fraction of tasks that pass (greedy decoding: one sample per problem = pass@1)."""
    results = run_tasks(tasks, **sandbox_kwargs)
    return (sum(r.passed for r in results) / len(results) if results else 0.0), results
