"""The output-class codemod, in libcst's before/after style: change, no-op, skip, unrecognized."""

from __future__ import annotations

from libcst.codemod import CodemodTest

from florence_patch.fixes import OUTPUT_CLASS_FIX, FixOutcome
from florence_patch.fixes.output_class import AddLossLogitsToOutput

BEFORE = '''
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from transformers.utils import ModelOutput


@dataclass
class Florence2Seq2SeqLMOutput(ModelOutput):
    """
    Outputs.

    Args:
        last_hidden_state (`torch.FloatTensor`):
            Decoder output.
        encoder_attentions (`tuple(torch.FloatTensor)`, *optional*):
            Encoder attentions.
    """

    last_hidden_state: torch.FloatTensor = None  # keep this comment
    past_key_values: Optional[Tuple[Tuple[torch.FloatTensor]]] = None
    decoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    decoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
    cross_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
    encoder_last_hidden_state: Optional[torch.FloatTensor] = None
    encoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None


def untouched( a,b ):   # odd formatting stays as it is
    return a+b
'''

AFTER = '''
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from transformers.utils import ModelOutput


@dataclass
class Florence2Seq2SeqLMOutput(ModelOutput):
    """
    Outputs.

    Args:
        loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
            Language modeling loss.
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, config.vocab_size)`):
            Prediction scores of the language modeling head (scores for each vocabulary token before SoftMax).
        last_hidden_state (`torch.FloatTensor`):
            Decoder output.
        encoder_attentions (`tuple(torch.FloatTensor)`, *optional*):
            Encoder attentions.
        image_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Image features produced by the vision encoder and projection.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: torch.FloatTensor = None
    last_hidden_state: torch.FloatTensor = None  # keep this comment
    past_key_values: Optional[Tuple[Tuple[torch.FloatTensor]]] = None
    decoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    decoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
    cross_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
    encoder_last_hidden_state: Optional[torch.FloatTensor] = None
    encoder_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None
    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None
    image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


def untouched( a,b ):   # odd formatting stays as it is
    return a+b
'''


class TestAddLossLogitsToOutput(CodemodTest):
    TRANSFORM = AddLossLogitsToOutput

    def test_adds_fields_and_docs(self) -> None:
        self.assertCodemod(BEFORE, AFTER)

    def test_already_fixed_is_a_no_op(self) -> None:
        self.assertCodemod(AFTER, AFTER)

    def test_skips_files_without_the_class(self) -> None:
        code = "class SomethingElse:\n    x: int = 0\n"
        self.assertCodemod(code, code, expected_skip=True)

    def test_adds_import_when_missing(self) -> None:
        before = BEFORE.replace("from typing import Optional, Tuple\n", "from typing import Tuple\n").replace(
            "Optional[Tuple[Tuple[torch.FloatTensor]]]", "Tuple[Tuple[torch.FloatTensor]]"
        ).replace("Optional[Tuple[torch.FloatTensor, ...]]", "Tuple[torch.FloatTensor, ...]").replace(
            "Optional[torch.FloatTensor]", "torch.FloatTensor"
        )
        result = OUTPUT_CLASS_FIX.run(before)
        assert result.outcome is FixOutcome.NEEDED
        assert "from typing import Optional" in result.code or "from typing import Tuple, Optional" in result.code
        compile(result.code, "<patched>", "exec")

    def test_partial_fix_inserts_only_logits(self) -> None:
        partial = BEFORE.replace(
            "    last_hidden_state: torch.FloatTensor = None  # keep",
            "    loss: Optional[torch.FloatTensor] = None\n    last_hidden_state: torch.FloatTensor = None  # keep",
        )
        result = OUTPUT_CLASS_FIX.run(partial)
        assert result.outcome is FixOutcome.NEEDED
        body = result.code.split("class Florence2Seq2SeqLMOutput")[1]
        fields = [line.split(":")[0].strip() for line in body.splitlines() if line.startswith("    ") and ": " in line
                  and "=" in line and not line.strip().startswith(("Args", "("))]
        assert fields[:3] == ["loss", "logits", "last_hidden_state"]
        assert fields[-1] == "image_hidden_states"

    def test_derived_from_seq2seq_output_only_gains_image_hidden_states(self) -> None:
        derived = (
            "from typing import Optional, Tuple\nimport torch\nfrom transformers.modeling_outputs import Seq2SeqLMOutput\n\n"
            "class Florence2Seq2SeqLMOutput(Seq2SeqLMOutput):\n"
            "    last_hidden_state: torch.FloatTensor = None\n"
        )
        result = OUTPUT_CLASS_FIX.run(derived)
        assert result.outcome is FixOutcome.NEEDED
        assert "loss:" not in result.code and "logits:" not in result.code
        assert result.code.rstrip().endswith("image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None")
        assert OUTPUT_CLASS_FIX.run(result.code).outcome is FixOutcome.PRESENT


def test_unknown_shape_is_unrecognized_not_guessed():
    unknown = BEFORE.replace("    cross_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n", "")
    result = OUTPUT_CLASS_FIX.run(unknown)
    assert result.outcome is FixOutcome.UNRECOGNIZED
    assert "eight known fields" in result.reason
    extra = BEFORE.replace("    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n\n",
                           "    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n    mystery: int = 0\n\n")
    assert OUTPUT_CLASS_FIX.run(extra).outcome is FixOutcome.UNRECOGNIZED


def test_syntax_error_is_unrecognized():
    result = OUTPUT_CLASS_FIX.run(BEFORE + "\ndef broken(:\n")
    assert result.outcome is FixOutcome.UNRECOGNIZED
    assert result.reason.startswith("syntax error")


def test_crlf_line_endings_are_kept():
    crlf = BEFORE.replace("\n", "\r\n")
    result = OUTPUT_CLASS_FIX.run(crlf)
    assert result.outcome is FixOutcome.NEEDED
    assert result.code == AFTER.replace("\n", "\r\n")


def test_only_the_class_changes():
    result = OUTPUT_CLASS_FIX.run(BEFORE)
    before_rest = BEFORE.split("@dataclass")[0] + BEFORE.split("encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n")[-1]
    after_rest = result.code.split("@dataclass")[0] + result.code.split("image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None\n")[-1]
    assert before_rest == after_rest


def test_outputs_zero_is_the_loss_after_the_fix():
    """ModelOutput drops None fields from its tuple view: loss must come first."""
    namespace: dict = {}
    exec(compile(OUTPUT_CLASS_FIX.run(BEFORE).code, "<patched>", "exec"), namespace)
    import torch

    loss, logits = torch.tensor(1.5), torch.zeros(1, 2, 3)
    output = namespace["Florence2Seq2SeqLMOutput"](loss=loss, logits=logits, image_hidden_states=torch.ones(1))
    assert output[0] is loss and output[1] is logits and output.to_tuple()[-1].shape == (1,)
