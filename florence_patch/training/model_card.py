"""README.md of a fine-tuned model: what it was trained from, on what, how, and how well it scores."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states; each value comes from the run itself."""

    base_model: str
    base_revision: str | None
    dataset: str
    train_split: str
    eval_split: str
    fixes: tuple[str, ...]  # florence-patch fixes in the remote code the model was trained with
    hyperparameters: Mapping[str, Any]
    parameters_total: int
    parameters_trainable: int
    train_metrics: Mapping[str, Any]
    eval_metrics: Mapping[str, Any]  # anls, exact_match, anls_by_type, count_by_type, count
    environment: Mapping[str, Any] = field(default_factory=dict)
    task_prompt: str = "<DocVQA>"
    command: str = ""
    last_train_loss: float | None = None


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_model_card(facts: CardFacts) -> str:
    hub_base = "/" in facts.base_model and not facts.base_model.startswith(("/", "."))
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text"]
    if hub_base:
        front.append(f"base_model: {facts.base_model}")
    front += ["tags:", "- florence-2", "- document-vqa", "- florence-patch", "---", ""]

    evaluation = facts.eval_metrics
    lines = front + [
        f"# {facts.base_model.rstrip('/').split('/')[-1]} fine-tuned on {facts.dataset}",
        "",
        f"Fine-tuned from `{facts.base_model}`"
        + (f" at revision `{facts.base_revision}`" if facts.base_revision else "")
        + f" on the `{facts.train_split}` split of `{facts.dataset}` with `florence-patch train`.",
        "",
        "## Results",
        "",
        f"Generated answers on the `{facts.eval_split}` split ({evaluation.get('count', 'n/a')} questions, "
        f"beam search width {facts.hyperparameters.get('num_beams', 'n/a')}):",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| ANLS | {_number(evaluation.get('anls'))} |",
        f"| exact match | {_number(evaluation.get('exact_match'))} |",
        f"| eval loss | {_number(evaluation.get('loss'))} |",
        f"| train loss (last logged) | {_number(facts.last_train_loss)} |",
        "",
    ]
    by_type = evaluation.get("anls_by_type") or {}
    counts = evaluation.get("count_by_type") or {}
    if by_type:
        lines += ["ANLS per question type:", "", "| question type | questions | ANLS |", "| --- | --- | --- |"]
        lines += [f"| {name} | {counts.get(name, 'n/a')} | {_number(value)} |" for name, value in by_type.items()]
        lines.append("")

    lines += [
        "## Usage",
        "",
        "```python",
        "from PIL import Image",
        "from transformers import AutoModelForCausalLM, AutoProcessor",
        "",
        'model = AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_DIRECTORY", trust_remote_code=True)',
        'processor = AutoProcessor.from_pretrained("PATH_TO_THIS_DIRECTORY", trust_remote_code=True)',
        'page = Image.open("page.png").convert("RGB")',
        f'inputs = processor(text=["{facts.task_prompt}What is the total?"], images=[page], return_tensors="pt")',
        'ids = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], '
        f'max_new_tokens={facts.hyperparameters.get("max_new_tokens", 64)}, num_beams={facts.hyperparameters.get("num_beams", 3)})',
        "text = processor.batch_decode(ids, skip_special_tokens=False)[0]",
        f'print(processor.post_process_generation(text, task="{facts.task_prompt}", image_size=page.size))',
        "```",
        "",
    ]
    if "prompt-padding-mask" in facts.fixes:
        lines += [
            "Several questions at once: `processor(..., padding=True)` and `model.generate(**inputs, ...)`; the "
            "code in this directory masks the padding of the shorter prompts (as it did in training), so each "
            "answer is the one its question gets alone.",
            "",
        ]
    lines += [
        "Or score it: `florence-patch eval --model PATH_TO_THIS_DIRECTORY --dataset DATASET`.",
        "",
        "The remote code in this directory (`*_florence2.py`) is the fixed code the model was trained with"
        + (f" (florence-patch fixes: {', '.join(facts.fixes)})" if facts.fixes else "")
        + "; it loads offline with `trust_remote_code=True`.",
        "",
        "## Training setup",
        "",
        f"Parameters: {facts.parameters_total:,} in all, {facts.parameters_trainable:,} trained "
        f"({100 * facts.parameters_trainable / max(facts.parameters_total, 1):.1f}%).",
        "",
        "| setting | value |",
        "| --- | --- |",
    ]
    lines += [f"| {key} | `{json.dumps(value) if not isinstance(value, str) else value}` |"
              for key, value in facts.hyperparameters.items()]
    if facts.environment:
        lines += ["", "| environment | value |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in facts.environment.items()]
    if facts.command:
        lines += ["", "Reproduce with:", "", "```bash", facts.command, "```"]
    lines += ["", "Training curves: `training_curves.png`; all numbers: `metrics.json`.", ""]
    return "\n".join(lines)


__all__ = ["CardFacts", "render_model_card"]
