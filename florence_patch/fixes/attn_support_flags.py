"""M2: building the model fails with ``AttributeError: ... '_supports_sdpa'``.

``Florence2PreTrainedModel`` exposes ``_supports_flash_attn_2`` / ``_supports_sdpa`` as
properties that read ``self.language_model``. transformers 5 reads them inside
``PreTrainedModel.__init__``, before ``language_model`` exists. Each such property becomes a
plain class attribute holding the language model class's value, found by following the class
the model assigns to ``language_model`` (and its bases) in the same file.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import (
    base_names,
    body_statements,
    class_attribute,
    dotted_name,
    find_all,
    method,
    top_level_classes,
)
from .base import FlorenceCodemod, UnrecognizedCode

FLAGS = ("_supports_flash_attn_2", "_supports_sdpa")
_COMMENT = "# plain attributes: transformers>=5 reads these in __init__, before language_model exists"


def _delegated_flag(statement: cst.BaseStatement) -> str | None:
    """The flag name if ``statement`` is ``@property def <flag>(self): return self.language_model.<flag>``."""
    if not isinstance(statement, cst.FunctionDef) or statement.name.value not in FLAGS:
        return None
    if not any(m.matches(d.decorator, m.Name("property")) for d in statement.decorators):
        raise UnrecognizedCode(f"{statement.name.value} is a method but not a property")
    returns = find_all(statement, m.Return())
    if len(returns) != 1 or dotted_name(returns[0].value) != f"self.language_model.{statement.name.value}":  # type: ignore[union-attr,arg-type]
        raise UnrecognizedCode(f"property {statement.name.value} does not return self.language_model's value")
    return statement.name.value


def _init_methods(module: cst.Module) -> list[cst.FunctionDef]:
    return [init for c in top_level_classes(module).values() if (init := method(c, "__init__")) is not None]


def _language_model_classes(module: cst.Module) -> set[str]:
    """Names of the classes instantiated into ``language_model`` / ``self.language_model`` in an ``__init__``."""
    names = set()
    for init in _init_methods(module):
        for assign in find_all(init, m.Assign()):
            assert isinstance(assign, cst.Assign)
            targets = {dotted_name(t.target) for t in assign.targets}
            if targets & {"language_model", "self.language_model"} and isinstance(assign.value, cst.Call):
                name = dotted_name(assign.value.func)
                if name is not None:
                    names.add(name)
    return names


def _owner_classes(module: cst.Module) -> set[str]:
    """Classes whose ``__init__`` assigns ``self.language_model``."""
    target = m.AssignTarget(target=m.Attribute(value=m.Name("self"), attr=m.Name("language_model")))
    return {
        name
        for name, class_def in top_level_classes(module).items()
        if (init := method(class_def, "__init__")) is not None and find_all(init, target)
    }


def _resolve_flag(classes: dict[str, cst.ClassDef], class_name: str, flag: str, seen: set[str]) -> bool | None:
    """The literal value of ``flag`` as a class attribute of ``class_name`` or its bases in this file."""
    if class_name in seen or class_name not in classes:
        return None
    seen.add(class_name)
    value = class_attribute(classes[class_name], flag)
    if value is not None:
        if not m.matches(value, m.Name("True") | m.Name("False")):
            raise UnrecognizedCode(f"{class_name}.{flag} is not a literal True/False")
        return value.value == "True"  # type: ignore[union-attr]
    for base in base_names(classes[class_name]):
        found = _resolve_flag(classes, base, flag, seen)
        if found is not None:
            return found
    return None


class FlagsAsClassAttributes(FlorenceCodemod):
    DESCRIPTION = "Turn the _supports_sdpa/_supports_flash_attn_2 properties into class attributes."
    SCOPE = frozenset()  # works on the top-level classes in leave_Module, without descending

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        classes = top_level_classes(updated_node)
        language_models = _language_model_classes(updated_node)
        body = list(updated_node.body)
        rewritten = False
        for index, statement in enumerate(body):
            if isinstance(statement, cst.ClassDef):
                new_class = self._rewrite(statement, classes, language_models)
                if new_class is not statement:
                    body[index] = new_class
                    rewritten = True
        if rewritten:
            return updated_node.with_changes(body=body)
        # Already fixed when the model holding language_model gets the flags as plain attributes.
        owners = _owner_classes(updated_node)
        if any(_resolve_flag(classes, owner, flag, set()) is not None for owner in owners for flag in FLAGS):
            return updated_node
        raise SkipFile("no property delegating _supports_sdpa/_supports_flash_attn_2 to language_model")

    @staticmethod
    def _rewrite(class_def: cst.ClassDef, classes: dict[str, cst.ClassDef], language_models: set[str]) -> cst.ClassDef:
        statements = body_statements(class_def)
        delegated = [(i, flag) for i, flag in ((i, _delegated_flag(s)) for i, s in enumerate(statements)) if flag]
        if not delegated:
            return class_def
        new_statements = list(statements)
        for position, (index, flag) in enumerate(delegated):
            values = {_resolve_flag(classes, name, flag, set()) for name in language_models} - {None}
            if len(values) != 1:
                raise UnrecognizedCode(
                    f"cannot tell the language model's {flag} (language model classes: {sorted(language_models)})"
                )
            line = cst.parse_statement(f"{flag} = {'True' if values.pop() else 'False'}")
            if position == 0:
                comment = cst.EmptyLine(comment=cst.Comment(_COMMENT))
                line = line.with_changes(leading_lines=[*statements[index].leading_lines, comment])
            new_statements[index] = line
        return class_def.with_changes(body=class_def.body.with_changes(body=new_statements))
