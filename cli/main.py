"""The typer app. Commands import their heavy dependencies lazily so `--help` stays instant."""

from __future__ import annotations

import typer

from . import patch
from .output import guarded

app = typer.Typer(
    name="florence-patch",
    help="Make Florence-2 remote code fine-tunable on the transformers you have, then fine-tune it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(guarded(patch.status))
app.command()(guarded(patch.apply))
app.command()(guarded(patch.revert))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
