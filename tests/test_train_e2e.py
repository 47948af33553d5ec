"""`florence-patch train` and `eval` end to end on CPU: the demo checkpoint, synthetic pages.

Every run is a fresh interpreter with its own HF_HOME (transformers reads the caches once, at
import), offline. The checkpoint starts at its needs-fix revision, so each first run also
proves that training fixes the remote code before importing it.

FLORENCE_PATCH_TEST_TF449=1 runs the subprocesses under the transformers 4.49 overlay.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from florence_patch.training.host_memory import allocator_choice_of_user, on_glibc
from tests.conftest import TF449_OVERLAY

pytestmark = pytest.mark.slow

REPO_ID = "florence-patch/florence-2-tiny"
HUB_DATASET = "HuggingFaceM4/DocumentVQA"
CODE_FILES = ("modeling_florence2.py", "configuration_florence2.py", "processing_florence2.py")
# Small and quick: 4 questions a batch, 4 evaluated, greedy 4-token answers, one loader worker.
QUICK = [
    "--model", REPO_ID, "--lr", "1e-3", "--num-workers", "1", "--num-beams", "1",
    "--max-new-tokens", "4", "--max-eval-samples", "4", "--logging-steps", "1", "--warmup-ratio", "0",
]


def _env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE", "HF_DATASETS_CACHE")}
    env.update(
        HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",  # two cores: threads would fight the workers
    )
    if os.environ.get("FLORENCE_PATCH_TEST_TF449") == "1":
        if not TF449_OVERLAY.is_dir():
            pytest.fail(f"transformers 4.49 overlay missing at {TF449_OVERLAY}")
        env["PYTHONPATH"] = str(TF449_OVERLAY) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(command: list[str], hf_home: Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = _env(hf_home)
    if (cwd / "datasets-cache").is_dir():
        env["HF_DATASETS_CACHE"] = str(cwd / "datasets-cache")  # where HuggingFaceM4/DocumentVQA is served from
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    proc.log = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return proc


def florence_patch(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "florence_patch.cli.main", *args], hf_home, cwd)


def python(code: str, hf_home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", textwrap.dedent(code), *args], hf_home, cwd)


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.log[-6000:]


def _new_hf_home(root: Path, name: str, *, demo: bool = True) -> Path:
    from florence_patch.demo.checkpoint import build_demo_repo

    home = root / name
    home.mkdir(parents=True)
    if demo:
        build_demo_repo(home)  # refs/main at the needs-fix revision
    return home


STAGE_HUB_DATASET = """
    import shutil, sys
    from pathlib import Path
    import datasets
    source, repo_dir, cache = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    # The repo as the hub lays it out, prepared once by datasets and filed under the hub id, as
    # an earlier online load_dataset("HuggingFaceM4/DocumentVQA") leaves it (repo DocumentVQA ->
    # builder document_vqa): offline, the hub id is then served from this cache.
    saved = datasets.load_from_disk(str(source))
    (repo_dir / "data").mkdir(parents=True)
    for split, rows in saved.items():
        rows.to_parquet(str(repo_dir / "data" / f"{split}-00000-of-00001.parquet"))
    staging = repo_dir.parent / "staging"
    datasets.load_dataset(str(repo_dir), cache_dir=str(staging))
    (prepared,) = (staging / "document_vqa").glob("*/*/*/")
    shutil.copytree(prepared, (cache / "HuggingFaceM4___document_vqa").joinpath(*prepared.parts[-3:]))
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from florence_patch.demo.synthetic import make_docvqa, save_docvqa

    root = tmp_path_factory.mktemp("train-e2e")
    save_docvqa(make_docvqa(num_train=16, num_validation=8, num_test=2, seed=3), root / "data")
    home = _new_hf_home(root, "hf")
    # The same rows, served offline under the hub id (read by the runs given HF_DATASETS_CACHE).
    stage = [str(root / "data"), str(root / "hub-repo" / "DocumentVQA"), str(root / "datasets-cache")]
    _ok(python(STAGE_HUB_DATASET, home, root, *stage))
    return root


@pytest.fixture(scope="module")
def trained(workdir) -> dict:
    """One short run: 4 steps, checkpoints at 2 and 4, evaluated at 2 and 4."""
    out = workdir / "out"
    proc = florence_patch(
        ["train", "--dataset", str(workdir / "data"), "--output-dir", str(out), "--max-steps", "4",
         "--save-steps", "2", "--eval-steps", "2", "--batch-size", "4", *QUICK],
        workdir / "hf", workdir,
    )
    _ok(proc)
    return {"out": out, "log": proc.log}


def _state(directory: Path) -> dict:
    return json.loads((directory / "trainer_state.json").read_text())


def _losses(state: dict) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


# ---------------------------------------------------------------------------------------------


def test_train_fixes_the_code_trains_evaluates_and_writes_a_self_contained_directory(workdir, trained):
    out = trained["out"]
    log = trained["log"]
    assert re.search(r"fixed the remote code of florence-patch/florence-2-tiny: .*output-class", log)
    assert re.search(r"vision tower: [1-9]\d* window-attention modules run through scaled_dot_product_attention", log)
    if on_glibc() and allocator_choice_of_user() is None:
        assert "host memory: freed tensor memory stays in the process" in log  # on the CPU
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-4").is_dir()

    # Weights, fixed code, config, processor, generation config.
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", *CODE_FILES):
        assert (out / name).is_file(), name
    # The image-processor settings: their own file on transformers 4, inside processor_config.json on 5.
    assert (out / "preprocessor_config.json").is_file() or "image_processor" in json.loads(
        (out / "processor_config.json").read_text())
    # The code saved is the fixed copy transformers imported, not the hub snapshot's original.
    (imported,) = (workdir / "hf" / "modules" / "transformers_modules").rglob("modeling_florence2.py")
    (original,) = (workdir / "hf" / "hub").rglob("snapshots/*/modeling_florence2.py")
    modeling = (out / "modeling_florence2.py").read_text()
    assert modeling == imported.read_text() != original.read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "davit"
    assert all("--" not in value for value in config["auto_map"].values())  # local code, not the hub repo
    # Checkpoints are loadable on their own too.
    assert (out / "checkpoint-2" / "modeling_florence2.py").read_text() == modeling
    assert json.loads((out / "checkpoint-2" / "config.json").read_text())["vision_config"]["model_type"] == "davit"

    # Metrics, with evaluation every 2 steps by generation and ANLS.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["world_size"] == 1 and metrics["resumed_from"] is None
    evaluation = metrics["eval"]
    assert evaluation["count"] == 4 and 0.0 <= evaluation["anls"] <= 1.0 and evaluation["anls_by_type"]
    assert metrics["parameters"]["trainable"] == metrics["parameters"]["total"] > 0
    assert "output-class" in metrics["remote_code_fixes"]
    history = _state(out)["log_history"]
    assert [entry["step"] for entry in history if "eval_anls" in entry] == [2, 4]
    assert sorted(_losses(_state(out))) == [1, 2, 3, 4]  # a loss every step (--logging-steps 1)
    assert all(_losses(_state(out))[step] > 0 for step in (1, 2, 3, 4))

    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 4
    assert set(predictions[0]) >= {"questionId", "question", "prediction", "answers", "anls"}

    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert f"| ANLS | {evaluation['anls']:.4f} |" in card and "florence-patch train --dataset" in card
    assert "| vision_sdpa | `true` |" in card  # settings that change the numbers are on the card


def test_group_by_page_trains_on_batches_that_share_their_pages(workdir):
    out = workdir / "grouped"
    proc = florence_patch(
        ["train", "--dataset", str(workdir / "data"), "--output-dir", str(out), "--max-steps", "3",
         "--save-steps", "3", "--eval-steps", "0", "--batch-size", "4", "--group-by-page", *QUICK],
        workdir / "hf", workdir,
    )
    _ok(proc)
    keyed = re.search(r"--group-by-page: (\d+) questions on (\d+) pages", proc.log)
    assert keyed and int(keyed[1]) == 16 and int(keyed[2]) < 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["config"]["group_by_page"] is True
    # 12 questions trained on, each page of a batch encoded once: fewer encodings than questions.
    assert metrics["train"]["train_questions_per_encoded_page"] > 1
    assert all(loss > 0 for loss in _losses(_state(out)).values())
    assert "--group-by-page" in (out / "README.md").read_text()  # the card's command line


def test_resume_continues_from_the_last_checkpoint(workdir, trained):
    out = workdir / "resumed"
    shutil.copytree(trained["out"], out)
    base = ["train", "--dataset", str(workdir / "data"), "--output-dir", str(out), "--save-steps", "2",
            "--eval-steps", "0", "--batch-size", "4", *QUICK]

    proc = florence_patch([*base, "--max-steps", "6", "--resume"], workdir / "hf", workdir)
    _ok(proc)
    assert re.search(r"resuming from \S*checkpoint-4", proc.log)
    state = _state(out)
    assert state["global_step"] == 6 and (out / "checkpoint-6").is_dir()
    losses = _losses(state)
    first = _losses(_state(trained["out"]))
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert all(losses[step] == first[step] for step in (1, 2, 3, 4))  # the earlier steps were not redone
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-4" and metrics["global_step"] == 6
    assert metrics["eval"]["anls"] is not None


RELOAD = """
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor
    import datasets
    from florence_patch.training.model import (
        add_lora, count_parameters, fix_remote_code, freeze_vision_tower, load_model_and_processor, merge_lora)

    out, data = sys.argv[1], sys.argv[2]
    facts = {}

    # 1. Plain transformers, offline, from the directory alone.
    # Before the model exists: unfixed code deletes vision_config.model_type while building it.
    facts["vision_model_type"] = AutoConfig.from_pretrained(out, trust_remote_code=True).vision_config.model_type
    model, info = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    saved = load_file(str(Path(out) / "model.safetensors"))
    state = model.state_dict()
    rows = datasets.load_from_disk(data)["validation"].select(range(2))
    inputs = processor(text=["<DocVQA>" + q for q in rows["question"]],
                       images=[image.convert("RGB") for image in rows["image"]], return_tensors="pt", padding=True)
    generated = model.eval().generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                      max_new_tokens=3, num_beams=2)
    facts.update({
        "missing": list(info["missing_keys"]), "unexpected": list(info["unexpected_keys"]),
        "differing": [name for name, tensor in saved.items() if not torch.equal(state[name], tensor)],
        "compared": len(saved), "code_file": sys.modules[type(model).__module__].__file__,
        "generated_shape": list(generated.shape),
    })

    # 2. What --freeze-vision and --lora train (the library calls train makes), on the same directory.
    code = fix_remote_code(out)
    model, processor = load_model_and_processor(code)
    full = count_parameters(model)
    vision = sum(p.numel() for p in model.vision_tower.parameters())
    # The widely copied recipe: an attribute torch never reads. Nothing is frozen.
    for parameter in model.vision_tower.parameters():
        parameter.is_trainable = False
    recipe = count_parameters(model)
    frozen = freeze_vision_tower(model)
    after_freeze = count_parameters(model)
    trainable_outside_tower = all(
        p.requires_grad for n, p in model.named_parameters() if not n.startswith("vision_tower."))

    model, _ = load_model_and_processor(code)
    lora = add_lora(model, rank=4, alpha=8, dropout=0.0)
    with_lora = count_parameters(lora)
    lora_params = {n: p.numel() for n, p in lora.named_parameters() if "lora_" in n}
    trainable_names = [n for n, p in lora.named_parameters() if p.requires_grad]
    wrapped = sorted({n.split(".lora_")[0].split("base_model.model.")[-1] for n in lora_params})
    merged = merge_lora(lora)
    facts["counts"] = {
        "total": full.total, "trainable": full.trainable, "vision": vision, "recipe_trainable": recipe.trainable,
        "frozen": frozen, "after_freeze_trainable": after_freeze.trainable,
        "trainable_outside_tower": trainable_outside_tower,
        "lora_total": with_lora.total, "lora_trainable": with_lora.trainable,
        "lora_param_sum": sum(lora_params.values()), "only_lora_trainable": all("lora_" in n for n in trainable_names),
        "wrapped": wrapped, "merged_total": count_parameters(merged).total,
        "merged_has_lora": any("lora_" in n for n, _ in merged.named_parameters()),
    }
    print("RESULT " + json.dumps(facts))
"""


@pytest.fixture(scope="module")
def reloaded(workdir, trained) -> dict:
    """The saved directory loaded in a fresh interpreter whose HF_HOME holds nothing at all."""
    empty_home = _new_hf_home(workdir, "hf-reload", demo=False)
    proc = python(RELOAD, empty_home, workdir, str(trained["out"]), str(workdir / "data"))
    _ok(proc)
    return {**_result(proc), "home": str(empty_home)}


def _result(proc) -> dict:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_saved_directory_reloads_offline_with_transformers(reloaded):
    assert reloaded["missing"] == [] and reloaded["unexpected"] == []
    assert reloaded["differing"] == [] and reloaded["compared"] > 0  # the trained weights, not a re-initialisation
    assert reloaded["code_file"].startswith(reloaded["home"])  # imported from the directory's own code
    assert reloaded["vision_model_type"] == "davit"
    assert reloaded["generated_shape"][0] == 2


def test_eval_cli_on_the_saved_model_with_the_hub_dataset_id(workdir, trained):
    home = _new_hf_home(workdir, "hf-eval", demo=False)
    results = workdir / "eval-results"
    proc = florence_patch(
        ["eval", "--model", str(trained["out"]), "--dataset", HUB_DATASET, "--split", "validation",
         "--max-samples", "5", "--batch-size", "2", "--num-beams", "2", "--max-new-tokens", "4",
         "--num-workers", "1", "--output-dir", str(results), "--format", "json"],
        home, workdir,
    )
    _ok(proc)
    printed = json.loads(proc.stdout[proc.stdout.index("["):])[0]
    metrics = json.loads((results / "metrics.json").read_text())
    assert printed["anls"] == metrics["anls"] and metrics["count"] == metrics["scored"] == 5
    assert metrics["settings"]["num_workers"] == 1  # asked for: kept, however short the evaluation
    assert metrics["settings"]["vision_sdpa_modules"] > 0  # --vision-sdpa, the default
    assert 0.0 <= metrics["anls"] <= 1.0 and 0.0 <= metrics["exact_match"] <= 1.0
    assert metrics["anls_by_type"] and sum(metrics["count_by_type"].values()) >= 5
    rows = [json.loads(line) for line in (results / "predictions.jsonl").read_text().splitlines()]
    import datasets

    expected = datasets.load_from_disk(str(workdir / "data"))["validation"].select(range(5))
    assert [row["questionId"] for row in rows] == expected["questionId"]  # dataset order, whatever the batching
    assert [row["answers"] for row in rows] == expected["answers"]
    assert all(set(row) >= {"questionId", "question", "prediction", "answers", "anls"} for row in rows)


def test_two_process_run_fixes_once_trains_and_saves_once(workdir, monkeypatch):
    """torchrun, 2 CPU processes (gloo), LoRA, the hub dataset id: one patch, one save."""
    from florence_patch.backups import read_manifest
    from florence_patch.discovery import find_copies

    home = _new_hf_home(workdir, "hf-ddp")
    out = workdir / "ddp"
    proc = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "florence_patch.cli.main", "train", "--dataset", HUB_DATASET, "--output-dir", str(out),
         "--max-steps", "2", "--save-steps", "2", "--eval-steps", "0", "--lora", "--batch-size", "2",
         *QUICK],
        home, workdir,
    )
    _ok(proc)
    assert proc.log.count("saved the fine-tuned model to") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 2
    assert metrics["eval"]["count"] == 4  # both processes' shares, gathered
    assert 0 < metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    assert (out / "checkpoint-2").is_dir()

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert names and not [name for name in names if "lora_" in name]  # adapters merged into the weights
    assert any(name.startswith("language_model.") for name in names)

    monkeypatch.setenv("HF_HOME", str(home))
    # The copy the training processes imported (its name layout is their transformers').
    (copy,) = [copy for copy in find_copies(REPO_ID, revision="main").copies if copy.materialized]
    applies = [event for event in read_manifest(copy.target_dir).history if event["action"] == "apply"]
    assert len(applies) == 1 and applies[0]["fixes"]  # two ranks, one patch


def test_two_process_run_with_grouped_pages(workdir):
    """torchrun, 2 CPU processes (gloo), --group-by-page: DDP sees the model's own forward, with
    each page of a batch encoded once, on each process's share of the page-grouped batches."""
    home = _new_hf_home(workdir, "hf-ddp-grouped")
    out = workdir / "ddp-grouped"
    proc = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "florence_patch.cli.main", "train", "--dataset", str(workdir / "data"), "--output-dir", str(out),
         "--max-steps", "2", "--save-steps", "2", "--eval-steps", "0", "--batch-size", "4", "--group-by-page",
         *QUICK],
        home, workdir,
    )
    _ok(proc)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 2
    assert metrics["train"]["train_questions_per_encoded_page"] > 1
    assert all(loss > 0 for loss in _losses(_state(out)).values())


def test_freeze_vision_and_lora_change_the_trainable_parameter_count(reloaded):
    result = reloaded["counts"]
    assert result["trainable"] == result["total"] > result["vision"] > 0
    assert result["recipe_trainable"] == result["total"]  # is_trainable=False froze nothing
    assert result["frozen"] == result["vision"]
    assert result["after_freeze_trainable"] == result["total"] - result["vision"]
    assert result["trainable_outside_tower"]

    assert result["lora_trainable"] == result["lora_param_sum"] > 0
    assert result["lora_total"] == result["total"] + result["lora_param_sum"]
    assert result["only_lora_trainable"]
    wrapped = result["wrapped"]
    assert wrapped and all(name.startswith("language_model.") for name in wrapped)  # not the DaViT fc1/fc2
    assert {name.rsplit(".", 1)[-1] for name in wrapped} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert any(".encoder_attn." in name for name in wrapped)  # decoder cross-attention too
    assert result["merged_total"] == result["total"] and not result["merged_has_lora"]
