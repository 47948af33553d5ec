"""`florence-patch demo`: the whole loop, offline, in a private cache, in a few minutes.

build the tiny checkpoint -> status -> the error a user hits -> apply -> verify ->
ANLS before -> train -> ANLS after -> revert -> summary.

Training and evaluation go through the same `train` / `evaluate` functions the CLI commands use.
The environment (HF_HOME and offline switches) is set before transformers is imported, because
transformers reads HF_MODULES_CACHE once at import: run the demo in its own process.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEMO_STEPS = 8


@dataclass(frozen=True)
class DemoSettings:
    train_rows: int = 20
    validation_rows: int = 12
    test_rows: int = 6
    max_steps: int = 300
    batch_size: int = 8
    lr: float = 2e-3
    seed: int = 0


@dataclass(frozen=True)
class DemoSummary:
    workdir: Path
    hf_home: Path
    data_dir: Path
    run_dir: Path
    first_error: str
    verify_ok: bool
    train_anls_before: float | None
    train_anls_after: float | None
    validation_anls_before: float | None
    validation_anls_after: float | None
    final_loss: float | None
    reverted: bool
    seconds: float


def private_environment(hf_home: Path) -> None:
    """Point every Hugging Face cache at ``hf_home`` and go offline (never the user's cache)."""
    os.environ["HF_HOME"] = str(hf_home)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE"):
        os.environ.pop(var, None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_demo(
    workdir: Path | None = None,
    *,
    settings: DemoSettings = DemoSettings(),
    echo: Callable[[str], None] = print,
) -> DemoSummary:
    started = time.perf_counter()
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="florence-patch-demo-"))
    workdir = workdir.expanduser().resolve()
    hf_home, data_dir, run_dir = workdir / "hf", workdir / "data", workdir / "run"
    hf_home.mkdir(parents=True, exist_ok=True)
    private_environment(hf_home)

    def step(number: int, text: str) -> None:
        echo(f"\n[{number}/{DEMO_STEPS}] {text}  (+{time.perf_counter() - started:.0f}s)")

    from florence_patch.demo.checkpoint import DEMO_REPO_ID, build_demo_repo
    from florence_patch.demo.synthetic import make_docvqa, save_docvqa
    from florence_patch.discovery import find_copies
    from florence_patch.patching import CopyState, apply_all, assess, plan_fix, revert
    from florence_patch.verify import verify

    step(1, f"Building the tiny checkpoint {DEMO_REPO_ID} and synthetic DocVQA pages in {workdir}")
    repo = build_demo_repo(hf_home)
    echo(f"  checkpoint: {repo.snapshot}")
    if not (data_dir / "dataset_dict.json").exists():
        dataset = make_docvqa(settings.train_rows, settings.validation_rows, settings.test_rows, seed=settings.seed)
        save_docvqa(dataset, data_dir)
    echo(f"  pages: {data_dir} (train {settings.train_rows}, validation {settings.validation_rows} questions)")

    step(2, "status: what transformers would import")
    copies = find_copies(DEMO_REPO_ID).copies
    for copy in copies:
        status = assess(copy)
        if status.state is CopyState.PATCHED:  # a reused workdir: start from the original bytes
            revert(copy)
            status = assess(copy)
        echo(f"  {copy.model_id}@{copy.commit[:7]}: {status.state.value}; pending fixes: {', '.join(status.pending) or '-'}")

    step(3, "What a user hits today (verify on the unpatched code)")
    before = verify(DEMO_REPO_ID)
    failures = [c for c in before.checks if not c.passed and not c.detail.startswith("not run")]
    first_error = failures[0].detail if failures else "(nothing failed)"
    for check in failures:
        echo(f"  {check.name}: {check.detail}")

    step(4, "apply: rewrite the modules-cache copy (backed up, atomic, locked)")
    results = apply_all([plan_fix(copy) for copy in copies])
    for result in results:
        echo(f"  patched {', '.join(result.changed)} with {', '.join(result.fixes)}")

    step(5, "verify: forward with labels, backward, generate, save/reload, processor")
    after = verify(DEMO_REPO_ID)
    for check in after.checks:
        echo(f"  {'pass' if check.passed else 'FAIL'}  {check.name}: {check.detail}")

    from florence_patch.training.config import EvalConfig, TrainConfig
    from florence_patch.training.evaluate import evaluate
    from florence_patch.training.train import train

    def anls(model: str, split: str, out: str) -> float | None:
        result = evaluate(
            EvalConfig(model=model, dataset=str(data_dir), split=split, batch_size=settings.batch_size,
                       output_dir=str(workdir / "eval" / out), num_beams=1, max_new_tokens=24)
        )
        return result.anls

    step(6, "ANLS before training")
    train_before = anls(DEMO_REPO_ID, "train", "before-train")
    validation_before = anls(DEMO_REPO_ID, "validation", "before-validation")
    echo(f"  train pages ANLS {train_before:.3f}, validation ANLS {validation_before:.3f}")

    step(7, f"train: {settings.max_steps} steps on CPU (transformers Trainer)")
    trained = train(
        TrainConfig(
            model=DEMO_REPO_ID, dataset=str(data_dir), output_dir=str(run_dir), max_steps=settings.max_steps,
            batch_size=settings.batch_size, lr=settings.lr, warmup_ratio=0.05, eval_steps=0,
            save_steps=settings.max_steps, logging_steps=20, seed=settings.seed, precision="fp32",
        )
    )
    train_after = anls(str(run_dir), "train", "after-train")
    validation_after = anls(str(run_dir), "validation", "after-validation")
    echo(f"  train pages ANLS {train_before:.3f} -> {train_after:.3f}; validation {validation_before:.3f} -> {validation_after:.3f}")

    step(8, "revert: restore the original bytes")
    reverted = all(bool(revert(copy).restored) or assess(copy).state is not CopyState.PATCHED for copy in copies)
    for copy in copies:
        echo(f"  {copy.model_id}@{copy.commit[:7]}: {assess(copy).state.value}")

    summary = DemoSummary(
        workdir=workdir, hf_home=hf_home, data_dir=data_dir, run_dir=run_dir, first_error=first_error,
        verify_ok=after.ok, train_anls_before=train_before, train_anls_after=train_after,
        validation_anls_before=validation_before, validation_anls_after=validation_after,
        final_loss=getattr(trained, "final_loss", None), reverted=reverted, seconds=time.perf_counter() - started,
    )
    echo("\nSummary")
    echo(f"  before apply:  {first_error}")
    echo(f"  verify after apply: {'passed' if after.ok else 'FAILED'}")
    echo(f"  ANLS on training pages:   {train_before:.3f} -> {train_after:.3f}")
    echo(f"  ANLS on validation pages: {validation_before:.3f} -> {validation_after:.3f} (as measured; tiny model, few pages)")
    echo(f"  fine-tuned model: {run_dir}  (reload: florence-patch eval --model {run_dir} --dataset {data_dir})")
    echo(f"  reverted: {'yes' if reverted else 'no'}; total {summary.seconds:.0f}s")
    return summary
