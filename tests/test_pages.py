"""One vision-tower pass per page in evaluation: the same answers, fewer encodings."""

from __future__ import annotations

import io
import textwrap

import datasets
import torch
from PIL import Image

from florence_patch.training.evaluate import length_sorted_batches
from florence_patch.training.pages import distinct_pages, page_keys

from .conftest import run_with_demo_checkpoint


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_distinct_pages_finds_repeated_images():
    a, b = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    first, index = distinct_pages(torch.stack([a, b, a.clone(), b.clone(), a]))
    assert first == [0, 1] and index == [0, 1, 0, 1, 0]
    assert distinct_pages(torch.stack([a, b])) == ([0, 1], [0, 1])


def test_page_keys_from_image_bytes_paths_or_nothing():
    red, blue = _png("red"), _png("blue")
    images = datasets.Dataset.from_dict(
        {"image": [{"bytes": red, "path": None}, {"bytes": blue, "path": None}, {"bytes": red, "path": None}]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    keys = page_keys(images, "image")
    assert keys[0] == keys[2] != keys[1]
    paths = datasets.Dataset.from_dict({"image": ["p/1.png", "p/2.png", "p/1.png"]})
    assert page_keys(paths, "image") == ["p/1.png", "p/2.png", "p/1.png"]
    arrays = datasets.Dataset.from_dict({"image": [[1, 2], [3, 4]]})
    assert page_keys(arrays, "image") is None


def test_batches_keep_a_pages_questions_together():
    lengths = [5, 9, 7, 9, 3, 6]
    pages = ["a", "b", "a", "c", "b", "a"]
    batches = length_sorted_batches(lengths, 3, pages)
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    # page b (longest prompt 9) first, then c (9), then a (7); longest prompts first within a page
    assert batches == [[1, 4, 3], [2, 5, 0]]
    assert length_sorted_batches(lengths, 2) == length_sorted_batches(lengths, 2, [str(i) for i in range(6)])


SCRIPT = textwrap.dedent(
    """
    import json, torch
    from florence_patch.demo.synthetic import make_docvqa
    from florence_patch.training.model import fix_remote_code, load_model_and_processor
    from florence_patch.training.pages import generate_sharing_pages

    code = fix_remote_code("florence-patch/florence-2-tiny")
    model, processor = load_model_and_processor(code)
    model.eval()
    rows = make_docvqa(num_train=6, num_validation=1, num_test=1, seed=1, max_questions_per_page=3)["train"]
    images = [image.convert("RGB") for image in rows["image"]]
    inputs = processor(text=["<DocVQA>" + q for q in rows["question"]], images=images, return_tensors="pt", padding=True)
    encoded = []
    encode_image = model._encode_image

    def counting_encode_image(pixel_values):
        encoded.append(pixel_values.shape[0])
        return encode_image(pixel_values)

    model._encode_image = counting_encode_image
    options = dict(max_new_tokens=6, num_beams=3, do_sample=False)
    with torch.no_grad():
        plain = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], **options)
        plain_encoded = list(encoded)
        encoded.clear()
        shared = generate_sharing_pages(model, inputs["input_ids"], inputs["pixel_values"], **options)
    print("RESULT " + json.dumps({
        "pages": len(set(rows["docId"])), "questions": len(rows),
        "plain_encoded": plain_encoded, "shared_encoded": encoded,
        "same_tokens": plain.tolist() == shared.tolist(),
    }))
    """
)


def test_generate_sharing_pages_encodes_each_page_once_with_the_same_answers(tmp_path):
    result = run_with_demo_checkpoint(SCRIPT, tmp_path)
    assert result["pages"] < result["questions"]  # the rows share pages, as DocVQA's do
    assert result["plain_encoded"] == [result["questions"]]
    assert result["shared_encoded"] == [result["pages"]]
    assert result["same_tokens"]


def test_images_that_differ_off_the_sampled_pixels_are_still_told_apart():
    a = torch.zeros(3, 64, 64)
    b = a.clone()
    b[0, 1, 1] = 1.0  # not on the sampling grid
    first, index = distinct_pages(torch.stack([a, b, a.clone()]))
    assert first == [0, 1] and index == [0, 1, 0]
