"""HumanEval / MBPP: turn a completion into a runnable program and score pass@1 in the sandbox.

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

from fda.bench.eval.llm.sandbox import ExecResult, run_programs

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


def humaneval_program(example: dict, completion: str) -> str:
    """The program for one HumanEval problem: solution + the problem's ``check`` tests.

    If the completion defines ``entry_point`` itself, the prompt's imports are prepended;
    otherwise the completion is taken as the body that continues the prompt.
    """
    entry = example["entry_point"]
    raw = strip_fences(completion)
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", raw, re.MULTILINE):
        imports = "\n".join(line for line in example["prompt"].split("\n") if line.startswith(("import ", "from ")))
        solution = imports + "\n" + keep_definitions(raw)
    else:
        solution = example["prompt"] + raw
    return f"{solution}\n\n{example['test']}\n\ncheck({entry})\n"


def mbpp_program(example: dict, completion: str) -> str:
    """The program for one MBPP problem: solution + setup code + its ``assert`` tests."""
    tests = list(example.get("test_list") or [])
    if not tests:
        raise ValueError(f"MBPP example {example.get('task_id')!r} has no test_list")
    setup = example.get("test_setup_code") or ""
    return f"{extract_code(completion)}\n{setup}\n" + "\n".join(tests) + "\n"


def pass_at_1(programs: Sequence[str], **sandbox_kwargs: object) -> tuple[float, list[ExecResult]]:
    """Fraction of programs that pass (greedy decoding: one sample per problem = pass@1)."""
    results = run_programs(programs, **sandbox_kwargs)
    return (sum(r.passed for r in results) / len(results) if results else 0.0), results
