"""What the training and evaluation benchmarks run on: model shapes, a private hub cache, pages, arms.

* A shape is a config for our demo checkpoint's remote code (``florence_patch/demo/remote_code``):
  ``small`` (a scaled-down Florence-2 for CPUs, 384 x 384 pages) and ``base`` (Florence-2-base's
  published sizes, random weights, 768 x 768 pages, 577 image tokens). The code is ours, not
  Microsoft's: its DaViT follows the published architecture (conv patch embeddings, window and
  channel attention, the same parameter shapes) but not every detail (see ``REMOTE_CODE_NOTE``).
* :func:`prepare` lays the shape out as a hub repo at the needs-fix revision in a private HF_HOME,
  runs ``florence-patch apply`` on it (as a user would) and writes synthetic DocVQA pages.
* Each measured arm runs in its own interpreter (:func:`run_arm`) with that HF_HOME set before
  transformers is imported, so arms share nothing but the files.

Memory: on CUDA, torch's peak allocated bytes; on CPU, the peak resident set of the measuring
process (VmHWM, reset through /proc/self/clear_refs when the timed steps start), which leaves
out DataLoader worker processes (their own RSS is reported apart where there are any).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
ARM_RESULT_PREFIX = "BENCH-ARM-RESULT "

REMOTE_CODE_NOTE = (
    "florence-patch's own Florence-2-shaped remote code with random weights, not Microsoft's: same "
    "layer sizes and parameter shapes and the same kinds of layers, written independently (einops "
    "reshapes in the DaViT window/channel attention), so kernels and memory layout can differ in details"
)


@dataclass(frozen=True)
class Shape:
    name: str
    image_size: int
    vision: dict[str, Any]  # overrides of the demo config's vision_config
    text: dict[str, Any]  # overrides of the demo config's text_config
    vocab_size: int | None  # None: the demo tokenizer's vocabulary (+ the processor's added tokens)
    description: str

    @property
    def stage_grids(self) -> list[int]:
        """The token grid's side at each DaViT stage: the page over the cumulative patch strides."""
        side, grids = self.image_size, []
        for stride in self.vision["patch_stride"]:
            side //= stride
            grids.append(side)
        return grids

    @property
    def image_tokens(self) -> int:
        side = self.stage_grids[-1]
        return side * side + 1  # the last stage's grid + one pooled token

    @property
    def repo_id(self) -> str:
        return f"florence-patch-bench/florence-2-{self.name}"


_FOUR_STAGES = {
    "patch_size": [7, 3, 3, 3],
    "patch_stride": [4, 2, 2, 2],
    "patch_padding": [3, 1, 1, 1],
    "patch_prenorm": [False, True, True, True],
    "drop_path_rate": 0.1,
    "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
}
_BART_DROPOUTS = {"dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1}

SHAPES: dict[str, Shape] = {
    "small": Shape(
        name="small",
        image_size=384,
        vision={
            **_FOUR_STAGES,
            "dim_embed": [16, 32, 64, 128],
            "num_heads": [1, 2, 4, 8],
            "num_groups": [1, 2, 4, 8],
            "depths": [1, 1, 2, 1],
            "window_size": 6,
            "projection_dim": 128,
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
        },
        text={
            **_BART_DROPOUTS,
            "d_model": 128,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "num_hidden_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 512,
            "decoder_ffn_dim": 512,
            "max_position_embeddings": 1024,
        },
        vocab_size=None,
        description=(
            "scaled-down Florence-2: DaViT widths 16/32/64/128 depths 1/1/2/1 window 6, BART d_model 128 "
            "2+2 layers 4 heads FFN 512, demo tokenizer (1,148 tokens); 384 px pages, 145 image tokens"
        ),
    ),
    "base": Shape(
        name="base",
        image_size=768,
        vision={
            **_FOUR_STAGES,
            "dim_embed": [128, 256, 512, 1024],
            "num_heads": [4, 8, 16, 32],
            "num_groups": [4, 8, 16, 32],
            "depths": [1, 1, 9, 1],
            "window_size": 12,
            "projection_dim": 768,
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
        },
        text={
            **_BART_DROPOUTS,
            "d_model": 768,
            "encoder_layers": 6,
            "decoder_layers": 6,
            "num_hidden_layers": 6,
            "encoder_attention_heads": 12,
            "decoder_attention_heads": 12,
            "encoder_ffn_dim": 3072,
            "decoder_ffn_dim": 3072,
            "max_position_embeddings": 1024,
        },
        vocab_size=51289,
        description=(
            "Florence-2-base sizes, random weights: DaViT widths 128/256/512/1024 depths 1/1/9/1 heads and "
            "groups 4/8/16/32 window 12, BART d_model 768 6+6 layers 12 heads FFN 3072 vocabulary 51,289; "
            "768 px pages, 577 image tokens"
        ),
    ),
}


# ---------------------------------------------------------------------------------------------
# The hub repo of a shape.


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")


def shape_config(shape: Shape, tokenizer_vocab_size: int) -> tuple[dict, dict]:
    """(config.json, preprocessor_config.json) of ``shape``, starting from the demo checkpoint's."""
    from florence_patch.demo.checkpoint import PROCESSOR_ADDED_TOKENS, model_config, preprocessor_config

    vocab_size = shape.vocab_size or tokenizer_vocab_size + PROCESSOR_ADDED_TOKENS
    config = model_config(vocab_size)
    config["vision_config"].update(shape.vision)
    config["text_config"].update(shape.text)
    config["projection_dim"] = shape.vision["projection_dim"]
    preprocessor = preprocessor_config()
    preprocessor["size"] = {"height": shape.image_size, "width": shape.image_size}
    preprocessor["crop_size"] = dict(preprocessor["size"])
    preprocessor["image_seq_length"] = shape.image_tokens
    return config, preprocessor


def write_shape_repo(hf_home: Path, shape: Shape, *, seed: int = 0) -> str:
    """Lay out ``shape`` in ``<hf_home>/hub`` at the needs-fix revision; returns the commit."""
    from safetensors.torch import save as safetensors_save

    from florence_patch.demo.checkpoint import commit_for, demo_repo_files, initial_state_dict
    from florence_patch.demo.hub_layout import write_hub_repo

    files = dict(demo_repo_files(revision_state="needs-fix", seed=seed))
    config, preprocessor = shape_config(shape, len(json.loads(files["vocab.json"])))
    files["config.json"] = _json_bytes(config)
    files["preprocessor_config.json"] = _json_bytes(preprocessor)
    files["model.safetensors"] = safetensors_save(initial_state_dict(config, seed), metadata={"format": "pt"})
    commit = commit_for(files)
    write_hub_repo(Path(hf_home) / "hub", shape.repo_id, {commit: files}, {"main": commit})
    return commit


# ---------------------------------------------------------------------------------------------
# A prepared work directory.


@dataclass(frozen=True)
class Workload:
    shape: Shape
    workdir: Path
    hf_home: Path
    data_dir: Path  # a save_to_disk DatasetDict: train, validation
    train_rows: int
    eval_rows: int

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of an arm: this HF_HOME, offline, set before transformers is imported."""
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE", "TRANSFORMERS_CACHE")
        }
        env.update(
            HF_HOME=str(self.hf_home),
            HF_DATASETS_CACHE=str(self.workdir / "datasets-cache"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONPATH=os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH")))),
        )
        env.update(extra)
        return env


# DocVQA asks several questions about each page (validation: 5,349 questions on 1,286 pages, about
# 4.2 a page). Synthetic pages carry 1 to 8 questions (about 3.6 a page on average, fewer when a
# page has fewer to ask), so an evaluation that encodes a page once per question pays as it would.
MAX_QUESTIONS_PER_PAGE = 8


def prepare(shape: Shape, workdir: Path, *, train_rows: int, eval_rows: int, seed: int = 0) -> Workload:
    """Build the shape's repo, fix its remote code with `florence-patch apply`, render the pages.

    A work directory prepared before (``prepared.json``) is reused: the repo when the shape and
    seed match, the pages when there are at least as many as asked for.
    """
    import datasets

    from florence_patch.demo.synthetic import make_docvqa, save_docvqa

    datasets.disable_progress_bars()
    workdir = Path(workdir)
    hf_home = workdir / "hf"
    hf_home.mkdir(parents=True, exist_ok=True)
    marker = workdir / "prepared.json"
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if (done.get("shape"), done.get("seed"), done.get("max_questions_per_page")) != (shape.name, seed, MAX_QUESTIONS_PER_PAGE):
        done = {"shape": shape.name, "seed": seed, "max_questions_per_page": MAX_QUESTIONS_PER_PAGE}
    probe = Workload(shape, workdir, hf_home, workdir / "data", 0, 0)
    if "commit" not in done:
        done["commit"] = write_shape_repo(hf_home, shape, seed=seed)
        for command in (["apply"], ["apply", "--check"]):  # --check: exit 1 if a fix is still pending
            proc = subprocess.run(
                [sys.executable, "-m", "florence_patch.cli.main", *command, shape.repo_id],
                env=probe.env(), capture_output=True, text=True,
            )
            if proc.returncode != 0:
                output = (proc.stdout + proc.stderr)[-2000:]
                raise SystemExit(f"florence-patch {' '.join(command)} failed ({proc.returncode}): {output}")
    if done.get("train_rows", 0) < train_rows or done.get("eval_rows", 0) < eval_rows:
        done["train_rows"] = max(train_rows, done.get("train_rows", 0))
        done["eval_rows"] = max(eval_rows, done.get("eval_rows", 0))
        # Pages of one size (the processor resizes them all to the shape's square anyway); one test
        # row, because datasets cannot load an empty saved split back.
        pages = make_docvqa(
            done["train_rows"], done["eval_rows"], 1, seed=seed, page_sizes=((612, 792),),
            max_questions_per_page=MAX_QUESTIONS_PER_PAGE,
        )
        shutil.rmtree(probe.data_dir, ignore_errors=True)
        save_docvqa(pages, probe.data_dir)
    marker.write_text(json.dumps(done, indent=2) + "\n")
    return Workload(shape, workdir, hf_home, probe.data_dir, done["train_rows"], done["eval_rows"])


# ---------------------------------------------------------------------------------------------
# Arms: one interpreter each.


def run_arm(script: str, args: list[str], env: dict[str, str], *, timeout: float | None = None) -> dict[str, Any]:
    """Run ``bench/<script> --arm ...`` and return the result it printed (ARM_RESULT_PREFIX + JSON)."""
    command = [sys.executable, str(BENCH_DIR / script), *args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    if proc.returncode != 0 or ARM_RESULT_PREFIX not in proc.stdout:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise SystemExit(f"arm {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return arm_result(proc.stdout)


def arm_result(output: str) -> dict[str, Any]:
    """The result an arm printed (its last ARM_RESULT_PREFIX line)."""
    results = [line[len(ARM_RESULT_PREFIX):] for line in output.splitlines() if line.startswith(ARM_RESULT_PREFIX)]
    if not results:
        raise SystemExit(f"an arm printed no result:\n{output[-4000:]}")
    return json.loads(results[-1])


def run_measuring_interpreter(script: str, argv, args, workload: Workload, *extra: str) -> None:
    """Run ``script`` again in a fresh interpreter on ``workload``'s private caches (``--arm``, with
    the same command line), and exit with its status. It prints its lines as it goes, so a run cut
    short still shows what it measured."""
    env = workload.env(**({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}), **thread_env(args.threads))
    forwarded = list(argv if argv is not None else sys.argv[1:])
    command = [sys.executable, script, *forwarded, "--arm", "--model", workload.shape.repo_id, *extra]
    raise SystemExit(subprocess.run(command, env=env).returncode)


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that fixes torch's intra-op threads in every arm alike (None: torch's default)."""
    if threads is None:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def add_common_arguments(parser, *, default_shape: str) -> None:
    """The options every bench script takes (shape, device, threads, seed, record), and the
    hidden ones an arm is started with (the model and the data it runs on)."""
    import argparse

    parser.add_argument("--shape", choices=sorted(SHAPES), default=default_shape)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP/MKL threads of every arm (default: torch's own choice, one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=True,
                        help="append the lines to bench/RESULTS.md (--no-record: print only, e.g. for a dry run)")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)


def add_our_arm_arguments(parser) -> None:
    """Settings of our arm that default to the product's own (the baseline follows the recipe)."""
    parser.add_argument("--precision", default="auto", help="our arm's --precision (the baseline is fp32)")
    parser.add_argument("--num-workers", type=int, default=None, help="our arm's --num-workers (default: its own)")


def emit(record: dict[str, Any], *, title: str, save: bool) -> None:
    """Print one JSON line; with ``save``, also append it to RESULTS.md (common.report)."""
    if save:
        from common import report

        report(record, title=title)
    else:
        print(json.dumps(record), flush=True)


def print_arm_result(result: dict[str, Any]) -> None:
    print(ARM_RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Measuring inside an arm.


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    return name


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _vm_hwm_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc status")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# glibc keeps freed blocks below a moving threshold in its heap, so a process's resident set stays
# at its high-water mark after the first step; a fixed mmap threshold returns every freed tensor to
# the OS at once, so the resident set follows the live tensors (at some cost in speed). Set for the
# memory-comparison runs on CPU.
RSS_FOLLOWS_TENSORS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclass
class PeakMemory:
    """Peak memory over a window: torch's peak allocation on CUDA, peak RSS (VmHWM) on CPU.

    ``above_reset_mib``: the peak less what was held when the window started (between two steps:
    weights, optimizer state, the interpreter), i.e. what a step adds: activations and gradients.
    """

    device: str
    at_reset_mib: float = 0.0
    tensors_held_mib: float = 0.0

    @property
    def method(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.device == "cuda" else "peak RSS of the process (VmHWM)"

    def reset(self, model=None, optimizer=None) -> None:
        """Start the window between two steps; ``model``/``optimizer``: whose tensors are held then."""
        import torch

        self.tensors_held_mib = tensors_mib(model, optimizer) if model is not None else 0.0

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.at_reset_mib = torch.cuda.memory_allocated() / 2**20
            return
        # Writing 5 resets the peak resident set size (Linux >= 4.0) to the current one.
        Path("/proc/self/clear_refs").write_text("5")
        self.at_reset_mib = _vm_hwm_kib() / 1024

    def peak_mib(self) -> float:
        import torch

        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return _vm_hwm_kib() / 1024

    def above_reset_mib(self) -> float:
        return self.peak_mib() - self.at_reset_mib

    def peak_tensors_mib(self) -> float:
        """Peak tensor memory: what torch.cuda.max_memory_allocated counts, estimated the same way on CPU.

        On CPU: the tensors held between steps (weights, optimizer state; counted exactly) plus
        the step's peak growth of the resident set (activations, gradients, temporaries). The
        interpreter and its libraries (about 1 GiB of the resident set) are left out, as on CUDA.
        """
        if self.device == "cuda":
            return self.peak_mib()
        return self.tensors_held_mib + self.above_reset_mib()

    def workers_rss_mib(self) -> float | None:
        """Resident memory of this process's child processes now (DataLoader workers), summed."""
        try:
            import psutil
        except ImportError:
            return None
        children = psutil.Process().children(recursive=True)
        if not children:
            return None
        return sum(_rss_kib(child.pid) for child in children if child.is_running()) / 1024


def tensors_mib(model, optimizer=None) -> float:
    """MiB of the distinct tensors a model and its optimizer hold: parameters, gradients, state."""
    import torch

    seen: dict[int, int] = {}

    def add(tensor) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()

    for parameter in model.parameters():
        add(parameter)
        add(parameter.grad)
    for buffer in model.buffers():
        add(buffer)
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                add(value)
    return sum(seen.values()) / 2**20


def device_name(device: str) -> str:
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


# Dense peak TFLOPS by (device-name fragment, dtype); the first fragment found in the name wins.
_PEAK_TFLOPS = (
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
)


def peak_tflops(device_label: str, precision: str) -> float | None:
    for fragment, table in _PEAK_TFLOPS:
        if fragment in device_label:
            return table.get(precision)
    return None


def now() -> float:
    return time.perf_counter()


class PhaseClock:
    """Where each timed step's wall time goes: waiting for data, forward, backward, optimizer, the rest.

    Forward hooks on the model and step hooks on the optimizer mark the phase boundaries, so the
    same clock times the hand-written loop and the Trainer without touching either. Data is the
    time from the previous step's end to the forward pass (fetching the batch, the collate where
    it runs in-process, moving it to the device); backward includes gradient clipping. On CUDA
    the boundaries are synchronised only when ``synchronize_phases`` (profiling): it costs speed.
    """

    PHASES = ("data", "forward", "backward", "optimizer", "other")

    def __init__(self, device: str, *, synchronize_phases: bool):
        self.device = device
        self.sync = device != "cuda" or synchronize_phases
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0
        self.active = False
        self._marks: dict[str, float] = {}
        self._handles: list[Any] = []

    def attach(self, model, optimizer) -> None:
        # accelerate wraps the Trainer's optimizer; the hooks go on the torch optimizer inside.
        optimizer = getattr(optimizer, "optimizer", optimizer)
        self._handles = [
            model.register_forward_pre_hook(lambda *_: self._mark("forward_start")),
            model.register_forward_hook(lambda *_: self._mark("forward_end")),
            optimizer.register_step_pre_hook(lambda *_: self._mark("optimizer_start")),
            optimizer.register_step_post_hook(lambda *_: self._mark("optimizer_end")),
        ]

    def _mark(self, name: str) -> None:
        if self.active:
            if self.sync:
                synchronize(self.device)
            # The first forward of a step only (generation-free training has one).
            self._marks.setdefault(name, now())

    def start(self) -> None:
        """Call at the end of the last untimed step."""
        self.active = True
        self._marks = {"step_end": now()}

    def resume(self) -> None:
        """Call when a step's turn begins in lockstep (bench/lockstep.py): the wait is no phase of it."""
        if self.active:
            self._marks = {"step_end": now()}

    def step_end(self) -> None:
        if not self.active:
            return
        if self.sync:
            synchronize(self.device)
        end = now()
        marks = self._marks
        if {"forward_start", "forward_end", "optimizer_start", "optimizer_end"} <= marks.keys():
            self.totals["data"] += marks["forward_start"] - marks["step_end"]
            self.totals["forward"] += marks["forward_end"] - marks["forward_start"]
            self.totals["backward"] += marks["optimizer_start"] - marks["forward_end"]
            self.totals["optimizer"] += marks["optimizer_end"] - marks["optimizer_start"]
            self.totals["other"] += end - marks["optimizer_end"]
            self.steps += 1
        self._marks = {"step_end": end}

    def stop(self) -> None:
        self.active = False
        for handle in self._handles:
            handle.remove()

    def ms_per_step(self) -> dict[str, float] | None:
        if not self.steps or (self.device == "cuda" and not self.sync):
            return None
        return {phase: round(1000 * total / self.steps, 1) for phase, total in self.totals.items()}


def count_train_flops(model, run_step) -> int:
    """FLOPs of one forward + backward, as torch's FlopCounterMode counts them (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run_step()
    return counter.get_total_flops()


class CpuClock:
    """CPU seconds (user + system) spent by this process and its children, DataLoader workers included.

    On a shared machine wall time moves with everyone else's load; CPU time per sample says
    whether an arm does more work, whatever the load.
    """

    def __init__(self) -> None:
        self._start = 0.0

    @staticmethod
    def total() -> float:
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that have exited
        seconds = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
        try:
            import psutil
        except ImportError:
            return seconds
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds += times.user + times.system
        return seconds

    def start(self) -> None:
        self._start = self.total()

    def elapsed(self) -> float:
        return self.total() - self._start
