"""A small persistent cache of fix outcomes and fixed code, keyed by file content.

Parsing the 2,840-line modeling file with libcst and running every codemod on it costs seconds
on a small machine, and importing libcst about one more; a cache holds many copies of the same
few revisions, and `status` runs often (a CI gate, every torchrun rank). Outcomes depend only on
the file's bytes and the fix code, so the key is sha256(file) + fix ids + a digest of the fixes
package's own source: editing a codemod invalidates every entry.

Each entry holds the per-fix outcomes and, when the fixes change the file, the sha256 of the
fixed code, which is kept beside the index as ``rendered/<sha256>.py``: a plan (``apply
--dry-run``) renders it, and `apply` then writes it without running libcst again (`status`
records outcomes only: rendering costs about as much as the fixes). A rendered file is only used
when its bytes still hash to the recorded sha256. A lost entry only costs a re-parse, so
concurrent writers need no lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from pathlib import Path

from . import __version__
from .fixes.spec import FixOutcome
from .safe_io import atomic_write, sha256_bytes

MAX_ENTRIES = 1024
MAX_RENDERED = 64  # fixed files kept (about 130 kB each for the modeling file)

Outcomes = list[tuple[FixOutcome, str]]


@functools.lru_cache(maxsize=1)
def fixes_digest() -> str:
    package = Path(__file__).with_name("fixes")
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Outside the HF caches, so `apply --check`/`--dry-run` leave those trees byte-identical."""
    if os.environ.get("FLORENCE_PATCH_CACHE_DIR"):
        return Path(os.environ["FLORENCE_PATCH_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "florence-patch"


def cache_path() -> Path:
    return cache_dir() / "fix-outcomes.json"


def outcomes_after(outcomes: Outcomes) -> Outcomes:
    """The outcomes the same fixes have on the code they produced: what they changed is now present.

    Every codemod leaves code that already has its fix unchanged (the registry's contract, tested
    per fix and, for the whole chain, in tests/test_outcome_cache.py), so a freshly patched file
    needs no second libcst run to be reported as patched.
    """
    return [(FixOutcome.PRESENT, "") if outcome is FixOutcome.NEEDED else (outcome, reason) for outcome, reason in outcomes]


KNOWN_OUTCOMES_FILE = Path(__file__).with_name("known_outcomes.json")


@functools.lru_cache(maxsize=1)
def known_outcomes() -> dict[str, dict]:
    """Outcomes for Microsoft's published remote-code files, shipped with the package.

    Keyed like the cache (sha256 of the file, fix ids, fixes digest), so a first `status` on a
    machine that holds only published revisions runs no libcst at all. Made by
    ``scripts/known_outcomes.py`` from local copies of the files (the table holds hashes and
    outcomes, no code). When the fixes change, the digest no longer matches and the table is
    simply not used until it is made again (tests/test_outcome_cache.py fails until then).
    """
    try:
        table = json.loads(KNOWN_OUTCOMES_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(table, dict) or table.get("fixes_digest") != fixes_digest():
        return {}
    digest = table["fixes_digest"]
    return {f"{key}|{digest}": {"outcomes": outcomes} for key, outcomes in table.get("outcomes", {}).items()}


class OutcomeCache:
    def __init__(self) -> None:
        self._entries: dict[str, dict] | None = None
        self._dirty = False

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            try:
                loaded = json.loads(cache_path().read_text(encoding="utf-8"))
            except (OSError, ValueError):
                loaded = {}
            # Entries of another layout (an older florence-patch) are dropped, not misread.
            self._entries = {k: v for k, v in loaded.items() if isinstance(v, dict) and "outcomes" in v} if isinstance(loaded, dict) else {}
        return self._entries

    @staticmethod
    def key(content_sha: str, fix_ids: tuple[str, ...]) -> str:
        return f"{content_sha}|{','.join(fix_ids)}|{fixes_digest()}"

    def get(self, key: str) -> Outcomes | None:
        entry = self._load().get(key) or known_outcomes().get(key)
        if entry is None:
            return None
        try:
            return [(FixOutcome(outcome), reason) for outcome, reason in entry["outcomes"]]
        except (TypeError, ValueError):
            return None

    def put(self, key: str, outcomes: Outcomes, *, rendered: str | None = None) -> None:
        """Record ``outcomes`` (and the fixed code, when the fixes changed the file)."""
        entries = self._load()
        entry: dict = {"outcomes": [[outcome.value, reason] for outcome, reason in outcomes]}
        if rendered is not None:
            data = rendered.encode("utf-8")
            sha = sha256_bytes(data)
            with contextlib.suppress(OSError):
                path = self._rendered_path(sha)
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(path, data)
                entry["rendered"] = sha
        entries.pop(key, None)  # re-inserted last: eviction drops the oldest first
        entries[key] = entry
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        self._dirty = True

    def get_rendered(self, key: str) -> str | None:
        """The fixed code recorded for ``key``, if still on disk and intact."""
        entry = self._load().get(key)
        sha = entry.get("rendered") if entry else None
        if not sha:
            return None
        try:
            data = self._rendered_path(sha).read_bytes()
        except OSError:
            return None
        return data.decode("utf-8") if sha256_bytes(data) == sha else None

    @staticmethod
    def _rendered_path(sha: str) -> Path:
        return cache_dir() / "rendered" / f"{sha}.py"

    def save(self) -> None:
        if not self._dirty or self._entries is None:
            return
        path = cache_path()
        with contextlib.suppress(OSError):  # a read-only cache dir only loses the speed-up
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, (json.dumps(self._entries) + "\n").encode("utf-8"))  # insertion order = age
            self._dirty = False
            self._prune_rendered()

    def _prune_rendered(self) -> None:
        live = {entry.get("rendered") for entry in (self._entries or {}).values()}
        with contextlib.suppress(OSError):
            files = sorted(
                ((p.stat().st_mtime, p) for p in (cache_dir() / "rendered").glob("*.py")), reverse=True
            )
            recent = time.time() - 60  # another process may have just written it, its index not yet
            for index, (mtime, path) in enumerate(files):
                if index >= MAX_RENDERED or (path.stem not in live and mtime < recent):
                    path.unlink(missing_ok=True)


OUTCOMES = OutcomeCache()
