"""A small persistent cache of fix outcomes, keyed by file content.

Parsing the 2,840-line modeling file with libcst costs about half a second and importing libcst
about one; a cache holds many copies of the same few revisions, and `status` runs often (a CI
gate, every torchrun rank). Outcomes depend only on the file's bytes and the fix code, so the key
is sha256(file) + fix ids + a digest of the fixes package's own source: editing a codemod
invalidates every entry. A lost entry only costs a re-parse, so concurrent writers need no lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from pathlib import Path

from . import __version__
from .fixes.spec import FixOutcome
from .safe_io import atomic_write

MAX_ENTRIES = 1024


@functools.lru_cache(maxsize=1)
def fixes_digest() -> str:
    package = Path(__file__).with_name("fixes")
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_path() -> Path:
    """Outside the HF caches, so `apply --check`/`--dry-run` leave those trees byte-identical."""
    if os.environ.get("FLORENCE_PATCH_CACHE_DIR"):
        return Path(os.environ["FLORENCE_PATCH_CACHE_DIR"]).expanduser() / "fix-outcomes.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "florence-patch" / "fix-outcomes.json"


class OutcomeCache:
    def __init__(self) -> None:
        self._entries: dict[str, list[list[str]]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, list[list[str]]]:
        if self._entries is None:
            try:
                self._entries = json.loads(cache_path().read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    @staticmethod
    def key(content_sha: str, fix_ids: tuple[str, ...]) -> str:
        return f"{content_sha}|{','.join(fix_ids)}|{fixes_digest()}"

    def get(self, key: str) -> list[tuple[FixOutcome, str]] | None:
        entry = self._load().get(key)
        if entry is None:
            return None
        return [(FixOutcome(outcome), reason) for outcome, reason in entry]

    def put(self, key: str, outcomes: list[tuple[FixOutcome, str]]) -> None:
        entries = self._load()
        entries[key] = [[outcome.value, reason] for outcome, reason in outcomes]
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        self._dirty = True

    def save(self) -> None:
        if not self._dirty or self._entries is None:
            return
        path = cache_path()
        with contextlib.suppress(OSError):  # a read-only HF_HOME only loses the speed-up
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, (json.dumps(self._entries, sort_keys=True) + "\n").encode("utf-8"))
            self._dirty = False


OUTCOMES = OutcomeCache()
