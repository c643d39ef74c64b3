"""Math answer equivalence: the completion's final answer against the reference, numerically and with sympy.

`\\frac{1}{2}`, `0.5`, `1/2` and `2/4` are the same answer; so are `x^2+2x+1` and `(x+1)^2`. Only short answers
made of digits, letters, operators and brackets reach sympy (its parser evaluates Python), and a failed parse is
simply not a match.
"""

from __future__ import annotations

import re
from fractions import Fraction

from llmforge.rewards.answers import completion_text, final_answer

MAX_SYMBOLIC_CHARS = 120
SAFE_EXPRESSION = re.compile(r"^[0-9a-zA-Z+\-*/^().,\s]*$")
RELATIVE_TOLERANCE = 1e-6

_LATEX_REPLACEMENTS = [
    (r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$", ""),
    (r"\\[dt]frac", r"\\frac"),
    (r"\\text\{([^{}]*)\}|\\mathrm\{([^{}]*)\}", r"\1\2"),
    (r"\^\{?\\circ\}?|°", ""),
    (r"\\cdot|\\times", "*"),
    (r"\\pi", "pi"),
    (r"\\infty", "oo"),
]


def normalize(answer: str) -> str:
    text = answer.strip()
    for pattern, replacement in _LATEX_REPLACEMENTS:
        text = re.sub(pattern, replacement, text)
    text = text.strip().rstrip(".").strip()
    if "=" in text:  # "x = 3" answers 3
        text = text.rsplit("=", 1)[1].strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):  # 1,000,000
        text = text.replace(",", "")
    return text


def _latex_to_python(text: str) -> str:
    previous = None
    while previous != text:  # innermost first, so nested fractions and roots unfold
        previous = text
        text = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", text)
        text = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", text)
    return text.replace("{", "(").replace("}", ")").replace("\\", "")


def as_number(text: str) -> Fraction | float | None:
    cleaned = text.replace(" ", "")
    try:
        return Fraction(cleaned)  # integers, decimals and a/b exactly
    except (ValueError, ZeroDivisionError):
        pass
    try:
        return float(cleaned)
    except ValueError:
        return None


def as_sympy(text: str):
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    expression = _latex_to_python(text)
    if len(expression) > MAX_SYMBOLIC_CHARS or not SAFE_EXPRESSION.match(expression) or "__" in expression:
        return None
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    try:
        return parse_expr(expression, transformations=transformations, evaluate=True)
    except Exception:  # any parse failure just means "not this answer"
        return None


def equivalent(predicted: str, reference: str) -> bool:
    """Whether two final answers are the same value (numbers with a relative tolerance, expressions via sympy)."""
    a, b = normalize(predicted), normalize(reference)
    if not a or not b:
        return False
    if a == b:
        return True
    parts_a, parts_b = _split_top_level(a), _split_top_level(b)
    if len(parts_a) > 1 or len(parts_b) > 1:  # tuples and lists of answers, compared in order
        return len(parts_a) == len(parts_b) and all(
            equivalent(x, y) for x, y in zip(parts_a, parts_b, strict=True)
        )
    number_a, number_b = as_number(a), as_number(b)
    if number_a is not None and number_b is not None:
        return abs(float(number_a) - float(number_b)) <= RELATIVE_TOLERANCE * max(1.0, abs(float(number_b)))
    return _symbolically_equal(a, b)


def _symbolically_equal(a: str, b: str) -> bool:
    import sympy

    expr_a, expr_b = as_sympy(a), as_sympy(b)
    if expr_a is None or expr_b is None:
        return False
    try:
        difference = sympy.simplify(expr_a - expr_b)
        if difference == 0:
            return True
        value = complex(difference.evalf())
        return abs(value) <= RELATIVE_TOLERANCE * max(1.0, abs(complex(expr_b.evalf())))
    except Exception:  # expressions sympy cannot subtract or evaluate (sets, relations...) are not equal
        return False


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text.strip("()[]") if text[:1] in "([" and text[-1:] in ")]" else text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [p for p in parts if p]


def reference_answer(answer: str) -> str:
    """A reference may be a bare answer or a worked solution ending in `#### 42` or `\\boxed{42}`."""
    extracted = final_answer(str(answer))
    return extracted if extracted is not None else str(answer)


def math_reward(completions, answer, **_) -> list[float]:
    """1.0 when the completion's final answer (\\boxed{}, after ####, or in <answer> tags) equals `answer`."""
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        predicted = final_answer(completion_text(completion))
        rewards.append(float(predicted is not None and equivalent(predicted, reference_answer(reference))))
    return rewards
