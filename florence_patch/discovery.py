"""Find every Florence-2 remote-code copy that transformers would import.

Three places hold one:

* the hub cache (``models--org--name/snapshots/<commit>/``), read with huggingface_hub's own
  ``scan_cache_dir``: the *source* transformers copies from, never written to (its files are
  symlinks into content-addressed ``blobs/`` shared by every revision);
* the modules cache (``HF_MODULES_CACHE/transformers_modules/<org>/<repo>/<commit>/``): the copy
  transformers imports. It is created from the snapshot only when absent, so a patch there
  persists. transformers <= 4.56 keeps repo names as they are, >= 4.57 mangles them
  (``-`` -> ``_hyphen_``, ``.`` -> ``_dot_``); a cache used by both holds both;
* a local checkpoint directory, whose files transformers re-copies whenever they differ, so
  the directory's own files are the ones to fix.

A scan never aborts on one bad entry: it collects warnings.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field, replace
from enum import Enum
from importlib import metadata
from pathlib import Path

from packaging.version import Version

from .errors import NotFoundError, UnrecognizedError
from .fixes import REMOTE_CODE_FILES
from .locations import CacheLocations

MODELING_FILE = "modeling_florence2.py"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# transformers 4.57 started mangling '-' and '.' in module directory names.
MANGLING_SINCE = Version("4.57.0")


class CopyKind(str, Enum):
    HUB = "hub"  # a hub revision: snapshot (source) -> modules-cache copy (target)
    LOCAL = "local"  # a local checkpoint directory (source and target)


class ModulesLayout(str, Enum):
    PLAIN = "plain"  # transformers <= 4.56
    MANGLED = "mangled"  # transformers >= 4.57


@dataclass(frozen=True)
class RemoteCodeCopy:
    """One directory of Florence-2 remote code that transformers imports (or will)."""

    kind: CopyKind
    model_id: str  # repo id, or the directory for local checkpoints
    target_dir: Path  # where transformers imports from: what we patch
    source_dir: Path | None = None  # hub snapshot the target is copied from
    commit: str | None = None
    refs: tuple[str, ...] = ()
    layout: ModulesLayout | None = None

    @property
    def materialized(self) -> bool:
        """Whether the target exists yet (a hub revision may not have been imported)."""
        return (self.target_dir / MODELING_FILE).is_file()

    @property
    def read_dir(self) -> Path:
        """Where the bytes transformers will import live right now."""
        if self.materialized or self.source_dir is None:
            return self.target_dir
        return self.source_dir

    def files(self) -> tuple[str, ...]:
        return tuple(name for name in REMOTE_CODE_FILES if (self.read_dir / name).is_file())

    @property
    def revision_label(self) -> str:
        if self.refs:
            return ",".join(self.refs)
        return (self.commit or "")[:7] or "-"


@dataclass(frozen=True)
class CopyScan:
    copies: tuple[RemoteCodeCopy, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)


@functools.cache  # reading the metadata takes ~7 ms; apply asks once per copy it patches
def installed_transformers_version() -> str:
    """The installed transformers version, without importing it (keeps --help instant)."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "0"


def current_layout(transformers_version: str | None = None) -> ModulesLayout:
    version = Version(transformers_version or installed_transformers_version())
    return ModulesLayout.MANGLED if version >= MANGLING_SINCE else ModulesLayout.PLAIN


def mangle(part: str) -> str:
    return part.replace(".", "_dot_").replace("-", "_hyphen_")


def unmangle(part: str) -> str:
    return part.replace("_dot_", ".").replace("_hyphen_", "-")


def modules_dir_for(locations: CacheLocations, repo_id: str, commit: str, layout: ModulesLayout) -> Path:
    parts = repo_id.split("/")
    if layout is ModulesLayout.MANGLED:
        parts = [mangle(p) for p in parts]
    return locations.transformers_modules.joinpath(*parts, commit)


def _scan_modules_cache(locations: CacheLocations, warnings: list[str]) -> dict[tuple[str, str], list[tuple[Path, ModulesLayout]]]:
    """(repo_id, commit) -> [(directory, layout)] for every hub copy in the modules cache."""
    found: dict[tuple[str, str], list[tuple[Path, ModulesLayout]]] = {}
    root = locations.transformers_modules
    if not root.is_dir():
        return found
    for pattern in (f"*/*/*/{MODELING_FILE}", f"*/*/{MODELING_FILE}"):
        for modeling in root.glob(pattern):
            directory = modeling.parent
            if not _COMMIT_RE.match(directory.name):
                continue  # local-checkpoint copies are keyed by a source hash: transformers refreshes them
            parts = directory.relative_to(root).parts[:-1]
            raw = "/".join(parts)
            if "_hyphen_" in raw or "_dot_" in raw:
                layout = ModulesLayout.MANGLED
            elif "-" in raw or "." in raw:
                layout = ModulesLayout.PLAIN
            else:
                layout = current_layout()  # both layouts name it the same way
            repo_id = "/".join(unmangle(p) for p in parts)
            found.setdefault((repo_id, directory.name), []).append((directory, layout))
    return found


def _scan_hub_cache(locations: CacheLocations, warnings: list[str]):
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(locations.hub)
    except CacheNotFound:
        return []
    for warning in info.warnings:
        warnings.append(f"hub cache: {warning}")
    return [repo for repo in info.repos if repo.repo_type == "model"]


def _revision_matches(revision: str, commit: str, refs: tuple[str, ...]) -> bool:
    if revision in refs or f"refs/{revision}" in refs:
        return True
    return len(revision) >= 7 and commit.startswith(revision.lower())


def find_local_copy(path: str | os.PathLike) -> RemoteCodeCopy:
    directory = Path(path).expanduser().resolve()
    if not directory.exists():
        raise NotFoundError(f"{path}: no such directory")
    if not directory.is_dir():
        raise NotFoundError(f"{path}: not a directory")
    if not (directory / MODELING_FILE).is_file():
        raise UnrecognizedError(f"{path}: no {MODELING_FILE} in this directory (not a Florence-2 checkpoint)")
    return RemoteCodeCopy(kind=CopyKind.LOCAL, model_id=str(directory), target_dir=directory)


def find_copies(
    model: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> CopyScan:
    """Every Florence-2 copy matching ``model`` / ``revision`` (everything when ``model`` is None).

    Raises NotFoundError when a model or revision was named and is not cached.
    """
    warnings: list[str] = []
    if model is not None and (Path(model).expanduser().is_dir() or model.startswith((".", "/", "~"))):
        return CopyScan((find_local_copy(model),))

    locations = CacheLocations.resolve(cache_dir)
    layout_now = current_layout()
    modules = _scan_modules_cache(locations, warnings)
    copies: list[RemoteCodeCopy] = []
    seen: set[tuple[str, str]] = set()
    cached_revisions: list[str] = []

    for repo in sorted(_scan_hub_cache(locations, warnings), key=lambda r: r.repo_id):
        if model is not None and repo.repo_id != model:
            continue
        for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
            names = {f.file_name for f in rev.files}
            if MODELING_FILE not in names:
                continue
            refs = tuple(sorted(rev.refs))
            cached_revisions.append(f"{rev.commit_hash[:7]} ({', '.join(refs) or 'no ref'})")
            if revision is not None and not _revision_matches(revision, rev.commit_hash, refs):
                continue
            key = (repo.repo_id, rev.commit_hash)
            seen.add(key)
            existing = modules.get(key, [])
            base = RemoteCodeCopy(
                kind=CopyKind.HUB,
                model_id=repo.repo_id,
                source_dir=Path(rev.snapshot_path),
                commit=rev.commit_hash,
                refs=refs,
                target_dir=modules_dir_for(locations, repo.repo_id, rev.commit_hash, layout_now),
                layout=layout_now,
            )
            # The copy the installed transformers will import, existing or not, then copies that
            # another transformers (the other name layout) made and would import.
            copies.append(base)
            for directory, layout in sorted(existing):
                if directory != base.target_dir:
                    copies.append(replace(base, target_dir=directory, layout=layout))

    # Modules-cache copies whose snapshot is gone (hub cache cleaned, or another cache dir).
    for (repo_id, commit), entries in sorted(modules.items()):
        if (repo_id, commit) in seen:
            continue
        if model is not None and repo_id != model:
            continue
        if revision is not None and not _revision_matches(revision, commit, ()):
            continue
        for directory, layout in sorted(entries):
            copies.append(
                RemoteCodeCopy(kind=CopyKind.HUB, model_id=repo_id, target_dir=directory, commit=commit, layout=layout)
            )

    if model is not None and not copies:
        if revision is not None and cached_revisions:
            raise NotFoundError(
                f"revision {revision!r} of {model} is not in the cache {locations.hub} "
                f"(cached: {'; '.join(cached_revisions)})"
            )
        hint = f"florence-patch apply {model}" + (f" --revision {revision}" if revision else "") + " --download"
        raise NotFoundError(f"{model} is not in the cache {locations.hub}; fetch its code with `{hint}`")
    return CopyScan(tuple(copies), tuple(warnings))
