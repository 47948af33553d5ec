"""Encode each page once when several questions are asked about it.

DocVQA asks about four questions per page (train: 39,463 questions on 10,194 pages), and the
DaViT vision tower is most of the cost of answering one: about two thirds of a CPU evaluation of
the bench's small shape (torch profile, bench/README.md), and four fifths of a CPU training step
(forward and backward). The published loops encode the page again for every question.

Evaluation: batches keep a page's questions together (``page_keys``), the collator decodes and
prepares each distinct page of a batch once (``data.page_identity``: the stored bytes' hash), and
``generate_sharing_pages`` runs the vision tower once per distinct page, then hands the language
model exactly the embeddings ``Florence2ForConditionalGeneration.generate`` would have built
(given only one ``pixel_values`` row per question, it finds the repeats by their pixels,
``distinct_pages``).

Training (``train --group-by-page``): ``PageGroupedSampler`` orders each epoch page by page, the
collator prepares each distinct page of a batch once, and ``SharedPageEncoder`` makes the model's
own forward encode each once and give every question its page's features. The loss and the
gradients are those of encoding the page once per question (the features' gradients add up where
the copies were taken); only the make-up of the batches changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch

# Florence-2's generate(): pixel_values -> _encode_image -> _merge_input_ids_with_image_features
# -> language_model.generate(inputs_embeds=...). Every published revision has these methods.
_SHARED_PAGE_METHODS = ("_encode_image", "_merge_input_ids_with_image_features", "get_input_embeddings")


def page_keys(dataset, image_column: str) -> list[str] | None:
    """One key per row naming its page (rows with the same key show the same image), or None.

    Hashes the stored image bytes without decoding them (datasets' ``Image(decode=False)``), a
    few rows at a time; a column of paths is keyed by the path. None when the column holds
    something else: then no row is known to share a page.
    """
    import datasets

    feature = dataset.features.get(image_column) if dataset.features else None
    if isinstance(feature, datasets.Image):
        raw = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        keys = []
        for chunk in raw.iter(batch_size=64):
            for value in chunk[image_column]:
                data = (value or {}).get("bytes") or ((value or {}).get("path") or "").encode()
                keys.append(hashlib.blake2b(data, digest_size=16).hexdigest() if data else f"row-{len(keys)}")
        return keys
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return [str(value) for value in dataset[image_column]]
    return None


def distinct_pages(pixel_values: torch.Tensor) -> tuple[list[int], list[int]]:
    """(position of the first row of each distinct image, each row's index among those).

    Rows are grouped by a sample of their pixels, and a row joins a group only if it equals the
    group's first row exactly: hashing every pixel cost about 8 % of a CPU evaluation.
    """
    first: list[int] = []
    index: list[int] = []
    groups: dict[bytes, list[int]] = {}
    stride = max(1, pixel_values.shape[-1] // 16)
    samples = pixel_values[..., ::stride, ::stride].detach().cpu().contiguous()
    for position in range(pixel_values.shape[0]):
        key = samples[position].view(torch.uint8).numpy().tobytes()
        candidates = groups.setdefault(key, [])
        match = next((i for i in candidates if torch.equal(pixel_values[first[i]], pixel_values[position])), None)
        if match is None:
            match = len(first)
            first.append(position)
            candidates.append(match)
        index.append(match)
    return first, index


def _core(model):
    """The Florence-2 model under a peft wrapper (its LoRA layers live in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def generate_sharing_pages(
    model,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    page_index: list[int] | None = None,
    attention_mask: torch.Tensor | None = None,
    **generate_kwargs: Any,
):
    """``model.generate(input_ids=..., pixel_values=...)``, running the vision tower once per distinct page.

    ``page_index[i]``: the row of ``pixel_values`` that question ``i`` asks about (the eval
    collator's output, one row per distinct page). Without it, the rows of ``pixel_values``
    (one per question) are compared to find the repeated pages. ``attention_mask``: the
    prompts' mask (the processor's); the image tokens are put in front of it, so the padding of
    a batch's shorter prompts is not attended to and each answer is the one the question gets
    alone (the ``prompt-padding-mask`` fix makes ``generate(attention_mask=...)`` do the same).
    Without it every position is attended to, as the published code does. Falls back to the
    plain call when no page repeats and there is no mask, or when the model does not have
    Florence-2's generate() parts.
    """
    if page_index is None:
        first, page_index = distinct_pages(pixel_values)
        pixel_values = pixel_values[first]
    core = _core(model)
    repeats = len(pixel_values) < len(page_index)
    masked = {} if attention_mask is None else {"attention_mask": attention_mask}
    if not all(callable(getattr(core, name, None)) for name in _SHARED_PAGE_METHODS) or not (repeats or masked):
        every = pixel_values[torch.tensor(page_index, device=pixel_values.device)] if repeats else pixel_values
        return model.generate(input_ids=input_ids, pixel_values=every, **masked, **generate_kwargs)
    features = core._encode_image(pixel_values)
    features = features[torch.tensor(page_index, device=features.device)]
    embeds = core.get_input_embeddings()(input_ids)
    embeds, merged_mask = core._merge_input_ids_with_image_features(features, embeds)
    if attention_mask is not None:
        # [image tokens, prompt]: the merge's own mask attends to every position
        image_tokens = merged_mask.shape[1] - attention_mask.shape[1]
        merged_mask = torch.cat([merged_mask[:, :image_tokens], attention_mask.to(merged_mask)], dim=1)
        masked = {"attention_mask": merged_mask}
    return core.generate(input_ids=None, inputs_embeds=embeds, **masked, **generate_kwargs)


class PageGroupedSampler(torch.utils.data.Sampler[int]):
    """Every row once an epoch, a page's questions one after another.

    Pages come in a random order, and the questions of a page in a random order, both drawn
    from (seed, epoch): the same in every process and in a resumed run (the Trainer calls
    ``set_epoch``). Cut into batches of eight, DocVQA's order gives batches of two or three pages
    instead of eight; a page whose questions straddle two batches is encoded in each.
    """

    def __init__(self, keys: Sequence[Hashable], seed: int = 0):
        groups: dict[Hashable, list[int]] = {}
        for row, key in enumerate(keys):
            groups.setdefault(key, []).append(row)
        self.groups = list(groups.values())
        self.seed = seed
        self.epoch = 0
        self._rows = len(keys)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._rows

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}:{self.epoch}")  # a string seed: the same in every process
        pages = list(range(len(self.groups)))
        rng.shuffle(pages)
        for page in pages:
            rows = list(self.groups[page])
            rng.shuffle(rows)
            yield from rows


class SharedPageEncoder:
    """Lets a Florence-2 model's own forward take one ``pixel_values`` row per distinct page.

    Installed once on the model (its ``_encode_image``, the vision tower and projection, is
    wrapped on the instance; the weights and what is saved are untouched). Inside
    ``with encoder.pages(page_index):`` the forward encodes the rows it is given and hands
    question ``i`` the features of row ``page_index[i]``; outside, it is the model's own. The
    forward itself is still the one called, so DDP, FSDP and torch.compile see the whole model
    run as usual.
    """

    def __init__(self, model):
        core = _core(model)
        if not callable(getattr(core, "_encode_image", None)):
            raise TypeError(f"{type(core).__name__} has no _encode_image: pages cannot be shared")
        self._encode_image = core._encode_image
        self._page_index: torch.Tensor | None = None
        core._encode_image = self._encode_each_page_once

    def _encode_each_page_once(self, pixel_values, *args, **kwargs):
        features = self._encode_image(pixel_values, *args, **kwargs)
        if self._page_index is None:
            return features
        return features.index_select(0, self._page_index.to(features.device))

    @contextlib.contextmanager
    def pages(self, page_index: torch.Tensor):
        self._page_index = page_index
        try:
            yield
        finally:
            self._page_index = None


__all__ = ["PageGroupedSampler", "SharedPageEncoder", "distinct_pages", "generate_sharing_pages", "page_keys"]
