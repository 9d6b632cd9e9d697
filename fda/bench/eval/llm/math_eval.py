"""MATH (Hendrycks et al.) scoring: ``\\boxed{...}`` extraction and LaTeX answer normalisation.

Prediction: the content of the **last** ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in the
completion, braces matched with nesting; if there is none, the text after the last
"The answer is" (WizardMath's convention). Gold: the last boxed expression of the ``solution``
(or an explicit ``answer`` field).

Normalisation (a documented subset of the usual Hendrycks ``strip_string``), applied to both sides:
line breaks and ``\\!`` removed; ``\\left``/``\\right``, ``\\displaystyle`` dropped; ``\\dfrac``/``\\tfrac``
→ ``\\frac``; degrees (``^\\circ``, ``^{\\circ}``, ``°``) and ``\\%``/``%``/``\\$``/``$`` removed; a trailing
``\\text{...}`` / ``\\mbox{...}`` unit removed, other ``\\text{x}`` → ``x``; a short ``x = `` prefix dropped;
trailing periods removed; leading-zero decimals (``.5`` → ``0.5``); ``\\frac12`` → ``\\frac{1}{2}``,
``\\sqrt2`` → ``\\sqrt{2}``; a plain ``a/b`` of integers → ``\\frac{a}{b}``; ``0.5`` → ``\\frac{1}{2}``;
all spaces removed. Two answers are equal if their normal forms are equal, or if both parse as
numbers (incl. ``\\frac{a}{b}``) that agree within 1e-6.
"""

from __future__ import annotations

import re


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces ok), or ``None``."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)", text)]
    for m in reversed(starts):
        rest = text[m.end():]
        if rest.startswith(" ") and not rest.lstrip().startswith("{"):  # "\boxed 5"
            return rest.strip().split("$")[0].split()[0] if rest.strip() else None
        i = len(rest) - len(rest.lstrip())
        if i >= len(rest) or rest[i] != "{":
            continue
        depth = 0
        for j in range(i, len(rest)):
            if rest[j] == "{":
                depth += 1
            elif rest[j] == "}":
                depth -= 1
                if depth == 0:
                    return rest[i + 1 : j]
        return None  # unbalanced: the generation was cut off
    return None


def extract_prediction(completion: str) -> str | None:
    """The predicted answer string (see module docstring)."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    m = list(re.finditer(r"answer is\s*:?", completion, re.IGNORECASE))
    if m:
        ans = completion[m[-1].end():].strip().split("\n")[0].strip()
        ans = ans.strip("$ ").rstrip(".")
        return ans or None
    return None


def gold_answer(example: dict) -> str:
    """The gold answer of a MATH example (``answer`` field, else the solution's last box)."""
    if example.get("answer"):
        return str(example["answer"])
    boxed = last_boxed(str(example.get("solution", "")))
    if boxed is None:
        raise ValueError(f"MATH example without a boxed answer in its solution: {str(example.get('solution', ''))[-80:]!r}")
    return boxed


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2}, \frac{1}2 -> \frac{1}{2}
    out, i = [], 0
    while i < len(s):
        if s.startswith("\\frac", i):
            out.append("\\frac")
            i += 5
            for _ in range(2):
                if i < len(s) and s[i] == "{":
                    depth, j = 0, i
                    while j < len(s):
                        depth += s[j] == "{"
                        depth -= s[j] == "}"
                        if depth == 0:
                            break
                        j += 1
                    out.append(s[i : j + 1])
                    i = j + 1
                elif i < len(s):
                    out.append("{" + s[i] + "}")
                    i += 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def normalize(answer: str) -> str:
    """The normal form of a LaTeX answer string (rules in the module docstring)."""
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = re.sub(r"\\(left|right|displaystyle)\b", "", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("°", "")
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(text|mbox|textbf|mathrm)\{\s*[a-zA-Z ]*\}\s*$", "", s).strip() or s  # trailing unit
    s = re.sub(r"\\(?:text|mbox|textbf|mathrm)\{([^{}]*)\}", r"\1", s)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    m = re.fullmatch(r"\s*[a-zA-Z]\w*\s*=\s*(.+)", s)
    if m and len(s.split("=")[0].strip()) <= 2:
        s = m.group(1)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    s = s.rstrip(".")
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


def _as_number(s: str) -> float | None:
    m = re.fullmatch(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", s)
    try:
        if m:
            v = float(m.group(2)) / float(m.group(3))
            return -v if m.group(1) else v
        return float(s.replace(",", "")) if re.fullmatch(r"-?[\d,]*\.?\d+", s) else None
    except (ValueError, ZeroDivisionError):
        return None


def is_equiv(pred: str | None, gold: str) -> bool:
    """Whether two answers agree after normalisation (or numerically, within 1e-6)."""
    if pred is None:
        return False
    a, b = normalize(pred), normalize(gold)
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and abs(x - y) < 1e-6


def is_correct(completion: str, example: dict) -> bool:
    """Whether the completion's final answer matches the example's gold answer."""
    return is_equiv(extract_prediction(completion), gold_answer(example))
