"""M3: ``Florence2Seq2SeqLMOutput.__init__() got an unexpected keyword argument 'cache'``.

transformers 5 output classes rename ``past_key_values=`` to ``cache=`` when they are built,
so a ``ModelOutput`` subclass that declares its own ``past_key_values`` field can no longer be
constructed. ``Florence2Seq2SeqLMOutput`` now derives from transformers' ``Seq2SeqLMOutput``
(``past_key_values`` on 4.x, ``cache`` on 5.x) and keeps only the fields that class lacks
(``last_hidden_state``, ``image_hidden_states``). The tuple view keeps its order:
inherited fields first, and ``last_hidden_state`` is never set by the model.

This rewrites the same class as the output-class fix; the two compose in either order.
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod import SkipFile

from ._cst import base_names, body_statements, insert_import_after_imports, module_binds_name
from .output_class import _field_name
from .base import FlorenceCodemod, UnrecognizedCode

OUTPUT_CLASS = "Florence2Seq2SeqLMOutput"
NEW_BASE = "Seq2SeqLMOutput"
NEW_BASE_MODULE = "transformers.modeling_outputs"
OLD_BASE = "ModelOutput"
# Fields Seq2SeqLMOutput declares (4.x spelling, plus 5.x's name for the cache).
INHERITED_FIELDS = frozenset(
    {
        "loss",
        "logits",
        "past_key_values",
        "cache",
        "decoder_hidden_states",
        "decoder_attentions",
        "cross_attentions",
        "encoder_last_hidden_state",
        "encoder_hidden_states",
        "encoder_attentions",
    }
)
# Declaring either of these shadows the base's cache handling (5.x renames the keyword).
CACHE_FIELDS = frozenset({"past_key_values", "cache"})


class DeriveOutputFromSeq2SeqLMOutput(FlorenceCodemod):
    DESCRIPTION = "Derive Florence2Seq2SeqLMOutput from Seq2SeqLMOutput, keeping only the fields it lacks."
    SCOPE = frozenset({OUTPUT_CLASS})

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False
        self.rebased = False
        self.base_imported = False

    def visit_Module(self, node: cst.Module) -> None:
        self.base_imported = module_binds_name(node, NEW_BASE)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if updated_node.name.value != OUTPUT_CLASS:
            return updated_node
        self.found = True
        bases = base_names(updated_node)
        statements = body_statements(updated_node)
        fields = [_field_name(s) for s in statements]
        if NEW_BASE in bases:
            if CACHE_FIELDS & set(fields):
                raise UnrecognizedCode(f"{OUTPUT_CLASS} derives from {NEW_BASE} but still declares its own cache field")
            return updated_node
        if bases != [OLD_BASE] or len(updated_node.bases) != 1:
            raise UnrecognizedCode(f"{OUTPUT_CLASS} derives from {bases}, expected [{OLD_BASE}]")
        if "past_key_values" not in fields:
            raise UnrecognizedCode(f"{OUTPUT_CLASS} declares no past_key_values field")

        kept = [s for s, name in zip(statements, fields) if name is None or name not in INHERITED_FIELDS]
        # Comments/blank lines above a removed first field move to the first field kept.
        first_field = next(i for i, name in enumerate(fields) if name is not None)
        if fields[first_field] in INHERITED_FIELDS:
            following = [s for s, name in zip(statements, fields) if name is not None and name not in INHERITED_FIELDS]
            if following:
                replacement = following[0].with_changes(leading_lines=statements[first_field].leading_lines)
                kept = [replacement if s is following[0] else s for s in kept]
        if not any(_field_name(s) for s in kept):
            raise UnrecognizedCode(f"{OUTPUT_CLASS} would have no fields of its own left")

        self.rebased = True
        base = updated_node.bases[0]
        new_base = base.with_changes(value=cst.Name(NEW_BASE))
        return updated_node.with_changes(bases=[new_base], body=updated_node.body.with_changes(body=kept))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise SkipFile(f"no {OUTPUT_CLASS} class in this file")
        if self.rebased and not self.base_imported:
            return insert_import_after_imports(updated_node, f"from {NEW_BASE_MODULE} import {NEW_BASE}\n")
        return updated_node
