"""`florence-patch train`: fine-tune Florence-2 with transformers' Trainer.

The order is the one of transformers' run_*.py scripts: logging, last checkpoint (resume),
seed, data, model, trainer, train, save, metrics. The Trainer brings mixed precision,
gradient accumulation, checkpoints and resuming, logging integrations and multi-process
training (torchrun / accelerate launch: DDP; FSDP and DeepSpeed through their own configs).
What is Florence-2 specific lives here: the remote code is fixed before it is imported, the
evaluation generates answers and scores them with ANLS, and the output directory is made
self-contained (fixed code, restored config, processor, metrics, plot, model card).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from florence_patch.errors import UsageError
from florence_patch.training.config import TrainConfig, resolve_precision, to_training_arguments
from florence_patch.training.evaluate import (
    Prediction,
    generate_predictions,
    generation_workers,
    limit_rows,
    score,
    scores_dict,
    write_json,
    write_predictions,
)
from florence_patch.training.model import ParameterCount

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PLOT_FILE = "training_curves.png"
CARD_FILE = "README.md"
EVAL_PREDICTIONS_FILE = "eval_predictions.jsonl"


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    global_step: int
    resumed_from: str | None  # the checkpoint this run continued from
    parameters: ParameterCount
    train_metrics: dict[str, Any]
    eval_metrics: dict[str, Any]  # final evaluation: loss, anls, exact_match, per type
    world_size: int
    final_loss: float | None = None  # the last training loss logged

    @property
    def anls(self) -> float | None:
        return self.eval_metrics.get("anls")

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    @property
    def plot_path(self) -> Path:
        return self.output_dir / PLOT_FILE

    @property
    def card_path(self) -> Path:
        return self.output_dir / CARD_FILE


# ---------------------------------------------------------------------------------------------
# Steps.


def configure_logging(args) -> None:
    """Info from florence-patch on the main process, warnings elsewhere (as run_*.py does)."""
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    main = args.process_index == 0
    logging.getLogger("florence_patch").setLevel(logging.INFO if main else logging.WARNING)
    level = transformers.logging.WARNING if main else transformers.logging.ERROR
    transformers.logging.set_verbosity(level)
    datasets.logging.set_verbosity(level)


def checkpoint_to_resume(config: TrainConfig) -> str | None:
    """The checkpoint ``--resume`` continues from; refuse to mix runs without it."""
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(config.output_dir)
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    if config.resume:
        if last is None:
            logger.warning("--resume: no checkpoint in %s yet; starting from the beginning", output_dir)
        return last
    if last is not None:
        raise UsageError(
            f"{output_dir} holds checkpoints of an earlier run (last: {Path(last).name}); "
            "pass --resume to continue it, or choose another --output-dir"
        )
    return None


def load_datasets(config: TrainConfig):
    """(train, eval) splits, limited to --max-train-samples / --max-eval-samples rows."""
    from florence_patch.training.data import load_vqa_split, with_undecoded_images

    def split(name: str, limit: int | None):
        dataset = load_vqa_split(
            config.dataset,
            name,
            streaming=config.streaming,
            revision=config.dataset_revision,
            columns=config.columns,
        )
        # Pages stay encoded until the collator, which decodes each distinct page of a batch once.
        return with_undecoded_images(limit_rows(dataset, limit), config.columns.image)

    return split(config.train_split, config.max_train_samples), split(config.eval_split, config.max_eval_samples)


def prepare_model(config: TrainConfig, args):
    """Fix the remote code (once per node, before any rank imports it), load, freeze / LoRA."""
    from florence_patch.training import model as florence

    with args.main_process_first(local=True, desc="fixing the Florence-2 remote code"):
        code = florence.fix_remote_code(config.model, config.revision)
        florence.import_remote_classes(code)
    model, processor = florence.load_model_and_processor(code)
    if config.vision_sdpa:
        florence.run_window_attention_through_sdpa(model, window_attention_run(config, args, processor))
    before = florence.count_parameters(model)
    if config.freeze_vision:
        frozen = florence.freeze_vision_tower(model)
        logger.info("froze the vision tower: %s parameters", f"{frozen:,}")
    if config.gradient_checkpointing:
        # The Trainer switches on the language model's checkpointing; the vision tower is ours to do.
        layers = florence.checkpoint_vision_layers(model)
        logger.info("gradient checkpointing: %d vision-tower layers recomputed in backward", layers)
    if config.lora:
        model = florence.add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout)
    counts = florence.count_parameters(model)
    logger.info(
        "parameters: %s, trainable: %s (%.2f%%; %s before freezing/LoRA)",
        f"{counts.total:,}", f"{counts.trainable:,}", 100 * counts.trainable_fraction, f"{before.trainable:,}",
    )
    return code, model, processor, counts


def window_attention_run(config: TrainConfig, args, processor):
    """Where the vision tower's window attention runs in this training, for timing its two forms."""
    import torch

    from florence_patch.training.model import page_size
    from florence_patch.training.window_attention import AttentionRun

    return AttentionRun(
        image_size=page_size(processor),
        batch_size=config.batch_size,
        device=str(args.device),
        autocast_dtype=torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None,
        # A frozen tower (--freeze-vision, or LoRA on the language model) is only run forward.
        backward=not (config.freeze_vision or config.lora),
    )


def group_by_page(config: TrainConfig, train_dataset, model):
    """(sampler, encoder) for --group-by-page, or (None, None): the Trainer's own shuffling."""
    from florence_patch.training.pages import PageGroupedSampler, SharedPageEncoder, page_keys

    if not config.group_by_page:
        return None, None
    started = time.perf_counter()
    keys = page_keys(train_dataset, config.columns.image)
    if keys is None:
        logger.warning(
            "--group-by-page: the %r column holds neither images nor paths, so which rows share a page is "
            "unknown; batches are shuffled as usual", config.columns.image,
        )
        return None, None
    encoder = SharedPageEncoder(model)
    logger.info(
        "--group-by-page: %d questions on %d pages (keyed in %.1f s)",
        len(keys), len(set(keys)), time.perf_counter() - started,
    )
    return PageGroupedSampler(keys, seed=config.seed), encoder


# ---------------------------------------------------------------------------------------------
# The Trainer, with generation-based evaluation.


@dataclass(frozen=True)
class GenerationEval:
    processor: Any
    task_prompt: str
    columns: Any
    batch_size: int
    num_beams: int
    max_new_tokens: int
    num_workers: int | None  # None: resolve_eval_num_workers decides per evaluation


def _trainer_classes():
    """Trainer subclasses, defined on first use: importing transformers is slow."""
    from transformers import Trainer, TrainerCallback

    class Florence2VQATrainer(Trainer):
        """Trainer whose evaluation also generates answers and scores them (ANLS, exact match)."""

        def __init__(self, *args, generation_eval: GenerationEval, page_order=None, page_encoder=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.generation_eval = generation_eval
            self.page_order = page_order  # a PageGroupedSampler: --group-by-page
            self.page_encoder = page_encoder  # a SharedPageEncoder for batches that carry page_index
            self.grouped_questions = self.grouped_pages = 0  # training questions, and pages encoded for them
            self.last_predictions: tuple[Prediction, ...] = ()
            self.last_scores = None
            self._generation_dataset = None

        def _get_train_sampler(self, train_dataset=None):
            # Only the training rows are ever sampled here (evaluation has _get_eval_sampler).
            if self.page_order is not None:
                return self.page_order
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, *args, **kwargs):
            inputs = dict(inputs)  # the caller's batch stays as it was
            page_index = inputs.pop("page_index", None)
            if page_index is None:
                return super().compute_loss(model, inputs, *args, **kwargs)
            # The collator shares pages only when train() installed the encoder.
            if model.training:
                self.grouped_questions += page_index.shape[0]
                self.grouped_pages += inputs["pixel_values"].shape[0]
            with self.page_encoder.pages(page_index):
                return super().compute_loss(model, inputs, *args, **kwargs)

        def get_train_dataloader(self):
            from florence_patch.training.prefetch import prefetch_where_a_core_is_spare

            # Without worker processes, prepare the next batches on a thread, where a core is free
            # for it; on a CPU whose cores the step's threads all take, it would slow the step.
            return prefetch_where_a_core_is_spare(super().get_train_dataloader(), self.args.device)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            self._generation_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            try:
                return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
            finally:
                self._generation_dataset = None

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            # The loss pass keeps no logits: answers are generated below, not argmax-ed.
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only=True, ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )
            if self._generation_dataset is not None:
                scores = self._generate_and_score(self._generation_dataset)
                if scores is not None:
                    output.metrics[f"{metric_key_prefix}_anls"] = scores.anls
                    output.metrics[f"{metric_key_prefix}_exact_match"] = scores.exact_match
            return output

        def _generate_and_score(self, dataset):
            from accelerate.utils import gather_object

            settings = self.generation_eval
            mine = generate_predictions(
                self.model,
                settings.processor,
                dataset,
                task_prompt=settings.task_prompt,
                columns=settings.columns,
                batch_size=settings.batch_size,
                num_beams=settings.num_beams,
                max_new_tokens=settings.max_new_tokens,
                num_workers=generation_workers(
                    settings.num_workers, dataset, settings.batch_size, self.args.world_size
                ),
                process_index=self.args.process_index,
                num_processes=self.args.world_size,
                autocast=self.accelerator.autocast,
                show_progress=self.is_world_process_zero() and not self.args.disable_tqdm,
            )
            everyone = gather_object(mine) if self.args.world_size > 1 else mine
            self.last_predictions = tuple(sorted(everyone, key=lambda p: p.index))
            self.last_scores = score(self.last_predictions)
            return self.last_scores

    class CollatorEpochCallback(TrainerCallback):
        """Tell the collator the epoch (its random-answer draw) before the epoch's workers start."""

        def __init__(self, collator):
            self.collator = collator

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.collator.set_epoch(int(state.epoch or 0))

    class SelfContainedCheckpointCallback(TrainerCallback):
        """Each full checkpoint carries the fixed remote code and a loadable config too."""

        def __init__(self, code_dir: Path):
            self.code_dir = code_dir

        def on_save(self, args, state, control, **kwargs):
            from florence_patch.training.model import finish_saved_directory

            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and (checkpoint / "config.json").is_file():
                finish_saved_directory(checkpoint, self.code_dir)

    return Florence2VQATrainer, CollatorEpochCallback, SelfContainedCheckpointCallback


# ---------------------------------------------------------------------------------------------
# The run.


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.dataset``; everything lands in ``config.output_dir``.

    Call it once per process (torchrun / accelerate launch start one per device); only the
    main process writes the final directory.
    """
    from transformers import set_seed

    from florence_patch.training.data import Florence2VQACollator
    from florence_patch.training.host_memory import keep_freed_memory
    from florence_patch.training.model import cap_cpu_threads, code_directory, merge_lora

    # Pages are tokenised in DataLoader workers forked from this process; a tokenizer that
    # already ran threads here would be switched to serial there, with a warning per worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    args = to_training_arguments(config)
    cap_cpu_threads(args.dataloader_num_workers)
    configure_logging(args)
    if args.device.type == "cpu":
        keep_freed_memory()
    resume_from = checkpoint_to_resume(config)
    if resume_from:
        logger.info("resuming from %s", resume_from)
    set_seed(args.seed)
    train_dataset, eval_dataset = load_datasets(config)
    code, model, processor, parameters = prepare_model(config, args)
    code_dir = code_directory(model)

    page_order, page_encoder = group_by_page(config, train_dataset, model)
    collator = Florence2VQACollator(
        processor,
        task_prompt=config.task_prompt,
        columns=config.columns,
        answer_choice="random" if config.random_answer else "first",
        seed=config.seed,
        share_pages=page_encoder is not None,
    )
    trainer_class, epoch_callback, checkpoint_callback = _trainer_classes()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=[epoch_callback(collator), checkpoint_callback(code_dir)],
        page_order=page_order,
        page_encoder=page_encoder,
        generation_eval=GenerationEval(
            processor=processor,
            task_prompt=config.task_prompt,
            columns=config.columns,
            batch_size=config.per_device_eval_batch_size,
            num_beams=config.num_beams,
            max_new_tokens=config.max_new_tokens,
            num_workers=config.num_workers,
        ),
    )

    train_output = trainer.train(resume_from_checkpoint=resume_from)

    # Save what was trained: LoRA adapters merged in, so the directory needs no peft to load.
    output_dir = Path(config.output_dir)
    if config.lora:
        trainer.model = merge_lora(trainer.model)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        finish_directory(trainer, output_dir, code_dir)
        logger.info("saved the fine-tuned model to %s", output_dir)

    # Metrics: the final evaluation is of the model as saved.
    eval_metrics = _final_evaluation(trainer)
    train_metrics = dict(train_output.metrics)
    if trainer.grouped_pages:
        train_metrics["train_questions_per_encoded_page"] = round(trainer.grouped_questions / trainer.grouped_pages, 3)
        logger.info(
            "--group-by-page: %d training questions, %d page encodings", trainer.grouped_questions, trainer.grouped_pages
        )
    result = TrainResult(
        output_dir=output_dir,
        global_step=trainer.state.global_step,
        resumed_from=Path(resume_from).name if resume_from else None,
        parameters=parameters,
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        world_size=args.world_size,
        final_loss=_last_logged(trainer.state.log_history, "loss"),
    )
    if trainer.is_world_process_zero():
        write_run_files(trainer, config, code, result, seconds=time.perf_counter() - started)
        logger.info(
            "step %d: eval ANLS %s, exact match %s -> %s",
            result.global_step, _fmt(result.anls), _fmt(eval_metrics.get("exact_match")), result.metrics_path,
        )
    return result


def finish_directory(trainer, output_dir: Path, code_dir: Path) -> None:
    """The saved directory (weights and processor, by Trainer.save_model), made loadable on its
    own: the fixed code, a repaired config, the generation config."""
    from florence_patch.training.model import finish_saved_directory

    model = trainer.model
    if not (output_dir / "generation_config.json").is_file() and getattr(model, "generation_config", None):
        model.generation_config.save_pretrained(str(output_dir))
    changed = finish_saved_directory(output_dir, code_dir)
    if changed:
        logger.info("made %s self-contained: %s", output_dir, ", ".join(changed))


def _final_evaluation(trainer) -> dict[str, Any]:
    """Loss and generated-answer scores of the final model (reusing an evaluation at this step)."""
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step and trainer.last_predictions:
        loss = last["eval_loss"]
    else:
        loss = trainer.evaluate().get("eval_loss")
    return {"loss": loss, "count": len(trainer.last_predictions), **scores_dict(trainer.last_scores)}


def write_run_files(trainer, config: TrainConfig, code, result: TrainResult, *, seconds: float) -> None:
    """metrics.json, eval_predictions.jsonl, the training-curve PNG and the README model card."""
    import torch
    import transformers

    from florence_patch.training.model_card import CardFacts, render_model_card
    from florence_patch.training.plots import plot_training_curves
    from florence_patch.safe_io import atomic_write

    output_dir = result.output_dir
    trainer.save_state()  # trainer_state.json: the log history, final evaluation included
    environment = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "device": str(trainer.args.device),
        "processes": result.world_size,
        "precision": resolve_precision(config.precision),
    }
    metrics = {
        "model": config.model,
        "revision": code.revision,
        "dataset": config.dataset,
        "global_step": result.global_step,
        "resumed_from": result.resumed_from,
        "final_loss": result.final_loss,
        "world_size": result.world_size,
        "parameters": dataclasses.asdict(result.parameters),
        "train": result.train_metrics,
        "eval": result.eval_metrics,
        "seconds": round(seconds, 3),
        "environment": environment,
        "remote_code_fixes": list(code.applied),
        "config": config.to_dict(),
    }
    write_json(output_dir / METRICS_FILE, metrics)
    write_predictions(output_dir / EVAL_PREDICTIONS_FILE, trainer.last_predictions)
    plot_training_curves(trainer.state.log_history, output_dir / PLOT_FILE, title=f"{config.model} on {config.dataset}")
    card = render_model_card(
        CardFacts(
            base_model=config.model,
            base_revision=code.revision,
            dataset=config.dataset,
            train_split=config.train_split,
            eval_split=config.eval_split,
            fixes=code.applied,
            hyperparameters=_hyperparameters(config),
            parameters_total=result.parameters.total,
            parameters_trainable=result.parameters.trainable,
            train_metrics=result.train_metrics,
            eval_metrics=result.eval_metrics,
            environment=environment,
            task_prompt=config.task_prompt,
            command=command_line(config),
            last_train_loss=result.final_loss,
        )
    )
    atomic_write(output_dir / CARD_FILE, card.encode("utf-8"))


_CARD_SETTINGS = (
    "epochs", "max_steps", "batch_size", "grad_accum", "lr", "warmup_ratio", "weight_decay", "max_train_samples",
    "freeze_vision", "lora", "lora_rank", "lora_alpha", "precision", "gradient_checkpointing", "vision_sdpa", "random_answer",
    "group_by_page", "task_prompt", "num_beams", "max_new_tokens", "seed",
)


def _hyperparameters(config: TrainConfig) -> dict[str, Any]:
    values = config.to_dict()
    shown = {name: values[name] for name in _CARD_SETTINGS}
    if not config.lora:
        shown.pop("lora_rank")
        shown.pop("lora_alpha")
    return shown


def command_line(config: TrainConfig) -> str:
    """The `florence-patch train` command that makes this config (options that differ from defaults)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    parts = ["florence-patch", "train", "--dataset", config.dataset]
    for name, value in config.to_dict().items():
        if name in ("dataset", "resume") or defaults.get(name, object()) == value:
            continue
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(option if value else f"--no-{option[2:]}")
        else:
            parts += [option, "" if value is None else str(value)]  # '' names no column
    return shlex.join(parts)


def _last_logged(log_history, key: str) -> float | None:
    return next((entry[key] for entry in reversed(log_history) if key in entry), None)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


__all__ = ["TrainResult", "checkpoint_to_resume", "command_line", "load_datasets", "train"]
