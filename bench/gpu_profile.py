"""Where a training step's and an evaluation pass's time goes, on the device the benchmarks use.

Not a benchmark of the product against the recipe (train_bench.py and eval_bench.py are): this
takes the pieces apart, in one interpreter, on the shape's checkpoint (fixed with florence-patch
as a user would), and prints one JSON line per measurement:

* ``train-step`` -- one optimiser step on a batch already on the device (no data loading), per
  precision: fp32 (as the recipe runs), bf16 autocast (as ``train`` runs on GPUs), and bf16
  autocast under ``torch.compile`` (``--compile``); each first with the DaViT window attention as
  the model writes it, then as ``train`` runs it (`` + vision SDPA``, ``--vision-sdpa``: each
  configuration through SDPA where it was faster timed here, the ``vision-sdpa`` line says which);
  the compiled step and the evaluation lines are as train runs it. Wall ms per step, the process's CPU ms per
  step, and on CUDA the kernels' own time per step and the kernel launches per step (one
  profiled step, torch.profiler): when the kernels' time is far below the wall time and the CPU
  time matches the wall time, the step is bound by launching kernels from Python, not by the GPU.
  ``aten_ops_per_step`` (uncompiled steps): the aten operators one step dispatches below autograd.
* ``saved-for-backward`` -- what one training forward keeps for the backward, with the model's own
  window attention and as ``train`` runs it.
* ``eval-loader`` -- the evaluation DataLoader alone (decode, resize, tokenise), with and without
  worker processes: seconds to the first batch and to the last.
* ``eval-model-only`` -- the model's share: generation on batches prepared beforehand.
* ``eval-page-count`` -- the same questions on 1 to 8 distinct pages, each count twice: what a
  shape costs the first time it is seen.
* ``train-trainer`` -- ``florence-patch train`` itself (as it is, without DataLoader workers, and
  with the two host-device synchronisations a step that the Trainer makes by default and
  ``train`` turns off): wall and CPU ms a step, the main thread's busiest operators and its
  synchronisations, and the aten operators of its last warm-up step (``aten_ops_per_step``, to
  set against the bare step's: what the Trainer adds to the step itself).
* ``eval-generate`` -- ``generate_predictions`` (what ``eval`` times) with and without workers,
  twice each (a first pass pays worker start-up and lazy imports).

    .venv/bin/python bench/gpu_profile.py --shape base --device cuda
    .venv/bin/python bench/gpu_profile.py --shape small --device cpu --steps 2 --no-compile   # dry run
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workload import (  # noqa: E402
    SHAPES,
    add_common_arguments,
    device_name,
    emit,
    now,
    prepare,
    resolve_device,
    run_measuring_interpreter,
    synchronize,
)

TITLE = "where the time goes (gpu_profile.py)"
TASK_PROMPT = "<DocVQA>"


def _kernel_profile(device: str, run_step) -> dict[str, Any]:
    """Kernel time and kernel launches of one step, from torch.profiler (CUDA only)."""
    if device != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_step()
        synchronize(device)
    from torch.autograd import DeviceType

    # Kernels only: an operator's row also carries the device time of the kernels it launched.
    kernel_us = sum(event.device_time_total for event in prof.events() if event.device_type == DeviceType.CUDA)
    launches = sum(
        event.count for event in prof.key_averages() if "LaunchKernel" in event.key or event.key == "cuLaunchKernel"
    )
    return {"kernel_ms_per_step": round(kernel_us / 1000, 1), "kernel_launches_per_step": launches}


class OperatorCount:
    """Counts the aten operators dispatched below autograd while active (views and factories included).

    Device-independent: on a GPU each non-view operator is roughly one kernel launch, so comparing
    ``train``'s step with a bare step on a CPU already tells whether the Trainer adds work to it.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        count = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                count.operators += 1
                return func(*args, **(kwargs or {}))

        self.operators = 0
        self._mode = _Mode()

    def __enter__(self) -> "OperatorCount":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def _count_operators(run_step) -> int:
    with OperatorCount() as count:
        run_step()
    return count.operators


def _time_steps(device: str, run_step, steps: int) -> dict[str, float]:
    synchronize(device)
    wall, cpu = now(), time.process_time()
    for _ in range(steps):
        run_step()
    synchronize(device)
    wall, cpu = now() - wall, time.process_time() - cpu
    return {"wall_ms_per_step": round(1000 * wall / steps, 1), "cpu_ms_per_step": round(1000 * cpu / steps, 1)}


def profile_training(
    args, device: str, model, batch: dict, record, *, compiled_only: bool = False, label: str = ""
) -> None:
    """Time training steps per variant; ``label`` names what was done to the model (its attention)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)  # as `train` (adamw_torch_fused)
    if compiled_only:
        variants = [("bf16 autocast + torch.compile", torch.bfloat16, True)]
    else:
        variants = [("fp32", None, False)] + ([("bf16 autocast", torch.bfloat16, False)] if device == "cuda" else [])
    for name, dtype, compiled in variants:
        forward = torch.compile(model) if compiled else model

        def run_step(forward=forward, dtype=dtype):
            context = torch.autocast(device_type=device, dtype=dtype) if dtype else contextlib.nullcontext()
            with context:
                loss = forward(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            first = now()
            run_step()  # the first step: warm-up, and compilation where compiled
            synchronize(device)
            first = now() - first
            run_step()
            measured = _time_steps(device, run_step, args.steps)
            kernels = _kernel_profile(device, run_step)
            if not compiled:  # a dispatch mode would trace into the compiled graph
                kernels["aten_ops_per_step"] = _count_operators(run_step)
        except Exception as error:  # a profile reports what failed and goes on to the next variant
            record({"what": "train-step", "variant": name + label, "error": f"{type(error).__name__}: {error}"[:500]})
            continue
        record({
            "what": "train-step", "variant": name + label, "batch_size": len(batch["input_ids"]),
            "first_step_s": round(first, 2), **measured, **kernels,
            "samples_per_s": round(len(batch["input_ids"]) * 1000 / measured["wall_ms_per_step"], 2),
        })
    if compiled_only or label:
        return
    record({
        "what": "train-settings",
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    })


def profile_evaluation(args, device: str, model, processor, rows, record) -> None:
    import torch
    from torch.utils.data import DataLoader

    from florence_patch.training.data import Florence2VQAEvalCollator, VQAColumns
    from florence_patch.training.evaluate import generate_predictions
    from florence_patch.training.pages import generate_sharing_pages

    model.to(torch.bfloat16 if device == "cuda" else torch.float32)  # as `eval` loads it
    questions = rows.select(range(min(args.questions, len(rows))))
    for workers in (args.workers, 0):
        loader = DataLoader(
            questions, batch_size=8, shuffle=False, num_workers=workers,
            collate_fn=Florence2VQAEvalCollator(processor, task_prompt=TASK_PROMPT),
        )
        started = now()
        first = None
        for _ in loader:
            first = first if first is not None else now() - started
        record({"what": "eval-loader", "num_workers": workers, "questions": len(questions),
                "first_batch_s": round(first, 3), "all_batches_s": round(now() - started, 3)})
    # The model's share alone: the same batches, prepared beforehand.
    batches = list(DataLoader(questions, batch_size=8, collate_fn=Florence2VQAEvalCollator(processor, task_prompt=TASK_PROMPT)))
    dtype = next(model.parameters()).dtype

    def answer(input_ids, pixel_values, page_index) -> None:
        with torch.no_grad():
            generate_sharing_pages(
                model, input_ids=input_ids.to(device), pixel_values=pixel_values.to(device=device, dtype=dtype),
                page_index=page_index, max_new_tokens=args.max_new_tokens, num_beams=3, do_sample=False,
            )

    for attempt in (1, 2):
        synchronize(device)
        started = now()
        for batch in batches:
            answer(batch["input_ids"], batch["pixel_values"], batch["page_index"])
        synchronize(device)
        seconds = now() - started
        record({"what": "eval-model-only", "pass": attempt, "questions": len(questions), "batches": len(batches),
                "seconds": round(seconds, 3), "answers_per_s": round(len(questions) / seconds, 2)})
    # First-time costs per shape: the same 8 questions on 1..8 distinct pages, each count twice.
    first_batch = batches[0]
    pages = torch.cat([batch["pixel_values"] for batch in batches])[:8]
    for count in range(1, min(8, len(pages)) + 1):
        seconds = []
        for _ in (1, 2):
            synchronize(device)
            started = now()
            answer(first_batch["input_ids"], pages[:count], [row % count for row in range(len(first_batch["input_ids"]))])
            synchronize(device)
            seconds.append(round(now() - started, 3))
        record({"what": "eval-page-count", "pages": count, "first_s": seconds[0], "second_s": seconds[1]})
    for workers in (args.workers, 0):
        for attempt in (1, 2):
            synchronize(device)
            started = now()
            predictions = generate_predictions(
                model, processor, questions, task_prompt=TASK_PROMPT, columns=VQAColumns(), batch_size=8,
                num_beams=3, max_new_tokens=args.max_new_tokens, num_workers=workers, show_progress=False,
            )
            synchronize(device)
            seconds = now() - started
            record({"what": "eval-generate", "num_workers": workers, "pass": attempt, "questions": len(predictions),
                    "seconds": round(seconds, 3), "answers_per_s": round(len(predictions) / seconds, 2)})


def profile_trainer(args, device: str, record) -> None:
    """``florence-patch train``'s own steps: wall and CPU time a step, and what the main thread does.

    Steps 1-3 are left out, steps 4-5 run under torch.profiler (the main thread's busiest
    operators and its synchronisations with the device), steps 6 onwards are timed.
    """
    import transformers.trainer as trainer_module
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    import florence_patch.training.train as train_module
    from florence_patch.training.config import TrainConfig

    def with_host_syncs(config):
        # The Trainer's own defaults, which `train` turns off: its NaN/Inf filter reads each
        # step's loss on the host, and accelerate copies batches to the device blocking; both
        # make the host wait for the device.
        arguments = to_training_arguments(config)
        arguments.logging_nan_inf_filter = True
        arguments.accelerator_config.non_blocking = False
        return arguments

    to_training_arguments = train_module.to_training_arguments
    warmup, profiled, timed = 3, 2, args.steps
    variants = [("default", None, to_training_arguments), ("no workers", 0, to_training_arguments),
                ("with the Trainer's host syncs", None, with_host_syncs)]
    for variant, workers, arguments_of in variants:
        window: dict[str, Any] = {}
        profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else []))

        operators = OperatorCount()

        class StepWindows(TrainerCallback):
            def on_step_begin(self, args_, state, control, **kwargs):
                if state.global_step == warmup - 1:  # the last warm-up step: its operators are counted
                    operators.__enter__()

            def on_step_end(self, args_, state, control, **kwargs):
                step = state.global_step
                if step == warmup:
                    operators.__exit__(None, None, None)
                    synchronize(device)
                    profiler.__enter__()
                elif step == warmup + profiled:
                    synchronize(device)
                    profiler.__exit__(None, None, None)
                    window["start"], window["cpu"] = now(), time.process_time()
                elif step == warmup + profiled + timed:
                    synchronize(device)
                    window["wall"], window["cpu"] = now() - window["start"], time.process_time() - window["cpu"]
                    control.should_save = False
                return control

        saved_callbacks = trainer_module.DEFAULT_CALLBACKS
        trainer_module.DEFAULT_CALLBACKS = [*saved_callbacks, StepWindows()]
        train_module.to_training_arguments = arguments_of
        try:
            with tempfile.TemporaryDirectory(prefix="fp-profile-train-") as output_dir:
                train_module.train(TrainConfig(
                    model=args.model, dataset=args.data, output_dir=output_dir,
                    max_steps=warmup + profiled + timed, batch_size=args.batch_size, lr=1e-6, warmup_ratio=0.0,
                    eval_steps=0, save_steps=10**9, max_eval_samples=1, num_beams=1, max_new_tokens=2,
                    seed=args.seed, **({} if workers is None else {"num_workers": workers}),
                ))
        finally:
            trainer_module.DEFAULT_CALLBACKS = saved_callbacks
            train_module.to_training_arguments = to_training_arguments
        events = profiler.key_averages()
        busiest = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:12]
        syncs = [event for event in events if "Synchronize" in event.key or "Memcpy" in event.key]
        record({
            "what": "train-trainer", "variant": variant,
            "wall_ms_per_step": round(1000 * window["wall"] / timed, 1),
            "cpu_ms_per_step": round(1000 * window["cpu"] / timed, 1),
            "samples_per_s": round(timed * args.batch_size / window["wall"], 2),
            "aten_ops_per_step": operators.operators,
            "busiest_ops_ms_per_step": {e.key[:60]: round(e.self_cpu_time_total / 1000 / profiled, 1) for e in busiest},
            "syncs_per_step": {e.key: [e.count / profiled, round(e.self_cpu_time_total / 1000 / profiled, 1)] for e in syncs},
        })


def saved_for_backward(device: str, model, batch: dict, record, *, attention: str) -> None:
    """The bytes autograd keeps for backward over one training forward (bf16 autocast on CUDA, as
    ``train`` runs there; fp32 on CPU). A tensor saved by several operators counts each time."""
    import torch

    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    context = torch.autocast(device_type=device, dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    with context, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    del loss
    record({
        "what": "saved-for-backward", "attention": attention, "batch_size": len(batch["input_ids"]),
        "precision": "bf16 autocast" if device == "cuda" else "fp32", "mib": round(total[0] / 2**20, 1),
    })


def profile_arm(args) -> None:
    import torch

    from florence_patch.training.data import Florence2VQACollator, load_vqa_split
    from florence_patch.training.model import (
        fix_remote_code,
        load_model_and_processor,
        page_size,
        run_window_attention_through_sdpa,
    )

    device = resolve_device(args.device)

    def record(line: dict) -> None:
        emit({**line, "shape": args.shape, "device": device_name(device)}, title=TITLE, save=args.record)

    code = fix_remote_code(args.model)
    model, processor = load_model_and_processor(code, dtype=torch.float32)
    model.to(device).train()
    rows = load_vqa_split(args.data, "train")
    batch = Florence2VQACollator(processor, task_prompt=TASK_PROMPT)([rows[i] for i in range(args.batch_size)])
    batch = {key: value.to(device) for key, value in batch.items()}
    if args.train:
        saved_for_backward(device, model, batch, record, attention="the model's own")
        profile_training(args, device, model, batch, record)  # the DaViT attention as the model writes it
    # What train runs (--vision-sdpa, its default) from here on: each configuration SDPA makes faster
    # here, timed as train times it (bf16 autocast on a GPU, as the steps below).
    from florence_patch.training.window_attention import AttentionRun

    run = AttentionRun(
        image_size=page_size(processor), batch_size=args.batch_size, device=device,
        autocast_dtype=torch.bfloat16 if device == "cuda" else None, backward=True,
    )
    switch = run_window_attention_through_sdpa(model, run)
    record({"what": "vision-sdpa", "switched": switch.switched, "untimed": switch.untimed,
            "timings": [{"configuration": t.configuration, "modules": t.modules, "own_ms": t.own_ms,
                         "sdpa_ms": t.sdpa_ms} for t in switch.timings]})
    if args.train:
        saved_for_backward(device, model, batch, record, attention=f"SDPA at {switch.switched} modules")
        profile_training(args, device, model, batch, record, label=" + vision SDPA")
    if args.eval:
        profile_evaluation(args, device, model.eval(), processor, rows, record)
    if args.trainer:
        model.to("cpu")
        profile_trainer(args, device, record)
    # Last: compiling can take minutes, and what came before is printed by then.
    if args.train and args.compile and device == "cuda":
        model.to(device=device, dtype=torch.float32).train()
        profile_training(args, device, model, batch, record, compiled_only=True, label=" + vision SDPA")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_shape="base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the bf16 step under torch.compile (CUDA)")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of the worker variants")
    parser.add_argument("--max-new-tokens", type=int, default=4,
                        help="random weights never stop: this caps answers near the fitted model's length")
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--trainer", action=argparse.BooleanOptionalAction, default=True,
                        help="also profile `florence-patch train`'s own steps (three variants)")
    parser.add_argument("--workdir", help="work directory (reused when prepared for the same shape)")
    parser.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.arm:
        profile_arm(args)
        return
    shape = SHAPES[args.shape]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"fp-profile-{shape.name}-"))
    # Enough rows for the Trainer's steps within one epoch (an epoch restarts the workers).
    rows = max(args.questions, args.batch_size * (5 + args.steps + 1))
    workload = prepare(shape, workdir, train_rows=rows, eval_rows=4, seed=args.seed)
    run_measuring_interpreter(__file__, argv, args, workload, "--data", str(workload.data_dir))


if __name__ == "__main__":
    main()
