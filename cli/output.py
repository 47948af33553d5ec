"""The one place that prints: tables, JSON, and errors mapped to exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer

from .options import OutputFormat


class CLIError(Exception):
    """Raised by commands for problems that are the user's to fix; mapped to an exit code in main."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def guarded(command: Callable[..., Any]) -> Callable[..., Any]:
    """The one place library errors become one line on stderr and their documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from florence_patch.errors import FlorencePatchError

        try:
            return command(*args, **kwargs)
        except (FlorencePatchError, CLIError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def info(message: str) -> None:
    typer.echo(message)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return ""
    cells = [[str(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    header = "  ".join(col.upper().ljust(w) for col, w in zip(columns, widths))
    lines = [header] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: OutputFormat, *, empty: str = "") -> None:
    if fmt is OutputFormat.json:
        json.dump(list(rows), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    text = table(rows, columns)
    typer.echo(text if text else empty)
