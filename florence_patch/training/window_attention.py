"""Run DaViT's window attention through ``torch.nn.functional.scaled_dot_product_attention``.

Florence-2's vision tower attends within 12 x 12 windows (``WindowAttention``) by hand:
``softmax((q * scale) @ k^T) @ v``, which materialises every window's attention matrix. At the
base shape's first stage a batch of 8 pages holds 2,048 windows x 4 heads x 144 x 144 of them
(340 MB in bf16), written and read again in the forward and kept for the backward. SDPA
computes the same thing in fused kernels (flash / memory-efficient on GPUs, a flash kernel on
CPUs) and keeps only a log-sum-exp for the backward. On this repository's 2-core CPU
(bench/window_attention.py, bench/RESULTS.md), a forward and backward of the base shape's window
attention modules took 1.47x less time at the first two stages, 1.02-1.07x at the last two, and
what a training forward keeps for backward fell by 13 %; at the small bench shape's 6 x 6
windows the modules are at parity (0.93-1.23x). The GPU figures are still to be measured.

The module's ``forward`` is replaced on the instance, as ``checkpoint_vision_layers`` does:
parameters, state-dict names and the saved remote code stay as they were. The replacement reads
only what every published revision's ``WindowAttention`` (and the demo's) defines: ``qkv``,
``proj``, ``num_heads``, ``window_size`` and ``scale``. Because a fine-tune may carry its own
variant of the code, each class is switched only after its own forward and the replacement agree
on a probe whose grid needs padding on both sides; a class that differs keeps its code, with a
warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

WINDOW_ATTENTION_CLASS = "WindowAttention"
_REQUIRED_ATTRIBUTES = ("qkv", "proj", "num_heads", "window_size", "scale")
# SDPA and the matmul-softmax-matmul chain differ by float rounding only: ~1e-6 in float32.
PROBE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class WindowAttentionSwitch:
    """What ``use_sdpa_window_attention`` did: modules switched, and classes kept with why."""

    switched: int
    kept: tuple[tuple[str, str], ...]  # (class name, reason)


def sdpa_window_attention_forward(self, x, size):
    """``WindowAttention.forward`` of Florence-2, with the attention through SDPA.

    Same inputs, outputs and window layout: the grid is padded on the right and bottom to whole
    windows (the padding takes part in attention, as in the original), split into windows row
    by row, and put back.
    """
    import torch.nn.functional as F

    height, width = size
    batch, tokens, channels = x.shape
    if tokens != height * width:
        raise ValueError("input feature has wrong size")
    window = self.window_size
    heads = self.num_heads
    grid = x.view(batch, height, width, channels)
    pad_right, pad_bottom = (-width) % window, (-height) % window
    if pad_right or pad_bottom:
        grid = F.pad(grid, (0, 0, 0, pad_right, 0, pad_bottom))
    rows, columns = grid.shape[1] // window, grid.shape[2] // window
    windows = (
        grid.view(batch, rows, window, columns, window, channels)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(-1, window * window, channels)
    )
    count, length = windows.shape[:2]
    q, k, v = self.qkv(windows).view(count, length, 3, heads, channels // heads).permute(2, 0, 3, 1, 4).unbind(0)
    attended = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
    windows = self.proj(attended.transpose(1, 2).reshape(count, length, channels))
    grid = (
        windows.view(batch, rows, columns, window, window, channels)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(batch, rows * window, columns * window, channels)
    )
    if pad_right or pad_bottom:
        grid = grid[:, :height, :width, :]
    return grid.reshape(batch, height * width, channels), size


def window_attention_modules(model) -> list[Any]:
    """The DaViT ``WindowAttention`` modules of ``model`` that have what the SDPA forward reads."""
    return [
        module
        for module in model.modules()
        if type(module).__name__ == WINDOW_ATTENTION_CLASS
        and all(hasattr(module, name) for name in _REQUIRED_ATTRIBUTES)
    ]


def probe_difference(module) -> float:
    """Largest absolute difference between the module's own forward and the SDPA one, relative to
    the output's scale, on a random grid that needs padding on both sides.

    Run on a float32 CPU copy of the module, so that the verdict is the code's, not the rounding
    of the dtype or device the model happens to be in.
    """
    import copy

    import torch

    probe = copy.deepcopy(module).to("cpu", torch.float32)
    window = int(probe.window_size)
    height, width = window + 3, 2 * window - 1
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, height * width, probe.qkv.in_features, generator=generator)
    with torch.no_grad():
        expected, expected_size = type(probe).forward(probe, x, (height, width))
        actual, actual_size = sdpa_window_attention_forward(probe, x, (height, width))
    if tuple(expected_size) != tuple(actual_size) or expected.shape != actual.shape:
        return float("inf")
    scale = expected.abs().max().clamp_min(1.0)
    return float(((expected - actual).abs().max() / scale).item())


def use_sdpa_window_attention(model) -> WindowAttentionSwitch:
    """Switch every DaViT ``WindowAttention`` of ``model`` whose class passes the probe to SDPA."""
    verdicts: dict[type, str | None] = {}  # class -> None (switch) or why it keeps its code
    switched = 0
    for module in window_attention_modules(model):
        if _is_switched(module):
            switched += 1
            continue
        cls = type(module)
        if cls not in verdicts:
            verdicts[cls] = _verdict(module)
            if verdicts[cls] is not None:
                logger.warning("%s keeps its own attention code: %s", cls.__name__, verdicts[cls])
        if verdicts[cls] is None:
            module.forward = sdpa_window_attention_forward.__get__(module)
            switched += 1
    kept = tuple((cls.__name__, reason) for cls, reason in verdicts.items() if reason is not None)
    return WindowAttentionSwitch(switched=switched, kept=kept)


def _is_switched(module) -> bool:
    forward = vars(module).get("forward")
    return getattr(forward, "__func__", None) is sdpa_window_attention_forward


def _verdict(module) -> str | None:
    if "forward" in vars(module):
        return "its forward was already replaced on the instance (by something else)"
    try:
        difference = probe_difference(module)
    except (RuntimeError, ValueError, TypeError, AttributeError) as error:
        return f"the SDPA form fails on its probe ({type(error).__name__}: {error})"
    if not difference <= PROBE_TOLERANCE:
        return f"the SDPA form differs from it by {difference:.3g} on a probe (tolerance {PROBE_TOLERANCE:g})"
    return None
