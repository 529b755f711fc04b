"""Answer scorers: how well one prediction matches the reference answers of a question, in [0, 1].

``score(prediction, answers, scorer)`` with ``scorer`` one of ``SCORERS``:

- ``vqa``: VQAv2 accuracy (Antol et al. 2015; github.com/GT-Vision-Lab/VQA, vqaEval.py). Answers are
  normalised as there: lower case, punctuation removed (a period between digits kept; so "-2" becomes
  "2", as in the official script), number words to digits, articles dropped, common contractions
  restored. One deviation: articles are dropped only when other words remain ("a dog" -> "dog", but
  "A" stays "a"), so that an article alone does not normalise to the empty string. With ten human
  answers the score is min(#matching / 3, 1) averaged over the ten leave-one-out subsets; with fewer
  it is exact match against any reference after normalisation.
- ``exact``: exact match against any reference after a light normalisation (``normalize_exact``).
- ``mc``: multiple choice; the prediction names the gold option by its letter or by its text.
- ``numeric``: a number parsed from the prediction equals a reference number within a relative tolerance.
- ``given``: nothing is computed; the outcome file's own grades (a ``score``/``correct`` column) are used.

Every scorer gives 0 to an empty (or whitespace-only) prediction, and to one that normalises to nothing.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Sequence

SCORERS = ("vqa", "exact", "mc", "numeric", "given")

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "couldnt": "couldn't",
                 "shouldnt": "shouldn't", "wouldnt": "wouldn't", "hasnt": "hasn't", "havent": "haven't",
                 "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're", "whats": "what's"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")
_EDGE = re.compile(r"^(?:[,;:!?'\"]|\.(?!\d))+|[.,;:!?'\"]+$")  # a leading "." before a digit stays
_PAIRS = {"(": ")", "[": "]", "{": "}"}
_GROUP = re.compile(r"\{([^{}]*)\}")
_LATEX_BEFORE = re.compile(r"(\\[A-Za-z]+|[}^_\\])$")
_NUM = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:e[-+]?\d+)?%?"
_NUM_ANY = re.compile(r"(?<![\w.])" + _NUM)
_LETTER = re.compile(r"(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*)?"
                     r"[(\[]?([a-z])[)\]]?[.):]?")
_LETTER_TEXT = re.compile(r"[(\[]?([a-z])[)\].:]\s*(.+)")


def normalize(answer: str) -> str:
    """VQAv2 normalised answer string (see module docstring)."""
    s = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    # as vqaEval.processPunctuation: a mark next to a space (or any mark when the text has a digit,digit
    # comma) is dropped, any other mark becomes a space ("black-and-white" -> "black and white")
    drop_all = bool(re.search(r"\d,\d", s))
    original = s
    for p in set(_PUNCT.findall(original)):
        s = s.replace(p, "" if drop_all or p + " " in original or " " + p in original else " ")
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", "", s)  # drop periods except decimal points
    words = [_CONTRACTIONS.get(w, _NUMBERS.get(w, w)) for w in s.split()]
    kept = [w for w in words if w not in _ARTICLES]
    return " ".join(kept or words)


def normalize_exact(answer: str) -> str:
    """Light normalisation for ``exact``: lower case, whitespace collapsed, and surrounding punctuation
    stripped, repeatedly: leading/trailing characters from ``.,;:!?'"`` (the set MMMU's
    eval/utils parse_multi_choice_response strips) and a matching outer pair of (), [] or {}
    ("{2}" -> "2", "(B)." -> "b"). Unlike SQuAD's evaluate-v1.1.py normalize_answer, inner punctuation
    and articles are kept, so signs, decimal points and LaTeX survive ("-2" != "2", "\\frac{1}{2}" kept)."""
    s = " ".join(answer.lower().split())
    while True:
        t = _EDGE.sub("", s).strip()
        if len(t) >= 2 and _PAIRS.get(t[0]) == t[-1] and _balanced(t[1:-1], t[0], t[-1]):
            t = t[1:-1].strip()
        if t == s:
            return s
        s = t


def _balanced(s: str, opening: str, closing: str) -> bool:
    depths = list(accumulate((c == opening) - (c == closing) for c in s))
    return min(depths, default=0) >= 0 and not (depths and depths[-1])


def answer_group(prediction: str) -> str:
    """The content of the prediction's single ``{...}`` answer group ("There are {5} circles." -> "5"),
    as asked by prompts like "Answer with a number in curly brackets, e.g., {5}"; else the prediction.
    A group right after a LaTeX command, a backslash, "}", "^" or "_" (as in "\\frac{1}{2}", "x^{2}")
    is LaTeX, not an answer group; with none or several answer groups the prediction is used whole."""
    groups = [m.group(1) for m in _GROUP.finditer(prediction)
              if not _LATEX_BEFORE.search(prediction[:m.start()])]
    return groups[0] if len(groups) == 1 else prediction


def exact_score(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when ``normalize_exact(answer_group(prediction))`` equals ``normalize_exact`` of a reference."""
    pred = normalize_exact(answer_group(prediction))
    return float(bool(pred) and pred in {normalize_exact(a) for a in answers})


def _letter(text: str, n_options: int) -> int | None:
    """Index of the option letter the text names ("b", "(b)", "b.", "b)", "option b", "answer: b"), or None."""
    m = _LETTER.fullmatch(text)
    return ord(m.group(1)) - 97 if m and (n_options == 0 or ord(m.group(1)) - 97 < n_options) else None


def mc_score(prediction: str, answers: Sequence[str], options: Sequence[str] = ()) -> float:
    """Multiple choice: ``options`` are the option texts in order (A, B, C, ...). A gold answer is a letter
    or an option's text; the prediction counts when it names the gold option by its letter ("B", "(B)",
    "B.", "B)", "Option B", "answer: B", or "B. <text of B>") or by the option's text (``normalize_exact``).
    Without options, the letter forms still match a gold letter, anything else is ``exact``."""
    pred, opts = normalize_exact(answer_group(prediction)), [normalize_exact(o) for o in options]
    named = {_letter(pred, len(opts))} | {i for i, o in enumerate(opts) if o == pred}
    m = _LETTER_TEXT.fullmatch(pred)  # "b. dog" names b when option b is "dog"
    if m and normalize_exact(m.group(2)) in opts[ord(m.group(1)) - 97:][:1]:
        named.add(ord(m.group(1)) - 97)
    golds = [normalize_exact(a) for a in answers]
    gold_idx = {i if (i := _letter(g, len(opts))) is not None else opts.index(g) if g in opts else None
                for g in golds}
    return float(bool(pred) and (bool(named & gold_idx - {None}) or pred in golds))


def parse_number(text: str) -> float | None:
    """The number a text gives: the content of its single ``{...}`` answer group if any, else the whole
    ``normalize_exact``-ed text if it is a number, else the last number in the text. Accepts "1,000",
    "-3", "2.5", "1e3" and "50%" (-> 50). None when there is no number."""
    s = normalize_exact(answer_group(text))
    found = [s] if re.fullmatch(_NUM, s) else _NUM_ANY.findall(s)
    return float(found[-1].replace(",", "").rstrip("%")) if found else None


def numeric_score(prediction: str, answers: Sequence[str], rel_tol: float = 1e-4) -> float:
    """1.0 when the prediction's number p and a reference number r satisfy |p - r| <= rel_tol * max(|r|, 1e-12)
    (or p == r). This is ChartQA's "relaxed accuracy" (Masry et al. 2022, sec. 5.1, following Methani et al.
    2020), which uses rel_tol = 0.05; the default here is the much stricter 1e-4. No number: 0."""
    p = parse_number(prediction)
    if p is None:
        return 0.0
    for a in answers:
        r = parse_number(a)
        if r is not None and (p == r or abs(p - r) <= rel_tol * max(abs(r), 1e-12)):
            return 1.0
    return 0.0


def _need_answers(answers: Sequence[str]) -> None:
    if not answers:
        raise ValueError("the question has no reference answer, so it cannot be scored; a `score` or "
                         "`correct` column in the outcome file gives its grade instead")


def vqa_score(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one prediction in [0, 1] against the reference ``answers`` (1 or more strings); see
    the module docstring. 0 for an empty prediction; ValueError when ``answers`` is empty."""
    _need_answers(answers)
    pred = normalize(prediction)
    if not pred:
        return 0.0
    refs = [normalize(a) for a in answers]
    if len(refs) < 10:
        return float(pred in refs)
    n = refs.count(pred)  # leave reference r out: n - (r == pred) matches among the other nine
    return sum(min((n - (r == pred)) / 3.0, 1.0) for r in refs) / len(refs)


def score(prediction: str, answers: list[str], scorer: str = "vqa", options: Sequence[str] = (),
          rel_tol: float = 1e-4) -> float:
    """Score in [0, 1] of ``prediction`` against the reference ``answers`` under ``scorer`` (one of
    ``SCORERS``; see the module docstring). ``options`` is used by ``mc``, ``rel_tol`` by ``numeric``.
    Raises ValueError for an unknown scorer, for ``given`` (nothing to compute) and for empty ``answers``."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}")
    if scorer == "given":
        raise ValueError("scorer 'given' computes nothing: the outcome file's own grades "
                         "(its `score`/`correct` column) are used")
    _need_answers(answers)
    if not prediction.strip():
        return 0.0
    if scorer == "vqa":
        return vqa_score(prediction, answers)
    if scorer == "exact":
        return exact_score(prediction, answers)
    if scorer == "mc":
        return mc_score(prediction, answers, options)
    return numeric_score(prediction, answers, rel_tol)
