"""Fix #2: ``Florence2Seq2SeqLMOutput`` lacks ``loss``/``logits``/``image_hidden_states``.

The original upstream revisions build the output with ``loss=``, ``logits=`` and
``image_hidden_states=`` but never declared those fields, so any forward pass with
``labels`` dies with ``TypeError: ... unexpected keyword argument 'loss'``.

The rewrite makes ``loss`` and ``logits`` the first two fields (``ModelOutput`` drops
``None`` fields from its tuple view, so ``outputs[0]`` is the loss as every transformers
user expects), appends ``image_hidden_states``, and documents the new fields in the
docstring's ``Args:`` section. Nothing else in the module changes.

When the class already derives from transformers' ``Seq2SeqLMOutput`` (the 5.x output
fix), ``loss``/``logits`` are inherited and are not declared again.
"""

from __future__ import annotations

import re

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile
from libcst.codemod.visitors import AddImportsVisitor

from .base import FlorenceCodemod, UnrecognizedCode

OUTPUT_CLASS = "Florence2Seq2SeqLMOutput"
# The eight fields every known revision declares, in order.
ORIGINAL_FIELDS = (
    "last_hidden_state",
    "past_key_values",
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
    "encoder_last_hidden_state",
    "encoder_hidden_states",
    "encoder_attentions",
)
LEADING_FIELDS = ("loss", "logits")
TRAILING_FIELD = "image_hidden_states"
INHERITING_BASES = ("Seq2SeqLMOutput",)

_FIELD_SOURCE = {
    "loss": "loss: Optional[torch.FloatTensor] = None",
    "logits": "logits: torch.FloatTensor = None",
    "image_hidden_states": "image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None",
}
_DOC_ENTRIES = {
    "loss": [
        "loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):",
        "    Language modeling loss.",
    ],
    "logits": [
        "logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, config.vocab_size)`):",
        "    Prediction scores of the language modeling head (scores for each vocabulary token before SoftMax).",
    ],
    "image_hidden_states": [
        "image_hidden_states (`tuple(torch.FloatTensor)`, *optional*):",
        "    Image features produced by the vision encoder and projection.",
    ],
}


def _field_name(statement: cst.BaseStatement) -> str | None:
    if m.matches(statement, m.SimpleStatementLine(body=[m.AnnAssign(target=m.Name())])):
        return statement.body[0].target.value  # type: ignore[union-attr]
    return None


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return m.matches(statement, m.SimpleStatementLine(body=[m.Expr(value=m.SimpleString())]))


def _base_names(node: cst.ClassDef) -> list[str]:
    names = []
    for arg in node.bases:
        if isinstance(arg.value, cst.Name):
            names.append(arg.value.value)
        elif isinstance(arg.value, cst.Attribute):
            names.append(arg.value.attr.value)
    return names


def _add_doc_entries(docstring: str, names: list[str], *, at_end: bool) -> str:
    """Insert Args entries for ``names`` after the ``Args:`` line (or at its end)."""
    match = re.search(r"^([ \t]*)Args:[ \t]*\r?\n", docstring, flags=re.MULTILINE)
    if match is None:
        return docstring
    newline = "\r\n" if "\r\n" in docstring else "\n"
    body_start = match.end()
    entry_indent = re.match(r"[ \t]*", docstring[body_start:]).group(0) or match.group(1) + "    "
    lines = [entry_indent + line for name in names for line in _DOC_ENTRIES[name]]
    block = newline.join(lines) + newline
    if not at_end:
        return docstring[:body_start] + block + docstring[body_start:]
    # At the end: before the closing quotes' own line.
    closing = re.search(r"\r?\n[ \t]*(\"\"\"|''')$", docstring)
    if closing is None:
        return docstring
    return docstring[: closing.start()] + newline + block.rstrip("\r\n") + docstring[closing.start():]


class AddLossLogitsToOutput(FlorenceCodemod):
    DESCRIPTION = (
        "Declare loss and logits first and image_hidden_states last on Florence2Seq2SeqLMOutput, "
        "so forward passes with labels work."
    )
    SCOPE = frozenset({OUTPUT_CLASS})

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise SkipFile(f"no {OUTPUT_CLASS} class in this file")
        return updated_node

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if not m.matches(updated_node, m.ClassDef(name=m.Name(OUTPUT_CLASS))):
            return updated_node
        self.found = True
        if not isinstance(updated_node.body, cst.IndentedBlock):
            raise UnrecognizedCode(f"{OUTPUT_CLASS} has no indented body")
        inherits_loss = any(b in INHERITING_BASES for b in _base_names(updated_node))
        body = list(updated_node.body.body)
        fields = [(i, _field_name(s)) for i, s in enumerate(body) if _field_name(s) is not None]
        names = [n for _, n in fields]
        known = [n for n in names if n in ORIGINAL_FIELDS]
        if not inherits_loss and tuple(known) != ORIGINAL_FIELDS:
            raise UnrecognizedCode(f"{OUTPUT_CLASS} does not declare the eight known fields in order: {names}")
        extra = [n for n in names if n not in ORIGINAL_FIELDS + LEADING_FIELDS + (TRAILING_FIELD,)]
        if extra:
            raise UnrecognizedCode(f"{OUTPUT_CLASS} declares unknown fields {extra}")

        missing_leading: list[str] = []
        if not inherits_loss:
            leading_now = [n for n in names if n in LEADING_FIELDS]
            if leading_now and names[: len(leading_now)] != leading_now:
                raise UnrecognizedCode(f"{OUTPUT_CLASS} declares {leading_now} but not as its first fields")
            if leading_now not in ([], ["loss"], ["loss", "logits"]):
                raise UnrecognizedCode(f"{OUTPUT_CLASS} declares {leading_now} in an unknown order")
            missing_leading = [n for n in LEADING_FIELDS if n not in leading_now]
        missing_trailing = [] if TRAILING_FIELD in names else [TRAILING_FIELD]
        if not missing_leading and not missing_trailing and self._docstring_complete(body, inherits_loss):
            return updated_node

        new_body = list(body)
        if missing_trailing:
            last_index = fields[-1][0] if fields else len(new_body) - 1
            new_body.insert(last_index + 1, cst.parse_statement(_FIELD_SOURCE[TRAILING_FIELD]))
            AddImportsVisitor.add_needed_import(self.context, "typing", "Tuple")
        if missing_leading:
            first_index = fields[0][0] if fields else len(new_body)
            insert_at = first_index + (1 if names and names[0] == "loss" else 0)
            first = new_body[first_index] if first_index < len(new_body) else None
            new_statements = [cst.parse_statement(_FIELD_SOURCE[n]) for n in missing_leading]
            if first is not None and insert_at == first_index:
                # The new first field takes over the blank lines / comments above the old one.
                new_statements[0] = new_statements[0].with_changes(leading_lines=first.leading_lines)
                new_body[first_index] = first.with_changes(leading_lines=())
            new_body[insert_at:insert_at] = new_statements
            AddImportsVisitor.add_needed_import(self.context, "typing", "Optional")
        new_body = self._update_docstring(new_body, inherits_loss)
        return updated_node.with_changes(body=updated_node.body.with_changes(body=new_body))

    @staticmethod
    def _doc_missing(body: list[cst.BaseStatement], inherits_loss: bool) -> tuple[list[str], list[str]]:
        if not body or not _is_docstring(body[0]):
            return [], []
        text = body[0].body[0].value.value  # type: ignore[union-attr]
        if not re.search(r"^[ \t]*Args:[ \t]*\r?$", text, flags=re.MULTILINE):
            return [], []
        def documented(name: str) -> bool:
            return re.search(rf"^[ \t]*{name} \(", text, flags=re.MULTILINE) is not None
        leading = [] if inherits_loss else [n for n in LEADING_FIELDS if not documented(n)]
        trailing = [] if documented(TRAILING_FIELD) else [TRAILING_FIELD]
        return leading, trailing

    def _docstring_complete(self, body: list[cst.BaseStatement], inherits_loss: bool) -> bool:
        leading, trailing = self._doc_missing(body, inherits_loss)
        return not leading and not trailing

    def _update_docstring(self, body: list[cst.BaseStatement], inherits_loss: bool) -> list[cst.BaseStatement]:
        leading, trailing = self._doc_missing(body, inherits_loss)
        if not leading and not trailing:
            return body
        line = body[0]
        expr = line.body[0]  # type: ignore[union-attr]
        text = expr.value.value
        if leading:
            text = _add_doc_entries(text, leading, at_end=False)
        if trailing:
            text = _add_doc_entries(text, trailing, at_end=True)
        new_expr = expr.with_changes(value=expr.value.with_changes(value=text))
        return [line.with_changes(body=[new_expr])] + body[1:]
