"""M1: ``transformers.modeling_attn_mask_utils`` is gone (removed after transformers 5.0).

The modeling file imports four 4-D attention-mask helpers from it, so importing the model
fails with ``ModuleNotFoundError``. The import is wrapped in ``try``/``except ImportError`` and
the ``except`` branch defines local equivalents of the four helpers with the 4.x behaviour
(additive masks holding 0 or the dtype's minimum; ``None`` where 4.x returned ``None``). Where
the module still exists (4.x, 5.0) the import succeeds and nothing changes.

The local definitions are written for this project from the documented 4.x semantics; the
tests compare them with the 4.49 helpers on many shapes, dtypes and paddings.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import dotted_name, find_all
from .base import FlorenceCodemod, UnrecognizedCode

MASK_MODULE = "transformers.modeling_attn_mask_utils"
HELPERS = (
    "_prepare_4d_attention_mask",
    "_prepare_4d_attention_mask_for_sdpa",
    "_prepare_4d_causal_attention_mask",
    "_prepare_4d_causal_attention_mask_for_sdpa",
)

# The body of the ``except ImportError:`` branch (indented by the codemod). Every helper name
# the file imports must be defined here; private helpers are prefixed to avoid clashes.
LOCAL_HELPERS_SOURCE = '''\
def _florence2_mask_is_traced(tensor):
    compiling = getattr(torch.compiler, "is_compiling", None)
    return torch.jit.is_tracing() or isinstance(tensor, torch.fx.Proxy) or bool(compiling and compiling())

def _florence2_padding_mask_4d(mask, dtype, tgt_len=None):
    # (batch, src_len) keep-mask -> (batch, 1, tgt_len, src_len): 0 where kept, dtype's minimum elsewhere
    batch_size, src_len = mask.shape
    tgt_len = src_len if tgt_len is None else tgt_len
    dropped = 1.0 - mask[:, None, None, :].expand(batch_size, 1, tgt_len, src_len).to(dtype)
    return dropped.masked_fill(dropped.to(torch.bool), torch.finfo(dtype).min)

def _florence2_causal_mask_4d(batch_size, query_length, key_value_length, dtype, device, sliding_window=None):
    # 4.x returns no causal mask for a single query token unless a sliding window is set
    if query_length == 1 and sliding_window is None:
        return None
    past_length = key_value_length - query_length
    query_positions = torch.arange(query_length, device=device)[:, None] + past_length
    key_positions = torch.arange(key_value_length, device=device)[None, :]
    hidden = key_positions > query_positions
    if sliding_window is not None:
        hidden = hidden | (key_positions < query_positions - sliding_window)
    causal = torch.zeros((query_length, key_value_length), dtype=dtype, device=device)
    causal = causal.masked_fill(hidden, torch.finfo(dtype).min)
    return causal[None, None, :, :].expand(batch_size, 1, query_length, key_value_length)

def _florence2_causal_and_padding_4d(mask, query_length, key_value_length, dtype, sliding_window=None):
    padding = _florence2_padding_mask_4d(mask, dtype, tgt_len=query_length).to(mask.device)
    causal = _florence2_causal_mask_4d(
        mask.shape[0], query_length, key_value_length, dtype, mask.device, sliding_window
    )
    if causal is None:
        return padding
    return causal.masked_fill(padding.bool(), torch.finfo(dtype).min)

def _florence2_unmask_fully_masked_rows(expanded_mask, min_value):
    # rows that mask everything attend to everything instead (SDPA's memory-efficient kernel needs it)
    if expanded_mask.dtype == torch.bool:
        raise ValueError("expected a float attention mask, got a bool one")
    return expanded_mask.mul(~torch.all(expanded_mask == min_value, dim=-1, keepdim=True))

def _prepare_4d_attention_mask(mask, dtype, tgt_len=None):
    return _florence2_padding_mask_4d(mask, dtype, tgt_len)

def _prepare_4d_attention_mask_for_sdpa(mask, dtype, tgt_len=None):
    if not _florence2_mask_is_traced(mask) and torch.all(mask == 1):
        return None
    return _florence2_padding_mask_4d(mask, dtype, tgt_len)

def _prepare_4d_causal_attention_mask(
    attention_mask, input_shape, inputs_embeds, past_key_values_length, sliding_window=None
):
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"sliding_window must be a positive integer, not {sliding_window}")
    batch_size, query_length = input_shape[0], input_shape[-1]
    key_value_length = query_length + past_key_values_length
    dtype = inputs_embeds.dtype
    if attention_mask is not None and attention_mask.dim() == 2:
        return _florence2_causal_and_padding_4d(
            attention_mask, query_length, key_value_length, dtype, sliding_window
        )
    if attention_mask is not None and attention_mask.dim() == 4:
        expected_shape = (batch_size, 1, query_length, key_value_length)
        if tuple(attention_mask.shape) != expected_shape:
            raise ValueError(
                f"Incorrect 4D attention_mask shape: {tuple(attention_mask.shape)}; expected: {expected_shape}."
            )
        dropped = 1.0 - attention_mask
        return dropped.masked_fill(dropped.to(torch.bool), torch.finfo(dtype).min)
    return _florence2_causal_mask_4d(
        batch_size, query_length, key_value_length, dtype, inputs_embeds.device, sliding_window
    )

def _prepare_4d_causal_attention_mask_for_sdpa(
    attention_mask, input_shape, inputs_embeds, past_key_values_length, sliding_window=None
):
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"sliding_window must be a positive integer, not {sliding_window}")
    batch_size, query_length = input_shape[0], input_shape[-1]
    key_value_length = query_length + past_key_values_length
    dtype = inputs_embeds.dtype
    traced = _florence2_mask_is_traced(inputs_embeds)
    # SDPA's own is_causal flag replaces the mask when nothing is padded (decided on inputs_embeds, as 4.x did)
    embeds_query_length = inputs_embeds.shape[1]
    embeds_key_value_length = embeds_query_length + past_key_values_length
    one_query_or_no_past = embeds_query_length == 1 or embeds_key_value_length == embeds_query_length
    within_window = sliding_window is None or embeds_key_value_length < sliding_window
    if attention_mask is None:
        if not traced and one_query_or_no_past and within_window:
            return None
        return _florence2_causal_mask_4d(
            batch_size, query_length, key_value_length, dtype, inputs_embeds.device, sliding_window
        )
    if attention_mask.dim() == 4:
        expanded = attention_mask
    else:
        if within_window and not traced and one_query_or_no_past and torch.all(attention_mask == 1):
            return None
        expanded = _florence2_causal_and_padding_4d(
            attention_mask, query_length, key_value_length, dtype, sliding_window
        )
    if not traced and expanded.device.type == "cuda":
        expanded = _florence2_unmask_fully_masked_rows(expanded, torch.finfo(dtype).min)
    return expanded
'''

_EXCEPT_COMMENT = "# transformers>=5.1 removed these helpers: local equivalents of their 4.x behaviour"


def _is_mask_import(statement: cst.BaseStatement) -> bool:
    return m.matches(statement, m.SimpleStatementLine(body=[m.ImportFrom()])) and any(
        isinstance(s, cst.ImportFrom) and s.module is not None and dotted_name(s.module) == MASK_MODULE
        for s in statement.body  # type: ignore[attr-defined]
    )


def _imported_names(statement: cst.SimpleStatementLine) -> list[str]:
    (node,) = statement.body
    assert isinstance(node, cst.ImportFrom)
    if isinstance(node.names, cst.ImportStar):
        raise UnrecognizedCode(f"from {MASK_MODULE} import *")
    names = []
    for alias in node.names:
        if alias.asname is not None:
            raise UnrecognizedCode(f"{MASK_MODULE} helper imported under another name ({alias.evaluated_name})")
        names.append(alias.evaluated_name)
    unknown = sorted(set(names) - set(HELPERS))
    if unknown:
        raise UnrecognizedCode(f"no local equivalent for {MASK_MODULE}.{', '.join(unknown)}")
    return names


def _handler_binds(handler: cst.ExceptHandler, names: list[str]) -> bool:
    bound = {s.name.value for s in handler.body.body if isinstance(s, cst.FunctionDef)}
    for assign in find_all(handler.body, m.AssignTarget(target=m.Name())):
        bound.add(assign.target.value)  # type: ignore[union-attr]
    return set(names) <= bound


def _catches_import_error(handler: cst.ExceptHandler) -> bool:
    return handler.type is not None and bool(
        find_all(handler.type, m.Name("ImportError") | m.Name("ModuleNotFoundError"))
    )


class FallBackToLocalMaskHelpers(FlorenceCodemod):
    DESCRIPTION = "Define the 4-D attention-mask helpers locally when transformers.modeling_attn_mask_utils is gone."
    SCOPE = frozenset()  # only top-level import statements matter

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            if alias.evaluated_name == MASK_MODULE or alias.evaluated_name.startswith(MASK_MODULE + "."):
                raise UnrecognizedCode(f"import {alias.evaluated_name} (module import, not the helper names)")

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        new_body: list[cst.BaseStatement] = []
        guarded_at: int | None = None
        for statement in updated_node.body:
            if isinstance(statement, cst.Try) and any(_is_mask_import(s) for s in statement.body.body):
                self.found = True
                names = [n for s in statement.body.body if _is_mask_import(s) for n in _imported_names(s)]  # type: ignore[arg-type]
                handlers = [h for h in statement.handlers if _catches_import_error(h)]
                if not handlers or not _handler_binds(handlers[0], names):
                    raise UnrecognizedCode(f"{MASK_MODULE} import is guarded, but the fallback does not define {names}")
                new_body.append(statement)
                continue
            if not _is_mask_import(statement):
                new_body.append(statement)
                continue
            self.found = True
            assert isinstance(statement, cst.SimpleStatementLine)
            _imported_names(statement)
            new_body.append(self._guarded(statement))
            guarded_at = len(new_body) - 1
        if guarded_at is not None and guarded_at + 1 < len(new_body):
            # a blank line between the (long) except branch and the statement after it
            following = new_body[guarded_at + 1]
            if not following.leading_lines:
                new_body[guarded_at + 1] = following.with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        if not self.found:
            if find_all(updated_node, m.ImportFrom(module=m.Attribute(attr=m.Name("modeling_attn_mask_utils")))):
                raise UnrecognizedCode(f"{MASK_MODULE} is imported inside a block of unknown shape")
            raise SkipFile(f"no import from {MASK_MODULE}")
        if len(new_body) == len(updated_node.body) and all(a is b for a, b in zip(new_body, updated_node.body)):
            return updated_node  # already guarded: the module is unchanged
        return updated_node.with_changes(body=new_body)

    @staticmethod
    def _guarded(statement: cst.SimpleStatementLine) -> cst.Try:
        import_code = cst.Module(body=[statement.with_changes(leading_lines=())]).code
        indented_import = "".join("    " + line if line.strip() else line for line in import_code.splitlines(True))
        indented_helpers = "".join(
            "    " + line if line.strip() else line for line in LOCAL_HELPERS_SOURCE.splitlines(True)
        )
        source = f"try:\n{indented_import}except ImportError:  {_EXCEPT_COMMENT}\n{indented_helpers}"
        guarded = cst.parse_statement(source)
        assert isinstance(guarded, cst.Try)
        return guarded.with_changes(leading_lines=statement.leading_lines)
