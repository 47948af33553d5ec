"""Write a model repository into a Hugging Face hub cache, laid out as huggingface_hub lays it out.

The demo checkpoint and the tests never download anything: they write the files a download would
have left behind, byte for byte in the same places, and let transformers load them offline:

    <cache_dir>/models--<org>--<name>/
        blobs/<etag>                      file contents, one blob per distinct content
        snapshots/<commit>/<path>         relative symlinks into ../../blobs (deeper paths climb more)
        refs/<revision>                   the commit a branch or PR ref points at, with no newline

The etag of a blob is what the hub reports for it: the sha256 of an LFS file (weights), the git
blob sha1 of any other file. A ref named like ``refs/pr/1`` lands at ``refs/refs/pr/1``, exactly
where huggingface_hub caches it when someone downloads ``revision="refs/pr/1"``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

# Files the hub stores through git LFS (its default .gitattributes): their etag is a sha256.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(content: bytes) -> str:
    """The id git gives a file's content: sha1 of ``b"blob <size>\\0" + content``."""
    return hashlib.sha1(b"blob %d\x00" % len(content) + content).hexdigest()


def blob_etag(path: str, content: bytes) -> str:
    """The etag the hub reports for ``path``: sha256 for LFS files, git blob sha1 otherwise."""
    if path.endswith(LFS_SUFFIXES):
        return hashlib.sha256(content).hexdigest()
    return git_blob_sha1(content)


def repo_cache_dir(cache_dir: Path, repo_id: str) -> Path:
    """``<cache_dir>/models--<org>--<name>``."""
    return Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def write_hub_repo(
    cache_dir: Path,
    repo_id: str,
    revisions: Mapping[str, Mapping[str, bytes]],
    refs: Mapping[str, str],
) -> Path:
    """Lay out ``repo_id`` in the hub cache ``cache_dir`` (the folder ``HF_HUB_CACHE`` names).

    ``revisions`` maps each 40-hex commit id to its files (repo-relative POSIX path -> content);
    ``refs`` maps ref names ("main", "refs/pr/1", ...) to one of those commits. Writing is
    idempotent: an existing blob, link or ref with the right content is left alone, a stale link or
    ref is replaced. Returns the repo's folder in the cache.
    """
    if "/" not in repo_id or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    for ref, commit in refs.items():
        if commit not in revisions:
            raise ValueError(f"ref {ref!r} points at {commit}, which is not among the revisions written")

    repo_dir = repo_cache_dir(cache_dir, repo_id)
    blobs_dir = repo_dir / "blobs"
    blobs_dir.mkdir(parents=True, exist_ok=True)

    for commit, files in revisions.items():
        if not _COMMIT_RE.match(commit):
            raise ValueError(f"revision ids must be 40 lowercase hex digits, got {commit!r}")
        snapshot_dir = repo_dir / "snapshots" / commit
        for relative, content in files.items():
            parts = PurePosixPath(relative).parts
            if not parts or relative.startswith("/") or ".." in parts:
                raise ValueError(f"file paths must be relative and inside the repo, got {relative!r}")
            etag = blob_etag(relative, content)
            blob = blobs_dir / etag
            if not blob.exists():
                _write_atomically(blob, content)

            link = snapshot_dir.joinpath(*parts)
            link.parent.mkdir(parents=True, exist_ok=True)
            # from snapshots/<commit>/<dirs...>/<file> back up to the repo folder, then into blobs
            target = os.path.join(*([".."] * (len(parts) + 1)), "blobs", etag)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)

    for ref, commit in refs.items():
        ref_path = repo_dir / "refs" / PurePosixPath(ref)
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        if not ref_path.exists() or ref_path.read_text() != commit:
            _write_atomically(ref_path, commit.encode("ascii"))

    return repo_dir


def _write_atomically(path: Path, content: bytes) -> None:
    # readers (another process loading the model) must never see a half-written file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
