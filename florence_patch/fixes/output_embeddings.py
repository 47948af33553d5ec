"""Reload unties the language model's output layer (transformers 4.x, found while testing issue #5).

A model saved with safetensors stores the shared embedding once and drops its tied copies,
``language_model.lm_head.weight`` included. On reload, transformers 4.x re-ties weights through
the top-level model's ``get_output_embeddings()``, which ``Florence2ForConditionalGeneration``
does not define: ``lm_head`` is reported "newly initialized" and keeps uninitialised memory,
so the reloaded model's loss and generations are garbage. The multimodal model now delegates
``get_output_embeddings`` to the language model, as it already does ``get_input_embeddings``.
transformers 5 ties through ``_tied_weights_keys`` instead and is unaffected either way.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import body_statements, dotted_name, method
from .base import FlorenceCodemod, UnrecognizedCode

_DELEGATE_SOURCE = "def get_output_embeddings(self):\n    return self.language_model.get_output_embeddings()\n"


def _returns(function: cst.FunctionDef) -> str | None:
    """``a.b.c()`` when the function body is ``return a.b.c()``, else None."""
    statements = body_statements(function)
    if len(statements) == 1 and m.matches(statements[0], m.SimpleStatementLine(body=[m.Return(value=m.Call(args=[]))])):
        return dotted_name(statements[0].body[0].value.func)  # type: ignore[attr-defined,union-attr]
    return None


class DelegateOutputEmbeddings(FlorenceCodemod):
    DESCRIPTION = "Give the multimodal model get_output_embeddings, so transformers 4.x re-ties lm_head on reload."
    SCOPE = frozenset()  # only top-level classes' method lists are read, in leave_Module

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body = list(updated_node.body)
        delegating = False
        for index, statement in enumerate(body):
            if not isinstance(statement, cst.ClassDef):
                continue
            get_input = method(statement, "get_input_embeddings")
            if get_input is None or _returns(get_input) != "self.language_model.get_input_embeddings":
                continue
            delegating = True
            get_output = method(statement, "get_output_embeddings")
            if get_output is not None:
                if _returns(get_output) != "self.language_model.get_output_embeddings":
                    raise UnrecognizedCode(f"{statement.name.value}.get_output_embeddings does not ask language_model")
                continue
            statements = body_statements(statement)
            position = statements.index(get_input) + 1
            new_method = cst.parse_statement(_DELEGATE_SOURCE)
            new_method = new_method.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
            statements.insert(position, new_method)
            body[index] = statement.with_changes(body=statement.body.with_changes(body=statements))
        if not delegating:
            raise SkipFile("no class delegating get_input_embeddings to language_model")
        return updated_node.with_changes(body=body)
