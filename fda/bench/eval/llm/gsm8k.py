"""GSM8K scoring: the gold number after ``####``, the predicted number from the completion.

Prediction: if the completion states the answer ("The answer is: 18", WizardMath's convention, or
"answer is 18"), the first number after the last such marker; otherwise the last number anywhere.
Numbers may carry thousands separators, a sign, decimals, or be a simple fraction ``a/b``;
``$``, ``%`` and trailing periods are ignored. Comparison is numeric (|pred − gold| < 1e-4).
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d[\d,]*(?:\.\d+)?)?|-?\.\d+")
_MARKER = re.compile(r"answer is\s*:?|####", re.IGNORECASE)


def parse_number(text: str) -> float | None:
    """A float from ``"1,234.5"``, ``"-3"``, ``"3/4"``, ``".5"``; ``None`` if it does not parse."""
    s = text.replace(",", "").strip().rstrip(".")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def gold_answer(answer_field: str) -> float:
    """The gold number of a GSM8K ``answer`` field (text after ``####``)."""
    if "####" not in answer_field:
        raise ValueError(f"GSM8K answer without '####': {answer_field[-80:]!r}")
    value = parse_number(answer_field.split("####")[-1])
    if value is None:
        raise ValueError(f"GSM8K gold answer is not a number: {answer_field.split('####')[-1]!r}")
    return value


def extract_prediction(completion: str) -> float | None:
    """The predicted number (see module docstring), or ``None`` when the completion has none."""
    markers = list(_MARKER.finditer(completion))
    if markers:
        found = _NUMBER.search(completion[markers[-1].end():])
        if found:
            return parse_number(found.group(0))
    numbers = _NUMBER.findall(completion)
    for candidate in reversed(numbers):
        value = parse_number(candidate)
        if value is not None:
            return value
    return None


def is_correct(completion: str, answer_field: str, tol: float = 1e-4) -> bool:
    """Whether the completion's number equals the gold answer."""
    pred = extract_prediction(completion)
    return pred is not None and abs(pred - gold_answer(answer_field)) < tol
