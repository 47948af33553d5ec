"""What a fix is, without importing libcst (so `status` with a warm cache never pays for it)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum
from typing import Any

from packaging.version import Version


class UnrecognizedCode(Exception):
    """The fix's target exists in the file but not in a shape we know how to rewrite."""


class FixOutcome(str, Enum):
    NEEDED = "needed"  # the codemod changes the file
    PRESENT = "present"  # target found, fix already there
    ABSENT = "absent"  # target not in this file (SkipFile)
    UNRECOGNIZED = "unrecognized"  # target found in an unknown shape, or the file does not parse


@dataclass(frozen=True)
class FixResult:
    outcome: FixOutcome
    code: str  # the module after the fix (== input unless outcome is NEEDED)
    reason: str = ""


@dataclass(frozen=True)
class Fix:
    """One registered fix.

    ``codemod`` is the codemod class, or ``"module:Class"`` imported on first use.
    ``min_transformers``/``max_transformers`` bound the installed transformers versions that
    need it: needed when ``min <= installed < max`` (either bound may be None).
    """

    id: str
    description: str
    filename: str  # "modeling_florence2.py" | "configuration_florence2.py" | "processing_florence2.py"
    codemod: Any
    min_transformers: str | None = None
    max_transformers: str | None = None

    @property
    def codemod_class(self) -> Any:
        if isinstance(self.codemod, str):
            module, _, name = self.codemod.partition(":")
            return getattr(importlib.import_module(module, __package__), name)
        return self.codemod

    def needed_on(self, transformers_version: str) -> bool:
        v = Version(transformers_version)
        if self.min_transformers is not None and v < Version(self.min_transformers):
            return False
        if self.max_transformers is not None and v >= Version(self.max_transformers):
            return False
        return True

    def run(self, code: str) -> FixResult:
        """Run this fix alone on ``code`` (a str: libcst keeps its line endings)."""
        from .base import run_fixes

        final, results = run_fixes(code, [self])
        result = results[0]
        return FixResult(result.outcome, final if result.outcome is FixOutcome.NEEDED else code, result.reason)
