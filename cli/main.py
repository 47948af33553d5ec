"""The typer app. Commands import their heavy dependencies lazily so `--help` stays instant."""

from __future__ import annotations

from typing import Annotated

import typer

from . import demo, patch, train, verify
from .output import guarded

app = typer.Typer(
    name="florence-patch",
    help="Make Florence-2 remote code fine-tunable on the transformers you have, then fine-tune it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from florence_patch import __version__

        typer.echo(f"florence-patch {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Make Florence-2 remote code fine-tunable on the transformers you have, then fine-tune it."""


app.command()(guarded(patch.status))
app.command()(guarded(patch.apply))
app.command()(guarded(patch.revert))
app.command()(guarded(verify.verify))
app.command()(guarded(demo.demo))
app.command()(guarded(train.train))
app.command()(guarded(train.eval))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
