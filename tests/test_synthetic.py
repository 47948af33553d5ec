"""The synthetic DocVQA generator: schema, determinism, and answers that are on the page."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import pytest
from PIL import Image

from florence_patch.demo.synthetic import (
    PAGE_KINDS,
    QUESTION_TYPES,
    docvqa_features,
    make_docvqa,
    render_page,
    save_docvqa,
)

PAGE_SIZES = ((612, 792), (816, 1056), (400, 600))


@pytest.fixture(scope="module")
def small_set() -> datasets.DatasetDict:
    return make_docvqa(num_train=24, num_validation=8, num_test=6, seed=3, page_sizes=PAGE_SIZES)


def _raw_rows(dataset: datasets.Dataset) -> list[dict]:
    """Rows with images as stored bytes (no decoding), for byte-level comparison."""
    return dataset.cast_column("image", datasets.Image(decode=False)).to_list()


def test_schema_is_docvqa(small_set):
    assert list(small_set) == ["train", "validation", "test"]
    expected = docvqa_features()
    for split, dataset in small_set.items():
        assert dataset.features == expected, split
        assert dataset.features["questionId"] == datasets.Value("int32")
        assert dataset.features["docId"] == datasets.Value("int32")
        assert isinstance(dataset.features["image"], datasets.Image)
    assert [len(small_set[s]) for s in small_set] == [24, 8, 6]


def test_annotations(small_set):
    for split in ("train", "validation"):
        for row in small_set[split].remove_columns("image"):
            assert row["answers"], row
            assert row["question"].endswith("?")
            assert row["question_types"] and set(row["question_types"]) <= set(QUESTION_TYPES)
            for answer in row["answers"]:
                assert 1 <= len(answer.split()) <= 4, answer
    test_rows = small_set["test"].remove_columns("image")
    assert all(row["answers"] == [] and row["question_types"] == [] for row in test_rows)
    question_ids = [qid for split in small_set.values() for qid in split["questionId"]]
    assert len(set(question_ids)) == len(question_ids)


def test_rows_of_one_document_share_its_page(small_set):
    pages: dict[int, tuple] = {}
    for row in _raw_rows(small_set["train"]):
        page = (row["image"]["bytes"], row["ucsf_document_id"], row["ucsf_document_page_no"])
        assert pages.setdefault(row["docId"], page) == page
    assert len(pages) < len(small_set["train"])  # some pages carry several questions


def test_pages_vary_in_mode_and_size(small_set):
    seen = set()
    for split in small_set.values():
        for image in split["image"]:
            seen.add((image.mode, image.size))
    assert {mode for mode, _ in seen} == {"L", "RGB"}
    assert {size for _, size in seen} <= set(PAGE_SIZES)
    assert len({size for _, size in seen}) >= 2


def test_same_seed_same_bytes_other_seed_other_pages(small_set):
    again = make_docvqa(num_train=24, num_validation=8, num_test=6, seed=3, page_sizes=PAGE_SIZES)
    other = make_docvqa(num_train=24, num_validation=8, num_test=6, seed=4, page_sizes=PAGE_SIZES)
    for split in small_set:
        assert _raw_rows(again[split]) == _raw_rows(small_set[split])
        assert _raw_rows(other[split]) != _raw_rows(small_set[split])


def test_save_round_trip(small_set, tmp_path):
    path = save_docvqa(small_set, tmp_path / "docvqa")
    loaded = datasets.load_from_disk(str(path))
    assert isinstance(loaded, datasets.DatasetDict)
    for split in small_set:
        assert loaded[split].features == small_set[split].features
        assert _raw_rows(loaded[split]) == _raw_rows(small_set[split])


@pytest.mark.parametrize("kind", PAGE_KINDS)
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_answers_are_drawn_inside_the_page(kind, mode):
    for seed, size in enumerate(PAGE_SIZES):
        page = render_page(kind, seed=seed, page_size=size, mode=mode)
        assert page.kind == kind and page.image.mode == mode and page.image.size == size
        width, height = size
        for drawn in page.drawn_text:
            left, top, right, bottom = drawn.box
            assert 0 <= left < right <= width and 0 <= top < bottom <= height, (drawn, size)
        lines = [drawn.text for drawn in page.drawn_text]
        assert page.questions
        for question in page.questions:
            printed = question.answers[0]
            # The canonical answer is printed on one line, unbroken.
            assert any(printed in line for line in lines), (question, lines)
            for variant in question.answers[1:]:
                # Variants drop a currency sign, thousands separators or a prefix.
                assert any(variant in line.replace(",", "").replace("$", "") or variant in line for line in lines)


def test_render_page_is_a_function_of_its_seed():
    first = render_page(seed="abc")
    second = render_page(seed="abc")
    assert first.kind == second.kind and first.questions == second.questions
    assert first.image.tobytes() == second.image.tobytes()
    assert render_page(seed="abd").image.tobytes() != first.image.tobytes()


def test_pages_have_ink():
    page = render_page("letter", seed=0, mode="L")
    histogram = page.image.histogram()
    dark_pixels = sum(histogram[:128])
    assert dark_pixels > 0.005 * page.image.width * page.image.height


def test_images_decode_as_png(small_set):
    row = _raw_rows(small_set["validation"])[0]
    image = Image.open(io.BytesIO(row["image"]["bytes"]))
    assert image.format == "PNG"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"page_sizes": ((800, 600),)},  # landscape
        {"page_sizes": ((200, 300),)},  # too narrow
        {"page_sizes": ()},
        {"kinds": ("poster",)},
        {"num_train": -1},
        {"max_questions_per_page": 0},
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_docvqa(**{"num_train": 1, "num_validation": 0, "num_test": 0, **kwargs})


def test_render_page_refuses_unknown_kind_and_mode():
    with pytest.raises(ValueError, match="kind"):
        render_page("poster")
    with pytest.raises(ValueError, match="mode"):
        render_page("form", mode="CMYK")
