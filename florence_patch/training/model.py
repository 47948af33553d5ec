"""The model side of fine-tuning: fixed remote code, loading, freezing, LoRA, a self-contained save.

Order matters and is kept here: the remote code is fixed (by the patcher, under its lock) and
its modules-cache copy created *before* transformers imports it; the model is loaded from the
exact commit that was fixed; the saved directory carries the fixed code, not a pointer to the hub.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from florence_patch.errors import NotFoundError, UnrecognizedError, UsageError

logger = logging.getLogger(__name__)

VISION_MODEL_TYPE = "davit"
# Linear layers of Florence-2's BART-style language model (attention and MLP); the DaViT tower
# also has fc1/fc2, so targets are matched under `language_model.` only.
LORA_TARGET_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_JSON_WITH_AUTO_MAP = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json")


# ---------------------------------------------------------------------------------------------
# Remote code.


@dataclass(frozen=True)
class RemoteCode:
    """The remote code of one model, fixed and ready to import."""

    model: str  # hub id, or a local directory (resolved)
    revision: str | None  # the commit that was fixed (hub), to load exactly that; None for a directory
    applied_now: tuple[str, ...]  # fix ids written by this call
    applied: tuple[str, ...]  # fix ids recorded by florence-patch for this copy (now or earlier)
    state: str  # the patcher's CopyState after fixing (patched, fixed-upstream)

    @property
    def load_kwargs(self) -> dict[str, Any]:
        return {"trust_remote_code": True, "revision": self.revision}


def is_local_model(model: str) -> bool:
    return Path(model).expanduser().is_dir()


@contextlib.contextmanager
def _caches_this_process_imports_from() -> Iterator[None]:
    """Point the patcher at the caches this process's transformers reads.

    transformers and huggingface_hub read HF_HOME / HF_MODULES_CACHE once, at import; the
    patcher reads the environment per call. If the environment changed since the import, the
    copy patched would not be the copy imported: align them for the duration of the call.
    """
    pinned: dict[str, str] = {}
    if "transformers" in sys.modules:
        from transformers import dynamic_module_utils

        pinned["HF_MODULES_CACHE"] = str(dynamic_module_utils.HF_MODULES_CACHE)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        pinned["HF_HUB_CACHE"] = str(constants.HF_HUB_CACHE)
    saved = {key: os.environ.get(key) for key in pinned}
    os.environ.update(pinned)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def fix_remote_code(model: str, revision: str | None = None) -> RemoteCode:
    """Fix the remote code transformers will import for ``model`` (idempotent, lock-protected).

    Finds the copy (hub revision or local directory), downloads the code first when a hub
    model is not cached and the hub is reachable, applies the fixes the installed transformers
    needs, and makes sure the modules-cache copy exists, so processes started afterwards
    import the fixed code instead of racing to create it.
    """
    from florence_patch.discovery import CopyKind, find_copies
    from florence_patch.errors import ConflictError
    from florence_patch.patching import CopyState, apply_all, assess, materialize, plan_fix

    local = is_local_model(model)
    if local and revision is not None:
        raise UsageError(f"--revision {revision} applies to hub models; {model} is a directory")
    wanted = None if local else (revision or "main")
    with _caches_this_process_imports_from():
        try:
            copies = find_copies(model, revision=wanted).copies
        except NotFoundError:
            if local:
                raise
            from florence_patch.download import download_code

            download_code(model, revision=revision)  # NotFoundError when offline: its message says so
            copies = find_copies(model, revision=wanted).copies
        # The first copy is the one this transformers imports; others were made by another
        # transformers (the other modules-cache name layout) and are fixed when possible.
        plans = [plan_fix(copy) for copy in copies]
        primary = plans[0]
        if primary.status.state is CopyState.UNRECOGNIZED:
            raise UnrecognizedError(f"{model}: {primary.status.reason}")
        if primary.status.state is CopyState.MODIFIED:
            raise ConflictError(
                f"{model}: {primary.status.reason}; inspect it or run `florence-patch revert {model} --force`"
            )
        blocked = (CopyState.UNRECOGNIZED, CopyState.MODIFIED)
        for plan in plans[1:]:
            if plan.status.state in blocked:
                logger.warning("left %s as it is: %s", plan.copy.target_dir, plan.status.reason)
        results = apply_all([plan for plan in plans if plan.status.state not in blocked])
        materialize([copy for copy in copies if copy.kind is CopyKind.HUB])
        status = assess(copies[0])
    applied_now = tuple(dict.fromkeys(fix for result in results for fix in result.fixes))
    if applied_now:
        logger.info("fixed the remote code of %s: %s", model, ", ".join(applied_now))
    return RemoteCode(
        model=str(Path(model).expanduser().resolve()) if local else model,
        revision=None if local else copies[0].commit,
        applied_now=applied_now,
        applied=status.applied,
        state=status.state.value,
    )


def import_remote_classes(code: RemoteCode) -> None:
    """Import the config, model and processor classes once (creates the modules-cache files).

    Run on one process before the others load, so that concurrent ranks find every file in place.
    """
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    config = AutoConfig.from_pretrained(code.model, **code.load_kwargs)
    references = getattr(config, "auto_map", None) or {}
    for auto_class in ("AutoModelForCausalLM", "AutoProcessor"):
        reference = references.get(auto_class)
        if isinstance(reference, str):
            get_class_from_dynamic_module(reference, code.model, revision=code.revision)


# ---------------------------------------------------------------------------------------------
# Loading.


def _dtype_kwarg(dtype) -> dict[str, Any]:
    """transformers 5 renamed from_pretrained's torch_dtype to dtype."""
    import transformers
    from packaging.version import Version

    name = "dtype" if Version(transformers.__version__).major >= 5 else "torch_dtype"
    return {name: dtype}


def load_model_and_processor(code: RemoteCode, *, dtype=None):
    """(model, processor) of a fixed model, registered so save_pretrained writes their code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    try:
        model = AutoModelForCausalLM.from_pretrained(
            code.model, **code.load_kwargs, **_dtype_kwarg(dtype or torch.float32)
        )
        processor = AutoProcessor.from_pretrained(code.model, **code.load_kwargs)
    except OSError as error:
        # transformers' own words say what is missing (weights offline, a file, a revision).
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NotFoundError(f"{code.model}: {first}") from error
    register_for_saving(model, processor)
    return model, processor


def register_for_saving(model, processor) -> None:
    """Make save_pretrained copy the remote-code files and write a local auto_map.

    transformers 4.x registers remote classes only on some load paths; without this, a save
    points its auto_map back at the hub repo instead of carrying the (fixed) code.
    """
    if getattr(type(model), "_auto_class", None) is None:
        type(model).register_for_auto_class("AutoModelForCausalLM")
    if getattr(type(model.config), "_auto_class", None) is None:
        type(model.config).register_for_auto_class()
    if processor is not None and getattr(type(processor), "_auto_class", None) is None:
        type(processor).register_for_auto_class("AutoProcessor")


# ---------------------------------------------------------------------------------------------
# What trains.


@dataclass(frozen=True)
class ParameterCount:
    total: int
    trainable: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def count_parameters(model) -> ParameterCount:
    total = trainable = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return ParameterCount(total=total, trainable=trainable)


def vision_tower(model):
    tower = getattr(model, "vision_tower", None)
    if tower is None:
        raise UnrecognizedError(f"{type(model).__name__} has no vision_tower: not Florence-2-shaped")
    return tower


def freeze_vision_tower(model) -> int:
    """Stop training the DaViT tower (requires_grad=False); returns the parameters frozen.

    (Setting an ``is_trainable`` attribute on the parameters, as a widely copied recipe does,
    freezes nothing: torch only reads ``requires_grad``.)
    """
    frozen = 0
    for parameter in vision_tower(model).parameters():
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen


def checkpoint_vision_layers(model) -> int:
    """Recompute each DaViT layer's activations in the backward pass; returns the layers wrapped.

    transformers' gradient checkpointing only reaches the language model's layers, yet most of
    what a training step keeps for backward is the vision tower's (its windows at 1/4 .. 1/32 of
    the page). Florence-2's own ``enable_checkpoint`` checkpoints whole stages with the reentrant
    variant; this wraps each (spatial, channel) block pair with the non-reentrant one, which keeps
    parameter gradients when the inputs need none. The wrapped ``forward`` is an instance
    attribute: parameters, state-dict names and saved checkpoints are unchanged.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    stages = getattr(vision_tower(model), "blocks", None)
    if not isinstance(stages, torch.nn.ModuleList):
        raise UnrecognizedError(f"{type(vision_tower(model)).__name__} has no DaViT stages (blocks)")
    wrapped = 0
    for stage in stages:
        for layer in stage.children():
            if not any(p.requires_grad for p in layer.parameters()):
                continue  # frozen: nothing of it is kept for backward anyway

            def forward(*inputs, _forward=layer.forward, _layer=layer):
                if _layer.training and torch.is_grad_enabled():
                    return checkpoint(_forward, *inputs, use_reentrant=False)
                return _forward(*inputs)

            layer.forward = forward
            wrapped += 1
    return wrapped


def run_window_attention_through_sdpa(model, run=None):
    """Switch the DaViT window attention to torch's SDPA (``--vision-sdpa``), logging what was done;
    returns the :class:`~florence_patch.training.window_attention.WindowAttentionSwitch`.

    ``run`` (a :class:`~florence_patch.training.window_attention.AttentionRun`): switch only the
    configurations that run faster through SDPA there; None: every module whose class agrees.
    """
    from florence_patch.training.window_attention import use_sdpa_window_attention

    switch = use_sdpa_window_attention(vision_tower(model), run)
    for timing in switch.timings:
        logger.info(
            "vision tower: window attention at %s (%d module%s): own %.1f ms, SDPA %.1f ms -> %s",
            timing.configuration, timing.modules, "s" if timing.modules != 1 else "", timing.own_ms, timing.sdpa_ms,
            "SDPA" if timing.sdpa_faster else "its own code",
        )
    logger.info(
        "vision tower: %d window-attention modules run through scaled_dot_product_attention%s",
        switch.switched, "".join(f"; {name} kept its code ({why})" for name, why in switch.kept),
    )
    return switch


def page_size(processor) -> tuple[int, int]:
    """(height, width) of the ``pixel_values`` the processor makes of a page."""
    from PIL import Image

    pixels = processor.image_processor(images=[Image.new("RGB", (64, 48))], return_tensors="pt")["pixel_values"]
    return int(pixels.shape[-2]), int(pixels.shape[-1])


def lora_target_modules(model) -> list[str]:
    """Full names of the language model's attention and MLP linears, as they exist in ``model``."""
    import torch

    names = [
        name
        for name, module in model.named_modules()
        if name.startswith("language_model.")
        and name.rsplit(".", 1)[-1] in LORA_TARGET_NAMES
        and isinstance(module, torch.nn.Linear)
    ]
    if not names:
        raise UnrecognizedError(
            f"{type(model).__name__}: no {'/'.join(LORA_TARGET_NAMES)} linear layers under language_model"
        )
    return names


def add_lora(model, *, rank: int, alpha: int, dropout: float):
    """Wrap ``model`` in LoRA adapters on the language model; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UsageError("--lora needs peft: pip install 'florence-patch[lora]'") from None
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=lora_target_modules(model)
    )
    return get_peft_model(model, config)


def merge_lora(model):
    """The plain model with LoRA weights merged in (a no-op for a model without adapters)."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if merge is not None else model


# ---------------------------------------------------------------------------------------------
# A self-contained saved directory.


def code_directory(model) -> Path:
    """The directory of the (fixed) remote code this model's class was imported from."""
    base = getattr(model, "get_base_model", None)
    inner = base() if base is not None else model
    return Path(inspect.getfile(type(inner))).parent


def finish_saved_directory(directory: Path, code_dir: Path) -> list[str]:
    """Make a save_pretrained directory reload on its own, offline; returns what was changed.

    * the fixed remote-code files are copied in (save_pretrained skips them when the classes
      were not registered for an auto class);
    * auto_map entries that point at the hub repo (``org/name--module.Class``) are made local;
    * a vision_config.model_type that the unfixed code deleted (saved as '') is restored to 'davit'.
    """
    from florence_patch.fixes import REMOTE_CODE_FILES
    from florence_patch.safe_io import atomic_write

    changed: list[str] = []
    for name in REMOTE_CODE_FILES:
        source = code_dir / name
        target = directory / name
        if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
            atomic_write(target, source.read_bytes())
            changed.append(name)
    for name in _JSON_WITH_AUTO_MAP:
        path = directory / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        before = json.dumps(data, sort_keys=True)
        if isinstance(data.get("auto_map"), dict):
            data["auto_map"] = {key: _local_reference(value, directory) for key, value in data["auto_map"].items()}
        vision = data.get("vision_config")
        if name == "config.json" and isinstance(vision, dict) and not vision.get("model_type"):
            vision["model_type"] = VISION_MODEL_TYPE
        if json.dumps(data, sort_keys=True) != before:
            atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
            changed.append(name)
    return changed


def _local_reference(value, directory: Path):
    if isinstance(value, list):
        return [_local_reference(item, directory) for item in value]
    if not isinstance(value, str) or "--" not in value:
        return value
    local = value.split("--", 1)[1]
    module = local.rsplit(".", 1)[0]
    return local if (directory / f"{module}.py").is_file() else value


__all__ = [
    "LORA_TARGET_NAMES",
    "ParameterCount",
    "RemoteCode",
    "add_lora",
    "code_directory",
    "checkpoint_vision_layers",
    "count_parameters",
    "finish_saved_directory",
    "fix_remote_code",
    "freeze_vision_tower",
    "import_remote_classes",
    "load_model_and_processor",
    "page_size",
    "run_window_attention_through_sdpa",
    "lora_target_modules",
    "merge_lora",
    "register_for_saving",
]


def cap_cpu_threads(num_workers: int) -> None:
    """On CPU, leave one core per DataLoader worker: oversubscribed cores made training ~5x slower.

    Measured on 2 cores: 30 steps of the demo model took 103 s with 2 torch threads and 2 workers,
    20 s with 1 thread and 1 worker. GPU runs are left alone (the CPU only feeds the device there).
    """
    import torch

    from florence_patch.training.config import cores_per_rank

    if torch.cuda.is_available():
        return
    threads = max(1, cores_per_rank() - num_workers)
    if threads < torch.get_num_threads():
        torch.set_num_threads(threads)
