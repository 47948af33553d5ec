"""ANLS and exact match on hand-computed cases."""

from __future__ import annotations

import pytest

from florence_patch.metrics import (
    VQAScores,
    anls_score,
    exact_match,
    normalize_answer,
    normalized_levenshtein,
    score_predictions,
)


def test_normalisation_ignores_case_and_whitespace():
    assert normalize_answer("  Total\t  DUE \n") == "total due"
    assert anls_score("  total   due ", ["Total Due"]) == 1.0
    assert exact_match("TOTAL DUE", ["total\tdue"])


def test_one_edit():
    # "kitten" vs "sitten": 1 substitution over 6 characters.
    assert anls_score("sitten", ["kitten"]) == pytest.approx(1 - 1 / 6)
    assert not exact_match("sitten", ["kitten"])


def test_distance_is_over_the_longer_string():
    # "abcd" -> "abcdef": 2 insertions; max length 6.
    assert normalized_levenshtein("abcd", "abcdef") == pytest.approx(2 / 6)
    assert anls_score("abcdef", ["abcd"]) == pytest.approx(1 - 2 / 6)


def test_best_gold_answer_counts():
    golds = ["$1,200.00", "1,200.00"]
    # "1200.00" vs "1,200.00": 1 deletion over 8 -> 0.875; vs "$1,200.00": 2 over 9.
    assert anls_score("1200.00", golds) == pytest.approx(1 - 1 / 8)
    assert anls_score("1,200.00", golds) == 1.0
    assert exact_match("1,200.00", golds)


def test_threshold_cut_off():
    # "abcd" vs "abxy": 2 substitutions over 4 -> NL exactly 0.5 -> scores 0, not 0.5.
    assert normalized_levenshtein("abcd", "abxy") == 0.5
    assert anls_score("abxy", ["abcd"]) == 0.0
    # "abcde" vs "abxye": NL 0.4 < 0.5 -> 0.6.
    assert anls_score("abxye", ["abcde"]) == pytest.approx(0.6)
    # The threshold is a parameter: with tau = 0.6 the 0.5 case scores.
    assert anls_score("abxy", ["abcd"], threshold=0.6) == pytest.approx(0.5)


def test_empty_prediction_scores_zero():
    assert anls_score("", ["yes"]) == 0.0
    assert anls_score("   ", ["yes"]) == 0.0
    assert not exact_match("", ["yes"])


def test_empty_gold_string_matches_only_empty_prediction():
    assert anls_score("", [""]) == 1.0
    assert anls_score("x", [""]) == 0.0


def test_empty_gold_list_is_refused():
    with pytest.raises(ValueError, match="no gold answers"):
        anls_score("yes", [])
    with pytest.raises(ValueError, match="no gold answers"):
        exact_match("yes", [])
    with pytest.raises(ValueError, match="question 1"):
        score_predictions(["a", "b"], [["a"], []])


def test_a_bare_string_is_not_a_gold_list():
    with pytest.raises(TypeError):
        anls_score("yes", "yes")


def test_score_predictions_means_and_types():
    predictions = ["march 3, 1998", "1200", "Yes", "Helen"]
    golds = [["March 3, 1998"], ["1,200", "$1,200"], ["No"], ["Helen Park", "Dr. Helen Park"]]
    types = [["layout"], ["table/list", "form"], ["Yes/No", "form"], ["form", "form"]]
    scores = score_predictions(predictions, golds, types)
    # Per question: 1.0; 1 - 1/5 = 0.8; "yes" vs "no" NL 3/3 -> 0; "helen" vs "helen park" NL 5/10 -> 0.
    assert isinstance(scores, VQAScores)
    assert scores.count == 4
    assert scores.anls == pytest.approx((1.0 + 0.8 + 0.0 + 0.0) / 4)
    assert scores.exact_match == pytest.approx(1 / 4)
    assert scores.anls_by_type == pytest.approx(
        {"layout": 1.0, "table/list": 0.8, "form": (0.8 + 0.0 + 0.0) / 3, "Yes/No": 0.0}
    )
    assert scores.count_by_type == {"Yes/No": 1, "form": 3, "layout": 1, "table/list": 1}


def test_scores_are_frozen():
    scores = score_predictions(["a"], [["a"]])
    assert scores.anls == 1.0 and scores.anls_by_type == {}
    with pytest.raises(AttributeError):
        scores.anls = 0.0  # type: ignore[misc]


def test_length_mismatch_and_nothing_to_score():
    with pytest.raises(ValueError, match="predictions"):
        score_predictions(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="question-type"):
        score_predictions(["a"], [["a"]], [["form"], ["layout"]])
    with pytest.raises(ValueError, match="no questions"):
        score_predictions([], [])
