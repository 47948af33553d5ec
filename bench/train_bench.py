"""Training throughput and peak memory: `florence-patch train` against the published recipe's loop.

Arms on the same model shape, the same synthetic pages, the same machine, run interleaved
(baseline, ours, grouped, baseline, ours, grouped, ...), each in a fresh interpreter:

* ``baseline`` -- the fine-tuning loop of the widely copied Florence-2 DocVQA recipe, written
  here: fp32, AdamW (lr 1e-6, linear schedule, no warm-up), batch 8, the processor called in
  ``collate_fn`` on the training process (``num_workers=0``), labels = the padded answer ids
  (padding is *not* masked to -100, so it stays inside the loss).
* ``ours`` -- ``florence_patch.training.train.train(TrainConfig(...))``, the function behind
  ``florence-patch train``, with its defaults (DataLoader workers, precision ``auto``: bf16 on
  GPUs that have it, fp32 on CPU) and the same optimiser settings.
* ``grouped`` -- the same with ``--group-by-page`` (``--grouped``, on by default): batches made of
  a page's questions, each page prepared and encoded once a batch. Same rows, another order.

Throughput is steady state: samples/s between the end of step ``--warmup`` and the end of step
``--warmup + --steps`` (a Trainer callback times the Trainer), so start-up, model loading and the
first steps are left out. Peak memory is over the same window (see bench/workload.py for how).
Each round gives the ratios ours / baseline and grouped / baseline ("pair" in the JSON lines).
With ``--lockstep`` (CPU) a round's arms run side by side instead, taking their steps in turns
(bench/lockstep.py), each timing only its own turns: the machine's drift then reaches every arm alike.
Then ``ours`` runs once more with ``--gradient-checkpointing`` for the memory comparison.

    .venv/bin/python bench/train_bench.py --shape small            # CPU
    .venv/bin/python bench/train_bench.py --shape base --device cuda
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average  # noqa: E402
from lockstep import LockstepError, Turns, run_in_lockstep  # noqa: E402
from workload import (  # noqa: E402
    BENCH_DIR,
    REPO_ROOT,
    arm_result,
    add_common_arguments,
    add_our_arm_arguments,
    emit,
    REMOTE_CODE_NOTE,
    RSS_FOLLOWS_TENSORS_ENV,
    CpuClock,
    SHAPES,
    PeakMemory,
    PhaseClock,
    Workload,
    count_train_flops,
    device_name,
    peak_tflops,
    prepare,
    print_arm_result,
    resolve_device,
    run_arm,
    synchronize,
    thread_env,
)

TITLE = "training throughput"
BASELINE_LR = 1e-6
TASK_PROMPT = "<DocVQA>"
GOAL_RATIO = {"cpu": 1.0, "cuda": 3.0}
GOAL_CHECKPOINTING_SAVING = 0.30


# ---------------------------------------------------------------------------------------------
# The baseline arm: the recipe's loop.


def baseline_arm(args) -> dict[str, Any]:
    import datasets
    import torch
    from torch.utils.data import DataLoader, Dataset
    from transformers import AutoModelForCausalLM, AutoProcessor, get_scheduler

    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32).to(device)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    rows = datasets.load_from_disk(args.data)["train"]

    class DocVQAPages(Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, index):
            row = rows[index]
            image = row["image"]
            if image.mode != "RGB":
                image = image.convert("RGB")
            return TASK_PROMPT + row["question"], row["answers"][0], image

    def collate(batch):
        questions, answers, images = zip(*batch)
        inputs = processor(text=list(questions), images=list(images), return_tensors="pt", padding=True).to(device)
        return inputs, answers

    total_steps = args.warmup + args.steps
    loader = DataLoader(
        DocVQAPages(), batch_size=args.batch_size, shuffle=True, num_workers=0, collate_fn=collate,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=BASELINE_LR)
    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=total_steps)
    clock = PhaseClock(device, synchronize_phases=args.profile)
    clock.attach(model, optimizer)
    memory = PeakMemory(device)
    cpu = CpuClock()
    flops_per_sample = None
    turns = Turns(args.lockstep_fds)
    model.train()
    step = 0
    started = finished = 0.0
    turns.wait()
    while step < total_steps:
        for inputs, answers in loader:
            labels = processor.tokenizer(
                text=list(answers), return_tensors="pt", padding=True, return_token_type_ids=False
            ).input_ids.to(device)

            def run_step():
                outputs = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=labels)
                outputs.loss.backward()

            if step == 0 and args.count_flops:
                flops_per_sample = count_train_flops(model, run_step) / len(answers)
            else:
                run_step()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            clock.step_end()
            if step == args.warmup:
                synchronize(device)
                memory.reset(model, optimizer)
                clock.start()
                cpu.start()
                started = turns.elapsed()
            if step == total_steps:
                synchronize(device)
                finished = turns.elapsed()
                cpu_seconds = cpu.elapsed()
            turns.done()
            turns.wait()  # after the last step: the turn in which this arm finishes on its own
            clock.resume()
            if step == total_steps:
                break
    clock.stop()
    return {
        "samples_per_s": args.steps * args.batch_size / (finished - started),
        "cpu_s_per_sample": cpu_seconds / (args.steps * args.batch_size),
        "peak_memory_mib": round(memory.peak_mib(), 1),
        "step_memory_mib": round(memory.above_reset_mib(), 1),
        "peak_tensors_mib": round(memory.peak_tensors_mib(), 1),
        "workers_rss_mib": None,
        "ms_per_step": clock.ms_per_step(),
        "precision": "fp32",
        "num_workers": 0,
        "flops_per_sample": flops_per_sample,
        "device_name": device_name(device),
    }


# ---------------------------------------------------------------------------------------------
# Our arm: florence_patch.training.train.train.


def ours_arm(args) -> dict[str, Any]:
    import transformers.trainer as trainer_module
    from transformers import TrainerCallback

    from florence_patch.training import model as florence_model
    from florence_patch.training.config import TrainConfig, resolve_num_workers, resolve_precision
    from florence_patch.training.train import train

    device = resolve_device(args.device)
    total_steps = args.warmup + args.steps
    clock = PhaseClock(device, synchronize_phases=args.profile)
    memory = PeakMemory(device)
    cpu = CpuClock()
    turns = Turns(args.lockstep_fds)
    window: dict[str, float] = {}

    class StepTimer(TrainerCallback):
        """Times steps warmup+1 .. warmup+steps; skips the end-of-run checkpoint (not measured)."""

        def on_train_begin(self, args_, state, control, model=None, optimizer=None, **kwargs):
            from florence_patch.training.prefetch import a_core_is_spare

            if turns.enabled and (args_.dataloader_num_workers or a_core_is_spare(device)):
                # Workers or the prefetch thread would prepare batches while other arms hold the turn.
                raise SystemExit("--lockstep: this arm would prepare batches between its turns "
                                 "(DataLoader workers, or a core spare for the prefetch thread)")
            clock.attach(model, optimizer)
            turns.wait()

        def on_step_end(self, args_, state, control, model=None, optimizer=None, **kwargs):
            clock.step_end()
            if state.global_step == args.warmup:
                synchronize(device)
                memory.reset(model, optimizer)
                clock.start()
                cpu.start()
                window["start"] = turns.elapsed()
            elif state.global_step == total_steps:
                synchronize(device)
                window["end"] = turns.elapsed()
                window["cpu_s"] = cpu.elapsed()
                window["peak_mib"] = memory.peak_mib()
                window["step_mib"] = memory.above_reset_mib()
                window["tensors_mib"] = memory.peak_tensors_mib()
                workers = memory.workers_rss_mib()
                if workers is not None:
                    window["workers_rss_mib"] = workers
                clock.stop()
                control.should_save = False  # the final checkpoint is not part of the measurement
            turns.done()
            turns.wait()  # after the last step: the turn in which this arm finishes on its own
            clock.resume()
            return control

    # train() builds its own Trainer; DEFAULT_CALLBACKS is where every Trainer takes its first callbacks from.
    trainer_module.DEFAULT_CALLBACKS = [*trainer_module.DEFAULT_CALLBACKS, StepTimer()]
    # What the startup timing chose for the window attention (it can differ from process to process).
    switches = []
    switch_window_attention = florence_model.run_window_attention_through_sdpa

    def recording_switch(model, run=None):
        switches.append(switch_window_attention(model, run))
        return switches[-1]

    florence_model.run_window_attention_through_sdpa = recording_switch
    overrides: dict[str, Any] = {}
    if args.num_workers is not None:
        overrides["num_workers"] = args.num_workers
    config = TrainConfig(
        model=args.model,
        dataset=args.data,
        output_dir=args.output_dir,
        max_steps=total_steps,
        batch_size=args.batch_size,
        lr=BASELINE_LR,
        warmup_ratio=0.0,
        eval_steps=0,
        save_steps=10**9,
        max_eval_samples=1,  # the run's closing evaluation is not measured: keep it short
        num_beams=1,
        max_new_tokens=4,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        group_by_page=args.group_by_page,
        seed=args.seed,
        **overrides,
    )
    result = train(config)
    return {
        "samples_per_s": args.steps * args.batch_size / (window["end"] - window["start"]),
        "cpu_s_per_sample": window["cpu_s"] / (args.steps * args.batch_size),
        "peak_memory_mib": round(window["peak_mib"], 1),
        "step_memory_mib": round(window["step_mib"], 1),
        "peak_tensors_mib": round(window["tensors_mib"], 1),
        "workers_rss_mib": round(window["workers_rss_mib"], 1) if "workers_rss_mib" in window else None,
        "ms_per_step": clock.ms_per_step(),
        "precision": resolve_precision(config.precision),
        "num_workers": resolve_num_workers(config.num_workers),
        "flops_per_sample": None,
        "device_name": device_name(device),
        "questions_per_encoded_page": result.train_metrics.get("train_questions_per_encoded_page"),
        "window_attention_sdpa": window_attention_choice(switches),
    }


def window_attention_choice(switches) -> str | None:
    """'SDPA in k of n modules' (with each configuration's own/SDPA ms when timed), or None
    when the run kept the model's code (--no-vision-sdpa)."""
    if not switches:
        return None
    switch = switches[-1]
    total = sum(timing.modules for timing in switch.timings) or switch.switched
    timed = "; ".join(f"{t.own_ms:.1f}/{t.sdpa_ms:.1f} ms" for t in switch.timings)
    return f"SDPA in {switch.switched} of {total} modules" + (f" (own/SDPA: {timed})" if timed else "")


# ---------------------------------------------------------------------------------------------
# The orchestration.


def _arm_args(args, workload: Workload, arm: str, run: int, **extra) -> list[str]:
    result = [
        "--arm", arm, "--model", workload.shape.repo_id, "--data", str(workload.data_dir),
        "--output-dir", str(workload.workdir / f"run-{run}-{arm}"),
        "--device", args.device, "--warmup", str(args.warmup), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--precision", args.precision,
    ]
    if args.profile:
        result.append("--profile")
    if args.num_workers is not None:
        result += ["--num-workers", str(args.num_workers)]
    for flag, value in extra.items():
        if value is True:
            result.append("--" + flag.replace("_", "-"))
    return result


def _mfu(result: dict[str, Any], flops_per_sample: float | None) -> float | None:
    if flops_per_sample is None or not result["device_name"]:
        return None
    peak = peak_tflops(result["device_name"], result["precision"])
    if peak is None:
        return None
    return round(flops_per_sample * result["samples_per_s"] / (peak * 1e12), 4)


def _record(args, workload: Workload, device: str, arm: str, pair: int | None, result: dict, **extra) -> dict:
    record = {
        "what": "train",
        "arm": arm,
        "shape": workload.shape.name,
        "device": result["device_name"],
        "pair": pair,
        "batch_size": args.batch_size,
        "precision": result["precision"],
        "num_workers": result["num_workers"],
        "steps_timed": args.steps,
        "samples_per_s": round(result["samples_per_s"], 3),
        "cpu_s_per_sample": round(result["cpu_s_per_sample"], 3),
        "peak_memory_mib": result["peak_memory_mib"],
        "step_memory_mib": result["step_memory_mib"],
        "peak_tensors_mib": result["peak_tensors_mib"],
        "memory": "torch.cuda.max_memory_allocated" if device == "cuda" else
        "peak_memory_mib: peak RSS of the training process; peak_tensors_mib: weights, gradients and "
        "optimizer state held between steps + the step's peak RSS growth",
    }
    if result.get("workers_rss_mib") is not None:
        record["workers_rss_mib"] = result["workers_rss_mib"]
    if result.get("ms_per_step"):
        record["ms_per_step"] = result["ms_per_step"]
    if result.get("window_attention_sdpa"):
        record["window_attention_sdpa"] = result["window_attention_sdpa"]
    record.update(extra)
    record["load_avg"] = load_average()
    return record


def orchestrate(args) -> None:
    device = resolve_device(args.device)
    shape = SHAPES[args.shape]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"fp-train-bench-{shape.name}-"))
    try:
        rows = (args.warmup + args.steps + 1) * args.batch_size  # one epoch covers every arm's steps
        workload = prepare(shape, workdir, train_rows=rows, eval_rows=4, seed=args.seed)
        # The Trainer takes the GPU whenever there is one: hide it from a --device cpu run.
        env = workload.env(**({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}), **thread_env(args.threads))
        flops_per_sample = None
        ratios, grouped_ratios = [], []
        run = 0
        mode = {"lockstep": True} if args.lockstep else {}
        for pair in range(1, args.pairs + 1):
            arms = [("baseline", {"count_flops": pair == 1}), ("ours", {})]
            if args.grouped:
                arms.append(("ours", {"group_by_page": True}))
            arm_args = [_arm_args(args, workload, arm, run + i + 1, **extra) for i, (arm, extra) in enumerate(arms)]
            run += len(arms)
            if args.lockstep:
                results = run_arms_in_lockstep(args, arm_args, env)
            else:
                results = [run_arm("train_bench.py", one, env) for one in arm_args]
            base, ours = results[0], results[1]
            flops_per_sample = flops_per_sample or base["flops_per_sample"]
            ratio = ours["samples_per_s"] / base["samples_per_s"]
            ratios.append(ratio)
            gpu = device == "cuda"
            base_extra = {"mfu": _mfu(base, flops_per_sample)} if gpu else {}
            ours_extra = {"mfu": _mfu(ours, flops_per_sample)} if gpu else {}
            emit(_record(args, workload, device, "baseline (recipe loop)", pair, base, **base_extra, **mode),
                 title=TITLE, save=args.record)
            emit(_record(args, workload, device, "florence-patch train", pair, ours, ratio=round(ratio, 3),
                         **ours_extra, **mode), title=TITLE, save=args.record)
            if args.grouped:
                grouped = results[2]
                grouped_ratio = grouped["samples_per_s"] / base["samples_per_s"]
                grouped_ratios.append(grouped_ratio)
                # Model FLOPs utilisation counts the work of encoding every question's page, as the
                # baseline does: the work a grouped batch leaves out counts as done.
                grouped_extra = {"mfu": _mfu(grouped, flops_per_sample)} if gpu else {}
                emit(_record(args, workload, device, "florence-patch train --group-by-page", pair, grouped,
                             ratio=round(grouped_ratio, 3), questions_per_encoded_page=grouped["questions_per_encoded_page"],
                             **grouped_extra, **mode), title=TITLE, save=args.record)
        summary = {
            "what": "train-summary",
            "shape": shape.name,
            "device": device,
            "pairs": args.pairs,
            **mode,
            "ratios": [round(r, 3) for r in ratios],
            "ratio_median": round(statistics.median(ratios), 3),
            "goal": GOAL_RATIO[device],
            "meets_goal": min(ratios) >= GOAL_RATIO[device],
            "grouped_ratios": [round(r, 3) for r in grouped_ratios] or None,
            "grouped_ratio_median": round(statistics.median(grouped_ratios), 3) if grouped_ratios else None,
            "grouped_meets_goal": min(grouped_ratios) >= GOAL_RATIO[device] if grouped_ratios else None,
            "train_gflops_per_sample": round(flops_per_sample / 1e9, 2) if flops_per_sample else None,
            "model": shape.description,
            "note": REMOTE_CODE_NOTE,
        }
        emit(summary, title=TITLE, save=args.record)
        if args.checkpointing:
            measure_checkpointing(args, workload, device, env, first_run=run + 1, ours_without=ours)
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def run_arms_in_lockstep(args, arm_args: list[list[str]], env: dict[str, str]) -> list[dict[str, Any]]:
    """One pair's arms side by side, a step each in turn (bench/lockstep.py); their results in order."""
    commands = [[sys.executable, str(BENCH_DIR / "train_bench.py"), *one] for one in arm_args]
    try:
        outputs = run_in_lockstep(commands, env, turns=args.warmup + args.steps, cwd=REPO_ROOT)
    except LockstepError as error:
        raise SystemExit(f"lockstep: {error}") from None
    return [arm_result(output) for output in outputs]


def measure_checkpointing(
    args, workload: Workload, device: str, env: dict[str, str], first_run: int, ours_without: dict
) -> None:
    """Our arm without and with --gradient-checkpointing, for peak memory at the same batch size.

    On CUDA the last pair's run is the one without (torch counts tensors only). On CPU both run
    anew with glibc returning freed blocks at once (RSS_FOLLOWS_TENSORS_ENV), so the peak resident
    set follows the tensors alive in a step rather than the allocator's high-water mark.
    """
    if device == "cpu":
        memory_env = {**env, **RSS_FOLLOWS_TENSORS_ENV}
        without = run_arm("train_bench.py", _arm_args(args, workload, "ours", first_run), memory_env)
    else:
        memory_env, without = env, ours_without
    with_it = run_arm(
        "train_bench.py", _arm_args(args, workload, "ours", first_run + 1, gradient_checkpointing=True), memory_env
    )
    allocator = {"allocator": "MALLOC_MMAP_THRESHOLD_=65536"} if device == "cpu" else {}
    tensors_saving = 1 - with_it["peak_tensors_mib"] / without["peak_tensors_mib"]
    emit(
        _record(args, workload, device, "florence-patch train (memory run)", None, without, **allocator),
        title=TITLE,
        save=args.record,
    )
    emit(
        _record(
            args, workload, device, "florence-patch train --gradient-checkpointing (memory run)", None, with_it,
            **allocator,
            peak_rss_saving=round(1 - with_it["peak_memory_mib"] / without["peak_memory_mib"], 3),
            step_memory_saving=round(1 - with_it["step_memory_mib"] / without["step_memory_mib"], 3),
            peak_tensors_saving=round(tensors_saving, 3),
            speed_ratio=round(with_it["samples_per_s"] / without["samples_per_s"], 3),
            goal_saving=GOAL_CHECKPOINTING_SAVING,
            goal_measure="peak_tensors_saving",
            meets_goal=tensors_saving >= GOAL_CHECKPOINTING_SAVING,
        ),
        title=TITLE,
        save=args.record,
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_shape="small")
    add_our_arm_arguments(parser)
    parser.add_argument("--pairs", type=int, default=3, help="baseline/ours pairs, interleaved")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each arm")
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each arm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grouped", action=argparse.BooleanOptionalAction, default=True,
                        help="also time train --group-by-page in each pair")
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure --gradient-checkpointing's peak memory")
    parser.add_argument("--profile", action="store_true", help="synchronise phase boundaries on CUDA (slower)")
    parser.add_argument("--workdir", help="work directory, kept and reused (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--lockstep", action="store_true",
                        help="CPU: run each pair's arms side by side, passing the turn round after every step "
                             "(bench/lockstep.py), so the machine's drift reaches every arm alike")
    # one arm, in its own interpreter (run by the orchestration above)
    parser.add_argument("--arm", choices=("baseline", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--group-by-page", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lockstep-fds", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.pairs < 1:
        parser.error("--warmup, --steps and --pairs must be >= 1 (the first step is never timed)")
    if args.lockstep and (args.device == "cuda" or args.num_workers):
        # Workers (and a GPU's asynchronous queue) keep working while another arm holds the turn.
        parser.error("--lockstep is for CPU arms without DataLoader workers")
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
