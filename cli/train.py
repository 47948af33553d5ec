"""train / eval: wiring over florence_patch.training.

Every option's help text is the field metadata of TrainConfig / EvalConfig (declared once,
there); the options default to None here so that only what is given on the command line
overrides a ``--config`` YAML file.
"""

from __future__ import annotations

import dataclasses
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from florence_patch.training.config import DataOptions, EvalConfig, GenerationOptions, ModelOptions, TrainConfig

from .options import FormatOpt, OutputFormat, RevisionOpt
from .output import emit, info


def _help(config_class, name: str) -> str:
    """The field's help, with its default (the CLI's own default is None: 'not given')."""
    item = next(f for f in dataclasses.fields(config_class) if f.name == name)
    text = item.metadata["help"]
    if item.default not in (dataclasses.MISSING, None, False, ""):
        text += f" (default: {item.default})"
    return text


def _opt(config_class, name: str, *flags: str, **kwargs: Any):
    flags = flags or ("--" + name.replace("_", "-"),)
    return typer.Option(*flags, help=_help(config_class, name), show_default=False, **kwargs)


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class ReportTo(str, Enum):
    none = "none"
    tensorboard = "tensorboard"
    wandb = "wandb"


# Shared by train and eval.
DatasetOpt = Annotated[Optional[str], _opt(DataOptions, "dataset")]
DatasetRevisionOpt = Annotated[Optional[str], _opt(DataOptions, "dataset_revision")]
StreamingOpt = Annotated[Optional[bool], _opt(DataOptions, "streaming", "--streaming/--no-streaming")]
TaskPromptOpt = Annotated[Optional[str], _opt(DataOptions, "task_prompt")]
QuestionColumnOpt = Annotated[Optional[str], _opt(DataOptions, "question_column")]
AnswersColumnOpt = Annotated[Optional[str], _opt(DataOptions, "answers_column")]
ImageColumnOpt = Annotated[Optional[str], _opt(DataOptions, "image_column")]
QuestionTypesColumnOpt = Annotated[Optional[str], _opt(DataOptions, "question_types_column")]
QuestionIdColumnOpt = Annotated[Optional[str], _opt(DataOptions, "question_id_column")]
NumWorkersOpt = Annotated[Optional[int], _opt(DataOptions, "num_workers")]
NumBeamsOpt = Annotated[Optional[int], _opt(GenerationOptions, "num_beams")]
MaxNewTokensOpt = Annotated[Optional[int], _opt(GenerationOptions, "max_new_tokens")]
ModelOpt = Annotated[Optional[str], _opt(ModelOptions, "model")]
VisionSdpaOpt = Annotated[Optional[bool], _opt(ModelOptions, "vision_sdpa", "--vision-sdpa/--no-vision-sdpa")]
PrecisionOpt = Annotated[Optional[Precision], _opt(TrainConfig, "precision")]
ConfigFileOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="YAML file of options (keys as the options are named); given options win."),
]

# train
OutputDirOpt = Annotated[Optional[str], _opt(TrainConfig, "output_dir")]
TrainSplitOpt = Annotated[Optional[str], _opt(TrainConfig, "train_split")]
EvalSplitOpt = Annotated[Optional[str], _opt(TrainConfig, "eval_split")]
EpochsOpt = Annotated[Optional[float], _opt(TrainConfig, "epochs")]
MaxStepsOpt = Annotated[Optional[int], _opt(TrainConfig, "max_steps")]
BatchSizeOpt = Annotated[Optional[int], _opt(TrainConfig, "batch_size")]
EvalBatchSizeOpt = Annotated[Optional[int], _opt(TrainConfig, "eval_batch_size")]
GradAccumOpt = Annotated[Optional[int], _opt(TrainConfig, "grad_accum")]
LrOpt = Annotated[Optional[float], _opt(TrainConfig, "lr", "--lr", "--learning-rate")]
WarmupRatioOpt = Annotated[Optional[float], _opt(TrainConfig, "warmup_ratio")]
WeightDecayOpt = Annotated[Optional[float], _opt(TrainConfig, "weight_decay")]
MaxTrainSamplesOpt = Annotated[Optional[int], _opt(TrainConfig, "max_train_samples")]
MaxEvalSamplesOpt = Annotated[Optional[int], _opt(TrainConfig, "max_eval_samples")]
EvalStepsOpt = Annotated[Optional[int], _opt(TrainConfig, "eval_steps")]
SaveStepsOpt = Annotated[Optional[int], _opt(TrainConfig, "save_steps")]
SaveTotalLimitOpt = Annotated[Optional[int], _opt(TrainConfig, "save_total_limit")]
LoggingStepsOpt = Annotated[Optional[int], _opt(TrainConfig, "logging_steps")]
FreezeVisionOpt = Annotated[Optional[bool], _opt(TrainConfig, "freeze_vision", "--freeze-vision/--no-freeze-vision")]
LoraOpt = Annotated[Optional[bool], _opt(TrainConfig, "lora", "--lora/--no-lora")]
LoraRankOpt = Annotated[Optional[int], _opt(TrainConfig, "lora_rank")]
LoraAlphaOpt = Annotated[Optional[int], _opt(TrainConfig, "lora_alpha")]
LoraDropoutOpt = Annotated[Optional[float], _opt(TrainConfig, "lora_dropout")]
GradientCheckpointingOpt = Annotated[
    Optional[bool], _opt(TrainConfig, "gradient_checkpointing", "--gradient-checkpointing/--no-gradient-checkpointing")
]
GroupByPageOpt = Annotated[Optional[bool], _opt(TrainConfig, "group_by_page", "--group-by-page/--no-group-by-page")]
TorchCompileOpt = Annotated[Optional[bool], _opt(TrainConfig, "torch_compile", "--torch-compile/--no-torch-compile")]
ResumeOpt = Annotated[Optional[bool], _opt(TrainConfig, "resume", "--resume/--no-resume")]
ReportToOpt = Annotated[Optional[ReportTo], _opt(TrainConfig, "report_to")]
SeedOpt = Annotated[Optional[int], _opt(TrainConfig, "seed")]
RandomAnswerOpt = Annotated[Optional[bool], _opt(TrainConfig, "random_answer", "--random-answer/--first-answer")]
DeepSpeedOpt = Annotated[Optional[str], _opt(TrainConfig, "deepspeed")]
FsdpOpt = Annotated[Optional[str], _opt(TrainConfig, "fsdp")]

# eval
SplitOpt = Annotated[Optional[str], _opt(EvalConfig, "split")]
EvalCmdBatchSizeOpt = Annotated[Optional[int], _opt(EvalConfig, "batch_size")]
MaxSamplesOpt = Annotated[Optional[int], _opt(EvalConfig, "max_samples")]
EvalPrecisionOpt = Annotated[Optional[Precision], _opt(EvalConfig, "precision")]
EvalOutputDirOpt = Annotated[Optional[str], _opt(EvalConfig, "output_dir")]

_NOT_OPTIONS = ("config", "fmt")


def _given(ctx: typer.Context) -> dict[str, Any]:
    """The options given on the command line, as config values."""
    return {
        name: value.value if isinstance(value, Enum) else value
        for name, value in ctx.params.items()
        if value is not None and name not in _NOT_OPTIONS
    }


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _score_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"metric": "anls", "value": _fmt(metrics.get("anls"))},
            {"metric": "exact_match", "value": _fmt(metrics.get("exact_match"))}]
    counts = metrics.get("count_by_type") or {}
    rows += [
        {"metric": f"anls[{name}]", "value": f"{_fmt(value)}  ({counts.get(name, 0)} questions)"}
        for name, value in (metrics.get("anls_by_type") or {}).items()
    ]
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def train(
    ctx: typer.Context,
    dataset: DatasetOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    dataset_revision: DatasetRevisionOpt = None,
    output_dir: OutputDirOpt = None,
    train_split: TrainSplitOpt = None,
    eval_split: EvalSplitOpt = None,
    epochs: EpochsOpt = None,
    max_steps: MaxStepsOpt = None,
    batch_size: BatchSizeOpt = None,
    eval_batch_size: EvalBatchSizeOpt = None,
    grad_accum: GradAccumOpt = None,
    lr: LrOpt = None,
    warmup_ratio: WarmupRatioOpt = None,
    weight_decay: WeightDecayOpt = None,
    max_train_samples: MaxTrainSamplesOpt = None,
    max_eval_samples: MaxEvalSamplesOpt = None,
    eval_steps: EvalStepsOpt = None,
    save_steps: SaveStepsOpt = None,
    save_total_limit: SaveTotalLimitOpt = None,
    logging_steps: LoggingStepsOpt = None,
    freeze_vision: FreezeVisionOpt = None,
    lora: LoraOpt = None,
    lora_rank: LoraRankOpt = None,
    lora_alpha: LoraAlphaOpt = None,
    lora_dropout: LoraDropoutOpt = None,
    precision: PrecisionOpt = None,
    gradient_checkpointing: GradientCheckpointingOpt = None,
    torch_compile: TorchCompileOpt = None,
    vision_sdpa: VisionSdpaOpt = None,
    group_by_page: GroupByPageOpt = None,
    streaming: StreamingOpt = None,
    task_prompt: TaskPromptOpt = None,
    resume: ResumeOpt = None,
    report_to: ReportToOpt = None,
    seed: SeedOpt = None,
    question_column: QuestionColumnOpt = None,
    answers_column: AnswersColumnOpt = None,
    image_column: ImageColumnOpt = None,
    question_types_column: QuestionTypesColumnOpt = None,
    question_id_column: QuestionIdColumnOpt = None,
    num_workers: NumWorkersOpt = None,
    random_answer: RandomAnswerOpt = None,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    deepspeed: DeepSpeedOpt = None,
    fsdp: FsdpOpt = None,
    config: ConfigFileOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Fine-tune Florence-2 on a VQA set: checkpoints, ANLS evaluation, a self-contained model directory."""
    from florence_patch.training.train import train as run_training

    result = run_training(TrainConfig.from_sources(config, _given(ctx)))
    if not _is_main_process():
        return
    summary = {
        "output_dir": str(result.output_dir),
        "global_step": result.global_step,
        "resumed_from": result.resumed_from,
        "parameters": result.parameters.total,
        "trainable_parameters": result.parameters.trainable,
        "final_loss": result.final_loss,
        "eval_loss": result.eval_metrics.get("loss"),
        **{key: result.eval_metrics.get(key) for key in ("anls", "exact_match", "anls_by_type", "count_by_type")},
        "metrics": str(result.metrics_path),
    }
    if fmt is OutputFormat.json:
        emit([summary], (), fmt)
        return
    rows = [{"metric": key, "value": _fmt(summary[key])} for key in
            ("output_dir", "global_step", "resumed_from", "trainable_parameters", "final_loss", "eval_loss")]
    emit(rows + _score_rows(result.eval_metrics), ("metric", "value"), fmt)
    info(f"metrics: {result.metrics_path}; curves: {result.plot_path}; model card: {result.card_path}")


def eval(  # noqa: A001 - the command is called eval
    ctx: typer.Context,
    model: ModelOpt = None,
    dataset: DatasetOpt = None,
    split: SplitOpt = None,
    revision: RevisionOpt = None,
    dataset_revision: DatasetRevisionOpt = None,
    batch_size: EvalCmdBatchSizeOpt = None,
    num_beams: NumBeamsOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    max_samples: MaxSamplesOpt = None,
    output_dir: EvalOutputDirOpt = None,
    precision: EvalPrecisionOpt = None,
    vision_sdpa: VisionSdpaOpt = None,
    streaming: StreamingOpt = None,
    task_prompt: TaskPromptOpt = None,
    question_column: QuestionColumnOpt = None,
    answers_column: AnswersColumnOpt = None,
    image_column: ImageColumnOpt = None,
    question_types_column: QuestionTypesColumnOpt = None,
    question_id_column: QuestionIdColumnOpt = None,
    num_workers: NumWorkersOpt = None,
    config: ConfigFileOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Score a model on a VQA split: batched generation, ANLS, exact match, ANLS per question type."""
    from florence_patch.training.evaluate import evaluate as run_evaluation

    result = run_evaluation(EvalConfig.from_sources(config, _given(ctx)))
    metrics = result.metrics()
    if fmt is OutputFormat.json:
        emit([{**metrics, "predictions": str(result.predictions_path), "metrics": str(result.metrics_path)}], (), fmt)
        return
    emit(
        [{"metric": "questions", "value": f"{metrics['count']} ({metrics['scored']} with gold answers)"}]
        + _score_rows(metrics),
        ("metric", "value"),
        fmt,
    )
    info(f"predictions: {result.predictions_path}; metrics: {result.metrics_path}")
