"""page_pixels: the image processor's own pixel_values, through the shortcut only where it is bit-for-bit equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision")
from transformers import CLIPImageProcessor  # noqa: E402

import florence_patch.training.page_pixels as page_pixels_module  # noqa: E402
from florence_patch.training.page_pixels import _Shortcut, page_pixels  # noqa: E402

FLORENCE_LIKE = dict(
    do_resize=True, size={"height": 64, "width": 64}, resample=3, do_center_crop=False, do_rescale=True,
    rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
)


def _pages(sizes, seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for height, width in sizes]


def _reference(image_processor, pages) -> torch.Tensor:
    return image_processor(pages, return_tensors="pt")["pixel_values"]


def test_shortcut_equals_the_image_processor_bit_for_bit():
    image_processor = CLIPImageProcessor(**FLORENCE_LIKE)
    shortcut = _Shortcut.of(image_processor)
    if shortcut is None:
        pytest.skip("this transformers' CLIPImageProcessor is not the torchvision backend (transformers 4.x)")
    # Two pages of one size (the processor stacks those), larger, smaller and odd-sized ones.
    pages = _pages([(130, 100), (130, 100), (300, 220), (40, 64), (65, 129)])
    pixels = shortcut(image_processor, pages)
    assert pixels.dtype == torch.float32 and pixels.is_contiguous()
    assert torch.equal(pixels, _reference(image_processor, pages))
    assert torch.equal(page_pixels(image_processor, pages), _reference(image_processor, pages))
    assert page_pixels_module._EQUAL.get(image_processor) is True


def test_a_shortcut_that_differs_is_dropped_after_the_first_batch(monkeypatch, caplog):
    image_processor = CLIPImageProcessor(**FLORENCE_LIKE)
    if _Shortcut.of(image_processor) is None:
        pytest.skip("this transformers' CLIPImageProcessor is not the torchvision backend (transformers 4.x)")
    calls = []

    def off_by_a_little(self, image_processor_, pages):
        calls.append(len(pages))
        return _reference(image_processor_, pages) + 1e-3

    monkeypatch.setattr(_Shortcut, "__call__", off_by_a_little)
    pages = _pages([(90, 70), (50, 50)])
    with caplog.at_level("INFO", logger=page_pixels_module.__name__):
        assert torch.equal(page_pixels(image_processor, pages), _reference(image_processor, pages))
    assert "shortcut differs" in caplog.text
    assert page_pixels_module._EQUAL.get(image_processor) is False
    assert torch.equal(page_pixels(image_processor, pages), _reference(image_processor, pages))
    assert calls == [2]  # not tried again


def test_a_shortcut_that_fails_on_this_transformers_is_dropped(monkeypatch, caplog):
    image_processor = CLIPImageProcessor(**FLORENCE_LIKE)
    if _Shortcut.of(image_processor) is None:
        pytest.skip("this transformers' CLIPImageProcessor is not the torchvision backend (transformers 4.x)")

    def renamed_internals(self, image_processor_, pages):
        raise AttributeError("'CLIPImageProcessor' object has no attribute 'rescale_and_normalize'")

    monkeypatch.setattr(_Shortcut, "__call__", renamed_internals)
    pages = _pages([(90, 70)])
    with caplog.at_level("INFO", logger=page_pixels_module.__name__):
        assert torch.equal(page_pixels(image_processor, pages), _reference(image_processor, pages))
    assert "shortcut failed" in caplog.text
    assert page_pixels_module._EQUAL.get(image_processor) is False


@pytest.mark.parametrize(
    "change", [{"do_center_crop": True, "crop_size": {"height": 32, "width": 32}}, {"resample": 1}, {"do_normalize": False}]
)
def test_settings_outside_the_shortcut_go_to_the_processor(change):
    image_processor = CLIPImageProcessor(**{**FLORENCE_LIKE, **change})
    assert _Shortcut.of(image_processor) is None
    pages = _pages([(90, 70)])
    assert torch.equal(page_pixels(image_processor, pages), _reference(image_processor, pages))
