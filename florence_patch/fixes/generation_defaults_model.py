"""Generation defaults, model side: the language model generates with Florence-2's settings again.

transformers 5 builds the language model's generation config without the text config's
``num_beams=3``, ``no_repeat_ngram_size=3``, ``early_stopping``, ``forced_bos_token_id=0`` and
``forced_eos_token_id=2`` (they may not live on a 5.x config), so ``generate()`` silently
decodes greedily without the n-gram block and forced tokens. At the end of
``Florence2LanguageForConditionalGeneration.__init__`` the generation config is updated with
the ``generation_defaults`` the config-side fix recorded (empty on 4.x, and when that fix was
not applied, so this is a no-op there).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import body_statements, find_all, method, parse_block
from .base import FlorenceCodemod, UnrecognizedCode
from .generation_defaults_config import ATTRIBUTE

LANGUAGE_MODEL = "Florence2LanguageForConditionalGeneration"

_APPLY_SOURCE = (
    "# transformers>=5 builds the generation config without the config's generation parameters:\n"
    "# restore those the language config recorded (Florence-2 decodes with beams and forced tokens).\n"
    'if getattr(self, "generation_config", None) is not None:\n'
    f'    self.generation_config.update(**getattr(config, "{ATTRIBUTE}", {{}}))\n'
)
_APPLIED = m.Call(
    func=m.Attribute(value=m.Attribute(value=m.Name("self"), attr=m.Name("generation_config")), attr=m.Name("update"))
)


class ApplyGenerationDefaults(FlorenceCodemod):
    DESCRIPTION = "Put the recorded generation defaults on the language model's generation config."
    SCOPE = frozenset({LANGUAGE_MODEL})
    METHODS = frozenset()  # leave_ClassDef reads the methods it needs without descending

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if updated_node.name.value != LANGUAGE_MODEL:
            return updated_node
        init = method(updated_node, "__init__")
        if init is None:
            return updated_node
        self.found = True
        if find_all(init, _APPLIED):
            return updated_node
        if [p.name.value for p in init.params.params[:2]] != ["self", "config"]:
            raise UnrecognizedCode(f"{LANGUAGE_MODEL}.__init__ does not take (self, config)")
        statements = body_statements(init)
        block = parse_block(_APPLY_SOURCE, blank_line_before=True)
        new_init = init.with_changes(body=init.body.with_changes(body=[*statements, *block]))
        return updated_node.deep_replace(init, new_init)  # type: ignore[return-value]

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise SkipFile(f"no {LANGUAGE_MODEL}.__init__ in this file")
        return updated_node
