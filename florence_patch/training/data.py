"""The data side of fine-tuning: load a VQA split, and turn its rows into Florence-2 batches.

Engine-agnostic: nothing here knows about optimisers or accelerators. The collators run inside
DataLoader worker processes (``num_workers > 0``), so they are plain picklable objects (no
lambdas, no open files) and do all the per-example work there -- image decoding, RGB
conversion, and the processor's resize and normalise -- off the training process's thread.
"""

from __future__ import annotations

import glob
import hashlib
import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import datasets
import torch
from PIL import Image

from florence_patch.errors import UsageError
from florence_patch.training.page_pixels import PerProcessorVerdicts, page_pixels

logger = logging.getLogger(__name__)

DOCVQA_HUB_ID = "HuggingFaceM4/DocumentVQA"
DEFAULT_TASK_PROMPT = "<DocVQA>"
# Florence-2's decoder has 1024 positions; a longer label could not be trained on.
DEFAULT_MAX_TARGET_LENGTH = 1024
IGNORE_INDEX = -100  # label value the cross-entropy loss skips


class DataError(UsageError, ValueError):
    """The data cannot be used as asked: a split or column is missing, or a row is malformed.

    A UsageError for the CLI's exit code, and a ValueError for callers outside it.
    """


@dataclass(frozen=True)
class VQAColumns:
    """Which columns hold what, so VQA-style sets other than DocVQA can be used as they are.

    ``question_types`` and ``question_id`` are optional (None: the set has no such column).
    """

    question: str = "question"
    answers: str = "answers"
    image: str = "image"
    question_types: str | None = "question_types"
    question_id: str | None = "questionId"

    @property
    def required(self) -> tuple[str, ...]:
        return (self.question, self.answers, self.image)


# ---------------------------------------------------------------------------------------------
# Loading.

AnyDataset = datasets.Dataset | datasets.IterableDataset


def _is_saved_to_disk(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``save_to_disk`` (Dataset or DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _is_parquet_files(source: str) -> bool:
    return source.endswith(".parquet") or any(character in source for character in "*?[")


def _load_saved(path: Path, split: str, streaming: bool) -> AnyDataset:
    saved = datasets.load_from_disk(str(path))
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(f"{path} has no split {split!r}; it has: {', '.join(saved)}")
        dataset = saved[split]
    elif saved.split is not None and str(saved.split) != split:
        # A lone saved Dataset remembers the split it was taken from; asking for another is a mistake.
        raise DataError(f"{path} holds the {str(saved.split)!r} split, not {split!r}")
    else:
        dataset = saved
    return dataset.to_iterable_dataset() if streaming else dataset


def _load_parquet(source: str, split: str, streaming: bool, cache_dir: str | None) -> AnyDataset:
    if "://" not in source and not glob.glob(source):
        raise DataError(f"no parquet file matches {source}")
    # The caller names the split the files make up.
    return datasets.load_dataset(
        "parquet", data_files={split: source}, split=split, streaming=streaming, cache_dir=cache_dir
    )


def _load_hub_or_data_dir(
    source: str, split: str, streaming: bool, revision: str | None, cache_dir: str | None
) -> AnyDataset:
    try:
        return datasets.load_dataset(
            source, split=split, streaming=streaming, revision=revision, cache_dir=cache_dir
        )
    except ValueError as error:
        # datasets reports an unknown split as a plain ValueError ("Unknown split ...",
        # "Bad split: ..."); other ValueErrors are not ours to reword.
        if "split" not in str(error).lower():
            raise
        message = " ".join(str(error).split())
        raise DataError(f"{source} has no split {split!r}: {message}") from error


def _column_names(dataset: AnyDataset) -> list[str] | None:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    if dataset.features is not None:
        return list(dataset.features)
    return None  # a stream whose schema is unknown until read; the collator checks each row


def load_vqa_split(
    source: str,
    split: str,
    *,
    streaming: bool = False,
    revision: str | None = None,
    cache_dir: str | None = None,
    columns: VQAColumns = VQAColumns(),
) -> AnyDataset:
    """Load one split of a VQA set.

    ``source`` is one of:

    * a directory written by ``save_to_disk`` (a DatasetDict, or a single Dataset);
    * a parquet file or a glob of them (``*.parquet``): the files make up ``split``;
    * anything ``datasets.load_dataset`` takes as its path: a hub dataset id such as
      ``HuggingFaceM4/DocumentVQA`` (``revision`` and ``cache_dir`` apply), or a local
      directory laid out like a hub dataset repo (``data/train-00000-of-00001.parquet``, ...).

    Raises DataError (one line) when the split or one of ``columns.required`` is missing.
    """
    path = Path(source)
    if path.is_dir() and _is_saved_to_disk(path):
        if revision is not None:
            raise DataError(f"revision={revision!r} applies to hub datasets; {source} is a saved dataset")
        dataset = _load_saved(path, split, streaming)
    elif _is_parquet_files(source):
        if revision is not None:
            raise DataError(f"revision={revision!r} applies to hub datasets; {source} names parquet files")
        dataset = _load_parquet(source, split, streaming, cache_dir)
    else:
        dataset = _load_hub_or_data_dir(source, split, streaming, revision, cache_dir)

    present = _column_names(dataset)
    if present is not None:
        missing = [name for name in columns.required if name not in present]
        if missing:
            raise DataError(
                f"{source} [{split}] lacks column(s) {', '.join(missing)}; it has: {', '.join(present)} "
                f"(name other columns with VQAColumns)"
            )
    return dataset


# ---------------------------------------------------------------------------------------------
# Rows to tensors.


def to_rgb_image(value: Any) -> Image.Image:
    """A page as an RGB PIL image, from a PIL image, encoded bytes, a path, or a datasets
    Image cell left undecoded (``{"bytes": ..., "path": ...}``)."""
    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path") is not None:
            value = value["path"]
        else:
            raise DataError("image cell has neither bytes nor path")
    if isinstance(value, (bytes, bytearray)):
        source: Any = io.BytesIO(value)
    elif isinstance(value, (str, Path)):
        source = value
    else:
        raise DataError(f"cannot read an image from a {type(value).__name__}")
    with Image.open(source) as image:  # convert() loads the pixels; the file closes here
        return image.convert("RGB")


def page_identity(value: Any) -> tuple:
    """A key that two image cells share when they hold the same page, found without decoding
    where the cell allows: the hash of its stored bytes, its path, or (a decoded image) the hash
    of its pixels. The same page stored twice in two encodings counts as two pages."""
    if isinstance(value, Image.Image):
        return ("pixels", value.size, value.mode, hashlib.blake2b(value.tobytes(), digest_size=16).digest())
    if isinstance(value, Mapping):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", hashlib.blake2b(value, digest_size=16).digest())
    if isinstance(value, (str, Path)):
        return ("path", str(value))
    return ("cell", id(value))  # unreadable: to_rgb_image says why


def with_undecoded_images(dataset: AnyDataset, column: str) -> AnyDataset:
    """``dataset`` with its image column left encoded (datasets' ``Image(decode=False)``).

    The DataLoader would decode every row's page when it fetches the row; the collators decode
    each distinct page of a batch once instead (DocVQA asks about four questions a page, and
    decoding a page costs about as much as resizing it). Other columns, and streams whose schema
    is unknown, are returned as they are.
    """
    feature = dataset.features.get(column) if dataset.features else None
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


# Processors whose parts (tokenizer + prompt construction, image processor) were compared with the
# whole processor on a first batch: one comparison per processor and process, not per collator.
# A processor whose verdict cannot be kept is compared again by each collator.
_PARTS_MATCH = PerProcessorVerdicts(unkept=None)


def _field(example: Mapping[str, Any], column: str) -> Any:
    try:
        return example[column]
    except KeyError:
        raise DataError(
            f"row lacks column {column!r}; it has: {', '.join(example)} (name other columns with VQAColumns)"
        ) from None


def _answer_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # sets with one answer per question
        return [value]
    return [str(answer) for answer in value]


class _Florence2Inputs:
    """Prompt + page -> input_ids, attention_mask, pixel_values, via the Florence-2 processor."""

    def __init__(self, processor: Any, *, task_prompt: str, columns: VQAColumns, share_pages: bool):
        self.processor = processor
        self.task_prompt = task_prompt
        self.columns = columns
        self.share_pages = share_pages
        self._parts_usable: bool | None = None  # None: not compared with the whole processor yet

    def _prompts_and_pages(
        self, examples: Sequence[Mapping[str, Any]]
    ) -> tuple[list[str], list[Image.Image], list[int]]:
        """The prompts, the batch's distinct pages (each decoded once, RGB), and each example's page."""
        if not examples:
            raise DataError("cannot collate an empty batch")
        prompts = [f"{self.task_prompt}{_field(example, self.columns.question)}" for example in examples]
        pages: list[Image.Image] = []
        index: list[int] = []
        seen: dict[tuple, int] = {}
        for example in examples:
            cell = _field(example, self.columns.image)
            key = page_identity(cell)
            if key not in seen:
                seen[key] = len(pages)
                pages.append(to_rgb_image(cell))
            index.append(seen[key])
        return prompts, pages, index

    def _encode_inputs(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        prompts, pages, index = self._prompts_and_pages(examples)
        images = [pages[i] for i in index]
        encoded = self.processor(text=prompts, images=images, return_tensors="pt", padding=True)
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "pixel_values": encoded["pixel_values"],
        }

    def _encode_sharing_pages(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        processor = self.processor
        construct = getattr(processor, "_construct_prompts", None)
        if construct is None or getattr(processor, "image_processor", None) is None:
            return None
        prompts, pages, index = self._prompts_and_pages(examples)
        text = processor.tokenizer(construct(prompts), return_tensors="pt", padding=True, return_token_type_ids=False)
        pixel_values = page_pixels(processor.image_processor, pages)
        return {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values": pixel_values,
            "page_index": index,
        }

    def _encode_parts(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The model inputs through the processor's parts (one ``pixel_values`` row per distinct page,
        and ``page_index``), or None where the processor cannot be split or its parts give other
        inputs than the whole processor (compared on a first batch, once per processor)."""
        if self._parts_usable is False:
            return None
        parts = self._encode_sharing_pages(examples)
        if parts is None:
            self._parts_usable = False
            return None
        if self._parts_usable is None:
            same = _PARTS_MATCH.get(self.processor)
            if same is None:
                whole = self._encode_inputs(examples)
                same = (
                    torch.equal(whole["input_ids"], parts["input_ids"])
                    and torch.equal(whole["attention_mask"], parts["attention_mask"])
                    and torch.equal(whole["pixel_values"], parts["pixel_values"][parts["page_index"]])
                )
                _PARTS_MATCH.remember(self.processor, same)
            self._parts_usable = same
            if not same:
                logger.warning(
                    "the processor's parts give other inputs than the whole processor: pages are not shared, "
                    "the whole processor prepares each batch"
                )
                return None
        return parts

    def _encode_pages(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The model inputs with one ``pixel_values`` row per distinct page and ``page_index``
        naming each example's row (see the collators' docstrings); the identity without sharing."""
        shared = self._encode_parts(examples) if self.share_pages else None
        if shared is None:
            self.share_pages = self.share_pages and self._parts_usable is not False
            shared = {**self._encode_inputs(examples), "page_index": list(range(len(examples)))}
        return shared

    def _encode_each_page(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The model inputs with one ``pixel_values`` row per example: each distinct page is
        prepared once (``page_pixels``) and repeated for the questions that ask about it."""
        parts = self._encode_parts(examples)
        if parts is None:
            return self._encode_inputs(examples)
        index = parts.pop("page_index")
        if index != list(range(len(examples))):
            parts["pixel_values"] = parts["pixel_values"][torch.tensor(index)]
        return parts


class Florence2VQACollator(_Florence2Inputs):
    """Training batches: the model inputs plus ``labels`` (the answer's token ids, padding -100).

    The label is the first gold answer, or with ``answer_choice="random"`` one gold answer
    drawn from (seed, epoch, question) -- the same in every worker process and every run.
    Call :meth:`set_epoch` before each epoch; it reaches the workers when they are started
    for the epoch (DataLoader's default ``persistent_workers=False``).

    Labels longer than ``max_target_length`` tokens are truncated, with one warning per
    collator (per worker process, since each worker has its own copy).

    With ``share_pages`` (``train --group-by-page``), questions about the same page share it as
    in evaluation: ``pixel_values`` holds one row per distinct page of the batch and the tensor
    ``page_index`` names each question's row, for ``pages.SharedPageEncoder``.
    """

    def __init__(
        self,
        processor: Any,
        *,
        task_prompt: str = DEFAULT_TASK_PROMPT,
        columns: VQAColumns = VQAColumns(),
        max_target_length: int = DEFAULT_MAX_TARGET_LENGTH,
        answer_choice: Literal["first", "random"] = "first",
        seed: int = 0,
        share_pages: bool = False,
    ):
        super().__init__(processor, task_prompt=task_prompt, columns=columns, share_pages=share_pages)
        if answer_choice not in ("first", "random"):
            raise ValueError(f"answer_choice must be 'first' or 'random', not {answer_choice!r}")
        if max_target_length < 2:
            raise ValueError("max_target_length must leave room for the answer's start and end tokens")
        self.max_target_length = max_target_length
        self.answer_choice = answer_choice
        self.seed = seed
        self.epoch = 0
        self._warned_truncation = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def choose_answer(self, example: Mapping[str, Any]) -> str:
        answers = _answer_list(_field(example, self.columns.answers))
        if not answers:
            raise DataError(
                f"row has no gold answer in {self.columns.answers!r}; training needs one "
                "(DocVQA's test split is unannotated)"
            )
        if self.answer_choice == "first" or len(answers) == 1:
            return answers[0]
        if self.columns.question_id is not None and self.columns.question_id in example:
            question_key = str(example[self.columns.question_id])
        else:
            question_key = "\x1f".join([str(example[self.columns.question]), *answers])
        # String seeds are hashed with SHA-512: stable across processes, unlike hash().
        rng = random.Random(f"{self.seed}:{self.epoch}:{question_key}")
        return rng.choice(answers)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if self.share_pages:
            batch = self._encode_pages(examples)
            batch["page_index"] = torch.tensor(batch["page_index"], dtype=torch.long)
        else:
            batch = self._encode_each_page(examples)
        targets = [self.choose_answer(example) for example in examples]
        tokenizer = self.processor.tokenizer
        # Probe one token past the limit: enough to see an overflow, and it keeps the
        # tokenizer from printing its own over-length warning.
        probe = tokenizer(targets, truncation=True, max_length=self.max_target_length + 1)
        too_long = sum(len(ids) > self.max_target_length for ids in probe["input_ids"])
        if too_long and not self._warned_truncation:
            logger.warning(
                "%d answer(s) in a batch exceed max_target_length=%d tokens and are truncated "
                "(this warning is shown once)",
                too_long,
                self.max_target_length,
            )
            self._warned_truncation = True
        encoded = tokenizer(
            targets,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_target_length,
            return_token_type_ids=False,
        )
        batch["labels"] = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, IGNORE_INDEX)
        return batch


class Florence2VQAEvalCollator(_Florence2Inputs):
    """Evaluation batches: the model inputs, with each row's gold answers, question id,
    question and question types kept alongside (lists, in batch order) for scoring.

    Questions about the same page share it: ``pixel_values`` holds one row per distinct page
    and ``page_index`` names each question's row, so the processor resizes and normalises a
    page once and the model encodes it once (``pages.generate_sharing_pages``). That splits the
    processor into its image processor and its tokenizer (with its own prompt construction);
    the first batch a process collates with a processor is also run through the whole
    processor, and if the two differ the collator goes back to the whole processor for good.
    Without ``share_pages``, or for a processor that cannot be split, every question carries its
    own page (``page_index`` is then the identity).

    Rows without answers (a test split) are fine here: they are predicted, not scored.
    """

    def __init__(
        self,
        processor: Any,
        *,
        task_prompt: str = DEFAULT_TASK_PROMPT,
        columns: VQAColumns = VQAColumns(),
        share_pages: bool = True,
    ):
        super().__init__(processor, task_prompt=task_prompt, columns=columns, share_pages=share_pages)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self._encode_pages(examples)
        columns = self.columns
        batch["answers"] = [_answer_list(_field(example, columns.answers)) for example in examples]
        batch["questions"] = [str(_field(example, columns.question)) for example in examples]
        batch["question_ids"] = [
            example.get(columns.question_id) if columns.question_id is not None else None
            for example in examples
        ]
        batch["question_types"] = [
            list(example.get(columns.question_types) or []) if columns.question_types is not None else []
            for example in examples
        ]
        return batch
