"""Run DaViT's window attention through ``torch.nn.functional.scaled_dot_product_attention``.

Florence-2's vision tower attends within 12 x 12 windows (``WindowAttention``) by hand:
``softmax((q * scale) @ k^T) @ v``, which materialises every window's attention matrix. At the
base shape's first stage a batch of 8 pages holds 2,048 windows x 4 heads x 144 x 144 of them
(340 MB in bf16), written and read again in the forward and kept for the backward. SDPA
computes the same thing in fused kernels (flash / memory-efficient on GPUs, a flash kernel on
CPUs) and keeps only a log-sum-exp for the backward.

Which form is faster depends on the shapes and the device. On this repository's 2-core CPU
(bench/window_attention.py, bench/RESULTS.md) SDPA made the base shape's window attention 1.17x
faster a tower pass (1.47-1.49x at the first two stages), but at the small bench shape's 6 x 6
windows (16 channels a head) the modules ran at 0.90-1.03x, and whole training steps of that
model at 0.99-1.02x, the backward 2-4 % longer. What a training forward keeps for backward falls
either way (13 % at the base shape). So when told how the model will run
(:class:`AttentionRun`: page size, batch, device, mixed precision, whether gradients flow), each
distinct configuration (width, heads, window, token grid) is timed both ways on a copy, as
cuDNN's benchmark mode times its algorithms, and switched only where SDPA was faster. The GPU
figures are still to be measured.

The module's ``forward`` is replaced on the instance, as ``checkpoint_vision_layers`` does:
parameters, state-dict names and the saved remote code stay as they were. The replacement reads
only what every published revision's ``WindowAttention`` (and the demo's) defines: ``qkv``,
``proj``, ``num_heads``, ``window_size`` and ``scale``. Because a fine-tune may carry its own
variant of the code, each class is switched only after its own forward and the replacement agree
on a probe whose grid needs padding on both sides; a class that differs keeps its code, with a
warning.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

WINDOW_ATTENTION_CLASS = "WindowAttention"
_REQUIRED_ATTRIBUTES = ("qkv", "proj", "num_heads", "window_size", "scale")
# SDPA and the matmul-softmax-matmul chain differ by float rounding only: ~1e-6 in float32.
PROBE_TOLERANCE = 1e-4
# Windows timed at least (on a CPU): with fewer, fixed costs decide and the verdict can flip with
# the batch (the small shape's last stage, 4 windows a page: SDPA 2.1 against 2.2 ms on one page,
# 15.9 against 10.9 ms on eight).
MIN_TIMED_WINDOWS = 256


@dataclass(frozen=True)
class AttentionRun:
    """How the model's window attention will run: what the two forms are timed on.

    ``autocast_dtype``: the mixed precision a training step runs under (None: the weights' own
    dtype). ``backward``: whether gradients flow through the vision tower (not when it is
    frozen, nor in generation).
    """

    image_size: tuple[int, int]  # (height, width) of the pixel_values the processor makes
    batch_size: int
    device: str = "cpu"
    autocast_dtype: Any = None
    backward: bool = True

    def pages_to_time(self, windows_per_page: int) -> int:
        """A batch on a GPU. On a CPU, whose time grows with the windows once its threads have
        enough of them, only enough pages for MIN_TIMED_WINDOWS: one page at the first stages,
        where a batch would take seconds a run; the batch where a page has few windows."""
        if not self.device.startswith("cpu"):
            return self.batch_size
        return min(self.batch_size, max(1, -(-MIN_TIMED_WINDOWS // max(1, windows_per_page))))


@dataclass(frozen=True)
class FormTiming:
    """One window-attention configuration, timed as the model writes it and through SDPA."""

    configuration: str  # "width 16, 1 head, window 6, 96x96 tokens"
    modules: int  # how many modules of the model have this configuration
    own_ms: float  # best of the repeats, forward (and backward when gradients flow)
    sdpa_ms: float

    @property
    def sdpa_faster(self) -> bool:
        return self.sdpa_ms < self.own_ms


@dataclass(frozen=True)
class WindowAttentionSwitch:
    """What ``use_sdpa_window_attention`` did: modules switched, classes kept with why, and the timings."""

    switched: int
    kept: tuple[tuple[str, str], ...]  # (class name, reason)
    timings: tuple[FormTiming, ...] = ()  # when timed: one per configuration
    untimed: str | None = None  # why a timed switch fell back to switching every agreeing module


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


def use_sdpa_window_attention(model, run: AttentionRun | None = None) -> WindowAttentionSwitch:
    """Switch the DaViT ``WindowAttention`` modules of ``model`` (the vision tower) to SDPA.

    A class is switched only if it passes the probe. Given ``run``, a module is switched only
    if its configuration was faster through SDPA on ``run``'s device, shapes and precision;
    without it (or when the tower's token grids cannot be found), every agreeing module is.
    """
    verdicts: dict[type, str | None] = {}  # class -> None (switch) or why it keeps its code
    switched = 0
    candidates = []
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
            candidates.append(module)
    timings: list[FormTiming] = []
    untimed = None
    if run is not None and candidates:
        grids = input_grids(model, run.image_size)
        if isinstance(grids, str):
            untimed = grids
            logger.warning("window attention not timed (%s): every agreeing module is switched", untimed)
        else:
            candidates, timings = _faster_through_sdpa(candidates, grids, run)
    for module in candidates:
        module.forward = sdpa_window_attention_forward.__get__(module)
        switched += 1
    kept = tuple((cls.__name__, reason) for cls, reason in verdicts.items() if reason is not None)
    return WindowAttentionSwitch(switched=switched, kept=kept, timings=tuple(timings), untimed=untimed)


def input_grids(tower, image_size: tuple[int, int]) -> dict[int, tuple[int, int]] | str:
    """``id(module) -> (height, width)`` of the token grid each window-attention module of the
    vision tower sees for one page of ``image_size``, found by running the tower once on a
    blank page; or why they could not be found."""
    import torch

    modules = window_attention_modules(tower)
    grids: dict[int, tuple[int, int]] = {}

    def record(module, args, kwargs):
        size = args[1] if len(args) > 1 else kwargs.get("size")
        if size is not None:
            grids[id(module)] = (int(size[0]), int(size[1]))

    parameter = next(tower.parameters(), None)
    if parameter is None:
        return "the vision tower has no parameters"
    # The tower's own entry point up to the image tokens (every published DaViT has it).
    run_tower = getattr(tower, "forward_features_unpool", None) or tower
    page = torch.zeros(1, 3, *image_size, dtype=parameter.dtype, device=parameter.device)
    hooks = [module.register_forward_pre_hook(record, with_kwargs=True) for module in modules]
    try:
        with torch.no_grad():
            run_tower(page)
    except (RuntimeError, ValueError, TypeError, AttributeError) as error:
        return f"the tower did not run on a blank {image_size[0]}x{image_size[1]} page: {type(error).__name__}: {error}"
    finally:
        for hook in hooks:
            hook.remove()
    if not grids:
        return "no window-attention module was called on a blank page"
    return grids


def time_forms(module, grid: tuple[int, int], run: AttentionRun, *, repeats: int = 2) -> tuple[float, float]:
    """(own, SDPA) seconds for ``module``'s forward (and backward, as ``run`` says) on ``grid``,
    the best of ``repeats`` interleaved runs after one warm-up each, on a copy on ``run.device``."""
    import torch

    probe = copy.deepcopy(module).to(run.device)
    dtype = next(probe.parameters()).dtype
    device = torch.device(run.device)
    generator = torch.Generator().manual_seed(0)
    window = int(probe.window_size)
    pages = run.pages_to_time(-(-grid[0] // window) * -(-grid[1] // window))
    x = torch.randn(pages, grid[0] * grid[1], probe.qkv.in_features, generator=generator)
    x = x.to(device=device, dtype=dtype)
    forms: dict[str, Callable[[Any], Any]] = {
        "own": lambda inputs: type(probe).forward(probe, inputs, grid)[0],
        "sdpa": lambda inputs: sdpa_window_attention_forward(probe, inputs, grid)[0],
    }

    def synchronize() -> None:
        # Kernels run asynchronously on an accelerator: wait for them (torch.cuda, torch.mps, torch.xpu).
        # CUDA is told which device: a rank of torchrun may time on cuda:k before making it current.
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return
        backend = getattr(torch, device.type, None) if device.type != "cpu" else None
        if backend is not None and callable(getattr(backend, "synchronize", None)):
            backend.synchronize()

    def once(form: str) -> float:
        inputs = x.detach().requires_grad_(run.backward)
        autocast = (
            torch.autocast(device_type=device.type, dtype=run.autocast_dtype)
            if run.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        synchronize()
        started = time.perf_counter()
        with torch.set_grad_enabled(run.backward), autocast:
            out = forms[form](inputs)
        if run.backward:
            out.float().sum().backward()
        synchronize()
        return time.perf_counter() - started

    for form in forms:  # warm-up: the allocator, kernel selection
        once(form)
    best = dict.fromkeys(forms, float("inf"))
    for repeat in range(repeats):
        for form in forms if repeat % 2 == 0 else reversed(list(forms)):
            best[form] = min(best[form], once(form))
    return best["own"], best["sdpa"]


def _configuration(module, grid: tuple[int, int]) -> tuple:
    return (type(module), module.qkv.in_features, int(module.num_heads), int(module.window_size), grid)


def _faster_through_sdpa(modules: list, grids: dict[int, tuple[int, int]], run: AttentionRun):
    """(modules to switch, one FormTiming per configuration): those whose configuration ran faster through SDPA."""
    groups: dict[tuple, list] = {}
    for module in modules:
        grid = grids.get(id(module))
        if grid is not None:  # a module the tower never calls keeps its code: it costs nothing
            groups.setdefault(_configuration(module, grid), []).append(module)
    switch, timings = [], []
    for (_, width, heads, window, grid), members in groups.items():
        own, sdpa = time_forms(members[0], grid, run)
        timing = FormTiming(
            configuration=f"width {width}, {heads} head{'s' if heads != 1 else ''}, window {window}, {grid[0]}x{grid[1]} tokens",
            modules=len(members),
            own_ms=round(own * 1000, 2),
            sdpa_ms=round(sdpa * 1000, 2),
        )
        timings.append(timing)
        if timing.sdpa_faster:
            switch.extend(members)
    return switch, timings


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
