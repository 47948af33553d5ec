"""Assess, plan and execute fixes on one remote-code copy, and revert them.

Plan, then execute: ``plan_fix`` reads the bytes transformers will import and builds a frozen
:class:`PatchPlan` (target, backup, new bytes, diff) without writing anything, which is all
``--dry-run`` and ``--check`` need. ``PatchPlan.execute()`` takes the copy's lock, plans again
from what is on disk *now* (another process may have patched it meanwhile), backs up, records
the manifest, and replaces each file atomically.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .backups import FileRecord, Manifest, backup_path, manifest_path, now_iso, read_manifest, write_manifest
from .discovery import MODELING_FILE, CopyKind, RemoteCodeCopy, installed_transformers_version
from .errors import ConflictError, FlorencePatchError, UnrecognizedError
from .fixes import OUTPUT_CLASS_FIX, Fix, FixOutcome, select_fixes
from .locations import CacheLocations
from .outcome_cache import OUTCOMES, outcomes_after
from .safe_io import atomic_write, ensure_writable, locked, sha256_bytes, state_dir

_BOM = b"\xef\xbb\xbf"


class CopyState(str, Enum):
    NEEDS_FIX = "needs-fix"
    PATCHED = "patched"  # by us, with a backup
    FIXED_UPSTREAM = "fixed-upstream"
    MODIFIED = "modified"  # changed since we patched it
    UNRECOGNIZED = "unrecognized"  # not Florence-2, or not a shape we know


@dataclass(frozen=True)
class FileChange:
    filename: str
    path: Path  # the file that will be written
    old: bytes
    new: bytes
    fixes: tuple[str, ...]

    def diff(self) -> str:
        old = self.old.decode("utf-8", errors="replace").splitlines(keepends=True)
        new = self.new.decode("utf-8", errors="replace").splitlines(keepends=True)
        return "".join(difflib.unified_diff(old, new, fromfile=f"a/{self.filename}", tofile=f"b/{self.filename}"))


@dataclass(frozen=True)
class CopyStatus:
    copy: RemoteCodeCopy
    state: CopyState
    pending: tuple[str, ...] = ()  # fix ids still needed
    applied: tuple[str, ...] = ()  # fix ids recorded in our manifest
    reason: str = ""

    @property
    def backup_dir(self) -> Path | None:
        return state_dir(self.copy.target_dir) if self.applied else None


@dataclass(frozen=True)
class PatchPlan:
    status: CopyStatus
    fixes: tuple[Fix, ...]
    changes: tuple[FileChange, ...]

    @property
    def copy(self) -> RemoteCodeCopy:
        return self.status.copy

    def diff(self) -> str:
        return "".join(change.diff() for change in self.changes)

    def execute(self) -> "ApplyResult":
        return _execute(self.copy, self.fixes)


@dataclass(frozen=True)
class ApplyResult:
    copy: RemoteCodeCopy
    changed: tuple[str, ...]  # file names written
    fixes: tuple[str, ...]  # fix ids applied now
    state: CopyState


@dataclass(frozen=True)
class RevertResult:
    copy: RemoteCodeCopy
    restored: tuple[str, ...]


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data[len(_BOM):].decode("utf-8") if data.startswith(_BOM) else data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UnrecognizedError(f"{path}: not UTF-8 ({error.reason} at byte {error.start})") from error
    return text


def _encode(text: str, like: bytes) -> bytes:
    return (_BOM if like.startswith(_BOM) else b"") + text.encode("utf-8")


_FINAL_CODE: dict[str, str] = {}  # outcome-cache key -> fixed code, for this process


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for a libcst run, and restore it after.

    Importing libcst creates ~460 dataclasses and parsing the modeling file ~100k nodes; the
    collector runs every 700 allocations and its full passes walk every live object, the fresh
    tree included, yet a parse or a codemod leaves next to no cycles to collect. Reference
    counting still frees everything as usual; only cycles wait for the collector's next run.
    A first ``status`` on code the shipped table does not know, alternated ten times in fresh
    processes: median 2.76 s with the collector running, 2.48 s paused (bench/RESULTS.md).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _outcomes(
    data: bytes, text: str, fixes: tuple[Fix, ...], *, render: bool
) -> tuple[str | None, list[tuple[FixOutcome, str]]]:
    """Run ``fixes`` on one file: (final code or None when not rendered, per-fix (outcome, reason)).

    Outcomes and the fixed code come from the persistent cache when this content was seen before;
    the codemods (and libcst) only run on a miss. When rendering, the outcomes of the fixed code
    are recorded too, so the file just written is recognised as patched without another run.
    Without ``render`` (``status``) the fixed code is not rendered at all: a full codegen of the
    modeling file costs about as much as all its fixes, and ``apply`` renders it when it writes.
    """
    fix_ids = tuple(f.id for f in fixes)
    key = OUTCOMES.key(sha256_bytes(data), fix_ids)
    cached = OUTCOMES.get(key)
    changes = cached is None or any(o is FixOutcome.NEEDED for o, _ in cached)
    if cached is not None and not (render and changes):
        return (text if render else None), cached
    if cached is not None and key not in _FINAL_CODE:
        rendered = OUTCOMES.get_rendered(key)
        if rendered is not None:
            _FINAL_CODE[key] = rendered
    if cached is None or key not in _FINAL_CODE:
        with cyclic_gc_paused():
            from .fixes.base import run_fixes  # imports libcst: only on a cache miss

            final, results = run_fixes(text, fixes, render=render)
        cached = [(r.outcome, r.reason) for r in results]
        changed = any(o is FixOutcome.NEEDED for o, _ in cached)
        if not render:
            OUTCOMES.put(key, cached)
            return None, cached
        OUTCOMES.put(key, cached, rendered=final if changed else None)
        if changed:
            OUTCOMES.put(OUTCOMES.key(sha256_bytes(_encode(final, data)), fix_ids), outcomes_after(cached))
        _FINAL_CODE[key] = final
    return (_FINAL_CODE[key] if render else None), cached


def _run_fixes(
    read_dir: Path, fixes: tuple[Fix, ...], *, render: bool = True
) -> dict[str, tuple[bytes, bytes | None, list[str]]]:
    """Run ``fixes`` on the files in ``read_dir`` (where the bytes transformers will import live);
    per file (old, new, fix ids needed).

    ``new`` is None when ``render`` is False (status only needs the outcomes).
    Raises UnrecognizedError when a file is not Florence-2 or has a shape we do not know.
    """
    modeling = read_dir / MODELING_FILE
    if not modeling.is_file():
        raise UnrecognizedError(f"{read_dir}: no {MODELING_FILE}")
    by_file: dict[str, list[Fix]] = {}
    for fix in fixes:
        by_file.setdefault(fix.filename, []).append(fix)
    if OUTPUT_CLASS_FIX not in fixes:
        # The output class is what makes a file Florence-2 for us: check it even when not applying it.
        data = modeling.read_bytes()
        _, (outcome,) = _outcomes(data, _decode(modeling, data), (OUTPUT_CLASS_FIX,), render=False)
        _raise_unrecognized(modeling, OUTPUT_CLASS_FIX, outcome)
    results: dict[str, tuple[bytes, bytes | None, list[str]]] = {}
    try:
        for filename, file_fixes in by_file.items():
            path = read_dir / filename
            if not path.is_file():
                continue
            data = path.read_bytes()
            final, outcomes = _outcomes(data, _decode(path, data), tuple(file_fixes), render=render)
            for fix, outcome in zip(file_fixes, outcomes):
                _raise_unrecognized(path, fix, outcome)
            applied = [fix.id for fix, (outcome, _) in zip(file_fixes, outcomes) if outcome is FixOutcome.NEEDED]
            new = None if final is None else (_encode(final, data) if applied else data)
            results[filename] = (data, new, applied)
    finally:
        OUTCOMES.save()
    return results


def _raise_unrecognized(path: Path, fix: Fix, result: tuple[FixOutcome, str]) -> None:
    outcome, reason = result
    if outcome is FixOutcome.UNRECOGNIZED:
        raise UnrecognizedError(f"{path}: {fix.id}: {reason}")
    if fix is OUTPUT_CLASS_FIX and outcome is FixOutcome.ABSENT:
        raise UnrecognizedError(f"{path}: not Florence-2 remote code ({reason})")


def assess(copy: RemoteCodeCopy, fixes: tuple[Fix, ...] | None = None) -> CopyStatus:
    """The state of one copy for the given fixes (default: what the installed transformers needs)."""
    return _plan(copy, fixes, render=False).status


def plan_fix(copy: RemoteCodeCopy, fixes: tuple[Fix, ...] | None = None, *, render: bool = True) -> PatchPlan:
    """What applying ``fixes`` to ``copy`` would write. Writes nothing.

    ``render=False``: the state and pending fixes only, no new bytes (``changes`` is empty), as
    known without libcst for published code; :func:`apply_all` renders them while transformers
    creates the modules-cache copies.
    """
    return _plan(copy, fixes, render=render)


def _plan(copy: RemoteCodeCopy, fixes: tuple[Fix, ...] | None, *, render: bool = True) -> PatchPlan:
    fixes = select_fixes(installed_transformers_version()) if fixes is None else fixes
    try:
        manifest = read_manifest(copy.target_dir)
    except ConflictError as error:
        return PatchPlan(CopyStatus(copy, CopyState.MODIFIED, reason=str(error)), fixes, ())
    applied = tuple(dict.fromkeys(f for rec in (manifest.files.values() if manifest else ()) for f in rec.fixes))
    if manifest is not None and copy.materialized:
        for name, record in manifest.files.items():
            path = copy.target_dir / name
            current = sha256_bytes(path.read_bytes()) if path.is_file() else "missing"
            if current not in (record.sha256_after, record.sha256_before):
                reason = f"{name} changed since florence-patch patched it (sha256 {current[:12]}…)"
                return PatchPlan(CopyStatus(copy, CopyState.MODIFIED, applied=applied, reason=reason), fixes, ())
    try:
        results = _run_fixes(copy.read_dir, fixes, render=render)
    except UnrecognizedError as error:
        return PatchPlan(CopyStatus(copy, CopyState.UNRECOGNIZED, applied=applied, reason=str(error)), fixes, ())
    pending = tuple(fid for _, _, ids in results.values() for fid in ids)
    changes = tuple(
        FileChange(name, copy.target_dir / name, old, new, tuple(ids))
        for name, (old, new, ids) in results.items()
        if ids and new is not None
    )
    if pending:
        state = CopyState.NEEDS_FIX
    elif manifest is not None and any(
        (copy.target_dir / name).is_file() and sha256_bytes((copy.target_dir / name).read_bytes()) == rec.sha256_after
        for name, rec in manifest.files.items()
    ):
        state = CopyState.PATCHED
    else:
        state = CopyState.FIXED_UPSTREAM
    return PatchPlan(CopyStatus(copy, state, pending=pending, applied=applied), fixes, changes)


def _raise_for_state(status: CopyStatus) -> None:
    if status.state is CopyState.MODIFIED:
        raise ConflictError(f"{status.reason}; revert with --force or inspect {status.copy.target_dir}")
    if status.state is CopyState.UNRECOGNIZED:
        raise UnrecognizedError(status.reason)


def _execute(copy: RemoteCodeCopy, fixes: tuple[Fix, ...]) -> ApplyResult:
    target = copy.target_dir
    if copy.kind is CopyKind.HUB and not copy.materialized:
        materialize([copy])
    ensure_writable(target)
    for change in _plan(copy, fixes).changes:
        ensure_writable(change.path)  # before the lock: a refused apply creates nothing
    with locked(target):
        plan = _plan(copy, fixes)  # again, under the lock: another process may have been first
        _raise_for_state(plan.status)
        if not plan.changes:
            return ApplyResult(copy, (), (), plan.status.state)
        for change in plan.changes:
            ensure_writable(change.path)
        manifest = read_manifest(target)
        records = dict(manifest.files) if manifest else {}
        for change in plan.changes:
            previous = records.get(change.filename)
            if previous is None or sha256_bytes(change.old) == previous.sha256_before:
                # First write of this file (or a crash left the original): back up the original bytes.
                backup = backup_path(target, change.filename)
                atomic_write(backup, change.old, mode=0o444)
                before = sha256_bytes(change.old)
                earlier = ()
            else:
                before = previous.sha256_before
                earlier = previous.fixes
            records[change.filename] = FileRecord(
                sha256_before=before,
                sha256_after=sha256_bytes(change.new),
                fixes=tuple(dict.fromkeys(earlier + change.fixes)),
                backup=backup_path(target, change.filename).name,
            )
        stamp = now_iso()
        event = {"time": stamp, "action": "apply", "fixes": sorted({f for c in plan.changes for f in c.fixes})}
        write_manifest(
            target,
            Manifest(
                files=records,
                transformers_version=installed_transformers_version(),
                created=manifest.created if manifest else stamp,
                updated=stamp,
                history=(manifest.history if manifest else ()) + (event,),
            ),
        )
        for change in plan.changes:
            atomic_write(change.path, change.new)
    return ApplyResult(
        copy,
        tuple(c.filename for c in plan.changes),
        tuple(dict.fromkeys(f for c in plan.changes for f in c.fixes)),
        CopyState.PATCHED,
    )


def revert(copy: RemoteCodeCopy, *, force: bool = False) -> RevertResult:
    """Restore the exact original bytes (sha256 checked). Idempotent: nothing to revert is fine."""
    target = copy.target_dir
    if read_manifest(target) is None:
        return RevertResult(copy, ())
    ensure_writable(target)
    with locked(target):
        manifest = read_manifest(target)
        if manifest is None:
            return RevertResult(copy, ())
        restores: list[tuple[Path, bytes]] = []
        for name, record in manifest.files.items():
            path = target / name
            backup = state_dir(target) / record.backup
            try:
                original = backup.read_bytes()
            except FileNotFoundError as error:
                raise ConflictError(f"{path}: backup {backup} is missing; cannot restore the original") from error
            if sha256_bytes(original) != record.sha256_before:
                raise ConflictError(f"{backup}: backup does not match its manifest (sha256); refusing to restore")
            current = sha256_bytes(path.read_bytes()) if path.is_file() else "missing"
            if current == record.sha256_before:
                continue
            if current != record.sha256_after and not force:
                raise ConflictError(f"{path} changed since florence-patch patched it; use --force to restore anyway")
            ensure_writable(path)
            restores.append((path, original))
        for path, original in restores:
            atomic_write(path, original)
        for name, record in manifest.files.items():
            (state_dir(target) / record.backup).unlink(missing_ok=True)
        manifest_path(target).unlink()
    return RevertResult(copy, tuple(path.name for path, _ in restores))


_MATERIALIZE_SCRIPT = r"""
import hashlib, importlib.util, json, sys
import transformers.dynamic_module_utils as dmu

_IMPORTS_BY_CONTENT = {}

def _imports_of(content_sha, filename):
    # get_imports walks the file's whole AST (~70 ms for the modeling file); a cache holds many
    # copies of the same few revisions, so walk each distinct content once.
    if content_sha not in _IMPORTS_BY_CONTENT:
        _IMPORTS_BY_CONTENT[content_sha] = (dmu.get_imports(filename), dmu.get_relative_imports(filename))
    return _IMPORTS_BY_CONTENT[content_sha]

def check_imports_by_spec(filename):
    # transformers imports every package the file imports (torch, timm, ...) to check it is
    # installed: seconds, and irrelevant to where the copy goes. find_spec checks the same thing.
    with open(filename, "rb") as handle:
        content_sha = hashlib.sha256(handle.read()).hexdigest()
    imports, relative = _imports_of(content_sha, str(filename))
    missing = [imp for imp in imports if importlib.util.find_spec(imp) is None]
    if missing:
        raise ImportError("This modeling file requires the following packages that were not found "
                          "in your environment: " + ", ".join(missing))
    return list(relative)

dmu.check_imports = check_imports_by_spec
get_cached_module_file = dmu.get_cached_module_file
for item in json.loads(sys.argv[1]):
    for name in item["files"]:
        get_cached_module_file(item["repo_id"], name, cache_dir=item["cache_dir"],
                               revision=item["commit"], local_files_only=True)
"""


def materialize(copies: list[RemoteCodeCopy]) -> None:
    """Have transformers itself create the modules-cache copies (so the layout is always its own).

    Runs in a subprocess: transformers reads HF_MODULES_CACHE once at import, and the CLI should
    not pay for importing it. One subprocess serves any number of copies; each target is locked
    while it is created, so concurrent callers wait and then find it there.
    """
    with _materializing(copies):
        pass


@contextlib.contextmanager
def _materializing(copies: list[RemoteCodeCopy]) -> Iterator[None]:
    """:func:`materialize`, with the body running while the subprocess creates the copies.

    The targets stay locked until the subprocess is done; the body must not read them (a target
    is half-written until then), only what it read before entering.
    """
    pending = [c for c in copies if c.kind is CopyKind.HUB and not c.materialized and c.source_dir is not None]
    if not pending:
        yield
        return
    pending.sort(key=lambda c: str(c.target_dir))  # one lock order for every process: no deadlock
    with contextlib.ExitStack() as stack:
        for copy in pending:
            copy.target_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(locked(copy.target_dir))
        still_missing = [c for c in pending if not c.materialized]
        # stderr to a file: a pipe nobody reads while the body runs could fill and stall transformers
        stderr = stack.enter_context(tempfile.TemporaryFile("w+"))
        process = _start_materialize(still_missing, stderr) if still_missing else None
        try:
            yield
        finally:
            if process is not None:
                # Even when the body failed: transformers finishes what it started, under the locks.
                process.wait()
        if process is not None and process.returncode != 0:
            stderr.seek(0)
            last = (stderr.read().strip().splitlines() or ["unknown error"])[-1]
            raise FlorencePatchError(f"transformers could not create the modules-cache copy: {last}")
    for copy in pending:
        if not copy.materialized:
            raise FlorencePatchError(
                f"transformers placed {copy.model_id}@{copy.commit[:7]} elsewhere than {copy.target_dir}"
            )


def _start_materialize(copies: list[RemoteCodeCopy], stderr) -> subprocess.Popen:
    modules = CacheLocations.resolve().modules
    request = [
        {
            "repo_id": c.model_id,
            "commit": c.commit,
            "files": list(c.files()),
            "cache_dir": str(c.source_dir.parents[2]),  # <hub>/models--org--name/snapshots/<commit>
        }
        for c in copies
    ]
    env = dict(os.environ, HF_MODULES_CACHE=str(modules), HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-c", _MATERIALIZE_SCRIPT, json.dumps(request)],
        stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env,
    )


def apply_all(plans: list[PatchPlan]) -> list[ApplyResult]:
    """Execute the plans of the copies that need a fix (plans with or without rendered changes).

    A hub revision never imported has no modules-cache copy yet: transformers creates them in a
    subprocess (seconds, mostly importing transformers) while this process renders the fixed
    code from the snapshots' identical bytes, which execute() then finds by content.
    """
    needing = [p for p in plans if p.changes or p.status.state is CopyState.NEEDS_FIX]
    sources = [(p.copy.read_dir, p.fixes) for p in needing]  # before transformers writes a target
    with _materializing([p.copy for p in needing]):
        for read_dir, fixes in sources:
            with contextlib.suppress(UnrecognizedError):  # execute() plans again and reports it
                _run_fixes(read_dir, fixes)
    return [plan.execute() for plan in needing]


__all__ = [
    "ApplyResult",
    "CopyState",
    "CopyStatus",
    "FileChange",
    "PatchPlan",
    "RevertResult",
    "apply_all",
    "assess",
    "materialize",
    "plan_fix",
    "revert",
]
