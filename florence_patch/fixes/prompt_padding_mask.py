"""A batch's shorter prompts attend to their padding (every revision, every transformers).

The processor pads a batch of prompts and returns their attention mask, but
``Florence2ForConditionalGeneration`` builds its own all-ones mask for [image tokens, prompt]:
``forward`` replaces the mask it is given and ``generate`` drops it (passing one through its
``**kwargs`` fails: it lacks the image positions). The pad tokens of a short prompt are then
attended to by the encoder and, through cross-attention, by every decoding step, so a question's
answer and loss depend on the longest question batched with it (on the benchmarks' small model,
8 of 128 answers changed between batches of 1 and 16). transformers' own Florence-2 port masks
them. The merge now takes the prompt's mask, and ``forward`` and ``generate`` pass theirs on.
Without a mask, or with one that does not cover the prompt, nothing changes, so a batch of one
prompt (no padding) gives what it gave before.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import assignment_line, body_statements, find_all, method, parse_block, top_level_classes
from .base import FlorenceCodemod, UnrecognizedCode

MERGE = "_merge_input_ids_with_image_features"
MASK = "attention_mask"

# Where the merge builds the prompt's all-ones mask: the prompt's own mask replaces it.
_PROMPT_ONES = assignment_line(
    "task_prefix_attention_mask", m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("ones")))
)
_USE_PROMPT_MASK_SOURCE = (
    "# the prompt's own mask: the padding of a batch's shorter prompts is not attended to\n"
    "if attention_mask is not None and attention_mask.shape == task_prefix_attention_mask.shape:\n"
    "    task_prefix_attention_mask = attention_mask.to(task_prefix_attention_mask)\n"
)
_MERGE_CALL = m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name(MERGE)))
_LANGUAGE_MODEL_GENERATE = m.Call(
    func=m.Attribute(value=m.Attribute(value=m.Name("self"), attr=m.Name("language_model")), attr=m.Name("generate"))
)
_NO_SPACE = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))


def _param_names(params: cst.Parameters) -> list[str]:
    return [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]


def _has_keyword(call: cst.Call, name: str) -> bool:
    return any(arg.keyword is not None and arg.keyword.value == name for arg in call.args)


def _append_param(params: cst.Parameters, name: str) -> cst.Parameters:
    """``params`` with ``name=None`` after the last positional-or-keyword parameter (before ``**kwargs``)."""
    if params.kwonly_params or not params.params:
        raise UnrecognizedCode("a merge/generate signature with keyword-only or no parameters")
    last = params.params[-1]
    new_param = last.with_changes(name=cst.Name(name), annotation=None, default=cst.Name("None"), equal=_NO_SPACE)
    if last.comma is cst.MaybeSentinel.DEFAULT:
        # ``def f(self, a)`` -> ``def f(self, a, name=None)``; the old last parameter's trailing
        # whitespace moves to the new one.
        last = last.with_changes(
            comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")), whitespace_after_param=cst.SimpleWhitespace("")
        )
        if params.star_kwarg is not None:
            new_param = new_param.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    return params.with_changes(params=[*params.params[:-1], last, new_param])


class PassPromptMaskToMerge(FlorenceCodemod):
    DESCRIPTION = "Mask the padding of batched prompts: forward and generate pass the prompt's attention mask to the merge."
    METHODS = frozenset({MERGE, "forward", "generate"})

    def __init__(self, context) -> None:
        super().__init__(context)
        self._functions: list[cst.FunctionDef] = []  # the functions being visited, innermost last
        self._seen = False

    def visit_Module(self, node: cst.Module) -> None:
        # only the classes that merge image tokens and prompt
        self.SCOPE = frozenset(name for name, c in top_level_classes(node).items() if method(c, MERGE) is not None)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self._functions.append(node)

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        function = self._functions[-1].name.value if self._functions else None
        if function in ("forward", "generate") and m.matches(updated_node, _MERGE_CALL):
            if len(updated_node.args) >= 3 or _has_keyword(updated_node, MASK):
                return updated_node
            if len(updated_node.args) != 2 or any(arg.keyword or arg.star for arg in updated_node.args):
                raise UnrecognizedCode(f"{function} calls {MERGE} with arguments other than (image_features, inputs_embeds)")
            return updated_node.with_changes(args=[*updated_node.args, cst.Arg(cst.Name(MASK))])
        if function == "generate" and m.matches(updated_node, _LANGUAGE_MODEL_GENERATE):
            if _has_keyword(updated_node, MASK):
                return updated_node
            args = list(updated_node.args)
            position = next((i for i, arg in enumerate(args) if arg.star), len(args))
            if position == 0:
                raise UnrecognizedCode("generate passes language_model.generate no keyword arguments to follow")
            # laid out like the keyword before it (its comma carries the line break, if any)
            new_arg = args[position - 1].with_changes(keyword=cst.Name(MASK), value=cst.Name(MASK), equal=_NO_SPACE)
            if position == len(args) and new_arg.comma is not cst.MaybeSentinel.DEFAULT:
                args[position - 1] = args[position - 1].with_changes(comma=new_arg.comma)
                new_arg = new_arg.with_changes(comma=cst.MaybeSentinel.DEFAULT)
            args.insert(position, new_arg)
            return updated_node.with_changes(args=args)
        return updated_node

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        if not self._functions or self._functions[-1] is not original_node:
            return updated_node  # not descended into (out of METHODS): visit_FunctionDef never saw it
        self._functions.pop()
        if self._functions:  # a nested function
            return updated_node
        name = updated_node.name.value
        if name == MERGE:
            return self._merge_takes_mask(updated_node)
        if name == "forward" and MASK not in _param_names(updated_node.params):
            if find_all(updated_node, _MERGE_CALL):
                raise UnrecognizedCode(f"forward merges image and prompt but takes no {MASK}")
        if name == "generate":
            if not find_all(updated_node, _LANGUAGE_MODEL_GENERATE):
                raise UnrecognizedCode("generate does not hand over to language_model.generate")
            if MASK not in _param_names(updated_node.params):
                return updated_node.with_changes(params=_append_param(updated_node.params, MASK))
        return updated_node

    def _merge_takes_mask(self, merge: cst.FunctionDef) -> cst.FunctionDef:
        self._seen = True
        if MASK in _param_names(merge.params):
            return merge
        statements = body_statements(merge)
        position = next((i for i, statement in enumerate(statements) if m.matches(statement, _PROMPT_ONES)), None)
        if position is None:
            raise UnrecognizedCode(f"{MERGE} does not build task_prefix_attention_mask with torch.ones")
        statements[position + 1 : position + 1] = parse_block(_USE_PROMPT_MASK_SOURCE)
        return merge.with_changes(
            params=_append_param(merge.params, MASK), body=merge.body.with_changes(body=statements)
        )

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self._seen:
            raise SkipFile(f"no {MERGE} in this file")
        return updated_node
