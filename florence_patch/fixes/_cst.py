"""Small libcst helpers shared by the transformers-5 fixes (finding classes, methods, names)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import libcst as cst
import libcst.matchers as m

_NODE_FIELDS: dict[type, tuple[str, ...]] = {}


def _children(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    names = _NODE_FIELDS.get(type(node))
    if names is None:
        names = _NODE_FIELDS[type(node)] = tuple(f.name for f in dataclasses.fields(node))
    for name in names:
        value = getattr(node, name)
        if isinstance(value, cst.CSTNode):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from (item for item in value if isinstance(item, cst.CSTNode))


def find_all(tree: cst.CSTNode, matcher: m.BaseMatcherNode) -> list[cst.CSTNode]:
    """The nodes of ``tree`` (itself included) that match ``matcher``, like ``m.findall``.

    ``m.findall`` walks with libcst's matcher-aware visitor, several times slower per node than
    reading the dataclass fields; on a first ``status`` of a 2,800-line file the fixes call it on
    every class's ``__init__``. Pre-order, children in field order (not always source order):
    callers count or test for matches, they do not rely on order.
    """
    # A node matcher (m.Assign, ...) only matches its own node class: test that first, as
    # ``m.matches`` costs far more than an isinstance. Combinators (|, &, TypeOf) match any class.
    node_class = getattr(cst, type(matcher).__name__, None)
    if not (isinstance(node_class, type) and issubclass(node_class, cst.CSTNode)):
        node_class = cst.CSTNode
    found: list[cst.CSTNode] = []
    stack: list[cst.CSTNode] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, node_class) and m.matches(node, matcher):
            found.append(node)
        stack.extend(reversed(list(_children(node))))
    return found


def assignment_line(name: str, value: m.BaseMatcherNode | m.DoNotCareSentinel = m.DoNotCare()) -> m.SimpleStatementLine:
    """A matcher for the statement line ``name = <value>`` (one target, one statement on the line)."""
    return m.SimpleStatementLine(body=[m.Assign(targets=[m.AssignTarget(target=m.Name(name))], value=value)])


def dotted_name(node: cst.BaseExpression) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        head = dotted_name(node.value)
        return None if head is None else f"{head}.{node.attr.value}"
    return None


def base_names(node: cst.ClassDef) -> list[str]:
    """Last component of each base class expression (``transformers.X`` -> ``X``)."""
    names = []
    for arg in node.bases:
        name = dotted_name(arg.value)
        if name is not None:
            names.append(name.rsplit(".", 1)[-1])
    return names


def top_level_classes(module: cst.Module) -> dict[str, cst.ClassDef]:
    return {s.name.value: s for s in module.body if isinstance(s, cst.ClassDef)}


def body_statements(node: cst.ClassDef | cst.FunctionDef) -> list[cst.BaseStatement]:
    body = node.body
    return list(body.body) if isinstance(body, cst.IndentedBlock) else []


def method(node: cst.ClassDef, name: str) -> cst.FunctionDef | None:
    for statement in body_statements(node):
        if isinstance(statement, cst.FunctionDef) and statement.name.value == name:
            return statement
    return None


def class_attribute(node: cst.ClassDef, name: str) -> cst.BaseExpression | None:
    """The value of ``name = value`` (or ``name: T = value``) in the class body."""
    for statement in body_statements(node):
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.Assign) and any(
                m.matches(t.target, m.Name(name)) for t in small.targets
            ):
                return small.value
            if isinstance(small, cst.AnnAssign) and m.matches(small.target, m.Name(name)):
                return small.value
    return None


def self_attributes_assigned(function: cst.FunctionDef) -> dict[str, cst.BaseExpression]:
    """``{attr: value}`` for every ``self.attr = value`` anywhere in ``function`` (the first found wins)."""
    found: dict[str, cst.BaseExpression] = {}
    for assign in find_all(function, m.Assign()):
        for target in assign.targets:  # type: ignore[attr-defined]
            if m.matches(target.target, m.Attribute(value=m.Name("self"), attr=m.Name())):
                found.setdefault(target.target.attr.value, assign.value)  # type: ignore[attr-defined]
    return found


def is_super_init_call(statement: cst.BaseStatement) -> bool:
    """``super().__init__(...)`` as a statement of its own."""
    return m.matches(
        statement,
        m.SimpleStatementLine(
            body=[
                m.Expr(
                    value=m.Call(
                        func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name("__init__"))
                    )
                )
            ]
        ),
    )


def module_binds_name(module: cst.Module, name: str) -> bool:
    """Whether ``name`` is imported (under that name) anywhere at the module's top level."""
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                if any((alias.evaluated_alias or alias.evaluated_name) == name for alias in small.names):
                    return True
    return False


def parse_block(source: str, *, blank_line_before: bool = False) -> list[cst.BaseStatement]:
    """Statements of ``source`` (written at column 0) ready to insert into any block.

    Comments above the first statement stay with it (``parse_module`` would keep them in the
    module header); ``blank_line_before`` separates the block from the statement above it.
    """
    module = cst.parse_module(source)
    statements = list(module.body)
    leading = [*module.header, *statements[0].leading_lines]
    if blank_line_before:
        leading = [cst.EmptyLine(indent=False), *leading]
    statements[0] = statements[0].with_changes(leading_lines=leading)
    return statements


def insert_import_after_imports(module: cst.Module, import_line: str, package: str = "transformers") -> cst.Module:
    """Insert ``import_line`` after the last top-level ``from <package>... import`` statement of the
    module's leading import section (or after the last top-level import at all)."""
    body = list(module.body)
    last_package_import = None
    last_import = None
    for index, statement in enumerate(body):
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, (cst.Import, cst.ImportFrom)):
                last_import = index
                if (
                    isinstance(small, cst.ImportFrom)
                    and small.module is not None
                    and not small.relative
                    and (dotted_name(small.module) or "").split(".")[0] == package
                ):
                    last_package_import = index
    anchor = last_package_import if last_package_import is not None else last_import
    new_statement = cst.parse_statement(import_line)
    body.insert(0 if anchor is None else anchor + 1, new_statement)
    return module.with_changes(body=body)


def top_level_definitions_mentioning(module: cst.Module, text: str) -> frozenset[str]:
    """Names of top-level classes/functions whose source contains ``text`` (a cheap pre-filter:
    rendering is much faster than a full libcst traversal)."""
    return frozenset(
        statement.name.value
        for statement in module.body
        if isinstance(statement, (cst.ClassDef, cst.FunctionDef)) and text in module.code_for_node(statement)
    )
