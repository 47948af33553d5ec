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

from collections.abc import Sequence

import libcst as cst
from libcst.codemod import CodemodContext, SkipFile, VisitorBasedCodemodCommand
from libcst.codemod.visitors import AddImportsVisitor

from .spec import Fix, FixOutcome, FixResult, UnrecognizedCode  # noqa: F401  (re-exported)


class FlorenceCodemod(VisitorBasedCodemodCommand):
    """A codemod that only descends where it needs to.

    ``SCOPE``: the top-level classes/functions it descends into (None: all).
    ``METHODS``: within those classes, the methods it descends into (None: all). A fix that
    works on class bases or attributes, or on one method, skips the rest of a 500-line class.
    """

    SCOPE: frozenset[str] | None = None
    METHODS: frozenset[str] | None = None

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.Module):
            self._top_level = {id(statement) for statement in node.body}
            self._methods: set[int] = set()
        elif isinstance(node, (cst.ClassDef, cst.FunctionDef)) and id(node) in self._top_level:
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
        return super().on_visit(node)


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


def _changed(before: cst.Module, after: cst.Module) -> bool:
    if before is after:
        return False
    if len(before.body) != len(after.body) or len(before.header) != len(after.header):
        return True
    if len(before.footer) != len(after.footer):
        return True
    # Visited nodes are rebuilt even when nothing changed: compare their rendered code.
    pairs = zip((*before.header, *before.body, *before.footer), (*after.header, *after.body, *after.footer))
    return any(a is not b and before.code_for_node(a) != after.code_for_node(b) for a, b in pairs)


def run_fixes(code: str, fixes: Sequence[Fix]) -> tuple[str, list[FixResult]]:
    """Parse ``code`` once and run ``fixes`` in order; return the final code and one result per fix.

    ``FixResult.code`` is left empty here (rendering after every fix would cost a full codegen each);
    use the returned final code.
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
            new_tree = tree.visit(command)
            new_tree = _apply_requested_imports(new_tree, context)
        except SkipFile as skip:
            results.append(FixResult(FixOutcome.ABSENT, "", str(skip)))
            continue
        except UnrecognizedCode as error:
            results.append(FixResult(FixOutcome.UNRECOGNIZED, "", str(error)))
            continue
        if _changed(tree, new_tree):
            results.append(FixResult(FixOutcome.NEEDED, ""))
            tree = new_tree
            any_change = True
        else:
            results.append(FixResult(FixOutcome.PRESENT, ""))
    return (tree.code if any_change else code), results


__all__ = [
    "Fix",
    "FixOutcome",
    "FixResult",
    "FlorenceCodemod",
    "SkipFile",
    "UnrecognizedCode",
    "run_fixes",
]
