"""M4: saving fails with ``AttributeError: 'list' object has no attribute 'keys'``.

transformers 5 wants ``_tied_weights_keys`` as a ``{target: source}`` mapping of parameter
names (relative to the class that declares it) and calls ``.keys()`` on it when saving;
Florence-2 declares lists. Each list becomes the mapping onto the shared embedding:

* a class that owns ``self.shared`` maps ``encoder.embed_tokens.weight`` etc. to ``shared.weight``;
* a class that wraps such a model in ``self.model`` maps ``model.encoder...`` and its own
  ``lm_head.weight`` to ``model.shared.weight``;
* the multimodal model's ``[f"language_model.{k}" for k in language_model._tied_weights_keys]``
  becomes the matching dict comprehension.

transformers 4.x only iterates the attribute (treating entries as patterns), so a mapping whose
keys still match the same parameters works there too.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import (
    assignment_line,
    body_statements,
    class_attribute,
    dotted_name,
    find_all,
    method,
    self_attributes_assigned,
    top_level_classes,
)
from .base import FlorenceCodemod, UnrecognizedCode

ATTRIBUTE = "_tied_weights_keys"
EMBEDDING = "shared"
_ATTRIBUTE_LINE = assignment_line(ATTRIBUTE)


def _class_attribute_line(statement: cst.BaseStatement) -> cst.Assign | None:
    if m.matches(statement, _ATTRIBUTE_LINE):
        return statement.body[0]  # type: ignore[attr-defined,return-value]
    return None


def _init_attributes(class_def: cst.ClassDef) -> dict[str, cst.BaseExpression]:
    init = method(class_def, "__init__")
    return {} if init is None else self_attributes_assigned(init)


def _embedding_prefix(classes: dict[str, cst.ClassDef], class_def: cst.ClassDef) -> tuple[str, set[str]]:
    """Where the shared embedding lives, seen from ``class_def`` ("" or "model."), and the
    attribute names of the class that owns it."""
    own = _init_attributes(class_def)
    if EMBEDDING in own:
        return "", set(own)
    for attribute, value in own.items():
        if isinstance(value, cst.Call):
            inner_name = dotted_name(value.func)
            inner = classes.get(inner_name or "")
            if inner is not None and EMBEDDING in _init_attributes(inner):
                return f"{attribute}.", set(_init_attributes(inner))
    raise UnrecognizedCode(f"{class_def.name.value} neither owns nor wraps the shared embedding")


def _mapping_pairs(classes: dict[str, cst.ClassDef], class_def: cst.ClassDef, entries: list[str]) -> list[tuple[str, str]]:
    prefix, owner_attributes = _embedding_prefix(classes, class_def)
    own_attributes = set(_init_attributes(class_def))
    source = f"{prefix}{EMBEDDING}.weight"
    pairs = []
    for entry in entries:
        head = entry.split(".", 1)[0]
        if not entry.endswith(".weight"):
            raise UnrecognizedCode(f"{class_def.name.value}.{ATTRIBUTE} entry {entry!r} is not a weight")
        if head in own_attributes:
            target = entry
        elif head in owner_attributes:
            target = prefix + entry
        else:
            raise UnrecognizedCode(f"{class_def.name.value}.{ATTRIBUTE} entry {entry!r} names no known module")
        pairs.append((target, source))
    return pairs


def _dict_from_list(original: cst.List, pairs: list[tuple[str, str]]) -> cst.BaseExpression:
    """The mapping literal, one entry per line (the lists were one line; the pairs are longer)."""
    first = original.elements[0].value if original.elements else None
    quote = first.quote if isinstance(first, cst.SimpleString) else '"'
    lines = "".join(f"    {quote}{target}{quote}: {quote}{source}{quote},\n" for target, source in pairs)
    return cst.parse_expression("{\n" + lines + "}")


# self._tied_weights_keys = [f"language_model.{k}" for k in language_model._tied_weights_keys]
_PREFIXED_LIST = m.Assign(
    targets=[m.AssignTarget(target=m.Attribute(value=m.Name("self"), attr=m.Name(ATTRIBUTE)))],
    value=m.ListComp(
        elt=m.FormattedString(),
        for_in=m.CompFor(target=m.Name(), iter=m.Attribute(attr=m.Name(ATTRIBUTE)), inner_for_in=None, ifs=[]),
    ),
)
_PREFIXED_DICT = m.Assign(
    targets=[m.AssignTarget(target=m.Attribute(value=m.Name("self"), attr=m.Name(ATTRIBUTE)))],
    value=m.DictComp(),
)


class _RenameName(cst.CSTTransformer):
    def __init__(self, old: str, new: str) -> None:
        super().__init__()
        self.old, self.new = old, new

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        return updated_node.with_changes(value=self.new) if updated_node.value == self.old else updated_node


def _dict_comprehension(list_comp: cst.ListComp) -> cst.DictComp:
    comp_for = list_comp.for_in
    key_name = comp_for.target.value  # type: ignore[union-attr]
    value_name = "v" if key_name != "v" else "source"
    value = list_comp.elt.visit(_RenameName(key_name, value_name))
    return cst.DictComp(
        key=list_comp.elt,
        value=value,  # type: ignore[arg-type]
        for_in=comp_for.with_changes(
            target=cst.Tuple(
                elements=[cst.Element(cst.Name(key_name), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))), cst.Element(cst.Name(value_name))],
                lpar=[],
                rpar=[],
            ),
            iter=cst.Call(func=cst.Attribute(value=comp_for.iter, attr=cst.Name("items"))),
        ),
        lbrace=cst.LeftCurlyBrace(whitespace_after=list_comp.lbracket.whitespace_after),
        rbrace=cst.RightCurlyBrace(whitespace_before=list_comp.rbracket.whitespace_before),
    )


class TiedWeightsKeysAsMapping(FlorenceCodemod):
    DESCRIPTION = "Declare _tied_weights_keys as {target: source} mappings onto the shared embedding."
    METHODS = frozenset({"__init__"})  # class attributes, and `self._tied_weights_keys = ...` in __init__

    def __init__(self, context) -> None:
        super().__init__(context)
        self.classes: dict[str, cst.ClassDef] = {}
        self.seen = False

    def visit_Module(self, node: cst.Module) -> None:
        self.classes = top_level_classes(node)
        # only descend into the classes that declare or assign the attribute
        self.SCOPE = frozenset(
            name
            for name, class_def in self.classes.items()
            if class_attribute(class_def, ATTRIBUTE) is not None
            or (init := method(class_def, "__init__")) is not None and find_all(init, m.Attribute(attr=m.Name(ATTRIBUTE)))
        )

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        statements = body_statements(updated_node)
        changed = False
        for index, statement in enumerate(statements):
            assign = _class_attribute_line(statement)
            if assign is None:
                continue
            self.seen = True
            if isinstance(assign.value, cst.Dict) or m.matches(assign.value, m.Name("None")):
                continue
            if not isinstance(assign.value, cst.List) or not all(
                isinstance(e.value, cst.SimpleString) for e in assign.value.elements
            ):
                raise UnrecognizedCode(f"{updated_node.name.value}.{ATTRIBUTE} is not a list of string literals")
            entries = [e.value.evaluated_value for e in assign.value.elements]  # type: ignore[union-attr]
            pairs = _mapping_pairs(self.classes, original_node, entries)
            new_assign = assign.with_changes(value=_dict_from_list(assign.value, pairs))
            statements[index] = statement.with_changes(body=[new_assign])  # type: ignore[attr-defined]
            changed = True
        if changed:
            return updated_node.with_changes(body=updated_node.body.with_changes(body=statements))
        return updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign) -> cst.Assign:
        if m.matches(updated_node, _PREFIXED_DICT):
            self.seen = True
            return updated_node
        if m.matches(updated_node, _PREFIXED_LIST):
            self.seen = True
            return updated_node.with_changes(value=_dict_comprehension(updated_node.value))  # type: ignore[arg-type]
        if m.matches(
            updated_node,
            m.Assign(targets=[m.AssignTarget(target=m.Attribute(value=m.Name("self"), attr=m.Name(ATTRIBUTE)))]),
        ):
            raise UnrecognizedCode(f"self.{ATTRIBUTE} is assigned in an unknown shape")
        return updated_node

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.seen:
            raise SkipFile(f"no {ATTRIBUTE} in this file")
        return updated_node
