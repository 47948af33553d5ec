"""What a fine-tuning run is: one dataclass, its YAML form, and the TrainingArguments it becomes.

The CLI, a YAML file (``--config run.yaml``, keys named like the CLI options) and library callers
all build a :class:`TrainConfig`; ``__post_init__`` is the one place options are validated, and
:func:`to_training_arguments` is the one place they become ``transformers.TrainingArguments``.

Importing this module is cheap (no torch, no transformers): the CLI reads the help texts from
the field metadata while ``florence-patch --help`` must stay instant.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from florence_patch.errors import NotFoundError, UsageError

DEFAULT_MODEL = "microsoft/Florence-2-base-ft"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
REPORT_TO = ("none", "tensorboard", "wandb")
# The package each logging integration needs (transformers names it in its own error, late).
_REPORT_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


class _Options:
    """Validation and construction shared by the option dataclasses below."""

    def __post_init__(self) -> None:
        self._normalize()
        problems = list(self._problems())
        if problems:
            raise UsageError("; ".join(problems))

    def _normalize(self) -> None:
        pass

    def _problems(self):
        return iter(())

    @classmethod
    def from_sources(cls, config_file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None):
        """An instance from a YAML file (optional) with ``overrides`` (e.g. CLI options) on top."""
        values: dict[str, Any] = dict(read_yaml(config_file)) if config_file is not None else {}
        values.update(overrides or {})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """Build from plain values (YAML, JSON): keys as the CLI names them (``max-steps`` or
        ``max_steps``), numbers coerced to the field's type ("1e-4" is a float; YAML reads it as text)."""
        return cls(**_coerce(cls, values))

    @classmethod
    def field_help(cls, name: str) -> str:
        return _field(cls, name).metadata["help"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class DataOptions(_Options):
    """Which data, and how its rows become prompts: shared by training and evaluation."""

    dataset: str = field(
        metadata=_help(
            "Dataset: a save_to_disk directory, parquet file(s), a hub-style data directory or a hub id "
            "(e.g. HuggingFaceM4/DocumentVQA)."
        )
    )
    dataset_revision: str | None = field(default=None, metadata=_help("Revision of a hub dataset."))
    streaming: bool = field(default=False, metadata=_help("Stream the dataset instead of loading it."))
    task_prompt: str = field(default="<DocVQA>", metadata=_help("Task token put before each question."))
    question_column: str = field(default="question", metadata=_help("Column holding the question."))
    answers_column: str = field(default="answers", metadata=_help("Column holding the gold answer(s)."))
    image_column: str = field(default="image", metadata=_help("Column holding the page image."))
    question_types_column: str | None = field(
        default="question_types", metadata=_help("Column holding question types (for per-type ANLS); '' for none.")
    )
    question_id_column: str | None = field(default="questionId", metadata=_help("Column holding question ids; '' for none."))
    num_workers: int | None = field(
        default=None,
        metadata=_help(
            "DataLoader worker processes that decode, resize and normalise pages (default: none on a "
            "CPU-only machine, where they would take cores from the model; with a GPU, one per spare core, up to 8)."
        ),
    )

    @property
    def columns(self):
        from florence_patch.training.data import VQAColumns

        return VQAColumns(
            question=self.question_column,
            answers=self.answers_column,
            image=self.image_column,
            question_types=self.question_types_column,
            question_id=self.question_id_column,
        )

    def _normalize(self) -> None:
        super()._normalize()
        # An empty name (`--question-types-column ''`) means the set has no such column.
        self.question_types_column = self.question_types_column or None
        self.question_id_column = self.question_id_column or None

    def _problems(self):
        yield from super()._problems()
        if not str(self.dataset).strip():
            yield "--dataset is required"
        if not self.task_prompt:
            yield "--task-prompt must not be empty"
        for name in ("question_column", "answers_column", "image_column"):
            if not getattr(self, name):
                yield f"--{_cli(name)} must not be empty"
        if self.num_workers is not None and self.num_workers < 0:
            yield f"--num-workers must be >= 0, got {self.num_workers}"


@dataclass(kw_only=True)
class GenerationOptions(_Options):
    """How answers are generated for scoring."""

    num_beams: int = field(default=3, metadata=_help("Beams when generating answers."))
    max_new_tokens: int = field(default=64, metadata=_help("Longest generated answer, in tokens."))

    def _problems(self):
        yield from super()._problems()
        for name in ("num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                yield f"--{_cli(name)} must be >= 1, got {getattr(self, name)}"


@dataclass(kw_only=True)
class ModelOptions(_Options):
    """Which model, and how it runs: shared by training and evaluation."""

    model: str = field(default=DEFAULT_MODEL, metadata=_help("Hub model id or local checkpoint directory."))
    revision: str | None = field(default=None, metadata=_help("Model revision: branch, tag or commit id."))
    vision_sdpa: bool = field(
        default=True,
        metadata=_help(
            "Run the DaViT window attention through torch's scaled_dot_product_attention: fused kernels that keep "
            "no attention matrices for backward (at the base shape on a CPU, 13% less kept and the window attention "
            "1.17x faster; bench/RESULTS.md). Each WindowAttention class is switched only if it gives its own "
            "results on a probe, and each configuration (width, heads, window, token grid) only if it ran faster "
            "through SDPA when timed at startup on this device, batch and precision (at 6x6 windows on a CPU it "
            "does not); --no-vision-sdpa keeps the model's code as written."
        ),
    )

    def _problems(self):
        yield from super()._problems()
        if not str(self.model).strip():
            yield "--model must name a model"


@dataclass(kw_only=True)
class TrainConfig(ModelOptions, DataOptions, GenerationOptions):
    """One fine-tuning run of Florence-2 on a VQA set (DocVQA's schema by default)."""

    output_dir: str = field(
        default="florence2-docvqa",
        metadata=_help("Where checkpoints, the final model, metrics.json, the plot and the model card go."),
    )
    train_split: str = field(default="train", metadata=_help("Split to train on."))
    eval_split: str = field(default="validation", metadata=_help("Split to evaluate on (ANLS)."))
    epochs: float = field(default=3.0, metadata=_help("Training epochs (ignored when --max-steps is set)."))
    max_steps: int | None = field(default=None, metadata=_help("Stop after this many optimizer steps."))
    batch_size: int = field(default=8, metadata=_help("Examples per device per forward pass."))
    eval_batch_size: int | None = field(
        default=None, metadata=_help("Examples per device per evaluation batch (default: twice --batch-size).")
    )
    grad_accum: int = field(default=1, metadata=_help("Gradient accumulation steps per optimizer step."))
    lr: float = field(default=1e-5, metadata=_help("Peak learning rate (AdamW, linear decay)."))
    warmup_ratio: float = field(default=0.05, metadata=_help("Fraction of the steps spent warming up the LR."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    max_train_samples: int | None = field(default=None, metadata=_help("Use at most this many training rows."))
    max_eval_samples: int | None = field(default=None, metadata=_help("Evaluate on at most this many rows."))
    eval_steps: int = field(
        default=200, metadata=_help("Evaluate (loss and generated-answer ANLS) every N steps; 0: only at the end.")
    )
    save_steps: int = field(default=200, metadata=_help("Save a checkpoint every N steps."))
    save_total_limit: int = field(default=2, metadata=_help("Keep at most N checkpoints (0: keep all)."))
    logging_steps: int = field(default=10, metadata=_help("Log loss and learning rate every N steps."))
    freeze_vision: bool = field(default=False, metadata=_help("Freeze the DaViT vision tower (model.vision_tower)."))
    lora: bool = field(
        default=False,
        metadata=_help("Train LoRA adapters on the language model's attention and MLP (merged into the saved model)."),
    )
    lora_rank: int = field(default=8, metadata=_help("LoRA rank."))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha."))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout."))
    precision: str = field(
        default="auto",
        metadata=_help("bf16, fp16 or fp32 mixed precision; auto: bf16 on GPUs that have it, else fp16, fp32 on CPU."),
    )
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("Recompute activations in the backward pass to save memory.")
    )
    torch_compile: bool = field(
        default=False,
        metadata=_help(
            "Compile the model with torch.compile. On a GPU a step then launches fewer, fused kernels "
            "(bench/gpu_profile.py: a base-shape step 1.5x faster on an H200); compiling takes minutes at the start "
            "and again for new batch shapes, so it pays on long GPU runs, not on CPU."
        ),
    )
    group_by_page: bool = field(
        default=False,
        metadata=_help(
            "Batch the questions about one page together, so a batch prepares and encodes each of its pages once "
            "(DocVQA asks about 4 questions a page). Faster where the vision tower dominates a step, the loss is "
            "the same per question, but a batch covers fewer pages. Needs a dataset with a length (not --streaming)."
        ),
    )
    resume: bool = field(default=False, metadata=_help("Continue from the last checkpoint in --output-dir."))
    report_to: str = field(default="none", metadata=_help("Logging integration: none, tensorboard or wandb."))
    seed: int = field(default=42, metadata=_help("Random seed (model init, data order, dropout)."))
    random_answer: bool = field(
        default=False, metadata=_help("Train on a random gold answer per question and epoch (default: the first).")
    )
    deepspeed: str | None = field(default=None, metadata=_help("DeepSpeed JSON config file (passed to the Trainer)."))
    fsdp: str | None = field(
        default=None, metadata=_help("FSDP options for the Trainer, e.g. 'full_shard auto_wrap'.")
    )

    @property
    def per_device_eval_batch_size(self) -> int:
        # Evaluation keeps no gradients, activations for backward or optimizer state, so twice the
        # training batch should fit where training does (not measured on a GPU); beam search's
        # per-step cost is spread over the batch, so it answers faster (bench/RESULTS.md, eval).
        return self.eval_batch_size or 2 * self.batch_size

    @property
    def evaluates_during_training(self) -> bool:
        return bool(self.eval_steps)

    def _problems(self):
        yield from super()._problems()
        yield from _train_problems(self)


@dataclass(kw_only=True)
class EvalConfig(ModelOptions, DataOptions, GenerationOptions):
    """One evaluation of a Florence-2 model on a VQA split: batched generation, ANLS."""

    split: str = field(default="validation", metadata=_help("Split to evaluate."))
    batch_size: int = field(
        default=16,
        # Beam search pays a fixed cost per decoding step: 16 answered 1.4x faster than 8 on the
        # CPU bench (bench/RESULTS.md); 32 gained another 1.09x there, for twice the cache memory.
        metadata=_help("Questions per generation batch."),
    )
    max_samples: int | None = field(default=None, metadata=_help("Evaluate at most this many rows."))
    output_dir: str | None = field(
        default=None,
        metadata=_help("Where predictions.jsonl and metrics.json go (default: eval/<model>-<split>)."),
    )
    precision: str = field(
        default="auto", metadata=_help("Weights dtype: bf16, fp16 or fp32; auto: bf16/fp16 on GPU, fp32 on CPU.")
    )

    def _problems(self):
        yield from super()._problems()
        if not self.split:
            yield "--split must not be empty"
        if self.batch_size < 1:
            yield f"--batch-size must be >= 1, got {self.batch_size}"
        if self.max_samples is not None and self.max_samples < 1:
            yield f"--max-samples must be >= 1 when given, got {self.max_samples}"
        if self.precision not in PRECISIONS:
            yield f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"

    @property
    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        name = Path(self.model.rstrip("/")).name or "model"
        return Path("eval") / f"{name}-{self.split}"


def _train_problems(config: TrainConfig):
    """Every reason ``config`` cannot run, as one-line messages naming the option."""
    if not config.output_dir:
        yield "--output-dir must name a directory"
    if config.epochs <= 0:
        yield f"--epochs must be > 0, got {config.epochs}"
    positive = ("batch_size", "grad_accum", "save_steps", "logging_steps", "lora_rank", "lora_alpha")
    for name in positive:
        if getattr(config, name) < 1:
            yield f"--{_cli(name)} must be >= 1, got {getattr(config, name)}"
    for name in ("max_steps", "max_train_samples", "max_eval_samples", "eval_batch_size"):
        value = getattr(config, name)
        if value is not None and value < 1:
            yield f"--{_cli(name)} must be >= 1 when given, got {value}"
    for name in ("eval_steps", "save_total_limit"):
        value = getattr(config, name)
        if value < 0:
            yield f"--{_cli(name)} must be >= 0, got {value}"
    if not config.lr > 0:
        yield f"--lr must be > 0, got {config.lr}"
    if not 0 <= config.warmup_ratio < 1:
        yield f"--warmup-ratio must be in [0, 1), got {config.warmup_ratio}"
    if config.weight_decay < 0:
        yield f"--weight-decay must be >= 0, got {config.weight_decay}"
    if not 0 <= config.lora_dropout < 1:
        yield f"--lora-dropout must be in [0, 1), got {config.lora_dropout}"
    if config.precision not in PRECISIONS:
        yield f"--precision must be one of {', '.join(PRECISIONS)}, got {config.precision!r}"
    if config.report_to not in REPORT_TO:
        yield f"--report-to must be one of {', '.join(REPORT_TO)}, got {config.report_to!r}"
    if config.streaming and config.max_steps is None:
        yield "--streaming needs --max-steps (a stream has no length to count epochs by)"
    if config.streaming and config.group_by_page:
        yield "--group-by-page needs the dataset's rows up front; it cannot be used with --streaming"
    for name in ("train_split", "eval_split"):
        if not getattr(config, name):
            yield f"--{_cli(name)} must not be empty"
    if config.deepspeed is not None and config.fsdp is not None:
        yield "--deepspeed and --fsdp are two engines: choose one"
    if config.deepspeed is not None and not Path(config.deepspeed).is_file():
        yield f"--deepspeed {config.deepspeed}: no such file"


def _cli(name: str) -> str:
    return name.replace("_", "-")


def _field(cls, name: str) -> dataclasses.Field:
    for item in dataclasses.fields(cls):
        if item.name == name:
            return item
    raise KeyError(name)


def _coerce(cls, values: Mapping[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = {item.name: item for item in dataclasses.fields(cls)}
    result: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise UsageError(f"unknown option {key!r} (known: {', '.join(sorted(fields))})")
        result[name] = _coerce_value(name, value, hints[name])
    for name, item in fields.items():
        required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        if required and name not in result:
            raise UsageError(f"--{_cli(name)} is required")
    return result


def _coerce_value(name: str, value: Any, hint: Any) -> Any:
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise UsageError(f"{name} must not be empty")
    base = next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{name} must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UsageError(f"{name} must be a number, got {value!r}")
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UsageError(f"{name} must be text, got {value!r}")
    return value


def read_yaml(path: str | os.PathLike) -> Mapping[str, Any]:
    """The mapping in a YAML config file (keys as the CLI options name them)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(f"config file {path}: no such file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"config file {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# The one conversion to TrainingArguments.


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def ranks_on_this_machine() -> int:
    """Training processes sharing this machine's cores: torchrun's ``LOCAL_WORLD_SIZE``, else 1."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def usable_cores() -> int:
    """The cores this process may run on, which is what threads and workers are sized by.

    Its CPU affinity (a container's cpuset, ``taskset``, a scheduler's binding), not the machine's
    count: in a container given 4 of a host's 64 cores, ``os.cpu_count()`` says 64, and sizing
    torch's threads or the DataLoader's workers by it would put dozens of threads on 4 cores.
    (CPU quotas such as ``docker --cpus`` limit time, not cores, and do not show here.)
    """
    process_cpu_count = getattr(os, "process_cpu_count", None)  # Python >= 3.13: the affinity, or PYTHON_CPU_COUNT
    if process_cpu_count is not None:
        return process_cpu_count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cores_per_rank() -> int:
    """This rank's share of the usable cores, under torchrun with several ranks on the machine
    (0 when the ranks outnumber the cores)."""
    return usable_cores() // ranks_on_this_machine()


def _has_accelerator() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def resolve_precision(precision: str) -> str:
    """``auto`` made concrete for this machine; an impossible choice is a UsageError."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise UsageError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    return precision


def _torch_at_least(version: str) -> bool:
    import torch
    from packaging.version import Version

    return Version(Version(torch.__version__).base_version) >= Version(version)


def resolve_num_workers(num_workers: int | None) -> int:
    """The DataLoader workers to start: as asked, else 0 without an accelerator, else one per spare core.

    Measured on 2 cores (bench/RESULTS.md): a worker there takes a core from the model's own
    threads, while preparing a batch costs under a tenth of a training step; with 2 workers and
    1 torch thread training ran at 0.76-1.97x the published recipe's speed depending on the
    machine's load, without workers at parity. With a GPU the CPU only feeds the device: workers
    overlap that with compute.
    """
    if num_workers is not None:
        return num_workers
    if not _has_accelerator():
        return 0
    return max(1, min(8, cores_per_rank() - 1))


# Starting DataLoader workers costs about as much as preparing 10 batches on the background thread:
# on an H200 (bench/gpu_profile.py, base shape, 8 questions a batch) the model answered 4 batches
# in 0.215 s, a batch took ~0.14 s to prepare on the thread, and the whole pass took 0.62 s
# without workers and 1.3 s with 8 of them (their start and first batches), i.e.
# 0.14 n ~ 0.054 n + 0.8 at n ~ 10 batches.
MIN_EVAL_BATCHES_FOR_WORKERS = 10


def resolve_eval_num_workers(num_workers: int | None, batches: int | None) -> int:
    """The DataLoader workers for generating ``batches`` batches of answers (None: a stream, unknown).

    As asked when asked; otherwise as for training (``resolve_num_workers``), except that an
    evaluation shorter than ``MIN_EVAL_BATCHES_FOR_WORKERS`` batches is prepared on the
    background thread: its workers would not be up and running before it is over.
    """
    if num_workers is not None:
        return num_workers
    if batches is not None and batches < MIN_EVAL_BATCHES_FOR_WORKERS:
        return 0
    return resolve_num_workers(None)


def check_report_to(report_to: str) -> None:
    package = _REPORT_PACKAGES.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise UsageError(f"--report-to {report_to} needs the {package} package: pip install {package}")


def to_training_arguments(config: TrainConfig):
    """The ``transformers.TrainingArguments`` of ``config`` (works on transformers 4.49 .. 5.x)."""
    from transformers import TrainingArguments

    check_report_to(config.report_to)
    precision = resolve_precision(config.precision)
    accepted = {item.name for item in dataclasses.fields(TrainingArguments)}
    evaluates = config.evaluates_during_training
    kwargs: dict[str, Any] = dict(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluates else "no",
        eval_steps=config.eval_steps if evaluates else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit or None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=resolve_num_workers(config.num_workers),
        dataloader_pin_memory=_has_cuda(),
        # No host-device synchronisation inside a step (with the non-blocking copy below): the
        # NaN/Inf filter reads every step's loss on the host. It only changes the *logged* loss
        # (a NaN or Inf step is averaged away instead of shown); training is the same.
        logging_nan_inf_filter=False,
        # Without an accelerator, say so: accelerate only sets up multi-process CPU (gloo) runs
        # under torchrun when told the run is on CPU.
        use_cpu=not _has_accelerator(),
        # The collators need the question/answers/image columns, which forward() does not take.
        remove_unused_columns=False,
        # A PeftModel's forward(*args, **kwargs) hides `labels` from the Trainer's signature check.
        label_names=["labels"],
        report_to=[] if config.report_to == "none" else [config.report_to],
        seed=config.seed,
        data_seed=config.seed,
        # Florence-2 computes every output on every step; DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
        deepspeed=config.deepspeed,
        fsdp=config.fsdp or "",
    )
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio).
    if "warmup_ratio" in accepted:
        kwargs["warmup_ratio"] = config.warmup_ratio
    else:
        kwargs["warmup_steps"] = config.warmup_ratio
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing.
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in accepted else "gradient_checkpointing"
    kwargs[checkpointing] = config.gradient_checkpointing
    if config.gradient_checkpointing:
        # Non-reentrant: with a frozen vision tower or LoRA the checkpointed inputs need no grad,
        # and the reentrant variant would then drop the gradients of the layers inside.
        kwargs[f"{checkpointing}_kwargs"] = {"use_reentrant": False}
    # One fused kernel for the whole AdamW update (CUDA, and CPU since torch 2.4); transformers
    # only makes it the default from torch 2.8, and not at all on 4.x. Other accelerators keep
    # transformers' choice.
    if _torch_at_least("2.4") and (_has_cuda() or not _has_accelerator()):
        kwargs["optim"] = "adamw_torch_fused"
    kwargs["torch_compile"] = config.torch_compile
    if _has_cuda():
        # Batches come from pinned memory (above); a blocking copy would still wait for every
        # kernel already queued, so the host could not queue the next step while the GPU works.
        kwargs["accelerator_config"] = {"non_blocking": True}
    if "save_safetensors" in accepted:
        kwargs["save_safetensors"] = True
    if "overwrite_output_dir" in accepted:
        kwargs["overwrite_output_dir"] = False
    return TrainingArguments(**kwargs)


__all__ = [
    "DEFAULT_MODEL",
    "PRECISIONS",
    "REPORT_TO",
    "TrainConfig",
    "cores_per_rank",
    "ranks_on_this_machine",
    "read_yaml",
    "resolve_eval_num_workers",
    "resolve_num_workers",
    "resolve_precision",
    "to_training_arguments",
    "usable_cores",
]
