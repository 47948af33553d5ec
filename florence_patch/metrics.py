"""DocVQA scores: ANLS as the benchmark defines it, and exact match.

ANLS (Biten et al., 2019; the DocVQA leaderboard metric), per question:

* normalise prediction and each gold answer: lower-case, strip, collapse internal whitespace;
* NL = Levenshtein(gold, pred) / max(len(gold), len(pred));
* score = 1 - NL when NL < tau (0.5), else 0 -- so NL exactly 0.5 scores 0;
* the question scores the best of its gold answers; ANLS is the mean over questions.

Two normalised strings that are both empty are identical: NL = 0, score 1 (the formula would
divide by zero).

A question with no gold answers cannot be scored: it is rejected with ``ValueError`` rather
than counted as 0 or skipped, so scoring an unannotated split (the DocVQA test split has empty
answer lists) fails loudly instead of reporting a meaningless number. Filter such rows first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from rapidfuzz.distance import Levenshtein

ANLS_THRESHOLD = 0.5


def normalize_answer(text: str) -> str:
    """Lower-case, strip, and collapse runs of whitespace to one space."""
    return " ".join(text.lower().split())


def normalized_levenshtein(gold: str, prediction: str) -> float:
    """Levenshtein distance over the longer length, on normalised strings (0 when both empty)."""
    gold, prediction = normalize_answer(gold), normalize_answer(prediction)
    longest = max(len(gold), len(prediction))
    if longest == 0:
        return 0.0
    return Levenshtein.distance(gold, prediction) / longest


def _require_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str):
        # A bare string would be scored character by character.
        raise TypeError("gold answers must be a list of strings, not a string")
    if len(golds) == 0:
        raise ValueError("a question with no gold answers cannot be scored")


def anls_score(prediction: str, golds: Sequence[str], threshold: float = ANLS_THRESHOLD) -> float:
    """One question's ANLS: the best ``1 - NL`` over its gold answers, 0 where NL >= threshold."""
    _require_golds(golds)
    best = 0.0
    for gold in golds:
        distance = normalized_levenshtein(gold, prediction)
        if distance < threshold:
            best = max(best, 1.0 - distance)
    return best


def exact_match(prediction: str, golds: Sequence[str]) -> bool:
    """Whether the normalised prediction equals any normalised gold answer."""
    _require_golds(golds)
    normalized_prediction = normalize_answer(prediction)
    return any(normalize_answer(gold) == normalized_prediction for gold in golds)


@dataclass(frozen=True)
class VQAScores:
    anls: float
    exact_match: float  # fraction of questions with an exact match
    count: int  # questions scored
    # ANLS per question type; a question with several types counts in each of them.
    anls_by_type: Mapping[str, float] = field(default_factory=dict)
    count_by_type: Mapping[str, int] = field(default_factory=dict)


def score_predictions(
    predictions: Sequence[str],
    golds: Sequence[Sequence[str]],
    question_types: Sequence[Iterable[str]] | None = None,
    *,
    threshold: float = ANLS_THRESHOLD,
) -> VQAScores:
    """Score predictions against gold answer lists (and, optionally, per question type).

    Raises ValueError when the lengths differ, when there are no questions, or when a
    question has no gold answers (see the module docstring).
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold answer lists")
    if question_types is not None and len(question_types) != len(golds):
        raise ValueError(f"{len(question_types)} question-type lists for {len(golds)} questions")
    if not golds:
        raise ValueError("no questions to score")

    anls_values: list[float] = []
    matches = 0
    type_scores: dict[str, list[float]] = defaultdict(list)
    for index, (prediction, question_golds) in enumerate(zip(predictions, golds)):
        try:
            score = anls_score(prediction, question_golds, threshold)
            matches += exact_match(prediction, question_golds)
        except ValueError as error:
            raise ValueError(f"question {index}: {error}") from None
        anls_values.append(score)
        if question_types is not None:
            for question_type in dict.fromkeys(question_types[index]):  # a type counts once
                type_scores[question_type].append(score)

    return VQAScores(
        anls=sum(anls_values) / len(anls_values),
        exact_match=matches / len(anls_values),
        count=len(anls_values),
        anls_by_type={name: sum(values) / len(values) for name, values in sorted(type_scores.items())},
        count_by_type={name: len(values) for name, values in sorted(type_scores.items())},
    )
