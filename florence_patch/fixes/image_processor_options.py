"""P2: the processor silently stops resizing and normalising images on transformers 5.

``Florence2Processor.__call__`` forwards every image option to the image processor, ``None``
when the caller did not set it (``do_resize=None``, ``do_normalize=None``, ...). 4.x image
processors treated ``None`` as "use my default"; transformers 5 keeps the explicit ``None``,
so images reach the model at their original size and unnormalised. The keyword options are
now passed only when they are not ``None``.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import method, top_level_classes, top_level_definitions_mentioning
from .base import FlorenceCodemod, UnrecognizedCode

_IMAGE_PROCESSOR_CALL = m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name("image_processor")))
_COMMENT = "# transformers>=5 image processors keep an explicit None instead of their default"


def _relative_code(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def _filtered_call(call: cst.Call) -> cst.Call:
    positional = [a for a in call.args if a.keyword is None and a.star == ""]
    keywords = [a for a in call.args if a.keyword is not None]
    options = "".join(
        f"            {a.keyword.value}={_relative_code(a.value)},\n" for a in keywords  # type: ignore[union-attr]
    )
    positional_code = "".join(f"    {_relative_code(a.value)},\n" for a in positional)
    source = (
        f"{_relative_code(call.func)}(\n"
        f"{positional_code}"
        f"    **{{  {_COMMENT}\n"
        "        option: value\n"
        "        for option, value in dict(\n"
        f"{options}"
        "        ).items()\n"
        "        if value is not None\n"
        "    },\n"
        ")"
    )
    new_call = cst.parse_expression(source)
    assert isinstance(new_call, cst.Call)
    return new_call


class DropNoneImageOptions(FlorenceCodemod):
    DESCRIPTION = "Pass image-processor options only when they are not None (transformers 5 keeps None)."

    def __init__(self, context) -> None:
        super().__init__(context)
        self.seen = False
        self.in_call_method = 0

    def visit_Module(self, node: cst.Module) -> None:
        # only descend into callable classes that use the image processor
        self.SCOPE = frozenset(
            name for name, c in top_level_classes(node).items() if method(c, "__call__") is not None
        ) & top_level_definitions_mentioning(node, "image_processor")

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if node.name.value == "__call__":
            self.in_call_method += 1

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        if original_node.name.value == "__call__":
            self.in_call_method -= 1
        return updated_node

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        if not self.in_call_method or not m.matches(updated_node, _IMAGE_PROCESSOR_CALL):
            return updated_node
        self.seen = True
        keywords = [a for a in updated_node.args if a.keyword is not None]
        starred = [a for a in updated_node.args if a.star != ""]
        if not keywords:
            if starred:
                return updated_node  # options already passed through a filtered mapping
            raise UnrecognizedCode("self.image_processor is called without any options")
        if starred:
            raise UnrecognizedCode("self.image_processor is called with both keywords and *args/**kwargs")
        if any(a.keyword is None for a in updated_node.args[len(updated_node.args) - len(keywords):]) or any(
            a.keyword is not None for a in updated_node.args[: len(updated_node.args) - len(keywords)]
        ):
            raise UnrecognizedCode("self.image_processor's positional and keyword arguments are interleaved")
        return _filtered_call(updated_node)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.seen:
            raise SkipFile("no self.image_processor(...) call in a __call__ method")
        return updated_node
