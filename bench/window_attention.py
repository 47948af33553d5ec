"""DaViT window attention as the model writes it against ``--vision-sdpa`` (torch's SDPA), module by module.

Not a comparison with the recipe: this isolates what ``train`` and ``eval`` change in the vision
tower. The shape's checkpoint is fixed and loaded as a user's would be; for each distinct
``WindowAttention`` of its tower (one per stage), one forward and backward at the stage's own token
grid and the batch size given is timed with the module's own ``forward`` and with the SDPA one,
interleaved round by round in one process. One JSON line per stage: milliseconds per forward and
backward (median of the rounds), the ratio, and the largest output difference.

    .venv/bin/python bench/window_attention.py --shape small                       # CPU, batch 8
    .venv/bin/python bench/window_attention.py --shape base --batch-size 2         # CPU, about a minute
    .venv/bin/python bench/window_attention.py --shape base --device cuda --bf16   # a GPU, batch 8
    .venv/bin/python bench/window_attention.py --shape small --whole-step          # the model's whole step

``--whole-step``: the same comparison inside the model: whole training steps (forward and
backward, no optimizer) of two copies of it on one batch of the workload's pages, every window
attention as written against all of it through SDPA, stepped in turn in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

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

TITLE = "window attention (window_attention.py)"


def measure(args) -> None:
    import torch

    from florence_patch.training.model import fix_remote_code, load_model_and_processor, vision_tower
    from florence_patch.training.window_attention import (
        probe_difference,
        sdpa_window_attention_forward,
        window_attention_modules,
    )

    device = resolve_device(args.device)
    shape = SHAPES[args.shape]
    model, _ = load_model_and_processor(fix_remote_code(args.model), dtype=torch.float32)
    tower = vision_tower(model)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    grids = shape.stage_grids
    # The first WindowAttention of each stage: stage i's modules all share its width and heads.
    stages = []
    for index, stage in enumerate(tower.blocks):
        modules = window_attention_modules(stage)
        if modules:
            stages.append((index, modules[0].to(device)))
    generator = torch.Generator().manual_seed(args.seed)
    for index, module in stages:
        side = grids[index]
        x = torch.randn(args.batch_size, side * side, module.qkv.in_features, generator=generator).to(device)
        own = type(module).forward.__get__(module)
        sdpa = sdpa_window_attention_forward.__get__(module)

        def run(forward):
            inputs = x.detach().requires_grad_(True)
            context = torch.autocast(device_type=device, dtype=dtype) if args.bf16 else contextlib.nullcontext()
            with context:
                out, _ = forward(inputs, (side, side))
            out.float().sum().backward()
            module.zero_grad(set_to_none=True)

        times = {"own": [], "sdpa": []}
        for forward in (own, sdpa):  # warm-up: first-call allocations and kernel selection
            run(forward)
        for _ in range(args.rounds):
            for name, forward in (("own", own), ("sdpa", sdpa)):
                synchronize(device)
                started = now()
                run(forward)
                synchronize(device)
                times[name].append((now() - started) * 1000)
        own_ms, sdpa_ms = statistics.median(times["own"]), statistics.median(times["sdpa"])
        emit({
            "what": "window-attention", "shape": shape.name, "stage": index, "grid": side,
            "window": int(module.window_size), "heads": int(module.num_heads), "width": module.qkv.in_features,
            "batch_size": args.batch_size, "precision": "bf16 autocast" if args.bf16 else "fp32",
            "rounds": args.rounds, "own_ms": round(own_ms, 2), "sdpa_ms": round(sdpa_ms, 2),
            "ratio": round(own_ms / sdpa_ms, 3), "probe_difference": probe_difference(module),
            "device": device_name(device),
        }, title=TITLE, save=args.record)


def measure_whole_step(args) -> None:
    """Whole training steps (forward, backward) of two copies of the model on the same batch of
    pages, one with every window attention as written and one with all of it through SDPA,
    stepped in turn in one process: what the modules' own figures add up to inside the model."""
    import copy

    import datasets
    import torch

    from florence_patch.training.data import Florence2VQACollator
    from florence_patch.training.model import fix_remote_code, load_model_and_processor, vision_tower
    from florence_patch.training.window_attention import use_sdpa_window_attention

    device = resolve_device(args.device)
    shape = SHAPES[args.shape]
    torch.manual_seed(args.seed)
    own_model, processor = load_model_and_processor(fix_remote_code(args.model), dtype=torch.float32)
    sdpa_model = copy.deepcopy(own_model)
    switched = use_sdpa_window_attention(vision_tower(sdpa_model)).switched
    models = {"own": own_model.to(device).train(), "sdpa": sdpa_model.to(device).train()}
    rows = datasets.load_from_disk(args.data)["train"]
    batch = Florence2VQACollator(processor)([rows[i % len(rows)] for i in range(args.batch_size)])
    batch = {key: value.to(device) for key, value in batch.items()}
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "backward": []} for name in models}

    def step(name: str, timed: bool) -> None:
        model = models[name]
        context = torch.autocast(device_type=device, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
        synchronize(device)
        started = now()
        with context:
            loss = model(**batch).loss
        synchronize(device)
        forward_done = now()
        loss.backward()
        synchronize(device)
        if timed:
            times[name]["forward"].append((forward_done - started) * 1000)
            times[name]["backward"].append((now() - forward_done) * 1000)
        model.zero_grad(set_to_none=True)

    for round_index in range(args.rounds + 2):  # two warm-up rounds
        order = ("own", "sdpa") if round_index % 2 == 0 else ("sdpa", "own")
        for name in order:
            step(name, timed=round_index >= 2)
    median = {name: {phase: statistics.median(values) for phase, values in phases.items()} for name, phases in times.items()}
    total = {name: sum(phases.values()) for name, phases in median.items()}
    emit({
        "what": "window-attention-step", "shape": shape.name, "batch_size": args.batch_size,
        "precision": "bf16 autocast" if args.bf16 else "fp32", "rounds": args.rounds, "sdpa_modules": switched,
        "own_forward_ms": round(median["own"]["forward"], 1), "own_backward_ms": round(median["own"]["backward"], 1),
        "sdpa_forward_ms": round(median["sdpa"]["forward"], 1), "sdpa_backward_ms": round(median["sdpa"]["backward"], 1),
        "ratio": round(total["own"] / total["sdpa"], 3), "device": device_name(device),
    }, title=TITLE, save=args.record)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, default_shape="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved own/SDPA rounds per stage")
    parser.add_argument("--bf16", action="store_true", help="under bf16 autocast (what train runs on GPUs)")
    parser.add_argument("--workdir", help="work directory (reused when prepared for the same shape)")
    parser.add_argument("--whole-step", action="store_true",
                        help="whole training steps of the model, own attention against all of it through SDPA")
    parser.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.rounds < 1:
        parser.error("--batch-size and --rounds must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.arm:
        measure_whole_step(args) if args.whole_step else measure(args)
        return
    shape = SHAPES[args.shape]
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"fp-attention-{shape.name}-"))
    workload = prepare(shape, workdir, train_rows=4, eval_rows=4, seed=args.seed)
    run_measuring_interpreter(__file__, argv, args, workload, "--data", str(workload.data_dir))


if __name__ == "__main__":
    main()
