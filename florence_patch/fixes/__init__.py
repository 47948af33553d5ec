"""The registry of fixes, in the order they are applied.

``select_fixes`` picks what the installed transformers needs (on 4.49 only the output-class
fix of issue #2), or exactly the fixes a user names.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UsageError
from .spec import Fix, FixOutcome, FixResult, UnrecognizedCode

OUTPUT_CLASS_FIX = Fix(
    id="output-class",
    description="Florence2Seq2SeqLMOutput gains loss/logits (first) and image_hidden_states (last)",
    filename="modeling_florence2.py",
    codemod=".output_class:AddLossLogitsToOutput",
)

ALL_FIXES: tuple[Fix, ...] = (OUTPUT_CLASS_FIX,)

REMOTE_CODE_FILES = ("modeling_florence2.py", "configuration_florence2.py", "processing_florence2.py")


class UnknownFixError(UsageError):
    pass


def fix_by_id(fix_id: str) -> Fix:
    for fix in ALL_FIXES:
        if fix.id == fix_id:
            return fix
    known = ", ".join(f.id for f in ALL_FIXES)
    raise UnknownFixError(f"unknown fix {fix_id!r} (known: {known})")


def select_fixes(
    transformers_version: str, *, only: Iterable[str] | None = None, all_fixes: bool = False
) -> tuple[Fix, ...]:
    """The fixes to apply, in registry order."""
    if all_fixes:
        return ALL_FIXES
    if only:
        wanted = {fix_by_id(i).id for i in only}
        return tuple(f for f in ALL_FIXES if f.id in wanted)
    return tuple(f for f in ALL_FIXES if f.needed_on(transformers_version))


__all__ = [
    "ALL_FIXES",
    "OUTPUT_CLASS_FIX",
    "REMOTE_CODE_FILES",
    "Fix",
    "FixOutcome",
    "FixResult",
    "UnknownFixError",
    "UnrecognizedCode",
    "fix_by_id",
    "select_fixes",
]
