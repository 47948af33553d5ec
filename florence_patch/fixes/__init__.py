"""The registry of fixes, in the order they are applied.

``select_fixes`` picks what the installed transformers needs (on 4.49 only the output-class
fix of issue #2), or exactly the fixes a user names.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import UsageError
from .spec import Fix, FixOutcome, FixResult, UnrecognizedCode

OUTPUT_CLASS_FIX = Fix(
    id="output-class",
    description="Florence2Seq2SeqLMOutput gains loss/logits (first) and image_hidden_states (last)",
    filename="modeling_florence2.py",
    codemod=".output_class:AddLossLogitsToOutput",
)

_CONFIG, _MODELING, _PROCESSING = "configuration_florence2.py", "modeling_florence2.py", "processing_florence2.py"

# Application order matters only within a file; fixes on one file compose in either order.
ALL_FIXES: tuple[Fix, ...] = (
    OUTPUT_CLASS_FIX,
    Fix("forced-bos-getattr", "Language config reads forced_bos_token_id with getattr(..., None) (5.x configs drop generation parameters)",
        _CONFIG, ".forced_bos_getattr:ReadForcedBosWithGetattr", min_transformers="5.0"),
    Fix("tie-word-embeddings", "Language config declares tie_word_embeddings=True and passes it on (5.x defaults to False)",
        _CONFIG, ".tie_word_embeddings:DeclareTieWordEmbeddings", min_transformers="5.0"),
    # Broken on every version: a saved checkpoint's vision sub-config has model_type "" and reloading fails.
    Fix("vision-model-type", "Restore the vision sub-config's empty model_type to 'davit' so saved checkpoints reload",
        _CONFIG, ".vision_model_type:RestoreVisionModelType"),
    Fix("generation-defaults-config", "Record the generation parameters 5.x drops from the text config (config.generation_defaults)",
        _CONFIG, ".generation_defaults_config:RecordGenerationDefaults", min_transformers="5.0"),
    Fix("attn-mask-fallback", "Local 4.x-equivalent 4-D mask helpers when transformers.modeling_attn_mask_utils is gone",
        _MODELING, ".attn_mask_fallback:FallBackToLocalMaskHelpers", min_transformers="5.0"),
    Fix("attn-support-flags", "_supports_sdpa/_supports_flash_attn_2 as class attributes (5.x reads them before language_model exists)",
        _MODELING, ".attn_support_flags:FlagsAsClassAttributes", min_transformers="5.0"),
    Fix("output-base-class", "Florence2Seq2SeqLMOutput derives from Seq2SeqLMOutput (5.x renames past_key_values= to cache=)",
        _MODELING, ".output_base_class:DeriveOutputFromSeq2SeqLMOutput", min_transformers="5.0"),
    Fix("tied-weights-mapping", "_tied_weights_keys as {target: source} mappings",
        _MODELING, ".tied_weights_mapping:TiedWeightsKeysAsMapping", min_transformers="5.0"),
    Fix("generation-cache", "prepare_inputs_for_generation uses the cache 5.x passes as cache=",
        _MODELING, ".generation_cache:AcceptCacheInPrepareInputs", min_transformers="5.0"),
    Fix("generation-mixin", "Language model inherits GenerationMixin (as upstream f928440)",
        _MODELING, ".generation_mixin:InheritGenerationMixin", min_transformers="4.50"),
    Fix("generation-defaults-model", "Language model's generation config gets the recorded Florence-2 defaults",
        _MODELING, ".generation_defaults_model:ApplyGenerationDefaults", min_transformers="5.0"),
    # 4.50 on: a second load in one process builds the class without the mixin transformers adds on the first.
    Fix("multimodal-generation-mixin", "Multimodal model inherits GenerationMixin, so a second load in a process builds the same class",
        _MODELING, ".generation_mixin:MultimodalInheritsGenerationMixin", min_transformers="4.50"),
    # 4.x only: a safetensors save drops lm_head as a tied copy and 4.x never re-ties it on reload
    # (the top model has no get_output_embeddings), so a fine-tune comes back with a random head.
    Fix("output-embeddings", "Multimodal model delegates get_output_embeddings so 4.x re-ties lm_head on reload",
        _MODELING, ".output_embeddings:DelegateOutputEmbeddings", max_transformers="5.0"),
    # Every version: the merge builds an all-ones mask, so batched prompts attend to their padding.
    Fix("prompt-padding-mask", "forward and generate pass the prompt's attention mask on, so a batch's padding is not attended to",
        _MODELING, ".prompt_padding_mask:PassPromptMaskToMerge"),
    Fix("extra-special-tokens", "Read additional_special_tokens, or extra_special_tokens where renamed",
        _PROCESSING, ".extra_special_tokens:ReadExtraSpecialTokensWhenRenamed", min_transformers="5.0"),
    Fix("image-processor-options", "Pass image-processor options only when not None",
        _PROCESSING, ".image_processor_options:DropNoneImageOptions", min_transformers="5.0"),
)

REMOTE_CODE_FILES = (_MODELING, _CONFIG, _PROCESSING)


class UnknownFixError(UsageError):
    pass


def fix_by_id(fix_id: str) -> Fix:
    for fix in ALL_FIXES:
        if fix.id == fix_id:
            return fix
    known = ", ".join(f.id for f in ALL_FIXES)
    raise UnknownFixError(f"unknown fix {fix_id!r} (known: {known})")


def select_fixes(
    transformers_version: str, *, only: Iterable[str] | None = None, all_fixes: bool = False
) -> tuple[Fix, ...]:
    """The fixes to apply, in registry order."""
    if all_fixes:
        return ALL_FIXES
    if only:
        wanted = {fix_by_id(i).id for i in only}
        return tuple(f for f in ALL_FIXES if f.id in wanted)
    return tuple(f for f in ALL_FIXES if f.needed_on(transformers_version))


__all__ = [
    "ALL_FIXES",
    "OUTPUT_CLASS_FIX",
    "REMOTE_CODE_FILES",
    "Fix",
    "FixOutcome",
    "FixResult",
    "UnknownFixError",
    "UnrecognizedCode",
    "fix_by_id",
    "select_fixes",
]
