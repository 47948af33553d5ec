"""C3: a saved checkpoint cannot be reloaded (``only DaViT is supported for now``).

``Florence2Config`` keeps the vision settings in a plain ``PretrainedConfig``. Saving writes
that class's ``model_type``, which is ``""``, over the ``"davit"`` the settings came with, and
the model's ``assert config.vision_config.model_type == 'davit'`` then fails on reload, on every
transformers version. Right after the vision config is built, an empty ``model_type`` is
restored to ``"davit"`` (the only vision tower Florence-2 has).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m
from libcst.codemod import SkipFile

from ._cst import assignment_line, find_all
from .base import FlorenceCodemod, UnrecognizedCode

COMPOSITE_CONFIG = "Florence2Config"
VISION_MODEL_TYPE = "davit"

# vision_config = PretrainedConfig(**vision_config)
_BUILD_VISION_CONFIG = assignment_line(
    "vision_config", m.Call(func=m.Name("PretrainedConfig") | m.Attribute(attr=m.Name("PretrainedConfig")))
)
# vision_config.model_type = ...
_SET_MODEL_TYPE = m.SimpleStatementLine(
    body=[m.Assign(targets=[m.AssignTarget(target=m.Attribute(value=m.Name("vision_config"), attr=m.Name("model_type")))])]
)
_RESTORE_SOURCE = (
    "if not vision_config.model_type:  # a saved config holds PretrainedConfig's empty model_type\n"
    f'    vision_config.model_type = "{VISION_MODEL_TYPE}"\n'
)


class _BlockFixer(cst.CSTTransformer):
    """Inserts the restore statement after the vision config is built, in whichever block that is."""

    def __init__(self) -> None:
        super().__init__()
        self.builds = 0
        self.already_restored = False

    def _fix(self, statements: list[cst.BaseStatement]) -> list[cst.BaseStatement]:
        result: list[cst.BaseStatement] = []
        for index, statement in enumerate(statements):
            result.append(statement)
            if not m.matches(statement, _BUILD_VISION_CONFIG):
                continue
            self.builds += 1
            following = statements[index + 1] if index + 1 < len(statements) else None
            if following is not None and find_all(following, _SET_MODEL_TYPE):
                self.already_restored = True
                continue
            result.append(cst.parse_statement(_RESTORE_SOURCE))
        return result

    def leave_IndentedBlock(self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock) -> cst.IndentedBlock:
        return updated_node.with_changes(body=self._fix(list(updated_node.body)))


class RestoreVisionModelType(FlorenceCodemod):
    DESCRIPTION = 'Restore the vision sub-config\'s model_type to "davit" when a saved checkpoint left it empty.'
    SCOPE = frozenset({COMPOSITE_CONFIG})

    def __init__(self, context) -> None:
        super().__init__(context)
        self.found = False

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if updated_node.name.value != COMPOSITE_CONFIG:
            return updated_node
        init = next(
            (s for s in updated_node.body.body if isinstance(s, cst.FunctionDef) and s.name.value == "__init__"),
            None,
        ) if isinstance(updated_node.body, cst.IndentedBlock) else None
        if init is None:
            return updated_node
        fixer = _BlockFixer()
        new_init = init.visit(fixer)
        if fixer.builds == 0:
            if find_all(init, m.Call(func=m.Name("PretrainedConfig"))):
                raise UnrecognizedCode(f"{COMPOSITE_CONFIG}.__init__ builds PretrainedConfig in an unknown way")
            return updated_node
        if fixer.builds > 1:
            raise UnrecognizedCode(f"{COMPOSITE_CONFIG}.__init__ builds the vision config {fixer.builds} times")
        self.found = True
        if fixer.already_restored:
            return updated_node
        return updated_node.deep_replace(init, new_init)  # type: ignore[return-value]

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.found:
            raise SkipFile(f"{COMPOSITE_CONFIG} does not build a vision config here")
        return updated_node
