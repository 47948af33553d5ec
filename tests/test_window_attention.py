"""--vision-sdpa: DaViT's window attention through torch's SDPA, the same maths, checked per class."""

from __future__ import annotations

import textwrap
import time

import pytest
import torch
from torch import nn

from florence_patch.training.window_attention import (
    MIN_TIMED_WINDOWS,
    AttentionRun,
    input_grids,
    probe_difference,
    use_sdpa_window_attention,
)

from .conftest import DEMO_TRAINING_STEP, run_with_demo_checkpoint


class WindowAttention(nn.Module):
    """Window attention written window by window (an independent formulation of Florence-2's)."""

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def attend(self, q, k, v):
        weights = torch.einsum("bhqd,bhkd->bhqk", q * self.scale, k).softmax(dim=-1)
        return torch.einsum("bhqk,bhkd->bhqd", weights, v)

    def forward(self, x, size):
        height, width = size
        batch, _, channels = x.shape
        window, heads = self.window_size, self.num_heads
        grid = nn.functional.pad(x.view(batch, height, width, channels), (0, 0, 0, (-width) % window, 0, (-height) % window))
        out = torch.zeros_like(grid)
        for top in range(0, grid.shape[1], window):
            for left in range(0, grid.shape[2], window):
                cell = grid[:, top : top + window, left : left + window].reshape(batch, window * window, channels)
                q, k, v = self.qkv(cell).view(batch, -1, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
                mixed = self.attend(q, k, v).transpose(1, 2).reshape(batch, window * window, channels)
                out[:, top : top + window, left : left + window] = self.proj(mixed).view(batch, window, window, channels)
        return out[:, :height, :width].reshape(batch, height * width, channels), size


def _with_bias_forward(self, x, size):
    # A fine-tune's variant: a learned offset on the attention logits, which SDPA's form lacks.
    out, size = WindowAttention.forward(self, x, size)
    return out + 0.5, size


BiasedWindowAttention = type("WindowAttention", (WindowAttention,), {"forward": _with_bias_forward})


class Tower(nn.Module):
    def __init__(self, *blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, size):
        for block in self.blocks:
            x = x + block(x, size)[0]
        return x


def _run(tower, x, size):
    tower.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = tower(x, size)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), x.grad, {name: p.grad.clone() for name, p in tower.named_parameters()}


@pytest.mark.parametrize("size", [(12, 12), (7, 10), (5, 3)])  # whole windows, padding on both sides, one window
def test_switched_attention_gives_the_same_outputs_and_gradients(size):
    torch.manual_seed(0)
    tower = Tower(WindowAttention(16, 2, 6), WindowAttention(16, 4, 6))
    x = torch.randn(3, size[0] * size[1], 16)
    expected = _run(tower, x, size)
    switch = use_sdpa_window_attention(tower)
    assert (switch.switched, switch.kept) == (2, ())
    assert all("forward" in vars(block) for block in tower.blocks)
    actual = _run(tower, x, size)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-5, atol=1e-5)
    for name, gradient in expected[2].items():
        torch.testing.assert_close(actual[2][name], gradient, rtol=1e-4, atol=1e-5)


def test_a_class_with_other_maths_keeps_its_code():
    torch.manual_seed(0)
    tower = Tower(WindowAttention(16, 2, 4), BiasedWindowAttention(16, 2, 4), BiasedWindowAttention(16, 2, 4))
    assert probe_difference(tower.blocks[1]) > 0.1
    switch = use_sdpa_window_attention(tower)
    assert switch.switched == 1
    assert [name for name, _ in switch.kept] == ["WindowAttention"]
    assert "differs from it by" in switch.kept[0][1]
    assert "forward" in vars(tower.blocks[0]) and "forward" not in vars(tower.blocks[1])


def test_switching_twice_changes_nothing_and_other_wrappers_are_left_alone():
    tower = Tower(WindowAttention(8, 1, 2), WindowAttention(8, 1, 2))
    first = use_sdpa_window_attention(tower)
    forwards = [vars(block)["forward"] for block in tower.blocks]
    assert use_sdpa_window_attention(tower) == first
    assert [vars(block)["forward"] for block in tower.blocks] == forwards

    wrapped = Tower(WindowAttention(8, 1, 2))
    wrapped.blocks[0].forward = lambda x, size: (x, size)
    switch = use_sdpa_window_attention(wrapped)
    assert switch.switched == 0 and "already replaced" in switch.kept[0][1]


def test_the_probe_runs_on_a_float32_copy():
    module = WindowAttention(16, 2, 4).to(torch.bfloat16)
    assert probe_difference(module) < 1e-5  # bf16 rounding would give ~1e-2
    assert next(module.parameters()).dtype is torch.bfloat16
    assert use_sdpa_window_attention(Tower(module)).switched == 1


def _slow_forward(self, x, size):
    # The same maths, 100 ms slower a call: SDPA wins any timing against it.
    time.sleep(0.1)
    return WindowAttention.forward(self, x, size)


SlowWindowAttention = type("WindowAttention", (WindowAttention,), {"forward": _slow_forward})


class PageTower(nn.Module):
    """Pages in, as a DaViT tower: a patch embedding, then its stages (each after the first halves the grid)."""

    def __init__(self, first, second, *, halve: bool = True):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 2, stride=2)
        self.down = nn.Conv2d(16, 16, 2, stride=2) if halve else nn.Identity()
        self.stages = nn.ModuleList([first, second])

    def forward_features_unpool(self, pages):
        x = self.embed(pages)
        for index, stage in enumerate(self.stages):
            if index:
                x = self.down(x)
            size = x.shape[-2:]
            tokens = x.flatten(2).transpose(1, 2)
            tokens = tokens + stage(tokens, size)[0]
            x = tokens.transpose(1, 2).reshape(x.shape)
        return x.flatten(2).transpose(1, 2)


def test_input_grids_are_the_token_grids_each_module_sees():
    tower = PageTower(WindowAttention(16, 2, 4), WindowAttention(16, 2, 4))
    grids = input_grids(tower, (40, 28))
    assert grids == {id(tower.stages[0]): (20, 14), id(tower.stages[1]): (10, 7)}
    # Hooks gone, weights untouched: the run was a look only.
    assert not tower.stages[0]._forward_pre_hooks and tower.embed.weight.grad is None


def test_a_tower_that_does_not_run_on_a_page_is_switched_untimed():
    tower = Tower(WindowAttention(16, 2, 4))  # takes token grids, not pages
    switch = use_sdpa_window_attention(tower, AttentionRun(image_size=(16, 16), batch_size=2))
    assert switch.switched == 1 and switch.timings == ()
    assert "did not run on a blank 16x16 page" in switch.untimed


def test_only_configurations_faster_through_sdpa_are_switched(monkeypatch):
    torch.manual_seed(0)
    run = AttentionRun(image_size=(40, 28), batch_size=2)
    slow_own = PageTower(SlowWindowAttention(16, 2, 4), SlowWindowAttention(16, 2, 4))
    switch = use_sdpa_window_attention(slow_own, run)
    assert switch.switched == 2 and switch.untimed is None
    assert [t.configuration for t in switch.timings] == [
        "width 16, 2 heads, window 4, 20x14 tokens", "width 16, 2 heads, window 4, 10x7 tokens",
    ]
    assert all(t.sdpa_faster and t.own_ms >= 100 for t in switch.timings)
    # Timed on copies: the model's own parameters got no gradients from it.
    assert all(p.grad is None for p in slow_own.parameters())

    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def slow_sdpa(*args, **kwargs):
        time.sleep(0.2)  # far above the own form's run (a window at a time, in Python), even on a busy machine
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", slow_sdpa)
    tower = PageTower(WindowAttention(16, 2, 4), WindowAttention(16, 2, 4))
    switch = use_sdpa_window_attention(tower, run)
    assert switch.switched == 0 and len(switch.timings) == 2
    assert not any(t.sdpa_faster for t in switch.timings)
    assert not any("forward" in vars(stage) for stage in tower.stages)


def test_one_timing_per_configuration_and_batches_timed_as_the_device_needs():
    # Two modules on the same grid with the same width, heads and window: timed once, both switched.
    tower = PageTower(SlowWindowAttention(16, 2, 4), SlowWindowAttention(16, 2, 4), halve=False)
    switch = use_sdpa_window_attention(tower, AttentionRun(image_size=(16, 16), batch_size=2))
    assert [(t.configuration, t.modules) for t in switch.timings] == [("width 16, 2 heads, window 4, 8x8 tokens", 2)]
    assert switch.switched == 2
    cpu = AttentionRun(image_size=(768, 768), batch_size=8)
    assert cpu.pages_to_time(MIN_TIMED_WINDOWS) == 1 and cpu.pages_to_time(4) == 8 and cpu.pages_to_time(64) == 4
    assert AttentionRun(image_size=(768, 768), batch_size=8, device="cuda:0").pages_to_time(MIN_TIMED_WINDOWS) == 8


SCRIPT = DEMO_TRAINING_STEP + textwrap.dedent(
    """
    from florence_patch.training.model import checkpoint_vision_layers, run_window_attention_through_sdpa

    names_before = list(model.state_dict())
    loss_own, kept_own, grads_own = step()
    switched = run_window_attention_through_sdpa(model).switched
    loss_sdpa, kept_sdpa, grads_sdpa = step()
    checkpoint_vision_layers(model)  # --gradient-checkpointing recomputes the SDPA forward in backward
    loss_both, _, grads_both = step()
    print("RESULT " + json.dumps({
        "switched": switched,
        "spatial_blocks": sum(type(m).__name__ == "SpatialBlock" for m in model.modules()),
        "loss": [loss_own, loss_sdpa],
        "kept_mib": [kept_own / 2**20, kept_sdpa / 2**20],
        "same_grad_names": sorted(grads_own) == sorted(grads_sdpa),
        "max_grad_diff": max((grads_own[n] - grads_sdpa[n]).abs().max().item() for n in grads_own),
        "max_grad": max(grads_own[n].abs().max().item() for n in grads_own),
        "loss_checkpointed": loss_both,
        "max_grad_diff_checkpointed": max((grads_sdpa[n] - grads_both[n]).abs().max().item() for n in grads_sdpa),
        "vision_grads": sum(n.startswith("vision_tower.") for n in grads_sdpa),
        "state_dict_unchanged": list(model.state_dict()) == names_before,
    }))
    """
)


def test_demo_model_trains_the_same_through_sdpa_and_keeps_less(tmp_path):
    result = run_with_demo_checkpoint(SCRIPT, tmp_path)
    assert result["switched"] == result["spatial_blocks"] > 0
    own, sdpa = result["loss"]
    assert abs(own - sdpa) <= 1e-5 * abs(own)
    assert result["same_grad_names"] and result["vision_grads"] > 0
    # Rounding only (the k bias, whose gradient is zero in exact arithmetic, rules out a per-tensor ratio).
    assert result["max_grad_diff"] <= 1e-4 * result["max_grad"]
    assert abs(result["loss_checkpointed"] - sdpa) <= 1e-5 * abs(sdpa)
    assert result["max_grad_diff_checkpointed"] <= 1e-4 * result["max_grad"]
    assert result["state_dict_unchanged"]
    # No attention matrices kept for backward: less saved, at the demo's tiny windows already.
    assert result["kept_mib"][1] < result["kept_mib"][0]
