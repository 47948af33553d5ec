"""Backups of the original bytes and the manifest that describes them.

Layout, next to the files it protects (so it travels with a checkpoint directory and is
found without a registry)::

    <copy>/.florence-patch/manifest.json
    <copy>/.florence-patch/<file>.orig       the bytes before our first write

The manifest records, per file, sha256 before and after, the fixes applied, the tool and
transformers versions and the time. It is written *before* the patched file replaces the
original, so a crash leaves either the original (sha == before: still needs the fix) or the
patched file (sha == after), never an unexplained state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .errors import ConflictError
from .safe_io import atomic_write, state_dir

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class FileRecord:
    sha256_before: str
    sha256_after: str
    fixes: tuple[str, ...]
    backup: str  # file name inside the state dir


@dataclass(frozen=True)
class Manifest:
    files: dict[str, FileRecord]
    tool_version: str = __version__
    transformers_version: str = ""
    created: str = ""
    updated: str = ""
    format: int = MANIFEST_FORMAT
    history: tuple[dict, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = {name: asdict(rec) | {"fixes": list(rec.fixes)} for name, rec in self.files.items()}
        data["history"] = list(self.history)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        files = {
            name: FileRecord(rec["sha256_before"], rec["sha256_after"], tuple(rec["fixes"]), rec["backup"])
            for name, rec in data["files"].items()
        }
        return cls(
            files=files,
            tool_version=data.get("tool_version", ""),
            transformers_version=data.get("transformers_version", ""),
            created=data.get("created", ""),
            updated=data.get("updated", ""),
            format=data.get("format", MANIFEST_FORMAT),
            history=tuple(data.get("history", ())),
        )


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest_path(target_dir: Path) -> Path:
    return state_dir(target_dir) / MANIFEST_NAME


def read_manifest(target_dir: Path) -> Manifest | None:
    path = manifest_path(target_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as error:
        raise ConflictError(f"{path}: unreadable backup manifest ({error})") from error


def write_manifest(target_dir: Path, manifest: Manifest) -> None:
    atomic_write(manifest_path(target_dir), manifest.to_json().encode("utf-8"))


def backup_path(target_dir: Path, filename: str) -> Path:
    return state_dir(target_dir) / f"{filename}.orig"
