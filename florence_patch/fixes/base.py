"""What a fix is: one codemod on one remote-code file, needed on some transformers versions.

Every fix follows the same contract so the registry, the planner and the tests can treat
them alike:

* the codemod raises ``SkipFile(reason)`` when its target is absent from the file
  (the fix does not apply to this file at all);
* it returns the module unchanged when the fix is already there (upstream or by us),
  so applying twice is a no-op;
* it raises :class:`UnrecognizedCode` when the target is present but has a shape we
  do not know: we report it and never guess.

Speed: the real modeling file has 2,840 lines (~130k CST nodes) and a full libcst traversal
costs seconds on a small machine. Codemods derive from :class:`FlorenceCodemod` and name the
top-level classes/functions they need in ``SCOPE``; the others are not descended into.
:func:`run_fixes` parses a file once, runs every fix on the same tree, and renders it once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import libcst as cst
from libcst.codemod import Codemod, CodemodContext, SkipFile, VisitorBasedCodemodCommand
from libcst.codemod.visitors import AddImportsVisitor

try:  # names of the attributes libcst's matcher decorators set on a method
    from libcst.matchers._visitors import (
        CONSTRUCTED_LEAVE_MATCHER_ATTR,
        CONSTRUCTED_VISIT_MATCHER_ATTR,
        VISIT_NEGATIVE_MATCHER_ATTR,
        VISIT_POSITIVE_MATCHER_ATTR,
    )

    _MATCHER_DECORATOR_ATTRS: tuple[str, ...] | None = (
        CONSTRUCTED_LEAVE_MATCHER_ATTR,
        CONSTRUCTED_VISIT_MATCHER_ATTR,
        VISIT_NEGATIVE_MATCHER_ATTR,
        VISIT_POSITIVE_MATCHER_ATTR,
    )
except ImportError:  # another libcst layout: every codemod takes libcst's own dispatch
    _MATCHER_DECORATOR_ATTRS = None

from .spec import Fix, FixOutcome, FixResult, UnrecognizedCode  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class _Hooks:
    """The ``visit_*``/``leave_*`` methods one codemod class really defines (libcst's no-op stubs left out)."""

    plain: bool  # no matcher decorators: libcst's per-node matcher bookkeeping has nothing to do
    visit: dict[str, Callable[..., Any]]  # node type name -> visit_<Node>
    leave: dict[str, Callable[..., Any]]  # node type name -> leave_<Node>
    attributes: bool  # defines some visit_<Node>_<attribute> / leave_<Node>_<attribute>


_HOOKS: dict[type, _Hooks] = {}
_DEFINED: dict[type, tuple[dict[str, Callable[..., Any]], bool]] = {}


def _defined_in(klass: type) -> tuple[dict[str, Callable[..., Any]], bool]:
    """(real visit_/leave_ functions, any matcher decorator) of one class's own namespace, cached:
    libcst's ~1,800 no-op stubs are read once, not once per codemod."""
    found = _DEFINED.get(klass)
    if found is None:
        functions = {
            name: value
            for name, value in vars(klass).items()
            if name.startswith(("visit_", "leave_")) and not getattr(value, "_is_no_op", False)
        }
        decorated = _MATCHER_DECORATOR_ATTRS is None or any(
            hasattr(value, attr) for value in vars(klass).values() if callable(value) for attr in _MATCHER_DECORATOR_ATTRS
        )
        found = _DEFINED[klass] = (functions, decorated)
    return found


def _hooks(cls: type) -> _Hooks:
    hooks = _HOOKS.get(cls)
    if hooks is None:
        defined: dict[str, Callable[..., Any]] = {}
        shadowed: set[str] = set()
        decorated = False
        for klass in cls.__mro__:  # the most derived definition wins, a no-op stub included
            functions, klass_decorated = _defined_in(klass)
            decorated = decorated or klass_decorated
            for name, function in functions.items():
                if name not in shadowed:
                    defined.setdefault(name, function)
            shadowed.update(name for name in vars(klass) if name.startswith(("visit_", "leave_")))
        per_node = {name: f for name, f in defined.items() if name.count("_") == 1}
        hooks = _HOOKS[cls] = _Hooks(
            plain=not decorated,
            visit={name[len("visit_"):]: f for name, f in per_node.items() if name.startswith("visit_")},
            leave={name[len("leave_"):]: f for name, f in per_node.items() if name.startswith("leave_")},
            attributes=len(defined) > len(per_node),
        )
    return hooks


def _ignore_attribute(node: cst.CSTNode, attribute: str) -> None:
    return None


class FlorenceCodemod(VisitorBasedCodemodCommand):
    """A codemod that only descends where it needs to, dispatches cheaply and notes what it rebuilt.

    ``SCOPE``: the top-level classes/functions it descends into (None: all).
    ``METHODS``: within those classes, the methods it descends into (None: all). A fix that
    works on class bases or attributes, or on one method, skips the rest of a 500-line class.

    Dispatch: libcst's matcher-aware transformer looks up ``visit_<Node>``, ``leave_<Node>`` and
    two attribute hooks by name on every node, most of them misses or no-op stubs, and scans
    ~1,800 attributes for matcher decorators when constructed. That was most of the time of a
    first ``status`` on code the outcome table does not know. A codemod without matcher
    decorators (all of ours) calls what it defines from a per-class table; one with
    decorators keeps libcst's dispatch.

    ``replaced``: the outermost ``(original, result)`` pairs where a ``leave_*`` returned another
    node than the one it was given. Everything else in the tree is a rebuilt copy, so
    :func:`run_fixes` renders only these, usually a few lines, to tell a real change from a new
    but equal node. A new module (an import added) is recorded as ``(updated, result)``: only
    its top-level statements that are not the very ones it was given are compared, and the
    pairs inside stay (a module hook adds statements; it does not undo a change below it).
    """

    SCOPE: frozenset[str] | None = None
    METHODS: frozenset[str] | None = None

    def __init__(self, context: CodemodContext) -> None:
        self._hook_table = _hooks(type(self))
        if not self._hook_table.plain:
            super().__init__(context)
        else:
            Codemod.__init__(self, context)
            self._extra_visit_funcs: dict[Any, Any] = {}
            self._extra_leave_funcs: dict[Any, Any] = {}
            self._matchers = {}
            if not self._hook_table.attributes:
                # Called for every attribute of every visited node: an instance attribute wins the lookup.
                self.on_visit_attribute = _ignore_attribute  # type: ignore[method-assign]
                self.on_leave_attribute = _ignore_attribute  # type: ignore[method-assign]
        self.replaced: list[tuple[cst.CSTNode, object]] = []
        self._replaced_before: list[int] = []  # len(replaced) when each node on the path was entered
        self._top_level: set[int] = set()
        self._methods: set[int] = set()

    def on_visit(self, node: cst.CSTNode) -> bool:
        # libcst calls on_leave for every node it calls on_visit for, descended into or not.
        self._replaced_before.append(len(self.replaced))
        if isinstance(node, cst.Module):
            self._top_level = {id(statement) for statement in node.body}
            self._methods = set()
        elif id(node) in self._top_level:
            if isinstance(node, (cst.ClassDef, cst.FunctionDef)):
                if self.SCOPE is not None and node.name.value not in self.SCOPE:
                    return False
                if isinstance(node, cst.ClassDef) and isinstance(node.body, cst.IndentedBlock):
                    self._methods.update(id(s) for s in node.body.body if isinstance(s, cst.FunctionDef))
        elif (
            self.METHODS is not None
            and isinstance(node, cst.FunctionDef)
            and id(node) in self._methods
            and node.name.value not in self.METHODS
        ):
            return False
        if not self._hook_table.plain:
            return super().on_visit(node)
        visit = self._hook_table.visit.get(type(node).__name__)
        return True if visit is None else visit(self, node) is not False

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> Any:
        if self._hook_table.plain:
            leave = self._hook_table.leave.get(type(original_node).__name__)
            result = updated_node if leave is None else leave(self, original_node, updated_node)
        else:
            result = super().on_leave(original_node, updated_node)
        start = self._replaced_before.pop()
        if result is not updated_node:
            if isinstance(original_node, cst.Module):
                self.replaced.append((updated_node, result))
            else:
                # This pair covers whatever was replaced inside it.
                del self.replaced[start:]
                self.replaced.append((original_node, result))
        return result


def _syntax_reason(error: Exception) -> str:
    text = str(error).strip()
    return "syntax error: " + (text.splitlines()[0] if text else type(error).__name__)


def _top_level_imported(module: cst.Module, module_name: str, name: str) -> bool:
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.ImportFrom) and small.relative == () and small.module is not None:
                dotted = cst.helpers.get_full_name_for_node(small.module)
                if dotted == module_name and not isinstance(small.names, cst.ImportStar):
                    if any(alias.evaluated_alias or alias.evaluated_name == name for alias in small.names if
                           (alias.evaluated_alias or alias.evaluated_name) == name):
                        return True
    return False


def _apply_requested_imports(module: cst.Module, context: CodemodContext) -> cst.Module:
    """Run AddImportsVisitor only when a requested import is really missing (it walks the whole tree)."""
    requested = context.scratch.get(AddImportsVisitor.CONTEXT_KEY, [])
    missing = [
        item
        for item in requested
        if item.obj_name is None or not _top_level_imported(module, item.module, item.obj_name)
    ]
    context.scratch[AddImportsVisitor.CONTEXT_KEY] = missing
    if not missing:
        return module
    return AddImportsVisitor(context).transform_module(module)


def _changed(before: cst.Module, after: cst.Module, replaced: list[tuple[cst.CSTNode, object]] | None) -> bool:
    """Whether ``after`` renders differently from ``before``.

    Visited nodes are rebuilt even when nothing changed, so identity does not tell. ``replaced``
    (:attr:`FlorenceCodemod.replaced`; None: anything may differ) limits the rendering to where a
    change can be: a removal or a split is a change, a replacement is one when it renders
    differently.
    """
    if before is after:
        return False
    if replaced is None:
        return _module_changed(before, after)
    for original, result in replaced:
        if not isinstance(result, cst.CSTNode):
            return True
        if isinstance(original, cst.Module):
            if not isinstance(result, cst.Module) or _module_changed(original, result):
                return True
        elif before.code_for_node(original) != after.code_for_node(result):
            return True
    return False


def _module_changed(before: cst.Module, after: cst.Module) -> bool:
    """Top-level comparison: every statement that is not the same object is rendered."""
    if (len(before.body), len(before.header), len(before.footer)) != (len(after.body), len(after.header), len(after.footer)):
        return True
    pairs = zip((*before.header, *before.body, *before.footer), (*after.header, *after.body, *after.footer))
    return any(a is not b and before.code_for_node(a) != after.code_for_node(b) for a, b in pairs)


def run_fixes(code: str, fixes: Sequence[Fix], *, render: bool = True) -> tuple[str, list[FixResult]]:
    """Parse ``code`` once and run ``fixes`` in order; return the final code and one result per fix.

    ``FixResult.code`` is left empty here (rendering after every fix would cost a full codegen each);
    use the returned final code. ``render=False`` (the outcomes only, as for ``status``) skips the
    final rendering and returns ``code`` unchanged.
    """
    try:
        tree = cst.parse_module(code)
    except (cst.ParserSyntaxError, SyntaxError, ValueError) as error:
        reason = _syntax_reason(error)
        return code, [FixResult(FixOutcome.UNRECOGNIZED, "", reason) for _ in fixes]
    results: list[FixResult] = []
    any_change = False
    for fix in fixes:
        context = CodemodContext()
        command = fix.codemod_class(context)
        try:
            visited = tree.visit(command)
            new_tree = _apply_requested_imports(visited, context)
        except SkipFile as skip:
            results.append(FixResult(FixOutcome.ABSENT, "", str(skip)))
            continue
        except UnrecognizedCode as error:
            results.append(FixResult(FixOutcome.UNRECOGNIZED, "", str(error)))
            continue
        replaced = getattr(command, "replaced", None) if new_tree is visited else None
        if _changed(tree, new_tree, replaced):
            results.append(FixResult(FixOutcome.NEEDED, ""))
            tree = new_tree
            any_change = True
        else:
            results.append(FixResult(FixOutcome.PRESENT, ""))
    return (tree.code if any_change and render else code), results


__all__ = [
    "Fix",
    "FixOutcome",
    "FixResult",
    "FlorenceCodemod",
    "SkipFile",
    "UnrecognizedCode",
    "run_fixes",
]
