"""Evaluation throughput: `florence-patch eval` against the published evaluation recipe, same ANLS.

A model that answers is needed (random weights never emit end-of-sequence, so every answer would
run to the token limit): the shape's checkpoint is first fitted to the synthetic pages for
``--fit-steps`` steps with ``florence-patch train`` (setup, not measured). Then two arms on that
model and the same questions, interleaved, each in a fresh interpreter:

* ``baseline`` -- the recipe's loop, written here: batches of 4 questions in dataset order, the
  processor called in the loop, ``generate(num_beams=3, max_new_tokens=1024)`` in fp32,
  ``batch_decode`` and ``post_process_generation`` per answer. By default it also passes the
  prompts' ``attention_mask`` (which the published code could not take, and which the
  ``prompt-padding-mask`` fix makes it honour), so both arms compute each question's own answer
  and the ratio compares speed on the same answers. ``--no-baseline-mask`` runs the loop as
  published: its answers then depend on the other questions of their batch of 4.
* ``ours`` -- ``florence_patch.training.evaluate.evaluate(EvalConfig(...))``, the function behind
  ``florence-patch eval``, with its defaults (length-sorted batches, DataLoader workers when the
  evaluation is long enough to start them, bf16 on GPUs that have it, its own batch size and
  token limit).

Answers/s counts every answer over the generation loops' wall time (pre-processing included;
model loading not) in ``--timed-passes`` passes over the questions (4: a window of seconds, not
of one), after each arm has answered the questions once untimed (``--warmup-questions``,
default all): a long evaluation sees each batch shape once and then many times, and shapes seen for
the first time are slow (a GPU builds kernels and plans for them; our batches hold 1 to 8
distinct pages, the recipe's always 4). The first pass's rate is reported too
(``first_pass_answers_per_s``). Both arms' ANLS is reported, with the share of questions whose
answers are identical, so a speed-up that changed the answers shows.

    .venv/bin/python bench/eval_bench.py --shape small
    .venv/bin/python bench/eval_bench.py --shape base --device cuda
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average  # noqa: E402
from workload import (  # noqa: E402
    add_common_arguments,
    add_our_arm_arguments,
    emit,
    REMOTE_CODE_NOTE,
    CpuClock,
    SHAPES,
    PeakMemory,
    Workload,
    device_name,
    now,
    prepare,
    print_arm_result,
    resolve_device,
    run_arm,
    synchronize,
    thread_env,
)

TITLE = "evaluation throughput"
TASK_PROMPT = "<DocVQA>"
RECIPE = {"batch_size": 4, "num_beams": 3, "max_new_tokens": 1024, "precision": "fp32"}
GOAL_RATIO = 2.0
# Fitting (setup, not measured): the demo's recipe -- a few hundred steps at a high learning rate
# on exactly the pages then asked about -- so the model really answers them (the demo reaches a
# training-page ANLS of about 0.9). ANLS is then a check that both arms give the same answers,
# not a claim that the model reads.
FIT_DEFAULTS = {"small": {"steps": 300, "lr": 2e-3}, "base": {"steps": 300, "lr": 2e-4}}


def fit_settings(args, shape: str) -> tuple[int, float]:
    defaults = FIT_DEFAULTS[shape]
    steps = args.fit_steps if args.fit_steps is not None else defaults["steps"]
    lr = args.fit_lr if args.fit_lr is not None else defaults["lr"]
    return steps, lr


# ---------------------------------------------------------------------------------------------
# The arms.


_PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _prediction_rows(question_ids, predictions, answers) -> list[dict[str, Any]]:
    return [
        {"question_id": qid, "prediction": prediction, "answers": list(golds)}
        for qid, prediction, golds in zip(question_ids, predictions, answers)
    ]


def _warmup_count(args, questions: int) -> int:
    return questions if args.warmup_questions is None else min(args.warmup_questions, questions)


def baseline_arm(args) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor

    from florence_patch.metrics import anls_score

    device = resolve_device(args.device)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32).to(device)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    rows = datasets.load_from_disk(args.data)[args.split].select(range(args.questions))
    model.eval()
    memory = PeakMemory(device)
    cpu = CpuClock()
    batch_size = RECIPE["batch_size"]

    def answer(rows):
        predictions, generated_tokens = [], 0
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            images = [image if image.mode == "RGB" else image.convert("RGB") for image in batch["image"]]
            prompts = [TASK_PROMPT + question for question in batch["question"]]
            inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True).to(device)
            mask = {"attention_mask": inputs["attention_mask"]} if args.baseline_mask else {}
            with torch.no_grad():
                generated = model.generate(
                    input_ids=inputs["input_ids"],
                    pixel_values=inputs["pixel_values"],
                    **mask,
                    max_new_tokens=RECIPE["max_new_tokens"],
                    num_beams=RECIPE["num_beams"],
                )
            generated_tokens += generated.shape[1] * generated.shape[0]
            for text, image in zip(processor.batch_decode(generated, skip_special_tokens=False), images):
                parsed = processor.post_process_generation(text, task=TASK_PROMPT, image_size=(image.width, image.height))
                predictions.append(parsed[TASK_PROMPT].replace("<pad>", "").strip())
        return predictions, generated_tokens

    warmup_started = now()
    answer(rows.select(range(_warmup_count(args, len(rows)))))  # untimed, as in our arm
    synchronize(device)
    first_pass_seconds = now() - warmup_started
    memory.reset()
    cpu.start()
    started = now()
    for _ in range(args.timed_passes):  # the same answers each pass (beam search is deterministic)
        predictions, generated_tokens = answer(rows)
    synchronize(device)
    seconds = now() - started
    cpu_seconds = cpu.elapsed()
    golds = rows["answers"]
    answered = len(predictions) * args.timed_passes
    return {
        "answers_per_s": answered / seconds,
        "first_pass_answers_per_s": _warmup_count(args, len(rows)) / first_pass_seconds,
        "seconds": seconds,
        "cpu_s_per_answer": cpu_seconds / answered,
        "anls": statistics.fmean(anls_score(p, g) for p, g in zip(predictions, golds)),
        "peak_memory_mib": round(memory.peak_mib(), 1),
        "batch_sequence_tokens": round(generated_tokens / len(predictions), 1),
        "settings": {**RECIPE, "num_workers": 0, "order": "dataset", "prompt_mask": args.baseline_mask},
        "predictions": _prediction_rows(rows["questionId"], predictions, golds),
        "device_name": device_name(device),
    }


def ours_arm(args) -> dict[str, Any]:
    from florence_patch.training import evaluate as evaluation
    from florence_patch.training.config import EvalConfig

    device = resolve_device(args.device)
    memory = PeakMemory(device)
    cpu = CpuClock()
    timing: dict[str, float] = {}
    generate_predictions = evaluation.generate_predictions

    def timed_generate_predictions(model, processor, dataset, **keywords):
        # evaluate() calls this module-level function: time the generation loop, not the model load.
        warmup = dataset.select(range(_warmup_count(args, len(dataset))))
        warmup_started = now()
        generate_predictions(model, processor, warmup, **{**keywords, "show_progress": False})  # untimed
        synchronize(device)
        timing["first_pass_rate"] = len(warmup) / (now() - warmup_started)
        memory.reset()
        cpu.start()
        started = now()
        for _ in range(args.timed_passes):
            predictions = generate_predictions(model, processor, dataset, **keywords)
        synchronize(device)
        timing["seconds"] = now() - started
        timing["cpu_s"] = cpu.elapsed()
        timing["peak_mib"] = memory.peak_mib()
        return predictions

    evaluation.generate_predictions = timed_generate_predictions
    config = EvalConfig(
        model=args.model, dataset=args.data, split=args.split, max_samples=args.questions,
        output_dir=args.output_dir, precision=args.precision,
        **({"num_workers": args.num_workers} if args.num_workers is not None else {}),
        **({"batch_size": args.batch_size} if args.batch_size is not None else {}),
        **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens is not None else {}),
    )
    result = evaluation.evaluate(config)
    predictions = sorted(result.predictions, key=lambda p: p.index)
    answered = len(predictions) * args.timed_passes
    return {
        "answers_per_s": answered / timing["seconds"],
        "first_pass_answers_per_s": timing["first_pass_rate"],
        "seconds": timing["seconds"],
        "cpu_s_per_answer": timing["cpu_s"] / answered,
        "anls": result.anls,
        "peak_memory_mib": round(timing["peak_mib"], 1),
        "batch_sequence_tokens": None,
        "settings": {
            "batch_size": config.batch_size,
            "num_beams": config.num_beams,
            "max_new_tokens": config.max_new_tokens,
            "precision": _PRECISION_NAMES.get(result.settings["dtype"], result.settings["dtype"]),
            "num_workers": result.settings["num_workers"],
            "order": "length-sorted",
            "prompt_mask": True,
        },
        "predictions": _prediction_rows(
            [p.question_id for p in predictions], [p.prediction for p in predictions], [p.answers for p in predictions]
        ),
        "device_name": device_name(device),
    }


# ---------------------------------------------------------------------------------------------
# The orchestration.


def fit(workload: Workload, env: dict[str, str], args, fitted: Path) -> None:
    """Fit the shape's checkpoint to the pages with `florence-patch train` (setup, not measured)."""
    steps, lr = fit_settings(args, workload.shape.name)
    command = [
        sys.executable, "-m", "florence_patch.cli.main", "train",
        "--model", workload.shape.repo_id, "--dataset", str(workload.data_dir), "--output-dir", str(fitted),
        "--max-steps", str(steps), "--lr", str(lr), "--warmup-ratio", "0.05", "--eval-steps", "0",
        "--save-steps", str(steps), "--save-total-limit", "1", "--max-eval-samples", "1",
        "--num-beams", "1", "--max-new-tokens", "4", "--seed", str(args.seed),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fitting failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")


def _arm_args(args, workload: Workload, model: Path, arm: str, run: int) -> list[str]:
    result = [
        "--arm", arm, "--model", str(model), "--data", str(workload.data_dir), "--split", args.split,
        "--questions", str(args.questions), "--output-dir", str(workload.workdir / f"eval-{run}-{arm}"),
        "--device", args.device, "--precision", args.precision, "--timed-passes", str(args.timed_passes),
    ]
    if args.warmup_questions is not None:
        result += ["--warmup-questions", str(args.warmup_questions)]
    if not args.baseline_mask:
        result.append("--no-baseline-mask")
    for name in ("num_workers", "batch_size", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None:
            result += ["--" + name.replace("_", "-"), str(value)]
    return result


def _agreement(a: list[dict], b: list[dict]) -> float:
    by_id = {row["question_id"]: row["prediction"] for row in a}
    same = sum(by_id.get(row["question_id"]) == row["prediction"] for row in b)
    return same / max(len(b), 1)


def _record(workload: Workload, device: str, arm: str, pair: int, result: dict, **extra) -> dict:
    record = {
        "what": "eval",
        "arm": arm,
        "shape": workload.shape.name,
        "device": result["device_name"],
        "pair": pair,
        "questions": len(result["predictions"]),
        "answers_per_s": round(result["answers_per_s"], 3),
        "first_pass_answers_per_s": round(result["first_pass_answers_per_s"], 3),
        "cpu_s_per_answer": round(result["cpu_s_per_answer"], 3),
        "anls": round(result["anls"], 4) if result["anls"] is not None else None,
        "peak_memory_mib": result["peak_memory_mib"],
        "memory": "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS of the generating process",
        **result["settings"],
    }
    if result.get("batch_sequence_tokens") is not None:
        record["batch_sequence_tokens"] = result["batch_sequence_tokens"]
    record.update(extra)
    record["load_avg"] = load_average()
    return record


def orchestrate(args) -> None:
    device = resolve_device(args.device)
    shape = SHAPES[args.shape]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"fp-eval-bench-{shape.name}-"))
    steps, lr = fit_settings(args, shape.name)
    fitted = workdir / f"fitted-{steps}-{lr:g}"
    try:
        train_rows = args.questions  # fitted on the pages it is then asked about (--split train)
        eval_rows = args.questions if args.split != "train" else 4
        workload = prepare(shape, workdir, train_rows=train_rows, eval_rows=eval_rows, seed=args.seed)
        env = workload.env(**({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}), **thread_env(args.threads))
        if not (fitted / "config.json").is_file():
            fit(workload, env, args, fitted)
        ratios, anls_pairs = [], []
        run = 0
        for pair in range(1, args.pairs + 1):
            run += 1
            base = run_arm("eval_bench.py", _arm_args(args, workload, fitted, "baseline", run), env)
            run += 1
            ours = run_arm("eval_bench.py", _arm_args(args, workload, fitted, "ours", run), env)
            ratio = ours["answers_per_s"] / base["answers_per_s"]
            ratios.append(ratio)
            anls_pairs.append((base["anls"], ours["anls"]))
            emit(_record(workload, device, "baseline (recipe loop)", pair, base), title=TITLE, save=args.record)
            emit(
                _record(workload, device, "florence-patch eval", pair, ours, ratio=round(ratio, 3),
                        same_answers=round(_agreement(base["predictions"], ours["predictions"]), 3)),
                title=TITLE,
                save=args.record,
            )
        emit(
            {
                "what": "eval-summary",
                "shape": shape.name,
                "device": device,
                "split": args.split,
                "pairs": args.pairs,
                "ratios": [round(r, 3) for r in ratios],
                "ratio_median": round(statistics.median(ratios), 3),
                "anls_baseline": round(anls_pairs[-1][0], 4),
                "anls_ours": round(anls_pairs[-1][1], 4),
                "goal": GOAL_RATIO,
                "meets_goal": min(ratios) >= GOAL_RATIO and abs(anls_pairs[-1][0] - anls_pairs[-1][1]) <= 0.01,
                "model": shape.description + f"; fitted {steps} steps at lr {lr:g} on the {train_rows} training questions",
                "note": REMOTE_CODE_NOTE,
            },
            title=TITLE,
            save=args.record,
        )
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_shape="small")
    add_our_arm_arguments(parser)
    parser.add_argument("--pairs", type=int, default=2, help="baseline/ours pairs, interleaved")
    parser.add_argument("--questions", type=int, default=32, help="questions each arm answers")
    parser.add_argument("--warmup-questions", type=int, default=None,
                        help="questions each arm answers first, untimed (default: all of them, so every batch "
                             "shape was seen once, as in a long evaluation)")
    parser.add_argument("--timed-passes", type=int, default=4,
                        help="timed passes over the questions (a longer window: 32 questions take ~1 s on 2 cores)")
    parser.add_argument("--baseline-mask", action=argparse.BooleanOptionalAction, default=True,
                        help="the baseline passes the prompts' attention_mask to generate (--no-baseline-mask: as published)")
    parser.add_argument("--split", default="train", help="split the questions come from (train: the fitted pages)")
    parser.add_argument("--fit-steps", type=int, default=None, help="fitting steps (default: per shape)")
    parser.add_argument("--fit-lr", type=float, default=None, help="fitting learning rate (default: per shape)")
    parser.add_argument("--batch-size", type=int, default=None, help="our arm's --batch-size (default: its own)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="our arm's --max-new-tokens (default: its own)")
    parser.add_argument("--workdir", help="work directory, kept and reused (its fitted model too)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    parser.add_argument("--arm", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timed_passes < 1 or args.questions < 1 or args.pairs < 1:
        parser.error("--timed-passes, --questions and --pairs must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.arm == "baseline":
        print_arm_result(baseline_arm(args))
    elif args.arm == "ours":
        print_arm_result(ours_arm(args))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
