"""C2: the language model's output layer is silently no longer tied to the shared embedding.

transformers 4.x configs defaulted ``tie_word_embeddings=True``; transformers 5 reads it with
``getattr(config, "tie_word_embeddings", False)``, so ``lm_head`` becomes a separate, randomly
initialised matrix (and a 5.x save/reload loses the token embeddings). The language config
declares ``tie_word_embeddings=True`` itself and passes it on to ``PretrainedConfig``, which
keeps 4.x behaviour there and restores it on 5.x.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import body_statements, is_super_init_call, method
from .base import FlorenceCodemod, UnrecognizedCode

LANGUAGE_CONFIG = "Florence2LanguageConfig"
PARAMETER = "tie_word_embeddings"


def _super_init_calls(function: cst.FunctionDef) -> list[int]:
    return [i for i, s in enumerate(body_statements(function)) if is_super_init_call(s)]


def _call_of(statement: cst.BaseStatement) -> cst.Call:
    return statement.body[0].value  # type: ignore[attr-defined,union-attr]


class DeclareTieWordEmbeddings(FlorenceCodemod):
    DESCRIPTION = "Declare tie_word_embeddings=True in the language config and pass it to PretrainedConfig."
    SCOPE = frozenset({LANGUAGE_CONFIG})

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if updated_node.name.value != LANGUAGE_CONFIG:
            return updated_node
        init = method(updated_node, "__init__")
        if init is None:
            return updated_node
        self.found = True
        new_init = self._fix_init(init)
        if new_init is init:
            return updated_node
        return updated_node.deep_replace(init, new_init)  # type: ignore[return-value]

    def _fix_init(self, init: cst.FunctionDef) -> cst.FunctionDef:
        params = init.params
        declared = any(p.name.value == PARAMETER for p in (*params.params, *params.kwonly_params))
        calls = _super_init_calls(init)
        if len(calls) != 1:
            raise UnrecognizedCode(f"{LANGUAGE_CONFIG}.__init__ calls super().__init__ {len(calls)} times")
        call_statement = body_statements(init)[calls[0]]
        call = _call_of(call_statement)
        passed = any(m.matches(a.keyword, m.Name(PARAMETER)) for a in call.args)
        if declared and passed:
            return init
        if declared != passed:
            raise UnrecognizedCode(f"{LANGUAGE_CONFIG}.__init__ declares or passes {PARAMETER}, not both")
        if not isinstance(params.star_kwarg, cst.Param) or params.kwonly_params:
            raise UnrecognizedCode(f"{LANGUAGE_CONFIG}.__init__ has no **kwargs after its parameters")
        if not params.params or not m.matches(call.args[-1], m.Arg(star="**")):
            raise UnrecognizedCode(f"{LANGUAGE_CONFIG}.__init__ does not end with **kwargs / pass **kwargs last")

        # The new parameter copies the formatting of the last named one (same line style).
        last_param = params.params[-1]
        new_param = last_param.with_changes(
            name=cst.Name(PARAMETER),
            annotation=None,
            default=cst.Name("True"),
            comma=last_param.comma if last_param.comma is not cst.MaybeSentinel.DEFAULT else cst.Comma(
                whitespace_after=cst.SimpleWhitespace(" ")
            ),
        )
        if last_param.comma is cst.MaybeSentinel.DEFAULT:
            last_param = last_param.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        new_params = params.with_changes(params=[*params.params[:-1], last_param, new_param])

        # The new keyword goes right before **kwargs, formatted like the argument before it.
        args = list(call.args)
        template = args[-2] if len(args) >= 2 else args[-1]
        new_arg = cst.Arg(
            keyword=cst.Name(PARAMETER),
            value=cst.Name(PARAMETER),
            equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")),
            comma=template.comma if template is not args[-1] else cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")),
        )
        args.insert(len(args) - 1, new_arg)
        new_call = call.with_changes(args=args)
        new_statement = call_statement.with_changes(body=[call_statement.body[0].with_changes(value=new_call)])  # type: ignore[attr-defined]

        statements = body_statements(init)
        statements[calls[0]] = new_statement
        return init.with_changes(params=new_params, body=init.body.with_changes(body=statements))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise SkipFile(f"no {LANGUAGE_CONFIG}.__init__ in this file")
        return updated_node
