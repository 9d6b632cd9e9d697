"""Alpaca-style prompts of the FDA / DARE (MergeLM) LLM evaluation.

Every benchmark wraps its instruction in the same template; math benchmarks append
"Let's think step by step." after ``### Response:`` (as WizardMath and MergeLM do), and the code
benchmarks phrase the instruction as MergeLM does.
"""

from __future__ import annotations

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
MATH_SUFFIX = " Let's think step by step."


def alpaca_prompt(instruction: str, *, math: bool = False) -> str:
    """The Alpaca prompt for ``instruction``; ``math=True`` appends "Let's think step by step."."""
    return ALPACA_TEMPLATE.format(instruction=instruction) + (MATH_SUFFIX if math else "")


def humaneval_instruction(prompt: str) -> str:
    """HumanEval: the function signature + docstring, asked as a script to complete."""
    return f"Create a Python script for this problem:\n{prompt}"


def mbpp_instruction(text: str, tests: list[str]) -> str:
    """MBPP: the task text plus its assert tests (so the model knows the function name)."""
    return f"{text} Your code should pass these tests:\n" + "\n".join(tests)
