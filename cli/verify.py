"""verify: wiring over florence_patch.verify."""

from __future__ import annotations

from typing import Annotated

import typer

from .options import CacheDirOpt, FormatOpt, ModelArg, OutputFormat, RevisionOpt
from .output import CLIError, emit, info

CHECK_COLUMNS = ("check", "result", "detail")


def _rows(report) -> list[dict]:
    return [
        {"check": c.name, "result": "pass" if c.passed else "FAIL", "passed": c.passed, "detail": c.detail, "hint": c.hint}
        for c in report.checks
    ]


def print_report(report, fmt: OutputFormat) -> None:
    rows = _rows(report)
    if fmt is OutputFormat.json:
        emit([{"model": report.model, "revision": report.revision, "ok": report.ok, "checks": rows}], (), fmt)
        return
    title = report.model + (f" @ {report.revision}" if report.revision else "") + (" (real weights)" if report.weights else " (tiny build)")
    info(title)
    emit(rows, CHECK_COLUMNS, fmt)
    hints = sorted({row["hint"] for row in rows if row["hint"]})
    for hint in hints:
        info(f"hint: {hint}")
    info("verify: " + ("passed" if report.ok else "FAILED"))


def verify(
    model: ModelArg = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    weights: Annotated[bool, typer.Option("--weights", help="Use the real cached weights and a rendered page.")] = False,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Prove the copy transformers will import trains: loss, backward, generate, save/reload, processor."""
    from florence_patch.verify import verify as run_verify

    if model is None:
        raise CLIError("verify needs a model id or a checkpoint directory", exit_code=2)
    report = run_verify(model, revision=revision, cache_dir=cache_dir, weights=weights)
    print_report(report, fmt)
    if not report.ok:
        raise typer.Exit(1)


def run_verify_for_copies(copies, fmt: OutputFormat) -> None:
    """`apply --verify`: verify each copy just patched; exit 1 if any fails."""
    from florence_patch.discovery import CopyKind
    from florence_patch.verify import verify as run_verify

    failed = False
    unique = {(copy.model_id, copy.commit): copy for copy in copies}  # both name layouts: one verify
    for copy in unique.values():
        if copy.kind is CopyKind.LOCAL:
            report = run_verify(copy.model_id)
        else:
            cache_dir = copy.source_dir.parents[2] if copy.source_dir else None
            report = run_verify(copy.model_id, revision=copy.commit, cache_dir=cache_dir)
        print_report(report, fmt)
        failed = failed or not report.ok
    if failed:
        raise typer.Exit(1)
