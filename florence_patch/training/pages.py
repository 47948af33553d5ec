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
    """(position of the first row of each distinct image, each row's index among those)."""
    first: list[int] = []
    index: list[int] = []
    seen: dict[bytes, int] = {}
    for position, image in enumerate(pixel_values):
        key = hashlib.blake2b(image.detach().cpu().contiguous().view(torch.uint8).numpy(), digest_size=16).digest()
        if key not in seen:
            seen[key] = len(first)
            first.append(position)
        index.append(seen[key])
    return first, index


def generate_sharing_pages(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, **generate_kwargs: Any):
    """``model.generate(input_ids=..., pixel_values=...)``, running the vision tower once per distinct page.

    Falls back to the plain call when every page in the batch is distinct, or when the model
    does not have Florence-2's generate() parts.
    """
    first, index = distinct_pages(pixel_values)
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA layers live in it
    if len(first) == len(index) or not all(callable(getattr(core, name, None)) for name in _SHARED_PAGE_METHODS):
        return model.generate(input_ids=input_ids, pixel_values=pixel_values, **generate_kwargs)
    features = core._encode_image(pixel_values[first])
    features = features[torch.tensor(index, device=features.device)]
    embeds = core.get_input_embeddings()(input_ids)
    embeds, _ = core._merge_input_ids_with_image_features(features, embeds)
    return core.generate(input_ids=None, inputs_embeds=embeds, **generate_kwargs)


__all__ = ["distinct_pages", "generate_sharing_pages", "page_keys"]
