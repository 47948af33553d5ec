"""C1: the language config reads ``self.forced_bos_token_id``, which transformers 5 never sets.

transformers 5 configs drop every generation parameter (they belong to the generation
config), so after ``super().__init__`` the attribute does not exist and loading the config
dies with ``AttributeError: 'Florence2LanguageConfig' object has no attribute
'forced_bos_token_id'``. Every read becomes ``getattr(self, "forced_bos_token_id", None)``
(the same value on 4.x, where the attribute always exists). Writes are left alone.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import find_all
from .base import FlorenceCodemod, UnrecognizedCode

ATTRIBUTE = "forced_bos_token_id"

_SELF_ATTRIBUTE = m.Attribute(value=m.Name("self"), attr=m.Name(ATTRIBUTE))
_GETATTR_READ = m.Call(
    func=m.Name("getattr"),
    args=[m.Arg(value=m.Name("self")), m.Arg(value=m.SimpleString()), m.Arg()],
)


class ReadForcedBosWithGetattr(FlorenceCodemod):
    DESCRIPTION = "Read self.forced_bos_token_id with getattr(..., None): transformers 5 configs never set it."

    def __init__(self, context) -> None:
        super().__init__(context)
        self.target_seen = False
        self.written: set[int] = set()  # ids of self.forced_bos_token_id nodes that are assignment targets

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        if m.matches(node.target, _SELF_ATTRIBUTE):
            self.written.add(id(node.target))

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if m.matches(node.target, _SELF_ATTRIBUTE):
            self.written.add(id(node.target))

    def visit_Del(self, node: cst.Del) -> None:
        if find_all(node.target, _SELF_ATTRIBUTE):
            raise UnrecognizedCode(f"del self.{ATTRIBUTE}")

    def visit_Call(self, node: cst.Call) -> None:
        if m.matches(node, _GETATTR_READ) and node.args[1].value.evaluated_value == ATTRIBUTE:  # type: ignore[union-attr]
            self.target_seen = True

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        if m.matches(node.target, _SELF_ATTRIBUTE):
            raise UnrecognizedCode(f"augmented assignment to self.{ATTRIBUTE}")

    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute) -> cst.BaseExpression:
        if not m.matches(original_node, _SELF_ATTRIBUTE):
            return updated_node
        self.target_seen = True
        if id(original_node) in self.written:
            return updated_node
        return cst.parse_expression(f'getattr(self, "{ATTRIBUTE}", None)')

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.target_seen:
            raise SkipFile(f"no self.{ATTRIBUTE} in this file")
        return updated_node
