"""Loading VQA splits and collating them into Florence-2 batches."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from florence_patch.demo.synthetic import make_docvqa, save_docvqa
from florence_patch.errors import UsageError
from florence_patch.training.data import (
    DOCVQA_HUB_ID,
    IGNORE_INDEX,
    DataError,
    Florence2VQACollator,
    Florence2VQAEvalCollator,
    VQAColumns,
    load_vqa_split,
    page_identity,
    to_rgb_image,
    with_undecoded_images,
)

SPLITS = ("train", "validation", "test")


# ---------------------------------------------------------------------------------------------
# A small stand-in for the Florence-2 processor: a real fast tokenizer (one token per
# character, <s> ... </s> around each text) and an image step that, like the real one, needs
# three-channel pages.


def make_char_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocabulary = {token: index for index, token in enumerate(specials + [chr(c) for c in range(32, 127)])}
    tokenizer = Tokenizer(BPE(vocab=vocabulary, merges=[], unk_token="<unk>"))
    tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


class CharProcessor:
    def __init__(self, image_size: int = 8):
        self.tokenizer = make_char_tokenizer()
        self.image_size = image_size

    def __call__(self, text, images, return_tensors, padding):
        assert return_tensors == "pt" and padding is True
        pages = []
        for image in images:
            array = np.asarray(image.resize((self.image_size, self.image_size)), dtype=np.float32)
            if array.ndim != 3 or array.shape[2] != 3:
                raise ValueError(f"expected an RGB page, got array of shape {array.shape}")
            pages.append(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0)
        encoded = self.tokenizer(text, return_tensors="pt", padding=True)
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "pixel_values": torch.stack(pages),
        }


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _unpadded(label_row: torch.Tensor) -> list[int]:
    return [token for token in label_row.tolist() if token != IGNORE_INDEX]


# ---------------------------------------------------------------------------------------------
# Data on disk in each form load_vqa_split takes.


@pytest.fixture(scope="module")
def docvqa() -> datasets.DatasetDict:
    return make_docvqa(num_train=8, num_validation=4, num_test=3, seed=11, page_sizes=((400, 520),))


@pytest.fixture(scope="module")
def hub_layout_dir(docvqa, tmp_path_factory) -> Path:
    """A directory laid out like the hub repo of HuggingFaceM4/DocumentVQA."""
    root = tmp_path_factory.mktemp("hub") / "DocumentVQA"
    (root / "data").mkdir(parents=True)
    for split in SPLITS:
        docvqa[split].to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def _raw(dataset) -> list[dict]:
    return dataset.cast_column("image", datasets.Image(decode=False)).to_list()


def _same_rows(loaded, expected: datasets.Dataset) -> None:
    assert loaded.features == expected.features
    assert _raw(loaded) == _raw(expected)


def test_local_hub_layout_dir_goes_through_load_dataset(docvqa, hub_layout_dir, tmp_path):
    for split in SPLITS:
        loaded = load_vqa_split(str(hub_layout_dir), split, cache_dir=str(tmp_path / "cache"))
        assert isinstance(loaded, datasets.Dataset)
        _same_rows(loaded, docvqa[split])


def test_streaming_from_hub_layout_dir(docvqa, hub_layout_dir, tmp_path):
    stream = load_vqa_split(str(hub_layout_dir), "validation", streaming=True, cache_dir=str(tmp_path))
    assert isinstance(stream, datasets.IterableDataset)
    questions = [row["question"] for row in stream]
    assert questions == docvqa["validation"]["question"]


def test_hub_id_offline_from_datasets_cache(docvqa, hub_layout_dir, tmp_path, monkeypatch):
    """The hub id itself, offline: datasets falls back to its own cache of the set.

    The cache is what datasets writes when it prepares a repo laid out like the hub's
    (data/<split>-*.parquet, dataset name "DocumentVQA" -> "document_vqa"), filed under the
    hub id's namespace, as a past online load_dataset("HuggingFaceM4/DocumentVQA") leaves it.
    """
    staging = tmp_path / "staging"
    datasets.load_dataset(str(hub_layout_dir), cache_dir=str(staging))
    (prepared,) = (staging / "document_vqa").glob("*/*/*/")  # <config>/<version>/<hash>/
    config, version, fingerprint = prepared.parts[-3:]
    cache = tmp_path / "cache"
    shutil.copytree(prepared, cache / "HuggingFaceM4___document_vqa" / config / version / fingerprint)

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    loaded = load_vqa_split(DOCVQA_HUB_ID, "validation", cache_dir=str(cache))
    _same_rows(loaded, docvqa["validation"])
    with pytest.raises(DataError, match="no split 'dev'"):
        load_vqa_split(DOCVQA_HUB_ID, "dev", cache_dir=str(cache))


def test_saved_dataset_dict_and_dataset(docvqa, tmp_path):
    dict_dir = save_docvqa(docvqa, tmp_path / "dict")
    _same_rows(load_vqa_split(str(dict_dir), "train"), docvqa["train"])
    stream = load_vqa_split(str(dict_dir), "test", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert [row["questionId"] for row in stream] == docvqa["test"]["questionId"]

    single_dir = tmp_path / "single"
    docvqa["validation"].save_to_disk(str(single_dir))
    _same_rows(load_vqa_split(str(single_dir), "validation"), docvqa["validation"])
    with pytest.raises(DataError, match="holds the 'validation' split"):
        load_vqa_split(str(single_dir), "train")
    with pytest.raises(DataError, match="revision"):
        load_vqa_split(str(dict_dir), "train", revision="main")


def test_parquet_file_and_glob(docvqa, hub_layout_dir, tmp_path):
    one_file = hub_layout_dir / "data" / "validation-00000-of-00001.parquet"
    _same_rows(load_vqa_split(str(one_file), "validation", cache_dir=str(tmp_path)), docvqa["validation"])
    pattern = str(hub_layout_dir / "data" / "train-*.parquet")
    _same_rows(load_vqa_split(pattern, "train", cache_dir=str(tmp_path)), docvqa["train"])
    with pytest.raises(DataError, match="no parquet file"):
        load_vqa_split(str(tmp_path / "nothing-*.parquet"), "train")


def test_missing_split_is_one_line_data_error(docvqa, hub_layout_dir, tmp_path):
    dict_dir = save_docvqa(docvqa, tmp_path / "dict")
    for source in (str(hub_layout_dir), str(dict_dir)):
        for streaming in (False, True):
            with pytest.raises(DataError) as caught:
                load_vqa_split(source, "dev", streaming=streaming, cache_dir=str(tmp_path / "cache"))
            message = str(caught.value)
            assert "'dev'" in message and "\n" not in message
            assert isinstance(caught.value, ValueError) and isinstance(caught.value, UsageError)


def test_missing_columns_and_other_column_names(docvqa, tmp_path):
    renamed = docvqa["train"].rename_columns({"question": "query", "answers": "labels", "image": "page"})
    renamed.save_to_disk(str(tmp_path / "renamed"))
    with pytest.raises(DataError, match="lacks column\\(s\\) question, answers, image") as caught:
        load_vqa_split(str(tmp_path / "renamed"), "train")
    assert "\n" not in str(caught.value)

    columns = VQAColumns(question="query", answers="labels", image="page")
    loaded = load_vqa_split(str(tmp_path / "renamed"), "train", columns=columns)
    collator = Florence2VQACollator(CharProcessor(), columns=columns)
    batch = collator([loaded[0], loaded[1]])
    assert _unpadded(batch["labels"][0]) == _ids(collator.processor.tokenizer, loaded[0]["labels"][0])


# ---------------------------------------------------------------------------------------------
# Collators.


def _rows(docvqa, split="train", count=4) -> list[dict]:
    return [docvqa[split][index] for index in range(count)]


def test_training_batch(docvqa):
    processor = CharProcessor()
    collator = Florence2VQACollator(processor)
    rows = _rows(docvqa)
    batch = collator(rows)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "labels"}
    assert batch["pixel_values"].shape == (4, 3, 8, 8)
    tokenizer = processor.tokenizer
    for index, row in enumerate(rows):
        mask = batch["attention_mask"][index].bool()
        prompt_ids = batch["input_ids"][index][mask].tolist()
        assert prompt_ids == _ids(tokenizer, "<DocVQA>" + row["question"])
        assert _unpadded(batch["labels"][index]) == _ids(tokenizer, row["answers"][0])


def test_label_padding_is_masked(docvqa):
    collator = Florence2VQACollator(CharProcessor())
    rows = [dict(_rows(docvqa)[0], answers=["No"]), dict(_rows(docvqa)[1], answers=["a much longer answer"])]
    labels = collator(rows)["labels"]
    short_length = len(_ids(collator.processor.tokenizer, "No"))
    assert labels.shape[1] == len(_ids(collator.processor.tokenizer, "a much longer answer"))
    assert (labels[0, short_length:] == IGNORE_INDEX).all()
    assert (labels[0, :short_length] != IGNORE_INDEX).all()
    assert (labels[1] != IGNORE_INDEX).all()
    pad_id = collator.processor.tokenizer.pad_token_id
    assert not (labels == pad_id).any()


def test_long_labels_truncated_with_one_warning(docvqa, caplog):
    collator = Florence2VQACollator(CharProcessor(), max_target_length=6)
    rows = [dict(row, answers=["twelve chars"]) for row in _rows(docvqa, count=2)]
    with caplog.at_level(logging.WARNING, logger="florence_patch.training.data"):
        first = collator(rows)
        collator(rows)
    warnings = [record for record in caplog.records if "max_target_length=6" in record.getMessage()]
    assert len(warnings) == 1
    labels = first["labels"]
    assert labels.shape == (2, 6)
    tokenizer = collator.processor.tokenizer
    assert labels[0, 0] == tokenizer.bos_token_id and labels[0, -1] == tokenizer.eos_token_id


def test_labels_within_limit_do_not_warn(docvqa, caplog):
    collator = Florence2VQACollator(CharProcessor(), max_target_length=32)
    with caplog.at_level(logging.WARNING):
        collator(_rows(docvqa))
    assert not [record for record in caplog.records if "max_target_length" in record.getMessage()]


def test_grayscale_pages_are_converted_to_rgb(docvqa):
    page = Image.new("L", (40, 50), 200)
    assert to_rgb_image(page).mode == "RGB"
    row = dict(_rows(docvqa)[0], image=page)
    # The stand-in processor refuses anything but three channels, as Florence-2's would.
    with pytest.raises(ValueError, match="RGB"):
        CharProcessor()(text=["q"], images=[page], return_tensors="pt", padding=True)
    batch = Florence2VQACollator(CharProcessor())([row])
    expected = torch.full((3, 8, 8), 200 / 127.5 - 1.0)
    assert torch.allclose(batch["pixel_values"][0], expected)


def test_undecoded_image_cells_are_read_in_the_collator(docvqa):
    raw = docvqa["train"].cast_column("image", datasets.Image(decode=False))
    rows = [raw[index] for index in range(2)]
    assert isinstance(rows[0]["image"], dict) and rows[0]["image"]["bytes"]
    decoded = Florence2VQACollator(CharProcessor())(_rows(docvqa, count=2))
    from_bytes = Florence2VQACollator(CharProcessor())(rows)
    assert torch.equal(decoded["pixel_values"], from_bytes["pixel_values"])


def test_each_distinct_page_of_a_batch_is_decoded_once(docvqa, monkeypatch):
    from florence_patch.training import data

    raw = with_undecoded_images(docvqa["train"], "image")
    assert raw.features["image"].decode is False and docvqa["train"].features["image"].decode is True
    rows = [raw[index] for index in range(len(raw))]
    pages = len({row["docId"] for row in rows})
    assert pages < len(rows)  # the synthetic set asks several questions a page, as DocVQA does
    decoded = []
    monkeypatch.setattr(data, "to_rgb_image", lambda cell: decoded.append(cell) or to_rgb_image(cell))
    batch = Florence2VQACollator(CharProcessor())(rows)
    assert len(decoded) == pages
    # Every question still gets its own page's pixels.
    one_by_one = torch.cat([Florence2VQACollator(CharProcessor())([row])["pixel_values"] for row in rows])
    assert torch.equal(batch["pixel_values"], one_by_one)


def test_page_identity_without_decoding():
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    assert page_identity({"bytes": b"png-1", "path": None}) == page_identity(b"png-1") != page_identity(b"png-2")
    assert page_identity({"bytes": None, "path": "a.png"}) == page_identity("a.png") != page_identity("b.png")
    assert page_identity(red) == page_identity(red.copy()) != page_identity(blue)
    strings = datasets.Dataset.from_dict({"image": ["a.png"]})
    assert with_undecoded_images(strings, "image") is strings  # not an Image column: as it is


def test_random_answer_is_deterministic_per_epoch():
    answers = [f"answer {index}" for index in range(6)]
    page = Image.new("RGB", (16, 16), "white")
    rows = [
        {"questionId": qid, "question": f"Question {qid}?", "answers": answers, "image": page}
        for qid in range(12)
    ]

    def chosen(collator) -> list[str]:
        return [collator.choose_answer(row) for row in rows]

    collator = Florence2VQACollator(CharProcessor(), answer_choice="random", seed=5)
    epoch0 = chosen(collator)
    assert set(epoch0) <= set(answers) and len(set(epoch0)) > 1
    assert chosen(collator) == epoch0  # same epoch, same choice
    twin = Florence2VQACollator(CharProcessor(), answer_choice="random", seed=5)
    assert chosen(twin) == epoch0  # a fresh collator (another run, another worker) agrees
    collator.set_epoch(1)
    epoch1 = chosen(collator)
    assert epoch1 != epoch0
    assert chosen(pickle.loads(pickle.dumps(collator))) == epoch1
    assert chosen(Florence2VQACollator(CharProcessor(), answer_choice="random", seed=6)) != epoch0
    # The batch's labels are the chosen answers.
    batch = collator(rows[:3])
    tokenizer = collator.processor.tokenizer
    assert [_unpadded(row) for row in batch["labels"]] == [_ids(tokenizer, answer) for answer in epoch1[:3]]
    # "first" ignores the epoch.
    first = Florence2VQACollator(CharProcessor())
    first.set_epoch(3)
    assert chosen(first) == ["answer 0"] * len(rows)


def test_rows_without_answers_cannot_train(docvqa):
    with pytest.raises(DataError, match="no gold answer"):
        Florence2VQACollator(CharProcessor())(_rows(docvqa, "test", 1))


def test_collator_pickles(docvqa):
    collator = Florence2VQACollator(CharProcessor(), answer_choice="random", max_target_length=64)
    copy = pickle.loads(pickle.dumps(collator))
    rows = _rows(docvqa)
    original, copied = collator(rows), copy(rows)
    assert original.keys() == copied.keys()
    for key in original:
        assert torch.equal(original[key], copied[key])


@pytest.mark.slow  # a spawned worker imports torch, datasets and transformers afresh
def test_collator_runs_in_spawned_dataloader_workers(docvqa):
    """Spawned workers receive the collator by pickle: proof it survives the trip."""
    collator = Florence2VQACollator(CharProcessor())
    loader = torch.utils.data.DataLoader(
        docvqa["train"],
        batch_size=4,
        collate_fn=collator,
        num_workers=1,
        multiprocessing_context="spawn",
    )
    batches = list(loader)
    assert len(batches) == 2
    expected = collator(_rows(docvqa, count=4))
    for key in expected:
        assert torch.equal(batches[0][key], expected[key])


def test_eval_batch_keeps_golds_ids_and_types(docvqa):
    collator = Florence2VQAEvalCollator(CharProcessor())
    rows = _rows(docvqa, "validation", 3)
    batch = collator(rows)
    assert batch["pixel_values"].shape[0] == 3 and "labels" not in batch
    assert batch["answers"] == [row["answers"] for row in rows]
    assert batch["question_ids"] == [row["questionId"] for row in rows]
    assert batch["question_types"] == [row["question_types"] for row in rows]
    assert batch["questions"] == [row["question"] for row in rows]
    test_batch = collator(_rows(docvqa, "test", 2))  # unannotated rows are predicted, not refused
    assert test_batch["answers"] == [[], []]
    pickle.loads(pickle.dumps(collator))


def test_eval_collator_without_optional_columns():
    columns = VQAColumns(question_types=None, question_id=None)
    row = {"question": "What?", "answers": "42", "image": Image.new("L", (10, 10))}
    batch = Florence2VQAEvalCollator(CharProcessor(), columns=columns)([row])
    assert batch["answers"] == [["42"]]
    assert batch["question_ids"] == [None] and batch["question_types"] == [[]]


def test_bad_collator_options():
    with pytest.raises(ValueError):
        Florence2VQACollator(CharProcessor(), answer_choice="longest")
    with pytest.raises(ValueError):
        Florence2VQACollator(CharProcessor(), max_target_length=1)
    with pytest.raises(DataError, match="lacks column 'question'"):
        Florence2VQACollator(CharProcessor())([{"answers": ["a"], "image": Image.new("RGB", (4, 4))}])


# ---------------------------------------------------------------------------------------------
# With the demo checkpoint's real Florence-2 processor (our remote code, BART tokenizer, CLIP
# image processor), patched by the fix registry for the installed transformers -- as the
# training command loads it.


@pytest.fixture(scope="module")
def demo_processor(tmp_path_factory):
    import transformers
    from transformers import AutoProcessor

    from florence_patch.demo.checkpoint import build_demo_repo
    from florence_patch.fixes import REMOTE_CODE_FILES, FixOutcome, select_fixes

    root = tmp_path_factory.mktemp("demo")
    repo = build_demo_repo(root / "hf")
    checkpoint = root / "checkpoint"
    shutil.copytree(repo.snapshot, checkpoint)  # follows the snapshot's links to blobs
    for fix in select_fixes(transformers.__version__):
        # The processor imports the configuration and processing files, not the modeling one.
        if fix.filename not in REMOTE_CODE_FILES or fix.filename == "modeling_florence2.py":
            continue
        path = checkpoint / fix.filename
        result = fix.run(path.read_text(encoding="utf-8"))
        assert result.outcome is not FixOutcome.UNRECOGNIZED, (fix.id, result.reason)
        path.write_text(result.code, encoding="utf-8")
    return AutoProcessor.from_pretrained(str(checkpoint), trust_remote_code=True)


@pytest.mark.slow
def test_collators_with_the_demo_processor(docvqa, demo_processor):
    from florence_patch.demo.checkpoint import IMAGE_SIZE

    rows = _rows(docvqa, count=4)
    assert {row["image"].mode for row in _rows(docvqa, count=len(docvqa["train"]))} == {"L", "RGB"}
    rows[0] = next(row for row in _rows(docvqa, count=len(docvqa["train"])) if row["image"].mode == "L")
    collator = Florence2VQACollator(demo_processor, max_target_length=256)
    batch = pickle.loads(pickle.dumps(collator))(rows)
    assert batch["pixel_values"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["pixel_values"].dtype == torch.float32
    # Normalised (mean/std), not raw 0..255 or 0..1 pixels.
    assert batch["pixel_values"].min() < -1.0 and batch["pixel_values"].max() > 1.0
    tokenizer = demo_processor.tokenizer
    for index, row in enumerate(rows):
        assert _unpadded(batch["labels"][index]) == tokenizer(row["answers"][0])["input_ids"]
        prompt = tokenizer.decode(batch["input_ids"][index], skip_special_tokens=True)
        assert prompt.replace(" ", "") == ("<DocVQA>" + row["question"]).replace(" ", "")
    assert (batch["labels"] == IGNORE_INDEX).any()  # answers differ in length: some padding masked

    eval_rows = _rows(docvqa, "validation", 2)
    eval_batch = Florence2VQAEvalCollator(demo_processor)(eval_rows)
    pages = len({row["docId"] for row in eval_rows})
    assert eval_batch["pixel_values"].shape == (pages, 3, IMAGE_SIZE, IMAGE_SIZE)  # one row per distinct page
    whole = Florence2VQAEvalCollator(demo_processor, share_pages=False)(eval_rows)
    assert whole["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and whole["page_index"] == [0, 1]
    assert torch.equal(eval_batch["pixel_values"][eval_batch["page_index"]], whole["pixel_values"])
    assert torch.equal(eval_batch["input_ids"], whole["input_ids"])
    assert eval_batch["answers"] == docvqa["validation"][:2]["answers"]


def test_eval_collator_stops_sharing_pages_when_the_processor_parts_disagree(docvqa, demo_processor, caplog):
    class RewritingProcessor:
        """The demo processor, but its prompt construction differs from what __call__ does."""

        def __init__(self, inner):
            self.inner, self.tokenizer, self.image_processor = inner, inner.tokenizer, inner.image_processor

        def __call__(self, **kwargs):
            return self.inner(**kwargs)

        def _construct_prompts(self, prompts):
            return [prompt + " please" for prompt in prompts]

    rows = _rows(docvqa, "validation", 2)
    collator = Florence2VQAEvalCollator(RewritingProcessor(demo_processor))
    batch = collator(rows)
    assert not collator.share_pages and "not shared" in caplog.text
    assert batch["pixel_values"].shape[0] == 2 and batch["page_index"] == [0, 1]


def test_processor_parts_are_compared_once_per_processor(docvqa, demo_processor):
    class CountingProcessor:
        def __init__(self, inner):
            self.inner, self.tokenizer, self.image_processor = inner, inner.tokenizer, inner.image_processor
            self._construct_prompts = inner._construct_prompts
            self.calls = 0

        def __call__(self, **kwargs):
            self.calls += 1
            return self.inner(**kwargs)

    processor = CountingProcessor(demo_processor)
    rows = _rows(docvqa, "validation", 2)
    for _ in range(3):  # one evaluation after another, each with its own collator
        batch = Florence2VQAEvalCollator(processor)(rows)
        assert batch["pixel_values"].shape[0] == len({row["docId"] for row in rows})
    assert processor.calls == 1


def test_training_collator_prepares_each_distinct_page_once_and_matches_the_whole_processor(
    docvqa, demo_processor, monkeypatch
):
    import florence_patch.training.data as data_module

    by_page = {}
    for row in _rows(docvqa, count=len(docvqa["train"])):
        by_page.setdefault(row["docId"], row)
    first, second, third = list(by_page.values())[:3]
    rows = [first, second, first, third, second]  # pages asked about twice, as in a random batch
    prepared = []
    original = data_module.page_pixels

    def counting(image_processor, pages):
        prepared.append(len(pages))
        return original(image_processor, pages)

    monkeypatch.setattr(data_module, "page_pixels", counting)
    batch = Florence2VQACollator(demo_processor)(rows)
    assert prepared == [3]  # three distinct pages, each prepared once
    images = [to_rgb_image(row["image"]) for row in rows]
    whole = demo_processor(
        text=["<DocVQA>" + row["question"] for row in rows], images=images, return_tensors="pt", padding=True
    )
    assert batch["pixel_values"].shape[0] == 5
    for key in ("pixel_values", "input_ids", "attention_mask"):
        assert torch.equal(batch[key], whole[key]), key
