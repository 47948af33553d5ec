"""Generation-based evaluation: batched answers, ANLS, exact match, ANLS per question type.

One code path serves ``florence-patch eval``, the evaluation inside training (each rank
generates for its share of the batches, the shares are gathered) and the demo.

Batches are made of questions of similar prompt length (sorted, longest first: less padding,
and an out-of-memory shows on the first batch, not the last), a page's questions kept together
so each batch runs the vision tower once per page (``pages.py``). Answers are decoded with the
processor's own ``post_process_generation`` for the task when it has one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from florence_patch.errors import UsageError
from florence_patch.metrics import VQAScores, anls_score, exact_match, score_predictions

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Prediction:
    """One generated answer, with what it is scored against."""

    index: int  # row in the evaluated split
    question_id: Any
    question: str
    prediction: str
    answers: tuple[str, ...]
    question_types: tuple[str, ...] = ()

    @property
    def annotated(self) -> bool:
        return bool(self.answers)

    @property
    def anls(self) -> float | None:
        return anls_score(self.prediction, self.answers) if self.answers else None

    @property
    def exact_match(self) -> bool | None:
        return exact_match(self.prediction, self.answers) if self.answers else None

    def to_json(self) -> dict[str, Any]:
        return {
            "questionId": self.question_id,
            "question": self.question,
            "prediction": self.prediction,
            "answers": list(self.answers),
            "anls": self.anls,
            "question_types": list(self.question_types),
        }


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation found; ``scores`` is None when no row had gold answers."""

    model: str
    dataset: str
    split: str
    predictions: tuple[Prediction, ...]
    scores: VQAScores | None
    seconds: float
    output_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def anls(self) -> float | None:
        return self.scores.anls if self.scores else None

    @property
    def exact_match(self) -> float | None:
        return self.scores.exact_match if self.scores else None

    @property
    def predictions_path(self) -> Path | None:
        return self.output_dir / PREDICTIONS_FILE if self.output_dir else None

    @property
    def metrics_path(self) -> Path | None:
        return self.output_dir / METRICS_FILE if self.output_dir else None

    def metrics(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "split": self.split,
            "count": len(self.predictions),
            "scored": self.scores.count if self.scores else 0,
            **scores_dict(self.scores),
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
        }


def scores_dict(scores: VQAScores | None) -> dict[str, Any]:
    if scores is None:
        return {"anls": None, "exact_match": None, "anls_by_type": {}, "count_by_type": {}}
    return {
        "anls": scores.anls,
        "exact_match": scores.exact_match,
        "anls_by_type": dict(scores.anls_by_type),
        "count_by_type": dict(scores.count_by_type),
    }


def score(predictions: Sequence[Prediction]) -> VQAScores | None:
    """ANLS, exact match and per-type ANLS over the predictions that have gold answers."""
    annotated = [p for p in predictions if p.annotated]
    if not annotated:
        return None
    return score_predictions(
        [p.prediction for p in annotated],
        [list(p.answers) for p in annotated],
        [list(p.question_types) for p in annotated],
    )


# ---------------------------------------------------------------------------------------------
# Generation.


def length_sorted_batches(
    lengths: Sequence[int], batch_size: int, pages: Sequence[str] | None = None
) -> list[list[int]]:
    """Row indices in batches of similar length, longest first (ties keep row order).

    With ``pages`` (one key per row), the questions about one page stay next to each other, so
    a batch encodes each of its pages once (``generate_sharing_pages``); pages are ordered by
    their longest prompt.
    """
    groups: dict[Any, list[int]] = {}
    for index in range(len(lengths)):
        groups.setdefault(pages[index] if pages is not None else index, []).append(index)
    ordered = sorted(groups.values(), key=lambda rows: (-max(lengths[i] for i in rows), rows[0]))
    order = [index for rows in ordered for index in sorted(rows, key=lambda i: (-lengths[i], i))]
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def prompt_lengths(processor, questions: Sequence[str], task_prompt: str) -> list[int]:
    encoded = processor.tokenizer([f"{task_prompt}{question}" for question in questions])
    return [len(ids) for ids in encoded["input_ids"]]


def answer_text(processor, text: str, task_prompt: str) -> str:
    """The answer in a generated sequence decoded with its special tokens."""
    tokenizer = processor.tokenizer
    if tokenizer.pad_token:
        text = text.replace(tokenizer.pad_token, "")  # batch padding; the task parser keeps it
    post_process = getattr(processor, "post_process_generation", None)
    if post_process is not None:
        # VQA answers are plain text: the parser needs no image size.
        parsed = post_process(text=text, task=task_prompt, image_size=None)
        value = parsed.get(task_prompt) if isinstance(parsed, dict) else parsed
        if isinstance(value, str):
            return value.strip()
    for token in tokenizer.all_special_tokens:
        text = text.replace(token, "")
    return text.strip()


def _model_dtype(model):
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return None


def generation_workers(num_workers: int | None, dataset, batch_size: int, num_processes: int = 1) -> int:
    """DataLoader workers for answering ``dataset`` (``resolve_eval_num_workers`` on its batch count)."""
    import datasets

    from florence_patch.training.config import resolve_eval_num_workers

    batches = None
    if not isinstance(dataset, datasets.IterableDataset):
        batches = math.ceil(math.ceil(len(dataset) / batch_size) / num_processes)
    return resolve_eval_num_workers(num_workers, batches)


def generate_predictions(
    model,
    processor,
    dataset,
    *,
    task_prompt: str,
    columns,
    batch_size: int,
    num_beams: int,
    max_new_tokens: int,
    num_workers: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    show_progress: bool = True,
) -> list[Prediction]:
    """This process's share of the answers to ``dataset`` (every answer when single-process).

    A map-style dataset is cut into length-sorted batches dealt round-robin to the processes;
    a stream is split by node and read in order. Pages are decoded and preprocessed in
    ``num_workers`` DataLoader workers, or on a background thread when there are none.
    """
    import datasets
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from florence_patch.training.data import Florence2VQAEvalCollator, with_undecoded_images
    from florence_patch.training.pages import generate_sharing_pages, page_keys
    from florence_patch.training.prefetch import prefetch_where_a_core_is_spare

    collator = Florence2VQAEvalCollator(processor, task_prompt=task_prompt, columns=columns)
    if isinstance(dataset, datasets.IterableDataset):
        if num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
        indices: list[int] | None = None
        rows = with_undecoded_images(dataset, columns.image)
        total = None
    else:
        lengths = prompt_lengths(processor, dataset[columns.question], task_prompt)
        pages = page_keys(dataset, columns.image)
        batches = length_sorted_batches(lengths, batch_size, pages)[process_index::num_processes]
        indices = [index for batch in batches for index in batch]
        rows = with_undecoded_images(dataset.select(indices), columns.image)  # the collator decodes a page once
        total = len(batches)
    loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collator, num_workers=num_workers)
    device = next(model.parameters()).device
    # Without workers, the next batch is prepared on a thread while this one generates, where a
    # core is free for it.
    loader = prefetch_where_a_core_is_spare(loader, device)
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    predictions: list[Prediction] = []
    position = 0
    try:
        with torch.no_grad(), (autocast() if autocast else contextlib.nullcontext()):
            for batch in tqdm(loader, total=total, desc="generating answers", disable=not show_progress):
                # With the prompts' mask the padding of the shorter ones is not attended to (as in
                # training, with the prompt-padding-mask fix): an answer does not depend on the batch.
                generated = generate_sharing_pages(
                    model,
                    input_ids=batch["input_ids"].to(device),
                    pixel_values=batch["pixel_values"].to(device=device, dtype=dtype),
                    page_index=batch["page_index"],
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                    do_sample=False,
                    # early_stopping is a beam-search setting (Florence-2's config sets it): keep
                    # greedy decoding from warning about it.
                    **({} if num_beams > 1 else {"early_stopping": False}),
                )
                texts = processor.batch_decode(generated, skip_special_tokens=False)
                for row, text in enumerate(texts):
                    index = indices[position] if indices is not None else position * num_processes + process_index
                    predictions.append(
                        Prediction(
                            index=index,
                            question_id=batch["question_ids"][row],
                            question=batch["questions"][row],
                            prediction=answer_text(processor, text, task_prompt),
                            answers=tuple(batch["answers"][row]),
                            question_types=tuple(batch["question_types"][row]),
                        )
                    )
                    position += 1
    finally:
        model.train(was_training)
    return predictions


# ---------------------------------------------------------------------------------------------
# Files.


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    from florence_patch.safe_io import atomic_write

    lines = "".join(json.dumps(p.to_json(), ensure_ascii=False, default=str) + "\n" for p in predictions)
    atomic_write(path, lines.encode("utf-8"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    from florence_patch.safe_io import atomic_write

    atomic_write(path, (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# The library entry point behind `florence-patch eval`.


def limit_rows(dataset, max_samples: int | None):
    import datasets

    if max_samples is None:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.take(max_samples)
    return dataset.select(range(min(max_samples, len(dataset))))


def eval_dtype(precision: str):
    """The weights dtype evaluation loads in (no mixed precision: generation only)."""
    import torch

    from florence_patch.training.config import resolve_precision

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[resolve_precision(precision)]


def evaluate(config) -> EvalResult:
    """Evaluate ``config.model`` on ``config.split`` of ``config.dataset``; write the results.

    ``config`` is an :class:`~florence_patch.training.config.EvalConfig`. The model's remote
    code is fixed first (as training does). Writes ``predictions.jsonl`` (questionId, question,
    prediction, answers, anls) and ``metrics.json`` to ``config.resolved_output_dir``.
    """
    import torch

    from florence_patch.training.data import load_vqa_split
    from florence_patch.training.model import (
        fix_remote_code,
        load_model_and_processor,
        page_size,
        run_window_attention_through_sdpa,
    )
    from florence_patch.training.window_attention import AttentionRun

    # Pages are tokenised in DataLoader workers forked from this process; a tokenizer that
    # already ran threads here would be switched to serial there, with a warning per worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    from florence_patch.training.host_memory import keep_freed_memory
    from florence_patch.training.model import cap_cpu_threads

    if not torch.cuda.is_available():
        keep_freed_memory()
    dataset = limit_rows(
        load_vqa_split(
            config.dataset,
            config.split,
            streaming=config.streaming,
            revision=config.dataset_revision,
            columns=config.columns,
        ),
        config.max_samples,
    )
    num_workers = generation_workers(config.num_workers, dataset, config.batch_size)
    cap_cpu_threads(num_workers)
    code = fix_remote_code(config.model, config.revision)
    dtype = eval_dtype(config.precision)
    model, processor = load_model_and_processor(code, dtype=dtype)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    sdpa_modules = 0
    if config.vision_sdpa:
        # Generation encodes each batch's pages once, forward only, in the weights' dtype.
        run = AttentionRun(image_size=page_size(processor), batch_size=config.batch_size, device=str(device), backward=False)
        sdpa_modules = run_window_attention_through_sdpa(model, run).switched
    predictions = generate_predictions(
        model,
        processor,
        dataset,
        task_prompt=config.task_prompt,
        columns=config.columns,
        batch_size=config.batch_size,
        num_beams=config.num_beams,
        max_new_tokens=config.max_new_tokens,
        num_workers=num_workers,
    )
    predictions.sort(key=lambda p: p.index)
    if not predictions:
        raise UsageError(f"{config.dataset} [{config.split}] has no rows to evaluate")
    result = EvalResult(
        model=config.model,
        dataset=config.dataset,
        split=config.split,
        predictions=tuple(predictions),
        scores=score(predictions),
        seconds=time.perf_counter() - started,
        output_dir=config.resolved_output_dir,
        settings={
            "revision": code.revision,
            "batch_size": config.batch_size,
            "num_beams": config.num_beams,
            "max_new_tokens": config.max_new_tokens,
            "task_prompt": config.task_prompt,
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
            "num_workers": num_workers,
            "max_samples": config.max_samples,
            "vision_sdpa_modules": sdpa_modules,  # window-attention modules run through SDPA
        },
    )
    result.output_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(result.predictions_path, result.predictions)
    write_json(result.metrics_path, result.metrics())
    return result


__all__ = [
    "EvalResult",
    "Prediction",
    "answer_text",
    "evaluate",
    "generate_predictions",
    "generation_workers",
    "length_sorted_batches",
    "score",
]
