"""`verify`: prove that the copy transformers will import can be fine-tuned.

The checks run in a fresh interpreter (:mod:`florence_patch.verify_worker`): transformers reads
HF_MODULES_CACHE once at import and caches imported remote code per process, and a verify
right after an apply must import the file as it is now, in the cache the user pointed at.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import FlorencePatchError

TYPE_ERROR_HINT = "the remote code needs fixing: run `florence-patch apply {model}` (then verify again)"


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""
    hint: str = ""


@dataclass(frozen=True)
class VerifyReport:
    model: str
    revision: str | None
    weights: bool
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)


def verify(
    model: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights: bool = False,
    timeout: float = 1800,
) -> VerifyReport:
    """Run every check on ``model`` (hub id or local directory) and return the report."""
    is_dir = Path(model).expanduser().is_dir()
    if not is_dir and revision is not None:
        # transformers resolves refs and full commits offline, not the short ids people type.
        from .discovery import find_copies

        revision = find_copies(model, revision=revision, cache_dir=cache_dir).copies[0].commit or revision
    request = {
        "model": str(Path(model).expanduser().resolve()) if is_dir else model,
        "revision": revision,
        "weights": weights,
    }
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cache_dir is not None:
        # Through the environment, not cache_dir=: from_config hands unknown kwargs to the model.
        env["HF_HUB_CACHE"] = str(Path(cache_dir).expanduser().resolve())
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "florence_patch.verify_worker", json.dumps(request)],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise FlorencePatchError(f"verify of {model} timed out after {timeout:.0f}s") from error
    checks = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            checks.append(CheckResult(data["name"], data["passed"], data.get("detail", ""), data.get("hint", "")))
    if not checks:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        checks.append(CheckResult("run", False, f"the verify worker died: {last}"))
    return VerifyReport(model=model, revision=revision, weights=weights, checks=tuple(checks))
