"""The training curves of a run as a PNG: loss (train and eval) and ANLS over optimizer steps.

Drawn on a bare matplotlib Figure with the Agg canvas: no pyplot, no display, no global state,
so it is safe in a training process and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class Curves:
    train_loss: tuple[tuple[int, float], ...]
    eval_loss: tuple[tuple[int, float], ...]
    eval_anls: tuple[tuple[int, float], ...]


def curves_from_log_history(log_history: Sequence[Mapping[str, Any]]) -> Curves:
    """Pick (step, value) series out of a Trainer's ``state.log_history``."""

    def series(key: str) -> tuple[tuple[int, float], ...]:
        points = {}
        for entry in log_history:
            if key in entry and entry[key] is not None and "step" in entry:
                points[int(entry["step"])] = float(entry[key])  # a resumed run may log a step again
        return tuple(sorted(points.items()))

    return Curves(train_loss=series("loss"), eval_loss=series("eval_loss"), eval_anls=series("eval_anls"))


def plot_training_curves(log_history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Write the loss and ANLS curves of ``log_history`` to ``path`` (PNG); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = curves_from_log_history(log_history)
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, anls_axes = figure.subplots(1, 2)

    for points, label, style in ((curves.train_loss, "train loss", "-"), (curves.eval_loss, "eval loss", "o-")):
        if points:
            steps, values = zip(*points)
            loss_axes.plot(steps, values, style, label=label)
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("loss")
    if curves.train_loss or curves.eval_loss:
        loss_axes.legend()
    loss_axes.grid(alpha=0.3)

    if curves.eval_anls:
        steps, values = zip(*curves.eval_anls)
        anls_axes.plot(steps, values, "o-", color="tab:green", label="eval ANLS")
        anls_axes.legend()
    else:
        anls_axes.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=anls_axes.transAxes)
    anls_axes.set_ylim(0, 1)
    anls_axes.set_xlabel("step")
    anls_axes.set_ylabel("ANLS")
    anls_axes.set_title("ANLS (generated answers)")
    anls_axes.grid(alpha=0.3)

    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, format="png")
    return path


__all__ = ["Curves", "curves_from_log_history", "plot_training_curves"]
