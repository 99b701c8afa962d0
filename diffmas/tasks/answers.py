"""Answer extraction and comparison shared by tasks.

Model outputs are messy (``\\boxed{\\$1,000}``, ``18.0``, ``\\dfrac{3}{4}``, ``(B) water``), so every
comparison goes through a parsed form: exact rationals for numbers, ``math_verify`` for other LaTeX,
and option letters for multiple choice. Raw string equality is never used to decide correctness.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from decimal import Decimal, localcontext
from fractions import Fraction

REL_TOL = Fraction(1, 10**6)

# ------------------------------------------------------------------------ \boxed
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == '{'``, or None if it never closes."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
    return None


def boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5``, in order."""
    out = []
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            content = _braced(text, i)
            if content is not None:  # an unclosed box (truncated output) is not an answer
                out.append(content)
        else:
            token = re.match(r"[^\s$]+", text[i:])  # "\boxed 5": one token up to space or "$"
            if token:
                out.append(token.group(0))
    return out


def last_boxed(text: str) -> str | None:
    """The content of the last box; for nested boxes this is the innermost (it starts last)."""
    contents = [c for c in boxed_contents(text) if c.strip()]
    return contents[-1].strip() if contents else None


# ------------------------------------------------------------------------ numbers
_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
# "\\ " is a LaTeX row break (matrices, cases), not a thin space: the lookbehind keeps it whole.
_SPACING = re.compile(r"\\(?:left|right|displaystyle|quad|qquad)(?![A-Za-z])|(?<!\\)\\[!,;: ]")
_LATEX_THOUSANDS = re.compile(r"(\d)(?:\{,\}|\\,)(\d{3})(?!\d)")
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)"
_UNITS = r"(?:\s+[A-Za-z][\w .'/-]*|[A-Za-z]{2,}[\w .'/-]*)?"  # "18 apples", "5km"; not "2x"
_PLAIN_RE = re.compile(rf"([-+]?)\s*({_NUM}){_UNITS}")
_SLASH_RE = re.compile(rf"([-+]?)\s*({_NUM})\s*/\s*({_NUM}){_UNITS}")
_FRAC_RE = re.compile(rf"([-+]?)\s*\\frac\s*\{{\s*([-+]?)\s*({_NUM})\s*\}}\s*\{{\s*([-+]?)\s*({_NUM})\s*\}}")
_SHORT_FRAC_RE = re.compile(r"([-+]?)\s*\\frac\s*(\d)\s*(\d)")
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def clean_latex(s: str) -> str:
    """Drop presentation-only LaTeX (``\\text``, ``\\left``, ``$``, degrees, thin spaces)."""
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\u2212", "-")
    s = _LATEX_THOUSANDS.sub(r"\1\2", s)
    prev = None
    while prev != s:  # wrappers can nest: \text{\textbf{5}}
        prev, s = s, _WRAPPERS.sub(r" \1 ", s)
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)
    s = _SPACING.sub(" ", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    return " ".join(s.split())


def _signed(sign: str, value: Fraction) -> Fraction:
    return -value if sign == "-" else value


def _to_fraction(num: str) -> Fraction:
    return Fraction(num.replace(",", ""))


def parse_number(s: str | None) -> Fraction | None:
    """An exact number from an answer string, or None when it is not a plain number.

    Accepts thousands commas, ``$``, ``%``, trailing units or words, ``\\text{}``, decimals,
    negatives, ``a/b`` and ``\\frac{a}{b}``; anything else (``\\sqrt2``, tuples) is left to
    math_verify.
    """
    if s is None:
        return None
    s = clean_latex(s)
    if "=" in s:  # "x = 5": the value is on the right
        s = s.rsplit("=", 1)[1]
    s = s.replace("%", "").strip().strip("*").strip()
    s = s.rstrip(".,;:!").strip()
    if len(s) > 2 and (s[0], s[-1]) in (("(", ")"), ("{", "}")) and not (s[0] == "(" and "," in s):
        return parse_number(s[1:-1])  # "(1/2)", "{5}"; but "(1, 2)" is a tuple, not a number
    if m := _PLAIN_RE.fullmatch(s):
        return _signed(m.group(1), _to_fraction(m.group(2)))
    if (m := _SLASH_RE.fullmatch(s)) and _to_fraction(m.group(3)) != 0:
        return _signed(m.group(1), _to_fraction(m.group(2)) / _to_fraction(m.group(3)))
    if m := _FRAC_RE.fullmatch(s):
        num = _signed(m.group(2), _to_fraction(m.group(3)))
        den = _signed(m.group(4), _to_fraction(m.group(5)))
        return _signed(m.group(1), num / den) if den != 0 else None
    if m := _SHORT_FRAC_RE.fullmatch(s):
        den = int(m.group(3))
        return _signed(m.group(1), Fraction(int(m.group(2)), den)) if den else None
    return None


def format_number(value: Fraction) -> str:
    """Canonical text of a number: ``1000``, ``0.25``, ``-7/3`` (never ``18.0``)."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:  # not a terminating decimal: keep it exact
        return f"{value.numerator}/{value.denominator}"
    with localcontext() as ctx:
        ctx.prec = 50
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def numbers_close(a: Fraction, b: Fraction) -> bool:
    """Equal within a relative tolerance of 1e-6 (so 0.333333 matches 1/3 but 0 only matches 0)."""
    return a == b or abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def canonical_answer(s: str) -> str:
    """A number string when ``s`` is a number, else the cleaned LaTeX."""
    value = parse_number(s)
    return format_number(value) if value is not None else (clean_latex(s) or s.strip())


_ANSWER_PATTERNS = (
    re.compile(r"####\s*(.+)"),
    re.compile(r"(?i:\banswer\b)\s*(?i:is|:|=)\s*:?\s*(.+)"),
)


def _number_in(fragment: str) -> str | None:
    value = parse_number(fragment)
    if value is not None:
        return format_number(value)
    found = _NUMBER_IN_TEXT.search(clean_latex(fragment))
    return canonical_answer(found.group(0)) if found else None


def extract_math_answer(text: str | None) -> str | None:
    """Last ``\\boxed{}``; else "the answer is X" / ``#### X``; else the last number in the text."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return canonical_answer(boxed)
    for pattern in _ANSWER_PATTERNS:
        for m in reversed(list(pattern.finditer(text))):
            found = _number_in(m.group(1))
            if found is not None:
                return found
    numbers = _NUMBER_IN_TEXT.findall(clean_latex(text))
    return canonical_answer(numbers[-1]) if numbers else None


# ------------------------------------------------------------------------ symbolic
def _math_verify_equal(pred: str, gold: str) -> bool | None:
    """math_verify's verdict, or None when it is missing or could not parse either side."""
    try:
        import math_verify
    except ImportError:
        return None
    # math_verify's timeouts use SIGALRM, which only works in the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None

    def wrap(s: str) -> str:
        return s if ("$" in s or "\\boxed" in s) else f"${s}$"

    try:
        g = math_verify.parse(wrap(gold), parsing_timeout=timeout)
        p = math_verify.parse(wrap(pred), parsing_timeout=timeout)
        if not g or not p:
            return None
        return bool(math_verify.verify(g, p, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a grader crash must not crash evaluation
        return None


def _normalised_text(s: str) -> str:
    return re.sub(r"\s+", "", clean_latex(s)).lower().strip(".")


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Numeric comparison when both sides are numbers, else math_verify, else normalised text."""
    if pred is None or gold is None or not pred.strip() or not gold.strip():
        return False
    a, b = parse_number(pred), parse_number(gold)
    if a is not None and b is not None:
        return numbers_close(a, b)
    verdict = _math_verify_equal(pred, gold)
    if verdict is not None:
        return verdict
    return _normalised_text(pred) == _normalised_text(gold)


# ------------------------------------------------------------------------ multiple choice
LETTERS = "ABCDEFGHIJ"
# "answer is B", "Answer: (B)", "the correct option is B", "choice is: B"; not "Option B is wrong"
# (a chain of thought going through the options), hence "is" is required after option / choice.
_ANSWER_LETTER_RE = re.compile(
    r"(?i:\banswer\b\s*(?:is|:|=)?|\b(?:option|choice)\s+is)\s*(?i:option|choice)?\s*[:*\s]*\(?([A-Z])\)?"
    r"(?![A-Za-z0-9])"
)
_PAREN_LETTER_RE = re.compile(r"\(([A-Z])\)")


def _letter_of(fragment: str, valid: Sequence[str]) -> str | None:
    """``B``, ``(B)``, ``B) text``, ``B. text`` -> ``B``; a lone lowercase ``b`` counts too."""
    s = clean_latex(fragment).strip().strip("*").strip()
    m = re.match(r"\(?([A-Z])\)?(?=$|[\s).:,])", s)
    if m is None:
        m = re.fullmatch(r"\(?([a-z])\)?\.?", s)  # only alone: "a" in "a cat" is an article
    letter = m.group(1).upper() if m else None
    return letter if letter in valid else None


def _norm_option(s: str, fold_case: bool) -> str:
    s = " ".join(clean_latex(s).split()).strip(" .")
    return s.lower() if fold_case else s


def _letter_by_text(fragment: str, valid: Sequence[str], options: Sequence[str]) -> str | None:
    """The letter whose option text equals ``fragment``, case-insensitively when that is unique."""
    # Case matters only as a tie-break: genetics options like "Ww or WW" / "ww or WW" differ by it.
    for fold_case in (True, False):
        target = _norm_option(fragment, fold_case)
        hits = [valid[i] for i, opt in enumerate(options) if i < len(valid) and _norm_option(opt, fold_case) == target]
        if len(hits) == 1:
            return hits[0]
    return None


def _letter_by_number(fragment: str, valid: Sequence[str], options: Sequence[str]) -> str | None:
    """The letter of the one option whose number equals a boxed number (``\\boxed{25}`` -> "25 cm")."""
    value = parse_number(fragment)
    if value is None:
        return None
    hits = [
        valid[i]
        for i, opt in enumerate(options)
        if i < len(valid) and (n := parse_number(opt)) is not None and numbers_close(n, value)
    ]
    return hits[0] if len(hits) == 1 else None


_OPTION_LINE_RE = re.compile(r"^\(?[A-J][).:]\s")


def _letter_in_last_line(text: str, valid: Sequence[str], options: Sequence[str]) -> str | None:
    """The letter of the one option whose text the last line states ("... use paper towels.").

    Spaces and case are ignored (a latent judger wrote "Theamount of ... carriedby"). A last line
    that is an option line ("D) Schizophrenia") is a choice when its text is that option's and no
    other line is an option line; several are an echo of the question's list, not a choice.
    """
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    if _OPTION_LINE_RE.match(lines[-1]):
        letter = lines[-1].lstrip("(")[0]
        if sum(bool(_OPTION_LINE_RE.match(ln)) for ln in lines) > 1 or letter not in valid[: len(options)]:
            return None
        body = _OPTION_LINE_RE.sub("", lines[-1], count=1)
        return letter if _normalised_text(body) == _normalised_text(options[valid.index(letter)]) else None
    line = _normalised_text(lines[-1])
    texts = [_normalised_text(opt) for opt in options[: len(valid)]]
    # Short options ("4", "no") would match by accident inside longer words or numbers.
    hits = [valid[i] for i, t in enumerate(texts) if len(t) >= 4 and t in line]
    return hits[0] if len(hits) == 1 else None


def extract_choice(
    text: str | None, letters: Sequence[str] = "ABCDE", options: Sequence[str] | None = None
) -> str | None:
    """The chosen option letter, considering only ``letters`` valid for the question.

    Order of evidence: the last box (a letter, an option's exact text, or the number of one option),
    "answer is B", a reply that is just a letter, the last "(B)" in the text, and finally the text
    of one option stated in the last line.
    """
    if not text:
        return None
    valid = [str(x).upper() for x in letters]
    boxed = last_boxed(text)
    if boxed is not None:
        # Option text first: a boxed option "A magnet" must not read as letter A.
        found = (_letter_by_text(boxed, valid, options) if options else None) or _letter_of(boxed, valid)
        found = found or (_letter_by_number(boxed, valid, options) if options else None)
        if found:
            return found
    for m in reversed(list(_ANSWER_LETTER_RE.finditer(text))):
        if m.group(1) in valid:
            return m.group(1)
    alone = _letter_of(text, valid) if len(text.strip()) <= 4 else None
    if alone:
        return alone
    for m in reversed(list(_PAREN_LETTER_RE.finditer(text))):
        if m.group(1) in valid:
            return m.group(1)
    return _letter_in_last_line(text, valid, options) if options else None
