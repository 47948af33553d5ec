"""status / apply / revert: wiring over florence_patch.discovery and florence_patch.patching."""

from __future__ import annotations

import atexit
import functools
import gc
from typing import Annotated

import typer

from .options import AllFixesOpt, CacheDirOpt, FixOpt, FormatOpt, ModelArg, OutputFormat, RevisionOpt
from .output import emit, info, warn

STATUS_COLUMNS = ("model", "revision", "commit", "state", "pending", "path", "backup")


@functools.cache  # registered once however often a process runs the commands
def _skip_final_collections() -> None:
    """Freeze the collector at exit, before interpreter shutdown runs its full passes.

    Shutdown collects cycles over everything still alive; after a libcst run (~460 matcher
    dataclasses, parsed trees) that took 0.25-0.3 s of a 2.5 s first ``status`` on code the
    shipped table does not know. ``gc.freeze()`` moves those objects out of the collector's
    sight. ``status`` and ``apply`` close their files and release their locks themselves, so
    nothing waits on a collection. An atexit hook, not a freeze now: a process that goes on
    (a test session calling the app) keeps collecting as usual.
    """
    atexit.register(gc.freeze)


def _short_list(ids, shown: int = 2) -> str:
    """A table cell for a list of fix ids: the first few and a count (JSON carries them all)."""
    if not ids:
        return "-"
    rest = len(ids) - shown
    return ",".join(ids[:shown]) + (f" +{rest} more" if rest > 0 else "")


def _status_row(status) -> dict:
    copy = status.copy
    path = copy.target_dir if copy.materialized else copy.read_dir
    return {
        "model": copy.model_id,
        "kind": copy.kind.value,
        "revision": copy.revision_label,
        "commit": (copy.commit or "")[:7] or "-",
        "commit_full": copy.commit,
        "refs": list(copy.refs),
        "state": status.state.value,
        "pending": _short_list(status.pending),
        "pending_fixes": list(status.pending),
        "applied_fixes": list(status.applied),
        "path": str(path) + ("" if copy.materialized or copy.kind.value == "local" else "  (not imported yet)"),
        "target": str(copy.target_dir),
        "layout": copy.layout.value if copy.layout else None,
        "backup": str(status.backup_dir) if status.backup_dir else "-",
        "reason": status.reason,
    }


def _scan(model, revision, cache_dir):
    from florence_patch.discovery import find_copies

    scan = find_copies(model, revision=revision, cache_dir=cache_dir)
    for message in scan.warnings:
        warn(message)
    return scan.copies


def _fixes(fix: list[str] | None, all_fixes: bool):
    from florence_patch.discovery import installed_transformers_version
    from florence_patch.fixes import select_fixes

    return select_fixes(installed_transformers_version(), only=fix, all_fixes=all_fixes)


def status(
    model: ModelArg = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    fix: FixOpt = None,
    all_fixes: AllFixesOpt = False,
) -> None:
    """List every Florence-2 remote-code copy transformers would import, and its state."""
    _skip_final_collections()
    from florence_patch.patching import assess

    fixes = _fixes(fix, all_fixes)
    rows = [_status_row(assess(copy, fixes)) for copy in _scan(model, revision, cache_dir)]
    emit(rows, STATUS_COLUMNS, fmt, empty="no Florence-2 remote code found")
    for row in rows:
        if row["reason"] and fmt is OutputFormat.table:
            warn(f"{row['model']}@{row['commit']}: {row['reason']}")


def apply(
    model: ModelArg = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch the model's code and config files (not weights) first.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the unified diff; write nothing.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if any copy still needs a fix.")] = False,
    fix: FixOpt = None,
    all_fixes: AllFixesOpt = False,
    verify: Annotated[bool, typer.Option("--verify", help="Run `verify` on each copy after patching.")] = False,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Fix every matching copy (backed up, atomic, locked); --check makes it a CI gate."""
    _skip_final_collections()
    from florence_patch.errors import UsageError
    from florence_patch.patching import CopyState, apply_all, plan_fix

    if download:
        if model is None:
            raise UsageError("--download needs a model id")
        from florence_patch.download import download_code

        download_code(model, revision=revision, cache_dir=cache_dir)
    fixes = _fixes(fix, all_fixes)
    # Applying needs only the states here: apply_all renders the fixed code while transformers
    # creates the modules-cache copies (the diff of --dry-run needs it now).
    plans = [plan_fix(copy, fixes, render=dry_run) for copy in _scan(model, revision, cache_dir)]
    blocked = [p for p in plans if p.status.state in (CopyState.UNRECOGNIZED, CopyState.MODIFIED)]
    if dry_run or check:
        for plan in plans:
            if dry_run and plan.changes:
                info(plan.diff())
        rows = [_status_row(p.status) for p in plans]
        if check or fmt is OutputFormat.json:
            emit(rows, STATUS_COLUMNS, fmt, empty="no Florence-2 remote code found")
        if check and any(p.status.state is CopyState.NEEDS_FIX for p in plans):
            raise typer.Exit(1)
        _raise_blocked(blocked, model)
        return
    _raise_blocked(blocked, model)
    results = apply_all(plans)
    from florence_patch.patching import assess

    rows = [_status_row(assess(p.copy, fixes)) for p in plans]
    emit(rows, STATUS_COLUMNS, fmt, empty="no Florence-2 remote code found")
    if fmt is OutputFormat.table:
        for result in results:
            if result.changed:
                info(f"patched {result.copy.model_id}@{(result.copy.commit or '')[:7] or 'local'}: {', '.join(result.fixes)}")
    if verify:
        from .verify import run_verify_for_copies

        run_verify_for_copies([p.copy for p in plans if p.status.state is not CopyState.UNRECOGNIZED], fmt)


def _raise_blocked(blocked, model) -> None:
    """Unrecognized or modified copies stop a targeted run; a scan of everything warns and goes on."""
    from florence_patch.errors import ConflictError, UnrecognizedError
    from florence_patch.patching import CopyState

    for plan in blocked:
        warn(f"{plan.copy.model_id}@{(plan.copy.commit or '')[:7] or 'local'}: {plan.status.state.value}: {plan.status.reason}")
    if blocked and model is not None:
        first = blocked[0].status
        error = UnrecognizedError if first.state is CopyState.UNRECOGNIZED else ConflictError
        raise error(first.reason)


def revert(
    model: ModelArg = None,
    revision: RevisionOpt = None,
    cache_dir: CacheDirOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Restore even if the file changed since we patched it.")] = False,
) -> None:
    """Restore the original bytes of every matching copy we patched (sha256 checked)."""
    from florence_patch.patching import revert as revert_copy

    restored = 0
    for copy in _scan(model, revision, cache_dir):
        result = revert_copy(copy, force=force)
        if result.restored:
            restored += 1
            info(f"reverted {copy.model_id}@{(copy.commit or '')[:7] or 'local'}: {', '.join(result.restored)}")
    if not restored:
        info("nothing to revert")
