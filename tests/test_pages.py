"""One vision-tower pass per page in evaluation: the same answers, fewer encodings."""

from __future__ import annotations

import io
import textwrap

import datasets
import torch
from PIL import Image

from florence_patch.training.evaluate import length_sorted_batches
from florence_patch.training.pages import PageGroupedSampler, distinct_pages, page_keys

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


# ---------------------------------------------------------------------------------------------
# Training: train --group-by-page.


def test_page_grouped_order_covers_every_row_once_with_a_pages_rows_together():
    keys = ["a", "b", "a", "c", "b", "a", "d"]
    order = list(PageGroupedSampler(keys, seed=1))
    assert sorted(order) == list(range(len(keys))) and len(PageGroupedSampler(keys)) == len(keys)
    pages = [keys[row] for row in order]
    runs = [page for i, page in enumerate(pages) if i == 0 or pages[i - 1] != page]
    assert sorted(runs) == ["a", "b", "c", "d"]  # each page's rows form one run

    again = PageGroupedSampler(keys, seed=1)
    assert list(again) == order  # the same seed and epoch: the same order, in every process
    orders = set()
    for epoch in range(6):
        again.set_epoch(epoch)
        orders.add(tuple(again))
    assert len(orders) > 1  # a new order each epoch


GROUPED_TRAINING_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from florence_patch.demo.synthetic import make_docvqa
    from florence_patch.training.data import Florence2VQACollator
    from florence_patch.training.model import fix_remote_code, load_model_and_processor
    from florence_patch.training.pages import PageGroupedSampler, SharedPageEncoder, page_keys

    code = fix_remote_code("florence-patch/florence-2-tiny")
    model, processor = load_model_and_processor(code)
    model.eval()  # no dropout: both passes must run the same network
    rows = make_docvqa(num_train=10, num_validation=1, num_test=1, seed=1, max_questions_per_page=3)["train"]
    order = list(PageGroupedSampler(page_keys(rows, "image"), seed=0))
    examples = [rows[i] for i in order[:6]]
    plain = Florence2VQACollator(processor)(examples)
    shared = Florence2VQACollator(processor, share_pages=True)(examples)
    encoded = []
    model.vision_tower.convs[0].register_forward_pre_hook(lambda module, args: encoded.append(args[0].shape[0]))
    encoder = SharedPageEncoder(model)

    def loss_and_gradients(batch):
        model.zero_grad()
        batch = dict(batch)
        page_index = batch.pop("page_index", None)
        if page_index is None:
            loss = model(**batch).loss
        else:
            with encoder.pages(page_index):
                loss = model(**batch).loss
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_gradients(plain)
    plain_encoded = list(encoded)
    encoded.clear()
    shared_loss, shared_grads = loss_and_gradients(shared)
    shared_encoded = list(encoded)
    encoded.clear()
    with torch.no_grad():
        model(**plain)  # outside pages(): the model's own forward again
    vision = [name for name in plain_grads if name.startswith("vision_tower.")]
    print("RESULT " + json.dumps({
        "questions": len(examples),
        "pages": len({example["docId"] for example in examples}),
        "pixel_rows": [plain["pixel_values"].shape[0], shared["pixel_values"].shape[0]],
        "same_labels": torch.equal(plain["labels"], shared["labels"]),
        "same_ids": torch.equal(plain["input_ids"], shared["input_ids"]),
        "encoded": [plain_encoded, shared_encoded, list(encoded)],
        "losses": [plain_loss, shared_loss],
        "same_gradient_names": sorted(plain_grads) == sorted(shared_grads),
        "vision_gradients": len(vision),
        "max_gradient_difference": max((plain_grads[n] - shared_grads[n]).abs().max().item() for n in plain_grads),
        "max_gradient": max(g.abs().max().item() for g in plain_grads.values()),
    }))
    """
)


def test_grouped_training_encodes_each_page_once_with_the_same_loss_and_gradients(tmp_path):
    result = run_with_demo_checkpoint(GROUPED_TRAINING_SCRIPT, tmp_path)
    questions, pages = result["questions"], result["pages"]
    assert pages < questions  # the page-grouped order put questions about one page together
    assert result["pixel_rows"] == [questions, pages]  # the collator prepared each page once
    assert result["same_labels"] and result["same_ids"]
    assert result["encoded"] == [[questions], [pages], [questions]]
    plain_loss, shared_loss = result["losses"]
    assert abs(plain_loss - shared_loss) <= 1e-5 * max(1.0, abs(plain_loss))
    assert result["same_gradient_names"] and result["vision_gradients"] > 0
    assert result["max_gradient"] > 0
    assert result["max_gradient_difference"] <= 1e-4 * result["max_gradient"]
