"""Tests for router_training.core.scoring (VQA normalisation and accuracy; exact, mc and numeric scorers)."""

import pytest

from router_training.core.scoring import (SCORERS, answer_group, normalize, normalize_exact, parse_number, score,
                                          vqa_score)


@pytest.mark.parametrize("raw,norm", [
    ("Black.", "black"),
    ("yes.", "yes"),
    ("  Yes!  ", "yes"),
    ("two", "2"),
    ("Two dogs", "2 dogs"),
    ("none", "0"),
    ("a dog", "dog"),
    ("The red circle", "red circle"),
    ("an apple", "apple"),
    ("3.5", "3.5"),
    ("3.5.", "3.5"),
    ("It is 3.5 m.", "it is 3.5 m"),
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("what?", "what"),
    ("left, right", "left right"),
    ("line\nbreak", "line break"),
])
def test_normalize(raw, norm):
    assert normalize(raw) == norm


def test_exact_matches_score_one():
    assert vqa_score("Black.", ["black"] * 10) == 1.0
    assert vqa_score("yes.", ["yes"] * 10) == 1.0


def test_number_words_match_digits():
    assert vqa_score("two", ["2"] * 10) == 1.0
    assert vqa_score("2", ["two"]) == 1.0
    assert vqa_score("Three", ["3", "4"]) == 1.0


def test_articles_dropped():
    assert vqa_score("a dog", ["dog"] * 10) == 1.0
    assert vqa_score("dog", ["the dog"]) == 1.0


def test_no_match_scores_zero():
    assert vqa_score("cat", ["dog"] * 10) == 0.0
    assert vqa_score("cat", ["dog"]) == 0.0


@pytest.mark.parametrize("matches,expected", [
    # leave-one-out over 10 answers, each subset scores min(#match among the other 9 / 3, 1):
    (1, (1 * 0 + 9 * (1 / 3)) / 10),          # 0.3
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),    # 0.6
    (3, (3 * (2 / 3) + 7 * 1) / 10),          # 0.9
    (4, (4 * 1 + 6 * 1) / 10),                # 1.0
    (10, 1.0),
])
def test_ten_answer_leave_one_out(matches, expected):
    refs = ["circle"] * matches + ["square"] * (10 - matches)
    assert vqa_score("Circle.", refs) == pytest.approx(expected)


def test_leave_one_out_hand_values():
    refs = ["red"] * 2 + ["blue"] * 8
    assert vqa_score("red", refs) == pytest.approx(0.6)
    refs = ["red"] * 3 + ["blue"] * 7
    assert vqa_score("red", refs) == pytest.approx(0.9)
    # the order of the references does not matter
    assert vqa_score("red", ["blue", "red", "blue", "blue", "red", "blue", "blue", "red", "blue", "blue"]) \
        == pytest.approx(0.9)


def test_normalisation_applies_to_references_too():
    refs = ["Two."] * 3 + ["three"] * 7
    assert vqa_score("2", refs) == pytest.approx(0.9)


def test_fewer_than_ten_refs_is_exact_match():
    # 1 of 3 would be 1/3 under the min(#/3, 1) rule; with < 10 refs it is exact match against any ref
    assert vqa_score("red", ["red", "blue", "green"]) == 1.0
    assert vqa_score("red", ["blue"] * 9) == 0.0
    assert vqa_score("red", ["red"] + ["blue"] * 8) == 1.0


def test_empty_refs_raise():
    with pytest.raises(ValueError):
        vqa_score("red", [])


def test_decimals_keep_their_point():
    assert vqa_score("3.5", ["3.5"]) == 1.0
    assert vqa_score("3.5", ["35"]) == 0.0
    assert vqa_score("35", ["3.5"]) == 0.0
    assert vqa_score("3.5.", ["3.5"] * 10) == 1.0


def test_inner_punctuation_becomes_a_space_as_in_official_eval():
    assert normalize("black-and-white") == "black and white"
    assert normalize("yes/no") == "yes no"
    assert normalize("1,000") == "1000"      # digit,digit comma: removed
    assert normalize("red, blue") == "red blue"  # mark next to a space: removed
    assert vqa_score("black-and-white", ["black and white"] * 10) == 1.0


# --- empty predictions and lone articles (bug: "" and "the" used to score 1 against "A") ---

def test_empty_prediction_scores_zero_under_vqa():
    assert vqa_score("", ["A"]) == 0.0
    assert vqa_score("   ", ["A"] * 10) == 0.0
    assert vqa_score("", [""]) == 0.0


def test_lone_article_is_kept_by_normalize():
    assert normalize("A") == "a"
    assert normalize("the") == "the"
    assert normalize("a dog") == "dog"
    assert vqa_score("the", ["A"]) == 0.0
    assert vqa_score("a", ["A"]) == 1.0
    assert vqa_score("A.", ["a"] * 10) == 1.0


@pytest.mark.parametrize("scorer", [s for s in SCORERS if s != "given"])
def test_empty_prediction_scores_zero_under_every_scorer(scorer):
    assert score("", ["x"], scorer) == 0.0
    assert score(" \n ", ["x"], scorer, options=["x", "y"]) == 0.0
    assert score("", ["A"], scorer, options=["x", "y"]) == 0.0
    assert score("", ["0"], scorer) == 0.0


def test_punctuation_only_prediction_scores_zero():
    assert score(".", ["."], "vqa") == 0.0
    assert score("()", ["()"], "exact") == 0.0
    assert score("?", ["?"], "mc") == 0.0


# --- registry and entry point ---

def test_scorers_registry():
    assert SCORERS == ("vqa", "exact", "mc", "numeric", "given")


def test_default_scorer_is_vqa():
    refs = ["red"] * 3 + ["blue"] * 7
    assert score("Red.", refs) == vqa_score("Red.", refs) == pytest.approx(0.9)


def test_unknown_scorer_raises_naming_it():
    with pytest.raises(ValueError, match="bleu"):
        score("x", ["x"], "bleu")


def test_given_raises():
    with pytest.raises(ValueError, match="outcome file"):
        score("x", ["x"], "given")


@pytest.mark.parametrize("scorer", ["vqa", "exact", "mc", "numeric"])
def test_no_reference_answer_raises(scorer):
    with pytest.raises(ValueError, match="no reference answer") as e:
        score("x", [], scorer)
    assert "`score`" in str(e.value) and "`correct`" in str(e.value)


# --- exact ---

def test_vqa_ignores_the_minus_sign_but_exact_does_not():
    assert vqa_score("2", ["-2"]) == 1.0  # official VQAv2 rule: "-" is punctuation
    assert score("-2", ["2"], "exact") == 0.0
    assert score("2", ["-2"], "exact") == 0.0
    assert score("2", ["2"], "exact") == 1.0
    assert score("-2", ["-2"], "exact") == 1.0


@pytest.mark.parametrize("pred,ref,expected", [
    ("{5}", "5", 1.0),
    ("There are {5} circles.", "5", 1.0),
    ("There are {5} circles.", "6", 0.0),
    ("(B).", "b", 1.0),
    ("  Paris!  ", "paris", 1.0),
    ("'yes'", "Yes", 1.0),
    ("New   York", "new york", 1.0),
    ("[3]", "3", 1.0),
    ("2.50", "2.5", 0.0),
    ("3.5", "35", 0.0),
    ("a dog", "dog", 0.0),              # articles are kept
    ("black-and-white", "black and white", 0.0),  # inner punctuation is kept
    (r"\frac{1}{2}", r"\frac{1}{2}", 1.0),        # LaTeX groups are not answer groups
    (r"\frac{1}{2}", "2", 0.0),
    (r"{\frac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"x^{2}", "2", 0.0),
    ("{2} or {3}", "2", 0.0),           # several groups: the whole prediction is compared
    ("(a) or (b)", "a) or (b", 0.0),    # outer brackets are stripped only when they match
])
def test_exact_values(pred, ref, expected):
    assert score(pred, [ref], "exact") == expected


def test_exact_matches_any_reference():
    assert score("blue", ["red", "Blue."], "exact") == 1.0
    assert score("green", ["red", "blue"], "exact") == 0.0


def test_normalize_exact_and_answer_group():
    assert normalize_exact("(B).") == "b"
    assert normalize_exact("{2}") == "2"
    assert normalize_exact(r" \Frac{1}{2} ") == r"\frac{1}{2}"
    assert answer_group("There are {5} circles.") == "5"
    assert answer_group(r"\frac{1}{2}") == r"\frac{1}{2}"


# --- mc ---

OPTS = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize("pred", ["B", "b", "(B)", "B.", "B)", "Option B", "option (b)", "answer: B",
                                  "Answer: B.", "The answer is B", "{B}", "dog", "Dog.", "B. dog", "(B) Dog"])
def test_mc_names_the_gold_option(pred):
    assert score(pred, ["B"], "mc", options=OPTS) == 1.0      # gold given as a letter
    assert score(pred, ["dog"], "mc", options=OPTS) == 1.0    # gold given as the option text


@pytest.mark.parametrize("pred", ["A", "(C)", "Option D", "cat", "fish", "E", "B. cat", "dogs", "I think B"])
def test_mc_wrong_or_unparsed(pred):
    assert score(pred, ["B"], "mc", options=OPTS) == 0.0
    assert score(pred, ["dog"], "mc", options=OPTS) == 0.0


def test_mc_without_options():
    assert score("Option B", ["B"], "mc") == 1.0   # letter forms still match a gold letter
    assert score("(B)", ["b"], "mc") == 1.0
    assert score("C", ["B"], "mc") == 0.0
    assert score("Dog.", ["dog"], "mc") == 1.0     # otherwise exact
    assert score("-2", ["2"], "mc") == 0.0


# --- numeric ---

@pytest.mark.parametrize("text,number", [
    ("42", 42.0), ("-3", -3.0), ("2.5", 2.5), ("1,000", 1000.0), ("1e3", 1000.0), ("50%", 50.0),
    ("{7}", 7.0), ("The total is {1,250} dollars.", 1250.0), ("About 3 cats and 4 dogs", 4.0),
    ("x = -0.5.", -0.5), ("2-3", 3.0), ("none", None), ("", None), (".5", 0.5),
])
def test_parse_number(text, number):
    assert parse_number(text) == number


@pytest.mark.parametrize("pred,ref,expected", [
    ("100", "100", 1.0),
    ("100.005", "100", 1.0),      # |diff| = 0.005 <= 1e-4 * 100 = 0.01
    ("100.02", "100", 0.0),       # 0.02 > 0.01
    ("1,000", "1000", 1.0),
    ("1e3", "1000.0", 1.0),
    ("50%", "50", 1.0),
    ("-2", "2", 0.0),
    ("0", "0", 1.0),
    ("0.0000001", "0", 0.0),
    ("The answer is {12}.", "12", 1.0),
    ("I counted 3, then 5", "5", 1.0),
    ("no idea", "5", 0.0),
    ("5", "five", 0.0),           # a reference with no number matches nothing
])
def test_numeric_values(pred, ref, expected):
    assert score(pred, [ref], "numeric") == expected


def test_numeric_rel_tol():
    assert score("104", ["100"], "numeric") == 0.0
    assert score("104", ["100"], "numeric", rel_tol=0.05) == 1.0   # ChartQA's 5% relaxed accuracy
    assert score("106", ["100"], "numeric", rel_tol=0.05) == 0.0
    assert score("7", ["3", "7.0"], "numeric") == 1.0
