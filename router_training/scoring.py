"""VQA accuracy.

Answers are normalised as in the official VQA evaluation (Antol et al. 2015; github.com/GT-Vision-Lab/VQA,
vqaEval.py): lower case, punctuation removed (a period between digits kept), number words to digits,
articles dropped, common contractions restored. With ten human answers the score is
min(#matching / 3, 1) averaged over the ten leave-one-out subsets; with fewer it is exact match
against any reference after normalisation.
"""

from __future__ import annotations

import re

_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "couldnt": "couldn't",
                 "shouldnt": "shouldn't", "wouldnt": "wouldn't", "hasnt": "hasn't", "havent": "haven't",
                 "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're", "whats": "what's"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]")


def normalize(answer: str) -> str:
    """Normalised answer string (see module docstring)."""
    s = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    # as vqaEval.processPunctuation: a mark next to a space (or any mark when the text has a digit,digit
    # comma) is dropped, any other mark becomes a space ("black-and-white" -> "black and white")
    drop_all = bool(re.search(r"\d,\d", s))
    original = s
    for p in set(_PUNCT.findall(original)):
        s = s.replace(p, "" if drop_all or p + " " in original or " " + p in original else " ")
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", "", s)  # drop periods except decimal points
    words = [_CONTRACTIONS.get(w, _NUMBERS.get(w, w)) for w in s.split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_score(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of one prediction in [0, 1] against the reference ``answers`` (1 or more strings).
    Raises ValueError when ``answers`` is empty."""
    if not answers:
        raise ValueError("vqa_score needs at least one reference answer")
    pred = normalize(prediction)
    refs = [normalize(a) for a in answers]
    if len(refs) < 10:
        return float(pred in refs)
    scores = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1:]
        scores.append(min(sum(r == pred for r in others) / 3.0, 1.0))
    return sum(scores) / len(scores)
