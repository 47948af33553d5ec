"""M6: ``... has no attribute 'generate'`` (revisions before upstream's f928440), and its sequel.

Since transformers 4.50, ``PreTrainedModel`` no longer inherits ``GenerationMixin``; the
multimodal model's ``generate`` calls ``self.language_model.generate(...)``, which no longer
exists. ``GenerationMixin`` is added as the last base of the language-model class and imported
from ``transformers.generation.utils``, which is what upstream did later (f928440); files that
already have it are left alone.

Upstream never gave the multimodal model (``Florence2ForConditionalGeneration``) the mixin.
transformers' auto class adds it on the fly to a remote-code class that defines ``generate``,
but only the first time a process loads the model: it registers the bare class, and a second
``from_pretrained`` in the same process (the demo's evaluations around its training, a notebook
that loads twice) builds the bare class. From 4.52 that model answers ``can_generate()`` False,
gets no generation config, and transformers logs a six-line "has generative capabilities"
warning on every ``can_generate()`` call, three per load (4.50 and 4.51: True, warned once).
With the mixin in the code, every load builds the class the first load built.
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod import SkipFile

from ._cst import base_names, dotted_name, insert_import_after_imports, module_binds_name
from .base import FlorenceCodemod, UnrecognizedCode

LANGUAGE_MODEL = "Florence2LanguageForConditionalGeneration"
MULTIMODAL_MODEL = "Florence2ForConditionalGeneration"
MIXIN = "GenerationMixin"
MIXIN_MODULE = "transformers.generation.utils"
# The import goes right after this one, as upstream placed it.
ANCHOR_MODULE, ANCHOR_NAME = "transformers.modeling_utils", "PreTrainedModel"


def _imports(statement: cst.BaseStatement, module_name: str, name: str) -> bool:
    if not isinstance(statement, cst.SimpleStatementLine):
        return False
    return any(
        isinstance(s, cst.ImportFrom)
        and s.module is not None
        and dotted_name(s.module) == module_name
        and not isinstance(s.names, cst.ImportStar)
        and any(a.evaluated_name == name for a in s.names)
        for s in statement.body
    )


class InheritGenerationMixin(FlorenceCodemod):
    DESCRIPTION = "Add GenerationMixin as a base of the language model so it can generate on transformers>=4.50."
    TARGET = LANGUAGE_MODEL
    SCOPE = frozenset({TARGET})
    METHODS = frozenset()  # only the class bases change

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False
        self.added = False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if updated_node.name.value != self.TARGET:
            return updated_node
        self.found = True
        if MIXIN in base_names(updated_node):
            return updated_node
        if not updated_node.bases or updated_node.keywords:
            raise UnrecognizedCode(f"{self.TARGET} has no base classes or uses class keywords")
        bases = list(updated_node.bases)
        last = bases[-1]
        bases[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        bases.append(cst.Arg(value=cst.Name(MIXIN), comma=last.comma))
        self.added = True
        return updated_node.with_changes(bases=bases)

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise SkipFile(f"no {self.TARGET} class in this file")
        if not self.added or module_binds_name(updated_node, MIXIN):
            return updated_node
        body = list(updated_node.body)
        anchor = next((i for i, s in enumerate(body) if _imports(s, ANCHOR_MODULE, ANCHOR_NAME)), None)
        if anchor is None:
            return insert_import_after_imports(updated_node, f"from {MIXIN_MODULE} import {MIXIN}\n")
        body.insert(anchor + 1, cst.parse_statement(f"from {MIXIN_MODULE} import {MIXIN}\n"))
        return updated_node.with_changes(body=body)


class MultimodalInheritsGenerationMixin(InheritGenerationMixin):
    DESCRIPTION = "Add GenerationMixin as a base of the multimodal model, so every load builds the class the first built."
    TARGET = MULTIMODAL_MODEL
    SCOPE = frozenset({TARGET})
