"""M5: generation silently stops using the KV cache (every step re-reads the whole prefix).

transformers 5 hands the cache to ``prepare_inputs_for_generation`` as ``cache=`` (first an
empty ``Cache`` object, then whatever the model returned), while Florence-2's override only
reads ``past_key_values=``: the cache lands in ``**kwargs`` and is dropped, so each decoding
step runs the decoder over all tokens so far. The override now accepts ``cache`` and uses it
as ``past_key_values`` once it holds the model's own (legacy tuple) cache. transformers 4.x
never passes ``cache``, so nothing changes there.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import method, parse_block, top_level_classes
from .base import FlorenceCodemod, UnrecognizedCode

METHOD = "prepare_inputs_for_generation"

_ACCEPT_SOURCE = (
    "# transformers>=5 passes the cache as `cache` (an empty Cache object first, then the tuple\n"
    "# cache this model returned): decode from it, as 4.x did with past_key_values.\n"
    "if past_key_values is None and isinstance(cache, (tuple, list)):\n"
    "    past_key_values = cache\n"
)


def _param_names(params: cst.Parameters) -> list[str]:
    return [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return m.matches(statement, m.SimpleStatementLine(body=[m.Expr(value=m.SimpleString() | m.ConcatenatedString())]))


class AcceptCacheInPrepareInputs(FlorenceCodemod):
    DESCRIPTION = "Let prepare_inputs_for_generation use the cache transformers 5 passes as `cache=`."
    METHODS = frozenset({METHOD})

    def __init__(self, context) -> None:
        super().__init__(context)
        self.seen = False

    def visit_Module(self, node: cst.Module) -> None:
        # only descend into the classes that define the method
        self.SCOPE = frozenset(name for name, c in top_level_classes(node).items() if method(c, METHOD) is not None)

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        if updated_node.name.value != METHOD:
            return updated_node
        params = updated_node.params
        names = _param_names(params)
        if "past_key_values" not in names:
            return updated_node
        self.seen = True
        if "cache" in names:
            return updated_node
        if not isinstance(updated_node.body, cst.IndentedBlock):
            raise UnrecognizedCode(f"{METHOD} has no indented body")
        if params.kwonly_params or not params.params:
            raise UnrecognizedCode(f"{METHOD} has keyword-only parameters")

        last = params.params[-1]
        new_param = last.with_changes(name=cst.Name("cache"), annotation=None, default=cst.Name("None"))
        if last.default is None:
            new_param = new_param.with_changes(
                equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))
            )
        if last.comma is cst.MaybeSentinel.DEFAULT:
            last = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            new_param = new_param.with_changes(
                comma=cst.MaybeSentinel.DEFAULT
                if params.star_kwarg is None
                else cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            )
        new_params = params.with_changes(params=[*params.params[:-1], last, new_param])

        body = list(updated_node.body.body)
        insert_at = 1 if body and _is_docstring(body[0]) else 0
        block = parse_block(_ACCEPT_SOURCE)
        if insert_at < len(body):
            # a blank line between the new lines and the statement that used to come first
            following = body[insert_at]
            body[insert_at] = following.with_changes(leading_lines=[cst.EmptyLine(indent=False), *following.leading_lines])
        body[insert_at:insert_at] = block
        return updated_node.with_changes(params=new_params, body=updated_node.body.with_changes(body=body))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.seen:
            raise SkipFile(f"no {METHOD} taking past_key_values in this file")
        return updated_node
