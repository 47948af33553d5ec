"""Generation defaults, config side: keep the text config's generation parameters on transformers 5.

Florence-2's text config sets ``num_beams=3``, ``no_repeat_ngram_size=3``,
``early_stopping=True``, ``forced_bos_token_id=0`` and ``forced_eos_token_id=2``; on 4.x the
language model's generation config was built from them. transformers 5 drops generation
parameters from model configs (and refuses to save a config that carries them), so decoding
silently changes. The language config now records the generation parameters the base class
dropped under ``generation_defaults`` (a plain attribute, saved and reloaded with the config);
the model-side fix (``generation_defaults_model``) puts them on the language model's
generation config. On 4.x nothing is dropped and ``generation_defaults`` stays empty.
"""

from __future__ import annotations

import libcst as cst
from libcst.codemod import SkipFile

from ._cst import (
    body_statements,
    insert_import_after_imports,
    is_super_init_call,
    method,
    module_binds_name,
    parse_block,
    self_attributes_assigned,
)
from .base import FlorenceCodemod, UnrecognizedCode

LANGUAGE_CONFIG = "Florence2LanguageConfig"
ATTRIBUTE = "generation_defaults"

# Names transformers 4.x treated as generation parameters of a model config. Only used to spot
# which *named* __init__ parameters must be recorded too (``forced_eos_token_id`` upstream);
# ``**kwargs`` is filtered at run time against the installed GenerationConfig.
GENERATION_PARAMETER_NAMES = frozenset(
    {
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
        "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens",
    }
)


def _record_source(named_parameters: list[str]) -> str:
    passed = "".join(f", {name}={name}" for name in named_parameters)
    return (
        "# transformers>=5 drops generation parameters from model configs: keep the ones it dropped\n"
        "# (4.x generated with them) for the language model's generation config.\n"
        "generation_parameters = GenerationConfig().to_dict()\n"
        f"self.{ATTRIBUTE} = {{\n"
        "    **{\n"
        "        name: value\n"
        f"        for name, value in dict(kwargs{passed}).items()\n"
        "        if name in generation_parameters and not hasattr(self, name)\n"
        "    },\n"
        f'    **kwargs.get("{ATTRIBUTE}", {{}}),\n'
        "}\n"
    )


class RecordGenerationDefaults(FlorenceCodemod):
    DESCRIPTION = "Record the generation parameters transformers 5 drops from the language config."
    SCOPE = frozenset({LANGUAGE_CONFIG})

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False
        self.needs_import = False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if updated_node.name.value != LANGUAGE_CONFIG:
            return updated_node
        init = method(updated_node, "__init__")
        if init is None:
            return updated_node
        self.found = True
        if ATTRIBUTE in self_attributes_assigned(init):
            return updated_node
        params = init.params
        if not isinstance(params.star_kwarg, cst.Param) or params.star_kwarg.name.value != "kwargs":
            raise UnrecognizedCode(f"{LANGUAGE_CONFIG}.__init__ takes no **kwargs")
        statements = body_statements(init)
        calls = [i for i, s in enumerate(statements) if is_super_init_call(s)]
        if len(calls) != 1:
            raise UnrecognizedCode(f"{LANGUAGE_CONFIG}.__init__ calls super().__init__ {len(calls)} times")
        named = [p.name.value for p in (*params.params, *params.kwonly_params) if p.name.value in GENERATION_PARAMETER_NAMES]
        statements[calls[0] + 1 : calls[0] + 1] = parse_block(_record_source(named), blank_line_before=True)
        self.needs_import = True
        new_init = init.with_changes(body=init.body.with_changes(body=statements))
        return updated_node.deep_replace(init, new_init)  # type: ignore[return-value]

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise SkipFile(f"no {LANGUAGE_CONFIG}.__init__ in this file")
        if self.needs_import and not module_binds_name(updated_node, "GenerationConfig"):
            return insert_import_after_imports(updated_node, "from transformers import GenerationConfig\n")
        return updated_node
