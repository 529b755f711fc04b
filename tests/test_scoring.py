"""Tests for router_training.scoring (VQA answer normalisation and accuracy)."""

import pytest

from router_training.scoring import normalize, vqa_score


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
