"""demo: wiring over florence_patch.demo.run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def demo(
    workdir: Annotated[
        Optional[Path],
        typer.Option("--workdir", help="Keep everything here for reuse: DIR/hf (HF_HOME), DIR/data, DIR/run. Default: a temp dir."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps.")] = 300,
) -> None:
    """The whole loop offline on a tiny checkpoint and synthetic pages: status, apply, verify, train, eval, revert."""
    from florence_patch.demo.run import DemoSettings, run_demo

    summary = run_demo(workdir, settings=DemoSettings(max_steps=steps), echo=typer.echo)
    if not (summary.verify_ok and summary.reverted):
        raise typer.Exit(1)
