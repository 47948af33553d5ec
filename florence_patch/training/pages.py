"""Encode each page once when several questions are asked about it.

DocVQA asks about four questions per page (train: 39,463 questions on 10,194 pages), and the
DaViT vision tower is most of the cost of answering one: about two thirds of a CPU evaluation of
the bench's small shape (torch profile, bench/README.md). The published evaluation loop encodes
the page again for every question. Here evaluation batches keep a page's questions together
(``page_keys``), the batch's distinct pages are found by their pixels (``distinct_pages``), and
``generate_sharing_pages`` runs the vision tower once per distinct page, then hands the language
model exactly the embeddings ``Florence2ForConditionalGeneration.generate`` would have built.
"""

from __future__ import annotations

import hashlib
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


def generate_sharing_pages(
    model,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    page_index: list[int] | None = None,
    **generate_kwargs: Any,
):
    """``model.generate(input_ids=..., pixel_values=...)``, running the vision tower once per distinct page.

    ``page_index[i]``: the row of ``pixel_values`` that question ``i`` asks about (the eval
    collator's output, one row per distinct page). Without it, the rows of ``pixel_values``
    (one per question) are compared to find the repeated pages. Falls back to the plain call
    when no page repeats, or when the model does not have Florence-2's generate() parts.
    """
    if page_index is None:
        first, page_index = distinct_pages(pixel_values)
        pixel_values = pixel_values[first]
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA layers live in it
    repeats = len(pixel_values) < len(page_index)
    if not repeats or not all(callable(getattr(core, name, None)) for name in _SHARED_PAGE_METHODS):
        every = pixel_values[torch.tensor(page_index, device=pixel_values.device)] if repeats else pixel_values
        return model.generate(input_ids=input_ids, pixel_values=every, **generate_kwargs)
    features = core._encode_image(pixel_values)
    features = features[torch.tensor(page_index, device=features.device)]
    embeds = core.get_input_embeddings()(input_ids)
    embeds, _ = core._merge_input_ids_with_image_features(features, embeds)
    return core.generate(input_ids=None, inputs_embeds=embeds, **generate_kwargs)


__all__ = ["distinct_pages", "generate_sharing_pages", "page_keys"]
