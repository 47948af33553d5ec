"""The fixes on Microsoft's real Florence-2 remote code, end to end.

The upstream files are read from ``$FLORENCE_PATCH_UPSTREAM_DIR/<revision>/`` (never copied into
this repository); without that variable the tests skip. For every revision the registry's fixes
are applied in order (``Fix.run``), the patched files are laid out beside a tiny config scaled
down from the revision's own ``config.json``, and a subprocess builds the model through
``AutoModelForCausalLM`` with ``trust_remote_code=True``:

* under the installed transformers 5 with every fix: finite loss, back-propagation, generation
  that feeds the decoder one token per step after the first (the KV cache is used), Florence-2's
  generation defaults, the output layer tied to the embedding, and the same loss and parameter
  count after ``save_pretrained``/``from_pretrained``; the processor resizes and normalises;
* under the transformers 4.49 overlay with the output-class fix only (the default there), and
  with every fix (the patched files must keep working on 4.x);
* generation under 5.x with every fix equals generation under 4.49 on the same weights.

One subprocess per transformers/fix-set handles all revisions (model loading dominates).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from florence_patch.fixes import ALL_FIXES, fix_by_id
from florence_patch.fixes.base import FixOutcome, run_fixes

REPO_ROOT = Path(__file__).resolve().parents[1]
TF449_OVERLAY = REPO_ROOT / ".venv" / "compat" / "tf449"
UPSTREAM_DIR = os.environ.get("FLORENCE_PATCH_UPSTREAM_DIR")
REVISIONS = ("33ee8e1", "aec3bc5", "484465f", "6bf1792", "f928440", "00d2f15")
CODE_FILES = ("configuration_florence2.py", "modeling_florence2.py", "processing_florence2.py")
# Revisions whose language model already inherits GenerationMixin upstream.
MIXIN_UPSTREAM = {"f928440", "00d2f15"}
# Revisions that still need the output-class fix.
NEEDS_OUTPUT_CLASS = {"33ee8e1", "aec3bc5"}
# The fixes this helper wrote (their ids as registered); the registry must hold all of them.
TRANSFORMERS5_FIX_IDS = (
    "forced-bos-getattr",
    "tie-word-embeddings",
    "vision-model-type",
    "generation-defaults-config",
    "attn-mask-fallback",
    "attn-support-flags",
    "output-base-class",
    "tied-weights-mapping",
    "generation-cache",
    "generation-mixin",
    "generation-defaults-model",
    "multimodal-generation-mixin",
    "output-embeddings",
    "extra-special-tokens",
    "image-processor-options",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not UPSTREAM_DIR, reason="FLORENCE_PATCH_UPSTREAM_DIR (real Florence-2 files) not set"),
]


def _available_revisions() -> list[str]:
    if not UPSTREAM_DIR:
        return list(REVISIONS)  # skipped anyway; keeps the test ids stable
    return [r for r in REVISIONS if all((Path(UPSTREAM_DIR) / r / name).is_file() for name in CODE_FILES)]


def _upstream(revision: str, name: str) -> str:
    return (Path(UPSTREAM_DIR) / revision / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _patch_file(name: str, code: str, fix_ids: tuple[str, ...] | None) -> tuple[str, tuple]:
    """``code`` after the registry's fixes for ``name`` (all, or only ``fix_ids``), in registry order, and
    one (fix id, result) per fix. ``run_fixes`` is ``Fix.run`` over a sequence (one parse per file);
    cached by content, since several revisions share files."""
    fixes = [f for f in ALL_FIXES if f.filename == name and (fix_ids is None or f.id in fix_ids)]
    patched, results = run_fixes(code, fixes)
    return patched, tuple(zip((f.id for f in fixes), results))


def _patched(revision: str, fix_ids: tuple[str, ...] | None) -> dict[str, str]:
    files = {}
    for name in CODE_FILES:
        code, results = _patch_file(name, _upstream(revision, name), fix_ids)
        unrecognized = [(fix_id, r.reason) for fix_id, r in results if r.outcome is FixOutcome.UNRECOGNIZED]
        assert not unrecognized, (revision, name, unrecognized)
        files[name] = code
    return files


def _tiny_config(revision: str) -> dict:
    """The revision's config.json scaled down: one block per stage, narrow layers, a small vocabulary."""
    config = json.loads(_upstream(revision, "config.json"))
    config["text_config"].update(
        vocab_size=96,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
    )
    config["vision_config"].update(
        dim_embed=[8, 8, 8, 16], num_heads=[1, 1, 1, 2], num_groups=[1, 1, 1, 2], depths=[1, 1, 1, 1], window_size=2,
        projection_dim=16,
    )
    config.update(vocab_size=96, projection_dim=16, torch_dtype="float32")  # some revisions say float16: CPU tests
    return config


def _tiny_processor_files() -> dict[str, str]:
    """A byte-level BPE vocabulary of single letters (BartTokenizer reads vocab.json + merges.txt)."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for character in "abcdefghijklmnopqrstuvwxyz\u0120":
        vocab[character] = len(vocab)
    return {
        "vocab.json": json.dumps(vocab),
        "merges.txt": "#version: 0.2\n",
        "tokenizer_config.json": json.dumps({"tokenizer_class": "BartTokenizer", "model_max_length": 1024}),
    }


def _write_checkpoint(directory: Path, revision: str, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, code in files.items():
        (directory / name).write_text(code, encoding="utf-8")
    (directory / "config.json").write_text(json.dumps(_tiny_config(revision), indent=2))
    preprocessor = json.loads(_upstream(revision, "preprocessor_config.json"))
    preprocessor.update(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}, image_seq_length=4)
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    for name, text in _tiny_processor_files().items():
        (directory / name).write_text(text)
    return directory


# ---------------------------------------------------------------------------------------------
# the subprocess: one transformers version, every checkpoint given on the command line
# ---------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    r"""
    import json, os, shutil, sys, tempfile
    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    torch.set_num_threads(1)
    mode, report_path, checkpoints = sys.argv[1], sys.argv[2], sys.argv[3:]
    GENERATION_KEYS = ("num_beams", "no_repeat_ngram_size", "early_stopping", "forced_bos_token_id", "forced_eos_token_id")
    # Failures of one checkpoint are reported (and asserted by the parent), not allowed to hide the others.
    REPORTED_ERRORS = (AssertionError, AttributeError, TypeError, ValueError, RuntimeError, KeyError, ImportError, OSError)

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
    input_ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 2, 1]])
    labels = torch.tensor([[0, 10, 11, 12, 2], [0, 13, 14, 2, -100]])


    def error_text(error):
        return f"{type(error).__name__}: {error}"


    def tied(model):
        language_model = model.language_model
        return language_model.lm_head.weight is language_model.get_input_embeddings().weight


    def eval_loss(model):
        model.eval()
        with torch.no_grad():
            return model(input_ids=input_ids, pixel_values=pixel_values, labels=labels).loss.item()


    def default_generation(model):
        # no generation arguments: the model's own defaults (beam search etc. on Florence-2)
        model.eval()
        with torch.no_grad():
            return model.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=5).tolist()


    def check_model(checkpoint):
        report = {}
        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        with torch.no_grad():
            # upstream allocates image_projection with torch.empty (checkpoints always provide it)
            model.image_projection.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(1))
        report["parameters"] = sum(p.numel() for p in model.parameters())
        report["lm_head_tied"] = tied(model)
        generation_config = model.language_model.generation_config
        report["generation"] = {k: getattr(generation_config, k, None) for k in GENERATION_KEYS}

        model.train()
        loss = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        report["loss"] = loss.item()
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        report["gradients_finite"] = all(bool(torch.isfinite(g).all()) for g in gradients)
        report["parameters_with_gradient"] = sum(1 for g in gradients if float(g.abs().sum()) > 0)
        report["parameter_tensors"] = sum(1 for _ in model.parameters())

        model.eval()
        step_lengths = []
        def record(module, args, kwargs):
            ids = kwargs.get("decoder_input_ids")
            step_lengths.append(None if ids is None else ids.shape[1])
        hook = model.language_model.register_forward_pre_hook(record, with_kwargs=True)
        with torch.no_grad():
            greedy = model.generate(
                input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=6, min_new_tokens=6, num_beams=1,
                do_sample=False,
            )
        hook.remove()
        report["greedy_shape"] = list(greedy.shape)
        report["decoder_step_lengths"] = step_lengths
        report["default_generation"] = default_generation(model)
        report["eval_loss"] = eval_loss(model)
        # train/eval run the DaViT window attention through SDPA: the real class must pass its probe
        from florence_patch.training.window_attention import input_grids, use_sdpa_window_attention
        # What startup timing needs first: the token grid each module sees, from the real tower's forward.
        grids = input_grids(model.vision_tower, (64, 64))
        switch = use_sdpa_window_attention(model)
        report["sdpa_window_attention"] = {
            "grids": sorted(grids.values(), reverse=True) if isinstance(grids, dict) else grids,
            "switched": switch.switched,
            "kept": [list(k) for k in switch.kept],
            "spatial_blocks": sum(type(m).__name__ == "SpatialBlock" for m in model.modules()),
            "eval_loss": eval_loss(model),
        }

        saved = tempfile.mkdtemp()
        model.save_pretrained(saved)
        for name in os.listdir(checkpoint):  # 4.x does not copy remote code for a model built with from_config
            if name.endswith(".py") and not os.path.exists(os.path.join(saved, name)):
                shutil.copy(os.path.join(checkpoint, name), saved)
        report["saved_weights_dir"] = saved
        try:
            reloaded = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True)
        except AssertionError as error:
            report["reload_error"] = error_text(error)
            return report
        report["reload_loss"] = eval_loss(reloaded)
        report["reload_parameters"] = sum(p.numel() for p in reloaded.parameters())
        report["reload_lm_head_tied"] = tied(reloaded)
        report["reload_generation"] = {
            k: getattr(reloaded.language_model.generation_config, k, None) for k in GENERATION_KEYS
        }
        return report


    def generate_with_weights(checkpoint, weights_dir):
        # the checkpoint's code and config with weights saved by another transformers version
        for name in os.listdir(weights_dir):
            if name.endswith((".safetensors", ".bin")):
                shutil.copy(os.path.join(weights_dir, name), checkpoint)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, trust_remote_code=True)
        # the saved file holds the shared embedding once: tie lm_head to it explicitly (4.x only
        # re-ties it through the top-level model with the output-embeddings fix)
        model.language_model.tie_weights()
        return {"default_generation": default_generation(model), "eval_loss": eval_loss(model)}


    def check_processor(checkpoint):
        processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
        image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (50, 70, 3), dtype=np.uint8))
        pixel_values = processor(text=["<OD>"], images=[image], return_tensors="pt")["pixel_values"]
        direct = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        return {
            "shape": list(pixel_values.shape),
            "min": float(pixel_values.min()),
            "max": float(pixel_values.max()),
            "equals_image_processor_defaults": bool(torch.equal(pixel_values, direct)),
        }


    reports = {"transformers": transformers.__version__, "checkpoints": {}}
    for checkpoint in checkpoints:
        if mode == "model":
            target, work = checkpoint, check_model
        elif mode == "processor":
            target, work = checkpoint, check_processor
        else:  # "generate:<weights dir>" pairs as checkpoint=weights
            target, weights_dir = checkpoint.split("=", 1)
            work = lambda path, weights_dir=weights_dir: generate_with_weights(path, weights_dir)
        try:
            reports["checkpoints"][target] = work(target)
        except REPORTED_ERRORS as error:
            reports["checkpoints"][target] = {"error": error_text(error)}
    with open(report_path, "w") as handle:
        json.dump(reports, handle)
    """
)


def _run_child(mode: str, checkpoints: list[str], work: Path, *, overlay: bool) -> dict:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(work / "hf"),
        "HF_MODULES_CACHE": str(work / "hf" / "modules"),
    }
    if overlay:
        env["PYTHONPATH"] = str(TF449_OVERLAY)
    work.mkdir(parents=True, exist_ok=True)
    report_path = work / f"report-{mode}-{'449' if overlay else 'installed'}.json"
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(report_path), *checkpoints],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(report_path.read_text())


def _content_key(revision: str, files: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps([files, _tiny_config(revision)], sort_keys=True).encode()).hexdigest()
    return digest[:16]


class _Runs:
    """Lays out one checkpoint per distinct (code, config) and runs each flavour once for all of them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.cache: dict[tuple, dict] = {}

    def checkpoints(self, flavour: str, fix_ids: tuple[str, ...] | None) -> dict[str, Path]:
        by_revision = {}
        for revision in _available_revisions():
            files = _patched(revision, fix_ids)
            directory = self.work / flavour / _content_key(revision, files)
            if not directory.exists():
                _write_checkpoint(directory, revision, files)
            by_revision[revision] = directory
        return by_revision

    def run(self, mode: str, flavour: str, fix_ids: tuple[str, ...] | None, *, overlay: bool) -> dict[str, dict]:
        key = (mode, flavour, fix_ids, overlay)
        if key not in self.cache:
            by_revision = self.checkpoints(flavour, fix_ids)
            distinct = sorted({str(p) for p in by_revision.values()})
            report = _run_child(mode, distinct, self.work / flavour, overlay=overlay)
            self.cache[key] = {
                "transformers": report["transformers"],
                **{r: report["checkpoints"][str(p)] for r, p in by_revision.items()},
            }
        return self.cache[key]


    def reference_generation(self) -> dict[str, dict]:
        """Under 4.49 with only the output-class fix, with the weights each revision saved under 5.x."""
        if "reference" not in self.cache:
            ours = self.run("model", "all-fixes", None, overlay=False)
            code_and_config = self.checkpoints("output-class-only", ("output-class",))
            pairs = {}
            for revision, report in ours.items():
                if revision == "transformers" or "saved_weights_dir" not in report:
                    continue
                checkpoint = self.work / "compare" / revision
                shutil.copytree(code_and_config[revision], checkpoint, dirs_exist_ok=True)
                pairs[revision] = (checkpoint, report["saved_weights_dir"])
            report = _run_child(
                "generate", [f"{c}={w}" for c, w in pairs.values()], self.work / "compare", overlay=True
            )
            self.cache["reference"] = {r: report["checkpoints"][str(c)] for r, (c, _) in pairs.items()}
        return self.cache["reference"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> _Runs:
    return _Runs(tmp_path_factory.mktemp("upstream-real"))


def _needs_overlay() -> None:
    if not TF449_OVERLAY.is_dir():
        pytest.skip(f"transformers 4.49 overlay not installed at {TF449_OVERLAY}")


def _needs_transformers5() -> None:
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"installed transformers is {transformers.__version__}, these checks are for 5.x")


def _florence_generation_defaults(revision: str) -> dict:
    text = json.loads(_upstream(revision, "config.json"))["text_config"]
    return {
        "num_beams": text["num_beams"],
        "no_repeat_ngram_size": text["no_repeat_ngram_size"],
        "early_stopping": text["early_stopping"],
        "forced_bos_token_id": text["forced_bos_token_id"],
        "forced_eos_token_id": text["forced_eos_token_id"],
    }


def _assert_trains_and_generates_with_cache(report: dict) -> None:
    assert "error" not in report, report.get("error")
    assert math.isfinite(report["loss"]) and report["loss"] > 0
    assert report["gradients_finite"]
    # nearly every parameter tensor learns (the position/pooling leftovers may not)
    assert report["parameters_with_gradient"] >= 0.9 * report["parameter_tensors"], report
    assert report["greedy_shape"][1] >= 7  # decoder start + 6 new tokens
    first, *later = report["decoder_step_lengths"]
    assert first >= 1 and later and all(length == 1 for length in later), report["decoder_step_lengths"]


def _assert_reload_keeps_the_model(report: dict) -> None:
    assert "reload_error" not in report, report["reload_error"]
    assert report["reload_parameters"] == report["parameters"]
    assert report["reload_loss"] == pytest.approx(report["eval_loss"], rel=1e-6, abs=1e-6)
    assert report["reload_lm_head_tied"]


# ---------------------------------------------------------------------------------------------
# the fixes themselves on the real files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("revision", _available_revisions())
def test_all_fixes_apply_once_and_then_are_present(revision):
    for name in CODE_FILES:
        patched, results = _patch_file(name, _upstream(revision, name), None)
        outcomes = dict(results)
        assert not [(i, r.reason) for i, r in outcomes.items() if r.outcome is FixOutcome.UNRECOGNIZED]
        again, second = run_fixes(patched, [fix_by_id(i) for i in outcomes])
        assert again == patched
        assert all(r.outcome in (FixOutcome.PRESENT, FixOutcome.ABSENT) for r in second)
        assert all(
            (r2.outcome is FixOutcome.ABSENT) == (r1.outcome is FixOutcome.ABSENT)
            for r1, r2 in zip(outcomes.values(), second)
        )
        if name == "modeling_florence2.py":
            expected = FixOutcome.PRESENT if revision in MIXIN_UPSTREAM else FixOutcome.NEEDED
            assert outcomes["generation-mixin"].outcome is expected
            expected = FixOutcome.NEEDED if revision in NEEDS_OUTPUT_CLASS else FixOutcome.PRESENT
            assert outcomes["output-class"].outcome is expected
        # every transformers-5 fix finds its target in the real files
        ours = {i: r for i, r in outcomes.items() if i in TRANSFORMERS5_FIX_IDS}
        assert all(r.outcome is not FixOutcome.ABSENT for r in ours.values()), {i: r.reason for i, r in ours.items()}


@pytest.mark.parametrize("revision", _available_revisions())
def test_our_hook_dispatch_writes_what_libcsts_writes(revision, monkeypatch):
    """FlorenceCodemod calls its hooks from a table and renders only replaced statements; libcst's
    own dispatch (taken by any codemod with matcher decorators) must give the same bytes."""
    from florence_patch.fixes import base

    def run_all() -> dict:
        written = {}
        for name in CODE_FILES:
            code, results = run_fixes(_upstream(revision, name), [f for f in ALL_FIXES if f.filename == name])
            written[name] = (code, [(r.outcome, r.reason) for r in results])
        return written

    ours = run_all()
    monkeypatch.setattr(base, "_MATCHER_DECORATOR_ATTRS", None)
    monkeypatch.setattr(base, "_HOOKS", {})
    monkeypatch.setattr(base, "_DEFINED", {})
    assert run_all() == ours


# ---------------------------------------------------------------------------------------------
# transformers 5 (the installed one) with every fix
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("revision", _available_revisions())
def test_transformers5_trains_generates_with_cache_and_reloads(runs, revision):
    _needs_transformers5()
    reports = runs.run("model", "all-fixes", None, overlay=False)
    report = reports[revision]
    _assert_trains_and_generates_with_cache(report)
    assert report["lm_head_tied"]
    assert report["generation"] == _florence_generation_defaults(revision)
    _assert_reload_keeps_the_model(report)
    assert report["reload_generation"] == _florence_generation_defaults(revision)


@pytest.mark.parametrize("revision", _available_revisions())
def test_transformers5_window_attention_runs_through_sdpa(runs, revision):
    _needs_transformers5()
    report = runs.run("model", "all-fixes", None, overlay=False)[revision]
    assert "error" not in report, report.get("error")
    switch = report["sdpa_window_attention"]
    assert switch["kept"] == []
    # One grid per module, a 64 px page's 16x16 tokens after the first stage's stride-4 embedding, halving after.
    assert [tuple(grid) for grid in switch["grids"]] == [(16, 16), (8, 8), (4, 4), (2, 2)][: switch["spatial_blocks"]]
    assert switch["switched"] == switch["spatial_blocks"] > 0  # one WindowAttention per spatial block
    assert math.isclose(switch["eval_loss"], report["eval_loss"], rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("revision", _available_revisions())
def test_transformers5_processor_resizes_and_normalises(runs, revision):
    _needs_transformers5()
    report = runs.run("processor", "all-fixes", None, overlay=False)[revision]
    assert "error" not in report, report.get("error")
    assert report["shape"] == [1, 3, 32, 32]  # resized to the configured size, not the image's 50x70
    assert report["min"] < 0 < report["max"]  # normalised with mean/std, not left in [0, 1]
    assert report["equals_image_processor_defaults"]


@pytest.mark.parametrize("revision", _available_revisions())
def test_transformers5_generation_equals_transformers_449(runs, revision):
    _needs_transformers5()
    _needs_overlay()
    ours = runs.run("model", "all-fixes", None, overlay=False)[revision]
    assert "error" not in ours, ours.get("error")
    reference = runs.reference_generation()[revision]
    assert "error" not in reference, reference.get("error")
    assert reference["eval_loss"] == pytest.approx(ours["eval_loss"], rel=1e-5)
    assert ours["default_generation"] == reference["default_generation"]


# ---------------------------------------------------------------------------------------------
# transformers 4.49 (the overlay)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("revision", _available_revisions())
def test_transformers449_with_the_output_class_fix_only(runs, revision):
    _needs_overlay()
    reports = runs.run("model", "output-class-only", ("output-class",), overlay=True)
    assert reports["transformers"].startswith("4.49")
    report = reports[revision]
    _assert_trains_and_generates_with_cache(report)
    assert report["generation"] == _florence_generation_defaults(revision)  # 4.x reads them from the config
    # without the vision-model-type fix a saved checkpoint cannot be reloaded, on 4.x too
    assert "only DaViT is supported" in report.get("reload_error", ""), report


@pytest.mark.parametrize("revision", _available_revisions())
def test_transformers449_with_every_fix(runs, revision):
    _needs_overlay()
    reports = runs.run("model", "all-fixes", None, overlay=True)
    assert reports["transformers"].startswith("4.49")
    report = reports[revision]
    _assert_trains_and_generates_with_cache(report)
    assert report["lm_head_tied"]
    assert report["generation"] == _florence_generation_defaults(revision)
    _assert_reload_keeps_the_model(report)


@pytest.mark.parametrize("revision", _available_revisions())
def test_transformers449_processor_with_and_without_fixes(runs, revision):
    _needs_overlay()
    for flavour, fix_ids in (("output-class-only", ("output-class",)), ("all-fixes", None)):
        report = runs.run("processor", flavour, fix_ids, overlay=True)[revision]
        assert "error" not in report, (flavour, report.get("error"))
        assert report["shape"] == [1, 3, 32, 32] and report["min"] < 0 < report["max"]
        assert report["equals_image_processor_defaults"]
