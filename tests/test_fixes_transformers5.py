"""The transformers-5 fixes, in libcst's before/after style.

For every fix: the change on a snippet shaped like the upstream code, no change on the fixed
snippet (and on code upstream already fixed), SkipFile when the target is absent,
UnrecognizedCode on a shape we do not know, and CRLF files keep CRLF. The snippets are written
for these tests; the real upstream files are exercised by ``test_upstream_real.py``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from florence_patch.fixes.attn_mask_fallback import LOCAL_HELPERS_SOURCE, FallBackToLocalMaskHelpers
from florence_patch.fixes.attn_support_flags import FlagsAsClassAttributes
from florence_patch.fixes.base import Fix, FixOutcome, run_fixes
from florence_patch.fixes.extra_special_tokens import ReadExtraSpecialTokensWhenRenamed
from florence_patch.fixes.forced_bos_getattr import ReadForcedBosWithGetattr
from florence_patch.fixes.generation_cache import AcceptCacheInPrepareInputs
from florence_patch.fixes.generation_defaults_config import RecordGenerationDefaults
from florence_patch.fixes.generation_defaults_model import ApplyGenerationDefaults
from florence_patch.fixes.generation_mixin import InheritGenerationMixin, MultimodalInheritsGenerationMixin
from florence_patch.fixes.image_processor_options import DropNoneImageOptions
from florence_patch.fixes.output_base_class import DeriveOutputFromSeq2SeqLMOutput
from florence_patch.fixes.output_class import AddLossLogitsToOutput
from florence_patch.fixes.output_embeddings import DelegateOutputEmbeddings
from florence_patch.fixes.prompt_padding_mask import PassPromptMaskToMerge
from florence_patch.fixes.tie_word_embeddings import DeclareTieWordEmbeddings
from florence_patch.fixes.tied_weights_mapping import TiedWeightsKeysAsMapping
from florence_patch.fixes.vision_model_type import RestoreVisionModelType

REPO_ROOT = Path(__file__).resolve().parents[1]
TF449_OVERLAY = REPO_ROOT / ".venv" / "compat" / "tf449"


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _class_body(text: str) -> str:
    """Dedented ``text`` indented one level (a class body continued after its header line)."""
    return textwrap.indent(_src(text), "    ")


@dataclass(frozen=True)
class Case:
    codemod: type
    filename: str
    before: str
    after: str
    absent: str
    unrecognized: str
    fixed_upstream: str | None = None  # a shape upstream already fixed: must be left alone

    @property
    def fix(self) -> Fix:
        return Fix(id=self.codemod.__name__, description="", filename=self.filename, codemod=self.codemod)


CONFIG, MODELING, PROCESSING = "configuration_florence2.py", "modeling_florence2.py", "processing_florence2.py"

CASES: dict[str, Case] = {}

# --- C1: forced_bos_token_id is read with getattr -------------------------------------------
CASES["forced-bos-getattr"] = Case(
    ReadForcedBosWithGetattr,
    CONFIG,
    before=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, forced_eos_token_id=2, **kwargs):
                super().__init__(forced_eos_token_id=forced_eos_token_id, **kwargs)
                if self.forced_bos_token_id is None and kwargs.get("legacy_flag", False):
                    self.forced_bos_token_id = self.bos_token_id
        """
    ),
    after=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, forced_eos_token_id=2, **kwargs):
                super().__init__(forced_eos_token_id=forced_eos_token_id, **kwargs)
                if getattr(self, "forced_bos_token_id", None) is None and kwargs.get("legacy_flag", False):
                    self.forced_bos_token_id = self.bos_token_id
        """
    ),
    absent=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
        """
    ),
    unrecognized=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                del self.forced_bos_token_id
        """
    ),
)

# --- C2: tie_word_embeddings declared and passed on ------------------------------------------
CASES["tie-word-embeddings"] = Case(
    DeclareTieWordEmbeddings,
    CONFIG,
    before=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(
                self,
                d_model=1024,
                forced_eos_token_id=2,
                **kwargs,
            ):
                self.d_model = d_model
                super().__init__(
                    forced_eos_token_id=forced_eos_token_id,
                    **kwargs,
                )
        """
    ),
    after=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(
                self,
                d_model=1024,
                forced_eos_token_id=2,
                tie_word_embeddings=True,
                **kwargs,
            ):
                self.d_model = d_model
                super().__init__(
                    forced_eos_token_id=forced_eos_token_id,
                    tie_word_embeddings=tie_word_embeddings,
                    **kwargs,
                )
        """
    ),
    absent=_src(
        """
        class Florence2VisionConfig(PretrainedConfig):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
        """
    ),
    unrecognized=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, tie_word_embeddings=True, **kwargs):
                super().__init__(**kwargs)
        """
    ),
)

# --- C3: empty vision model_type restored to davit -------------------------------------------
CASES["vision-model-type"] = Case(
    RestoreVisionModelType,
    CONFIG,
    before=_src(
        """
        class Florence2Config(PretrainedConfig):
            def __init__(self, vision_config=None, **kwargs):
                if vision_config is not None:
                    vision_config = PretrainedConfig(**vision_config)
                self.vision_config = vision_config
                super().__init__(**kwargs)
        """
    ),
    after=_src(
        """
        class Florence2Config(PretrainedConfig):
            def __init__(self, vision_config=None, **kwargs):
                if vision_config is not None:
                    vision_config = PretrainedConfig(**vision_config)
                    if not vision_config.model_type:  # a saved config holds PretrainedConfig's empty model_type
                        vision_config.model_type = "davit"
                self.vision_config = vision_config
                super().__init__(**kwargs)
        """
    ),
    absent=_src(
        """
        class Florence2Config(PretrainedConfig):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
        """
    ),
    unrecognized=_src(
        """
        class Florence2Config(PretrainedConfig):
            def __init__(self, vision_config=None, **kwargs):
                self.vision_config = PretrainedConfig(**vision_config)
                super().__init__(**kwargs)
        """
    ),
)

# --- generation defaults, config side ---------------------------------------------------------
CASES["generation-defaults-config"] = Case(
    RecordGenerationDefaults,
    CONFIG,
    before=_src(
        """
        from transformers.configuration_utils import PretrainedConfig

        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, d_model=1024, forced_eos_token_id=2, **kwargs):
                self.d_model = d_model
                super().__init__(forced_eos_token_id=forced_eos_token_id, **kwargs)
                self.after = True
        """
    ),
    after=_src(
        """
        from transformers.configuration_utils import PretrainedConfig
        from transformers import GenerationConfig

        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, d_model=1024, forced_eos_token_id=2, **kwargs):
                self.d_model = d_model
                super().__init__(forced_eos_token_id=forced_eos_token_id, **kwargs)

                # transformers>=5 drops generation parameters from model configs: keep the ones it dropped
                # (4.x generated with them) for the language model's generation config.
                generation_parameters = GenerationConfig().to_dict()
                self.generation_defaults = {
                    **{
                        name: value
                        for name, value in dict(kwargs, forced_eos_token_id=forced_eos_token_id).items()
                        if name in generation_parameters and not hasattr(self, name)
                    },
                    **kwargs.get("generation_defaults", {}),
                }
                self.after = True
        """
    ),
    absent=_src(
        """
        class Florence2Config(PretrainedConfig):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
        """
    ),
    unrecognized=_src(
        """
        class Florence2LanguageConfig(PretrainedConfig):
            def __init__(self, d_model=1024):
                super().__init__()
        """
    ),
)

# --- M1: local fallback for the removed mask helpers ------------------------------------------
_MASK_IMPORT = _src(
    """
    from transformers.modeling_attn_mask_utils import (
        _prepare_4d_attention_mask,
        _prepare_4d_causal_attention_mask,
    )
    """
)


def _guarded_mask_import() -> str:
    helpers = textwrap.indent(LOCAL_HELPERS_SOURCE, "    ", lambda line: bool(line.strip()))
    return (
        "try:\n"
        + textwrap.indent(_MASK_IMPORT, "    ")
        + "except ImportError:  # transformers>=5.1 removed these helpers: local equivalents of their 4.x behaviour\n"
        + helpers
    )


CASES["attn-mask-fallback"] = Case(
    FallBackToLocalMaskHelpers,
    MODELING,
    before="import torch\n\n" + _MASK_IMPORT + "X = 1\n",
    after="import torch\n\n" + _guarded_mask_import() + "\nX = 1\n",
    absent="import torch\n\nX = 1\n",
    unrecognized="from transformers.modeling_attn_mask_utils import AttentionMaskConverter\n",
)

# --- M2: attention support flags as class attributes ------------------------------------------
_FLAGS_LANGUAGE_MODEL = _src(
    """
    class Florence2LanguagePreTrainedModel(PreTrainedModel):
        _supports_flash_attn_2 = True
        _supports_sdpa = False


    class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):
        pass


    """
)
_FLAGS_OWNER = _src(
    """


    class Florence2ForConditionalGeneration(Florence2PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            language_model = Florence2LanguageForConditionalGeneration(config=config.text_config)
            self.language_model = language_model
    """
)
CASES["attn-support-flags"] = Case(
    FlagsAsClassAttributes,
    MODELING,
    before=_FLAGS_LANGUAGE_MODEL
    + _src(
        '''
        class Florence2PreTrainedModel(PreTrainedModel):
            base_model_prefix = "model"

            @property
            def _supports_flash_attn_2(self):
                """Ask the language model."""
                return self.language_model._supports_flash_attn_2

            @property
            def _supports_sdpa(self):
                return self.language_model._supports_sdpa
        '''
    )
    + _FLAGS_OWNER,
    after=_FLAGS_LANGUAGE_MODEL
    + _src(
        """
        class Florence2PreTrainedModel(PreTrainedModel):
            base_model_prefix = "model"

            # plain attributes: transformers>=5 reads these in __init__, before language_model exists
            _supports_flash_attn_2 = True
            _supports_sdpa = False
        """
    )
    + _FLAGS_OWNER,
    absent=_FLAGS_LANGUAGE_MODEL,
    unrecognized=_src(
        """
        class Florence2PreTrainedModel(PreTrainedModel):
            @property
            def _supports_sdpa(self):
                return True
        """
    ),
)

# --- M3: the output class derives from Seq2SeqLMOutput ----------------------------------------
_OUTPUT_HEAD = _src(
    """
    from dataclasses import dataclass
    from typing import Optional, Tuple

    import torch
    from transformers.modeling_outputs import Seq2SeqLMOutput
    from transformers.utils import ModelOutput


    @dataclass
    """
)
_OUTPUT_DOC = '''    """Outputs of the multimodal model."""

'''
CASES["output-base-class"] = Case(
    DeriveOutputFromSeq2SeqLMOutput,
    MODELING,
    before=_OUTPUT_HEAD
    + "class Florence2Seq2SeqLMOutput(ModelOutput):\n"
    + _OUTPUT_DOC
    + _class_body(
        """
            loss: Optional[torch.FloatTensor] = None
            logits: torch.FloatTensor = None
            last_hidden_state: torch.FloatTensor = None
            past_key_values: Optional[Tuple[Tuple[torch.FloatTensor]]] = None
            decoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
            decoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
            cross_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
            encoder_last_hidden_state: Optional[torch.FloatTensor] = None
            encoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
            encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
            image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
        """
    ),
    after=_OUTPUT_HEAD
    + "class Florence2Seq2SeqLMOutput(Seq2SeqLMOutput):\n"
    + _OUTPUT_DOC
    + _class_body(
        """
            last_hidden_state: torch.FloatTensor = None
            image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
        """
    ),
    absent=_OUTPUT_HEAD + "class SomethingElse(ModelOutput):\n    x: torch.FloatTensor = None\n",
    unrecognized=_OUTPUT_HEAD
    + "class Florence2Seq2SeqLMOutput(BaseModelOutput):\n    past_key_values: Optional[torch.FloatTensor] = None\n",
)

# --- M4: _tied_weights_keys as {target: source} mappings ---------------------------------------
_TIED_BEFORE = _src(
    """
    class Florence2LanguageModel(Florence2LanguagePreTrainedModel):
        _tied_weights_keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]

        def __init__(self, config):
            super().__init__(config)
            self.shared = nn.Embedding(config.vocab_size, config.d_model)
            self.encoder = Florence2Encoder(config, self.shared)
            self.decoder = Florence2Decoder(config, self.shared)


    class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):
        _tied_weights_keys = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]

        def __init__(self, config):
            super().__init__(config)
            self.model = Florence2LanguageModel(config)
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)


    class Florence2ForConditionalGeneration(Florence2PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            language_model = Florence2LanguageForConditionalGeneration(config=config.text_config)
            if language_model._tied_weights_keys is not None:
                self._tied_weights_keys = [f"language_model.{k}" for k in language_model._tied_weights_keys]
            self.language_model = language_model
    """
)
CASES["tied-weights-mapping"] = Case(
    TiedWeightsKeysAsMapping,
    MODELING,
    before=_TIED_BEFORE,
    after=_src(
        """
        class Florence2LanguageModel(Florence2LanguagePreTrainedModel):
            _tied_weights_keys = {
                "encoder.embed_tokens.weight": "shared.weight",
                "decoder.embed_tokens.weight": "shared.weight",
            }

            def __init__(self, config):
                super().__init__(config)
                self.shared = nn.Embedding(config.vocab_size, config.d_model)
                self.encoder = Florence2Encoder(config, self.shared)
                self.decoder = Florence2Decoder(config, self.shared)


        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):
            _tied_weights_keys = {
                "model.encoder.embed_tokens.weight": "model.shared.weight",
                "model.decoder.embed_tokens.weight": "model.shared.weight",
                "lm_head.weight": "model.shared.weight",
            }

            def __init__(self, config):
                super().__init__(config)
                self.model = Florence2LanguageModel(config)
                self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)


        class Florence2ForConditionalGeneration(Florence2PreTrainedModel):
            def __init__(self, config):
                super().__init__(config)
                language_model = Florence2LanguageForConditionalGeneration(config=config.text_config)
                if language_model._tied_weights_keys is not None:
                    self._tied_weights_keys = {f"language_model.{k}": f"language_model.{v}" for k, v in language_model._tied_weights_keys.items()}
                self.language_model = language_model
        """
    ),
    absent="class Florence2Encoder(Florence2LanguagePreTrainedModel):\n    pass\n",
    unrecognized=_src(
        """
        class Florence2LanguageModel(Florence2LanguagePreTrainedModel):
            _tied_weights_keys = ["pooler.weight"]

            def __init__(self, config):
                self.shared = nn.Embedding(config.vocab_size, config.d_model)
        """
    ),
)

# --- M5: prepare_inputs_for_generation accepts cache= -----------------------------------------
CASES["generation-cache"] = Case(
    AcceptCacheInPrepareInputs,
    MODELING,
    before=_src(
        """
        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel, GenerationMixin):
            def prepare_inputs_for_generation(
                self,
                decoder_input_ids,
                past_key_values=None,
                encoder_outputs=None,
                **kwargs,
            ):
                # cut decoder_input_ids if past_key_values is used
                if past_key_values is not None:
                    decoder_input_ids = decoder_input_ids[:, -1:]
                return {"decoder_input_ids": decoder_input_ids, "past_key_values": past_key_values}
        """
    ),
    after=_src(
        """
        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel, GenerationMixin):
            def prepare_inputs_for_generation(
                self,
                decoder_input_ids,
                past_key_values=None,
                encoder_outputs=None,
                cache=None,
                **kwargs,
            ):
                # transformers>=5 passes the cache as `cache` (an empty Cache object first, then the tuple
                # cache this model returned): decode from it, as 4.x did with past_key_values.
                if past_key_values is None and isinstance(cache, (tuple, list)):
                    past_key_values = cache

                # cut decoder_input_ids if past_key_values is used
                if past_key_values is not None:
                    decoder_input_ids = decoder_input_ids[:, -1:]
                return {"decoder_input_ids": decoder_input_ids, "past_key_values": past_key_values}
        """
    ),
    absent=_src(
        """
        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):
            def forward(self, past_key_values=None):
                return past_key_values
        """
    ),
    unrecognized=_src(
        """
        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):
            def prepare_inputs_for_generation(self, decoder_input_ids, *, past_key_values=None, **kwargs):
                return {}
        """
    ),
)

# --- M6: GenerationMixin as a base of the language model --------------------------------------
_MIXIN_FIXED = _src(
    """
    import torch
    from transformers.modeling_utils import PreTrainedModel
    from transformers.generation.utils import GenerationMixin
    from transformers.utils import logging


    class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel, GenerationMixin):
        base_model_prefix = "model"
    """
)
CASES["generation-mixin"] = Case(
    InheritGenerationMixin,
    MODELING,
    before=_src(
        """
        import torch
        from transformers.modeling_utils import PreTrainedModel
        from transformers.utils import logging


        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):
            base_model_prefix = "model"
        """
    ),
    after=_MIXIN_FIXED,
    absent="class Florence2LanguageModel(Florence2LanguagePreTrainedModel):\n    pass\n",
    unrecognized="class Florence2LanguageForConditionalGeneration(metaclass=Meta):\n    pass\n",
    fixed_upstream=_MIXIN_FIXED,
)

# --- generation defaults, model side ----------------------------------------------------------
CASES["generation-defaults-model"] = Case(
    ApplyGenerationDefaults,
    MODELING,
    before=_src(
        """
        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel, GenerationMixin):
            def __init__(self, config: Florence2LanguageConfig):
                super().__init__(config)
                self.model = Florence2LanguageModel(config)

                # Initialize weights and apply final processing
                self.post_init()

            def get_encoder(self):
                return self.model.get_encoder()
        """
    ),
    after=_src(
        """
        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel, GenerationMixin):
            def __init__(self, config: Florence2LanguageConfig):
                super().__init__(config)
                self.model = Florence2LanguageModel(config)

                # Initialize weights and apply final processing
                self.post_init()

                # transformers>=5 builds the generation config without the config's generation parameters:
                # restore those the language config recorded (Florence-2 decodes with beams and forced tokens).
                if getattr(self, "generation_config", None) is not None:
                    self.generation_config.update(**getattr(config, "generation_defaults", {}))

            def get_encoder(self):
                return self.model.get_encoder()
        """
    ),
    absent="class Florence2LanguageModel(Florence2LanguagePreTrainedModel):\n    pass\n",
    unrecognized=_src(
        """
        class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):
            def __init__(self, text_config):
                super().__init__(text_config)
        """
    ),
)

# --- P1: additional_special_tokens / extra_special_tokens -------------------------------------
CASES["extra-special-tokens"] = Case(
    ReadExtraSpecialTokensWhenRenamed,
    PROCESSING,
    before=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __init__(self, image_processor=None, tokenizer=None):
                tokens_to_add = {
                    'additional_special_tokens': tokenizer.additional_special_tokens + ['<od>', '</od>']
                }
                tokenizer.add_special_tokens(tokens_to_add)
        """
    ),
    after=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __init__(self, image_processor=None, tokenizer=None):
                tokens_to_add = {
                    'additional_special_tokens': (tokenizer.additional_special_tokens if hasattr(tokenizer, "additional_special_tokens") else tokenizer.extra_special_tokens) + ['<od>', '</od>']
                }
                tokenizer.add_special_tokens(tokens_to_add)
        """
    ),
    absent=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __init__(self, image_processor=None, tokenizer=None):
                tokenizer.add_special_tokens({'additional_special_tokens': ['<od>']})
        """
    ),
    unrecognized=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __init__(self, image_processor=None, tokenizer=None):
                tokenizer.additional_special_tokens = ['<od>']
        """
    ),
)

# --- P2: image-processor options passed only when set -----------------------------------------
CASES["image-processor-options"] = Case(
    DropNoneImageOptions,
    PROCESSING,
    before=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __call__(self, text=None, images=None, do_resize: bool = None, return_tensors=None):
                pixel_values = self.image_processor(
                    images,
                    do_resize=do_resize,
                    return_tensors=return_tensors,
                )["pixel_values"]
                return pixel_values
        """
    ),
    after=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __call__(self, text=None, images=None, do_resize: bool = None, return_tensors=None):
                pixel_values = self.image_processor(
                    images,
                    **{  # transformers>=5 image processors keep an explicit None instead of their default
                        option: value
                        for option, value in dict(
                            do_resize=do_resize,
                            return_tensors=return_tensors,
                        ).items()
                        if value is not None
                    },
                )["pixel_values"]
                return pixel_values
        """
    ),
    absent=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __call__(self, text=None, images=None):
                return self.tokenizer(text)
        """
    ),
    unrecognized=_src(
        """
        class Florence2Processor(ProcessorMixin):
            def __call__(self, images=None, **kwargs):
                return self.image_processor(images, do_resize=True, **kwargs)
        """
    ),
)


# --- 4.x reload: the multimodal model exposes the language model's output embeddings ------------
_EMBEDDINGS_HEAD = _src(
    """
    class Florence2ForConditionalGeneration(Florence2PreTrainedModel):
        def get_decoder(self):
            return self.language_model.get_decoder()

        def get_input_embeddings(self):
            return self.language_model.get_input_embeddings()
    """
)
_EMBEDDINGS_TAIL = """
    def resize_token_embeddings(self, new_num_tokens=None):
        return self.language_model.resize_token_embeddings(new_num_tokens)
"""
CASES["output-embeddings"] = Case(
    DelegateOutputEmbeddings,
    MODELING,
    before=_EMBEDDINGS_HEAD + _EMBEDDINGS_TAIL,
    after=_EMBEDDINGS_HEAD
    + """
    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()
"""
    + _EMBEDDINGS_TAIL,
    absent="class Florence2LanguageModel(Florence2LanguagePreTrainedModel):\n    def get_input_embeddings(self):\n        return self.shared\n",
    unrecognized=_EMBEDDINGS_HEAD
    + """
    def get_output_embeddings(self):
        return None
""",
)


# --- every version: batched prompts attend to their padding -------------------------------------
_MERGE_BEFORE = _src(
    """
    class Florence2ForConditionalGeneration(Florence2PreTrainedModel):
        def _merge_input_ids_with_image_features(
            self, image_features, inputs_embeds
        ):
            batch_size, image_token_length = image_features.size()[:-1]
            device = image_features.device
            image_attention_mask = torch.ones(batch_size, image_token_length, device=device)
            task_prefix_embeds = inputs_embeds
            task_prefix_attention_mask = torch.ones(batch_size, task_prefix_embeds.size(1), device=device)

            inputs_embeds = torch.cat([image_features, task_prefix_embeds], dim=1)
            attention_mask = torch.cat([image_attention_mask, task_prefix_attention_mask], dim=1)
            return inputs_embeds, attention_mask

        def forward(self, input_ids=None, pixel_values=None, attention_mask=None, labels=None):
            inputs_embeds = self.get_input_embeddings()(input_ids)
            if pixel_values is not None:
                image_features = self._encode_image(pixel_values)
                inputs_embeds, attention_mask = self._merge_input_ids_with_image_features(image_features, inputs_embeds)
            return self.language_model(attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels)

        def generate(
            self,
            input_ids,
            inputs_embeds=None,
            pixel_values=None,
            **kwargs
            ):
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)
                if pixel_values is not None:
                    image_features = self._encode_image(pixel_values)
                    inputs_embeds, attention_mask = self._merge_input_ids_with_image_features(image_features, inputs_embeds)
            return self.language_model.generate(
                input_ids=None,
                inputs_embeds=inputs_embeds,
                **kwargs
            )
    """
)
_MERGE_AFTER = (
    _MERGE_BEFORE.replace("self, image_features, inputs_embeds\n", "self, image_features, inputs_embeds, attention_mask=None\n")
    .replace(
        "device=device)\n\n",
        "device=device)\n"
        "        # the prompt's own mask: the padding of a batch's shorter prompts is not attended to\n"
        "        if attention_mask is not None and attention_mask.shape == task_prefix_attention_mask.shape:\n"
        "            task_prefix_attention_mask = attention_mask.to(task_prefix_attention_mask)\n\n",
    )
    .replace("(image_features, inputs_embeds)", "(image_features, inputs_embeds, attention_mask)")
    .replace("        pixel_values=None,\n", "        pixel_values=None,\n        attention_mask=None,\n")
    .replace("inputs_embeds=inputs_embeds,\n", "inputs_embeds=inputs_embeds,\n            attention_mask=attention_mask,\n")
)
CASES["prompt-padding-mask"] = Case(
    PassPromptMaskToMerge,
    MODELING,
    before=_MERGE_BEFORE,
    after=_MERGE_AFTER,
    absent="class Florence2LanguageModel(Florence2LanguagePreTrainedModel):\n    def forward(self, attention_mask=None):\n        return attention_mask\n",
    unrecognized=_MERGE_BEFORE.replace(
        "task_prefix_attention_mask = torch.ones(batch_size, task_prefix_embeds.size(1), device=device)",
        "task_prefix_attention_mask = inputs_embeds.new_ones(batch_size, inputs_embeds.size(1))",
    ),
)

# --- 4.50 on: the multimodal model inherits GenerationMixin too ---------------------------------
# (the language model has it already, as upstream f928440 gave it: the import is not added twice)
_MULTIMODAL_BEFORE = _MIXIN_FIXED + _src(
    """


    class Florence2ForConditionalGeneration(Florence2PreTrainedModel):
        def generate(self, input_ids, inputs_embeds=None, **kwargs):
            return self.language_model.generate(input_ids=None, inputs_embeds=inputs_embeds, **kwargs)
    """
)
_MULTIMODAL_AFTER = _MULTIMODAL_BEFORE.replace(
    "class Florence2ForConditionalGeneration(Florence2PreTrainedModel):",
    "class Florence2ForConditionalGeneration(Florence2PreTrainedModel, GenerationMixin):",
)
CASES["multimodal-generation-mixin"] = Case(
    MultimodalInheritsGenerationMixin,
    MODELING,
    before=_MULTIMODAL_BEFORE,
    after=_MULTIMODAL_AFTER,
    absent=_MIXIN_FIXED,
    unrecognized="class Florence2ForConditionalGeneration(metaclass=Meta):\n    pass\n",
)


def test_multimodal_mixin_imports_it_when_the_language_model_lacks_it():
    before = _src(
        """
        from transformers.modeling_utils import PreTrainedModel


        class Florence2ForConditionalGeneration(Florence2PreTrainedModel):
            pass
        """
    )
    fix = CASES["multimodal-generation-mixin"].fix
    result = fix.run(before)
    assert result.outcome is FixOutcome.NEEDED
    assert result.code.count("from transformers.generation.utils import GenerationMixin\n") == 1
    assert "class Florence2ForConditionalGeneration(Florence2PreTrainedModel, GenerationMixin):" in result.code
    assert fix.run(result.code).outcome is FixOutcome.PRESENT


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def case(request) -> Case:
    return CASES[request.param]


# Registry ids of the codemods above, in the order they are applied within each file.
REGISTERED = {
    "forced-bos-getattr": ReadForcedBosWithGetattr,
    "tie-word-embeddings": DeclareTieWordEmbeddings,
    "vision-model-type": RestoreVisionModelType,
    "generation-defaults-config": RecordGenerationDefaults,
    "attn-mask-fallback": FallBackToLocalMaskHelpers,
    "attn-support-flags": FlagsAsClassAttributes,
    "output-base-class": DeriveOutputFromSeq2SeqLMOutput,
    "tied-weights-mapping": TiedWeightsKeysAsMapping,
    "generation-cache": AcceptCacheInPrepareInputs,
    "generation-mixin": InheritGenerationMixin,
    "generation-defaults-model": ApplyGenerationDefaults,
    "multimodal-generation-mixin": MultimodalInheritsGenerationMixin,
    "output-embeddings": DelegateOutputEmbeddings,
    "prompt-padding-mask": PassPromptMaskToMerge,
    "extra-special-tokens": ReadExtraSpecialTokensWhenRenamed,
    "image-processor-options": DropNoneImageOptions,
}


def test_registry_holds_every_fix_for_its_file():
    from florence_patch.fixes import fix_by_id

    for fix_id, codemod in REGISTERED.items():
        fix = fix_by_id(fix_id)
        assert fix.codemod_class is codemod
        assert fix.filename == CASES[fix_id].filename


def test_changes_the_target(case: Case):
    result = case.fix.run(case.before)
    assert result.outcome is FixOutcome.NEEDED, result.reason
    assert result.code == case.after


def test_leaves_fixed_code_alone(case: Case):
    assert case.fix.run(case.after).outcome is FixOutcome.PRESENT
    if case.fixed_upstream is not None:
        assert case.fix.run(case.fixed_upstream).outcome is FixOutcome.PRESENT


def test_skips_when_target_absent(case: Case):
    assert case.fix.run(case.absent).outcome is FixOutcome.ABSENT


def test_reports_unknown_shape(case: Case):
    result = case.fix.run(case.unrecognized)
    assert result.outcome is FixOutcome.UNRECOGNIZED
    assert result.reason


def test_keeps_crlf_line_endings(case: Case):
    result = case.fix.run(case.before.replace("\n", "\r\n"))
    assert result.outcome is FixOutcome.NEEDED
    assert result.code == case.after.replace("\n", "\r\n")


def test_fixed_snippets_still_parse_as_python(case: Case):
    compile(case.after, case.filename, "exec")



def test_prompt_mask_fix_completes_a_copy_fixed_halfway():
    # merge and generate fixed, forward's call not (say, edited by hand): only the call changes
    halfway = _MERGE_AFTER.replace(
        "inputs_embeds, attention_mask = self._merge_input_ids_with_image_features(image_features, inputs_embeds, attention_mask)\n"
        "        return self.language_model(",
        "inputs_embeds, attention_mask = self._merge_input_ids_with_image_features(image_features, inputs_embeds)\n"
        "        return self.language_model(",
    )
    assert halfway != _MERGE_AFTER
    result = CASES["prompt-padding-mask"].fix.run(halfway)
    assert result.outcome is FixOutcome.NEEDED
    assert result.code == _MERGE_AFTER

# --- the two output-class fixes compose in either order ---------------------------------------

_OUTPUT_33EE8E1_SHAPE = _OUTPUT_HEAD + "class Florence2Seq2SeqLMOutput(ModelOutput):\n" + _class_body(
    '''
        """
        Outputs.

        Args:
            last_hidden_state (`torch.FloatTensor`):
                Decoder output.
            image_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
                Image features.
        """

        last_hidden_state: torch.FloatTensor = None
        past_key_values: Optional[Tuple[Tuple[torch.FloatTensor]]] = None
        decoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
        decoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
        cross_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
        encoder_last_hidden_state: Optional[torch.FloatTensor] = None
        encoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
        encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
    '''
)
_OUTPUT_CLASS = Fix("output-class", "", MODELING, AddLossLogitsToOutput)
_OUTPUT_BASE = CASES["output-base-class"].fix


def _field_names(code: str) -> list[str]:
    namespace: dict = {}
    exec(compile(code, "output.py", "exec"), namespace)
    return [f.name for f in dataclasses.fields(namespace["Florence2Seq2SeqLMOutput"])]


@pytest.mark.parametrize("order", ["output-class first", "base-class first"])
def test_output_fixes_compose_in_either_order(order: str):
    fixes = [_OUTPUT_CLASS, _OUTPUT_BASE] if order == "output-class first" else [_OUTPUT_BASE, _OUTPUT_CLASS]
    code, results = run_fixes(_OUTPUT_33EE8E1_SHAPE, fixes)
    assert [r.outcome for r in results] == [FixOutcome.NEEDED, FixOutcome.NEEDED]
    again, results = run_fixes(code, fixes + fixes[::-1])
    assert again == code
    assert all(r.outcome is FixOutcome.PRESENT for r in results)

    import transformers.modeling_outputs as outputs

    base_fields = [f.name for f in dataclasses.fields(outputs.Seq2SeqLMOutput)]
    # inherited fields first (loss, logits, the cache, ...), then the two the base lacks
    assert _field_names(code) == base_fields + ["last_hidden_state", "image_hidden_states"]


def test_output_fixes_give_the_same_fields_in_both_orders():
    first, _ = run_fixes(_OUTPUT_33EE8E1_SHAPE, [_OUTPUT_CLASS, _OUTPUT_BASE])
    second, _ = run_fixes(_OUTPUT_33EE8E1_SHAPE, [_OUTPUT_BASE, _OUTPUT_CLASS])
    assert _field_names(first) == _field_names(second)


def test_rebased_output_accepts_the_cache_keyword_of_this_transformers():
    code, _ = run_fixes(_OUTPUT_33EE8E1_SHAPE, [_OUTPUT_CLASS, _OUTPUT_BASE])
    namespace: dict = {}
    exec(compile(code, "output.py", "exec"), namespace)
    marker = ((object(),),)
    # remote code builds the output with past_key_values=: 4.x keeps the name, 5.x renames it to cache=
    output = namespace["Florence2Seq2SeqLMOutput"](logits=1.0, past_key_values=marker, image_hidden_states=2.0)
    assert output.past_key_values is marker
    assert output.to_tuple() == (1.0, marker, 2.0)


# --- the local mask helpers equal transformers 4.49's --------------------------------------------

_REFERENCE_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import transformers
    from transformers import modeling_attn_mask_utils as reference
    assert transformers.__version__.startswith("4."), transformers.__version__
    cases = torch.load(sys.argv[1])
    results = []
    for name, kwargs in cases:
        if name == "_unmask":
            call = lambda **k: reference.AttentionMaskConverter._unmask_unattended(**k)
        else:
            call = getattr(reference, name)
        try:
            results.append(("value", call(**kwargs)))
        except (ValueError, RuntimeError) as error:
            results.append(("error", type(error).__name__))
    torch.save(results, sys.argv[2])
    """
)


def _mask_cases():
    import torch

    generator = torch.Generator().manual_seed(0)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def keep_mask(batch: int, length: int, kind: str) -> torch.Tensor:
        mask = torch.ones(batch, length, dtype=torch.long)
        if kind == "right-padded" and length > 1:
            mask[0, length // 2 :] = 0
        elif kind == "left-padded" and length > 1:
            mask[-1, : length - 1] = 0
        elif kind == "empty-row":
            mask[0] = 0
        elif kind == "random":
            mask = torch.randint(0, 2, (batch, length), generator=generator)
        return mask

    kinds = ("all-ones", "right-padded", "left-padded", "empty-row", "random")
    cases = []
    for dtype in (*dtypes, torch.float64):
        for batch, src_len in ((1, 1), (2, 4), (3, 7)):
            for tgt_len in (None, 1, 5):
                for kind in kinds:
                    mask = keep_mask(batch, src_len, kind)
                    for name in ("_prepare_4d_attention_mask", "_prepare_4d_attention_mask_for_sdpa"):
                        cases.append((name, dict(mask=mask, dtype=dtype, tgt_len=tgt_len)))
    # transformers 4.x builds causal masks in float32 first, so float64 overflows there: not compared.
    for dtype in dtypes:
        for batch, query_length, past in ((1, 1, 0), (2, 1, 4), (2, 3, 0), (3, 4, 2), (1, 6, 5)):
            embeds = torch.zeros(batch, query_length, 8, dtype=dtype)
            key_value_length = query_length + past
            masks = [None] + [keep_mask(batch, key_value_length, kind) for kind in kinds]
            masks.append(torch.randint(0, 2, (batch, 1, query_length, key_value_length), generator=generator).float())
            masks.append(torch.ones(batch, 1, query_length + 1, key_value_length))  # wrong 4-D shape
            for mask in masks:
                for window in (None, 1, 2, 4, 100):
                    for name in ("_prepare_4d_causal_attention_mask", "_prepare_4d_causal_attention_mask_for_sdpa"):
                        cases.append(
                            (
                                name,
                                dict(
                                    attention_mask=mask,
                                    input_shape=(batch, query_length),
                                    inputs_embeds=embeds,
                                    past_key_values_length=past,
                                    sliding_window=window,
                                ),
                            )
                        )
            # the CUDA-only step of the SDPA causal helper, compared on its own
            if query_length > 1:
                hidden = torch.randint(0, 2, (batch, 1, query_length, key_value_length), generator=generator).bool()
                hidden[0, 0, 0] = True  # one fully masked row
                expanded = torch.zeros(hidden.shape, dtype=dtype).masked_fill(hidden, torch.finfo(dtype).min)
                cases.append(("_unmask", dict(expanded_mask=expanded, min_dtype=torch.finfo(dtype).min)))
    return cases


def _local_helpers() -> dict:
    import torch

    namespace: dict = {"torch": torch}
    exec(compile(LOCAL_HELPERS_SOURCE, "local_mask_helpers.py", "exec"), namespace)
    namespace["_unmask"] = lambda **k: namespace["_florence2_unmask_fully_masked_rows"](
        k["expanded_mask"], k["min_dtype"]
    )
    return namespace


@pytest.mark.skipif(not TF449_OVERLAY.is_dir(), reason=f"transformers 4.49 overlay not installed at {TF449_OVERLAY}")
def test_local_mask_helpers_equal_transformers_4_49(tmp_path):
    import torch

    cases = _mask_cases()
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "PYTHONPATH": str(TF449_OVERLAY)}
    subprocess.run(
        [sys.executable, "-c", _REFERENCE_SCRIPT, str(tmp_path / "cases.pt"), str(tmp_path / "reference.pt")],
        check=True,
        env=env,
        timeout=600,
    )
    reference = torch.load(tmp_path / "reference.pt")
    local = _local_helpers()
    assert len(reference) == len(cases)
    compared_values = 0
    for (name, kwargs), (kind, expected) in zip(cases, reference):
        try:
            actual = ("value", local[name](**kwargs))
        except (ValueError, RuntimeError) as error:
            actual = ("error", type(error).__name__)
        assert actual[0] == kind, (name, kwargs, actual, expected)
        if kind == "error" or expected is None:
            assert actual[1] == expected, (name, actual, expected)
            continue
        assert actual[1] is not None, (name, "local returned None, 4.49 a mask")
        assert actual[1].dtype == expected.dtype and actual[1].shape == expected.shape, name
        assert torch.equal(actual[1], expected), (name, kwargs)
        compared_values += 1
    assert compared_values > 1000  # most cases produce a mask, not None
