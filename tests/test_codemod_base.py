"""FlorenceCodemod's own dispatch, change detection and find_all against libcst's behaviour."""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
import pytest

from florence_patch.demo.checkpoint import remote_code_files
from florence_patch.fixes import ALL_FIXES, base
from florence_patch.fixes._cst import find_all
from florence_patch.fixes.base import Fix, FixOutcome, FlorenceCodemod, run_fixes


def _fix(codemod: type) -> Fix:
    return Fix(codemod.__name__, "test codemod", "modeling_florence2.py", codemod)


def _files() -> dict[str, str]:
    """Our demo remote code before the fixes, and after them (so PRESENT outcomes are covered too)."""
    before = {n: b.decode() for n, b in remote_code_files("needs-fix").items() if n.endswith(".py")}
    after = {n: run_fixes(code, [f for f in ALL_FIXES if f.filename == n])[0] for n, code in before.items()}
    return {**{f"before/{n}": c for n, c in before.items()}, **{f"after/{n}": c for n, c in after.items()}}


def _run_all(files: dict[str, str]) -> dict[str, tuple[str, list[tuple[FixOutcome, str]]]]:
    out = {}
    for key, code in files.items():
        name = key.split("/", 1)[1]
        final, results = run_fixes(code, [f for f in ALL_FIXES if f.filename == name])
        out[key] = (final, [(r.outcome, r.reason) for r in results])
    return out


def test_every_fix_gives_the_same_code_and_outcomes_through_libcsts_own_dispatch(monkeypatch):
    files = _files()
    fast = _run_all(files)
    assert {o for _, results in fast.values() for o, _ in results} >= {FixOutcome.NEEDED, FixOutcome.PRESENT}
    # Without the decorator attribute names every codemod counts as decorated: libcst dispatches.
    monkeypatch.setattr(base, "_MATCHER_DECORATOR_ATTRS", None)
    monkeypatch.setattr(base, "_HOOKS", {})
    monkeypatch.setattr(base, "_DEFINED", {})
    assert not base._hooks(ALL_FIXES[0].codemod_class).plain
    assert _run_all(files) == fast


class RenameInsideA(FlorenceCodemod):
    DESCRIPTION = "rename x to y, only inside class A (a matcher decorator)"

    @m.call_if_inside(m.ClassDef(name=m.Name("A")))
    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        return updated_node.with_changes(value="y") if updated_node.value == "x" else updated_node


def test_a_codemod_with_matcher_decorators_keeps_them():
    assert not base._hooks(RenameInsideA).plain
    code, (result,) = run_fixes("class A:\n    x = 1\n\n\nclass B:\n    x = 1\n", [_fix(RenameInsideA)])
    assert result.outcome is FixOutcome.NEEDED
    assert code == "class A:\n    y = 1\n\n\nclass B:\n    x = 1\n"


class RecordBases(FlorenceCodemod):
    DESCRIPTION = "records the classes whose bases it visits (an attribute hook)"

    def __init__(self, context) -> None:
        super().__init__(context)
        self.seen: list[str] = []

    def visit_ClassDef_bases(self, node: cst.ClassDef) -> None:
        self.seen.append(node.name.value)


def test_attribute_hooks_are_called():
    assert base._hooks(RecordBases).plain and base._hooks(RecordBases).attributes
    command = RecordBases(cst.codemod.CodemodContext())
    cst.parse_module("class A(object):\n    pass\n\n\nclass B:\n    pass\n").visit(command)
    assert command.seen == ["A", "B"]


class RebuildClasses(FlorenceCodemod):
    DESCRIPTION = "returns a new but equal node for every class"

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        return updated_node.with_changes()


class RebuildModule(FlorenceCodemod):
    DESCRIPTION = "returns a new but equal module"

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        return updated_node.with_changes(body=list(updated_node.body))


class RenameClassB(FlorenceCodemod):
    DESCRIPTION = "renames class B to C"

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if updated_node.name.value == "B":
            return updated_node.with_changes(name=cst.Name("C"))
        return updated_node.with_changes()


@pytest.mark.parametrize(
    ("codemod", "outcome", "expected"),
    [
        (RebuildClasses, FixOutcome.PRESENT, "class A:\n    pass\n\n\nclass B:\n    pass\n"),
        (RebuildModule, FixOutcome.PRESENT, "class A:\n    pass\n\n\nclass B:\n    pass\n"),
        (RenameClassB, FixOutcome.NEEDED, "class A:\n    pass\n\n\nclass C:\n    pass\n"),
    ],
)
def test_a_new_but_equal_node_is_not_a_change(codemod, outcome, expected):
    code, (result,) = run_fixes("class A:\n    pass\n\n\nclass B:\n    pass\n", [_fix(codemod)])
    assert result.outcome is outcome
    assert code == expected


class RenameInnerName(FlorenceCodemod):
    DESCRIPTION = "renames x to y (a Name hook), then returns a new but equal class around it"

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        return updated_node.with_changes(value="y") if updated_node.value == "x" else updated_node

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        return updated_node.with_changes()


def test_only_the_outermost_replaced_nodes_are_compared():
    tree = cst.parse_module("class A:\n    x = 1\n\n\nclass B:\n    z = x\n")
    command = RenameInnerName(cst.codemod.CodemodContext())
    after = tree.visit(command)
    # each class holds its renamed Names, so only the two classes are left to compare
    assert [(type(o).__name__, o.name.value) for o, _ in command.replaced] == [("ClassDef", "A"), ("ClassDef", "B")]
    assert base._changed(tree, after, command.replaced)
    command = RenameClassB(cst.codemod.CodemodContext())
    after = tree.visit(command)
    assert base._changed(tree, after, [p for p in command.replaced if p[0].name.value == "B"])
    assert not base._changed(tree, after, [p for p in command.replaced if p[0].name.value == "A"])
    command = RebuildModule(cst.codemod.CodemodContext())
    after = tree.visit(command)
    # a new module: its statements are the ones it was given, so nothing is rendered
    ((updated, result),) = command.replaced
    assert isinstance(result, cst.Module) and all(a is b for a, b in zip(updated.body, result.body))
    assert not base._changed(tree, after, command.replaced)


class AddStatementAtTop(FlorenceCodemod):
    DESCRIPTION = "a module hook that inserts a statement unless it is there"

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if updated_node.code.startswith("import os"):
            return updated_node.with_changes(body=list(updated_node.body))
        return updated_node.with_changes(body=[cst.parse_statement("import os\n"), *updated_node.body])


def test_a_module_hook_adding_a_statement_is_a_change_once():
    code, (result,) = run_fixes("class A:\n    pass\n", [_fix(AddStatementAtTop)])
    assert (result.outcome, code) == (FixOutcome.NEEDED, "import os\nclass A:\n    pass\n")
    again, (result,) = run_fixes(code, [_fix(AddStatementAtTop)])
    assert (result.outcome, again) == (FixOutcome.PRESENT, code)


class RemoveClassA(FlorenceCodemod):
    DESCRIPTION = "removes the assignment inside class A"

    def leave_SimpleStatementLine(self, original_node, updated_node):
        return cst.RemovalSentinel.REMOVE if m.matches(updated_node, m.SimpleStatementLine([m.Assign()])) else updated_node


def test_a_removal_inside_a_statement_is_a_change():
    code, (result,) = run_fixes("class A:\n    x = 1\n    pass\n", [_fix(RemoveClassA)])
    assert result.outcome is FixOutcome.NEEDED
    assert code == "class A:\n    pass\n"


def test_status_runs_without_rendering():
    fixes = [_fix(RenameClassB)]
    source = "class A:\n    pass\n\n\nclass B:\n    pass\n"
    assert run_fixes(source, fixes, render=False) == (source, run_fixes(source, fixes)[1])
    assert run_fixes(source, fixes, render=False)[1][0].outcome is FixOutcome.NEEDED


@pytest.mark.parametrize(
    "matcher",
    [
        m.Return(),
        m.Assign(),
        m.Attribute(attr=m.Name("config")),
        m.AssignTarget(target=m.Attribute(value=m.Name("self"), attr=m.Name())),
        m.Call(func=m.Name("super")),
        m.Name("torch") | m.Name("nn"),
        m.TypeOf(m.Return, m.Pass)(),
        ~m.Name(),
    ],
)
def test_find_all_finds_what_libcst_findall_finds(matcher):
    tree = cst.parse_module(remote_code_files("needs-fix")["modeling_florence2.py"].decode())
    ours = find_all(tree, matcher)
    assert ours, "the matcher should occur in the demo modeling file"
    assert {id(n) for n in ours} == {id(n) for n in m.findall(tree, matcher)}
    assert len(ours) == len({id(n) for n in ours})
