"""TrainConfig / EvalConfig, their YAML and CLI forms, TrainingArguments, and the pieces of a run
that need no model: resume rules, the saved-directory repair, plots, the model card, scoring."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from florence_patch.errors import NotFoundError, UsageError
from florence_patch.training import config as config_module
from florence_patch.training.config import EvalConfig, TrainConfig, to_training_arguments

# ---------------------------------------------------------------------------------------------
# Validation and sources.


def test_defaults_and_columns():
    config = TrainConfig(dataset="data")
    assert config.model == "microsoft/Florence-2-base-ft"
    assert config.vision_sdpa and EvalConfig(dataset="data").vision_sdpa
    assert config.num_workers is None  # resolved per machine, below
    assert config.per_device_eval_batch_size == 2 * config.batch_size
    assert TrainConfig(dataset="data", batch_size=4, eval_batch_size=3).per_device_eval_batch_size == 3
    columns = TrainConfig(dataset="d", question_column="q", image_column="page", question_types_column="").columns
    assert (columns.question, columns.image, columns.answers, columns.question_types) == ("q", "page", "answers", None)


def test_workers_default_to_none_on_cpu_and_spare_cores_with_an_accelerator(monkeypatch):
    monkeypatch.setattr(config_module, "_has_accelerator", lambda: False)
    assert config_module.resolve_num_workers(None) == 0  # on CPU a worker takes a core from the model
    assert config_module.resolve_num_workers(3) == 3
    assert to_training_arguments(TrainConfig(dataset="d", output_dir="o")).dataloader_num_workers == 0
    monkeypatch.setattr(config_module, "_has_accelerator", lambda: True)
    monkeypatch.setattr(config_module, "usable_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert config_module.resolve_num_workers(None) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks share the 16 cores
    assert config_module.resolve_num_workers(None) == 3
    monkeypatch.setattr(config_module, "usable_cores", lambda: 2)
    assert config_module.resolve_num_workers(None) == 1


def test_cores_are_counted_by_affinity_not_by_the_machine(monkeypatch):
    # A container given 2 of a host's 64 cores: os.cpu_count() says 64, the affinity mask 2.
    monkeypatch.delattr(config_module.os, "process_cpu_count", raising=False)
    monkeypatch.setattr(config_module.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: {5, 9}, raising=False)
    assert config_module.usable_cores() == 2
    monkeypatch.setattr(config_module, "_has_accelerator", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert config_module.resolve_num_workers(None) == 1  # not 8: one core is left for the main process
    monkeypatch.delattr(config_module.os, "sched_getaffinity")  # a platform without affinity
    assert config_module.usable_cores() == 64


def test_cpu_threads_are_capped_by_the_cores_this_process_may_use(monkeypatch):
    import torch

    from florence_patch.training.model import cap_cpu_threads

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config_module, "usable_cores", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(16)
        cap_cpu_threads(1)
        assert torch.get_num_threads() == 3  # 4 usable cores, one of them the worker's
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        cap_cpu_threads(0)
        assert torch.get_num_threads() == 2  # two ranks share the 4 cores
    finally:
        torch.set_num_threads(threads)


def test_torch_compile_is_opt_in_and_reaches_the_trainer():
    assert to_training_arguments(TrainConfig(dataset="d", output_dir="o")).torch_compile is False
    assert to_training_arguments(TrainConfig(dataset="d", output_dir="o", torch_compile=True)).torch_compile is True


def test_the_step_waits_for_the_device_nowhere(monkeypatch):
    cpu = to_training_arguments(TrainConfig(dataset="d", output_dir="o"))
    assert cpu.logging_nan_inf_filter is False  # it would read every step's loss on the host
    assert not cpu.dataloader_pin_memory and not cpu.accelerator_config.non_blocking
    monkeypatch.setattr(config_module, "_has_cuda", lambda: True)
    monkeypatch.setattr(config_module, "_has_accelerator", lambda: True)
    gpu = to_training_arguments(TrainConfig(dataset="d", output_dir="o", precision="fp32"))
    assert gpu.dataloader_pin_memory and gpu.accelerator_config.non_blocking  # pinned batches, copied async
    assert gpu.logging_nan_inf_filter is False


def test_short_evaluations_prepare_pages_on_the_thread_long_ones_start_workers(monkeypatch):
    import datasets

    from florence_patch.training.evaluate import generation_workers

    monkeypatch.setattr(config_module, "_has_accelerator", lambda: True)
    monkeypatch.setattr(config_module, "usable_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    few = config_module.MIN_EVAL_BATCHES_FOR_WORKERS - 1
    assert config_module.resolve_eval_num_workers(None, few) == 0  # the workers' start would cost more
    assert config_module.resolve_eval_num_workers(None, few + 1) == 8
    assert config_module.resolve_eval_num_workers(None, None) == 8  # a stream: its length is unknown
    assert config_module.resolve_eval_num_workers(2, 1) == 2  # asked for: kept
    # 32 questions in batches of 8: 4 batches; 200 in batches of 8 over 2 processes: 13 each.
    assert generation_workers(None, datasets.Dataset.from_dict({"q": list(range(32))}), 8) == 0
    assert generation_workers(None, datasets.Dataset.from_dict({"q": list(range(200))}), 8, 2) == 8
    assert generation_workers(None, datasets.Dataset.from_dict({"q": list(range(200))}), 8, 3) == 0
    stream = datasets.Dataset.from_dict({"q": list(range(8))}).to_iterable_dataset()
    assert generation_workers(None, stream, 8) == 8
    monkeypatch.setattr(config_module, "_has_accelerator", lambda: False)
    assert config_module.resolve_eval_num_workers(None, 1000) == 0  # CPU only: no workers at all


def test_every_problem_is_reported_at_once_naming_the_option():
    with pytest.raises(UsageError) as caught:
        TrainConfig(dataset=" ", batch_size=0, warmup_ratio=1.5, precision="fp8", streaming=True, report_to="mlflow")
    message = str(caught.value)
    for part in ("--dataset is required", "--batch-size must be >= 1", "--warmup-ratio", "--precision",
                 "--streaming needs --max-steps", "--report-to"):
        assert part in message
    assert "\n" not in message


def test_group_by_page_is_opt_in_and_needs_rows_up_front():
    assert TrainConfig(dataset="d").group_by_page is False
    assert TrainConfig(dataset="d", group_by_page=True).group_by_page is True
    with pytest.raises(UsageError, match="--group-by-page .* --streaming"):
        TrainConfig(dataset="d", group_by_page=True, streaming=True, max_steps=10)


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent("""\
        dataset: data/docvqa
        lr: 1e-4            # YAML reads this as text; it is still a learning rate
        max-steps: 100
        freeze_vision: true
        batch_size: 4
    """))
    config = TrainConfig.from_sources(path, {"batch_size": 2, "model": "some/model"})
    assert config.lr == pytest.approx(1e-4) and isinstance(config.lr, float)
    assert config.max_steps == 100 and config.freeze_vision is True
    assert config.batch_size == 2  # the command line wins
    assert config.model == "some/model" and config.dataset == "data/docvqa"


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("dataset: d\nmax_stepz: 3\n", UsageError, "unknown option 'max_stepz'"),
        ("dataset: d\nbatch_size: true\n", UsageError, "batch_size must be an integer"),
        ("dataset: d\nfreeze_vision: 'yes'\n", UsageError, "freeze_vision must be true or false"),
        ("- dataset\n", UsageError, "expected a mapping"),
        ("dataset: [unclosed\n", UsageError, "not valid YAML"),
        ("lr: 0.1\n", UsageError, "--dataset is required"),
    ],
)
def test_bad_yaml_is_a_usage_error(tmp_path, text, error, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(error, match=match):
        TrainConfig.from_sources(path)


def test_missing_config_file_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        TrainConfig.from_sources(tmp_path / "nope.yaml")


def test_eval_config():
    config = EvalConfig(dataset="d", model="/runs/out/")
    assert config.resolved_output_dir == Path("eval/out-validation")
    assert EvalConfig(dataset="d", output_dir="x").resolved_output_dir == Path("x")
    with pytest.raises(UsageError, match="--max-samples"):
        EvalConfig(dataset="d", max_samples=0)


# ---------------------------------------------------------------------------------------------
# TrainingArguments.


def test_training_arguments(tmp_path):
    import transformers

    config = TrainConfig(
        dataset="d", output_dir=str(tmp_path / "out"), max_steps=30, batch_size=4, eval_batch_size=16,
        grad_accum=2, lr=3e-4, warmup_ratio=0.1, eval_steps=10, save_steps=5, save_total_limit=0,
        gradient_checkpointing=True, num_workers=3, seed=7, precision="fp32",
    )
    args = to_training_arguments(config)
    assert isinstance(args, transformers.TrainingArguments)
    assert (args.max_steps, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (30, 4, 16)
    assert args.gradient_accumulation_steps == 2 and args.learning_rate == pytest.approx(3e-4)
    assert args.get_warmup_steps(30) == 3  # 10% of 30 steps, on 4.x (warmup_ratio) and 5.x (float warmup_steps)
    assert args.eval_strategy == "steps" and args.eval_steps == 10 and args.save_steps == 5
    assert args.save_total_limit is None
    assert args.gradient_checkpointing is True
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
    assert kwargs == {"use_reentrant": False}
    assert args.dataloader_num_workers == 3 and args.seed == 7
    assert str(getattr(args.optim, "value", args.optim)) == "adamw_torch_fused"
    assert args.remove_unused_columns is False  # the collators need question/answers/image
    assert args.label_names == ["labels"]
    assert args.report_to in ([], ["none"], "none") or not args.report_to
    assert not args.bf16 and not args.fp16


def test_no_periodic_evaluation_with_eval_steps_zero(tmp_path):
    args = to_training_arguments(TrainConfig(dataset="d", output_dir=str(tmp_path), eval_steps=0, precision="fp32"))
    assert args.eval_strategy == "no"


def test_impossible_precision_and_missing_logger_are_usage_errors(tmp_path, monkeypatch):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
            to_training_arguments(TrainConfig(dataset="d", output_dir=str(tmp_path), precision="fp16"))
        assert config_module.resolve_precision("auto") == "fp32"
    monkeypatch.setitem(config_module._REPORT_PACKAGES, "tensorboard", "no_such_package_for_florence_patch")
    with pytest.raises(UsageError, match="pip install no_such_package_for_florence_patch"):
        to_training_arguments(TrainConfig(dataset="d", output_dir=str(tmp_path), report_to="tensorboard"))


# ---------------------------------------------------------------------------------------------
# Resume rules.


def test_checkpoint_to_resume(tmp_path):
    from florence_patch.training.train import checkpoint_to_resume

    out = tmp_path / "out"
    assert checkpoint_to_resume(TrainConfig(dataset="d", output_dir=str(out))) is None
    assert checkpoint_to_resume(TrainConfig(dataset="d", output_dir=str(out), resume=True)) is None
    for step in (2, 10, 4):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    last = checkpoint_to_resume(TrainConfig(dataset="d", output_dir=str(out), resume=True))
    assert Path(last).name == "checkpoint-10"
    with pytest.raises(UsageError, match="checkpoint-10.*--resume"):
        checkpoint_to_resume(TrainConfig(dataset="d", output_dir=str(out)))


def test_cli_refuses_to_mix_runs_without_resume(tmp_path):
    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    result = _invoke(["train", "--dataset", "d", "--output-dir", str(tmp_path / "out"), "--precision", "fp32"])
    assert result.exit_code == 2
    assert "checkpoint-3" in result.output and "--resume" in result.output


# ---------------------------------------------------------------------------------------------
# CLI wiring (the run itself replaced: these check what reaches the library).


@pytest.fixture
def captured(monkeypatch):
    from florence_patch.training import evaluate as evaluate_module
    from florence_patch.training import train as train_module

    seen = {}

    def fake_train(config):
        seen["train"] = config
        raise UsageError("stop here")

    def fake_evaluate(config):
        seen["eval"] = config
        raise UsageError("stop here")

    monkeypatch.setattr(train_module, "train", fake_train)
    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    return seen


def _invoke(args):
    from florence_patch.cli.main import app

    return CliRunner().invoke(app, args)


def test_cli_train_options_reach_the_config(tmp_path, captured):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("dataset: from-yaml\nlr: 2e-5\nepochs: 5\nnum_workers: 4\n")
    result = _invoke([
        "train", "--config", str(yaml_file), "--lr", "0.001", "--max-steps", "30", "--freeze-vision",
        "--lora", "--precision", "bf16", "--report-to", "none", "--random-answer", "--question-column", "q",
        "--task-prompt", "<VQA>", "--resume", "--num-workers", "0", "--no-vision-sdpa",
    ])
    assert result.exit_code == 2, result.output  # the stand-in's UsageError: exit code 2
    config = captured["train"]
    assert config.dataset == "from-yaml" and config.epochs == 5.0  # from the file
    assert config.lr == pytest.approx(1e-3) and config.num_workers == 0  # the command line wins
    assert (config.max_steps, config.freeze_vision, config.lora, config.precision) == (30, True, True, "bf16")
    assert config.random_answer and config.resume and config.question_column == "q"
    assert config.task_prompt == "<VQA>" and config.vision_sdpa is False


def test_cli_eval_options_reach_the_config(captured):
    result = _invoke([
        "eval", "--model", "out", "--dataset", "data", "--split", "test", "--batch-size", "3", "--num-beams", "2",
        "--max-new-tokens", "9", "--max-samples", "5", "--output-dir", "ev", "--revision", "main", "--no-vision-sdpa",
    ])
    assert result.exit_code == 2, result.output
    config = captured["eval"]
    assert (config.model, config.dataset, config.split, config.batch_size) == ("out", "data", "test", 3)
    assert (config.num_beams, config.max_new_tokens, config.max_samples) == (2, 9, 5)
    assert (config.output_dir, config.revision, config.vision_sdpa) == ("ev", "main", False)


def test_cli_bad_option_values_exit_2_with_one_line():
    result = _invoke(["train", "--dataset", "d", "--batch-size", "0", "--warmup-ratio", "2"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--batch-size" in lines[0] and "--warmup-ratio" in lines[0]
    assert _invoke(["train"]).exit_code == 2  # no --dataset anywhere


def test_help_imports_nothing_heavy():
    code = textwrap.dedent("""
        import sys
        from typer.testing import CliRunner
        from florence_patch.cli.main import app
        for command in (["--help"], ["train", "--help"], ["eval", "--help"]):
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 0, result.output
        heavy = [name for name in ("torch", "transformers", "datasets", "peft", "matplotlib") if name in sys.modules]
        print("heavy:", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout


def test_command_line_reproduces_the_config(captured):
    import shlex

    from florence_patch.training.train import command_line

    config = TrainConfig(dataset="data dir", max_steps=12, freeze_vision=True, lr=5e-4, question_types_column=None)
    words = shlex.split(command_line(config))
    assert words[:2] == ["florence-patch", "train"]
    _invoke(words[1:])
    assert captured["train"] == config


# ---------------------------------------------------------------------------------------------
# The saved directory, plots, the card, scoring.


def test_finish_saved_directory_makes_it_self_contained(tmp_path):
    from florence_patch.training.model import finish_saved_directory

    code_dir = tmp_path / "modules" / "abc"
    code_dir.mkdir(parents=True)
    for name in ("modeling_florence2.py", "configuration_florence2.py", "processing_florence2.py"):
        (code_dir / name).write_text(f"# fixed {name}\n")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "modeling_florence2.py").write_text("# stale copy\n")
    (saved / "config.json").write_text(json.dumps({
        "auto_map": {
            "AutoConfig": "configuration_florence2.Florence2Config",
            "AutoModelForCausalLM": "org/repo--modeling_florence2.Florence2ForConditionalGeneration",
            "AutoProcessor": "org/repo--processing_florence2.Florence2Processor",
            "AutoTokenizer": ["org/repo--tokenization_x.Slow", None],
        },
        "vision_config": {"model_type": "", "dim_embed": [8]},
    }))
    (saved / "preprocessor_config.json").write_text(json.dumps({"auto_map": {"AutoProcessor": "org/repo--processing_florence2.Florence2Processor"}}))

    changed = finish_saved_directory(saved, code_dir)
    assert set(changed) >= {"modeling_florence2.py", "configuration_florence2.py", "processing_florence2.py", "config.json"}
    config = json.loads((saved / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "davit"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_florence2.Florence2ForConditionalGeneration"
    assert config["auto_map"]["AutoProcessor"] == "processing_florence2.Florence2Processor"
    # A module not in the directory stays a hub reference: rewriting it would break the load.
    assert config["auto_map"]["AutoTokenizer"] == ["org/repo--tokenization_x.Slow", None]
    assert json.loads((saved / "preprocessor_config.json").read_text())["auto_map"]["AutoProcessor"] == (
        "processing_florence2.Florence2Processor"
    )
    assert (saved / "modeling_florence2.py").read_text() == "# fixed modeling_florence2.py\n"
    assert finish_saved_directory(saved, code_dir) == []  # idempotent


LOG_HISTORY = [
    {"loss": 3.0, "step": 1}, {"loss": 2.0, "step": 2}, {"eval_loss": 2.5, "eval_anls": 0.1, "step": 2},
    {"loss": 1.0, "step": 3}, {"loss": 0.5, "step": 4}, {"eval_loss": 1.5, "eval_anls": 0.4, "step": 4},
    {"loss": 0.6, "step": 4},  # a resumed run logs its first step again: the later value wins
    {"train_runtime": 1.0, "step": 4},
]


def test_curves_and_png(tmp_path):
    from PIL import Image

    from florence_patch.training.plots import curves_from_log_history, plot_training_curves

    curves = curves_from_log_history(LOG_HISTORY)
    assert curves.train_loss == ((1, 3.0), (2, 2.0), (3, 1.0), (4, 0.6))
    assert curves.eval_anls == ((2, 0.1), (4, 0.4)) and curves.eval_loss == ((2, 2.5), (4, 1.5))
    path = plot_training_curves(LOG_HISTORY, tmp_path / "curves.png", title="run")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
    plot_training_curves([], tmp_path / "empty.png")  # before any log: still a picture
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_model_card_states_the_scores():
    from florence_patch.training.model_card import CardFacts, render_model_card

    card = render_model_card(CardFacts(
        base_model="microsoft/Florence-2-base-ft", base_revision="abc123", dataset="HuggingFaceM4/DocumentVQA",
        train_split="train", eval_split="validation", fixes=("output-class",),
        hyperparameters={"lr": 1e-5, "num_beams": 3, "max_new_tokens": 64, "freeze_vision": True},
        parameters_total=1000, parameters_trainable=250, train_metrics={"train_loss": 0.5},
        eval_metrics={"anls": 0.8123, "exact_match": 0.7, "loss": 0.4, "count": 10,
                      "anls_by_type": {"form": 0.9, "table/list": 0.6}, "count_by_type": {"form": 6, "table/list": 4}},
        command="florence-patch train --dataset X", last_train_loss=0.45,
    ))
    assert card.startswith("---\nlibrary_name: transformers")
    assert "base_model: microsoft/Florence-2-base-ft" in card
    assert "| ANLS | 0.8123 |" in card and "| table/list | 4 | 0.6000 |" in card
    assert "output-class" in card and "250 trained (25.0%)" in card and "florence-patch train --dataset X" in card
    assert "padding=True" not in card  # trained without the prompt-padding-mask fix: no batched usage claimed


def test_model_card_shows_batched_usage_when_the_code_masks_prompt_padding():
    from florence_patch.training.model_card import CardFacts, render_model_card

    card = render_model_card(CardFacts(
        base_model="microsoft/Florence-2-base-ft", base_revision="abc123", dataset="HuggingFaceM4/DocumentVQA",
        train_split="train", eval_split="validation", fixes=("output-class", "prompt-padding-mask"),
        hyperparameters={}, parameters_total=1000, parameters_trainable=250, train_metrics={},
        eval_metrics={}, command="florence-patch train --dataset X", last_train_loss=None,
    ))
    assert "model.generate(**inputs" in card and "padding=True" in card


def test_length_sorted_batches():
    from florence_patch.training.evaluate import length_sorted_batches

    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([], 4) == []


class _Tokenizer:
    pad_token = "<pad>"
    all_special_tokens = ["<s>", "</s>", "<pad>"]


class _Processor:
    tokenizer = _Tokenizer()

    def post_process_generation(self, text, task, image_size):
        return {task: text.replace("<s>", "").replace("</s>", "")}


class _ProcessorWithoutParser:
    tokenizer = _Tokenizer()


def test_answer_text_strips_padding_and_uses_the_task_parser():
    from florence_patch.training.evaluate import answer_text

    assert answer_text(_Processor(), "</s><s>$1,200</s><pad><pad>", "<DocVQA>") == "$1,200"
    assert answer_text(_ProcessorWithoutParser(), "</s><s> Room 12</s><pad>", "<DocVQA>") == "Room 12"


def test_score_skips_unannotated_rows():
    from florence_patch.training.evaluate import Prediction, score

    predictions = [
        Prediction(0, 1, "q1", "Room 12", ("room 12",), ("form",)),
        Prediction(1, 2, "q2", "abc", ("xyz",), ("layout", "form")),
        Prediction(2, 3, "q3", "anything", ()),  # a test-split row: predicted, not scored
    ]
    scores = score(predictions)
    assert scores.count == 2 and scores.anls == pytest.approx(0.5) and scores.exact_match == pytest.approx(0.5)
    assert scores.anls_by_type == {"form": pytest.approx(0.5), "layout": 0.0}
    assert predictions[0].to_json() == {
        "questionId": 1, "question": "q1", "prediction": "Room 12", "answers": ["room 12"], "anls": 1.0,
        "question_types": ["form"],
    }
    assert predictions[2].anls is None and score(predictions[2:]) is None
