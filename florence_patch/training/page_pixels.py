"""A batch's pages as ``pixel_values``: the image processor's own values, with fewer copies.

transformers' torchvision image processors (``CLIPImageProcessor``, which Florence-2 uses, on
transformers 5) turn each page into a channels-first tensor with a full-size copy, stack the
pages of one size into a batch with another, resize the batch, then rescale and normalise it.
torch's resize takes the page as it comes from PIL (height x width x channels, read as a
channels-last view), so here each page is resized from that view straight into its row of the
batch, and the processor's own ``rescale_and_normalize`` finishes the batch: the same kernels,
without the two full-size copies. On the training bench's 2 cores the processor spent 10 of
its 60 ms a batch of 8 on the copy to channels-first and 6 on the stack (cProfile).

The shortcut covers the settings Florence-2's processor uses (resize to a fixed height and
width, bicubic or bilinear, no crop, no padding, rescale and normalise). Its first batch in a
process is also run through the processor, and unless the two are bit-for-bit equal the
processor is used from then on; any other processor or setting goes to the processor directly.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)


class PerProcessorVerdicts:
    """Whether a comparison made on a first batch came out equal, kept per processor object for the
    life of the process (weakly: a processor that goes away takes its verdict with it)."""

    def __init__(self, *, unkept: bool | None) -> None:
        self._verdicts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._unkept = unkept  # the answer for a processor that can be neither hashed nor weakly referenced

    def get(self, processor: Any) -> bool | None:
        """True or False once compared; None before."""
        try:
            return self._verdicts.get(processor)
        except TypeError:
            return self._unkept

    def remember(self, processor: Any, equal: bool) -> None:
        try:
            self._verdicts[processor] = equal
        except TypeError:
            pass


# Image processors whose shortcut was compared with the processor on a first batch. One whose
# verdict cannot be kept goes to the processor: comparing on every batch would cost both.
_EQUAL = PerProcessorVerdicts(unkept=False)

_RESAMPLE_MODES = {2: "BILINEAR", 3: "BICUBIC"}  # PIL's resampling filter numbers


@dataclass(frozen=True)
class _Shortcut:
    height: int
    width: int
    interpolation: Any  # torchvision's InterpolationMode
    rescale_factor: float
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @classmethod
    def of(cls, image_processor: Any) -> _Shortcut | None:
        """The shortcut's settings for ``image_processor``, or None where it does not apply."""
        try:
            from torchvision.transforms.v2 import InterpolationMode
            from transformers.image_processing_backends import TorchvisionBackend
        except ImportError:  # transformers 4.x, or no torchvision: the processor works as it does
            return None
        if not isinstance(image_processor, TorchvisionBackend):
            return None

        def get(name: str) -> Any:
            return getattr(image_processor, name, None)

        size = get("size")
        height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
        width = size.get("width") if isinstance(size, dict) else getattr(size, "width", None)
        resample = get("resample")
        mode = _RESAMPLE_MODES.get(int(resample)) if isinstance(resample, int) else None
        if not (get("do_resize") and height and width and mode) or get("do_center_crop") or get("do_pad"):
            return None
        if not (get("do_rescale") and get("do_normalize")):
            return None
        mean, std, factor = get("image_mean"), get("image_std"), get("rescale_factor")
        if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and factor):
            return None
        return cls(int(height), int(width), InterpolationMode[mode], float(factor), tuple(mean), tuple(std))

    def __call__(self, image_processor: Any, pages: Sequence[Image.Image]) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as tvF

        resized = torch.empty((len(pages), 3, self.height, self.width), dtype=torch.uint8)
        for row, page in zip(resized, pages):
            channels_last = torch.from_numpy(np.array(page)).permute(2, 0, 1).unsqueeze(0)
            row.copy_(
                tvF.resize(channels_last, [self.height, self.width], interpolation=self.interpolation, antialias=True)[0]
            )
        return image_processor.rescale_and_normalize(
            resized, True, self.rescale_factor, True, self.image_mean, self.image_std
        )


def page_pixels(image_processor: Any, pages: Sequence[Image.Image]) -> torch.Tensor:
    """``image_processor(pages, return_tensors="pt")["pixel_values"]`` for RGB ``pages``, through the
    shortcut where it applies and was found equal to the processor on a first batch."""
    shortcut = _Shortcut.of(image_processor) if pages and all(p.mode == "RGB" for p in pages) else None
    known = _EQUAL.get(image_processor)
    if shortcut is None or known is False:
        return image_processor(list(pages), return_tensors="pt")["pixel_values"]
    if known:
        return shortcut(image_processor, pages)
    reference = image_processor(list(pages), return_tensors="pt")["pixel_values"]
    try:
        pixels = shortcut(image_processor, pages)
    except (AttributeError, TypeError, ValueError, RuntimeError) as error:  # another transformers' internals
        logger.info("pages are prepared by the image processor itself (the shortcut failed: %s)", error)
        _EQUAL.remember(image_processor, False)
        return reference
    equal = pixels.shape == reference.shape and torch.equal(pixels, reference)
    _EQUAL.remember(image_processor, equal)
    if not equal:
        logger.info("pages are prepared by the image processor itself (the shortcut differs from it here)")
        return reference
    return pixels

