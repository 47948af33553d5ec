"""P1: ``AttributeError: ... has no attribute additional_special_tokens`` in the processor.

transformers 5 tokenizers renamed ``additional_special_tokens`` to ``extra_special_tokens``.
Every read of ``<x>.additional_special_tokens`` becomes
``(<x>.additional_special_tokens if hasattr(<x>, "additional_special_tokens") else <x>.extra_special_tokens)``:
the old name wherever it exists (on 4.x ``extra_special_tokens`` means something else), the
new one otherwise. The ``'additional_special_tokens'`` *key* passed to ``add_special_tokens``
is still accepted by transformers 5 and is left alone.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import find_all, top_level_definitions_mentioning
from .base import FlorenceCodemod, UnrecognizedCode

OLD = "additional_special_tokens"
NEW = "extra_special_tokens"

# <owner>.additional_special_tokens if hasattr(<owner>, "additional_special_tokens") else <owner>.extra_special_tokens
_GUARDED = m.IfExp(
    test=m.Call(func=m.Name("hasattr")),
    body=m.Attribute(attr=m.Name(OLD)),
    orelse=m.Attribute(attr=m.Name(NEW)),
)


class ReadExtraSpecialTokensWhenRenamed(FlorenceCodemod):
    DESCRIPTION = "Read tokenizer.additional_special_tokens, or extra_special_tokens where it was renamed."

    def __init__(self, context) -> None:
        super().__init__(context)
        self.seen = False
        self.guarded_depth = 0

    def visit_Module(self, node: cst.Module) -> None:
        self.SCOPE = top_level_definitions_mentioning(node, OLD)

    def _refuse_write(self, target: cst.BaseExpression) -> None:
        if find_all(target, m.Attribute(attr=m.Name(OLD))):
            raise UnrecognizedCode(f"{OLD} is assigned or deleted, not read")

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self._refuse_write(node.target)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self._refuse_write(node.target)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self._refuse_write(node.target)

    def visit_Del(self, node: cst.Del) -> None:
        self._refuse_write(node.target)

    def visit_IfExp(self, node: cst.IfExp) -> None:
        if m.matches(node, _GUARDED):
            self.seen = True
            self.guarded_depth += 1

    def leave_IfExp(self, original_node: cst.IfExp, updated_node: cst.IfExp) -> cst.BaseExpression:
        if m.matches(original_node, _GUARDED):
            self.guarded_depth -= 1
        return updated_node

    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute) -> cst.BaseExpression:
        if original_node.attr.value != OLD or self.guarded_depth:
            return updated_node
        self.seen = True
        owner = updated_node.value
        if not isinstance(owner, (cst.Name, cst.Attribute)):
            raise UnrecognizedCode(f"{OLD} is read from a computed expression")
        owner_code = cst.Module(body=[]).code_for_node(owner)
        replacement = cst.parse_expression(
            f'({owner_code}.{OLD} if hasattr({owner_code}, "{OLD}") else {owner_code}.{NEW})'
        )
        return replacement

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.seen:
            raise SkipFile(f"no .{OLD} read in this file")
        return updated_node
