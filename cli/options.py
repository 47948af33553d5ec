"""Options declared once, reused by every command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


ModelArg = Annotated[
    Optional[str],
    typer.Argument(
        metavar="[MODEL_OR_PATH]",
        help="Hub model id (e.g. microsoft/Florence-2-large) or a local checkpoint directory. Default: everything cached.",
        show_default=False,
    ),
]
RevisionOpt = Annotated[
    Optional[str],
    typer.Option("--revision", help="Branch, ref (main, refs/pr/N) or commit id (7+ hex digits).", show_default=False),
]
CacheDirOpt = Annotated[
    Optional[Path],
    typer.Option("--cache-dir", help="Hub cache directory (default: HF_HUB_CACHE or HF_HOME/hub).", show_default=False),
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]
FixOpt = Annotated[
    Optional[list[str]],
    typer.Option("--fix", help="Apply only this fix id (repeatable). Default: what the installed transformers needs."),
]
AllFixesOpt = Annotated[bool, typer.Option("--all-fixes", help="Apply every registered fix, whatever the version.")]
